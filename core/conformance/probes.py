"""Checks that need other processes: what a child process sees, and a 2-process all-reduce."""

import json
import os
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional

from chipbench.run.childproc import child_env, python_module_command

TIMEOUT_S = 120
PROBES = "chipbench.conformance.probes"

def _run_probe(args: List[str], env: Optional[Dict[str, str]] = None) -> "subprocess.Popen[str]":
    """This module run as ``args`` in a fresh Python process (never importing from the current
    folder), its output captured."""
    return subprocess.Popen(python_module_command(PROBES, args), env=child_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def child_device_count(vendor: str, env: Dict[str, str]) -> int:
    """How many devices ``vendor`` reports in a fresh Python process started with ``env`` added."""
    proc = _run_probe(["count", vendor], dict(os.environ, **env))
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError("child process did not answer in {} s".format(TIMEOUT_S)) from None
    for line in stdout.splitlines():
        if line.startswith("CHIPBENCH_COUNT "):
            return int(line.split()[1])
    raise RuntimeError("child process failed: " + _last_line(stderr))


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _count(vendor: str) -> None:
    from chipbench.host.manager import build_host
    from chipbench.host.selection import select_device

    print("CHIPBENCH_COUNT", select_device(build_host(), vendor).count())


def _all_reduce_worker(rank: int, world: int, vendor: str, backend: str, port: int,
                       out: str) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    from chipbench.host.manager import build_host
    from chipbench.host.selection import select_device

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
    """All-reduce ``rank + 1`` over ``world`` processes on loopback; rank 0's answer. The first
    rank that fails stops the others (they would wait for it until their own timeout)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "sum.json")
        port = str(free_port())
        logs = [open(os.path.join(folder, "rank{}.err".format(rank)), "w+") for rank in range(world)]
        procs = [subprocess.Popen(python_module_command(PROBES, ["all-reduce", str(rank), str(world),
                                                                 vendor, backend, port, out]),
                                  env=child_env(), stdout=subprocess.DEVNULL, stderr=log)
                 for rank, log in enumerate(logs)]
        deadline = time.time() + TIMEOUT_S
        try:
            while any(proc.poll() is None for proc in procs):
                failed = [rank for rank, proc in enumerate(procs) if proc.returncode]
                if failed:
                    break
                if time.time() > deadline:
                    raise TimeoutError("all_reduce did not finish in {} s".format(TIMEOUT_S))
                time.sleep(0.05)
            for rank, proc in enumerate(procs):
                if proc.returncode:
                    logs[rank].seek(0)
                    raise RuntimeError(_last_line(logs[rank].read()))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for log in logs:
                log.close()
        with open(out) as handle:
            return float(json.load(handle))


def main(argv: List[str]) -> None:
    """``count VENDOR`` or ``all-reduce RANK WORLD VENDOR BACKEND PORT OUT`` (the child side)."""
    if argv[0] == "count":
        _count(argv[1])
    else:
        rank, world, vendor, backend, port, out = argv[1:7]
        _all_reduce_worker(int(rank), int(world), vendor, backend, int(port), out)


if __name__ == "__main__":
    main(sys.argv[1:])
