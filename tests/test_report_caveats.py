"""report.md says what its figures rest on: the case's own data facts and caveats (no RetinaNet
leftovers for another case), one data note, the data wait per epoch with its warning, and versions
that name the case's packages only."""

import unicodedata

import pytest

from chipbench.errors import PluginError
from chipbench.measure.environment import CORE_PACKAGES, versions
from chipbench.outputs.report import CAVEATS_SHOWN, DATA_WAIT_SHARE
from tests.conftest import report_of, unescaped_pipes


def spirals_result(**extra):
    """A hand-made result.json of an outside case: no COCO, no evaluation backend."""
    base = {"case": "spirals", "row_label": "CPU 1 node x 1 card (1x1)", "status": "finished",
            "precision": "fp32", "target": 0.95, "target_metric": "accuracy",
            "sample_unit": "points", "dataset_note": "Data: 2000 training and 500 held-out points",
            "metrics": {"accuracy": 0.97, "eval_seconds": 0.4, "p_train": 900.0,
                        "p_core": 1000.0, "train_seconds": 3.0},
            "config": {"train": {"batch_size": 64}},
            "general": {"rows": [["数据集 dataset", "three spirals", ""]]},
            "epochs": [{"epoch": e, "loss": 1.0 / (e + 1), "accuracy": 0.9 + e / 100}
                       for e in range(3)],
            "environment": {"device_model": "AMD EPYC"}}
    base.update(extra)
    return base


