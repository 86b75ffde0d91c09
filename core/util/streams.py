"""The command's streams: stdin, stdout and stderr whatever the parent left (closed ones are
opened on the null device), one-line messages on stderr, and a ``--json`` result alone on stdout."""

import contextlib
import io
import os
import sys
from typing import Any, Iterator, List

from chipbench.errors import UserError
from chipbench.util.text import terminal


def print_err(line: str) -> None:
    """One line on stderr (an error, a warning, a note): whatever text of a file or a plugin it
    holds is escaped (:func:`chipbench.util.text.terminal`), so it stays one line and cannot control
    the terminal."""
    print(terminal(line), file=sys.stderr, flush=True)


_RESULT_STREAMS: List[Any] = []


def emit(text: str) -> None:
    """Print a command's result: to the real stdout, also while :func:`results_only_on_stdout`
    sends everything else written there to stderr."""
    print(text, file=_RESULT_STREAMS[-1] if _RESULT_STREAMS else sys.stdout)


@contextlib.contextmanager
def results_only_on_stdout() -> Iterator[None]:
    """While a ``--json`` command runs, whatever else writes to stdout (a plugin's print, a native
    library's banner on file descriptor 1, a leftover detection thread) goes to stderr, so that
    stdout holds the JSON alone; :func:`emit` writes to the real stdout."""
    real = sys.stdout
    saved = None
    try:
        real.flush()
        fd = real.fileno()
        saved = os.dup(fd)
        os.dup2(sys.stderr.fileno(), fd)
        stream: Any = os.fdopen(os.dup(saved), "w", encoding=getattr(real, "encoding", None))
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):  # not a real file
        if saved is not None:
            os.dup2(saved, fd)
            os.close(saved)
            saved = None
        stream = real
    _RESULT_STREAMS.append(stream)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _RESULT_STREAMS.pop()
        if saved is not None:
            try:
                stream.close()  # flushes the JSON
            finally:
                sys.stdout.flush()
                os.dup2(saved, fd)
                os.close(saved)


STANDARD_STREAMS = ((0, "stdin", os.O_RDONLY, "r"), (1, "stdout", os.O_WRONLY, "w"),
                    (2, "stderr", os.O_WRONLY, "w"))


def open_standard_streams() -> None:
    """Give this process a stdin, stdout and stderr whatever its parent left it (``2>&-``, a
    daemon that starts programs with them closed): a descriptor 0-2 that is closed is opened on
    the null device, and Python's stream for it, None when it was closed at start, made anew.
    Otherwise the first file opened would get that number, and a print, a native library's
    message or a child process's output would land in it; and every ``sys.stderr.isatty()``
    would fail."""
    for fd, name, flags, mode in STANDARD_STREAMS:
        try:
            os.fstat(fd)
        except OSError:  # closed: the lowest free number, so this one (0 to 2 in order)
            opened = os.open(os.devnull, flags)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
        if getattr(sys, name) is None:
            stream = open(fd, mode, closefd=False,
                          errors="backslashreplace" if name == "stderr" else None)
            setattr(sys, name, stream)
            if getattr(sys, "__{}__".format(name)) is None:
                setattr(sys, "__{}__".format(name), stream)


def check_working_folder() -> None:
    """Refuse, in one line and before torch is imported (whose import fails on it with a fatal
    native error), to run in a working folder that no longer exists."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise UserError("the current folder no longer exists (it was deleted or moved after "
                        "the shell entered it)", "cd into a folder that exists and run the "
                        "command again") from None
    except OSError as exc:
        raise UserError("the current folder cannot be read ({})".format(exc.strerror or exc),
                        "cd into a folder you may read and run the command again") from None
