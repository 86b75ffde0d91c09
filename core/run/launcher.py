"""Start the workers of a run: in place for one process, through torchrun for more.

chipbench never launches ranks itself: ``torch.distributed.run`` (torchrun) starts, watches and
stops them. A static cluster (``--nnodes M --node-rank R --master-addr H --master-port P``, like
the seed's) or c10d rendezvous (``--rdzv-endpoint HOST:PORT``) are both passed through.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Dict, List, Optional, Tuple

from chipbench.errors import RunFailed, UserError, interrupt_on_stop_signals, restore_handlers
from chipbench.run.childproc import child_env, python_module_command
from chipbench.run.sentinel import torchrun_pid_path
from chipbench.util import safeio
from chipbench.util.text import shorten

MAX_PROCS_PER_NODE = 1024
MAX_NODES = 100000
DEVICE_ID_CHARS = "-_.:/"
"""What a device's id may hold besides ASCII letters and digits (``GPU-8f3c...``, ``MIG-.../1/0``)."""


def device_list(devices: str) -> List[str]:
    """The entries of ``--devices`` (``"4,5,6,7"``), spaces around them dropped and indexes
    written plainly (``07`` is ``7``); refused in one line: an empty entry, a negative or
    malformed one, a device listed twice (its processes would share it, and the runtime sees
    the list as it is given)."""
    fix = "list each device once, as indexes from 0 or the vendor's device ids: --devices 0,1"
    entries = [entry.strip() for entry in str(devices).split(",")]
    if entries == [""]:
        return []
    listed: List[str] = []
    for entry in entries:
        if not entry:
            raise UserError("--devices {!r} has an empty entry".format(devices), fix)
        if entry.startswith(("-", "+")) or not all(
                (c.isascii() and c.isalnum()) or c in DEVICE_ID_CHARS for c in entry):
            raise UserError("--devices {!r} lists {!r}, which is not a device index (0 or more) "
                            "or id".format(devices, entry), fix)
        canonical = str(int(entry)) if entry.isdigit() else entry
        if canonical in listed:
            raise UserError("--devices {!r} lists device {} twice".format(devices, canonical),
                            fix)
        listed.append(canonical)
    return listed


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
            listed = device_list(self.devices)
            self.devices = ",".join(listed)  # what the vendor's visible-devices variable gets
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
    cmd = python_module_command("torch.distributed.run") + [
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
    # --no-python: torchrun starts the workers with the command given, which keeps the current
    # folder off their sys.path as it is off torchrun's
    return cmd + ["--no-python"] + python_module_command("chipbench.run.worker", [str(run_dir)],
                                                         unbuffered=True)


def launch_workers(topology: Topology, run_dir: Path, env: Dict[str, str]) -> int:
    """Run torchrun for this node and return its exit code (it stops every worker on failure).

    torchrun's and the workers' output is shown on the terminal (stderr) and kept in
    ``logs/torchrun-node<R>.log``. Ctrl-C is passed on to torchrun, which stops the workers; the
    interrupt is then re-raised.
    """
    check_rendezvous_host(topology)
    cmd = torchrun_command(topology, run_dir)
    full_env = child_env()
    full_env.update(env)
    log_path = Path(run_dir) / "logs" / "torchrun-node{}.log".format(topology.node_rank)
    with safeio.open_for_append(log_path, binary=True, what="run file") as log:
        proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        pid_file = torchrun_pid_path(Path(run_dir), topology.node_rank)
        try:  # for the sentinel, should this process die without stopping torchrun
            safeio.write_atomic(pid_file, "{}\n".format(proc.pid), what="run file")
        except (OSError, UserError):
            pass
        watch = JoinWatch(Path(run_dir), time.time())
        tee = threading.Thread(target=_tee, args=(proc.stdout, log, watch), daemon=True)
        tee.start()
        previous = interrupt_on_stop_signals()
        try:
            code = _wait_for_join(proc, topology, watch)
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


def rendezvous_address(topology: Topology) -> Tuple[str, str]:
    """Where this node's torchrun meets the others: (what to call it, ``host`` or ``host:port``):
    ``("the master", "10.0.0.1:29500")`` or ``("the rendezvous endpoint", "10.0.0.1:29400")``."""
    if topology.rdzv_endpoint:
        return "the rendezvous endpoint", topology.rdzv_endpoint
    return "the master", "{}:{}".format(topology.master_addr, topology.master_port)


def rendezvous_host(topology: Topology) -> Tuple[str, str]:
    """The host name or address this node's torchrun connects to, and the option that gave it."""
    if not topology.rdzv_endpoint:
        return topology.master_addr, "--master-addr"
    host, colon, port = topology.rdzv_endpoint.rpartition(":")
    if not colon or not port.isdigit() or (host.count(":") and not host.endswith("]")):
        host = topology.rdzv_endpoint  # no port, or a bare IPv6 address
    return host.strip("[]"), "--rdzv-endpoint"


NAME_UNKNOWN = tuple(getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA")
                     if hasattr(socket, name))
"""Answers of the resolver that mean "no such host" (not a resolver that is unreachable now)."""
RESOLVE_TIMEOUT_S = 10.0


def check_rendezvous_host(topology: Topology) -> None:
    """Refuse, in one line and before torchrun starts, a ``--master-addr`` (or the host of
    ``--rdzv-endpoint``) that no resolver knows: torchrun would retry it until the join
    timeout. A resolver that does not answer in time, or fails for the moment, is left to
    torchrun and the join timeout."""
    from chipbench.host.manager import CallTimedOut, call_with_timeout

    host, option = rendezvous_host(topology)
    try:
        call_with_timeout(lambda: socket.getaddrinfo(host, None), RESOLVE_TIMEOUT_S,
                          "resolving " + host)
    except socket.gaierror as exc:
        if exc.errno in NAME_UNKNOWN:
            raise UserError("{} {} names no host this node can resolve ({})".format(
                option, host, exc.strerror or exc),
                "give the rank-0 node's host name or IP address as the other nodes reach "
                "it") from None
    except (CallTimedOut, OSError, UnicodeError):  # slow or failing resolver: torchrun retries
        pass


class JoinWatch:
    """Whether this node's workers have started, which means that every node met at the
    rendezvous; and torchrun's output before that, which the terminal does not get until then:
    a rendezvous that fails is one error line (:func:`join_failure`), not pages of torchrun's
    retries and native stack frames (they stay in the log)."""

    HELD_LINES = 2000

    def __init__(self, run_dir: Path, started: float) -> None:
        self.run_dir = run_dir
        self.started = started
        self.held: List[bytes] = []
        """What torchrun said before the workers started (its last :data:`HELD_LINES` lines)."""
        self.drained = threading.Event()
        """Set once torchrun's output has been read to its end."""
        self._joined = False

    def joined(self) -> bool:
        """Whether a worker of this node has written its log since launch (so all nodes met)."""
        if not self._joined:
            try:
                self._joined = any(p.stat().st_mtime >= self.started - 1
                                   for p in (self.run_dir / "logs").glob("rank*.log"))
            except OSError:  # a log that went away meanwhile: ask again later
                pass
        return self._joined

    def hold(self, line: bytes) -> None:
        """Keep ``line`` back from the terminal until the workers start."""
        self.held.append(line)
        del self.held[:-self.HELD_LINES]

    def said(self) -> str:
        """What torchrun said before the workers started, as text."""
        return b"".join(self.held).decode("utf-8", "replace")


EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Timeout)): (.+)$", re.MULTILINE)
"""A Python exception's last line in torchrun's output (``torch.distributed.DistNetworkError:
...``): its class without the module, and its message."""
C10D_LINE = re.compile(r"\[c10d\]\s*(.+)$", re.MULTILINE)
"""A message of torch's native rendezvous code (``[W... socket.cpp:764] [c10d] The client
socket has timed out after 10000ms while trying to connect to (10.0.0.1, 29500).``)."""


