"""1 process vs 2 processes (torchrun, gloo) on this machine, measured in one run.

Runs the RetinaNet case on the embedded set for a fixed number of iterations per rank, first as
one process, then as two on this node, and prints both rows of the seed's table and their ratios.

    python benchmarks/scaling.py [--iters 20] [--vendor cpu] [--json out.json]
"""

import argparse
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(nproc: int, iters: int, vendor: str, folder: Path) -> Dict[str, Any]:
    out = folder / "nproc{}".format(nproc)
    cmd = [sys.executable, "-m", "chipbench", "run", "retinanet", "--vendor", vendor,
           "--nproc-per-node", str(nproc), "--master-port", str(free_port()), "--output", str(out),
           "--set", "train.max_iters={}".format(iters), "--set", "train.throughput_skip_iters=2",
           "--set", "run.checkpoint=false", "--set", "target.mAP=1.0"]
    subprocess.run(cmd, cwd=str(ROOT), check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "result.json").read_text())["metrics"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20, help="iterations per rank")
    parser.add_argument("--vendor", default="cpu")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, args.iters, args.vendor, Path(tmp))
        two = run(2, args.iters, args.vendor, Path(tmp))
    keys = ("images", "p_whole", "p_train", "p_core", "train_seconds", "core_seconds",
            "mem_used_peak_bytes")
    figures = {"iters_per_rank": args.iters, "vendor": args.vendor,
               "nproc1": {k: one.get(k) for k in keys}, "nproc2": {k: two.get(k) for k in keys},
               "ratio_2_over_1": {k: two[k] / one[k] for k in ("p_whole", "p_train", "p_core")
                                  if one.get(k) and two.get(k)}}
    print("{:<8} {:>7} {:>9} {:>9} {:>9}".format("procs", "images", "p_whole", "p_train", "p_core"))
    for name, m in (("1", one), ("2", two)):
        print("{:<8} {:>7} {:>9.2f} {:>9.2f} {:>9.2f}".format(
            name, m["images"], m["p_whole"], m["p_train"], m["p_core"]))
    print("2 / 1:   " + "  ".join("{} {:.2f}x".format(k, v)
                                 for k, v in figures["ratio_2_over_1"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
