"""On a real NVIDIA GPU (the tox env ``cuda``; every test here skips where the cuda vendor sees
none): the case end to end in each precision, the README's main job to its target, the
conformance kit and ``core doctor``, auto-detection, and the one-line refusals a careless run on
such a machine gets."""

import json
import os
import subprocess
import sys

import pytest

from chipbench.cli import main
from tests.conftest import tiny

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def gpu():
    """The cuda vendor's record; skips the module's tests where it is not available here."""
    from chipbench.host.manager import build_host

    record = build_host().record("cuda")
    if record is None or not record.info.available:
        pytest.skip("no NVIDIA GPU here: " + (record.info.reason if record else "no cuda vendor"))
    return record


def run_result(out) -> dict:
    return json.loads((out / "result.json").read_text())


def chipbench_cli(*args, env=None, timeout=600):
    """``python -m chipbench ARGS`` in a fresh process (what a user types), output captured."""
    return subprocess.run([sys.executable, "-m", "chipbench"] + list(args), capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("precision", ["fp32", "amp", "fp16", "bf16"])
def test_case_runs_on_the_gpu(gpu, precision, tmp_path):
    """Two iterations and one evaluation per precision, on the GPU: device memory from the
    driver, the allocator peak, the datasheet peak for MFU, nvidia-smi samples in the monitor."""
    import torch

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    out = tmp_path / precision
    assert main(["run", "retinanet", "--vendor", "cuda", "--precision", precision,
                 "--output", str(out)] + tiny(2, "--set", "run.monitor_interval_s=0.2")) == 0
    result = run_result(out)
    metrics = result["metrics"]
    assert result["status"] == "finished" and result["vendor"] == "cuda"
    assert result["precision"] == precision and metrics["iterations"] == 2
    assert metrics["mem_source"] == "cudaMemGetInfo"
    assert metrics["mem_total_bytes"] == torch.cuda.mem_get_info(0)[1]
    assert 0 < metrics["allocator_peak_bytes"] < metrics["mem_total_bytes"]
    assert 0 < metrics["mem_used_peak_bytes"] <= metrics["mem_total_bytes"]
    assert metrics["p_core"] > 0 and 0.0 <= metrics["mAP"] <= 1.0
    from chipbench.plugins.cuda import peak_tflops

    name = torch.cuda.get_device_name(0)
    tf32 = bool(torch.backends.cudnn.allow_tf32)
    if peak_tflops(name, precision, tf32) is not None:
        assert metrics["peak_tflops"] == pytest.approx(peak_tflops(name, precision, tf32))
        assert 0 < metrics["mfu"] < 1
    assert result["environment"]["device_model"] == name
    label = result["row_label"]
    assert label.endswith("1 node x 1 card (1x1)") and "\n" not in label
    samples = [json.loads(line) for line in
               (out / "monitor" / "rank0.jsonl").read_text().splitlines()]
    assert samples and all(s["mem_source"] == "cudaMemGetInfo" for s in samples)
    if any("util_percent" in s for s in samples):  # nvidia-smi answered
        assert all(0 <= s["util_percent"] <= 100 for s in samples if "util_percent" in s)


def test_main_job_reaches_its_target_on_the_gpu(gpu, tmp_path):
    """The README's main job (embedded default, auto-detected vendor) converges on the GPU too."""
    out = tmp_path / "main"
    done = chipbench_cli("run", "cases/retinanet", "--output", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    result = run_result(out)
    assert result["vendor"] == "cuda" and result["metrics"]["converged"] is True
    assert result["metrics"]["mAP"] >= result["target"]
    print("cuda main job: mAP {:.4f} after {} epochs, e2e {:.1f} s, p_core {:.1f} img/s".format(
        result["metrics"]["mAP"], result["metrics"]["epochs"], result["metrics"]["e2e_time"],
        result["metrics"]["p_core"]))


def test_doctor_and_conformance_kit_pass_on_the_gpu(gpu, tmp_path, capsys):
    assert main(["doctor", "--vendor", "cuda", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert report["vendor"] == "cuda" and not failed, failed
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "chipbench.conformance",
         "--chipbench-vendor", "cuda", "-p", "no:cacheprovider", "-q"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]


def test_auto_detection_picks_the_gpu(gpu, capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vendor"] == "cuda"


def test_more_processes_than_gpus_is_one_line(gpu, tmp_path):
    """``--nproc-per-node`` one beyond the GPUs: the rank without a device is refused in one line
    naming the count and the fix; the run folder records the failure."""
    import torch

    count = torch.cuda.device_count()
    out = tmp_path / "toomany"
    done = chipbench_cli("run", "retinanet", "--vendor", "cuda", "--nproc-per-node",
                         str(count + 1), "--output", str(out), *tiny(1), timeout=300)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "local rank {} has no device".format(count) in last, done.stderr[-3000:]
    assert "--nproc-per-node" in last
    assert run_result(out)["status"] == "failed"


def test_a_device_that_does_not_exist_is_one_line(gpu, tmp_path):
    """``--devices`` naming a GPU index the machine does not have."""
    import torch

    out = tmp_path / "nodevice"
    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = chipbench_cli("run", "retinanet", "--vendor", "cuda", "--devices",
                         str(torch.cuda.device_count() + 3), "--output", str(out), *tiny(1),
                         env=env, timeout=300)
    last = done.stderr.strip().splitlines()[-1]
    print("--devices beyond the machine:", last)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and last.startswith("error: ")
    assert "device" in last, done.stderr[-3000:]


@pytest.mark.distributed
def test_two_processes_on_two_gpus(gpu, tmp_path):
    """One process per GPU over NCCL (a machine with two or more NVIDIA GPUs; not yet run on one:
    the H200 machine it first ran on had one): both ranks train, the rows say 1x2, each rank's
    monitor samples its own GPU."""
    import torch

    from tests.conftest import free_port

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two NVIDIA GPUs")
    out = tmp_path / "two"
    done = chipbench_cli("run", "retinanet", "--vendor", "cuda", "--nproc-per-node", "2",
                         "--master-port", str(free_port()), "--output", str(out), *tiny(2))
    assert done.returncode == 0, done.stderr[-3000:]
    result = run_result(out)
    metrics = result["metrics"]
    assert result["status"] == "finished" and metrics["ranks"] == 2
    assert result["row_label"].endswith("1 node x 2 cards (1x2)")
    assert metrics["mem_source"] == "cudaMemGetInfo"
    assert "rank 1 of 2" in (out / "logs" / "rank1.log").read_text()
    assert (out / "monitor" / "rank1.jsonl").is_file()
