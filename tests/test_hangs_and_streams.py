"""Nothing hangs and nothing needs a terminal: a thread left running by a case, vendor hooks that
do not answer, a disk that fills up under torch's writer, closed standard streams, a deleted
working folder, a rendezvous that cannot be reached. Each ends in bounded time with one line."""

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import chipbench.errors
import chipbench.run.runner
from chipbench.cli import main
from chipbench.errors import HookTimedOut, RunFailed, UserError, full_disk_error
from chipbench.host.manager import build_host
from chipbench.host.selection import select_device
from chipbench.measure.monitor import ENV_HOOK_TIMEOUT, DeviceMonitor, hook_timeout
from chipbench.run import checkpoints as checkpoint
from chipbench.run.launcher import (
    Topology,
    check_rendezvous_host,
    join_failure,
    last_exception,
    rendezvous_host,
)
from chipbench.util.exiting import EXIT_GRACE_S
from tests.conftest import TINY_DATA, vendor_module

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_DATA + ["--set", "train.max_iters=1", "--set", "data.num_workers=0",
                    "--set", "run.monitor_interval_s=0.1", "--set", "run.checkpoint=false"]


def write_case(site: Path, name: str, run_body: str) -> Path:
    """An outside case ``name`` installed on ``site`` (a dist-info folder and its entry point in
    group ``chipbench.cases``) whose ``run(self, ctx)`` is ``run_body``."""
    (site / (name + "_configs")).mkdir(parents=True)
    (site / (name + "_configs") / "defaults.yaml").write_text(
        "train: {precision: fp32}\nrun: {monitor_interval_s: 0.2, timeout_s: 60}\n")
    (site / (name + "_case.py")).write_text(textwrap.dedent('''
        import os
        import sys
        import threading
        from pathlib import Path

        from chipbench.case import Case


        class ThisCase(Case):
            name = "{name}"
            config_dir = Path(__file__).resolve().parent / "{name}_configs"
            metric_name = "score"

            def run(self, ctx):
        {body}

        CASE = ThisCase()
        ''').format(name=name, body=textwrap.indent(textwrap.dedent(run_body), " " * 8)))
    info = site / "{}_case-0.1.dist-info".format(name)
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: {}-case\nVersion: 0.1\n".format(
        name))
    (info / "entry_points.txt").write_text("[chipbench.cases]\n{0} = {0}_case\n".format(name))
    return site


