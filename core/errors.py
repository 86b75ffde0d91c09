"""Errors that the CLI turns into one line and an exit code, never a traceback (unless ``--debug``)."""

import contextlib
import errno
import logging
import os
import signal
import threading
from typing import Any, Iterator, List, Optional, Tuple, Type, Union

from chipbench.util.text import LINE_LIMIT, shorten, terminal

TRACE = logging.getLogger("chipbench.trace")
"""Tracebacks go here: into the rank's log file, never onto the terminal."""
TRACE.propagate = False

EXIT_USER_ERROR = 2
EXIT_RUN_FAILED = 1
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT); SIGTERM gives 143 (128 + SIGTERM)."""
EXIT_PIPE_CLOSED = 141
"""The output's reader went away (``core compare ... | head``): 128 + SIGPIPE, as shell tools."""


class ChipbenchError(Exception):
    """Base of chipbench's expected errors: the message names the problem, ``fix`` says what to do."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, problem: str, fix: Optional[str] = None) -> None:
        if fix is None and "Original Traceback" in problem:
            # re-raised by torch's DataLoader from a worker process: keep the original line
            last = [line for line in problem.strip().splitlines() if line.strip()][-1]
            problem = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        """The problem and its fix as one line, as the CLI prints it: line breaks as spaces,
        other control characters escaped (a value read from a file or a plugin's answer may hold
        any), each part cut to :data:`chipbench.util.text.LINE_LIMIT` characters at most."""
        text = _line_part(self.problem)
        if self.fix:
            text = "{}; {}".format(text.rstrip("."), _line_part(self.fix))
        return text


def _line_part(text: str) -> str:
    return terminal(shorten(text, LINE_LIMIT).replace("\r\n", " ").replace("\n", " ").strip())


class UserError(ChipbenchError):
    """Bad input from the user: unknown vendor, missing data, broken YAML, bad value (exit code 2)."""


class PluginError(ChipbenchError):
    """A plugin failed to load, or a hook of the chosen vendor raised or returned the wrong type."""


class HookTimedOut(PluginError):
    """A vendor hook that observes a run (memory, samples) did not answer in time: the run goes
    on without the figures it gives (:class:`chipbench.measure.monitor.DeviceMonitor` bounds them)."""


class RunFailed(ChipbenchError):
    """A run started but did not finish: a worker died, a rank hung, a loss became non-finite."""

    exit_code = EXIT_RUN_FAILED


class Interrupted(KeyboardInterrupt):
    """A signal that stops a run as Ctrl-C does (SIGTERM from a batch system's cancel)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
"""Signals that stop a run: Ctrl-C, a batch system's cancel, a closed terminal or SSH session.
SIGINT and SIGHUP are taken only where nothing else handles or ignores them (a shell's background
job ignores SIGINT, ``nohup`` SIGHUP). While SIGINT is taken, Ctrl-C arrives as
:class:`Interrupted`, so a bare ``KeyboardInterrupt`` raised by a plugin's or a case's own code is
told apart from the user's Ctrl-C (:func:`plugin_fault`)."""


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def _free(name: str, handler: Any) -> bool:
    """Whether chipbench may take signal ``name`` whose handler is now ``handler``: SIGTERM
    always, SIGINT only from Python's default (Ctrl-C raising KeyboardInterrupt), SIGHUP only from
    the system's default (ending the process)."""
    if name == "SIGINT":
        return handler is signal.default_int_handler
    if name == "SIGHUP":
        return handler is signal.SIG_DFL
    return True


def ctrl_c_taken() -> bool:
    """Whether Ctrl-C now raises :class:`Interrupted` (chipbench's handler is installed)."""
    try:
        return signal.getsignal(signal.SIGINT) is _raise_interrupted
    except (ValueError, OSError):  # pragma: no cover - a platform without SIGINT
        return False


def interrupt_on_stop_signals(names: Tuple[str, ...] = STOP_SIGNALS) -> List[Tuple[int, Any]]:
    """Make the signals ``names`` (default :data:`STOP_SIGNALS`) raise :class:`Interrupted`
    (main thread only); returns the handlers that :func:`restore_handlers` puts back. A torchrun
    worker takes SIGINT only: torchrun stops it with SIGTERM, whose default it keeps."""
    if threading.current_thread() is not threading.main_thread():
        return []
    saved = []
    for name in names:
        signum = getattr(signal, name, None)
        if signum is None or not _free(name, signal.getsignal(signum)):
            continue
        saved.append((signum, signal.signal(signum, _raise_interrupted)))
    return saved


def restore_handlers(saved: List[Tuple[int, Any]]) -> None:
    """Put back the handlers :func:`interrupt_on_stop_signals` replaced."""
    for signum, handler in saved:
        signal.signal(signum, handler)


def stop_name(exc: BaseException) -> str:
    """What stopped a run: ``Ctrl-C``, or the signal's name (``SIGTERM``, ``SIGHUP``)."""
    if isinstance(exc, Interrupted) and exc.signum != signal.SIGINT:
        return signal.Signals(exc.signum).name
    return "Ctrl-C"


def interrupt_exit_code(exc: BaseException) -> int:
    """130 for Ctrl-C, 128 + the signal number for an :class:`Interrupted`."""
    return exc.exit_code if isinstance(exc, Interrupted) else EXIT_INTERRUPTED


USER_ERRNOS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
               errno.EDQUOT: "disk quota exceeded", errno.ENOTDIR: "a part of the path is a file",
               errno.EEXIST: "it exists and is not a folder",
               errno.EISDIR: "it is a folder", errno.ENAMETOOLONG: "the name is too long",
               errno.ELOOP: "a symbolic link on the path loops"}
