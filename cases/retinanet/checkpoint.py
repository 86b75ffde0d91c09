"""Checkpoints that hold only tensors and JSON, loaded with ``weights_only=True``.

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
from typing import Any, Dict, List

import torch

from chipbench.errors import UserError

FORMAT = "chipbench-checkpoint-1"


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


def save(state: Dict[str, Any], path: Path) -> None:
    """Write ``path`` whole (temporary file, fsync, rename): the previous one stays until then."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    packed = pack(state)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            torch.save(packed, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
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


def load(path: Path) -> Dict[str, Any]:
    """Read a checkpoint with torch's weights-only unpickler; anything else is refused."""
    path = Path(path)
    fix = "it is truncated, corrupt or not a chipbench checkpoint: start a new run"
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
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
        return unpack(data)
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise UserError("checkpoint {} is not a chipbench checkpoint ({})".format(path, exc),
                        fix) from None
