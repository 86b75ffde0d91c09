"""Faults in the middle of a run: a full disk during a checkpoint write, SIGKILL in the middle of
one, a loss that becomes NaN. Each leaves one error line, the previous checkpoint intact, the
finished epochs recorded, and a run folder that ``--resume`` continues."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chipbench.cases.retinanet import train
from chipbench.cli import main
from chipbench.errors import is_allocation_failure
from chipbench.run import checkpoints as checkpoint
from chipbench.run.worker import allocation_error

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--vendor", "cpu", "--set", "data.synthetic.train_images=8",
         "--set", "data.synthetic.val_images=4", "--set", "data.synthetic.image_size=64",
         "--set", "model.min_size=64", "--set", "model.max_size=64",
         "--set", "run.monitor_interval_s=0.2", "--set", "data.num_workers=0",
         "--set", "train.epochs=2"]


def result_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def one_error_line(err: str, fragment: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], err
    assert "Traceback" not in err


def assert_failed_after_epoch_0(run_dir: Path) -> None:
    """The previous checkpoint is whole and agrees with the recorded epochs."""
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["epoch"] == 0
    result = result_of(run_dir)
    assert [e["epoch"] for e in result["epochs"]] == [0]
    assert not (run_dir / "checkpoints" / "last.pt.tmp").exists()


def resume_finishes(run_dir: Path) -> None:
    first = result_of(run_dir)
    assert main(["run", "--resume", str(run_dir)]) == 0
    result = result_of(run_dir)
    assert result["status"] == "finished" and result["resumed"] == 1
    # the first attempt's command and start stay; the resume is listed after them
    assert (result["command"], result["started_at"]) == (first["command"], first["started_at"])
    assert len(result["resumes"]) == 1
    assert result["started_at"] <= result["resumes"][0]["started_at"]
    assert [e["epoch"] for e in result["epochs"]] == [0, 1]
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["epoch"] == 1


@pytest.mark.slow
def test_disk_full_during_checkpoint_write(tmp_path, monkeypatch, capsys):
    real_save = torch.save
    calls = []

    def save(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            handle.write(b"PK\x03\x04 half a zip")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    run_dir = tmp_path / "run"
    assert main(["run", "retinanet", "--output", str(run_dir)] + QUICK) == 2
    one_error_line(capsys.readouterr().err, "No space left on device")
    assert result_of(run_dir)["status"] == "failed"
    assert_failed_after_epoch_0(run_dir)
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    resume_finishes(run_dir)


@pytest.mark.slow
def test_nan_loss_mid_run(tmp_path, monkeypatch, capsys):
    real = train.train_one_epoch

    class NaNLoss(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            return {k: v * float("nan") for k, v in self.inner(*args, **kwargs).items()}

    def train_one_epoch(model, optimizer, loader, device, epoch, *args, **kwargs):
        model = NaNLoss(model) if epoch == 1 else model
        return real(model, optimizer, loader, device, epoch, *args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", train_one_epoch)
    run_dir = tmp_path / "run"
    assert main(["run", "retinanet", "--output", str(run_dir)] + QUICK) == 2
    err = capsys.readouterr().err
    one_error_line(err, "nan")
    assert result_of(run_dir)["status"] == "failed"
    assert_failed_after_epoch_0(run_dir)
    monkeypatch.setattr(train, "train_one_epoch", real)
    resume_finishes(run_dir)


KILL_IN_SECOND_WRITE = """
import os, signal, sys
import torch
from chipbench.run import checkpoints as checkpoint
from chipbench.cli import main
from chipbench.errors import is_allocation_failure
from chipbench.run.worker import allocation_error
real_save, calls = torch.save, []
def save(obj, handle, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        handle.write(b"PK\\x03\\x04 half a zip")
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, handle, *args, **kwargs)
checkpoint.torch.save = save
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_during_checkpoint_write(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILL_IN_SECOND_WRITE, "run", "retinanet",
                           "--output", str(run_dir)] + QUICK, cwd=str(ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr
    assert (run_dir / "checkpoints" / "last.pt.tmp").exists()  # killed in the middle
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["epoch"] == 0
    progress = json.loads((run_dir / "progress.json").read_text())
    assert [e["epoch"] for e in progress["epochs"]] == [0]
    resume_finishes(run_dir)
    assert not (run_dir / "checkpoints" / "last.pt.tmp").exists()


@pytest.mark.parametrize("exc, expected", [
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                  "120000000000 bytes. Error code 12"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (MemoryError(), True),
    (RuntimeError("Expected all tensors to be on the same device"), False),
    (ValueError("out of memory"), False),
])
def test_allocation_failures_of_any_vendor_become_one_line(exc, expected):
    from chipbench.run.caseload import load_case

    assert is_allocation_failure(exc) is expected
    if expected:
        config = {"train": {"batch_size": 4}, "model": {"min_size": 100000, "max_size": 100000}}
        line = allocation_error(load_case("retinanet"), config, exc).one_line()
        assert "batches of 4 image(s) resized to 100000-100000 px" in line
        assert "model.min_size/model.max_size or train.batch_size" in line
        assert "finished epochs are kept" in line and "\n" not in line