"""File-system errors that a user fixes (a path, a permission, free space), not a bug."""


def user_os_error(exc: BaseException, what: Optional[str] = None,
                  fix: Optional[str] = None, verb: str = "use") -> Optional[UserError]:
    """``exc`` as a one-line :class:`UserError` when it is a file-system error the user fixes
    (permission, read-only, full disk, a file where a folder should be, a name too long); else
    None. ``verb`` says what failed (``cannot use``, ``cannot create``, ...): a caller that does
    not know whether the path was read or written keeps ``use``."""
    if not isinstance(exc, OSError) or exc.errno not in USER_ERRNOS:
        return None
    what = what or str(exc.filename or "a file")
    where = " ({})".format(shorten(str(exc.filename))) if exc.filename \
        and str(exc.filename) not in what else ""
    what = shorten(what)
    return UserError("cannot {} {}{}: {}".format(verb, what, where, USER_ERRNOS[exc.errno]),
                     fix or "check that path: its permissions, free space, and that no part of "
                            "it is a file")


FULL_DISK_BYTES = 1 << 20
"""A file system with less free space than this (for an unprivileged writer) counts as full."""


def free_bytes(path: Union[str, "os.PathLike[str]"]) -> Optional[int]:
    """Bytes free to an unprivileged writer on the file system that holds ``path`` (or, where
    it does not exist, its nearest existing folder); None where that cannot be told."""
    folder = os.path.abspath(str(path))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # gone meanwhile, or a platform without statvfs
        return None
    return int(stats.f_bavail) * int(stats.f_frsize)


