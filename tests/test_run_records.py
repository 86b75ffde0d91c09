"""Typed run records: spec.json read and written in one place, and the vendor package that
produced a run's figures."""

import json

import pytest

from chipbench.errors import UserError
from chipbench.manager import build_host
from chipbench.runfolder import read_spec
from chipbench.runrecords import RunSpec

GOOD = {"case": "retinanet", "vendor": "cpu", "config": {"train": {}}, "topology": {},
        "prepared": {"train_images": 8}, "hardware": {"label": "CPU"}, "resume": False}


def test_a_spec_round_trips():
    spec = RunSpec.from_json(GOOD, "spec.json")
    assert spec.to_json() == GOOD
    assert RunSpec.from_json(spec.to_json(), "spec.json") == spec


@pytest.mark.parametrize("field, value", [("case", 3), ("config", []), ("topology", None),
                                          ("resume", "yes"), ("prepared", "x"),
                                          ("hardware", [1])])
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
