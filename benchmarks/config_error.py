"""How fast a config error is reported: ``core run retinanet --set train.lr=-1`` against
``python -c "import torch"``.

The config is checked before torch or any plugin is imported, so the error should come back in
a fraction of torch's import time. Measured as a ratio in one run (the machines are shared and
noisy); the ratio is printed last.

    python benchmarks/config_error.py [--runs 5]
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]
CONFIG_ERROR = [sys.executable, "-m", "chipbench", "run", "retinanet", "--set", "train.lr=-1"]
IMPORT_TORCH = [sys.executable, "-c", "import torch"]


def median_seconds(cmd: List[str], runs: int, expect: int) -> float:
    """Median wall time of ``cmd`` over ``runs`` runs; each must exit with ``expect``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=str(ROOT), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != expect:
            raise SystemExit("{} exited {}: {}".format(" ".join(cmd), proc.returncode,
                                                        proc.stderr.strip()))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for cmd, code in ((CONFIG_ERROR, 2), (IMPORT_TORCH, 0)):  # warm the file cache once
        median_seconds(cmd, 1, code)
    error_s = median_seconds(CONFIG_ERROR, args.runs, 2)
    torch_s = median_seconds(IMPORT_TORCH, args.runs, 0)
    print("core run retinanet --set train.lr=-1: {:.3f} s (median of {})".format(error_s,
                                                                              args.runs))
    print("python -c 'import torch':            {:.3f} s".format(torch_s))
    print("ratio config error / import torch: {:.2f}".format(error_s / torch_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
