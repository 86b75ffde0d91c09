"""How fast ``core --help`` answers, and proof that it does not import torch.

Measured as ratios in one run (the machines are shared and noisy): the median wall time of
``core --help`` against a bare ``python -c pass`` and against ``python -c "import torch"``.

    python benchmarks/cli_startup.py [--runs 9] [--json out.json]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "core --help": [sys.executable, "-m", "chipbench", "--help"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
}
NO_TORCH_CHECK = ("import contextlib, io, sys\nfrom chipbench.cli import main\n"
                  "with contextlib.redirect_stdout(io.StringIO()):\n    try:\n"
                  "        main(['--help'])\n    except SystemExit:\n        pass\n"
                  "assert 'torch' not in sys.modules, 'torch imported'\nprint(len(sys.modules))")


def median_seconds(cmd: List[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=str(ROOT), stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    modules = subprocess.run([sys.executable, "-c", NO_TORCH_CHECK], cwd=str(ROOT), check=True,
                             stdout=subprocess.PIPE, text=True).stdout.strip()
    for cmd in COMMANDS.values():  # warm the file cache once
        subprocess.run(cmd, cwd=str(ROOT), stdout=subprocess.DEVNULL, check=True)
    medians: Dict[str, float] = {name: median_seconds(cmd, args.runs)
                                 for name, cmd in COMMANDS.items()}
    figures = {
        "runs": args.runs,
        "median_s": medians,
        "torch_imported_by_help": False,
        "modules_loaded_by_help": int(modules),
        "help_over_bare_python": medians["core --help"] / medians["python -c pass"],
        "help_over_import_torch": medians["core --help"] / medians["python -c 'import torch'"],
    }
    for name, value in medians.items():
        print("{:<28} median {:.3f} s".format(name, value))
    print("core --help / bare python  = {:.2f}x".format(figures["help_over_bare_python"]))
    print("core --help / import torch = {:.2f}x".format(figures["help_over_import_torch"]))
    print("torch imported by --help: no ({} modules loaded)".format(modules))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
