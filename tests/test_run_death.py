"""A run whose process is killed outright (SIGKILL: the kernel's out-of-memory killer, a job
scheduler, ``kill -9``) still ends with one line and a result.json that says failed, and a run
that is still going cannot be resumed a second time beside itself."""

import errno
import json
import os
import platform
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chipbench.cli import main
from chipbench.run import runner, sentinel
from chipbench.run.sentinel import (
    RunLock,
    check_not_running,
    death_fix,
    last_memory_sample,
    lock_path,
    stop_leftover_workers,
    torchrun_pid_path,
)
from tests.conftest import QUICK, core_process, free_port, tiny, worker_pid


def wait_for(predicate, timeout=120.0, proc=None):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        assert proc is None or proc.poll() is None, proc.communicate()[1]
        time.sleep(0.2)


def status(out: Path) -> str:
    try:
        return json.loads((out / "result.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return ""


def recorded_epochs(out: Path) -> list:
    try:
        return json.loads((out / "progress.json").read_text()).get("epochs") or []
    except (OSError, ValueError, AttributeError):
        return []


def hold_lock_elsewhere(run_dir: Path) -> subprocess.Popen:
    """Another process that takes the run's lock and keeps it until killed."""
    code = ("import sys, time\nfrom chipbench.run.sentinel import RunLock\n"
            "RunLock(sys.argv[1], 0)\nprint('held', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_lock_refuses_the_folder_and_a_free_one_does_not(tmp_path):
    check_not_running(tmp_path, 0)  # no lock file: nothing to refuse, and nothing written
    assert list(tmp_path.iterdir()) == []
    holder = hold_lock_elsewhere(tmp_path)
    try:
        (tmp_path / "result.json").write_text(json.dumps({"pid": holder.pid,
                                                          "host": platform.node()}))
        with pytest.raises(Exception, match=r"is in use: its run is still going \(pid {}\)"
                           .format(holder.pid)) as caught:
            check_not_running(tmp_path, 0)
        assert "kill {}".format(holder.pid) in caught.value.one_line()
        with pytest.raises(Exception, match="is in use"):
            RunLock(tmp_path, 0)
        check_not_running(tmp_path, 1)  # another node's lock
    finally:
        holder.kill()
        holder.wait()
    check_not_running(tmp_path, 0)  # the kernel let go with the process
    lock = RunLock(tmp_path, 0)
    assert lock.held and lock_path(tmp_path, 0).is_file()
    lock.release()
    assert not lock.held


def test_memory_sample_and_advice_read_what_the_run_left(tmp_path):
    monitor = tmp_path / "monitor"
    monitor.mkdir()
    gib = 2 ** 30
    (monitor / "rank0.jsonl").write_text("\n".join(json.dumps(s) for s in [
        {"time": 1, "mem_used_bytes": 20 * gib, "mem_total_bytes": 24 * gib},
        {"time": 2, "mem_used_bytes": 3 * gib, "mem_total_bytes": 24 * gib}]) + "\nnot json")
    (monitor / "rank1.jsonl").write_text(json.dumps(
        {"time": 2, "mem_used_bytes": 7.5 * gib, "mem_total_bytes": 24 * gib}) + "\n")
    assert last_memory_sample(tmp_path) == "7.5 of 24.0 GiB"  # the last of each, the largest
    assert last_memory_sample(tmp_path / "nothing") is None
    assert "start it again" in death_fix(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    assert "core run --resume {}".format(tmp_path) in death_fix(tmp_path)


def test_every_run_starts_a_sentinel_that_leaves_once_the_run_ends(tiny_data, tmp_path,
                                                                  monkeypatch, capsys):
    started = []

    def recording(run_dir, node_rank):
        proc = sentinel.start_sentinel(run_dir, node_rank)
        started.append(proc)
        return proc

    monkeypatch.setattr(runner, "start_sentinel", recording)
    out = tmp_path / "run"
    assert main(["run", "cases/retinanet", "--vendor", "cpu", "--output", str(out)] + tiny(1)) == 0
    [proc] = started
    assert proc.wait(timeout=30) == 0  # it read the final status and left
    assert status(out) == "finished" and lock_path(out, 0).is_file()


def test_a_run_that_drops_its_own_lock_is_not_taken_for_dead(tmp_path):
    """A POSIX lock is dropped when its process closes any descriptor of the file (a plugin that
    copies the run folder would): the sentinel then has the lock while the run goes on, and must
    wait for the process to end before it judges."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = textwrap.dedent("""
        import json, os, platform, sys, time
        from pathlib import Path
        from chipbench.run.sentinel import RunLock, lock_path, start_sentinel
        run_dir = Path(sys.argv[1])
        lock = RunLock(run_dir, 0)
        result = run_dir / "result.json"
        result.write_text(json.dumps({"status": "running", "pid": os.getpid(),
                                      "host": platform.node()}))
        proc = start_sentinel(run_dir, 0)
        os.close(os.open(str(lock_path(run_dir, 0)), os.O_RDONLY))  # drops the lock
        time.sleep(3)
        print(json.loads(result.read_text())["status"])
        result.write_text(json.dumps({"status": "finished", "pid": os.getpid(),
                                      "host": platform.node()}))
        print(proc.pid, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True,
                         text=True, timeout=60)
    seen, sentinel_pid = out.stdout.split()
    assert seen == "running", out.stderr  # not marked failed while the run was alive
    wait_for(lambda: gone(int(sentinel_pid)), timeout=30)
    assert status(run_dir) == "finished"


def test_a_stale_torchrun_pid_file_stops_nothing_else(tmp_path):
    """A pid file left by an earlier attempt may name a process that is not this run's torchrun
    now: it is not signalled, and the file goes."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file = torchrun_pid_path(tmp_path, 0)
        pid_file.parent.mkdir()
        pid_file.write_text("{}\n".format(other.pid))
        assert stop_leftover_workers(tmp_path, 0) is None
        assert other.poll() is None and not pid_file.exists()
    finally:
        other.kill()
        other.wait()


def test_a_file_system_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch,
                                                                  tiny_data, capsys):
    def refuse(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(sentinel.fcntl, "lockf", refuse)
    lock = RunLock(tmp_path, 0)
    assert not lock.held and "refuses a lock (No locks available)" in lock.problem
    check_not_running(tmp_path, 0)  # cannot tell: not refused
    out = tmp_path / "run"
    assert main(["run", "cases/retinanet", "--vendor", "cpu", "--output", str(out)] + tiny(1)) == 0
    assert "warning: cannot lock the run folder {}: its file system refuses a lock".format(
        out) in capsys.readouterr().err
    assert status(out) == "finished"


@pytest.mark.parametrize("host, owner, stop", [
    ("", "pid 4242)", "kill 4242"), (platform.node(), "pid 4242)", "kill 4242"),
    ("elsewhere", "pid 4242 on elsewhere)", "stop it where it runs")])
def test_in_use_names_the_process_and_kills_only_on_its_own_host(tmp_path, host, owner, stop):
    (tmp_path / "result.json").write_text(json.dumps({"pid": 4242, "host": host}))
    line = sentinel._in_use(tmp_path).one_line()
    assert owner in line and stop in line and "retry in a few seconds" in line
    assert ("kill 4242" in line) == (host != "elsewhere")


def test_sigkill_of_a_run_is_recorded_as_failed_in_one_line(tmp_path, tiny_data):
    out = tmp_path / "run"
    proc = core_process("--output", str(out), "--set", "train.epochs=1000",
                        "--set", "target.mAP=1.0", *QUICK[:-2])  # checkpoints on
    # an epoch recorded (progress.json) and its checkpoint written: both are kept after the kill
    wait_for(lambda: (out / "checkpoints" / "last.pt").is_file() and recorded_epochs(out),
             proc=proc)
    assert main(["run", "--resume", str(out)]) == 2  # still going: refused, nothing changed
    proc.kill()  # as the out-of-memory killer would
    _, stderr = proc.communicate(timeout=60)  # EOF once the sentinel has spoken and left
    assert status(out) == "failed", stderr
    result = json.loads((out / "result.json").read_text())
    assert "pid {}) ended without recording why".format(proc.pid) in result["error"]
    assert "out-of-memory killer" in result["error"] and "last memory sample" in result["error"]
    assert "--resume {}".format(out) in result["error"]  # it left a checkpoint
    assert len(result["epochs"]) >= 1 and result["metrics"]  # what it measured is kept
    assert (out / "report.md").is_file()
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last == "error: run {}: {}".format(out.resolve(), result["error"])
    assert "Traceback" not in stderr


@pytest.mark.distributed
@pytest.mark.oldstack_skip  # the old stack's one 2-process run is test_distributed's
def test_sigkill_of_the_launcher_stops_torchrun_and_its_workers(tmp_path, tiny_data):
    out = tmp_path / "run"
    proc = core_process("--nproc-per-node", "2", "--master-port", str(free_port()),
                        "--output", str(out), "--set", "train.max_iters=400",
                        "--set", "train.epochs=1000", "--set", "run.log_every=1", *QUICK)
    log = out / "logs" / "rank1.log"
    wait_for(lambda: "epoch 0 [2/" in (log.read_text() if log.exists() else ""), proc=proc,
             timeout=300)
    pids = [worker_pid(p) for p in (out / "logs").glob("rank*.log")]
    torchrun = int((out / "logs" / "torchrun-node0.pid").read_text())
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert status(out) == "failed", stderr
    error = json.loads((out / "result.json").read_text())["error"]
    assert "its torchrun (pid {}) and workers were stopped".format(torchrun) in error
    for pid in pids + [torchrun]:  # nothing left training on its own
        wait_for(lambda pid=pid: gone(pid), timeout=30)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        return b"zombie" in Path("/proc/{}/status".format(pid)).read_bytes().lower()
    except OSError:
        return True


def test_a_dead_run_whose_result_was_edited_is_recorded_and_the_edit_kept(tmp_path):
    """A run killed after its result.json was edited into something no run writes: the sentinel
    keeps that file aside and records the death in a new result.json made from spec.json,
    instead of leaving the run "running" for ever."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    spec = {"case": "retinanet", "vendor": "cpu", "config": {"train": {"epochs": 1}},
            "topology": {"nnodes": 1, "nproc_per_node": 1}}
    edited = {"case": "retinanet", "status": "running", "pid": dead.pid, "precision": "amp",
              "target_metric": "mAP", "target": 0.35, "row_label": 7,
              "host": platform.node(), "metrics": {"p_train": "fast"}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "result.json").write_text(json.dumps(edited))
    lock_path(tmp_path, 0).write_text("")
    out = subprocess.run([sys.executable, "-m", "chipbench.run.sentinel", str(tmp_path), "0",
                          str(dead.pid)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert json.loads((tmp_path / "result.refused.json").read_text()) == edited
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "failed" and result["vendor"] == "cpu"
    assert result["config"] == spec["config"] and "killed" in result["error"]
    assert "row_label is 7" in result["note"] and "result.refused.json" in result["note"]
    assert result["precision"] == "amp" and result["target"] == 0.35  # kept where of their kind
    assert result["row_label"] is None
    assert "killed" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "result.refused.json" in (tmp_path / "report.md").read_text()  # the note, shown
    (tmp_path / "result.json").write_text(json.dumps(edited))  # a second edit, another death
    subprocess.run([sys.executable, "-m", "chipbench.run.sentinel", str(tmp_path), "0",
                    str(dead.pid)], capture_output=True, text=True, timeout=60)
    assert json.loads((tmp_path / "result.refused.json").read_text()) == edited  # both kept
    assert json.loads((tmp_path / "result.refused-1.json").read_text()) == edited
    assert "result.refused-1.json" in json.loads((tmp_path / "result.json").read_text())["note"]
