"""What the monitor costs the training: p_core with and without its sampling thread, in one run.

Runs the RetinaNet case on the embedded set in this process, alternating "monitor off" (the
sampling thread does nothing; the start, epoch-end and stop samples stay) and "monitor on" at the
given intervals, and prints the median p_core of each mode, the CPU time one sample takes (its
share of one core at each interval: a bound on the cost that training noise cannot blur) and,
last, the ratios on / off.

    python benchmarks/monitor_cost.py [--iters 12] [--repeats 3] [--intervals 2.0,0.2] [--size 128]
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional


def one_run(folder: Path, iters: int, interval: Optional[float], vendor: str, size: int) -> float:
    """p_core of one short run; ``interval`` None switches the sampling thread off."""
    import chipbench.monitor
    from chipbench.cli import main

    original = chipbench.monitor.DeviceMonitor._loop
    if interval is None:
        chipbench.monitor.DeviceMonitor._loop = lambda self: None  # type: ignore
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            code = main(["run", "retinanet", "--vendor", vendor, "--output", str(folder),
                         "--set", "train.max_iters={}".format(iters),
                         "--set", "train.throughput_skip_iters=2", "--set", "run.checkpoint=false",
                         "--set", "target.mAP=1.0", "--set", "data.synthetic.val_images=4",
                         "--set", "model.min_size={}".format(size),
                         "--set", "model.max_size={}".format(size),
                         "--set", "run.monitor_interval_s={}".format(interval or 2.0)])
    finally:
        chipbench.monitor.DeviceMonitor._loop = original
    if code != 0:
        raise SystemExit("run failed with exit code {}".format(code))
    return json.loads((folder / "result.json").read_text())["metrics"]["p_core"]


def sample_cpu_seconds(vendor: str, count: int = 50) -> float:
    """CPU time one monitor sample takes (device hooks + host figures), median of ``count``:
    a bound on the monitor's cost that training noise cannot blur."""
    import time

    from chipbench.manager import build_host
    from chipbench.monitor import DeviceMonitor
    from chipbench.selection import select_device

    facade = select_device(build_host(), vendor)
    device = facade.init_backend(0)
    with tempfile.TemporaryDirectory() as tmp:
        monitor = DeviceMonitor(facade, device, Path(tmp) / "m.jsonl", interval_s=3600)
        costs = []
        for _ in range(count):
            start = time.thread_time()
            monitor.sample()
            costs.append(time.thread_time() - start)
    return statistics.median(costs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=12, help="iterations per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (alternating)")
    parser.add_argument("--intervals", default="2.0,0.2", help="sampling intervals to test (s)")
    parser.add_argument("--size", type=int, default=128, help="input size (model.min/max_size)")
    parser.add_argument("--vendor", default="cpu")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    modes: List[Optional[float]] = [None] + [float(v) for v in args.intervals.split(",") if v]
    p_core: Dict[str, List[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for mode in modes:
                name = "off" if mode is None else "on {:g} s".format(mode)
                folder = Path(tmp) / "{}-{}".format(name.replace(" ", ""), repeat)
                p_core.setdefault(name, []).append(one_run(folder, args.iters, mode, args.vendor,
                                                          args.size))
    medians = {name: statistics.median(values) for name, values in p_core.items()}
    ratios = {name: medians[name] / medians["off"] for name in medians if name != "off"}
    print("{:<10} {:>10}  {}".format("monitor", "p_core", "runs (img/s)"))
    for name, values in p_core.items():
        print("{:<10} {:>10.3f}  {}".format(name, medians[name],
                                            " ".join("{:.3f}".format(v) for v in values)))
    per_sample = sample_cpu_seconds(args.vendor)
    shares = {m: per_sample / m for m in modes if m}
    print("one sample: {:.2f} ms of CPU; ".format(per_sample * 1e3) + "  ".join(
        "every {:g} s: {:.3%} of one core".format(m, share) for m, share in shares.items()))
    print("ratio on/off: " + "  ".join("{} {:.3f}x".format(k, v) for k, v in ratios.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"iters": args.iters, "p_core": p_core,
                                               "median": medians, "ratio_on_over_off": ratios,
                                               "sample_cpu_seconds": per_sample}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
