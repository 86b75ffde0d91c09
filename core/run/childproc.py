"""The command lines of chipbench's own Python child processes, none of which imports from the
current folder.

``python -m module`` and ``python -c code`` put the current folder first on ``sys.path``, so a
``json.py`` or ``torch.py`` lying where the user stands (a run folder received from someone else,
say) would run inside the sentinel, torchrun or a worker. Every Python process chipbench starts is
therefore started through :func:`python_module_command`: a ``-c`` bootstrap that drops the current
folder from ``sys.path`` before it imports anything, then runs the module as ``-m`` would. It works
on every Python chipbench supports (``-P`` and ``PYTHONSAFEPATH`` exist only from 3.11 on; where
they exist, :func:`child_env` sets ``PYTHONSAFEPATH`` as well, so that the processes those
children start themselves, a spawned helper say, are covered too).

The ``core`` console script is safe already: its ``sys.path[0]`` is the folder of the script.
``python -m chipbench`` is not (Python adds the current folder before chipbench runs), which is why
the documentation shows ``core``.
"""

import os
import sys
from typing import Dict, List, Mapping, Optional, Sequence

# Only built-in modules (sys, which needs no import from a path) are touched before the current
# folder's entry is gone; runpy comes from the standard library after that.
BOOTSTRAP = (
    "import sys\n"
    "if sys.path and sys.path[0] in ('', '.'):\n"
    "    del sys.path[0]\n"
    "import runpy\n"
    "del sys.argv[0]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def python_module_command(module: str, args: Sequence[str] = (),
                          python: Optional[str] = None, unbuffered: bool = False) -> List[str]:
    """The command line that runs ``python -m module args`` without the current folder on
    ``sys.path`` (``unbuffered``: ``-u``, as torchrun starts its workers)."""
    command = [python or sys.executable]
    if unbuffered:
        command.append("-u")
    return command + ["-c", BOOTSTRAP, module] + [str(arg) for arg in args]


def child_env(env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``env`` (this process's environment by default) for a chipbench child process: with
    ``PYTHONSAFEPATH=1``, which keeps the current folder off ``sys.path`` in any Python 3.11+
    process started below it."""
    full = dict(os.environ if env is None else env)
    full["PYTHONSAFEPATH"] = "1"
    return full