def core(site: Path, *args: str, shell_prefix: str = "", cwd: Path = ROOT,
         timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """``python -m chipbench ARGS`` with ``site``'s cases installed; ``shell_prefix`` is shell
    redirections applied to it (``2>&-`` closes its stderr)."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **env)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    command = [sys.executable, "-m", "chipbench"] + list(args)
    if shell_prefix:
        command = ["sh", "-c", 'exec "$@" ' + shell_prefix, "sh"] + command
    return subprocess.run(command, cwd=str(cwd), env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


def error_lines(stderr: str):
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# a thread left running by a case does not keep the command from exiting
# --------------------------------------------------------------------------------------------------

LEAVES_A_THREAD = '''
threading.Thread(target=threading.Event().wait, name="never-ends", daemon=False).start()
return {"score": 1.0, "images": 4, "epochs": 1}
'''


def test_a_thread_left_running_by_a_case_delays_the_exit_by_seconds_only(tmp_path):
    site = write_case(tmp_path / "site", "leftover", LEAVES_A_THREAD)
    out = tmp_path / "run"
    started = time.monotonic()
    proc = core(site, "run", "leftover", "--vendor", "cpu", "--output", str(out), timeout=90)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert EXIT_GRACE_S <= took < EXIT_GRACE_S + 30, took
    warnings = [line for line in proc.stderr.splitlines() if "still running" in line]
    assert warnings == ["warning: 1 thread was still running {:g} s after the command finished: "
                        "never-ends (started by case 'leftover'); exiting without waiting for "
                        "it".format(EXIT_GRACE_S)], proc.stderr
    assert json.loads((out / "result.json").read_text())["status"] == "finished"
    assert "converged:" in proc.stdout  # the result was printed before the wait


@pytest.mark.distributed
@pytest.mark.oldstack_skip
def test_torchrun_workers_with_a_thread_left_running_exit_too(tmp_path):
    site = write_case(tmp_path / "site", "leftover", LEAVES_A_THREAD)
    out = tmp_path / "run"
    proc = core(site, "run", "leftover", "--vendor", "cpu", "--nproc-per-node", "2",
                "--master-port", str(free_port()), "--output", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "still running" in line]
    assert len(warnings) == 2 and all("(started by case 'leftover')" in w for w in warnings)
    assert json.loads((out / "result.json").read_text())["status"] == "finished"


EXIT_WITH_THREADS = '''
import sys, threading
from concurrent.futures import ThreadPoolExecutor
from chipbench.util.exiting import exit_now
pool = ThreadPoolExecutor(2)
assert pool.submit(sum, [1, 2]).result() == 3  # idle workers: released, not waited for
if sys.argv[1] == "stuck":
    threading.Thread(target=threading.Event().wait, name="stuck", daemon=False).start()
exit_now(3, grace_s=1.0)
'''


@pytest.mark.parametrize("case", ["idle-pool", "stuck"])
def test_exit_releases_idle_pools_waits_a_bounded_time_and_keeps_the_code(case):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", EXIT_WITH_THREADS, case], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    if case == "stuck":
        assert 1.0 <= took < 20 and proc.stderr.splitlines() == [
            "warning: 1 thread was still running 1 s after the command finished: stuck; exiting "
            "without waiting for it"]
    else:
        assert took < 20 and proc.stderr == ""


# --------------------------------------------------------------------------------------------------
# vendor hooks that observe a run are bounded in time
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def hanging_hooks():
    """Hooks that wait until the test ends (30 s at most), counting their calls."""
    release = threading.Event()
    calls = []

    def hang(name):
        def hook(device):
            calls.append(name)
            release.wait(30)
            raise RuntimeError("answered too late")
        return hook

    yield SimpleNamespace(hang=hang, calls=calls)
    release.set()


def test_a_hook_that_does_not_answer_is_cut_off_reported_once_and_not_called_again(
        tmp_path, monkeypatch, capsys, hanging_hooks):
    monkeypatch.setenv(ENV_HOOK_TIMEOUT, "0.2")
    host = build_host(load_entry_points=False)
    host.add(vendor_module("sluggish", device_memory_query=hanging_hooks.hang("memory"),
                           device_memory_peak=hanging_hooks.hang("peak")), "sluggish", "test")
    facade = select_device(host, "sluggish")
    monitor = DeviceMonitor(facade, torch.device("cpu"), tmp_path / "m.jsonl", interval_s=60)
    started = time.monotonic()
    monitor.start()
    assert time.monotonic() - started < 3  # the first sample waited 0.2 s for the hook, not 30
    started = time.monotonic()
    records = [monitor.sample() for _ in range(3)]
    with pytest.raises(HookTimedOut, match="hook device_memory_query did not answer within 0.2 s"):
        facade.memory_query(torch.device("cpu"))  # any caller, the case's too
    assert time.monotonic() - started < 1  # not called again: no more waiting
    assert hanging_hooks.calls == ["memory"]
    assert all("util_percent" in r and "mem_used_bytes" not in r for r in records)
    with pytest.raises(HookTimedOut, match="hook device_memory_peak did not answer within 0.2 s"):
        facade.memory_peak(torch.device("cpu"))
    summary = monitor.stop()
    failures = summary["monitor_failures"]
    assert failures["device_memory_query"]["count"] == 6  # start, 3 samples, the case, stop
    assert failures["device_memory_query"]["error"] == (
        "vendor 'sluggish' hook device_memory_query did not answer within 0.2 s")
    assert failures["device_memory_peak"]["lost"] == "the allocator peak"
    err = capsys.readouterr().err
    assert err.count("warning: vendor 'sluggish' hook device_memory_query did not answer within "
                     "0.2 s during the run, device memory (the mem column) not measured") == 1
    assert err.count("hook device_memory_peak did not answer") == 1
    assert facade.observer_calls is None  # after the run, hooks are called as before


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "1e9"])
def test_a_bad_hook_timeout_is_one_line(monkeypatch, value):
    monkeypatch.setenv(ENV_HOOK_TIMEOUT, value)
    with pytest.raises(UserError, match="CHIPBENCH_HOOK_TIMEOUT_S='.*' is not a number of seconds"):
        hook_timeout()


def test_slow_memory_and_sample_hooks_cost_a_run_figures_not_time(tmp_path, monkeypatch, capsys,
                                                                  tiny_data, hanging_hooks):
    monkeypatch.setenv(ENV_HOOK_TIMEOUT, "0.5")
    slow = vendor_module("sluggish", device_memory_query=hanging_hooks.hang("memory"),
                         device_sample=hanging_hooks.hang("sample"))

    def host(*args, **kwargs):
        built = build_host(load_entry_points=False)
        built.add(slow, "sluggish", "test")
        return built

    monkeypatch.setattr(chipbench.run.runner, "build_host", host)
    out = tmp_path / "run"
    started = time.monotonic()
    assert main(["run", "retinanet", "--vendor", "sluggish", "--output", str(out)] + TINY) == 0
    took = time.monotonic() - started
    # waited for, each would have cost 30 s at the start, the case's memory check, the epoch's
    # end and the stop: 4 minutes; cut off, they cost 0.5 s each, once
    assert took < 60, took
    assert sorted(hanging_hooks.calls) == ["memory", "sample"]  # once each
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "finished" and result["metrics"]["e2e_time"] < 60
    failures = result["metrics"]["monitor_failures"]
    for hook in ("device_memory_query", "device_sample"):
        assert failures[hook]["error"] == (
            "vendor 'sluggish' hook {} did not answer within 0.5 s".format(hook))
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "did not answer" in line]
    assert len(warnings) == 2, err
    log = (out / "logs" / "rank0.log").read_text()
    assert "hook device_memory_query did not answer within 0.5 s" in log
    assert "not measured: device memory" in (out / "report.md").read_text()


# --------------------------------------------------------------------------------------------------
# a full disk under torch's zip writer is a user error
# --------------------------------------------------------------------------------------------------

TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 19902976 vs 19902872"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 20 MB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    except (OSError, subprocess.TimeoutExpired):  # no mount command
        pytest.skip("cannot mount a tmpfs here")
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_checkpoint_that_fills_a_real_tmpfs_is_no_space_left(small_tmpfs):
    path = small_tmpfs / "run" / "checkpoints" / "last.pt"
    checkpoint.save({"epoch": 0, "w": torch.zeros(16)}, path)
    with pytest.raises(UserError) as caught:
        checkpoint.save({"epoch": 1, "w": torch.zeros(8 * 2**20)}, path)  # 32 MB
    line = caught.value.one_line()
    assert "cannot write checkpoint {}: no space left on {}".format(path, small_tmpfs) in line
    assert "continue with core run --resume {}".format(small_tmpfs / "run") in line
    assert checkpoint.unpack(torch.load(str(path), weights_only=True))["epoch"] == 0
    assert not path.with_name("last.pt.tmp").exists()


def test_torch_writers_full_disk_error_is_told_by_the_free_space(tmp_path, monkeypatch):
    def save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 part of a zip")
        raise RuntimeError(TORCH_FULL_DISK)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    path = tmp_path / "checkpoints" / "last.pt"
    real = os.statvfs(str(tmp_path))

    def statvfs(free_blocks):
        return lambda folder: SimpleNamespace(f_bavail=free_blocks, f_frsize=real.f_frsize)

    monkeypatch.setattr(chipbench.errors.os, "statvfs", statvfs(0))
    with pytest.raises(UserError, match="cannot write checkpoint .*last.pt: no space left on /"):
        checkpoint.save({"epoch": 0}, path)
    assert not path.with_name("last.pt.tmp").exists()
    # with room on the disk the same error is no full disk: it stays what it is
    monkeypatch.setattr(chipbench.errors.os, "statvfs", statvfs(2**40 // real.f_frsize))
    with pytest.raises(RuntimeError, match="unexpected pos"):
        checkpoint.save({"epoch": 0}, path)


def test_full_disk_error_leaves_interruptions_alone(tmp_path):
    assert full_disk_error(KeyboardInterrupt(), tmp_path / "f", "f", "fix") is None


def test_core_run_with_its_output_on_a_full_tmpfs_is_one_line_exit_2(small_tmpfs, tiny_data,
                                                                     capsys):
    out = small_tmpfs / "run"
    assert main(["run", "retinanet", "--vendor", "cpu", "--output", str(out)] + TINY_DATA
                + ["--set", "train.max_iters=1", "--set", "data.num_workers=0"]) == 2
    err = capsys.readouterr().err
    errors = error_lines(err)
    assert len(errors) == 1 and "no space left on {}".format(small_tmpfs) in errors[0], err
    assert "internal error" not in err and "Traceback" not in err
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and "no space left on" in result["error"]


# --------------------------------------------------------------------------------------------------
# closed standard streams and a deleted working folder
# --------------------------------------------------------------------------------------------------

USES_THE_STREAMS = '''
import stat
print("a case's print")
sys.stderr.write("a case's message\\n")
assert not sys.stderr.isatty() and not sys.stdout.isatty()
# 0-2 are open, and are the test's pipes or the null device: no file of the run took a number
assert not any(stat.S_ISREG(os.fstat(fd).st_mode) for fd in (0, 1, 2))
with open(os.path.join(str(ctx.run_dir), "opened.txt"), "w") as handle:
    fd = handle.fileno()
return {"score": float(fd > 2), "images": 1, "epochs": 1}
'''


@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-", "<&- >&- 2>&-"])
def test_a_run_works_with_standard_streams_closed(tmp_path, closed):
    site = write_case(tmp_path / "site", "streams", USES_THE_STREAMS)
    out = tmp_path / "run"
    proc = core(site, "run", "streams", "--vendor", "cpu", "--output", str(out),
                shell_prefix=closed)
    assert proc.returncode == 0, proc.stderr
    assert not error_lines(proc.stderr) and "Traceback" not in proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "finished" and result["metrics"]["score"] == 1.0
    if ">&-" not in closed:
        assert "converged:" in proc.stdout


@pytest.mark.parametrize("command", [["vendors"], ["vendors", "--json"], ["cases"], ["--help"],
                                     ["info", "--vendor", "cpu", "--json"], ["run"]])
def test_every_command_works_with_all_standard_streams_closed(tmp_path, command):
    proc = core(tmp_path, *command, shell_prefix="<&- >&- 2>&-")
    assert proc.returncode == (2 if command == ["run"] else 0)  # "core run" needs a case


def test_the_retinanet_case_runs_with_stderr_closed(tmp_path, tiny_data):
    out = tmp_path / "run"
    proc = core(tmp_path, "run", "retinanet", "--vendor", "cpu", "--output", str(out), *TINY,
                shell_prefix="2>&-")
    assert proc.returncode == 0
    assert json.loads((out / "result.json").read_text())["status"] == "finished"


def test_a_deleted_working_folder_is_one_line_before_torch_is_imported(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = subprocess.run(
        ["sh", "-c", 'cd "$1" && rmdir "$1" && exec "$2" -X importtime -m chipbench vendors',
         "sh", str(gone), sys.executable], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert lines == ["error: the current folder no longer exists (it was deleted or moved after "
                     "the shell entered it); cd into a folder that exists and run the command "
                     "again"]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")]
    assert "chipbench.cli" in imported and "torch" not in imported


# --------------------------------------------------------------------------------------------------
# a rendezvous that cannot be reached is named in one line; torch's noise stays in the log
# --------------------------------------------------------------------------------------------------


def test_rendezvous_host_of_each_option():
    assert rendezvous_host(Topology(master_addr="node1")) == ("node1", "--master-addr")
    for endpoint, host in (("10.0.0.1:29400", "10.0.0.1"), ("node1", "node1"),
                           ("[fe80::1]:29400", "fe80::1"), ("fe80::1", "fe80::1")):
        assert rendezvous_host(Topology(rdzv_endpoint=endpoint)) == (host, "--rdzv-endpoint")


def test_an_unknown_host_is_refused_before_torchrun_starts():
    with pytest.raises(UserError, match="--master-addr nosuch.invalid names no host this node "
                                        "can resolve"):
        check_rendezvous_host(Topology(nnodes=2, master_addr="nosuch.invalid"))
    check_rendezvous_host(Topology(nnodes=2, master_addr="127.0.0.1"))


TORCH_RETRIES = """\
[W1206 20:07:57.311007831 TCPStore.cpp:340] [c10d] TCP client failed to connect/validate to host \
10.9.9.9:29500 - retrying (try=0, timeout=10000ms, delay=5965ms): Connection timed out
Exception raised from delay at /pytorch/torch/csrc/distributed/c10d/socket.cpp:113 (most recent \
call first):
frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x9d (0x7f63 in libc10.so)
[E1206 20:08:03.288245129 socket.cpp:1028] [c10d] The client socket has timed out after 10000ms \
while trying to connect to (10.9.9.9, 29500).
frame #1: <unknown function> + 0x15eac54 (0x7f62d1deac54 in libtorch_cpu.so)
"""


def test_the_join_failure_names_the_address_and_torchs_last_word(tmp_path):
    log = tmp_path / "torchrun-node0.log"
    line = join_failure(Topology(nnodes=2, master_addr="10.9.9.9", join_timeout_s=20),
                        TORCH_RETRIES, log).one_line()
    assert line.startswith("the nodes did not all join at the master 10.9.9.9:29500 within 20 s "
                           "(--join-timeout; --nnodes 2): The client socket has timed out after "
                           "10000ms while trying to connect to (10.9.9.9, 29500); check that "
                           "10.9.9.9:29500 is the rank-0 node's address"), line
    assert line.endswith("torchrun's messages are in {}".format(log))
    exited = TORCH_RETRIES + "torch.distributed.DistNetworkError: The client socket has timed out"
    line = join_failure(Topology(nnodes=2, rdzv_endpoint="10.9.9.9:29400"), exited, log,
                        12.2).one_line()
    assert line.startswith("the nodes did not all join at the rendezvous endpoint 10.9.9.9:29400 "
                           "(torchrun gave up after 12 s; --nnodes 2): DistNetworkError: The "
                           "client socket has timed out;"), line
    assert last_exception("no exception here") == ""


def assert_one_quiet_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    errors = error_lines(proc.stderr)
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr
    assert all(fragment in errors[0] for fragment in fragments), errors[0]
    noise = [line for line in proc.stderr.splitlines() if "frame #" in line or "[c10d]" in line
             or "Traceback" in line or "socket.cpp" in line]
    assert not noise and len(proc.stderr.splitlines()) < 10, proc.stderr
    return errors[0]


@pytest.mark.distributed
def test_an_unresolvable_master_is_one_line(tmp_path):
    site = write_case(tmp_path / "site", "quick", 'return {"score": 1.0, "images": 1}')
    started = time.monotonic()
    proc = core(site, "run", "quick", "--vendor", "cpu", "--nproc-per-node", "2",
                "--master-addr", "nosuch.invalid", "--join-timeout", "3",
                "--output", str(tmp_path / "run"), timeout=120)
    assert time.monotonic() - started < 60
    assert_one_quiet_line(proc, "nosuch.invalid")


@pytest.mark.distributed
@pytest.mark.oldstack_skip
def test_an_unreachable_master_is_named_and_torchs_noise_stays_in_the_log(tmp_path):
    site = write_case(tmp_path / "site", "quick", 'return {"score": 1.0, "images": 1}')
    out = tmp_path / "run"
    port = str(free_port())
    started = time.monotonic()
    proc = core(site, "run", "quick", "--vendor", "cpu", "--nproc-per-node", "2",
                "--master-addr", "192.0.2.1", "--master-port", port, "--join-timeout", "2",
                "--output", str(out), timeout=120)
    assert time.monotonic() - started < 60
    line = assert_one_quiet_line(proc, "did not all join at the master 192.0.2.1:" + port,
                                 "within 2 s (--join-timeout; --nnodes 1)")
    assert str(out / "logs" / "torchrun-node0.log") in line
    assert (out / "logs" / "torchrun-node0.log").stat().st_size > 0
    assert json.loads((out / "result.json").read_text())["error"] == line[len("error: "):]


@pytest.mark.distributed
@pytest.mark.oldstack_skip
def test_a_master_port_taken_by_another_program_is_named(tmp_path):
    site = write_case(tmp_path / "site", "quick", 'return {"score": 1.0, "images": 1}')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = core(site, "run", "quick", "--vendor", "cpu", "--nproc-per-node", "2",
                    "--master-port", port, "--join-timeout", "60",
                    "--output", str(tmp_path / "run"), timeout=120)
    assert_one_quiet_line(proc, "did not all join at the master 127.0.0.1:" + port,
                          "(torchrun gave up after")


def test_os_error_classes_are_unchanged():
    error = chipbench.errors.user_os_error(OSError(errno.ENOSPC, "No space left on device", "/x"))
    assert error is not None and "no space left on device" in error.one_line()
    assert not issubclass(HookTimedOut, RunFailed)