def section(report, heading):
    """The non-empty lines of ``report`` under ``## heading`` up to the next heading."""
    lines = report.splitlines()
    start = lines.index("## " + heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [line for line in lines[start:end] if line]


# -- an outside case's data section ---------------------------------------------------------------


def test_outside_case_shows_its_own_facts_and_no_coco_leftovers():
    data = {"train_points": 2000, "val_points": 500, "classes": 3, "num_classes": 3,
            "noise": None, "turns": ""}
    report = report_of(spirals_result(data=data))
    rows = [line for line in section(report, "Data") if line.startswith("| ")]
    assert rows[2:] == ["| classes | 3 |", "| train_points | 2000 |", "| val_points | 500 |"]
    assert not any(line.endswith("| / |") for line in rows)  # no rows of absent facts
    assert "COCO" not in report and "evaluation backend" not in report
    assert "- evaluation time: 0.4 s over 3 evaluation(s)" in report
    assert "What these figures rest on" not in report  # no caveats recorded


def test_a_case_fact_that_differs_from_a_known_one_keeps_both_rows():
    report = report_of(spirals_result(data={"num_classes": 3, "classes": ["a", "b"]}))
    rows = section(report, "Data")
    assert '| classes | 3 |' in rows and '| classes | ["a", "b"] |' in rows


def test_a_run_with_a_backend_still_names_it():
    report = report_of(spirals_result(metrics={"eval_backend": "pycocotools", "eval_seconds": 1.0}))
    assert "- evaluation backend: pycocotools; evaluation time: 1.0 s over 3 evaluation(s)" \
        in report


def test_no_facts_at_all_is_said_once():
    for data in (None, {}, {"noise": None}, {"caveats": ["small"]}):
        report = report_of(spirals_result(data=data))
        assert section(report, "Data") == [
            "Data facts were not recorded by this run (older chipbench, or the case does not "
            "report them)."]


# -- the case's caveats -----------------------------------------------------------------------------


def test_caveats_are_shown_verbatim_near_the_top():
    caveats = ["train and val share 3 of 64 files (5 %): val figures partly score training data",
               "random initial weights (model.backbone_weights=none)"]
    report = report_of(spirals_result(data={"train_points": 2000, "caveats": caveats}))
    lines = report.splitlines()
    heading = lines.index("## What these figures rest on")
    assert heading < lines.index("## General indicators") < lines.index("## Performance indicators")
    assert ["- " + c for c in caveats] == [line for line in lines[heading:]
                                           if line.startswith("- ")][:2]
    assert "caveats" not in "\n".join(section(report, "Data"))  # not a data fact row


def test_caveats_are_escaped_and_bounded():
    forged = "crowd regions\n# forged heading | x <img src=y>\x1b[2J\u202e"
    report = report_of(spirals_result(data={"caveats": [forged, None, ""] + ["c"] * 80}))
    lines = report.splitlines()
    assert not any(line.startswith("# forged") for line in lines)
    caveat = [line for line in lines if line.startswith("- crowd regions")][0]
    assert "\\| x &lt;img" in caveat and unescaped_pipes(caveat) == 0
    assert not [ch for ch in report if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf")]
    listed = section(report, "What these figures rest on")
    assert sum(1 for line in listed if line.startswith("- ")) == CAVEATS_SHOWN + 1
    assert listed[-1] == "- ... and {} more (result.json)".format(81 - CAVEATS_SHOWN)


def test_a_single_caveat_text_is_one_caveat():
    report = report_of(spirals_result(data={"caveats": "only 2000 points"}))
    assert section(report, "What these figures rest on")[-1] == "- only 2000 points"


def test_one_data_note_only_the_cases():
    # the embedded set: the case's note counts 64 generated images, the facts 60 kept ones
    data = {"train_images": 60, "val_images": 32, "train_images_dropped": 4,
            "caveats": ["COCO layout, not the full COCO2017: 60 train / 32 val images"]}
    result = spirals_result(case="retinanet", data=data, dataset_note="Data: the embedded "
                            "synthetic set (64 train / 32 val images), not COCO2017")
    report = report_of(result)
    quotes = [line for line in report.splitlines() if line.startswith(">")]
    assert quotes == ["> " + result["dataset_note"]]
    assert report.count("COCO layout") == 1  # the case's caveat, nothing built by the report
    general = section(report, "General indicators")
    assert "| 数据集 dataset | three spirals |  |" in general


# -- the data wait ----------------------------------------------------------------------------------


def with_wait(totals, **metrics):
    """A result whose epochs hold run totals of (train s, data s), as RunMeter keeps them."""
    epochs = [{"epoch": e, "loss": 0.5, "accuracy": 0.9, "train_seconds": t, "data_seconds": d}
              for e, (t, d) in enumerate(totals)]
    final = dict(spirals_result()["metrics"], train_seconds=totals[-1][0],
                 data_seconds=totals[-1][1], **metrics)
    return spirals_result(epochs=epochs, metrics=final)


def test_per_epoch_data_wait_rows_from_run_totals():
    report = report_of(with_wait([(10.0, 0.5), (20.0, 3.5), (30.0, 6.5)]))
    rows = [line for line in section(report, "Per epoch") if line.startswith("| ")]
    assert rows[0] == ("| epoch (counted from 1) | loss | train (s) | data wait (s) | data wait "
                       "(% of train) |")
    assert rows[2:] == ["| 1 | 0.5000 | 10.00 | 0.50 | 5.0 |", "| 2 | 0.5000 | 10.00 | 3.00 | 30.0 |",
                        "| 3 | 0.5000 | 10.00 | 3.00 | 30.0 |"]
    assert {unescaped_pipes(line) for line in rows} == {6}
    assert "- data wait: training waited 6.5 s for the data loader, 21.7% of its 30.0 s" in report


def test_a_loader_that_held_the_device_back_is_warned_about():
    report = report_of(with_wait([(10.0, 0.5), (30.0, 6.5)], p_train=500.0, p_core=1000.0))
    warning = [line for line in report.splitlines() if line.startswith("> **WARNING")]
    assert warning == ["> **WARNING: the data loader held the device back: p_train is 50% of "
                       "p_core; training waited 6.5 s (22% of its 30.0 s) for data, over the 10% "
                       "threshold: give the loader more workers, or faster storage**"]
    lines = report.splitlines()
    assert lines.index(warning[0]) < lines.index("## General indicators")


def test_no_warning_at_or_below_the_threshold():
    report = report_of(with_wait([(20.0, 20.0 * DATA_WAIT_SHARE)]))
    assert "WARNING" not in report and "- data wait: training waited 2.0 s" in report


def test_an_old_run_without_data_wait_shows_none():
    report = report_of(spirals_result())
    assert "data wait" not in report and "## Per epoch" not in report and "WARNING" not in report


def test_a_forged_data_wait_breaks_nothing():
    result = with_wait([(10.0, 1.0), (5.0, 0.5)])  # totals that go backwards
    result["epochs"].append({"epoch": "x", "train_seconds": "y", "data_seconds": -1})
    report = report_of(result)
    rows = [line for line in section(report, "Per epoch") if line.startswith("| ")]
    assert rows[2:] == ["| 1 | 0.5000 | 10.00 | 1.00 | 10.0 |"]  # epoch 2 cannot be split


# -- versions name the case's packages ----------------------------------------------------------------


def test_versions_name_chipbench_python_torch_and_only_the_cases_packages():
    found = versions()
    assert list(found) == ["chipbench", "python"] + list(CORE_PACKAGES)
    assert "pycocotools" not in found and found["torch"] != "not installed"
    named = versions(("pytest", "surely-not-a-distribution-xyz"))
    assert named["pytest"] == pytest.__version__
    assert named["surely-not-a-distribution-xyz"] == "not installed"


@pytest.mark.parametrize("bad", ["pycocotools", 3, [""], [None], None])
def test_bad_case_packages_are_one_plugin_error(bad):
    with pytest.raises(PluginError) as caught:
        versions(bad)
    assert "Case.packages" in caught.value.one_line() and "\n" not in caught.value.one_line()
