"""FLOPs of the training step, achieved TFLOP/s and MFU (model FLOPs utilisation).

The FLOPs of the training step (forward + backward) are counted once at the start of a run, on
the real model and real inputs of the shapes the run trains (:func:`flops_per_trained_image`: a
case whose batches are padded counts each padded batch shape), with torch's flop counter
(``torch.utils.flop_counter.FlopCounterMode``, torch 2.1 and later; on older torch the figures
are "n/a"). The counter counts matrix multiplications and convolutions (2 FLOPs per
multiply-add), not element-wise operations nor the optimizer step. Counting leaves the model and
every random stream as it found them (:func:`untouched`): the run trains as if nothing had been
counted. Then, with ``p_core`` in images per second over all devices::

    achieved FLOP/s = flops_per_image * p_core
    MFU             = achieved FLOP/s / (peak FLOP/s per device * devices)

The peak comes from the vendor's optional ``device_peak_flops`` hook (None: no MFU).
"""

import contextlib
import logging
import random
from typing import Any, Callable, Dict, Hashable, Iterator, List, Optional, Sequence, Tuple

from chipbench.errors import UserError


def flop_counter_available() -> bool:
    """Whether this torch has ``torch.utils.flop_counter.FlopCounterMode`` (torch >= 2.1)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode  # noqa: F401
    except ImportError:
        return False
    return True


def count_flops(step: Callable[[], Any]) -> Optional[float]:
    """FLOPs that ``step()`` performs (forward and backward alike); None without a counter."""
    if not flop_counter_available():
        return None
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False)
    with mode:
        step()
    return float(mode.get_total_flops())


def _loss_of(output: Any) -> Any:
    if isinstance(output, dict):
        return sum(output.values())
    return output.sum()


@contextlib.contextmanager
def untouched(model: Any) -> Iterator[None]:
    """Run the body, then put back what a counted training step changes: every buffer of
    ``model`` (BatchNorm's running statistics and ``num_batches_tracked``), every parameter's
    gradient, every module's training mode, and the random streams (torch's CPU generator and,
    where initialised, the generators of the model's device type; Python's ``random``; numpy's
    global one). Parameter
    values are not copied: a forward and backward without an optimizer step leave them as they
    are."""
    import numpy as np
    import torch

    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    device_type = next((p.device.type for p in model.parameters()), "cpu")
    device_module: Any = getattr(torch, device_type, None) if device_type != "cpu" else None
    initialized = getattr(device_module, "is_initialized", None)
    device_rng = device_module.get_rng_state_all() if callable(initialized) and initialized() \
        and callable(getattr(device_module, "get_rng_state_all", None)) else None
    buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    grads = [(param, param.grad) for param in model.parameters()]
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for param, grad in grads:
            param.grad = grad
        for module, training in modes:
            module.training = training
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])
        if device_rng is not None and device_module is not None:
            device_module.set_rng_state_all(device_rng)


def training_step_flops(model: Any, inputs: Sequence[Any]) -> Optional[float]:
    """FLOPs of one forward + backward of ``model(*inputs)`` in training mode (the output's losses,
    a dict, or its elements summed for the backward), the model and random streams left
    :func:`untouched`. None where torch has no counter."""
    if not flop_counter_available():
        return None
    with untouched(model):
        model.train()
        for param in model.parameters():
            param.grad = None
        return count_flops(lambda: _loss_of(model(*inputs)).backward())


def training_flops_per_image(model: Any, images: int, make_inputs: Callable[[], Sequence[Any]]
                             ) -> Optional[float]:
    """FLOPs of one forward + backward of ``model(*make_inputs())`` (a batch of ``images``
    images), divided by ``images``; ``make_inputs`` (which may read a data set with random
    flips) and the step leave the model and the random streams :func:`untouched`. None where
    torch has no counter."""
    if not flop_counter_available():
        return None
    with untouched(model):
        total = training_step_flops(model, make_inputs())
    return None if total is None else total / max(int(images), 1)


MAX_COUNTED_SHAPES = 4
"""The most batch shapes :func:`flops_per_trained_image` counts (those with the most images);
the FLOPs of the others are scaled from a counted one by their area."""


def flops_per_trained_image(model: Any, batches: Sequence[Tuple[Hashable, int]],
                            make_inputs: Callable[[Hashable], Tuple[Sequence[Any], int]],
                            area: Callable[[Hashable], float],
                            max_counted: int = MAX_COUNTED_SHAPES) -> Tuple[Optional[float], str]:
    """FLOPs of the training step per image, averaged over the images of ``batches`` (each a batch
    shape and its number of images, as the run trains them), and a note of how they were counted.

    Each of the ``max_counted`` shapes with the most images is counted once, on
    ``make_inputs(shape)``: the model's inputs of real images padded to that shape and how many
    images they hold (the step's FLOPs per image do not depend on the batch size, only on the
    padded shape, so a few images stand for the batch). Any other shape's FLOPs per image are
    those of the counted shape nearest in ``area``, scaled by the areas' ratio. The model and the
    random streams are left :func:`untouched`. ``(None, "")`` where torch has no counter or there
    is no batch."""
    if not flop_counter_available() or not batches:
        return None, ""
    images: Dict[Hashable, int] = {}
    for shape, count in batches:
        images[shape] = images.get(shape, 0) + int(count)
    ranked = sorted(images, key=lambda shape: -images[shape])
    counted: Dict[Hashable, float] = {}
    with untouched(model):
        for shape in ranked[:max(1, int(max_counted))]:
            inputs, held = make_inputs(shape)
            total = training_step_flops(model, inputs)
            if total is None:
                return None, ""
            counted[shape] = total / max(int(held), 1)
    per_shape: Dict[Hashable, float] = dict(counted)
    for shape in ranked[len(counted):]:
        nearest = min(counted, key=lambda known: abs(area(known) - area(shape)))
        per_shape[shape] = counted[nearest] * area(shape) / max(area(nearest), 1e-9)
    total_images = sum(images.values())
    per_image = sum(per_shape[shape] * images[shape] for shape in images) / max(total_images, 1)
    shown: List[str] = ["{} ({} image(s))".format(_shape_text(shape), images[shape])
                        for shape in ranked[:3]]
    note = ("counted per trained batch shape: {} batch(es) of {} image(s) in {} padded shape(s), "
            "{} counted on real images ({}{})".format(
                len(batches), total_images, len(images), len(counted), ", ".join(shown),
                ", ..." if len(ranked) > 3 else ""))
    if len(per_shape) > len(counted):
        note += "; {} shape(s) scaled by area from the nearest counted one".format(
            len(per_shape) - len(counted))
    return per_image, note


def _shape_text(shape: Hashable) -> str:
    """``800x1216`` for a tuple shape; ``str()`` of anything else."""
    if isinstance(shape, tuple):
        return "x".join(str(side) for side in shape)
    return str(shape)


def peak_flops(facade: Any, device: Any, precision: str) -> Dict[str, Any]:
    """The vendor's peak FLOP/s per device for ``precision`` (optional hook), with why it is
    missing when it is: ``{"peak_flops": float|None, "peak_note": str}``."""
    try:
        peak = facade.peak_flops(device, precision)
    except UserError:  # a bad setting of the user's (CHIPBENCH_CPU_PEAK_GEMM_S=nan) is refused
        raise
    except Exception as exc:  # a vendor's failure on an optional figure never stops a run
        text = exc.one_line() if hasattr(exc, "one_line") else str(exc)
        logging.getLogger("chipbench").warning("warning: no MFU for this run: %s", text)
        return {"peak_flops": None, "peak_note": "peak unknown: " + text}
    if peak is None:
        return {"peak_flops": None,
                "peak_note": "vendor '{}' states no peak for {}".format(facade.vendor, precision)}
    return {"peak_flops": float(peak), "peak_note": ""}


def run_start_facts(facade: Any, device: Any, precision: str, flops_per_image: Optional[float],
                    how_counted: str = "") -> Dict[str, Any]:
    """What a case records once at run start: its FLOPs per image (counted by
    :func:`flops_per_trained_image` or :func:`training_flops_per_image`; None where torch has no
    counter) with how they were counted (``flops_note``), and the peak per device (see
    :func:`peak_flops`)."""
    facts: Dict[str, Any] = {"flops_per_image": flops_per_image, "flops_note": how_counted}
    if flops_per_image is None:
        facts["flops_note"] = "n/a: this torch has no flop counter (torch >= 2.1 has one)"
    facts.update(peak_flops(facade, device, precision))
    return facts


def figures(facts: Dict[str, Any], p_core: Optional[float], devices: int) -> Dict[str, Any]:
    """``flops_per_image``, ``achieved_tflops``, ``peak_tflops`` (all devices) and ``mfu``
    (0..1) from the run-start facts and ``p_core`` (images/s over all devices)."""
    per_image = facts.get("flops_per_image")
    peak = facts.get("peak_flops")
    out: Dict[str, Any] = {"flops_per_image": per_image, "flops_note": facts.get("flops_note", ""),
                           "peak_note": facts.get("peak_note", ""), "achieved_tflops": None,
                           "peak_tflops": None, "mfu": None}
    if peak:
        out["peak_tflops"] = peak * devices / 1e12
    if per_image and p_core:
        out["achieved_tflops"] = per_image * p_core / 1e12
    return checked_mfu(out)


MFU_UNRELIABLE = "MFU n/a: measured peak below achieved rate, peak unreliable"
"""What stands where an MFU above 100 % would: a run cannot compute faster than its device's peak,
so such a figure says the peak is wrong (a measured peak taken while the machine was busy), not
that the run was fast."""


def checked_mfu(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """``metrics`` with ``mfu`` recomputed from its ``achieved_tflops`` and ``peak_tflops``, the
    one rule of every output (result.json, report.md, ``core compare`` and its ``--json``): an
    MFU is a number only from 0 to 1 (100 %); above that it is None, ``mfu_flag`` says so
    (:data:`MFU_UNRELIABLE`, with both rates) and the peak note carries the flag. A result read
    from a file is checked again, so a figure written before the rule (or by hand) is flagged too;
    ``mfu`` without both rates is taken as it stands when it is a number from 0 to 1."""
    from chipbench.measure.metrics import is_number

    out = dict(metrics)
    achieved, peak = out.get("achieved_tflops"), out.get("peak_tflops")
    if is_number(achieved) and is_number(peak) and peak > 0:
        mfu: Any = achieved / peak
    else:
        mfu = out.get("mfu")
    out.pop("mfu_flag", None)
    if not is_number(mfu) or mfu < 0:
        out["mfu"] = None
    elif mfu > 1.0:
        out["mfu"] = None
        out["mfu_flag"] = "{} ({} TFLOP/s achieved against a peak of {} TFLOP/s: {:.0%})".format(
            MFU_UNRELIABLE, _rate_text(achieved), _rate_text(peak), mfu)
        note = out.get("peak_note") or ""
        if MFU_UNRELIABLE not in note:
            out["peak_note"] = out["mfu_flag"] + ("; " + note if note else "")
    else:
        out["mfu"] = float(mfu)
    return out


def _rate_text(value: Any) -> str:
    """A TFLOP/s figure of a flag, or ``?`` where the file holds none."""
    from chipbench.measure.metrics import is_number

    return "{:.3g}".format(value) if is_number(value) else "?"
