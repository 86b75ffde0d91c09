"""The CPU vendor inside a container: memory total and cores are the control group's limits, not
the host's (a run in ``docker --memory 8g --cpus 4`` on a 64-core host reported the host's memory
as its total and ran 64 threads on 4 cores' time)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chipbench.plugins import _cgroup, cpu

GIB = 2 ** 30
V1_NONE = "9223372036854771712"  # what v1 says where there is no limit


def tree(root: Path, files: dict) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


def test_v2_limits_are_the_smallest_along_the_group_s_path(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job/step\n")
    root = tree(tmp_path / "fs", {
        "cgroup.controllers": "cpu memory",
        "job/memory.max": str(3 * GIB), "job/cpu.max": "max 100000",
        "job/step/memory.max": "max", "job/step/cpu.max": "150000 100000"})
    assert _cgroup.memory_limit(proc, root) == 3 * GIB
    assert _cgroup.cpu_limit(proc, root) == 1.5


def test_v1_limits_with_cpu_mounted_beside_cpuacct(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/batch/42\n1:cpu,cpuacct:/batch/42\n0::/\n")
    root = tree(tmp_path / "fs", {
        "memory/memory.limit_in_bytes": V1_NONE,
        "memory/batch/memory.limit_in_bytes": str(2 * GIB),
        "memory/batch/42/memory.limit_in_bytes": V1_NONE,
        "cpu,cpuacct/batch/42/cpu.cfs_quota_us": "50000",
        "cpu,cpuacct/batch/42/cpu.cfs_period_us": "100000",
        "cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert _cgroup.memory_limit(proc, root) == 2 * GIB
    assert _cgroup.cpu_limit(proc, root) == 0.5


def test_a_container_s_own_group_is_at_the_mount_root(tmp_path):
    """Inside a container /proc/self/cgroup names the host's path; the mount shows the
    container's group at its root."""
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/docker-abc.scope\n")
    root = tree(tmp_path / "fs", {"cgroup.controllers": "memory cpu",
                                  "memory.max": str(8 * GIB), "cpu.max": "400000 100000"})
    assert _cgroup.memory_limit(proc, root) == 8 * GIB
    assert _cgroup.cpu_limit(proc, root) == 4.0


@pytest.mark.parametrize("files", [
    {},  # no cgroup file system
    {"cgroup.controllers": "memory", "memory.max": "max", "cpu.max": "max 100000"},
    {"cgroup.controllers": "memory", "memory.max": "lots", "cpu.max": "1 0"},
])
def test_no_limit_or_an_unreadable_one_is_none(tmp_path, files):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    root = tree(tmp_path / "fs", files)
    assert _cgroup.memory_limit(proc, root) is None
    assert _cgroup.cpu_limit(proc, root) is None
    assert _cgroup.memory_limit(tmp_path / "absent", root) is None


@pytest.mark.parametrize("affinity, quota, expected", [
    (2, None, (2, False)), (2, 1.0, (1, True)), (2, 1.5, (2, False)), (64, 4.0, (4, True)),
    (8, 0.01, (1, True)), (4, 16.0, (4, False))])
def test_cores_allowed_rounds_a_quota_up_within_the_affinity(affinity, quota, expected):
    assert _cgroup.cores_allowed(affinity, quota) == expected


def test_cpu_vendor_reports_the_group_s_limits(monkeypatch):
    monkeypatch.delenv(cpu.THREADS_ENV, raising=False)  # benchmarks/slow_cpu.sh sets it
    monkeypatch.setattr(_cgroup, "memory_limit", lambda: GIB)
    monkeypatch.setattr(_cgroup, "cpu_limit", lambda: 1.0)
    monkeypatch.setattr(cpu, "affinity_cores", lambda: 8)
    memory = cpu.device_memory_query(None)
    assert memory.total_bytes == max(GIB, memory.used_bytes)
    assert memory.source == "psutil (process RSS / cgroup memory limit)"
    assert cpu.usable_cores() == 1 and cpu.core_budget(None, 1) == (0, 1)
    report = cpu.environment_report()
    assert report["device_memory_gib"] == 1.0
    assert report["cgroup_limits"].startswith("memory 1.0 GiB of the machine's ")
    assert report["cgroup_limits"].endswith("CPU time of 1 core(s) of the 8 it may run on")
    monkeypatch.setattr(_cgroup, "memory_limit", lambda: 10 ** 15)  # above the machine's
    monkeypatch.setattr(_cgroup, "cpu_limit", lambda: None)
    assert cpu.device_memory_query(None).source == "psutil (process RSS / machine total)"
    assert "cgroup_limits" not in cpu.environment_report()


def _writable_v1_or_v2(controller: str) -> Path:
    root = Path("/sys/fs/cgroup")
    for folder in (root / controller, root):
        marker = "memory.limit_in_bytes" if folder.name == controller else "cgroup.controllers"
        if (folder / marker).exists() and os.access(str(folder), os.W_OK):
            if folder == root and controller not in (root / marker).read_text().split():
                continue
            return folder
    pytest.skip("no writable cgroup {} controller here (needs root)".format(controller))


def test_in_a_real_memory_limited_group_the_total_is_the_limit(tmp_path):
    """A child process put into a real control group with a 1.5 GiB limit (root only)."""
    base = _writable_v1_or_v2("memory")
    group = base / "chipbench-test-{}".format(os.getpid())
    group.mkdir()
    try:
        limit = 3 * GIB // 2
        if base.name == "memory":
            (group / "memory.limit_in_bytes").write_text(str(limit))
        else:
            (group / "memory.max").write_text(str(limit))
        code = ("from chipbench.plugins import cpu\n"
                "print(cpu.device_memory_query(None).total_bytes)\n")
        script = "echo $$ > {}/cgroup.procs && exec {} -c \"$0\"".format(group, sys.executable)
        out = subprocess.run(["sh", "-c", script, code], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert int(out.stdout.strip()) == limit
    finally:
        group.rmdir()
