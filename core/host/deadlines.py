"""Calls given a deadline: a plugin's import, its ``vendor_detect``, an observing hook in a run.

A driver probe that hangs must not hang the command that asked it: the call runs in a daemon
thread and is given up on after a number of seconds that an environment variable may set.
"""

import os
import threading
from typing import Any, Callable, Dict

from chipbench.errors import UserError


def env_seconds(name: str, default: float, low: float, high: float) -> float:
    """Seconds from environment variable ``name`` (``default`` where it is unset or empty); a
    value that is no number within ``low``..``high`` is a one-line error naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # nan fails too
        raise UserError("{}={!r} is not a number of seconds in {:g}..{:g}".format(
            name, os.environ[name], low, high), "set it to e.g. {:g}, or unset it".format(default))
    return value


class CallTimedOut(Exception):
    """A plugin's import or ``vendor_detect`` did not return in time (it keeps running in a
    daemon thread)."""


def call_with_timeout(function: Callable[[], Any], timeout: float, what: str) -> Any:
    """``function()``, run in a daemon thread and waited for at most ``timeout`` seconds.

    Its result is returned and its exception re-raised; if it is still running after
    ``timeout``, :class:`CallTimedOut` is raised and the thread is left behind (a daemon
    thread does not keep the process alive, so a hung driver probe cannot hang the command).
    """
    outcome: Dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # noqa: B902 - handed to the caller, SystemExit included
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="chipbench " + what, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise CallTimedOut("{} did not return within {:g} s".format(what, timeout))
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
