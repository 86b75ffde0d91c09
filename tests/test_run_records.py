"""Typed run records: spec.json, result.json (its metrics and epochs) and progress.json, each read
and written in one place; the final memory peak; the vendor package that produced a run's
figures."""

import json
import re
from dataclasses import fields, replace
from types import SimpleNamespace

import pytest

from chipbench.errors import UserError
from chipbench.host.manager import build_host
from chipbench.run.resultrecord import (
    RESULT_KEYS,
    STATUSES,
    EpochRecord,
    JsonRecord,
    Metrics,
    RunProgress,
    RunResult,
)
from chipbench.run.runfolder import read_spec
from chipbench.run.specrecord import RunSpec
from tests.conftest import compare_result

GOOD = {"case": "retinanet", "vendor": "cpu", "config": {"train": {}}, "topology": {},
        "prepared": {"train_images": 8}, "hardware": {"label": "CPU"}, "resume": False,
        "profile": False}


def test_a_spec_round_trips():
    spec = RunSpec.from_json(GOOD, "spec.json")
    assert spec.to_json() == GOOD
    assert RunSpec.from_json(spec.to_json(), "spec.json") == spec
    older = {k: v for k, v in GOOD.items() if k != "profile"}  # written before --profile
    assert RunSpec.from_json(older, "spec.json").profile is False


@pytest.mark.parametrize("field, value", [("case", 3), ("config", []), ("topology", None),
                                          ("resume", "yes"), ("prepared", "x"),
                                          ("hardware", [1]), ("profile", 1)])
def test_a_field_of_the_wrong_type_is_one_line_naming_the_file(field, value):
    with pytest.raises(UserError, match="spec.json lacks a valid {}".format(field)):
        RunSpec.from_json(dict(GOOD, **{field: value}), "spec.json")


def test_read_spec_gives_the_record(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps(dict(GOOD, vendor=None)))
    with pytest.raises(UserError, match="lacks a valid vendor"):
        read_spec(tmp_path)
    (tmp_path / "spec.json").write_text(json.dumps(GOOD))
    assert read_spec(tmp_path).prepared == {"train_images": 8}


def test_the_vendor_package_is_named(tmp_path, monkeypatch):
    from chipbench import __version__
    from tests.conftest import write_distribution
    from tests.test_entry_points import good_vendor

    site = tmp_path / "site"
    write_distribution(site, "acme-chipbench", {"acme": "acme_vendor"},
                       {"acme_vendor": good_vendor("acme")})
    monkeypatch.syspath_prepend(str(site))
    host = build_host()
    assert host.vendor_package("cpu") == "chipbench {}".format(__version__)
    assert host.vendor_package("acme") == "acme-chipbench 1.0"


def test_result_json_records_the_vendor_package(tiny_run):
    result = json.loads((tiny_run / "result.json").read_text())
    assert result["versions"]["vendor"].startswith("chipbench ")


def test_compare_warns_on_another_plugin_version_and_another_memory_source(tmp_path, capsys):
    from chipbench.cli import main
    from tests.conftest import compare_result, result_folder

    base, other = compare_result(), compare_result(label="ACX1 other (1x8)")
    base["versions"] = dict(base.get("versions") or {}, vendor="acme-chipbench 1.0")
    other["versions"] = dict(other.get("versions") or {}, vendor="acme-chipbench 1.1")
    base["metrics"]["mem_source"] = "acme-smi"
    other["metrics"]["mem_source"] = "process RSS"
    paths = [str(result_folder(tmp_path, name, data))
             for name, data in (("base", base), ("other", other))]
    assert main(["compare"] + paths) == 0
    out = capsys.readouterr().out
    assert "different vendor plugin: " in out and "acme-chipbench 1.1" in out
    assert "different memory source (the mem column)" in out
    third = compare_result(label="BCX1 (1x8)")
    third.update(vendor="bcme", versions=dict(third.get("versions") or {}, vendor="b 2.0"))
    third["metrics"]["mem_source"] = "acme-smi"
    assert main(["compare", paths[0], str(result_folder(tmp_path, "third", third))]) == 0
    assert "different vendor plugin" not in capsys.readouterr().out  # another vendor: expected


# -- result.json, its metrics and its epochs; progress.json -----------------------------------------

GIB = 2 ** 30


