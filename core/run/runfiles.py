"""The files of a run folder: their names, and how its JSON files are read and written.

A run folder is untrusted input (it may come from another machine, or be edited by hand): every
read here is bounded and takes regular files only, every write goes through a temporary file and
a rename that follow no link (:mod:`chipbench.util.safeio`). What each file holds is checked by
its record (:mod:`chipbench.run.specrecord`, :mod:`chipbench.run.resultrecord`).
"""

import json
from pathlib import Path
from typing import Any, Dict

from chipbench.measure.metrics import finite
from chipbench.util import safeio

SPEC_FILE = "spec.json"
"""What every worker of the run runs (:class:`chipbench.run.specrecord.RunSpec`)."""
RESULT_FILE = "result.json"
"""The run's result, written at its start and rewritten at its end, whatever happened."""
PROGRESS_FILE = "progress.json"
"""What rank 0 measured so far, rewritten after each epoch."""
CHECKPOINT_FILE = Path("checkpoints") / "last.pt"
"""The last epoch's checkpoint (:mod:`chipbench.run.checkpoints`' format)."""
RETURNED_DIR = "ranks"
"""``ranks/rank<N>.returned``: rank N's ``case.run()`` returned (the launcher's evidence when the
other ranks then fail in a collective that rank N never joined)."""


def read_json_dict(path: Path, strict: bool = False) -> Dict[str, Any]:
    """The JSON object in run-folder file ``path``; {} where it is missing, unreadable or not an
    object. A file that is not a regular file (a symbolic link, a FIFO, a folder) or is over
    :data:`chipbench.util.safeio.RUN_JSON_LIMIT` is never read: {} too, or, where ``strict``, a
    one-line :class:`chipbench.util.safeio.FileRefused` naming it."""
    try:
        data = safeio.read_json(path, safeio.RUN_JSON_LIMIT)
    except safeio.FileRefused:
        if strict:
            raise
        return {}
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write strict JSON (NaN and infinities as null) through a temporary file created
    exclusively and a rename (:func:`chipbench.util.safeio.write_atomic`): readers never see half a
    file, every JSON reader can parse it, and no link in the run folder is written through."""
    text = json.dumps(finite(data), indent=2, default=str, allow_nan=False)
    safeio.write_atomic(path, text)
