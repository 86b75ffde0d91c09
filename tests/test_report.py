"""report.md hides nothing: data facts, every changed setting, no copied mAP, how figures were taken."""

import json

from chipbench.cli import main
from chipbench.measure.flops import flop_counter_available
from tests.conftest import report_of

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


SMALL_SET_CAVEAT = "COCO layout, not the full COCO2017: 6 train / 1 val images"


def test_small_coco_layout_set_is_named_with_its_counts():
    # the case states the caveat (data.caveats); the report shows it and the facts as recorded
    report = report_of(result_with(data=dict(SMALL_DATA, caveats=[SMALL_SET_CAVEAT])))
    assert "- " + SMALL_SET_CAVEAT in report and report.count("COCO layout") == 1
    assert "| train images | 6 |" in report and "| boxes dropped (invalid) | 3 |" in report
    assert "| train images dropped (no annotations) | 1 |" in report
    assert "| classes | 4 |" in report and "| input min_size (px) | 128 |" in report
    dataset_row = [line for line in report.splitlines() if "dataset" in line][0]
    assert dataset_row == "| 数据集 dataset | COCO2017 |  |"  # the case's row, nothing added


def test_full_coco_counts_carry_no_note_and_absent_facts_are_said():
    full = report_of(result_with(data=dict(SMALL_DATA, train_images=118287, val_images=5000)))
    assert "COCO layout" not in full and "What these figures rest on" not in full
    report = report_of(result_with())
    assert "Data facts were not recorded" in report and "COCO layout" not in report


def test_environment_names_eval_backend_time_and_warmup():
    report = report_of(result_with(data=SMALL_DATA))
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
    from chipbench.cases.retinanet.evaluate import resolve_backend

    backend = resolve_backend("auto")  # eval.backend auto, resolved to what is installed
    assert result["metrics"]["eval_backend"] == backend
    assert "evaluation backend: {};".format(backend) in report and "over 1 evaluation(s)" in report
    metrics = result["metrics"]
    if flop_counter_available():
        assert metrics["flops_per_image"] > 1e6 and metrics["achieved_tflops"] > 0
        assert "MFU: " in report and "GFLOP" in report
        # an MFU; or none where the machine was too busy to measure the peak, or where the peak
        # measured below the achieved rate (a busy machine again): each says so
        if metrics["mfu"] is not None:
            assert 0 < metrics["mfu"] <= 1
        else:
            assert "busy" in (metrics.get("peak_note") or "") or metrics.get("mfu_flag")
    else:
        assert metrics["flops_per_image"] is None and "FLOPs per image (training step): n/a" in report


def _svg(text):
    from xml.etree import ElementTree

    root = ElementTree.fromstring(text)
    texts = [(t.get("class"), t.text or "", float(t.get("x"))) for t in
             root.iter("{http://www.w3.org/2000/svg}text")]
    return root, texts


def _ticks(texts, kind):
    return [float(t[:-1]) * 1000 if t.endswith("k") else float(t)
            for cls, t, _ in texts if cls == kind]


def test_epoch_chart_has_ticks_units_target_and_legend_off_the_data():
    from chipbench.outputs.plots import RIGHT, WIDTH, epochs_chart
    from chipbench.run.resultrecord import epochs_from_json

    epochs = epochs_from_json([{"epoch": 0, "loss": 2.0}, {"epoch": 1, "loss": 1.2, "mAP": 0.2},
                               {"epoch": 2, "loss": 0.9, "mAP": 0.31}], "result.json")
    root, texts = _svg(epochs_chart([("run A", epochs)], target=0.35))
    y_ticks, x_ticks = _ticks(texts, "ytick"), _ticks(texts, "xtick")
    assert 0.0 in y_ticks and max(y_ticks) >= 2.0  # loss axis reaches the data
    assert all(t == int(t) for t in x_ticks) and {1.0, 3.0} <= set(x_ticks)  # whole epochs
    labels = [t for _, t, _ in texts]
    assert "training loss (mean of the epoch)" in labels and "epoch (counted from 1)" in labels
    assert "mAP (COCO bbox AP@[.50:.95])" in labels and "- - target mAP 0.35" in labels
    legend = [x for _, t, x in texts if t == "run A"]
    assert legend and all(x > WIDTH - RIGHT for x in legend)  # right of the plot area
    assert root.findall(".//{http://www.w3.org/2000/svg}polyline")[1].get("points").count(",") == 2


def test_memory_axis_runs_from_zero_to_the_device_total():
    from chipbench.outputs.plots import memory_chart

    samples = [{"time": 100.0 + i, "mem_used_bytes": (10 + i) * 2**30,
                "mem_total_bytes": 64 * 2**30, "mem_source": "cudaMemGetInfo"} for i in range(5)]
    _, texts = _svg(memory_chart([("rank0", samples)]))
    y_ticks = _ticks(texts, "ytick")
    assert min(y_ticks) == 0.0 and max(y_ticks) >= 64.0
    assert any(t.startswith("- - device total 64.0 GiB") for _, t, _ in texts)
    assert "device-wide memory used (GiB)" in [t for _, t, _ in texts]


def test_timeline_shades_phases_and_labels_units():
    from chipbench.outputs.plots import phase_bands, timeline_chart

    phases = ["setup", "train", "train", "eval", "eval", "train", "checkpoint", "train"]
    samples = [{"time": 10.0 + 2 * i, "phase": p, "util_percent": 50.0 + i,
                "host_cpu_percent": 20.0, "power_w": 300.0} for i, p in enumerate(phases)]
    bands = phase_bands(samples, 10.0)
    assert [(b[2], b[0], b[1]) for b in bands] == [("setup", 0.0, 2.0), ("eval", 6.0, 10.0),
                                                   ("checkpoint", 12.0, 14.0)]
    root, texts = _svg(timeline_chart([("rank0", samples)], "timeline"))
    labels = [t for _, t, _ in texts]
    assert "device util (%)" in labels and "device power (W)" in labels
    assert "phase: eval" in labels and "time since start (s)" in labels
    assert max(_ticks(texts, "ytick")) >= 300.0
    assert len(root.findall(".//{http://www.w3.org/2000/svg}rect")) > 6


def test_nice_ticks_cover_the_range():
    from chipbench.outputs.plots import nice_ticks, tick_text

    ticks = nice_ticks(0.0, 0.37)
    assert ticks[0] == 0.0 and ticks[-1] >= 0.37 and len(ticks) <= 8
    assert tick_text(12500.0) == "12.5k" and tick_text(0.25) == "0.25"


def test_a_result_that_cannot_be_read_gets_a_report_saying_why(tmp_path):
    from chipbench.outputs.report import on_run_end

    forged = dict(result_with(), status="done\n# forged heading | x <img>")  # no status of a run
    on_run_end(run={"run_dir": str(tmp_path)}, result=forged)
    report = (tmp_path / "report.md").read_text()
    lines = [line for line in report.splitlines() if line]
    assert len(lines) == 2 and "could not be read" in lines[1]
    assert "{}: status is".format(tmp_path / "result.json") in lines[1]
    assert "\\| x &lt;img" in lines[1] and not any(line.startswith("# forged") for line in lines)
    assert not (tmp_path / "plots").exists()  # nothing drawn from a result that was refused
    on_run_end(run={"run_dir": str(tmp_path)}, result={"status": "finished"})  # no case, no metrics
    assert "is not a chipbench result" in (tmp_path / "report.md").read_text()
