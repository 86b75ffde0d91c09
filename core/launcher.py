"""Start the workers of a run: in place for one process, through torchrun for more.

chipbench never launches ranks itself: ``torch.distributed.run`` (torchrun) starts, watches and
stops them. A static cluster (``--nnodes M --node-rank R --master-addr H --master-port P``, like
the seed's) or c10d rendezvous (``--rdzv-endpoint HOST:PORT``) are both passed through.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Dict, List, Optional

from chipbench.errors import RunFailed, UserError, interrupt_on_stop_signals, restore_handlers
from chipbench.sentinel import torchrun_pid_path

MAX_PROCS_PER_NODE = 1024
MAX_NODES = 100000


@dataclass
class Topology:
    """How many processes on how many nodes, and how they meet."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    rdzv_endpoint: Optional[str] = None
    rdzv_id: str = "chipbench"
    join_timeout_s: int = 600
    devices: Optional[str] = None
    """Devices the workers may use ("4,5,6,7"), set through the vendor's visible-devices variable."""

    def __post_init__(self) -> None:
        for name, kind in (("nproc_per_node", int), ("nnodes", int), ("node_rank", int),
                           ("master_port", int), ("join_timeout_s", int), ("master_addr", str),
                           ("rdzv_id", str), ("rdzv_endpoint", (str, type(None))),
                           ("devices", (str, type(None)))):
            value = getattr(self, name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TypeError("{} is {!r}".format(name, value))
        if self.devices is not None:
            listed = [d for d in str(self.devices).split(",") if d.strip()]
            if len(listed) < self.nproc_per_node:
                raise UserError("--devices {} lists {} device(s) for {} process(es) per node".format(
                    self.devices, len(listed), self.nproc_per_node),
                    "list at least --nproc-per-node devices")
        for name, most in (("nproc_per_node", MAX_PROCS_PER_NODE), ("nnodes", MAX_NODES)):
            if int(getattr(self, name)) < 1:
                raise UserError("--{} must be at least 1".format(name.replace("_", "-")),
                                "give a positive number")
            if int(getattr(self, name)) > most:  # it would start that many processes
                raise UserError("--{} {} is more than {}".format(
                    name.replace("_", "-"), getattr(self, name), most),
                    "give one process per device, and the number of nodes you have")
        if not 0 <= self.node_rank < self.nnodes:
            raise UserError("--node-rank {} is outside 0..{}".format(self.node_rank,
                                                                     self.nnodes - 1),
                            "number the nodes from 0 to --nnodes minus 1")

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def label(self) -> str:
        """``1x8``: nodes x processes per node, as in the seed's table and config names."""
        return "{}x{}".format(self.nnodes, self.nproc_per_node)

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


def torchrun_command(topology: Topology, run_dir: Path) -> List[str]:
    """The torchrun command line that starts this node's workers of the run in ``run_dir``."""
    cmd = [sys.executable, "-m", "torch.distributed.run",
           "--nnodes", str(topology.nnodes),
           "--nproc-per-node", str(topology.nproc_per_node),
           "--max-restarts", "0",
           "--monitor-interval", "1"]
    if topology.rdzv_endpoint:
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", topology.rdzv_endpoint,
                "--rdzv-id", topology.rdzv_id,
                "--rdzv-conf", "join_timeout={}".format(topology.join_timeout_s)]
    else:
        cmd += ["--node-rank", str(topology.node_rank),
                "--master-addr", topology.master_addr,
                "--master-port", str(topology.master_port),
                "--rdzv-conf", "timeout={}".format(topology.join_timeout_s)]
    return cmd + ["-m", "chipbench.worker", str(run_dir)]


def launch_workers(topology: Topology, run_dir: Path, env: Dict[str, str]) -> int:
    """Run torchrun for this node and return its exit code (it stops every worker on failure).

    torchrun's and the workers' output is shown on the terminal (stderr) and kept in
    ``logs/torchrun-node<R>.log``. Ctrl-C is passed on to torchrun, which stops the workers; the
    interrupt is then re-raised.
    """
    cmd = torchrun_command(topology, run_dir)
    full_env = dict(os.environ)
    full_env.update(env)
    log_path = Path(run_dir) / "logs" / "torchrun-node{}.log".format(topology.node_rank)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        pid_file = torchrun_pid_path(Path(run_dir), topology.node_rank)
        try:  # for the sentinel, should this process die without stopping torchrun
            pid_file.write_text("{}\n".format(proc.pid))
        except OSError:
            pass
        tee = threading.Thread(target=_tee, args=(proc.stdout, log), daemon=True)
        tee.start()
        previous = interrupt_on_stop_signals()
        try:
            code = _wait_for_join(proc, topology, Path(run_dir), time.time())
        except BaseException:
            _stop(proc)
            raise
        finally:
            restore_handlers(previous)
            tee.join(timeout=5)
            try:
                pid_file.unlink()
            except OSError:
                pass
        return code


def _workers_started(run_dir: Path, since: float) -> bool:
    """Whether a worker of this node has written its log since ``since`` (so all nodes met)."""
    return any(p.stat().st_mtime >= since - 1 for p in (run_dir / "logs").glob("rank*.log"))


def _wait_for_join(proc: subprocess.Popen, topology: Topology, run_dir: Path,
                   started: float) -> int:
    """Wait for torchrun; give up when no worker has started ``join_timeout_s`` after launch.

    torchrun's own rendezvous timeout does the same on newer torch; torch 2.0's static
    rendezvous waits for ever, hence this watchdog.
    """
    joined = False
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        if joined:
            continue
        joined = _workers_started(run_dir, started)
        if not joined and time.time() - started > topology.join_timeout_s:
            raise RunFailed(
                "the {} nodes did not all join within {} s (--join-timeout)".format(
                    topology.nnodes, topology.join_timeout_s),
                "start `core run` on every node with the same --nnodes and --master-addr/"
                "--master-port (or --rdzv-endpoint), and check that the port is reachable")


def _tee(pipe: IO[bytes], log: IO[bytes]) -> None:
    """Copy ``pipe`` line by line to the log file and to this process's stderr.

    From the first traceback on (torchrun's failure report) the terminal gets nothing more: the
    error is reported as one line by the runner, the whole story stays in the log.
    """
    quiet = False
    for line in iter(pipe.readline, b""):
        log.write(line)
        log.flush()
        quiet = quiet or line.startswith(b"Traceback (most recent call last)")
        if quiet:
            continue
        try:
            sys.stderr.write(line.decode("utf-8", "replace"))
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
    pipe.close()


def _stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGINT torchrun (it stops its workers), then SIGKILL the whole group if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=grace_s)
    except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
