"""Text read from run folders and plugin answers is untrusted: it reaches no terminal as control
characters, adds no line, row or column, breaks no SVG, and long values are cut saying how much
while numbers stay whole."""

import json
import re
import shutil
import types
import unicodedata
from xml.etree import ElementTree

import pytest

import chipbench.plugins.cpu as cpu_plugin
from chipbench.cli import main
from chipbench.errors import UserError, user_os_error
from chipbench.hookspecs import DEVICE_HOOKS, hookimpl
from chipbench.records import HardwareId, MemoryInfo, VendorInfo
from chipbench.util.text import markdown_cell, number_text, shorten, shown, terminal, xml_text
from tests.conftest import compare_result, report_of, result_folder, unescaped_pipes

UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
FORGED_LINE = "No fairness warnings: every run finished and converged."
# one of each kind: ESC (colour, clear screen), OSC (set the title, ended by BEL), CR, TAB, DEL,
# C1 CSI, line and paragraph separators, a bidi override and isolate, zero-width space, BOM and a
# lone surrogate (which cannot even be encoded)
NASTY = "\x1b[31m\x1b[2J\x1b]0;owned\x07\r\t\x7f\x9b1m\u2028\u2029\u202e\u2066\u200b\ufeff\ud800"


def unsafe(text):
    """Every character of ``text`` that could control a terminal or start a line, but the line
    breaks between its lines."""
    return sorted({ch for ch in text if ch != "\n"
                   and unicodedata.category(ch) in UNSAFE_CATEGORIES})


# -- the one definition ---------------------------------------------------------------------------


def test_terminal_escapes_every_control_format_and_separator_character():
    shown_line = terminal("a" + NASTY + "\nb")
    assert unsafe(shown_line) == [] and "\n" not in shown_line
    for escaped in ("\\x1b[31m", "\\x07", "\\r", "\\t", "\\x7f", "\\x9b", "\\u2028", "\\u2029",
                    "\\u202e", "\\u2066", "\\u200b", "\\ufeff", "\\ud800", "\\n"):
        assert escaped in shown_line, escaped
    assert terminal(shown_line) == shown_line  # escaping twice changes nothing
    assert terminal("ACX1 1 node x 8 cards, 数据集 °C é") == "ACX1 1 node x 8 cards, 数据集 °C é"
    shown_line.encode("utf-8")  # a lone surrogate would raise here


def test_markdown_cell_keeps_one_cell_and_one_row():
    cell = markdown_cell("a|b\nc\\|d <img src=x>" + NASTY)
    assert unsafe(cell) == [] and "\n" not in cell and "<img" not in cell
    assert unescaped_pipes("| " + cell + " |") == 2  # only the two it is put between
    assert markdown_cell("C:\\data\\coco") == "C:\\\\data\\\\coco"  # renders as C:\data\coco


def test_xml_text_parses_and_holds_no_control_character():
    label = xml_text("<b>&'\"" + NASTY + "\ufffe")
    root = ElementTree.fromstring('<text a="{0}">{0}</text>'.format(label))
    assert root.text == root.get("a") == "<b>&'\"[31m[2J]0;owned  1m  "  # breaks, tabs: spaces
    assert unsafe(label) == []


def test_shorten_says_how_much_it_cut_and_never_splits_a_number():
    key = "k" * 50000 + "MIDDLE" + "z" * 50000
    cut = shorten(key, 120)
    head, count, tail = re.match(r"(k+)\.\.\.\((\d+) characters cut\)\.\.\.(z+)$", cut).groups()
    assert len(cut) <= 120 and len(head) + int(count) + len(tail) == len(key)  # the exact count
    assert len(shorten("9" * 5000, 80)) <= 80  # digits by the thousand are no number to keep
    number = str(2 ** 200)  # 61 digits
    for at in range(30, 120, 7):  # wherever the cut falls, a number goes whole or stays whole
        text = "x" * at + "used_bytes=" + number + " " + "y" * 200
        cut = shorten(text, 80)
        digits = [part for part in cut.replace("(", " ").replace(")", " ").replace("...", " ")
                  .replace("=", " ").split() if part.isdigit() and len(part) > 5]
        assert all(d == number for d in digits), cut


def test_numbers_are_never_cut():
    assert number_text(2 ** 200) == str(2 ** 200)
    assert number_text(10 ** 400) == "1.0000e+400 (an integer of 401 digits)"
    assert number_text(-(10 ** 400 - 1)) == "-9.9999e+399 (an integer of 400 digits)"
    info = shown(MemoryInfo(used_bytes=2 ** 200, total_bytes=2 ** 201, source="x" * 1000))
    assert str(2 ** 200) in info and str(2 ** 201) in info and "characters cut" in info
    assert shown({"used": [10 ** 60] * 3}) == "{{'used': [{0}, {0}, {0}]}}".format(10 ** 60)


def test_error_lines_are_one_line_cut_and_escaped():
    line = UserError("bad " + "p" * 100000 + NASTY + "\nforged", "fix\x1b[2J").one_line()
    assert unsafe(line) == [] and "\n" not in line and len(line) < 4200
    assert "characters cut" in line and line.endswith("fix\\x1b[2J")
    error = user_os_error(PermissionError(13, "denied", "/data/" + "d" * 5000))
    assert error is not None and len(error.one_line()) < 600 and "characters cut" in error.one_line()


