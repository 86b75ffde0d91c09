"""chipbench's checkpoint format: only tensors and JSON, loaded with ``weights_only=True``.

A run folder travels between machines and colleagues, so its ``checkpoints/last.pt`` is untrusted
input: nothing in it may run code when it is loaded. The state is split into a list of tensors and
one JSON string (dicts with non-string keys, tuples and Counters are tagged), which every torch
from 2.0 on loads with its restricted unpickler. The file is written whole (fsync) before it
replaces the previous one, so a checkpoint is always either the old one or the new one.
"""

import errno
import json
import os
import pickle
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from chipbench.errors import UserError, full_disk_error
from chipbench.measure.metrics import RunMeter, finite, is_count
from chipbench.run.context import RecordedEpochs
from chipbench.run.resultrecord import Metrics
from chipbench.run.runfiles import CHECKPOINT_FILE
from chipbench.util import safeio
from chipbench.util.text import shown

FORMAT = "chipbench-checkpoint-1"


def checkpoint_path(run_dir: Path) -> Path:
    """The checkpoint file of run folder ``run_dir``."""
    return Path(run_dir) / CHECKPOINT_FILE


def _encode(obj: Any, tensors: List[torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors.append(obj.detach())
        return {"__tensor__": len(tensors) - 1}
    if isinstance(obj, Counter):
        return {"__counter__": [[_encode(k, tensors), v] for k, v in obj.items()]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError("cannot checkpoint a {}".format(type(obj).__name__))


def _decode(obj: Any, tensors: List[torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__counter__" in obj:
        return Counter({_decode(k, tensors): v for k, v in obj["__counter__"]})
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    return {k: _decode(v, tensors) for k, v in obj.items()}


def pack(state: Dict[str, Any]) -> Dict[str, Any]:
    """``state`` as ``{"format", "meta": JSON string, "tensors": [...]}``."""
    tensors: List[torch.Tensor] = []
    meta = json.dumps(_encode(state, tensors))
    return {"format": FORMAT, "meta": meta, "tensors": tensors}


def unpack(data: Any) -> Dict[str, Any]:
    """The state that :func:`pack` packed."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("not a {} file".format(FORMAT))
    return _decode(json.loads(data["meta"]), list(data["tensors"]))


CHECKPOINT_LIMIT = 4 * safeio.GiB
"""The largest checkpoint loaded: RetinaNet R50-FPN's, with its SGD momentum, is about 260 MB."""


def save(state: Dict[str, Any], path: Path) -> None:
    """Write ``path`` whole (``<path>.tmp`` created exclusively, never through a link; fsync;
    rename): the previous one stays until then."""
    path = Path(path)
    packed = pack(state)
    try:
        safeio.ensure_folder(path.parent, what="run folder")
        with safeio.atomic_writer(path, what="checkpoint", fsync=True) as handle:
            try:
                torch.save(packed, handle)
            except Exception as exc:
                # torch's zip writer reports a full disk as "RuntimeError: [enforce fail at
                # inline_container.cc] ... unexpected pos", not as ENOSPC: the free space tells,
                # looked at while the temporary file still fills the disk
                full = full_disk_error(exc, path, "checkpoint {}".format(path), (
                    "free space there, or give --output a folder on a larger disk; then "
                    "continue with core run --resume {}".format(path.parent.parent)))
                if full is None:
                    raise
                raise full from None
        _fsync_dir(path.parent)
    except BaseException as exc:  # the temporary file is gone already
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                                                      errno.EACCES, errno.EPERM, errno.EIO):
            raise UserError(
                "cannot write checkpoint {} ({})".format(path, exc.strerror or exc),
                "free space or fix permissions there, then continue with core run --resume {}"
                .format(path.parent.parent)) from None
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


UNSAFE = re.compile(r"global|class|reduce|instantiate|blocked|persistent", re.IGNORECASE)
"""What torch's weights-only unpickler says when a file asks for code (any torch version)."""


def _unpickler_detail(text: str) -> str:
    """The line of a weights-only load error that says what was wrong (not the boilerplate)."""
    found = re.search(r"Unpickler error:\s*(.+)", text, re.DOTALL)
    tail = found.group(1) if found else "\n".join(text.splitlines()[1:])
    lines = [line.strip() for line in tail.splitlines() if line.strip()
             and not line.strip().startswith(("Check the documentation", "Please file"))]
    return lines[0] if lines else (text.strip().splitlines() or [""])[0]


def load(path: Path, limit: int = CHECKPOINT_LIMIT) -> Dict[str, Any]:
    """Read a checkpoint with torch's weights-only unpickler; anything else is refused, and so is
    a file that is no regular file of the run folder or is over ``limit`` bytes. The state's own
    figures are checked by :func:`check_run_state`, not here."""
    path = Path(path)
    fix = "it is truncated, corrupt or not a chipbench checkpoint: start a new run"
    try:  # a regular file of the run folder, not through a link, of a size this case writes
        handle = safeio.open_for_read(path, limit, what="checkpoint",
                                      fix=safeio.FIX_RUN_FOLDER)
    except OSError as exc:
        raise UserError("checkpoint {} is unreadable ({}: {})".format(
            path, type(exc).__name__, exc.strerror or exc), fix) from None
    try:
        with handle:
            data = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(str(exc))
        if UNSAFE.search(detail):
            raise UserError(
                "checkpoint {} holds objects other than tensors and plain data, refused unloaded "
                "({})".format(path, detail[:160]),
                "never load a checkpoint you did not write; start a new run") from None
        raise UserError("checkpoint {} is unreadable ({})".format(path, detail[:160]), fix) from None
    except Exception as exc:  # truncated zip, wrong magic, I/O error
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError("checkpoint {} is unreadable ({}: {})".format(
            path, type(exc).__name__, first[:160]), fix) from None
    try:
        state = unpack(data)
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise UserError("checkpoint {} is not a chipbench checkpoint ({})".format(path, exc),
                        fix) from None
    return state


ALTERED = ("it was altered, or is not this run's: restore the checkpoints/last.pt the run wrote, "
           "or start a new run")
"""The fix of a checkpoint whose figures no run writes."""


def _refuse(path: Path, what: str) -> UserError:
    return UserError("checkpoint {} {}".format(path, what), ALTERED)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_run_state(state: Any, path: Path) -> None:
    """Refuse a checkpoint whose run state (``epoch``, ``epochs``, ``meter``: what
    ``RunContext.save_checkpoint`` adds to the case's state) no run writes: an epoch that is not
    a number from 0, a record of epochs other than 0 to that epoch, counters that are negative,
    not finite or not whole where the meter counts (images, iterations), figures of an epoch that
    are not counts (:data:`chipbench.measure.metrics.FIGURES`)."""
    if not isinstance(state, dict) or not isinstance(state.get("meter"), dict):
        raise UserError("checkpoint {} is not a chipbench checkpoint (no meter)".format(path),
                        ALTERED)
    epoch = state.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise _refuse(path, "says epoch {}, not an epoch number (0 or more)".format(shown(epoch)))
    epochs = state.get("epochs")
    numbers = [e.get("epoch") if isinstance(e, dict) else e
               for e in (epochs if isinstance(epochs, list) else [])]
    if not isinstance(epochs, list) or numbers != list(range(epoch + 1)) \
            or not all(isinstance(e, dict) for e in epochs):
        raise _refuse(path, "says epoch {} with a record of epochs {}, not 0 to {}".format(
            epoch, shown(numbers if isinstance(epochs, list) else epochs), epoch))
    fields = RunMeter().state()
    whole = {key for key, value in fields.items() if _is_int(value)}
    meter = state["meter"]
    unknown = sorted(str(key) for key in meter if key not in fields)
    if unknown:
        raise _refuse(path, "has meter {}, which no chipbench meter holds".format(
            shown(", ".join(unknown))))
    for key, value in meter.items():
        if not is_count(value) or (key in whole and not _is_int(value)):
            raise _refuse(path, "has meter {} {}, not a {} of 0 or more".format(
                key, shown(value), "whole number" if key in whole else "number"))
    for low, high in (("core_images", "images"), ("iterations", "seen_iterations")):
        if low in meter and high in meter and meter[low] > meter[high]:
            raise _refuse(path, "has meter {} {} over {} {}".format(
                low, meter[low], high, meter[high]))
    for record in epochs:  # the rule of every record of an epoch's figures
        bad = Metrics.problem(record, strict=True)
        if bad is not None:
            raise _refuse(path, "records {} {} for epoch {}, not {}".format(
                bad[0], shown(bad[1]), record["epoch"], bad[2]))


def comparable(records: Any) -> Any:
    """Epoch records as their JSON text reads back (NaN and infinities as null, tuples as
    lists): a checkpoint's and ``progress.json``'s copies of one record compare equal."""
    return json.loads(json.dumps(finite(records), default=str))


def check_fits_run(state: Dict[str, Any], path: Path, recorded: RecordedEpochs,
                   planned_epochs: Optional[int] = None, planned_key: str = "train.epochs"
                   ) -> None:
    """Refuse a checkpoint (already through :func:`check_run_state`) that the run's own record
    contradicts: an epoch beyond the run's ``planned_epochs`` (the config's ``planned_key``), or
    epochs that differ from those the run folder records (``recorded``). A checkpoint is written
    before the epoch is recorded, so it may be one epoch ahead of ``progress.json``
    (``recorded.strict``), never behind it; ``result.json`` may lag further (it is written when
    an attempt ends)."""
    epoch = state["epoch"]
    if planned_epochs is not None and epoch >= planned_epochs:
        raise _refuse(path, "says epoch {} is done, but this run has {} epoch(s) ({})".format(
            epoch, planned_epochs, planned_key))
    record = recorded.epochs
    ahead = epoch + 1 - len(record)
    if ahead < 0 or (recorded.strict and ahead > 1):
        numbers = [r.get("epoch") if isinstance(r, dict) else r for r in record]
        raise _refuse(path, "says epochs 0 to {} are done, but {} records epochs {}".format(
            epoch, recorded.source, shown(numbers)))
    differ = [index for index, (own, recorded_epoch) in enumerate(zip(
        comparable(state["epochs"]), comparable(record))) if own != recorded_epoch]
    if differ:
        raise _refuse(path, "holds figures of epoch {} that differ from those {} records".format(
            differ[0], recorded.source))
