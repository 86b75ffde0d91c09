"""One training epoch: move the batch, forward, sum losses, backward, step, log.

Timing follows design §5: every iteration's forward + backward + optimizer step is opened and
closed by the vendor's synchronize hook (``core`` time); the iteration's whole wall time, data
loading included, is ``train`` time.
"""

import contextlib
import math
import sys
import time
from typing import Any, Callable, Dict, Optional

import torch

from chipbench.errors import UserError
from chipbench.metrics import RunMeter

AUTOCAST_DTYPES = {"amp": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_factory(device: torch.device, precision: str) -> Callable[[], Any]:
    """A no-argument factory of the autocast context of ``precision`` (a null one for fp32)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(facade: Any, device: torch.device, precision: str) -> Optional[Any]:
    """A dynamic loss scaler for fp16 training (the vendor's, else torch's); None for fp32 and
    bf16."""
    return facade.grad_scaler(device, precision)


def progress_bar(epoch: int, step: int, total: int, loss: float, images_per_s: float) -> str:
    """One line of the progress bar: ``epoch 3 [#####.....] 8/15 loss 0.8123 11.2 img/s``."""
    filled = int(20 * step / max(total, 1))
    return "epoch {} [{}{}] {}/{} loss {:.4f} {:.1f} img/s".format(
        epoch, "#" * filled, "." * (20 - filled), step, total, loss, images_per_s)


def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: Any,
                    device: torch.device, epoch: int, meter: RunMeter,
                    synchronize: Callable[[], None], autocast: Callable[[], Any],
                    scaler: Optional[Any], clip_grad_norm: float, warmup: Optional[Any],
                    log: Any, log_every: int, max_iters: int, bar: bool = False
                    ) -> Dict[str, float]:
    """Train ``model`` for one epoch; returns the mean loss and the last learning rate.

    ``bar`` redraws a progress bar on the terminal (stderr) after every iteration; the log gets a
    line every ``log_every`` iterations either way.
    """
    model.train()
    loss_sum, steps = 0.0, 0
    synchronize()
    last = time.perf_counter()
    for images, targets in loader:
        if max_iters and meter.seen_iterations >= max_iters:
            break
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        synchronize()
        core_start = time.perf_counter()
        with autocast():
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
        synchronize()
        now = time.perf_counter()
        counted = meter.counting()
        meter.add_iteration(len(images), now - core_start)
        if counted:
            meter.train_seconds += now - last
        last_start, last = last, now
        if warmup is not None:
            warmup.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise UserError(
                "training loss became {} in epoch {} (iteration {}): {}".format(
                    loss_value, epoch, meter.seen_iterations,
                    ", ".join("{}={:.4g}".format(k, float(v.detach())) for k, v in loss_dict.items())),
                "lower train.lr, enable train.clip_grad_norm, or train in fp32")
        loss_sum += loss_value
        steps += 1
        if bar:
            sys.stderr.write("\r" + progress_bar(epoch, steps, len(loader), loss_value,
                                                 len(images) / max(now - last_start, 1e-9)))
            sys.stderr.flush()
        if log_every and steps % log_every == 0:
            log.info("epoch %d [%d/%d] loss %.4f lr %.5f %.1f img/s (core)", epoch, steps,
                     len(loader), loss_value, optimizer.param_groups[0]["lr"],
                     len(images) / max(now - core_start, 1e-9))
    if bar:
        sys.stderr.write("\r" + " " * 78 + "\r")
    return {"loss": loss_sum / max(steps, 1), "lr": optimizer.param_groups[0]["lr"],
            "steps": steps}
