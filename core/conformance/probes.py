"""Checks that need other processes: what a child process sees, and a 2-process all-reduce."""

import json
import os
import socket
import subprocess
import sys
import time
from typing import Dict

TIMEOUT_S = 120

_COUNT_SCRIPT = (
    "from chipbench.manager import build_host\n"
    "from chipbench.selection import select_device\n"
    "import sys\n"
    "print('CHIPBENCH_COUNT', select_device(build_host(), sys.argv[1]).count())\n"
)


def child_device_count(vendor: str, env: Dict[str, str]) -> int:
    """How many devices ``vendor`` reports in a fresh Python process started with ``env`` added."""
    result = subprocess.run([sys.executable, "-c", _COUNT_SCRIPT, vendor],
                            env=dict(os.environ, **env), capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    for line in result.stdout.splitlines():
        if line.startswith("CHIPBENCH_COUNT "):
            return int(line.split()[1])
    tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError("child process failed: " + tail)


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _all_reduce_worker(rank: int, world: int, vendor: str, backend: str, port: int,
                       out: str) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    from chipbench.manager import build_host
    from chipbench.selection import select_device

    facade = select_device(build_host(), vendor)
    device = facade.init_backend(rank)
    dist.init_process_group(backend, init_method="tcp://127.0.0.1:{}".format(port), rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        tensor = torch.full((4,), float(rank + 1), device=device)
        dist.all_reduce(tensor)
        facade.synchronize(device)
        if rank == 0:
            with open(out, "w") as handle:
                json.dump(float(tensor[0]), handle)
    finally:
        dist.destroy_process_group()


def all_reduce(vendor: str, backend: str, world: int) -> float:
    """All-reduce ``rank + 1`` over ``world`` spawned processes on loopback; rank 0's answer."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "sum.json")
        context = mp.start_processes(_all_reduce_worker,
                                     args=(world, vendor, backend, free_port(), out),
                                     nprocs=world, join=False, start_method="spawn")
        deadline = time.time() + TIMEOUT_S
        try:
            while not context.join(timeout=1):
                if time.time() > deadline:
                    raise TimeoutError("all_reduce did not finish in {} s".format(TIMEOUT_S))
        except mp.ProcessRaisedException as exc:
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            raise RuntimeError(lines[-1] if lines else "a process failed") from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
        with open(out) as handle:
            return float(json.load(handle))