def full_result():
    """A result.json as a resumed run writes it, with keys chipbench does not type (a newer
    writer's, a case's own metrics) in every record."""
    data = compare_result()
    data.update(vendor="acme", row_label_zh="ACX1 单机8卡（1x8）", config_sources=["a.yaml"],
                command="core run retinanet", started_at="2026-12-01T10:00:00+0000",
                run_dir="runs/a", pid=42, host="node1", resumed=1,
                resumes=[{"command": "core run --resume runs/a", "started_at": "later"}],
                environment={"device_model": "ACX1"}, dataset_note="", note="a note",
                finished_at="2026-12-01T11:00:00+0000", newer_field={"from": "a newer writer"})
    data["metrics"].update(data_seconds=1.5, mem="30.0/64.0", mfu=0.4, achieved_tflops=4.0,
                           peak_tflops=10.0, cpu_share={"compute_share": 0.9}, AP50=0.5,
                           monitor_failures={})
    data["epochs"][0].update(data_seconds=0.5, lr=0.01, newer_epoch_figure=[1, 2])
    return data


def test_a_result_round_trips_with_its_keys_in_their_order():
    data = full_result()
    result = RunResult.from_json(data, "result.json")
    assert result.to_json() == data
    assert list(result.to_json()) == list(data)
    assert list(result.to_json()["metrics"]) == list(data["metrics"])
    assert RunResult.from_json(result.to_json(), "result.json") == result
    assert result.metrics.data_seconds == 1.5 and result.metrics.value("AP50") == 0.5
    assert result.epochs is not None and result.epochs[0].epoch == 0
    assert result.other == {"newer_field": {"from": "a newer writer"}}
    assert result.epochs[0].other["newer_epoch_figure"] == [1, 2]


def test_metrics_epochs_and_progress_round_trip():
    figures = full_result()["metrics"]
    assert Metrics.from_json(figures, "result.json").to_json() == figures
    epoch = full_result()["epochs"][1]
    assert EpochRecord.from_json(epoch, "progress.json").to_json() == epoch
    progress = {"final": True, "epochs": full_result()["epochs"], "metrics": figures,
                "data": {"train_images": 8}, "newer": 1}
    record = RunProgress.from_json(progress, "progress.json")
    assert record.to_json() == progress and record.final is True
    assert record.metrics.p_core == figures["p_core"] and len(record.epochs) == 3


def test_an_older_result_without_the_newer_fields_loads_and_gains_none():
    old = compare_result()  # no data_seconds, pid, resumes, row_label_zh, ...
    del old["epochs"], old["error"]
    result = RunResult.from_json(old, "result.json")
    assert result.metrics.data_seconds is None and result.epochs is None
    assert result.resumed is None and result.pid is None and result.error is None
    assert result.to_json() == old


def test_values_of_another_kind_where_compare_never_looked_are_kept_not_typed():
    data = full_result()
    data.update(resumed="x", pid="42", config_sources="a.yaml", started_at=5)
    data["metrics"].update(mfu="x", mem=3, cpu_share=[0.9])
    data["epochs"][0].update(epoch="z", loss="x", p_core="fast")
    result = RunResult.from_json(data, "result.json")
    assert (result.resumed, result.pid, result.config_sources, result.started_at) == (
        None, None, None, None)
    assert (result.metrics.mfu, result.metrics.mem, result.metrics.cpu_share) == (None, None, None)
    assert result.epochs is not None and result.epochs[0].epoch is None
    assert result.epochs[0].p_core is None and result.epochs[0].value("loss") == "x"
    assert result.to_json() == data  # written back as read


@pytest.mark.parametrize("record", [RunResult, Metrics, EpochRecord, RunProgress])
def test_every_typed_field_has_its_kind(record):
    nested = {"metrics", "epochs"} if record in (RunResult, RunProgress) else set()
    assert set(record.json_fields()) - nested <= set(record.KINDS)


def test_a_new_result_writes_the_keys_of_a_run_start_even_when_null():
    result = RunResult(case="spirals", metrics=Metrics(), epochs=[])
    written = result.to_json()
    assert list(written) == list(RESULT_KEYS) and written["error"] is None
    assert written["metrics"] == {} and written["epochs"] == []
    done = replace(result, status="finished", finished_at="now", data={"train_images": 1})
    assert list(done.to_json())[-2:] == ["data", "finished_at"]


