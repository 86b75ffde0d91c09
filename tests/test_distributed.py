"""Runs through torchrun on this machine: gloo on loopback, CPU only.

Two workers on one node, two "nodes" on 127.0.0.1, a killed worker, and resume. Every run uses
the tiny data set (64 px) and one or two iterations: the cost is torchrun and the workers' start.
The old-stack env runs the two-worker run only (``oldstack_skip`` on the other scenarios: the
cpu env runs them all).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from chipbench.cli import main
from tests.conftest import (
    INTERRUPTER,
    QUICK,
    ROOT,
    TINY_DATA,
    core_process,
    finish,
    free_port,
    worker_pid,
    write_distribution,
)


def start_long_two_worker_run(tmp_path):
    """A 2-worker run that lasts, returned once rank 1 has trained two iterations (its first
    epoch: 8 of the tiny set's 16 images, batch 4); 400 iterations would take minutes more."""
    out = tmp_path / "run"
    proc = core_process("--nproc-per-node", "2", "--master-port", str(free_port()),
                        "--output", str(out), "--set", "train.max_iters=400",
                        "--set", "train.epochs=1000", "--set", "run.log_every=1", *QUICK)
    log = out / "logs" / "rank1.log"
    deadline = time.time() + 300
    while time.time() < deadline and "epoch 0 [2/" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.5)
    return proc, out


@pytest.mark.distributed
def test_two_workers_on_one_node(tmp_path, tiny_data):
    out = tmp_path / "run"
    code, stdout, stderr = finish(core_process(
        "--nproc-per-node", "2", "--master-port", str(free_port()), "--output", str(out),
        "--set", "train.max_iters=2", *QUICK))
    assert code == 0, stderr
    result = json.loads((out / "result.json").read_text())
    metrics = result["metrics"]
    assert result["status"] == "finished" and metrics["ranks"] == 2
    assert metrics["iterations"] == 4 and metrics["images"] == 16  # summed over both ranks
    assert metrics["p_train"] == pytest.approx(16 / metrics["train_seconds"])
    assert result["row_label"] == "CPU 1 node x 2 cards (1x2)"
    assert result["row_label_zh"] == "CPU 单机2卡（1x2）"
    assert any(s.endswith("CPUx1x2.yaml") for s in result["config_sources"])
    logs = {p.name for p in (out / "logs").iterdir()}
    assert {"rank0.log", "rank1.log"} <= logs
    assert "rank 1 of 2" in (out / "logs" / "rank1.log").read_text()
    assert (out / "monitor" / "rank1.jsonl").is_file()
    assert "CPU 1 node x 2 cards (1x2)" in stdout


@pytest.mark.distributed
@pytest.mark.oldstack_skip
@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_two_nodes_on_loopback(tmp_path, tiny_data, rendezvous):
    port = str(free_port())
    meet = (["--master-addr", "127.0.0.1", "--master-port", port] if rendezvous == "static"
            else ["--rdzv-endpoint", "127.0.0.1:" + port])
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--set", "train.max_iters=1", *meet,
              *QUICK]
    node0 = core_process("--node-rank", "0", "--output", str(tmp_path / "n0"), *common)
    node1 = core_process("--node-rank", "1", "--output", str(tmp_path / "n1"), *common)
    code1, _, err1 = finish(node1)
    code0, _, err0 = finish(node0)
    assert code0 == 0 and code1 == 0, err0 + err1
    results = [json.loads((tmp_path / n / "result.json").read_text()) for n in ("n0", "n1")]
    # static: node-rank 0 holds rank 0; c10d: whichever node the rendezvous made node 0
    holders = [r for r in results if "ranks" in r["metrics"]]
    assert len(holders) == 1, results
    result = holders[0]
    other = results[1 - results.index(result)]
    assert "did not hold rank 0" in other["note"] and other["status"] == "finished"
    if rendezvous == "static":
        assert result is results[0]
    assert result["metrics"]["ranks"] == 2 and result["metrics"]["images"] == 8
    assert result["row_label"] == "CPU 2 nodes x 1 card (2x1)"
    assert result["row_label_zh"] == "CPU 两机1卡（2x1）"
    assert {p.name for n in ("n0", "n1") for p in (tmp_path / n / "logs").glob("rank*.log")} == {
        "rank0.log", "rank1.log"}


@pytest.mark.distributed
@pytest.mark.oldstack_skip
def test_killed_worker_stops_the_run_quickly(tmp_path, tiny_data):
    proc, out = start_long_two_worker_run(tmp_path)
    pid = worker_pid(out / "logs" / "rank1.log")
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    code, _, stderr = finish(proc, timeout=120)
    stopped = time.time() - killed
    print("stopped {:.1f} s after the kill".format(stopped))
    assert stopped < 30 and code not in (0, 2)
    assert "error: rank 1 died (exit code -9" in stderr and "Traceback" not in stderr
    assert "`dmesg` names the out-of-memory killer" in stderr  # SIGKILL's usual sender
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and "out-of-memory killer" in result["error"]
    assert (out / "logs" / "rank0.log").is_file() and (out / "logs" / "rank1.log").is_file()
    assert (out / "monitor" / "rank0.jsonl").is_file()