def mount_point(path: Union[str, "os.PathLike[str]"]) -> str:
    """The folder that the file system holding ``path`` (or its nearest existing folder) is
    mounted on: what ``df`` names."""
    folder = os.path.realpath(str(path))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    while not os.path.ismount(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


def full_disk_error(exc: BaseException, path: Union[str, "os.PathLike[str]"], what: str,
                    fix: str) -> Optional[UserError]:
    """``exc``, raised while writing ``path``, as the one line "cannot write <what>: no space
    left on <mount point>" when the file system there is full; else None. For writers that do
    not raise ``ENOSPC`` on a full disk: torch's zip writer (``torch.save``) raises a
    ``RuntimeError`` ("[enforce fail at inline_container.cc] ... unexpected pos"). Call it
    before removing what the failed write left, which frees the space again."""
    if not isinstance(exc, Exception):  # Ctrl-C and the like
        return None
    free = free_bytes(path)
    if free is None or free >= FULL_DISK_BYTES:
        return None
    detail = exception_text(exc).strip().splitlines()
    return UserError("cannot write {}: no space left on {} ({:.1f} MiB free; {}: {})".format(
        shorten(str(what)), shorten(mount_point(path)), free / 2**20, type(exc).__name__,
        shorten(detail[0] if detail else "", 160)), fix)


ALLOCATION_FAILURES = ("out of memory", "can't allocate memory", "cannot allocate memory",
                       "failed to allocate")


def is_allocation_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a host or device allocation that failed (any vendor's wording)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(f in text for f in ALLOCATION_FAILURES)


def plugin_fault(exc: BaseException) -> bool:
    """Whether ``exc``, raised inside a plugin's or a case's code, is that code's failure: anything
    but the user's Ctrl-C or stop signal (``sys.exit()`` and odd ``BaseException`` subclasses
    included). While chipbench takes SIGINT, Ctrl-C is an :class:`Interrupted`, so a bare
    ``KeyboardInterrupt`` is the code's own; elsewhere it may be Ctrl-C and is let through."""
    if isinstance(exc, GeneratorExit):
        return False
    if isinstance(exc, KeyboardInterrupt):
        return not isinstance(exc, Interrupted) and ctrl_c_taken()
    return True


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` on one line (pluggy's reasons span lines), control characters escaped and
    cut to :data:`chipbench.util.text.LINE_LIMIT` characters (a plugin's message may hold anything):
    how chipbench names a failure of plugin or case code, everywhere."""
    text = " ".join(line.strip() for line in exception_text(exc).splitlines() if line.strip())
    text = terminal(text, LINE_LIMIT)
    return "{}: {}".format(type(exc).__name__, text) if text else type(exc).__name__


@contextlib.contextmanager
def attributed(who: str, where: str, fix: str,
               passing: Tuple[Type[BaseException], ...] = ()) -> Iterator[None]:
    """Run plugin or case code, turning what it raises into one :class:`PluginError` line:
    ``<who> failed in <where>: Type: message``. The user's Ctrl-C or stop signal passes (see
    :func:`plugin_fault`), so do chipbench's own errors and the types in ``passing``. The one
    place where an exception of outside code gets its attribution (:func:`attribution`)."""
    try:
        yield
    except BaseException as exc:  # noqa: B902 - sys.exit() and the like in outside code too
        error = attribution(exc, who, where, fix, passing)
        if error is exc:
            raise
        raise error from exc


def failure_line(who: str, where: str, exc: BaseException) -> str:
    """The one line that attributes ``exc`` to the plugin or case code that raised it:
    ``<who> failed in <where>: <Type>: <message>``."""
    return "{} failed in {}: {}".format(who, where, describe_exception(exc))


def attribution(exc: BaseException, who: str, where: str, fix: str,
                passing: Tuple[Type[BaseException], ...] = ()) -> BaseException:
    """What :func:`attributed` raises for ``exc``: ``exc`` itself where it passes, else its one
    :class:`PluginError` line. For a hot path that cannot afford a context manager per call (the
    device facade): ``except BaseException as exc: raise attribution(...) from exc``, where
    ``attribution`` returned something else than ``exc``."""
    if isinstance(exc, (ChipbenchError,) + passing) or not plugin_fault(exc):
        return exc
    return PluginError(failure_line(who, where, exc), fix)


def exception_text(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in where even that raises (an exception can be built to)."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - whatever its __str__ raises
        return "(its message cannot be printed)"

