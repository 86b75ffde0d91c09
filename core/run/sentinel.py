"""A run's lock, and the sentinel that speaks for a run whose process was killed.

``core run`` holds a lock on ``<run_dir>/.lock-node<R>`` for as long as it runs (a POSIX record
lock: the kernel drops it however the process ends, SIGKILL and the out-of-memory killer
included, and forked children such as loader workers do not inherit it). Two things read it:

- ``core run --resume`` refuses a folder whose run is still going;
- the sentinel, a small process (no torch) started beside the run. It waits for the lock. When it
  gets it, ``result.json`` still says ``running`` and the run's process is gone, that process died
  without a word: the sentinel records the run as failed with what it measured up to then, stops
  what the process had started (torchrun and its workers), writes the report, and prints one
  line. (A process that closes any descriptor of the lock file drops its lock while it runs on:
  the sentinel then waits for the process itself.)

    python -m chipbench.run.sentinel RUN_DIR NODE_RANK PID
"""

import errno
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS: runs are not locked
    fcntl = None  # type: ignore[assignment]

from chipbench.errors import UserError
from chipbench.measure.metrics import is_number
from chipbench.run.childproc import child_env, python_module_command
from chipbench.run.jsonrecord import of_kind
from chipbench.run.resultrecord import RESERVED_FIGURES, RESULT_KINDS, RunResult
from chipbench.run.runfiles import CHECKPOINT_FILE, RESULT_FILE, read_json_dict, write_json_atomic
from chipbench.util import safeio

STOP_GRACE_S = 15.0
"""How long the sentinel gives a dead run's torchrun to stop its workers before SIGKILL."""


def lock_path(run_dir: Path, node_rank: int) -> Path:
    """The lock file of node ``node_rank``'s run in ``run_dir`` (nodes may share the folder)."""
    return Path(run_dir) / ".lock-node{}".format(node_rank)


def torchrun_pid_path(run_dir: Path, node_rank: int) -> Path:
    """Where the launcher notes the pid of this node's torchrun while it runs."""
    return Path(run_dir) / "logs" / "torchrun-node{}.pid".format(node_rank)


HELD = (errno.EAGAIN, errno.EACCES)
"""What ``lockf`` says when another process holds the lock; any other error (a file system
without POSIX locks: ENOLCK, EOPNOTSUPP, ...) means the lock cannot be used at all."""


def _in_use(run_dir: Path) -> UserError:
    """The error for a folder whose run is still going, naming its process where known."""
    result = read_json_dict(Path(run_dir) / RESULT_FILE)
    try:
        pid, host = int(result["pid"]), str(result.get("host") or "")
    except (ValueError, KeyError, TypeError):
        pid, host = 0, ""
    here = host in ("", platform.node())
    owner = "pid {}{}".format(pid, "" if here else " on " + host) if pid else "another process"
    stop = "kill {}".format(pid) if pid and here else "stop it where it runs"
    return UserError("run folder {} is in use: its run is still going ({})".format(run_dir, owner),
                     "wait for it to end (a run that has just ended is still being recorded: "
                     "retry in a few seconds), or stop it (Ctrl-C where it runs, or {}), then "
                     "resume it".format(stop))


def check_not_running(run_dir: Path, node_rank: int) -> None:
    """Refuse ``run_dir`` if a live process holds node ``node_rank``'s lock (changes nothing).
    Not for the process that holds the lock: closing any descriptor of the file drops a POSIX
    lock of its process."""
    path = lock_path(run_dir, node_rank)
    if fcntl is None or not path.is_file():
        return
    try:  # a regular file, not through a link (refused in one line)
        fd = safeio.open_fd(path, os.O_RDWR, what="run file", fix=safeio.FIX_RUN_FOLDER)
    except OSError:  # unreadable: the run that follows reports the folder
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in HELD:
            raise _in_use(run_dir) from None
    finally:
        os.close(fd)  # closing drops the lock just taken