@pytest.mark.distributed
@pytest.mark.oldstack_skip
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_every_worker_and_records_it(tmp_path, tiny_data, signum):
    proc, out = start_long_two_worker_run(tmp_path)
    pids = [worker_pid(p) for p in (out / "logs").glob("rank*.log")]
    sent = time.time()
    proc.send_signal(signum)
    code, _, stderr = finish(proc, timeout=120)
    assert time.time() - sent < 30 and code == 128 + signum, stderr  # 130 Ctrl-C, 143 SIGTERM
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "interrupted"
    time.sleep(1)
    for pid in pids:  # no worker left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow  # three runs, 12 iterations in all: about a minute of CPU time
def test_resumed_run_matches_uninterrupted(tmp_path, monkeypatch):
    site = tmp_path / "site"
    write_distribution(site, "interrupter", {"interrupter": "interrupter"},
                       {"interrupter": INTERRUPTER})
    monkeypatch.syspath_prepend(str(site))
    # 3 epochs of 2 iterations (4 images of 64 px, batch 2): 6 + 4 + 2 iterations in all
    args = ["run", "retinanet", "--vendor", "cpu", "--set", "train.epochs=3", *TINY_DATA,
            "--set", "data.synthetic.train_images=4", "--set", "data.synthetic.val_images=2",
            "--set", "train.batch_size=2", "--set", "eval.batch_size=2",
            "--set", "data.num_workers=0", "--set", "train.deterministic=true",
            "--set", "target.mAP=1.0", "--set", "train.lr_steps=[2]"]
    assert main(args + ["--output", str(tmp_path / "whole")]) == 0
    monkeypatch.setenv("CHIPBENCH_TEST_INTERRUPT_AT", "1")
    assert main(args + ["--output", str(tmp_path / "cut")]) == 130
    cut = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert cut["status"] == "interrupted" and len(cut["epochs"]) == 2
    monkeypatch.delenv("CHIPBENCH_TEST_INTERRUPT_AT")
    assert main(["run", "--resume", str(tmp_path / "cut")]) == 0
    whole = json.loads((tmp_path / "whole" / "result.json").read_text())
    resumed = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert resumed["status"] == "finished" and resumed["resumed"] == 1
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1, 2]
    assert resumed["metrics"]["mAP"] == pytest.approx(whole["metrics"]["mAP"], abs=1e-6)
    assert resumed["metrics"]["loss"] == pytest.approx(whole["metrics"]["loss"], rel=1e-5)
    assert resumed["metrics"]["images"] == whole["metrics"]["images"]


def test_torchrun_root_cause_is_one_line(tmp_path):
    from chipbench.run.runner import torchrun_root_cause

    log = tmp_path / "torchrun.log"
    log.write_text(textwrap.dedent("""\
        Failures:
        [1]:
          rank      : 0 (local_rank: 0)
          exitcode  : -15 (pid: 7152)  (SIGTERM)
          traceback : Signal 15 (SIGTERM) received by PID 7152
        ------------------------------------------------------
        Root Cause (first observed failure):
        [0]:
          time      : 2026-11-29_11:03:47
          rank      : 1 (local_rank: 1)
          exitcode  : -9 (pid: 7153)  (SIGKILL)
          error_file: <N/A>
          traceback : Signal 9 (SIGKILL) received by PID 7153
        """))
    assert torchrun_root_cause(log) == (
        "rank 1 died (exit code -9: Signal 9 (SIGKILL) received by PID 7153)")
    assert torchrun_root_cause(tmp_path / "missing.log") == ""


SUMMARY = """\
    chipbench.run.worker FAILED
    ------------------------------------------------------------
    Failures:
    [1]:
      time      : {other_time}
      host      : localhost
      rank      : 1 (local_rank: 1)
      exitcode  : {other_code}
      error_file: <N/A>
      traceback : {other_traceback}
    ------------------------------------------------------------
    Root Cause (first observed failure):
    [0]:
      time      : 2026-11-30_10:59:43
      host      : localhost
      rank      : 0 (local_rank: 0)
      exitcode  : 1 (pid: 27465)
      error_file: <N/A>
      traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
    """


