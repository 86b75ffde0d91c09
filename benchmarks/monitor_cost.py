"""What the monitor costs the training: p_core with and without its sampling thread, in one run.

Runs the RetinaNet case on the embedded set in this process, alternating "monitor off" (the
sampling thread does nothing; the start, epoch-end and stop samples stay) and "monitor on" at the
given intervals, and prints the median p_core of each mode, the CPU time one sample takes (its
share of one core at each interval: a bound on the cost that training noise cannot blur) and,
last, the ratios on / off.

    python benchmarks/monitor_cost.py [--iters 12] [--repeats 3] [--intervals 2.0,0.2] [--size 128]

``--sample-paths`` instead measures what one cuda-vendor sample costs through each of its two
paths, NVML in-process (``pynvml``, the ``chipbench[nvidia]`` extra) and an ``nvidia-smi``
process, wall time and CPU time (the tool's own process included). Where either is missing
(a machine without an NVIDIA driver) ``--fake`` stands in a fake ``pynvml`` module and a fake
``nvidia-smi`` script, and the output says so: the fake tool is a shell script, far cheaper
than the real one, so its figure is a lower bound of the process path's cost.

    python benchmarks/monitor_cost.py --sample-paths [--fake] [--count 200]
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple


def one_run(folder: Path, iters: int, interval: Optional[float], vendor: str, size: int) -> float:
    """p_core of one short run; ``interval`` None switches the sampling thread off."""
    import chipbench.measure.monitor
    from chipbench.cli import main

    original = chipbench.measure.monitor.DeviceMonitor._loop
    if interval is None:
        chipbench.measure.monitor.DeviceMonitor._loop = lambda self: None  # type: ignore
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
        chipbench.measure.monitor.DeviceMonitor._loop = original
    if code != 0:
        raise SystemExit("run failed with exit code {}".format(code))
    return json.loads((folder / "result.json").read_text())["metrics"]["p_core"]


def sample_cpu_seconds(vendor: str, count: int = 50) -> float:
    """CPU time one monitor sample takes (device hooks + host figures), median of ``count``:
    a bound on the monitor's cost that training noise cannot blur."""
    import time

    from chipbench.host.manager import build_host
    from chipbench.host.selection import select_device
    from chipbench.measure.monitor import DeviceMonitor

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


def _path_cost(sample: Callable[[], Dict[str, float]], count: int) -> Tuple[float, float]:
    """Median wall and CPU seconds (this thread's and its child processes') of one call."""
    import resource
    import time

    walls, cpus = [], []
    for _ in range(count):
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        start_wall, start_cpu = time.perf_counter(), time.thread_time()
        answer = sample()
        wall, cpu = time.perf_counter() - start_wall, time.thread_time() - start_cpu
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if not answer:
            raise SystemExit("a sample came back empty: is this path really available?")
        walls.append(wall)
        cpus.append(cpu + (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime))
    return statistics.median(walls), statistics.median(cpus)


def _fake_nvml_tools(folder: Path) -> None:
    """A fake ``pynvml`` in ``sys.modules`` and a fake ``nvidia-smi`` first on PATH."""
    import stat
    import types

    module = types.ModuleType("pynvml")
    module.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    module.nvmlInit = lambda: None  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda index: index  # type: ignore[attr-defined]
    module.nvmlDeviceGetUtilizationRates = (  # type: ignore[attr-defined]
        lambda handle: types.SimpleNamespace(gpu=87, memory=40))
    module.nvmlDeviceGetPowerUsage = lambda handle: 301500  # type: ignore[attr-defined]
    module.nvmlDeviceGetTemperature = lambda handle, sensor: 64  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = (  # type: ignore[attr-defined]
        lambda handle: types.SimpleNamespace(used=40000 * 2**20, total=81920 * 2**20,
                                             free=41920 * 2**20))
    sys.modules["pynvml"] = module
    tool = folder / "nvidia-smi"
    tool.write_text("#!/bin/sh\necho '87, 301.5, 64, 40000'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    os.environ["PATH"] = "{}{}{}".format(folder, os.pathsep, os.environ.get("PATH", ""))


def sample_paths(count: int, fake: bool) -> Dict[str, Dict[str, float]]:
    """Median cost of one cuda-vendor sample of GPU 0 through NVML and through nvidia-smi."""
    from chipbench.plugins import cuda

    with tempfile.TemporaryDirectory() as tmp:
        if fake:
            _fake_nvml_tools(Path(tmp))
        costs = {}
        for name, sample in (("pynvml", lambda: cuda.read_nvml_sample(0) or {}),
                             ("nvidia-smi", lambda: cuda.smi_sample(0))):
            wall, cpu = _path_cost(sample, count)
            costs[name] = {"wall_s": wall, "cpu_s": cpu}
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=12, help="iterations per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (alternating)")
    parser.add_argument("--intervals", default="2.0,0.2", help="sampling intervals to test (s)")
    parser.add_argument("--size", type=int, default=128, help="input size (model.min/max_size)")
    parser.add_argument("--vendor", default="cpu")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--sample-paths", action="store_true",
                        help="measure one cuda sample through NVML and through nvidia-smi")
    parser.add_argument("--fake", action="store_true",
                        help="with --sample-paths: a fake pynvml and nvidia-smi (no NVIDIA GPU)")
    parser.add_argument("--count", type=int, default=200, help="samples per path")
    args = parser.parse_args()
    if args.sample_paths:
        costs = sample_paths(args.count, args.fake)
        if args.fake:
            print("FAKE pynvml module and FAKE nvidia-smi shell script (no NVIDIA driver here): "
                  "real NVML calls and the real nvidia-smi both cost more, so these figures "
                  "measure the two paths' overheads, not a GPU machine")
        for name, cost in costs.items():
            print("{:<11} one sample: {:8.3f} ms wall, {:8.3f} ms CPU".format(
                name, cost["wall_s"] * 1e3, cost["cpu_s"] * 1e3))
        print("nvidia-smi / pynvml: {:.0f}x wall, {:.0f}x CPU".format(
            costs["nvidia-smi"]["wall_s"] / costs["pynvml"]["wall_s"],
            costs["nvidia-smi"]["cpu_s"] / max(costs["pynvml"]["cpu_s"], 1e-9)))
        if args.json:
            Path(args.json).write_text(json.dumps({"fake": args.fake, "count": args.count,
                                                   "costs": costs}, indent=2))
        return 0
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
