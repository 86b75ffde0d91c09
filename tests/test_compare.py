"""``core compare`` on hand-made run folders: ratios, fairness warnings, copies, outputs."""

import json
import shutil
from xml.etree import ElementTree

import pytest

from chipbench.cli import main


def result(label="ACX1 1 node x 8 cards (1x8)", precision="amp", p_core=100.0, mAP=0.36,
           status="finished", train_images=118287, val_images=5000, batch_size=16,
           chipbench="0.3.0", converged=True, epochs=3):
    return {
        "status": status, "error": None if status == "finished" else "RunFailed: rank 3 died",
        "case": "retinanet", "vendor": "acme", "row_label": label, "precision": precision,
        "target": 0.35, "fix_hp": "bs={}".format(batch_size),
        "hardware": {"label": label.split()[0]}, "topology": {"nnodes": 1, "nproc_per_node": 8},
        "config": {"data": {"dir": "/data/coco"}, "train": {"batch_size": batch_size},
                   "model": {"backbone_weights": "imagenet", "min_size": 800, "max_size": 1333},
                   "eval": {"backend": "pycocotools"}},
        "general": {"rows": [["数据集 dataset", "COCO2017", ""]]},
        "data": {"train_images": train_images, "val_images": val_images},
        "versions": {"chipbench": chipbench},
        "metrics": {"p_whole": p_core * 0.8, "p_train": p_core * 0.9, "p_core": p_core,
                    "e2e_time": 3600.0 * 100 / p_core, "mAP": mAP, "converged": converged,
                    "epochs": epochs, "mem_used_peak_bytes": 30 * 2**30,
                    "mem_total_bytes": 64 * 2**30},
        "epochs": [{"epoch": e, "loss": 1.0 / (e + 1), "mAP": mAP * (e + 1) / epochs}
                   for e in range(epochs)],
    }


def folder(tmp_path, name, data):
    path = tmp_path / name
    path.mkdir()
    (path / "result.json").write_text(json.dumps(data))
    return path


def run_compare(args, capsys):
    code = main(["compare"] + [str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_same_setup_gives_ratios_and_no_warning(tmp_path, capsys):
    a = folder(tmp_path, "a100", result("A100 1 node x 8 cards (1x8)", p_core=100.0, mAP=0.36))
    c = folder(tmp_path, "c500", result("C500 1 node x 8 cards (1x8)", p_core=150.0, mAP=0.37))
    code, out, _ = run_compare([a, c], capsys)
    assert code == 0 and "No fairness warnings" in out
    c500 = [line for line in out.splitlines() if line.startswith("C500")][0]
    assert "1.50x" in c500 and "+0.0100" in c500 and "0.67x" in c500  # p_core, mAP, e2e_time
    a100 = [line for line in out.splitlines() if line.startswith("A100")][0]
    assert "(baseline)" in a100 and "1.00x" in a100


def test_mismatched_data_sets_and_precisions_are_warned(tmp_path, capsys):
    a = folder(tmp_path, "full", result(precision="amp"))
    b = folder(tmp_path, "small", result(precision="fp32", train_images=6, val_images=1,
                                         batch_size=2, chipbench="0.4.0"))
    code, out, _ = run_compare([a, b, "--markdown"], capsys)
    assert code == 0 and "**WARNING: this comparison is not fair:**" in out
    assert "different data set" in out and "6 train / 1 val" in out
    assert "different precision" in out and "fp32" in out and "amp" in out
    assert "different batch size" in out and "different chipbench version" in out
    assert out.startswith("| config | precision | fix_hp |")


def test_unfinished_and_unconverged_runs_are_warned(tmp_path, capsys):
    a = folder(tmp_path, "ok", result())
    b = folder(tmp_path, "died", result(status="failed", converged=False))
    c = folder(tmp_path, "short", result(mAP=0.2, converged=False))
    _, out, _ = run_compare([a, b, c], capsys)
    assert "[died] did not finish (status failed: RunFailed: rank 3 died)" in out
    assert "[short] did not converge (mAP 0.2 < target 0.35)" in out
    assert "[ok] did not" not in out


def test_copied_folder_and_baseline_choice_and_json(tmp_path, capsys):
    a = folder(tmp_path, "a", result(p_core=100.0))
    b = folder(tmp_path, "b", result(p_core=50.0))
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
    a = folder(tmp_path, "a", result("A100 1 node x 8 cards (1x8)", p_core=100.0))
    c = folder(tmp_path, "c", result("C500 1 node x 8 cards (1x8)", p_core=150.0))
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
