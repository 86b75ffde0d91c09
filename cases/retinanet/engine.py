"""One training epoch: move the batch, forward, sum losses, backward, step, log.

Timing as docs/metrics.md defines it: an iteration's forward + backward + optimizer step is
opened and closed by the vendor's synchronize hook (``core`` time), on every iteration or every
``train.core_every``-th; the iterations' whole wall time, data loading included, is ``train``
time, and the part of it spent waiting for batches is ``data`` time.
"""

import math
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple, cast

import torch

from chipbench.case import RunContext, UserError, flops_per_trained_image

OPTIMIZER_IMPLEMENTATION = ("fused", "foreach")
"""Settings of a torch optimizer that choose its implementation, not its arithmetic."""


def make_sgd(params: Iterable[torch.nn.Parameter], lr: float, momentum: float,
             weight_decay: float) -> torch.optim.SGD:
    """The seed's SGD, with torch's fused kernel where this torch has one for the parameters'
    device (one pass over the parameters instead of several: 1.6x faster steps on a CPU with
    RetinaNet's 32 M parameters, ``benchmarks/optimizer.py``); torch's default elsewhere (older
    torch, devices without the kernel)."""
    params = list(params)
    try:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               fused=True)
    except (TypeError, RuntimeError, ValueError):  # no fused kernel: this torch or this device
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
    """Load a checkpoint's optimizer ``state`` but keep this optimizer's implementation
    (fused/foreach): a run resumes on a torch or device without the kernel it was saved with."""
    kept = [{k: group[k] for k in OPTIMIZER_IMPLEMENTATION if k in group}
            for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, implementation in zip(optimizer.param_groups, kept):
        for key in OPTIMIZER_IMPLEMENTATION:  # one this torch's optimizer lacks is dropped
            if key in implementation:
                group[key] = implementation[key]
            else:
                group.pop(key, None)


def timed_iteration(index: int, every: int) -> bool:
    """Whether the run's iteration ``index`` (from 0) is one of the 1 in ``every`` whose core time
    is measured: all of them when ``every`` is 1; else a pseudo-random choice fixed by the index,
    the same on every rank. Not every N-th: that would fall on the same places of each epoch
    (its last, partial batch, say) whenever the epoch's length shares a factor with N."""
    return every <= 1 or random.Random(index).randrange(every) == 0


def progress_bar(epoch: int, step: int, total: int, loss: float, images_per_s: float) -> str:
    """One line of the progress bar: ``epoch 3 [#####.....] 8/15 loss 0.8123 11.2 img/s``."""
    filled = int(20 * step / max(total, 1))
    return "epoch {} [{}{}] {}/{} loss {:.4f} {:.1f} img/s".format(
        epoch, "#" * filled, "." * (20 - filled), step, total, loss, images_per_s)


@dataclass
class TrainStep:
    """How each training iteration runs: the recipe's settings that stay fixed over the run."""

    precision: str = "fp32"
    scaler: Optional[Any] = None
    """fp16's dynamic loss scaler (``ctx.grad_scaler``); None for fp32 and bf16."""
    clip_grad_norm: float = 0.0
    """Clip the gradients' norm to this (0: no clipping)."""
    core_every: int = 1
    """Time the core interval on 1 in this many iterations (:func:`timed_iteration`)."""
    max_iters: int = 0
    """Stop after this many iterations over the whole run (0: no limit)."""
    log_every: int = 0
    """Read the loss back and log it every this many iterations (0: at the epoch's end only)."""
    bar: bool = False
    """Redraw a progress bar on the terminal (stderr) after every iteration."""


def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: Any,
                    ctx: RunContext, epoch: int, step: TrainStep,
                    warmup: Optional[Any] = None) -> Dict[str, float]:
    """Train ``model`` for one epoch on ``ctx``'s device; returns the mean loss and the last
    learning rate.

    Batches come through ``ctx.batches`` (the wait for each is the meter's data time). The
    forward + backward + step of one in ``step.core_every`` iterations (:func:`timed_iteration`)
    is timed as core time by ``ctx.core_step``, between two synchronizations; the other
    iterations never wait for the device, so the host queues their work while the device runs.
    The loss is summed on the device and read back every ``step.log_every`` iterations and at
    the end of the epoch, where a non-finite loss stops the run naming the iterations; the
    epoch's train time ends with one more synchronization. ``warmup`` steps after every
    iteration.
    """
    model.train()
    meter = ctx.meter
    window = LossWindow(epoch, meter.seen_iterations, step.precision)
    steps, shown, core_rate = 0, float("nan"), float("nan")
    ctx.synchronize()
    last = time.perf_counter()
    counted = False
    for images, targets in ctx.batches(loader, step.max_iters):
        timed = timed_iteration(meter.seen_iterations, step.core_every)
        images = [image.to(ctx.device, non_blocking=True) for image in images]
        targets = [{k: v.to(ctx.device, non_blocking=True) for k, v in t.items()} for t in targets]
        with ctx.core_step(len(images), timed) as core:
            loss, loss_dict = _step(model, optimizer, images, targets, ctx, step)
        counted = core.counted
        if core.seconds is not None:
            core_rate = len(images) / max(core.seconds, 1e-9)
        if counted:
            meter.train_seconds += core.end - last
        last_start, last = last, core.end
        if warmup is not None:
            warmup.step()
        window.add(loss, loss_dict)
        steps += 1
        if step.log_every and steps % step.log_every == 0:
            mean = window.read(meter.seen_iterations)
            shown = mean
            ctx.log.info("epoch %d [%d/%d] loss %.4f lr %.5f %.1f img/s (core)", epoch, steps,
                         len(loader), mean, optimizer.param_groups[0]["lr"], core_rate)
        if step.bar:
            sys.stderr.write("\r" + progress_bar(epoch, steps, len(loader), shown,
                                                 len(images) / max(core.end - last_start, 1e-9)))
            sys.stderr.flush()
    ctx.synchronize()  # the device's queued work belongs to this epoch's train time
    if counted:
        meter.train_seconds += time.perf_counter() - last
    if window.count:
        window.read(meter.seen_iterations)
    if step.bar:
        sys.stderr.write("\r" + " " * 78 + "\r")
    return {"loss": window.read_sum / max(steps, 1), "lr": optimizer.param_groups[0]["lr"],
            "steps": steps}


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: List[Any],
          targets: List[Any], ctx: RunContext, step: TrainStep
          ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """One forward + backward + optimizer step; the loss and its parts (not read back)."""
    with ctx.autocast(step.precision):
        loss_dict = model(images, targets)
        loss = cast(torch.Tensor, sum(loss_dict.values()))
    optimizer.zero_grad(set_to_none=True)
    if step.scaler is not None:
        step.scaler.scale(loss).backward()
        if step.clip_grad_norm:
            step.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), step.clip_grad_norm)
        step.scaler.step(optimizer)
        step.scaler.update()
    else:
        loss.backward()
        if step.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), step.clip_grad_norm)
        optimizer.step()
    return loss, loss_dict


