"""Charts say what they show: the memory source the run recorded, each compared run's own phases,
a label for every legend entry, and the data wait per epoch."""

import json
from xml.etree import ElementTree

import pytest

from chipbench.cli import main
from chipbench.outputs.plots import LEFT, RIGHT, WIDTH, epochs_chart, memory_chart, timeline_chart
from chipbench.run.resultrecord import epochs_from_json
from tests.conftest import compare_result, result_folder

SVG = "{http://www.w3.org/2000/svg}"


def texts_of(svg):
    """The root and every drawn text with its class and x position."""
    root = ElementTree.fromstring(svg)
    return root, [(t.get("class"), t.text or "", float(t.get("x"))) for t in root.iter(SVG + "text")]


def samples(source, phases=("train",) * 5, start=100.0):
    return [{"time": start + 2 * i, "phase": phase, "mem_used_bytes": (1 + i) * 2**30,
             "mem_total_bytes": 64 * 2**30, "mem_source": source, "util_percent": 50.0}
            for i, phase in enumerate(phases)]


@pytest.mark.parametrize("source, axis, total", [
    ("cudaMemGetInfo", "device-wide memory used", "device total"),
    ("psutil (process RSS / machine total)", "process resident memory, RSS", "machine total"),
    ("psutil (process RSS / cgroup memory limit)", "process resident memory, RSS",
     "cgroup memory limit"),
    ("", "memory used", "total")])
def test_memory_chart_names_the_recorded_source(source, axis, total):
    _, texts = texts_of(memory_chart([("rank0", samples(source))]))
    labels = [t for _, t, _ in texts]
    assert labels[0] == "memory used, source: {}".format(source or "not recorded")
    assert axis + " (GiB)" in labels and "- - {} 64.0 GiB".format(total) in labels
    if "RSS" in source:
        assert not any("device" in t for t in labels)  # a process's memory is not the device's
    _, timeline = texts_of(timeline_chart([("rank0", samples(source))], "timeline"))
    assert axis + " (GiB)" in [t for _, t, _ in timeline]


def test_ranks_with_different_sources_name_both():
    _, texts = texts_of(memory_chart([("rank0", samples("amdsmi")),
                                      ("rank1", samples("hipMemGetInfo"))]))
    assert texts[0][1] == "memory used, source: amdsmi; hipMemGetInfo"


def band_rects(root):
    """``{tooltip: x}`` of the shaded phase rectangles."""
    found = {}
    for rect in root.iter(SVG + "rect"):
        title = rect.find(SVG + "title")
        if title is not None and rect.get("opacity") == "0.45":
            found[title.text] = float(rect.get("x"))
    return found


def test_one_run_timeline_shades_its_phases_in_every_panel():
    root, texts = texts_of(timeline_chart([("rank0", samples("x", ("train", "eval", "train")))],
                                          "timeline"))
    assert "phases of each run" not in [t for _, t, _ in texts]
    assert set(band_rects(root)) == {"eval"}


def test_compare_timeline_gives_each_run_its_own_phases(tmp_path, capsys):
    runs = []
    for name, phases in (("a", ("train", "train", "eval", "eval", "train")),
                         ("b", ("checkpoint", "train", "train", "train", "train"))):
        folder = result_folder(tmp_path, name, compare_result("ACX1 run " + name))
        (folder / "monitor").mkdir()
        (folder / "monitor" / "rank0.jsonl").write_text("".join(
            json.dumps(s) + "\n" for s in samples("cudaMemGetInfo", phases, start=50.0 * len(name))))
        runs.append(folder)
    assert main(["compare", "--plots", str(tmp_path / "charts")] + [str(r) for r in runs]) == 0
    capsys.readouterr()
    root, texts = texts_of((tmp_path / "charts" / "compare-timeline.svg").read_text())
    labels = [t for _, t, _ in texts]
    assert "phases of each run" in labels
    assert [t for c, t, _ in texts if c == "lane"] == ["run 1", "run 2"]  # one lane per run
    named = [t for t in labels if t.startswith("run ") and ": " in t]  # the legend names them
    assert len(named) == 2 and named[0].startswith("run 1: a") and named[1].startswith("run 2: b")
    bands = band_rects(root)  # each run's phases in its own lane, nothing shaded elsewhere
    names = [t[len("run 1: "):] for t in named]
    assert set(bands) == {names[0] + ": eval", names[1] + ": checkpoint"}
    assert bands[names[1] + ": checkpoint"] == LEFT and bands[names[0] + ": eval"] > LEFT
    assert "phase: eval" in labels and "phase: checkpoint" in labels
    legend = [t for _, t, x in texts if x > WIDTH - RIGHT]
    assert legend and all(t.strip() for t in legend)  # every legend entry says what it is


def epochs(data=True):
    rows = [dict({"epoch": e, "loss": 1.0 / (e + 1), "mAP": 0.1 * e, "train_seconds": 10.0 * (e + 1)},
                 **({"data_seconds": 2.0 * (e + 1)} if data else {})) for e in range(3)]
    return epochs_from_json(rows, "result.json")


def test_epochs_chart_shows_each_epochs_data_wait():
    root, texts = texts_of(epochs_chart([("run A", epochs()), ("run B", epochs(False))], 0.35))
    labels = [t for _, t, _ in texts]
    assert "time per epoch (s)" in labels
    assert "run A: train" in labels and "run A: data wait" in labels
    assert "run B: data wait" not in labels  # an old run: nothing to show
    lines = root.findall(".//" + SVG + "polyline")
    assert len(lines) == 2 * 2 + 2
    wait = [p for p in lines if p.find(SVG + "title").text == "run A: data wait"][0]
    assert wait.get("stroke-dasharray") and wait.get("points").count(",") == 3


def test_epochs_chart_of_old_runs_has_no_time_panel():
    root, texts = texts_of(epochs_chart([("run A", epochs(False))], 0.35))
    assert "time per epoch (s)" not in [t for _, t, _ in texts]
    assert len(root.findall(".//" + SVG + "polyline")) == 2