def last_exception(text: str) -> str:
    """The last Python exception of ``text`` as ``Kind: message``; '' where there is none."""
    found = EXCEPTION_LINE.findall(text)
    if not found:
        return ""
    kind, message = found[-1]
    return "{}: {}".format(kind, message.strip())


def join_failure(topology: Topology, said: str, log: Path,
                 gave_up_after: Optional[float] = None) -> RunFailed:
    """The one line for nodes that did not meet: where they were to meet, the join timeout,
    the last thing torchrun said about it (its exception, else its native rendezvous code's last
    message) and its ``log``; ``gave_up_after``: the seconds after which torchrun stopped by
    itself (None: the join timeout passed)."""
    what, where = rendezvous_address(topology)
    messages = C10D_LINE.findall(said)
    cause = last_exception(said) or (messages[-1].strip() if messages else "")
    return RunFailed(
        "the nodes did not all join at {} {} {}{}".format(
            what, where, "within {} s (--join-timeout; --nnodes {})".format(
                topology.join_timeout_s, topology.nnodes) if gave_up_after is None
            else "(torchrun gave up after {:.0f} s; --nnodes {})".format(gave_up_after,
                                                                        topology.nnodes),
            ": " + shorten(cause, 300) if cause else ""),
        "check that {} is the rank-0 node's address and reachable from this node, and start "
        "`core run` on every node with the same --nnodes and {}; torchrun's messages are in "
        "{}".format(where, "--rdzv-endpoint" if topology.rdzv_endpoint
                    else "--master-addr/--master-port", log))