def test_a_resumed_attempt_keeps_the_first_command_and_the_earlier_figures():
    previous = RunResult.from_json(full_result(), "result.json")
    new = RunResult(case="retinanet", command="core run --resume runs/a", started_at="now",
                    metrics=Metrics(), epochs=[])
    resumed = new.continuing(previous, "core run --resume runs/a", "now")
    assert resumed.resumed == 2 and resumed.command == "core run retinanet"
    assert resumed.started_at == previous.started_at and resumed.metrics == previous.metrics
    assert resumed.resumes == previous.resumes + [{"command": "core run --resume runs/a",
                                                    "started_at": "now"}]
    assert resumed.epochs == previous.epochs and resumed.data == previous.data


def _set(data, dotted, value):
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is DROP:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value


DROP = object()
REFUSED = [  # (dotted field, bad value, fragment of the one line naming the file and the field)
    ("status", "done", "status is 'done', not one of " + ", ".join(STATUSES)),
    ("status", None, "status is None"),
    ("case", DROP, "is not a chipbench result (no case, status and metrics)"),
    ("case", 5, "is not a chipbench result"),
    ("status", DROP, "is not a chipbench result"),
    ("metrics", DROP, "is not a chipbench result"),
    ("metrics", None, "metrics is None, not a dict"),
    ("metrics", [1], "metrics is [1], not a dict"),
    ("row_label", 5, "row_label is 5, not a str"),
    ("precision", 16, "precision is 16, not a str"),
    ("fix_hp", ["bs=4"], "fix_hp is ['bs=4'], not a str"),
    ("target_metric", 1, "target_metric is 1, not a str"),
    ("sample_unit", {}, "sample_unit is {}, not a str"),
    ("error", 3, "error is 3, not a str"),
    ("general", "x", "general is 'x', not a dict"),
    ("versions", "0.2.0", "versions is '0.2.0', not a dict"),
    ("topology", "1x8", "topology is '1x8', not a dict"),
    ("hardware", "A100", "hardware is 'A100', not a dict"),
    ("config", [], "config is [], not a dict"),
    ("data", 8, "data is 8, not a dict"),
    ("epochs", "x", "epochs is 'x', not a list"),
    ("epochs", [1, 2], "epochs is [1, 2], not a list of per-epoch dicts"),
    ("target", "0.35", "target is '0.35', not a number"),
    ("target", True, "target is True, not a number"),
    ("target", float("nan"), "target is nan, not a finite number"),
    ("target", 10 ** 400, "target is 1.0000e+400 (an integer of 401 digits), not a finite"),
    ("target_metric", "p_core", "target_metric is 'p_core', not a metric of the case's own"),
    ("target_metric", "mem_source", "target_metric is 'mem_source', not a metric of the case"),
    ("metrics.p_core", "7.68", "metrics.p_core is '7.68', not a finite number >= 0"),
    ("metrics.p_core", -1.0, "metrics.p_core is -1.0, not a finite number >= 0"),
    ("metrics.p_core", float("inf"), "metrics.p_core is inf, not a finite number >= 0"),
    ("metrics.p_core", True, "metrics.p_core is True, not a finite number >= 0"),
    ("metrics.mem_used_peak_bytes", "1G", "metrics.mem_used_peak_bytes is '1G', not a finite"),
    ("metrics.e2e_time", "x", "metrics.e2e_time is 'x', not a finite number >= 0"),
    ("metrics.data_seconds", -2, "metrics.data_seconds is -2, not a finite number >= 0"),
    ("metrics.epochs", "x", "metrics.epochs is 'x', not a finite number >= 0"),
    ("metrics.mAP", "0.5", "metrics.mAP is '0.5', not a finite number"),
    ("metrics.mAP", float("nan"), "metrics.mAP is nan, not a finite number"),
    ("metrics.converged", "yes", "metrics.converged is 'yes', not true or false"),
    ("general.rows", [1, 2], "general.rows is [1, 2], not a list of [indicator, value, note]"),
]


@pytest.mark.parametrize("field, value, fragment", REFUSED,
                         ids=["{}={!r}".format(r[0], r[1])[:40] for r in REFUSED])
def test_what_compare_refused_is_one_line_naming_the_file_and_the_field(field, value, fragment):
    data = full_result()
    _set(data, field, value)
    with pytest.raises(UserError) as refused:
        RunResult.from_json(data, "/runs/a/result.json")
    line = refused.value.one_line()
    assert fragment in line and line.startswith("/runs/a/result.json") and "\n" not in line


