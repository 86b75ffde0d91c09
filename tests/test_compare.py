"""``core compare`` on hand-made run folders: ratios, fairness warnings, copies, outputs."""

import json
import shutil
from xml.etree import ElementTree

import pytest

from chipbench.cli import main
from tests.conftest import compare_result, result_folder


def run_compare(args, capsys):
    code = main(["compare"] + [str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_same_setup_gives_ratios_and_no_warning(tmp_path, capsys):
    a = result_folder(tmp_path, "a100", compare_result("A100 1 node x 8 cards (1x8)", p_core=100.0, mAP=0.36))
    c = result_folder(tmp_path, "c500", compare_result("C500 1 node x 8 cards (1x8)", p_core=150.0, mAP=0.37))
    code, out, _ = run_compare([a, c], capsys)
    assert code == 0 and "No fairness warnings" in out
    c500 = [line for line in out.splitlines() if line.startswith("C500")][0]
    assert "1.50x" in c500 and "+0.0100" in c500 and "0.67x" in c500  # p_core, mAP, e2e_time
    a100 = [line for line in out.splitlines() if line.startswith("A100")][0]
    assert "(baseline)" in a100 and "1.00x" in a100


def test_mismatched_data_sets_and_precisions_are_warned(tmp_path, capsys):
    a = result_folder(tmp_path, "full", compare_result(precision="amp"))
    b = result_folder(tmp_path, "small", compare_result(precision="fp32", train_images=6, val_images=1,
                                         batch_size=2, chipbench="0.4.0"))
    code, out, _ = run_compare([a, b, "--markdown"], capsys)
    assert code == 0 and "**WARNING: this comparison is not fair:**" in out
    assert "different data set" in out and "6 train / 1 val" in out
    assert "different precision" in out and "fp32" in out and "amp" in out
    assert "different batch size" in out and "different chipbench version" in out
    assert out.startswith("| config | precision | fix_hp |")


def test_unfinished_and_unconverged_runs_are_warned(tmp_path, capsys):
    a = result_folder(tmp_path, "ok", compare_result())
    b = result_folder(tmp_path, "died", compare_result(status="failed", converged=False))
    c = result_folder(tmp_path, "short", compare_result(mAP=0.2, converged=False))
    _, out, _ = run_compare([a, b, c], capsys)
    assert "[died] did not finish (status failed: RunFailed: rank 3 died)" in out
    assert "[short] did not converge (mAP 0.2 < target 0.35)" in out
    assert "[ok] did not" not in out


def test_copied_folder_and_baseline_choice_and_json(tmp_path, capsys):
    a = result_folder(tmp_path, "a", compare_result(p_core=100.0))
    b = result_folder(tmp_path, "b", compare_result(p_core=50.0))
    copy = tmp_path / "elsewhere" / "b-copy"
    shutil.copytree(str(b), str(copy))  # only the folder travels
    shutil.rmtree(str(b))
    code, out, _ = run_compare([a, copy, "--baseline", copy, "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["baseline"].endswith("[b-copy]")
    rows = {r["label"]: r["row"] for r in data["runs"]}
    assert rows[data["baseline"]]["p_core x"] == "1.00x"
    assert [r["row"]["p_core x"] for r in data["runs"] if r["label"].endswith("[a]")] == ["2.00x"]
    # a baseline given apart from the runs joins them, first
    code, out, _ = run_compare([a, "--baseline", copy, "--json"], capsys)
    runs = json.loads(out)["runs"]
    assert runs[0]["label"].endswith("[b-copy]") and runs[1]["label"].endswith("[a]")
    assert runs[0]["run_dir"] == str(copy)


def test_folder_without_result_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_compare([tmp_path / "empty"], capsys)
    assert code == 2 and err.startswith("error: ") and "holds no result.json" in err
    assert "Traceback" not in err


def test_charts_have_axes_values_and_every_run(tmp_path, capsys):
    a = result_folder(tmp_path, "a", compare_result("A100 1 node x 8 cards (1x8)", p_core=100.0))
    c = result_folder(tmp_path, "c", compare_result("C500 1 node x 8 cards (1x8)", p_core=150.0))
    code, _, err = run_compare([a, c, "--plots", tmp_path / "charts"], capsys)
    assert code == 0 and "compare-p_core.svg" in err
    bars = ElementTree.parse(str(tmp_path / "charts" / "compare-p_core.svg")).getroot()
    texts = [t.text for t in bars.iter("{http://www.w3.org/2000/svg}text")]
    assert any(t and "a: A100 1x8 amp" in t for t in texts)
    assert any(t and "c: C500 1x8 amp" in t for t in texts)
    assert "150" in texts and "p_core (images/s, all devices)" in texts
    curves = ElementTree.parse(str(tmp_path / "charts" / "compare-curves.svg")).getroot()
    assert len(curves.findall(".//{http://www.w3.org/2000/svg}polyline")) == 4  # loss+mAP x 2
    assert any(t.text and t.text.startswith("- - target mAP 0.35")
               for t in curves.iter("{http://www.w3.org/2000/svg}text"))


@pytest.mark.parametrize("broken", ["{", "[1, 2]"])
def test_broken_result_json_is_a_user_error(tmp_path, capsys, broken):
    path = tmp_path / "x"
    path.mkdir()
    (path / "result.json").write_text(broken)
    code, _, err = run_compare([path], capsys)
    assert code == 2 and "error: " in err


def _set(data, dotted, value):
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[part]
    if value is DROP:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value


DROP = object()
CORRUPT = [  # (id, dotted field, value, fragment of the one line)
    ("metrics-null", "metrics", None, "metrics is None, not a dict"),
    ("metrics-list", "metrics", [1, 2], "metrics is [1, 2], not a dict"),
    ("general-text", "general", "x", "general is 'x', not a dict"),
    ("general-rows", "general", {"rows": [1, 2]}, "general.rows is [1, 2]"),
    ("versions-text", "versions", "0.2.0", "versions is '0.2.0'"),
    ("label-number", "row_label", 5, "row_label is 5, not a str"),
    ("precision-number", "precision", 16, "precision is 16"),
    ("fix-hp-list", "fix_hp", ["bs=4"], "fix_hp is ['bs=4']"),
    ("topology-text", "topology", "1x8", "topology is '1x8'"),
    ("hardware-text", "hardware", "A100", "hardware is 'A100'"),
    ("mem-text", "metrics.mem_used_peak_bytes", "1G", "metrics.mem_used_peak_bytes is '1G'"),
    ("p-core-text", "metrics.p_core", "7.68", "metrics.p_core is '7.68'"),
    ("p-core-nan", "metrics.p_core", float("nan"), "metrics.p_core is nan"),
    ("p-core-inf", "metrics.p_core", float("inf"), "metrics.p_core is inf"),
    ("p-core-negative", "metrics.p_core", -1.0, "metrics.p_core is -1.0"),
    ("p-core-bool", "metrics.p_core", True, "metrics.p_core is True"),
    ("map-text", "metrics.mAP", "0.5", "metrics.mAP is '0.5'"),
    ("epochs-text", "metrics.epochs", "x", "metrics.epochs is 'x'"),
    ("converged-text", "metrics.converged", "yes", "metrics.converged is 'yes'"),
    ("epoch-list-text", "epochs", "x", "epochs is 'x'"),
    ("status-unknown", "status", "done", "status is 'done'"),
    ("target-text", "target", "0.35", "target is '0.35'"),
    ("p-core-huge-int", "metrics.p_core", 10 ** 400,
     "metrics.p_core is 1.0000e+400 (an integer of 401 digits)"),  # never cut, never 401 digits
    ("target-huge-int", "target", 10 ** 400, "target is 1.0000e+400"),
    ("metric-a-column", "target_metric", "p_core", "target_metric is 'p_core', not a metric"),
    ("no-case", "case", DROP, "is not a chipbench result"),
    ("no-metrics", "metrics", DROP, "is not a chipbench result"),
]


@pytest.mark.parametrize("field, value, fragment", [c[1:] for c in CORRUPT],
                         ids=[c[0] for c in CORRUPT])
@pytest.mark.parametrize("form", ["text", "--markdown", "--json", "--plots"])
def test_a_hand_edited_result_is_one_line_naming_the_field(tmp_path, capsys, field, value,
                                                           fragment, form):
    good = result_folder(tmp_path, "good", compare_result())
    data = compare_result()
    _set(data, field, value)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "result.json").write_text(json.dumps(data))  # NaN/Infinity as Python writes them
    extra = {"text": [], "--plots": ["--plots", tmp_path / "charts"]}.get(form, [form])
    code, out, err = run_compare([good, bad] + extra, capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert fragment in err and str(bad / "result.json") in err


def test_other_run_files_are_not_results(tmp_path, capsys):
    good = result_folder(tmp_path, "good", compare_result())
    for name, data in (("spec.json", {"case": "retinanet", "vendor": "cpu", "config": {}}),
                       ("progress.json", {"final": True, "epochs": [], "metrics": {}}),
                       ("empty.json", {})):
        (tmp_path / name).write_text(json.dumps(data))
        code, _, err = run_compare([good, tmp_path / name], capsys)
        assert code == 2 and "is not a chipbench result" in err, (name, err)
    code, _, err = run_compare([good, tmp_path / "missing"], capsys)
    assert code == 2 and "missing does not exist" in err


def test_the_same_run_twice_and_runs_of_different_cases_are_refused(tmp_path, capsys):
    a = result_folder(tmp_path, "a", compare_result())
    code, _, err = run_compare([a, tmp_path / "." / "a" / "result.json"], capsys)
    assert code == 2 and "is given twice" in err
    other = compare_result()
    other.update(case="spirals", target_metric="accuracy", sample_unit="samples")
    b = result_folder(tmp_path, "b", other)
    code, out, err = run_compare([a, b], capsys)
    assert code == 2 and out == "" and "different cases (retinanet, spirals)" in err


def test_a_case_with_another_metric_is_compared_on_it(tmp_path, capsys):
    def spirals(accuracy, lr):
        data = compare_result()
        del data["metrics"]["mAP"]
        data.update(case="spirals", target_metric="accuracy", sample_unit="samples", target=0.9,
                    fix_hp="bs=64, lr={}".format(lr))
        data["metrics"].update(accuracy=accuracy, converged=accuracy >= 0.9)
        return data

    a = result_folder(tmp_path, "a", spirals(0.95, 0.1))
    b = result_folder(tmp_path, "b", spirals(0.85, 0.2))
    code, out, _ = run_compare([a, b], capsys)
    assert code == 0
    header = [line for line in out.splitlines() if line.startswith("config")][0]
    assert "accuracy" in header and "accuracy diff" in header and "mAP" not in header
    assert "-0.1000" in out and "did not converge (accuracy 0.85 < target 0.9)" in out
    assert "different hyper-parameters (fix_hp)" in out  # lr 0.2 against 0.1
    code, out, _ = run_compare([a, b, "--json"], capsys)
    assert json.loads(out)["columns"][7] == "accuracy"


def test_json_is_strict_and_a_closed_pipe_is_quiet(tmp_path, capsys):
    data = compare_result()
    data["epochs"][0]["loss"] = float("nan")  # a real run's diverged epoch
    a = result_folder(tmp_path, "a", data)
    b = result_folder(tmp_path, "b", compare_result())
    code, out, _ = run_compare([a, b, "--json"], capsys)
    assert code == 0 and "NaN" not in out
    json.loads(out, parse_constant=lambda name: pytest.fail("non-strict JSON " + name))
    code, _, err = run_compare([a, b, "--json", "--markdown"], capsys)
    assert code == 2 and "not allowed with argument" in err
    plots_file = tmp_path / "file.svg"
    plots_file.write_text("")
    code, out, err = run_compare([a, b, "--plots", plots_file], capsys)
    assert code == 2 and out == "" and "is a file" in err


def test_a_closed_pipe_ends_compare_quietly(tmp_path):
    import subprocess
    import sys

    a = result_folder(tmp_path, "a", compare_result())
    b = result_folder(tmp_path, "b", compare_result())
    proc = subprocess.run("{} -m chipbench compare {} {} | head -c 10".format(
        sys.executable, a, b), shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, timeout=60)
    assert "error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_folders_of_one_name_are_told_apart_and_an_unevaluated_run_is_not_a_backend_change(
        tmp_path, capsys):
    (tmp_path / "m1").mkdir()
    (tmp_path / "m2").mkdir()
    a = result_folder(tmp_path / "m1", "run", compare_result())
    stopped = compare_result(status="interrupted")
    stopped["metrics"].pop("mAP")
    b = result_folder(tmp_path / "m2", "run", stopped)
    a_data = json.loads((a / "result.json").read_text())
    a_data["metrics"]["eval_backend"] = "faster_coco_eval"
    (a / "result.json").write_text(json.dumps(a_data))
    code, out, _ = run_compare([a, b], capsys)
    assert code == 0 and "[m1/run]" in out and "[m2/run]" in out
    assert "evaluation backend" not in out


def test_copies_of_one_run_are_refused(tmp_path, capsys):
    data = dict(compare_result(), run_dir="/runs/a", started_at="2026-11-30T10:00:00+0000")
    a, b = result_folder(tmp_path, "a", data), result_folder(tmp_path, "b", data)
    code, _, err = run_compare([a, b], capsys)
    assert code == 2 and "are copies of one run (both started at 2026-11-30T10:00:00+0000" in err


def test_a_converged_flag_without_the_numbers_is_warned(tmp_path, capsys):
    """converged is what the numbers say: a flag of true with the metric under the target, or no
    metric at all, is a run that did not converge."""
    low = compare_result(mAP=0.1, converged=True)
    gone = compare_result(converged=True)
    del gone["metrics"]["mAP"]
    code, out, _ = run_compare([result_folder(tmp_path, "ok", compare_result()),
                                result_folder(tmp_path, "low", low),
                                result_folder(tmp_path, "gone", gone)], capsys)
    assert code == 0
    assert "did not converge (mAP 0.1 < target 0.35)" in out
    assert "did not converge (mAP (not recorded) < target 0.35)" in out


def test_display_survives_odd_but_valid_values(tmp_path, capsys):
    odd = compare_result(label="ACX1\n1 node \x1b[31mx 8 cards", p_core=1e308)
    odd["fix_hp"] = ""
    odd["epochs"] = [{"epoch": "z", "loss": "x", "mAP": "y"}, {"epoch": 1, "loss": float("nan"),
                                                                "mAP": float("inf")}]
    plots = tmp_path / "plots"
    code, out, err = run_compare([result_folder(tmp_path, "base", compare_result()),
                                  result_folder(tmp_path, "odd", odd), "--plots", plots], capsys)
    assert code == 0, err
    assert "\x1b" not in out and "ACX1\\n1 node \\x1b[31mx 8 cards" in out  # shown escaped
    assert max(len(line) for line in out.splitlines()) < 400  # no 309-digit cells
    assert "fix_hp (none)" not in out and "has bs (default); baseline" in out
    for svg in plots.glob("*.svg"):
        text = svg.read_text()
        assert "nan" not in text and "inf" not in text.replace("info", ""), svg


def test_chart_legends_tell_folders_of_one_name_apart(tmp_path, capsys):
    runs = [result_folder(tmp_path / d, "run", compare_result(p_core=10.0 * (i + 1)))
            for i, d in enumerate(("x", "y"))
            if (tmp_path / d).mkdir() is None]
    code, _, err = run_compare(runs + ["--plots", tmp_path / "plots"], capsys)
    assert code == 0, err
    bars = (tmp_path / "plots" / "compare-p_core.svg").read_text()
    assert "x/run: " in bars and "y/run: " in bars

