"""FLOPs of the training step, achieved TFLOP/s and MFU (model FLOPs utilisation).

The FLOPs of one training step (forward + backward) are counted once at the start of a run, on
the real model and a real input of the run's size, with torch's flop counter
(``torch.utils.flop_counter.FlopCounterMode``, torch 2.1 and later; on older torch the figures
are "n/a"). The counter counts matrix multiplications and convolutions (2 FLOPs per
multiply-add), not element-wise operations nor the optimizer step. Then, with ``p_core`` in
images per second over all devices::

    achieved FLOP/s = flops_per_image * p_core
    MFU             = achieved FLOP/s / (peak FLOP/s per device * devices)

The peak comes from the vendor's optional ``device_peak_flops`` hook (None: no MFU).
"""

import logging
import random
from typing import Any, Callable, Dict, Optional, Sequence

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


def training_flops_per_image(model: Any, images: int, make_inputs: Callable[[], Sequence[Any]]
                             ) -> Optional[float]:
    """FLOPs of one forward + backward of ``model(*make_inputs())`` (a batch of ``images``
    images), divided by ``images``. The output's losses (a dict) or elements are summed for the
    backward. The gradients are cleared afterwards and every random generator restored (also
    around ``make_inputs``, which may read a data set with random flips), so that the run trains
    as if nothing had been counted. None where torch has no counter."""
    if not flop_counter_available():
        return None
    import numpy as np
    import torch

    states = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    was_training = model.training
    model.train()
    try:
        inputs = make_inputs()
        total = count_flops(lambda: _loss_of(model(*inputs)).backward())
    finally:
        for param in model.parameters():
            param.grad = None
        model.train(was_training)
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
    return None if total is None else total / max(int(images), 1)


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


def run_start_facts(facade: Any, device: Any, precision: str, model: Any, images: int,
                    make_inputs: Callable[[], Sequence[Any]]) -> Dict[str, Any]:
    """What a case records once at run start: FLOPs per image (see
    :func:`training_flops_per_image`) and the peak per device (see :func:`peak_flops`)."""
    facts: Dict[str, Any] = {
        "flops_per_image": training_flops_per_image(model, images, make_inputs)}
    if facts["flops_per_image"] is None:
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
        if out["peak_tflops"]:
            out["mfu"] = out["achieved_tflops"] / out["peak_tflops"]
    return out