def test_a_case_of_another_metric_has_its_metric_checked():
    data = full_result()
    data.update(target_metric="accuracy")
    data["metrics"]["accuracy"] = "high"
    with pytest.raises(UserError, match="metrics.accuracy is 'high'"):
        RunResult.from_json(data, "result.json")
    data["metrics"]["accuracy"] = 0.5
    assert RunResult.from_json(data, "result.json").metrics.value("accuracy") == 0.5


@pytest.mark.parametrize("data, fragment", [
    ([1, 2], "is not a run's progress"), ({"epochs": [], "metrics": []}, "is not a run's progress"),
    ({"epochs": [], "metrics": {"p_core": "x"}}, "metrics.p_core is 'x'"),
    ({"epochs": ["x"], "metrics": {}}, "epochs is ['x'], not a list of per-epoch dicts")])
def test_a_progress_file_a_run_cannot_have_written_is_refused(data, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)) as refused:
        RunProgress.from_json(data, "/runs/a/progress.json")
    assert "restore the progress.json" in refused.value.one_line()


def test_a_memory_sample_above_the_peak_replaces_it():
    figures = Metrics(mem_used_peak_bytes=1 * GIB, mem_total_bytes=8 * GIB, mem_source="smi")
    assert figures.with_memory_sample(None) == figures
    assert figures.with_memory_sample({"mem_used_bytes": GIB // 2}) == figures
    assert figures.with_memory_sample({"mem_used_bytes": "x"}) == figures
    higher = figures.with_memory_sample({"mem_used_bytes": 3 * GIB, "mem_total_bytes": 8 * GIB,
                                         "mem_source": "other"})
    assert higher.mem_used_peak_bytes == 3 * GIB and higher.mem_source == "smi"
    columns = higher.with_memory_columns()
    assert columns.mem == "3.0/8.0" and columns.mem_used_peak_gib == 3.0
    assert Metrics().with_memory_sample({"mem_used_bytes": GIB, "mem_total_bytes": 2 * GIB,
                                         "mem_source": "smi"}).mem_source == "smi"


def _finish_in(run_dir, progress, monitor, previous=None):
    """``Run._finish`` of a run (whose workers ended) in ``run_dir`` holding ``progress`` and the
    monitor files ``monitor`` (name -> samples); returns the result.json it writes."""
    from chipbench.run.runner import Run, RunPlan

    (run_dir / "monitor").mkdir(parents=True)
    (run_dir / "progress.json").write_text(json.dumps(progress))
    for name, samples in monitor.items():
        (run_dir / "monitor" / name).write_text("".join(json.dumps(s) + "\n" for s in samples))
    plan = RunPlan(case=SimpleNamespace(name="retinanet"),
                   host=SimpleNamespace(notify=lambda *args, **kwargs: []),
                   facade=SimpleNamespace(vendor="cpu"), hardware=None,
                   topology=SimpleNamespace(nnodes=1, node_rank=0), config={}, sources=[], run_dir=run_dir,
                   started=0.0, resuming=previous is not None, previous=previous)
    run = Run(plan)
    run.result = RunResult(status="finished", case="retinanet", metrics=Metrics(), epochs=[])
    run._finish()
    return json.loads((run_dir / "result.json").read_text())


def test_the_final_memory_peak_takes_the_samples_after_the_last_epoch(tmp_path):
    epoch = {"epoch": 0, "mem_used_peak_bytes": 1 * GIB, "mem_total_bytes": 8 * GIB,
             "mem_source": "smi", "p_core": 2.0, "mAP": 0.1}
    progress = {"final": True, "epochs": [epoch], "metrics": dict(epoch, converged=False),
                "data": {}}
    monitor = {"rank0.jsonl": [
        {"time": 1.0, "phase": "train", "mem_used_bytes": GIB // 2, "mem_total_bytes": 8 * GIB},
        {"time": 2.0, "phase": "train", "event": "epoch_end", "mem_used_bytes": 1 * GIB,
         "mem_total_bytes": 8 * GIB},
        {"time": 3.0, "phase": "checkpoint", "mem_used_bytes": 3 * GIB,  # the final checkpoint
         "mem_total_bytes": 8 * GIB}],
        "rank1.jsonl": [{"time": 3.0, "phase": "train", "mem_used_bytes": 2 * GIB,
                         "mem_total_bytes": 8 * GIB}, "not a sample"]}
    result = _finish_in(tmp_path / "run", progress, monitor)
    assert result["metrics"]["mem_used_peak_bytes"] == 3 * GIB
    assert result["metrics"]["mem"] == "3.0/8.0" and result["metrics"]["mem_used_peak_gib"] == 3.0
    assert result["epochs"] == [epoch]  # the epoch's own figure stays as it was measured
    assert result["metrics"]["p_core"] == 2.0 and result["metrics"]["e2e_time"] > 0


def test_a_lower_monitor_sample_leaves_the_peak_and_progress_is_taken_whole(tmp_path):
    metrics = {"mem_used_peak_bytes": 4 * GIB, "mem_total_bytes": 8 * GIB, "mAP": 0.2,
               "a_case_figure": "kept"}
    result = _finish_in(tmp_path / "run", {"final": True, "epochs": [], "metrics": metrics},
                        {"rank0.jsonl": [{"time": 1.0, "mem_used_bytes": 3 * GIB,
                                          "mem_total_bytes": 8 * GIB}]})
    assert result["metrics"]["mem_used_peak_bytes"] == 4 * GIB
    assert result["metrics"]["a_case_figure"] == "kept" and result["metrics"]["mem"] == "4.0/8.0"


def test_an_unreadable_progress_keeps_the_earlier_attempts_figures(tmp_path):
    previous = RunResult.from_json(full_result(), "result.json")
    result = _finish_in(tmp_path / "run", {"epochs": "cut"}, {}, previous=previous)
    assert result["epochs"] == full_result()["epochs"]
    assert result["metrics"]["p_core"] == full_result()["metrics"]["p_core"]
    assert result["metrics"]["e2e_time"] > full_result()["metrics"]["e2e_time"]  # added up


def test_the_shared_run_records_the_highest_memory_sample(tiny_run):
    from chipbench.measure.monitor import read_samples

    result = json.loads((tiny_run / "result.json").read_text())
    samples = [s for path in (tiny_run / "monitor").glob("rank*.jsonl")
               for s in read_samples(path)]
    assert result["metrics"]["mem_used_peak_bytes"] == max(s["mem_used_bytes"] for s in samples)
    assert RunResult.from_json(result, "result.json").to_json() == result


def test_records_share_one_writer():
    assert all(issubclass(r, JsonRecord) for r in (RunResult, Metrics, EpochRecord, RunProgress))
    assert not any(f.name == "KINDS" for f in fields(Metrics))


def test_a_negative_case_metric_is_a_figure_in_the_record_as_in_the_case_check():
    """One rule for the case's metric: a finite number of either sign, where the run checks what
    run() returned and where compare and --resume read result.json."""
    from chipbench.run.resultrecord import bad_figure

    data = full_result()
    data["metrics"]["mAP"] = -0.25
    assert RunResult.from_json(data, "/runs/a/result.json").metrics.to_json()["mAP"] == -0.25
    assert bad_figure({"mAP": -0.25}, "mAP") is None
    assert bad_figure({"images": -1}, "mAP")[0] == "images"


def test_a_case_s_final_figure_of_another_kind_is_refused_naming_the_case():
    """A figure of chipbench's that the case returns as another kind would break the report
    later (a text where a number is divided): the worker refuses it in one line naming the case."""
    from chipbench.errors import PluginError
    from chipbench.run.worker import final_metrics

    case = SimpleNamespace(name="flawed")
    with pytest.raises(PluginError, match="case 'flawed' run\\(\\): metrics.flops_per_image is "
                                          "'abc'"):
        final_metrics(case, {"images": 4, "flops_per_image": "abc"})
    assert final_metrics(case, {"images": 4, "flops_per_image": 1e9}).flops_per_image == 1e9


def test_a_resumed_run_keeps_the_earlier_attempt_s_profile(tmp_path):
    """The meter of a resumed run still counts the profiled iterations: the profile (and so the
    warning that the throughput is not comparable) stays in result.json."""
    from chipbench.run.runner import Run

    profile = {"iterations": [4, 6], "top_ops": []}
    previous = RunResult.from_json(dict(full_result(), profile=profile), "result.json")
    run = Run.__new__(Run)
    run.plan = SimpleNamespace(profile=False)
    run.topology = SimpleNamespace(node_rank=0)
    run.previous, run.run_dir = previous, tmp_path
    assert run._profile().to_json() == profile
    run.previous = RunResult.from_json(full_result(), "result.json")
    assert run._profile() is None
    run.topology = SimpleNamespace(node_rank=1)
    run.plan = SimpleNamespace(profile=True)
    assert run._profile() is None  # the rank-0 node's folder has it
