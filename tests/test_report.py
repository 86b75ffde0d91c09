"""report.md hides nothing: data facts, every changed setting, no copied mAP, how figures were taken."""

import json

from chipbench.cli import main
from chipbench.flops import flop_counter_available
from chipbench.report import data_note, render

SMALL_DATA = {"train_images": 6, "val_images": 1, "train_annotations": 14, "val_annotations": 2,
              "train_images_dropped": 1, "boxes_dropped": 3, "num_classes": 4, "min_size": 128,
              "max_size": 128}


def result_with(**extra):
    base = {"case": "retinanet", "row_label": "CPU 1 node x 1 card (1x1)", "status": "finished",
            "precision": "fp32", "metrics": {"eval_seconds": 2.5, "mAP": 0.1},
            "config": {"eval": {"backend": "faster_coco_eval"},
                       "train": {"throughput_skip_iters": 5}},
            "general": {"rows": [["数据集 dataset", "COCO2017", ""]]},
            "environment": {"device_model": "AMD EPYC 7B13"}}
    base.update(extra)
    return base


def test_small_coco_layout_set_is_named_with_its_counts():
    report = render(result_with(data=SMALL_DATA))
    assert "COCO layout, not the full COCO2017" in report
    assert "| train images | 6 |" in report and "| boxes dropped (invalid) | 3 |" in report
    assert "| train images dropped (no annotations) | 1 |" in report
    assert "| classes | 4 |" in report and "| input min_size (px) | 128 |" in report
    dataset_row = [line for line in report.splitlines() if "dataset" in line][0]
    assert "6 train / 1 val" in dataset_row


def test_full_coco_counts_carry_no_note_and_absent_facts_are_said():
    assert data_note(dict(SMALL_DATA, train_images=118287, val_images=5000)) == ""
    report = render(result_with())
    assert "Data facts were not recorded" in report and "COCO layout" not in report


def test_environment_names_eval_backend_time_and_warmup():
    report = render(result_with(data=SMALL_DATA))
    assert "evaluation backend: faster_coco_eval; evaluation time: 2.5 s" in report
    assert "warm-up iterations left out of p_whole/p_train/p_core: 5" in report
    assert "device_model: AMD EPYC 7B13" in report


def test_run_without_eval_epoch_and_changed_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CHIPBENCH_CPU_PEAK_GEMM_S", "0.05")
    out = tmp_path / "run"
    code = main(["run", "retinanet", "--vendor", "cpu", "--output", str(out),
                 "--set", "data.synthetic.train_images=4", "--set", "data.synthetic.val_images=2",
                 "--set", "data.synthetic.image_size=64", "--set", "train.epochs=2",
                 "--set", "eval.every=2", "--set", "train.max_iters=2",
                 "--set", "data.num_workers=0", "--set", "target.mAP=0.9"])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    first, second = result["epochs"]
    assert "mAP" not in first and "mAP" in second  # epoch 0 was not evaluated
    for part in ("bs=4", "epochs=2", "model.min_size=128", "model.max_size=128",
                 "model.backbone_weights=none", "train.max_iters=2", "target.mAP=0.9",
                 "eval.every=2"):
        assert part in result["fix_hp"], part
    assert "data.synthetic" not in result["fix_hp"] and "run." not in result["fix_hp"]
    assert result["environment"]["device_model"] not in ("x86_64", "aarch64", "")
    report = (out / "report.md").read_text()
    assert "evaluation backend: pycocotools" in report and "over 1 evaluation(s)" in report
    metrics = result["metrics"]
    if flop_counter_available():
        assert metrics["flops_per_image"] > 1e6 and metrics["achieved_tflops"] > 0
        assert 0 < metrics["mfu"] and "MFU: " in report and "GFLOP" in report
    else:
        assert metrics["flops_per_image"] is None and "FLOPs per image (training step): n/a" in report
