"""What the Linux control group of this process allows it: memory and CPU time.

A container (Docker's ``--memory``/``--cpus``, a Kubernetes pod's limits, a batch system's job)
runs on a host whose memory and cores it cannot use: ``psutil.virtual_memory().total`` and the
affinity mask still show the whole host. The CPU vendor reports the smaller of the host's figure
and the group's limit, so the table's ``mem`` total is what the run may fill before the group's
out-of-memory killer ends it, and torch's threads fit the CPU time the group gets.

Both cgroup v2 (one hierarchy at ``/sys/fs/cgroup``) and v1 (a hierarchy per controller) are read;
the limits of every ancestor group apply, so the smallest along the path counts. Nothing here
raises: an unreadable or absent file means no limit known.
"""

import functools
import math
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _memberships(proc_cgroup: Path) -> Dict[str, str]:
    """Controller -> group path from ``/proc/self/cgroup`` (``""`` is the v2 hierarchy)."""
    groups: Dict[str, str] = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            groups[controller] = parts[2]
    return groups


def _up_from(mount: Path, group: str) -> Iterator[Path]:
    """The folders of ``group`` and its ancestors under ``mount``, deepest first. Inside a
    container the path names the host's group while the mount shows the container's own at its
    root: a path that does not exist under the mount is read as the mount's root."""
    folder = mount / group.lstrip("/")
    if not folder.is_dir():
        folder = mount
    while True:
        yield folder
        if folder == mount or mount not in folder.parents:
            return
        folder = folder.parent


def _v1_mount(root: Path, controller: str) -> Optional[Path]:
    """The v1 hierarchy of ``controller`` (``cpu`` may be mounted together with ``cpuacct``)."""
    names = [controller] + (["cpu,cpuacct", "cpuacct,cpu"] if controller == "cpu" else [])
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _is_v2(root: Path) -> bool:
    return (root / "cgroup.controllers").is_file()


def _group_folders(controller: str, proc_cgroup: Path, root: Path) -> Tuple[List[Path], bool]:
    """The folders of this process's group for ``controller`` and of its ancestors, deepest
    first, and whether they are cgroup v2's (one hierarchy) rather than v1's (one per
    controller); none where the file system has neither."""
    groups = _memberships(proc_cgroup)
    if _is_v2(root) and "" in groups:
        return list(_up_from(root, groups[""])), True
    mount = _v1_mount(root, controller)
    if mount is not None and controller in groups:
        return list(_up_from(mount, groups[controller])), False
    return [], False


@functools.lru_cache(maxsize=None)
def memory_limit(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> Optional[int]:
    """The smallest memory limit (bytes) on this process's group and its ancestors; None where
    there is none (``max``, v1's "unlimited" page-counter maximum) or it cannot be read. Read
    once per process: the monitor asks on every sample."""
    folders, v2 = _group_folders("memory", proc_cgroup, root)
    limits = []
    for folder in folders:
        text = _read(folder / ("memory.max" if v2 else "memory.limit_in_bytes"))
        if text and text.isdigit() and int(text) < 2 ** 62:  # v1 says "none" with ~2**63
            limits.append(int(text))
    return min(limits) if limits else None


def _quota(folder: Path, v2: bool) -> Optional[float]:
    """The CPU quota set on one group folder, in CPUs; None where there is none."""
    if v2:
        parts = (_read(folder / "cpu.max") or "").split()
    else:
        parts = [_read(folder / "cpu.cfs_quota_us") or "", _read(folder / "cpu.cfs_period_us") or ""]
    try:
        quota, period = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):  # v2's "max", an absent or garbled file
        return None
    return quota / period if quota > 0 and period > 0 else None  # v1's -1: none


@functools.lru_cache(maxsize=None)
def cpu_limit(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> Optional[float]:
    """The smallest CPU quota (in CPUs: 1.5 is one and a half cores' time) on this process's group
    and its ancestors; None where there is none or it cannot be read. Read once per process."""
    folders, v2 = _group_folders("cpu", proc_cgroup, root)
    limits = [q for q in (_quota(folder, v2) for folder in folders) if q is not None]
    return min(limits) if limits else None


def cores_allowed(affinity: int, quota: Optional[float]) -> Tuple[int, bool]:
    """Cores a process may keep busy: its affinity, capped by a CPU quota rounded up (a quota of
    1.5 keeps 2 threads busy part of the time); and whether the quota lowered it."""
    if quota is None:
        return affinity, False
    capped = max(1, min(affinity, int(math.ceil(quota - 1e-9))))
    return capped, capped < affinity