class RunLock:
    """This process's hold on a run folder; :meth:`release` (or the process's end) lets go.
    ``problem`` says why a folder could not be locked where its file system has no locks."""

    def __init__(self, run_dir: Path, node_rank: int) -> None:
        self.run_dir = Path(run_dir)
        self.node_rank = node_rank
        self.fd: Optional[int] = None
        self.problem = ""
        if fcntl is None:
            self.problem = "this platform has no POSIX record locks"
            return
        fd = safeio.open_fd(lock_path(run_dir, node_rank), os.O_RDWR | os.O_CREAT,
                            what="run file", fix=safeio.FIX_RUN_FOLDER)  # never through a link
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in HELD:
                raise _in_use(run_dir) from None
            self.problem = "its file system refuses a lock ({})".format(
                os.strerror(exc.errno) if exc.errno else exc)
            return
        self.fd = fd

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        """Let go of the lock (the sentinel then reads the final result and leaves)."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def start_sentinel(run_dir: Path, node_rank: int) -> Optional[subprocess.Popen]:
    """Start the sentinel for this process's run (it holds the lock already); None where it
    cannot start (no fcntl, no Python executable): the run goes on unwatched."""
    if fcntl is None or not sys.executable:
        return None
    try:
        stderr: Any = sys.__stderr__.fileno() if sys.__stderr__ else subprocess.DEVNULL
    except (AttributeError, OSError, ValueError):
        stderr = subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            python_module_command("chipbench.run.sentinel", [str(Path(run_dir).resolve()),
                                                         str(node_rank), str(os.getpid())]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=child_env(),
            start_new_session=True)  # Ctrl-C and a closed terminal do not reach it
    except OSError:
        return None
    threading.Thread(target=proc.wait, name="chipbench-sentinel-reaper", daemon=True).start()
    return proc


def start_time(pid: int) -> Optional[str]:
    """When live process ``pid`` started (``/proc/<pid>/stat``'s 22nd field, in clock ticks since
    boot), which tells it from a later process that reused its pid; None once it has ended (a
    zombie waiting for its parent has ended too)."""
    try:
        stat = Path("/proc/{}/stat".format(pid)).read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
    if len(fields) <= 19 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _runs_workers_of(pid: int, run_dir: Path) -> bool:
    """Whether ``pid`` is a torchrun that starts ``chipbench.run.worker`` for ``run_dir``."""
    try:
        args = Path("/proc/{}/cmdline".format(pid)).read_bytes().split(b"\0")
    except OSError:
        return False
    return (b"torch.distributed.run" in args and b"chipbench.run.worker" in args and
            any(arg and Path(os.fsdecode(arg)).name == Path(run_dir).name for arg in args[-2:]))


def stop_leftover_workers(run_dir: Path, node_rank: int) -> Optional[int]:
    """Stop the torchrun (and its workers) that the dead run had started: SIGTERM to its process
    group, SIGKILL after :data:`STOP_GRACE_S`. Returns its pid, or None if none was left. The
    pid file goes either way: a later attempt must not find it."""
    pid_file = torchrun_pid_path(run_dir, node_rank)
    try:
        pid = int(safeio.read_text(pid_file, safeio.RUN_TEXT_LIMIT).strip())
    except (OSError, ValueError, UserError):
        return None
    finally:
        try:
            pid_file.unlink()
        except OSError:
            pass
    if pid <= 1 or not _runs_workers_of(pid, run_dir):
        return None
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.time() + STOP_GRACE_S
        while _runs_workers_of(pid, run_dir) and time.time() < deadline:
            time.sleep(0.2)
        if _runs_workers_of(pid, run_dir):
            os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return pid


def last_memory_sample(run_dir: Path) -> Optional[str]:
    """The highest memory figure among each rank's last monitor sample: ``21.9 of 23.5 GiB``."""
    best: Optional[Dict[str, Any]] = None
    for path in sorted((Path(run_dir) / "monitor").glob("rank*.jsonl")):
        try:
            lines = safeio.read_text(path, safeio.MONITOR_LIMIT).splitlines()
        except (OSError, UnicodeDecodeError, UserError):
            continue
        for line in reversed(lines):
            try:
                sample = json.loads(line)
                used, total = float(sample["mem_used_bytes"]), float(sample["mem_total_bytes"])
            except (ValueError, KeyError, TypeError):
                continue
            if used >= 0 and total > 0 and (best is None or used > best["used"]):
                best = {"used": used, "total": total}
            break
    if best is None:
        return None
    return "{:.1f} of {:.1f} GiB".format(best["used"] / 2**30, best["total"] / 2**30)


def death_message(pid: int, memory: Optional[str], stopped: Optional[int]) -> str:
    """The recorded error of a run whose process died without recording why."""
    parts = ["the run's process (pid {}) ended without recording why: it was killed (SIGKILL: "
             "the kernel's out-of-memory killer, a job scheduler, kill -9) or crashed".format(pid)]
    if memory:
        parts.append("its last memory sample: {}".format(memory))
    if stopped:
        parts.append("its torchrun (pid {}) and workers were stopped".format(stopped))
    return "; ".join(parts)


OOM_ADVICE = ("if `dmesg` names the out-of-memory killer, give each process less to hold "
              "(smaller images or batch, fewer processes)")
"""What to do about a process killed by SIGKILL, the out-of-memory killer's signal."""


def death_fix(run_dir: Path) -> str:
    """What to do about a run that died: the OOM killer's trace, and how to go on."""
    go_on = ("`core run --resume {}` continues from its last epoch checkpoint".format(run_dir)
             if (Path(run_dir) / CHECKPOINT_FILE).is_file()
             else "it left no checkpoint to resume from: start it again")
    return OOM_ADVICE + "; " + go_on