@pytest.mark.parametrize("other_time, other_code, other_traceback, expected", [
    # rank 1 was killed; rank 0's collective failed and it exited before torchrun saw the kill
    ("2026-11-30_10:59:43", "-9 (pid: 27466)  (SIGKILL)", "Signal 9 (SIGKILL) received by PID 27466",
     "rank 1 died (exit code -9: Signal 9 (SIGKILL) received by PID 27466)"),
    ("2026-11-30_10:59:42", "-11 (pid: 27466)  (SIGSEGV)",
     "Signal 11 (SIGSEGV) received by PID 27466",
     "rank 1 died (exit code -11: Signal 11 (SIGSEGV) received by PID 27466)"),
    # torch 2.11 (seen on an H200 machine) writes no signal name after the exit code
    ("2026-11-30_10:59:43", "-9 (pid: 27466)", "Signal 9 (SIGKILL) received by PID 27466",
     "rank 1 died (exit code -9: Signal 9 (SIGKILL) received by PID 27466)"),
    ("2026-11-30_10:59:43", "-15 (pid: 27466)", "Signal 15 (SIGTERM) received by PID 27466",
     "rank 0 died (exit code 1)"),
    # rank 0 failed first: torchrun stopped rank 1 (SIGTERM), or killed it much later
    ("2026-11-30_10:59:44", "-15 (pid: 27466)  (SIGTERM)",
     "Signal 15 (SIGTERM) received by PID 27466", "rank 0 died (exit code 1)"),
    ("2026-11-30_11:00:14", "-9 (pid: 27466)  (SIGKILL)", "Signal 9 (SIGKILL) received by PID 27466",
     "rank 0 died (exit code 1)"),
])
def test_torchrun_root_cause_blames_the_killed_rank_not_its_echo(tmp_path, other_time, other_code,
                                                                 other_traceback, expected):
    from chipbench.run.runner import torchrun_root_cause

    log = tmp_path / "torchrun.log"
    log.write_text(textwrap.dedent(SUMMARY.format(other_time=other_time, other_code=other_code,
                                                  other_traceback=other_traceback)))
    assert torchrun_root_cause(log) == expected


@pytest.mark.distributed
@pytest.mark.oldstack_skip
def test_node_that_never_joins_fails_after_join_timeout(tmp_path, tiny_data):
    out = tmp_path / "lonely"
    started = time.time()
    proc = core_process("--nnodes", "2", "--node-rank", "0", "--master-port", str(free_port()),
                        "--join-timeout", "2", "--output", str(out), *QUICK)
    code, _, stderr = finish(proc, timeout=120)
    waited = time.time() - started
    print("gave up {:.1f} s after start (join timeout 2 s)".format(waited))
    assert code != 0 and waited < 60
    line = [x for x in stderr.splitlines() if x.startswith("error: ")][0]
    assert "torchrun failed" in line or "did not all join" in line
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and result["error"] == line[len("error: "):]


STALLER = """
    import os
    import time
    from chipbench.hookspecs import hookimpl

    @hookimpl
    def on_epoch_end(run, epoch, metrics):
        if os.environ.get("CHIPBENCH_TEST_STALL"):
            time.sleep(float(os.environ["CHIPBENCH_TEST_STALL"]))
"""


HANG_TIMEOUT_S = 8  # run.timeout_s: long enough for two workers to start together on 2 busy cores


@pytest.mark.distributed
@pytest.mark.oldstack_skip
def test_hanging_rank_fails_the_run_after_timeout(tmp_path, tiny_data):
    """Rank 0 stalls (in an observer, after epoch 0) while rank 1 waits in a collective (epoch 1's
    first step: 2 iterations per epoch, max_iters 3): run.timeout_s ends it."""
    site = tmp_path / "site"
    write_distribution(site, "staller", {"staller": "staller"}, {"staller": STALLER})
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", CHIPBENCH_TEST_STALL="300",
               PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "chipbench", "run", "retinanet", "--nproc-per-node", "2",
         "--master-port", str(free_port()), "--output", str(out), "--set", "train.max_iters=3",
         "--set", "run.timeout_s={}".format(HANG_TIMEOUT_S), *QUICK], cwd=str(ROOT), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "logs" / "rank0.log"
    deadline = time.time() + 300
    while time.time() < deadline and "epoch 0 done" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.5)
    stalled = time.time()
    code, _, stderr = finish(proc, timeout=200)
    waited = time.time() - stalled
    print("stopped {:.1f} s after rank 0 stalled (timeout {} s)".format(waited, HANG_TIMEOUT_S))
    assert code not in (0, 2) and waited < HANG_TIMEOUT_S + 30
    line = [x for x in stderr.splitlines() if x.startswith("error: ")][0]
    assert "rank 1" in line
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and len(result["epochs"]) == 1  # epoch 0 was kept


@pytest.mark.distributed
@pytest.mark.oldstack_skip
def test_devices_reach_workers_through_the_vendor_variable(tmp_path, tiny_data, capsys):
    from chipbench.host.manager import build_host

    if build_host().record("fakechip") is None:
        pytest.skip("examples/fakechip is not installed (tox installs it)")
    out = tmp_path / "run"
    proc = core_process("--vendor", "fakechip", "--devices", "3", "--master-port",
                        str(free_port()), "--output", str(out), "--set", "train.max_iters=1",
                        *QUICK[2:])
    code, _, stderr = finish(proc)
    assert code == 0, stderr
    assert "FAKECHIP_VISIBLE_DEVICES=3" in (out / "logs" / "rank0.log").read_text()
    assert main(["run", "retinanet", "--vendor", "cpu", "--devices", "0"]) == 2
    assert "has no way to restrict devices" in capsys.readouterr().err
    assert main(["run", "retinanet", "--vendor", "fakechip", "--devices", "1",
                 "--nproc-per-node", "2"]) == 2
    assert "lists 1 device(s) for 2 process(es)" in capsys.readouterr().err