def test_a_long_or_escaping_config_key_is_cut_in_one_error_line(capsys):
    key = "train." + "k" * 100000
    assert main(["run", "retinanet", "--vendor", "cpu", "--set", key + "=1"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and len(err) < 5000, len(err)
    assert "unknown config key 'train.kkk" in err and "characters cut)" in err
    assert main(["run", "retinanet", "--vendor", "cpu", "--set", "train.\x1b]0;owned\x07=1"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and unsafe(err) == [] and "\\x1b]0;owned\\x07" in err


# -- core compare on forged run folders -----------------------------------------------------------


def forged(**fields):
    data = compare_result()
    data.update(fields)
    return data


@pytest.fixture
def forged_runs(tmp_path):
    """A fair baseline and two runs whose result.json forge what can be forged."""
    base = result_folder(tmp_path, "base", compare_result())
    evil = result_folder(tmp_path, "evil", forged(
        status="failed", error="boom\n\x1b[32m" + FORGED_LINE + "\x1b[0m",
        precision="\x1b[2J\x1b]0;owned\x07amp" + NASTY,
        fix_hp="bs=16\n| forged | row | 1 | 2 | 3 |",
        row_label="A|B|C " + NASTY + " D", vendor="acme\x1b[5m",
        hardware={"label": "\x1b[31mX|Y\nZ"}, versions={"chipbench": "0.3\x1b[5m\n"},
        general={"rows": [["dataset", "COCO\n" + FORGED_LINE, ""]]}))
    huge = result_folder(tmp_path, "huge", forged(row_label="L" * 100000,
                                                  fix_hp="bs=" + "9" * 100000,
                                                  precision="p" * 100000))
    return [base, evil, huge]


def test_compare_in_a_terminal_shows_forged_text_escaped(forged_runs, capsys):
    assert main(["compare"] + [str(p) for p in forged_runs]) == 0
    out = capsys.readouterr().out
    assert unsafe(out) == []
    assert not any(line.startswith(FORGED_LINE) for line in out.splitlines())
    assert "\\x1b[32m" + FORGED_LINE in out  # still there, as text, on the warning's line
    assert max(len(line) for line in out.splitlines()) < 2000
    assert "characters cut" in out
    table = out.split("\n\n")[0].splitlines()
    assert len(table) == 4  # the header and one line per run: nothing added a line


def test_compare_markdown_keeps_its_rows_and_columns(forged_runs, capsys):
    assert main(["compare", "--markdown"] + [str(p) for p in forged_runs]) == 0
    out = capsys.readouterr().out
    assert unsafe(out) == []
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3  # header, separator, one row per run
    assert {unescaped_pipes(line) for line in table} == {unescaped_pipes(table[0])}
    assert not any(line.lstrip("- *").startswith(FORGED_LINE) for line in out.splitlines())
    assert "<" not in out.replace("&lt;", "")


def test_compare_json_holds_the_text_as_data(forged_runs, capsys):
    assert main(["compare", "--json"] + [str(p) for p in forged_runs]) == 0
    out = capsys.readouterr().out
    assert unsafe(out) == []  # JSON escapes them
    data = json.loads(out)
    assert any(FORGED_LINE in w for w in data["warnings"])


def test_compare_charts_are_valid_svg_without_control_characters(forged_runs, tmp_path, capsys):
    charts = tmp_path / "charts"
    assert main(["compare", "--plots", str(charts)] + [str(p) for p in forged_runs]) == 0
    capsys.readouterr()
    svgs = sorted(charts.glob("*.svg"))
    assert len(svgs) >= 2
    for svg in svgs:
        text = svg.read_text(encoding="utf-8")
        assert unsafe(text) == [], svg
        root = ElementTree.fromstring(text)  # a control character would make it unreadable
        labels = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
        assert max(len(t) for t in labels) <= 200


def test_a_fix_hp_difference_names_the_keys_that_differ(tmp_path, capsys):
    common = ", ".join("setting{}={}".format(i, "v" * 30) for i in range(8))
    a = result_folder(tmp_path, "a", forged(fix_hp="bs=16, eval.batch_size=8, " + common))
    b = result_folder(tmp_path, "b", forged(fix_hp="bs=16, eval.batch_size=16, " + common + ", lr=0.02"))
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    line = [line for line in out.splitlines() if "hyper-parameters (fix_hp)" in line][0]
    assert "has eval.batch_size=16, lr=0.02; baseline" in line
    assert line.endswith("has eval.batch_size=8, lr (default)")
    assert "setting0" not in line and "bs=16" not in line and len(line) < 200


def test_a_forged_result_refused_in_one_escaped_line(tmp_path, capsys):
    good = result_folder(tmp_path, "good", compare_result())
    bad = result_folder(tmp_path, "bad", forged(status="\x1b[2Jdone\n" + FORGED_LINE + "x" * 100000))
    assert main(["compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and unsafe(err) == [] and len(err) < 1000
    assert "status is '\\x1b[2Jdone\\n" in err and "characters cut" in err


# -- a real run folder: its report and its monitor timeline -----------------------------------------


def test_a_real_run_folder_forged_renders_safely(tiny_run, tmp_path, capsys):
    copies = []
    for name in ("mine", "theirs"):
        copy = tmp_path / name
        shutil.copytree(str(tiny_run), str(copy))
        copies.append(copy)
    path = copies[1] / "result.json"
    data = json.loads(path.read_text())
    data.update(row_label="R|1\n# forged heading " + NASTY, precision="fp32\x1b]0;t\x07",
                status="failed", error="died\n" + FORGED_LINE, dataset_note="note\n# forged",
                started_at="another start")  # not a copy of the first
    data["environment"]["device_model"] = "GPU|X\n- forged: item " + NASTY
    data["environment"]["k\x1b[1m|"] = {"a\nb": 10 ** 60}
    data["metrics"]["monitor_failures"] = {"device_sample": {"count": 2, "error": "E\n" + NASTY}}
    data["general"]["rows"].append(["x|y", "v\nw", "n" + NASTY])
    path.write_text(json.dumps(data))
    for copy in copies:  # the timeline shades the baseline's phases: forge them in every run
        monitor = copy / "monitor" / "rank0.jsonl"
        samples = [json.loads(line) for line in monitor.read_text().splitlines()]
        assert len(samples) >= 2
        for sample in samples[1:]:
            sample["phase"] = "eval\x1b[2J\n|x"
        monitor.write_text("".join(json.dumps(s) + "\n" for s in samples))

    report = report_of(data)
    assert unsafe(report) == []
    lines = report.splitlines()
    assert not any(line.startswith(("# forged", "- forged", FORGED_LINE)) for line in lines)
    for line in lines:  # every table row keeps its table's columns
        if line.startswith("|"):
            assert unescaped_pipes(line) in (3, 4, 6, 10), line
    assert str(10 ** 60) in report  # a number is never cut

    charts = tmp_path / "charts"
    assert main(["compare", "--plots", str(charts)] + [str(c) for c in copies]) == 0
    out = capsys.readouterr().out
    assert unsafe(out) == [] and not any(line.startswith(FORGED_LINE) for line in out.splitlines())
    timeline = (charts / "compare-timeline.svg").read_text(encoding="utf-8")
    assert unsafe(timeline) == [] and "phase: eval" in timeline
    ElementTree.fromstring(timeline)


# -- a plugin's answers: core vendors, core info, core doctor -----------------------------------------


def vendor(name, reason, **hooks):
    """A throwaway vendor: the CPU plugin's hooks under another name, ``hooks`` replacing some."""
    module = types.ModuleType("vendor_" + name)
    for hook in DEVICE_HOOKS:
        setattr(module, hook, getattr(cpu_plugin, hook))
    module.vendor_detect = hookimpl(lambda: VendorInfo(name, "cpu", -20, True, reason))
    for hook, answer in hooks.items():
        setattr(module, hook, hookimpl(answer))
    return module


@pytest.fixture
def forging_vendors(monkeypatch):
    """``forger``, whose environment report holds terminal escapes and line breaks in its keys
    and values, and ``liar``, whose reason does (chipbench refuses it: its error is shown)."""
    from chipbench.host.manager import PluginHost

    forger = vendor("forger", "fine | forged", hardware_id=lambda: HardwareId("F|X", "FX"),
                    environment_report=lambda: {
                        "device_model": "M", "note\x1b[1m": "a\nforged: line\rc",
                        "devices": [{"name": "d\n0", "n": 10 ** 60}], "list": ["x\ny", NASTY]})
    liar = vendor("liar", "fine\n\x1b[2Jforged row\x1b]0;t\x07" + NASTY)
    real = PluginHost.load_all

    def load_all(self, modules, entry_points=True):
        real(self, modules, entry_points=False)
        self.add(forger, "forger", "test")
        self.add(liar, "liar", "test")

    monkeypatch.setattr(PluginHost, "load_all", load_all)


def test_vendors_info_and_doctor_print_a_plugin_s_answers_escaped(forging_vendors, capsys):
    assert main(["vendors"]) == 0
    out = capsys.readouterr().out
    assert unsafe(out) == []
    row = [line for line in out.splitlines() if line.startswith("liar ")]
    assert len(row) == 1 and "fine\\n\\x1b[2Jforged row" in row[0]
    assert not any(line.startswith("forged") for line in out.splitlines())

    assert main(["info", "--vendor", "forger"]) == 0
    out = capsys.readouterr().out
    assert unsafe(out) == [] and "hardware_label: F|X" in out
    assert not any(line.startswith("forged") for line in out.splitlines())
    assert "  name=d\\n0, n={}".format(10 ** 60) in out and "note\\x1b[1m: a\\nforged" in out

    main(["doctor", "--vendor", "forger", "--static"])  # passes or fails: the table is safe
    captured = capsys.readouterr()
    assert unsafe(captured.out) == [] and unsafe(captured.err) == []
    assert not any(line.startswith("forged") for line in captured.out.splitlines())
