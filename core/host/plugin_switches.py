"""The environment switches of plugin loading, read in one place.

- ``CHIPBENCH_STRICT_PLUGINS=1`` makes broken plugins fatal (exit 2 naming every broken one);
- ``CHIPBENCH_BLOCK_PLUGINS=a,b`` blocks the named plugins (``pm.set_blocked``): entry-point or
  built-in module names (not even imported) and vendor names as ``core vendors`` shows them;
  a name that matches nothing is warned about on stderr;
- ``CHIPBENCH_TRACE_HOOKS=1`` prints every hook call and result to stderr (pluggy's tracing);
- ``CHIPBENCH_DETECT_TIMEOUT_S=<seconds>`` bounds each ``vendor_detect`` and each entry point's
  import (default 60): one that has not returned by then (a driver probe that hangs) is recorded
  as broken, and every command goes on without it instead of hanging.
"""

import os
from typing import List

from chipbench.errors import UserError
from chipbench.host.deadlines import CallTimedOut, env_seconds

ENV_STRICT = "CHIPBENCH_STRICT_PLUGINS"
ENV_BLOCK = "CHIPBENCH_BLOCK_PLUGINS"
ENV_TRACE = "CHIPBENCH_TRACE_HOOKS"
ENV_DETECT_TIMEOUT = "CHIPBENCH_DETECT_TIMEOUT_S"

DETECT_TIMEOUT_S = 60.0
"""A ``vendor_detect`` that has not returned after this long is given up on (broken)."""

MIN_DETECT_TIMEOUT_S, MAX_DETECT_TIMEOUT_S = 0.1, 3600.0


def env_flag(name: str) -> bool:
    """An on/off environment switch; a value that is neither is a one-line error."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise UserError("{}={!r} is neither on nor off".format(name, os.environ[name]),
                    "set it to 1 (on) or 0 (off), or unset it")


def blocked_names() -> List[str]:
    """The names of ``CHIPBENCH_BLOCK_PLUGINS``, each once, in the order given."""
    names = [n.strip() for n in os.environ.get(ENV_BLOCK, "").split(",") if n.strip()]
    return list(dict.fromkeys(names))


def detect_timeout() -> float:
    """Seconds one ``vendor_detect`` may take: ``$CHIPBENCH_DETECT_TIMEOUT_S`` or the default."""
    return env_seconds(ENV_DETECT_TIMEOUT, DETECT_TIMEOUT_S, MIN_DETECT_TIMEOUT_S,
                       MAX_DETECT_TIMEOUT_S)


def hung(exc: CallTimedOut, name: str) -> str:
    """The broken record's line for plugin ``name`` that did not return in time."""
    return "{} (a hung driver probe?); fix the plugin, block it with {}={}, or raise {}".format(
        exc, ENV_BLOCK, name, ENV_DETECT_TIMEOUT)
