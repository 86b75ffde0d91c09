"""A run that did not get the machine says so: its own CPU share in result.json and report.md, a
warning when it was starved, and `core compare` warning on runs with very different shares."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

import pytest

from chipbench.cli import main
from chipbench.measure.monitor import SHARE_RATIO, STARVED_SHARE, CpuShare, reduce_cpu_share, starved_warning
from tests.conftest import TINY_DATA, compare_result, report_of, result_folder

REPO = Path(__file__).resolve().parents[1]
QUOTA_CPUS = 1.0
"""CPU time the starved run may use under a quota, for 2 compute threads: at most 50 %."""
CGROUP = Path("/sys/fs/cgroup")


@contextlib.contextmanager
def quota_group(cpus: float) -> Iterator[Optional[Path]]:
    """A new cgroup whose processes get ``cpus`` processors' worth of time, and get it whatever
    else runs here (the highest weight: the run is starved by its quota only, and fast); None
    where this machine lets no one make one (not root, no cpu controller)."""
    name = "chipbench-test-{}".format(os.getpid())
    if (CGROUP / "cpu" / "cpu.cfs_quota_us").exists():  # cgroup v1
        group = CGROUP / "cpu" / name
        files = {"cpu.shares": "262144", "cpu.cfs_period_us": "100000",
                 "cpu.cfs_quota_us": str(int(cpus * 100000))}
    elif "cpu" in (CGROUP / "cgroup.controllers").read_text().split() \
            if (CGROUP / "cgroup.controllers").exists() else False:  # v2
        group = CGROUP / name
        files = {"cpu.weight": "10000", "cpu.max": "{} 100000".format(int(cpus * 100000))}
    else:
        yield None
        return
    try:
        group.mkdir()
        for file, value in files.items():
            (group / file).write_text(value)
    except OSError:
        if group.is_dir():
            group.rmdir()
        yield None
        return
    try:
        yield group
    finally:
        group.rmdir()  # its processes have ended


def _sample(time, phase="train", proc=100.0, workers=0.0, host=100.0):
    return {"time": time, "phase": phase, "proc_cpu_percent": proc,
            "workers_cpu_percent": workers, "host_cpu_percent": host, "workers": 0.0}


def test_share_is_the_time_weighted_mean_of_the_training_samples():
    share = CpuShare()
    share.threads = 2
    share.add(_sample(0.0, phase="setup", proc=5.0))  # starts the clock only
    share.add(_sample(1.0, proc=200.0, host=100.0))  # 1 s at 2 cores
    share.add(_sample(4.0, proc=60.0, workers=40.0, host=90.0))  # 3 s at 0.6 (+0.4 workers)
    share.add(_sample(5.0, phase="eval", proc=10.0))  # evaluation: not counted
    got = share.summary(device_is_cpu=True)
    assert got["process_percent"] == pytest.approx((200 + 3 * 60) / 4)
    assert got["own_percent"] == pytest.approx((200 + 3 * 100) / 4)
    assert got["host_percent"] == pytest.approx((100 + 3 * 90) / 4)
    assert got["asked_cores"] == min(2, got["cores"])
    assert got["compute_share"] == pytest.approx(got["process_percent"] / 100 / got["asked_cores"])
    assert share.summary(device_is_cpu=False)["compute_share"] is None  # an accelerator's run
    assert CpuShare().summary(device_is_cpu=True) is None  # never trained


def test_the_starved_threshold_and_the_lowest_rank():
    assert starved_warning({"compute_share": STARVED_SHARE - 0.01, "asked_cores": 2.0,
                            "process_percent": 148.0, "host_percent": 100.0})
    assert starved_warning({"compute_share": STARVED_SHARE, "asked_cores": 2.0}) is None
    assert starved_warning({"compute_share": None, "own_percent": 5.0}) is None  # not the CPU
    assert starved_warning("forged") is None and starved_warning(None) is None
    ranks = [{"own_percent": 190.0, "compute_share": 0.95}, None,
             {"own_percent": 80.0, "compute_share": 0.4}]
    assert reduce_cpu_share(ranks)["rank"] == 2 and reduce_cpu_share([None]) is None


def _tiny_run_args(out: Path):
    return [sys.executable, "-m", "chipbench", "run", "cases/retinanet", "--vendor", "cpu",
            "--output", str(out)] + TINY_DATA + [
        "--set", "data.synthetic.train_images=4", "--set", "data.synthetic.val_images=1",
        "--set", "train.batch_size=2", "--set", "eval.batch_size=1",
        "--set", "train.max_iters=3", "--set", "run.checkpoint=false",
        "--set", "run.monitor_interval_s=0.1"]


def test_a_run_under_a_cpu_quota_or_beside_a_hog_is_warned_as_starved(tmp_path):
    """The run trains with 2 compute threads under a CPU quota of one core (where this machine
    lets root make a cgroup), else beside busy processes on every core."""
    out = tmp_path / "run"
    env = dict(os.environ, CHIPBENCH_CPU_THREADS="2", CHIPBENCH_CPU_PEAK_GEMM_S="0.05")
    with quota_group(QUOTA_CPUS) as group:
        if group is not None:  # the run's shell joins the group, then becomes the run
            command = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(group)] \
                + _tiny_run_args(out)
            run = subprocess.run(command, cwd=str(REPO), env=env, timeout=600,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        else:
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    for _ in range(2 * (os.cpu_count() or 1))]
            try:
                run = subprocess.run(_tiny_run_args(out), cwd=str(REPO), env=env, timeout=600,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    share = json.loads((out / "result.json").read_text())["metrics"]["cpu_share"]
    assert share["compute_share"] < STARVED_SHARE and share["asked_cores"] == 2
    report = (out / "report.md").read_text()
    assert "WARNING: this run was starved of CPU" in report
    assert "run's own CPU while training" in report


def _with_share(label, compute_share, p_core=4.0):
    result = compare_result(label, p_core=p_core)
    result["metrics"]["cpu_share"] = {
        "own_percent": 200.0 * compute_share, "process_percent": 200.0 * compute_share,
        "host_percent": 100.0, "cores": 2, "threads": 2, "workers": 0.0, "samples": 50,
        "seconds": 10.0, "asked_cores": 2.0, "compute_share": compute_share, "rank": 0}
    return result


def test_compare_warns_on_runs_with_very_different_cpu_shares(tmp_path, capsys):
    b4 = result_folder(tmp_path, "b4", _with_share("CPU bs4", 0.95, p_core=4.0))
    b8 = result_folder(tmp_path, "b8", _with_share("CPU bs8", 0.50, p_core=2.5))
    close = result_folder(tmp_path, "close", _with_share("CPU close", 0.95 * SHARE_RATIO + 0.01))
    assert main(["compare", str(b4), str(b8), str(close)]) == 0
    out = capsys.readouterr().out
    different = [line for line in out.splitlines() if "different CPU share" in line]
    assert len(different) == 1 and "CPU bs8 got 50%" in different[0] and "95%" in different[0]
    assert any("CPU bs8: this run was starved of CPU" in line for line in out.splitlines())
    assert not any("CPU close" in line and "CPU share" in line for line in out.splitlines())
    assert main(["compare", "--json", str(b4), str(b8)]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert any(w.startswith("different CPU share") for w in warnings)


def test_report_shows_the_share_and_warns_only_when_starved():
    fed = report_of(_with_share("CPU fed", 0.9))
    assert "its compute got 90% of the 2.0 core(s)" in fed and "starved" not in fed
    starved = report_of(_with_share("CPU starved", 0.3))
    assert "WARNING: this run was starved of CPU: its compute got 30%" in starved
    forged = _with_share("CPU forged", 0.3)
    forged["metrics"]["cpu_share"]["compute_share"] = "lots"  # a hand-edited file
    assert "starved" not in report_of(forged)
