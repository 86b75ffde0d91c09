"""What torchrun's log and the workers' error files say about a failed run, as one line."""

import re
import signal
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from chipbench.run.launcher import last_exception
from chipbench.util import safeio

STOP_SIGNALS = ("SIGTERM", "SIGINT")
"""How torchrun (and a user) stops workers: a rank that died of these is stopped, not a cause."""


def _torchrun_failures(summary: str) -> List[Dict[str, str]]:
    """The entries (``rank``, ``exitcode``, ``time``, ``traceback``) of a torchrun failure
    summary, in the order it lists them (``Failures`` first, the ``Root Cause`` last)."""
    entries = []
    for block in re.split(r"^\s*\[\d+\]:\s*$", summary, flags=re.MULTILINE)[1:]:
        fields = {}
        for key in ("rank", "exitcode", "time", "traceback"):
            match = re.search(r"^\s*{}\s*:\s*(.+)$".format(key), block, re.MULTILINE)
            if match:
                fields[key] = match.group(1).strip()
        if fields:
            entries.append(fields)
    return entries


def _signal_number(entry: Dict[str, str]) -> Optional[int]:
    """The signal that ended a failure entry's rank, from its exit code (``-15 (pid: 7)``, with
    or without the ``(SIGTERM)`` that newer torch versions add) or its ``Signal 15 (SIGTERM)``
    traceback line; None for a rank that exited by itself."""
    match = re.match(r"-(\d+)\b", entry.get("exitcode", "")) or re.match(
        r"Signal (\d+)\b", entry.get("traceback", ""))
    return int(match.group(1)) if match else None


def _killed(entry: Dict[str, str]) -> bool:
    """Whether a failure entry's rank was killed by a signal other than a stop signal."""
    number = _signal_number(entry)
    return number is not None and number not in {
        int(getattr(signal, name)) for name in STOP_SIGNALS}


def torchrun_root_cause(log_file: Path, offset: int = 0) -> str:
    """Why torchrun failed, as one line: the rank its failure summary blames, else the last
    exception line of its log (a rendezvous timeout, say), else ''.

    torchrun's "Root Cause" is the failure it *observed* first, a race: when one rank is killed
    (SIGKILL from the OOM killer or a user, a crash), the others fail in their next collective and
    may exit before torchrun notices the kill. A rank killed by a signal no later than the
    observed root cause is therefore the cause (the other ranks' errors are echoes); ranks that
    torchrun itself stopped (SIGTERM) are not."""
    try:  # its end: the summary is there (a log of gigabytes is not read whole)
        text = safeio.read_tail(log_file, offset).decode("utf-8", "replace")
    except (OSError, safeio.FileRefused):
        return ""
    if "Root Cause" not in text:
        error = last_exception(text)
        return "torchrun failed: " + error if error else ""
    before, root_section = text.rsplit("Root Cause", 1)
    roots = _torchrun_failures(root_section)
    if not roots:
        return ""
    root = roots[0]
    listed = before.rsplit("Failures:", 1)[1] if "Failures:" in before else ""
    if not _killed(root):
        killed = [entry for entry in _torchrun_failures(listed) if _killed(entry)
                  and entry.get("time", "") <= root.get("time", "~")]
        root = killed[0] if killed else root
    return "rank {} died (exit code {}{})".format(
        root.get("rank", "?").split(" ")[0], root.get("exitcode", "?").split(" ")[0],
        ": " + root["traceback"] if root.get("traceback", "").startswith("Signal") else "")


SIGKILLED = re.compile(r"\(exit code -9\b|Signal 9\b")
"""A :func:`torchrun_root_cause` line whose rank was killed by SIGKILL (the OOM killer's signal)."""


PEER_LOSS = re.compile(r"connection|socket|peer|broken pipe|timed out|timeout|remote|network|"
                       r"watchdog|collective|barrier|all_?reduce|broadcast|all_?gather|"
                       r"process group|tcpstore", re.IGNORECASE)
"""What a rank's error says when a peer it was exchanging with went away (in any collective
backend's words: no backend is named here)."""


def early_return(errors: List[Tuple[int, str]], returned: List[int]) -> Optional[str]:
    """Where a rank failed on a lost peer after other ranks had returned from the case's
    ``run()``: one line saying so (the failure alone blames the rank that was left waiting)."""
    lost = [(rank, line) for rank, line in errors
            if rank not in returned and PEER_LOSS.search(line)]
    if not returned or not lost:
        return None
    rank, line = lost[0]
    return ("rank{} {} returned from the case's run() while rank {} was still in a collective, "
            "which then failed: {}".format("s" if len(returned) > 1 else "",
                                           ", ".join(map(str, returned)), rank, line))


def worker_errors(run_dir: Path) -> List[Tuple[int, str]]:
    """``(rank, one-line error)`` that failed workers left behind, rank order."""
    folder = Path(run_dir) / "errors"
    if not folder.is_dir():
        return []
    files = [(int(p.stem[4:]), p) for p in folder.glob("rank*.txt") if p.stem[4:].isdigit()]
    lines = []
    for rank, path in sorted(files):
        try:  # a regular file of a line or two: anything else is no rank's error
            lines.append((rank, safeio.read_text(path, safeio.RUN_TEXT_LIMIT,
                                                 errors="replace").strip()))
        except (OSError, safeio.FileRefused):
            continue
    return [(rank, line) for rank, line in lines if line]