def record_death(run_dir: Path, node_rank: int, pid: int, result: RunResult) -> Optional[str]:
    """Record a dead run as failed (what it measured kept, with the memory peak of every
    monitor sample) and write its report; returns the one-line error (what happened; what to
    do), or None where the folder cannot be written."""
    from chipbench.run.runfolder import memory_peak_sample, read_progress

    memory = last_memory_sample(run_dir)
    progress = read_progress(run_dir)
    if progress is not None:
        result = replace(result, epochs=progress.epochs, metrics=progress.metrics,
                         data=progress.data or result.data)
    result = replace(result, status="failed", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     metrics=result.metrics.with_memory_sample(
                         memory_peak_sample(run_dir)).with_memory_columns(),
                     error="{}; {}".format(death_message(pid, memory, None), death_fix(run_dir)))
    try:  # recorded first: a batch system may end this process too, once its job has ended
        write_json_atomic(Path(run_dir) / RESULT_FILE, result.to_json())
    except OSError:
        return None
    stopped = stop_leftover_workers(run_dir, node_rank)
    if stopped:
        result = replace(result, error="{}; {}".format(death_message(pid, memory, stopped),
                                                        death_fix(run_dir)))
        try:
            write_json_atomic(Path(run_dir) / RESULT_FILE, result.to_json())
        except OSError:
            pass
    try:
        from chipbench.outputs.report import on_run_end

        on_run_end(run={"run_dir": str(run_dir)}, result=result.to_json())
    except Exception:  # noqa: BLE001 - the result is recorded; a report is a nicety here
        pass
    return str(result.error)


REFUSED_RESULT_FILE = "result.refused.json"
"""Where the sentinel keeps a dead run's result.json that no longer reads as the run wrote it
(``result.refused-<N>.json`` where that name is taken)."""
CARRIED_FIELDS = ("row_label", "row_label_zh", "precision", "target", "target_metric",
                  "sample_unit", "fix_hp", "command", "started_at", "resumed", "resumes",
                  "dataset_note", "versions", "environment")
"""What a rebuilt record keeps of the refused file, each only where it holds its kind."""


def rebuilt_result(run_dir: Path, pid: int, found: Dict[str, Any], refusal: UserError
                   ) -> Optional[RunResult]:
    """The record of a dead run whose result.json (``found``) was edited into something no run
    writes: that file kept aside under a free name (nothing is lost), a new record made from spec.json (case,
    vendor, config, topology) and each field of :data:`CARRIED_FIELDS` the file holds in its
    kind, with a note that says why. None where the file cannot be moved."""
    from chipbench.run.runfolder import read_spec

    folder = Path(run_dir)
    try:
        spec = read_spec(folder)
    except UserError:
        spec = None
    carried = {name: found[name] for name in CARRIED_FIELDS
               if found.get(name) is not None and of_kind(found[name], RESULT_KINDS[name])}
    if carried.get("target_metric") in RESERVED_FIGURES:
        del carried["target_metric"]
    if "target" in carried and not is_number(carried["target"]):
        del carried["target"]
    keep = folder / REFUSED_RESULT_FILE
    for number in range(1, 1000):
        if not os.path.lexists(str(keep)):
            break
        keep = folder / "result.refused-{}.json".format(number)
    try:  # a rename moves a link itself, never what it points to
        os.replace(str(folder / RESULT_FILE), str(keep))
    except OSError:
        return None
    return replace(RunResult(
        case=spec.case if spec else "?", vendor=spec.vendor if spec else None,
        config=spec.config if spec else None, topology=spec.topology if spec else None,
        hardware=spec.hardware if spec else None, pid=pid, host=platform.node(),
        note="result.json was not as the run wrote it ({}); kept as {}, this record rebuilt from "
             "spec.json".format(refusal.problem, keep.name)), **carried)


def watch(run_dir: Path, node_rank: int, pid: int) -> int:
    """Wait for the run's lock; if the run's process is then gone and the run still says
    ``running``, record its death."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # outlive what stops the run, to check on it
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    started = start_time(pid)
    try:
        fd = safeio.open_fd(lock_path(run_dir, node_rank), os.O_RDWR)
    except (OSError, UserError):
        return 0
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # blocks until the run's process let go, however it ended
        while True:
            result = read_json_dict(Path(run_dir) / RESULT_FILE)
            if (result.get("status") != "running" or result.get("pid") != pid
                    or result.get("host", platform.node()) != platform.node()):
                return 0  # recorded by the run itself, or a later attempt with its own sentinel
            # a process drops its lock when it closes any descriptor of the file (a plugin that
            # copies the run folder, say): the lock is then ours while the run goes on
            if started is None or start_time(pid) != started:
                break
            time.sleep(0.5)
        try:
            record: Optional[RunResult] = RunResult.from_json(result, Path(run_dir) / RESULT_FILE)
        except UserError as exc:  # edited since the run wrote it: kept aside, a new record made
            record = rebuilt_result(run_dir, pid, result, exc)
        if record is None:
            stop_leftover_workers(run_dir, node_rank)
            return 0
        error = record_death(run_dir, node_rank, pid, record)
    finally:
        os.close(fd)
    if error:
        try:
            sys.stderr.write("error: run {}: {}\n".format(run_dir, error))
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: ``python -m chipbench.run.sentinel RUN_DIR NODE_RANK PID``."""
    args = sys.argv[1:] if argv is None else argv
    if fcntl is None or len(args) != 3:
        return 2
    return watch(Path(args[0]), int(args[1]), int(args[2]))


if __name__ == "__main__":
    sys.exit(main())
