"""A tiny real run through the CLI (the session's shared ``tiny_run``) and what its folder holds;
other vendors and precisions on the same tiny data, one iteration each."""

import json

import pytest

from chipbench.cli import main
from tests.conftest import TINY_DATA, TINY_RUN_ITERS, tiny


def test_result_json(tiny_run):
    result = json.loads((tiny_run / "result.json").read_text())
    assert result["status"] == "finished" and result["error"] is None
    assert result["case"] == "retinanet" and result["vendor"] == "cpu"
    assert result["row_label"] == "CPU 1 node x 1 card (1x1)"
    assert result["row_label_zh"] == "CPU 单机1卡（1x1）"
    assert result["precision"] == "fp32" and "bs=4" in result["fix_hp"]
    metrics = result["metrics"]
    assert metrics["iterations"] == TINY_RUN_ITERS  # train.max_iters, within one epoch
    assert metrics["images"] == 4 * TINY_RUN_ITERS  # full batches of 4
    for key in ("p_whole", "p_train", "p_core"):
        assert metrics[key] > 0
    assert metrics["p_whole"] < metrics["p_train"] <= metrics["p_core"] * 1.05
    assert metrics["e2e_time"] > metrics["train_seconds"] + metrics["eval_seconds"]
    assert 0.0 <= metrics["mAP"] <= 1.0 and metrics["converged"] is False
    assert 0 < metrics["mem_used_peak_bytes"] <= metrics["mem_total_bytes"]
    assert metrics["mem"].count("/") == 1 and metrics["allocator_peak_bytes"] > 0
    assert len(result["epochs"]) == 1 and result["epochs"][0]["epoch"] == 0
    assert result["config"]["model"]["backbone_weights"] == "none"
    assert any(s.endswith("embedded.yaml") for s in result["config_sources"])
    assert any(s.endswith("CPUx1x1.yaml") for s in result["config_sources"])
    assert result["environment"]["framework"].startswith("torch ")
    assert result["versions"]["chipbench"] and "synthetic" in result["dataset_note"]
    assert result["versions"]["case"] == "chipbench " + result["versions"]["chipbench"]


def test_report_md_has_seed_tables(tiny_run):
    report = (tiny_run / "report.md").read_text()
    assert "## General indicators" in report and "## Performance indicators" in report
    assert "| config | precision | fix_hp | e2e_time | p_whole | p_train | p_core | mAP | mem |" in report
    assert "CPU 1 node x 1 card (1x1)" in report and "任务类别" in report
    assert "## Hardware and software" in report and "not COCO2017" in report


def test_run_folder_contents(tiny_run):
    assert (tiny_run / "checkpoints" / "last.pt").is_file()
    assert (tiny_run / "logs" / "rank0.log").read_text().count("epoch 0 done") == 1
    samples = [json.loads(line) for line in
               (tiny_run / "monitor" / "rank0.jsonl").read_text().splitlines()]
    assert len(samples) >= 2 and all("mem_used_bytes" in s for s in samples)
    spec = json.loads((tiny_run / "spec.json").read_text())
    assert spec["vendor"] == "cpu" and spec["prepared"]["synthetic"] is True


def test_example_plugin_runs_the_case(tmp_path):
    from chipbench.host.manager import build_host

    if build_host().record("fakechip") is None:
        pytest.skip("examples/fakechip is not installed (tox installs it)")
    out = tmp_path / "fake"
    assert main(["run", "retinanet", "--vendor", "fakechip", "--output", str(out)] + tiny(1)) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["vendor"] == "fakechip" and result["row_label"].startswith("FAKEF1 ")
    assert result["metrics"]["mem"].endswith("/16.0")
    assert result["environment"]["device_model"] == "FakeChip F1"


def test_non_finite_loss_stops_with_clear_error_and_keeps_data(tmp_path, capsys):
    out = tmp_path / "diverge"
    code = main(["run", "retinanet", "--vendor", "cpu", "--output", str(out),
                 "--set", "train.lr=1e8", "--set", "train.clip_grad_norm=0",
                 "--set", "train.warmup_iters=0"] + tiny(12))
    err = capsys.readouterr().err
    assert code == 2 and "training loss became" in err and "Traceback" not in err
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and "training loss became" in result["error"]
    assert (out / "logs" / "rank0.log").is_file()