class LossWindow:
    """The loss summed on the device over the iterations since the last read-back.

    Reading it is the only host synchronisation outside the timed interval's; a non-finite sum
    raises a one-line :class:`UserError` naming the epoch and the iterations it covers.
    """

    def __init__(self, epoch: int, first_iteration: int, precision: str = "fp32") -> None:
        self.epoch = epoch
        self.precision = precision
        self.first = first_iteration + 1
        self.total: Optional[torch.Tensor] = None
        self.count = 0
        self.last_parts: Dict[str, torch.Tensor] = {}
        self.read_sum = 0.0
        """The sum of every loss read back so far (the epoch's, for its mean)."""

    def add(self, loss: torch.Tensor, parts: Dict[str, torch.Tensor]) -> None:
        """Add one iteration's loss (no host sync)."""
        value = loss.detach().float()
        self.total = value if self.total is None else self.total + value
        self.count += 1
        self.last_parts = {k: v.detach() for k, v in parts.items()}

    def read(self, last_iteration: int) -> float:
        """The mean loss of the window (one host sync); checks it is finite and starts anew."""
        total = float(self.total) if self.total is not None else 0.0
        mean = total / max(self.count, 1)
        if not math.isfinite(mean):
            raise UserError(
                "training loss became {} in epoch {} (iterations {}-{}; last: {})".format(
                    mean, self.epoch, self.first, last_iteration,
                    ", ".join("{}={:.4g}".format(k, float(v)) for k, v in self.last_parts.items())),
                "lower train.lr or enable train.clip_grad_norm" + (
                    ", or train in fp32" if self.precision != "fp32" else ""))
        self.read_sum += total
        self.total, self.count, self.first = None, 0, last_iteration + 1
        return mean


def trained_flops_per_image(model: torch.nn.Module, dataset: Any,
                            batches: Iterable[Sequence[int]], device: torch.device,
                            min_size: int, max_size: int) -> Tuple[Optional[float], str]:
    """FLOPs of the training step per image, as the run trains ``batches`` (an epoch's batches of
    indices into ``dataset``), and how they were counted.

    The model's transform pads every image of a batch to the batch's largest, so a batch's
    padded shape is found from its images' sizes in the annotations (no image is read); each of
    the most frequent shapes is counted on real images of its first batch, the tallest and the
    widest, which the transform pads to that very shape
    (``chipbench.case.flops_per_trained_image``). The model and every random stream are left
    as they were."""
    from chipbench.cases.retinanet.evaluate import detection_transform, padded_shape

    transform = detection_transform(min_size, max_size)
    by_size: Dict[Tuple[int, int], Tuple[int, int]] = {}

    def shape_of(index: int) -> Tuple[int, int]:
        info = dataset.coco.imgs[dataset.ids[index]]
        size = (int(info["height"]), int(info["width"]))
        if size not in by_size:
            by_size[size] = padded_shape(transform, *size)
        return by_size[size]

    shaped: List[Tuple[Hashable, int]] = []
    spans: Dict[Tuple[int, int], List[int]] = {}
    for batch in batches:
        batch = list(batch)
        shapes = [shape_of(index) for index in batch]
        shape = (max(h for h, _ in shapes), max(w for _, w in shapes))
        shaped.append((shape, len(batch)))
        if shape not in spans:
            tallest = batch[max(range(len(batch)), key=lambda k: shapes[k][0])]
            widest = batch[max(range(len(batch)), key=lambda k: shapes[k][1])]
            spans[shape] = [tallest] + ([widest] if widest != tallest else [])

    def make_inputs(shape: Hashable) -> Tuple[Sequence[Any], int]:
        pairs = [dataset[index] for index in spans[cast(Tuple[int, int], shape)]]
        images = [image.to(device) for image, _ in pairs]
        targets = [{k: v.to(device) for k, v in target.items()} for _, target in pairs]
        return (images, targets), len(images)

    def area(shape: Hashable) -> float:
        height, width = cast(Tuple[int, int], shape)
        return float(height * width)

    return flops_per_trained_image(model, shaped, make_inputs, area)