def _wait_for_join(proc: subprocess.Popen, topology: Topology, watch: JoinWatch) -> int:
    """Wait for torchrun; give up when no worker has started ``join_timeout_s`` after launch,
    or when torchrun gives up itself before any did (a rendezvous it could not reach).

    torchrun's own rendezvous timeout does the same on newer torch; torch 2.0's static
    rendezvous waits for ever, hence this watchdog.
    """
    log = watch.run_dir / "logs" / "torchrun-node{}.log".format(topology.node_rank)
    while True:
        try:
            code = proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            # failed before any worker started, and not in one (that leaves torchrun's
            # failure summary, its "Root Cause", which the runner reads)
            if code != 0 and not watch.joined():
                watch.drained.wait(5)  # its last words may still be in the pipe
            if code != 0 and not watch.joined() and "Root Cause" not in watch.said():
                raise join_failure(topology, watch.said(), log, time.time() - watch.started)
            return code
        if not watch.joined() and time.time() - watch.started > topology.join_timeout_s:
            raise join_failure(topology, watch.said(), log)


def _tee(pipe: IO[bytes], log: IO[bytes], watch: JoinWatch) -> None:
    """Copy ``pipe`` line by line to the log file and to this process's stderr.

    The pipe is read to its end whatever happens to the log (a full disk), so that torchrun and
    the workers never block on it. Until the workers start (``watch``), the terminal gets
    nothing: torchrun's lines are held
    back and shown once they start (a rendezvous that fails is reported in one line instead).
    From the first traceback on (torchrun's failure report) the terminal gets nothing more: the
    error is reported as one line by the runner, the whole story stays in the log.
    """
    quiet = False

    def show(line: bytes) -> None:
        nonlocal quiet
        quiet = quiet or line.startswith(b"Traceback (most recent call last)")
        if quiet:
            return
        try:
            sys.stderr.write(line.decode("utf-8", "replace"))
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def release() -> None:
        held, watch.held = watch.held, []
        for line in held:
            show(line)

    try:
        for line in iter(pipe.readline, b""):
            try:
                log.write(line)
                log.flush()
            except (OSError, ValueError):  # a full disk: keep reading, or torchrun would block
                pass
            if not watch.joined():
                watch.hold(line)
            else:
                release()
                show(line)
        if watch.joined():
            release()
        pipe.close()
    finally:
        watch.drained.set()


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
