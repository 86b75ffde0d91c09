"""Leaving the process quickly once the command's work is done.

An interpreter that imported torch, torchvision and with them torch._dynamo spends most of a
second tearing its modules down at exit (0.9 s measured on 2 cores; 0.3 s with torch alone),
time that every ``core run`` and every torchrun worker would add to the user's wait and to the
run's end-to-end time while writing nothing. The console scripts therefore finish like this:
wait for any non-daemon thread, run the ``atexit`` handlers (logging's flush and close, temporary
files, ...), flush stdout and stderr, then ``os._exit``.

The wait for threads is bounded (:data:`EXIT_GRACE_S`): a case or a plugin that leaves a
non-daemon thread running (a loop that never ends, a pool never shut down) would otherwise keep
``core run`` (or a torchrun worker, and with it torchrun and ``core run``) from ever exiting after
the result was written. Such a thread is named in one warning, with whoever started it where
that is known (:func:`threads_owned_by`), and left behind; the exit code stays the command's.
"""

import atexit
import contextlib
import os
import sys
import threading
import time
import weakref
from typing import Iterator, List, NoReturn, Optional

from chipbench.util.text import shorten, terminal

EXIT_GRACE_S = 5.0
"""How long, in all, the end of a command waits for threads that are still running."""

_OWNERS: "weakref.WeakKeyDictionary[threading.Thread, str]" = weakref.WeakKeyDictionary()
"""Who started a thread, for the warning about threads left running (:func:`threads_owned_by`)."""


@contextlib.contextmanager
def threads_owned_by(owner: str) -> Iterator[None]:
    """Note ``owner`` (``case 'spirals'``) as the starter of every non-daemon thread started
    inside the block and still running at its end: :func:`exit_now` names it should such a
    thread keep the command from exiting."""
    before = set(threading.enumerate())
    try:
        yield
    finally:
        for thread in threading.enumerate():
            if thread not in before and not thread.daemon:
                _OWNERS.setdefault(thread, owner)


def _release_thread_pools(deadline: float) -> None:
    """What Python's own exit does before it waits for threads: tell idle thread pools
    (``concurrent.futures``, whose workers are non-daemon threads from Python 3.9 on) to end
    their workers. Bounded by ``deadline``: a pool waits for a task that is still running."""
    calls = list(getattr(threading, "_threading_atexits", []))
    if not calls:
        return

    def release() -> None:
        for call in reversed(calls):
            try:
                call()
            except Exception:  # noqa: BLE001 - one pool's failure must not stop the exit
                pass

    helper = threading.Thread(target=release, name="chipbench-exit", daemon=True)
    helper.start()
    helper.join(max(0.0, deadline - time.monotonic()))


def join_threads(grace_s: float = EXIT_GRACE_S) -> List[threading.Thread]:
    """Wait up to ``grace_s`` seconds in all for the non-daemon threads other than this one;
    return those still running then."""
    deadline = time.monotonic() + grace_s
    _release_thread_pools(deadline)
    current = threading.current_thread()
    left = []
    for thread in threading.enumerate():
        if thread is current or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            left.append(thread)
    return left


def left_running_warning(threads: List[threading.Thread], grace_s: float = EXIT_GRACE_S) -> str:
    """The one-line warning naming ``threads``, left running when the command exits, and who
    started each where known."""
    names = []
    for thread in threads:
        owner = _OWNERS.get(thread)
        names.append(terminal(shorten("{}{}".format(
            thread.name, " (started by {})".format(owner) if owner else ""))))
    return ("warning: {} thread{} still running {:g} s after the command finished: {}; exiting "
            "without waiting for {}".format(len(threads), "s were" if len(threads) > 1 else " was",
                                            grace_s, ", ".join(names),
                                            "them" if len(threads) > 1 else "it"))


def exit_now(code: Optional[int], grace_s: float = EXIT_GRACE_S) -> NoReturn:
    """Exit with ``code`` (None: 0) after the work Python's own exit would do that matters:
    non-daemon threads joined (for ``grace_s`` seconds in all: one still running then is named
    in a warning on stderr and left behind), ``atexit`` handlers run, stdout and stderr
    flushed."""
    left = join_threads(grace_s)
    if left and sys.stderr is not None:
        try:
            sys.stderr.write(left_running_warning(left, grace_s) + "\n")
        except (OSError, ValueError):  # closed or a reader that went away
            pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: the descriptor was closed when Python started
                stream.flush()
        except (OSError, ValueError):  # closed or a reader that went away
            pass
    os._exit(code or 0)