def test_bf16_on_cpu(tmp_path):
    """The bf16 path end to end on the tiny data, one iteration (a CPU without bf16 units emulates
    it slowly: full-size bf16 belongs in benchmarks/, not here). Where this torch has no bf16
    convolution for this CPU the vendor does not offer bf16: the test below covers the refusal."""
    from chipbench.plugins import cpu

    if cpu.bf16_kernel_error() is not None:
        pytest.skip("bf16 is not offered here: " + cpu.bf16_unsupported())
    out = tmp_path / "bf16"
    assert main(["run", "retinanet", "--vendor", "cpu", "--precision", "bf16", "--output",
                 str(out)] + tiny(1)) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["precision"] == "bf16" and result["config"]["train"]["precision"] == "bf16"
    assert result["metrics"]["images"] == 4 and result["metrics"]["iterations"] == 1


ONE_IMAGE = ("--set", "train.batch_size=1", "--set", "eval.batch_size=1",
             "--set", "data.synthetic.val_images=1", "--set", "run.checkpoint=false")
"""One image trained and one evaluated: bf16 without AVX-512 runs at ~0.5 image/s here."""


def test_bf16_on_a_cpu_without_avx512_runs_or_is_refused_in_one_line(tmp_path):
    """With oneDNN capped to AVX2 (a CPU without AVX-512), bf16 either trains or is refused before
    the run with one line and exit 2: torch 2.0 has no bf16 convolution there, and it once
    failed as an internal error in the first forward."""
    import os
    import subprocess
    import sys

    out = tmp_path / "bf16"
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    proc = subprocess.run(
        [sys.executable, "-m", "chipbench", "run", "retinanet", "--vendor", "cpu", "--precision",
         "bf16", "--output", str(out)] + tiny(1, *ONE_IMAGE), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, timeout=300)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    if proc.returncode == 2:
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: precision bf16 is not supported") and "fp32" in last
        assert not out.exists()
    else:
        assert proc.returncode == 0, proc.stderr
        assert json.loads((out / "result.json").read_text())["precision"] == "bf16"


def test_progress_bar_line():
    from chipbench.cases.retinanet.engine import progress_bar

    line = progress_bar(3, 8, 16, 0.81234, 11.24)
    assert line == "epoch 3 [##########..........] 8/16 loss 0.8123 11.2 img/s"


def test_plots_are_valid_svg(tiny_run):
    from xml.etree import ElementTree

    for name in ("epochs.svg", "memory.svg"):
        root = ElementTree.parse(str(tiny_run / "plots" / name)).getroot()
        assert root.tag.endswith("svg") and len(root.findall("{*}polyline")) >= 1
    assert "![epochs](plots/epochs.svg)" in (tiny_run / "report.md").read_text()


def test_evaluating_does_not_change_what_training_does(tmp_path):
    """Two runs that differ only in when they evaluate train the same: evaluation draws nothing
    from the random stream that training's flips and loader seeds come from (it did: a pass over
    the evaluation loader drew its base seed from the global RNG, and the embedded recipe needed
    an eleventh epoch when two of its evaluations were left out)."""
    args = ["run", "retinanet", "--vendor", "cpu", "--set", "train.epochs=3", *TINY_DATA,
            "--set", "data.synthetic.train_images=4", "--set", "data.synthetic.val_images=2",
            "--set", "train.batch_size=2", "--set", "eval.batch_size=2",
            "--set", "train.deterministic=true", "--set", "target.mAP=1.0",
            "--set", "run.checkpoint=false"]
    losses = {}
    for first in (1, 3):
        out = tmp_path / "eval-from-{}".format(first)
        assert main(args + ["--set", "eval.first_epoch={}".format(first),
                            "--output", str(out)]) == 0
        epochs = json.loads((out / "result.json").read_text())["epochs"]
        assert sum("mAP" in e for e in epochs) == (3 if first == 1 else 1)
        losses[first] = [e["loss"] for e in epochs]
    assert losses[1] == losses[3]
