"""What RetinaNet keeps in a checkpoint, and how a resumed run takes it back.

chipbench writes and reads the file (``ctx.save_checkpoint``, ``ctx.load_checkpoint``: tensors and
plain data only, checked against the run's record); this module holds the case's own part: the
model, optimizer, scheduler, loss scaler and every rank's RNG, and the check that they fit the
model and optimizer this run built.
"""

import random
from typing import Any, Dict, List, Optional, cast

import numpy as np
import torch

from chipbench.case import RunContext, UserError
from chipbench.cases.retinanet.engine import load_optimizer_state


def rng_state() -> Dict[str, Any]:
    """This process's RNG states as tensors and plain containers (a checkpoint loads them with
    ``weights_only=True``)."""
    # the legacy (tuple) form, which numpy returns by default; its stubs also allow a dict
    name, keys, pos, has_gauss, cached = cast(tuple, np.random.get_state())[:5]
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [str(name), [int(k) for k in keys], int(pos), int(has_gauss),
                      float(cached)]}


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def case_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               scaler: Optional[Any], rng: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The case's part of a checkpoint (``rng``: every rank's :func:`rng_state`, in rank
    order)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng}


def restore(ctx: RunContext, state: Dict[str, Any], model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Optional[Any]) -> int:
    """Load a checkpoint's ``state`` into this run (the case's parts, then ``ctx.resume``); the
    epoch to train next. A checkpoint of another model or another run is a one-line
    :class:`UserError`."""
    try:
        model.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][ctx.rank % len(state["rng"])])
        return ctx.resume(state)
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError,
            ZeroDivisionError) as exc:  # another model's, or another run's checkpoint
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UserError("checkpoint {} does not fit this run ({}: {})".format(
            ctx.checkpoint_path, type(exc).__name__, detail),
            "resume the run that wrote it, or start a new run") from None
