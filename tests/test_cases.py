"""Cases and their configs: vendor-shipped configs (hook case_config_dirs), `core cases`, cases
from outside packages (entry-point group chipbench.cases) and how a case argument is read."""

import json

import pytest

from chipbench.case import load_case, plugin_config_dirs
from chipbench.cli import main
from chipbench.errors import PluginError
from chipbench.launcher import Topology
from chipbench.manager import build_host
from chipbench.runner import resolve_run_config
from chipbench.selection import select_device

TINY = ["--set", "train.max_iters=1", "--set", "data.synthetic.train_images=8",
        "--set", "data.synthetic.val_images=4", "--set", "data.synthetic.image_size=64",
        "--set", "run.monitor_interval_s=0.2"]


def fakechip_dirs(case_name="retinanet"):
    host = build_host()
    select_device(host, "fakechip")
    return plugin_config_dirs(host, case_name)


def test_fakechip_ships_a_retinanet_config():
    dirs = fakechip_dirs()
    assert [plugin for _, plugin in dirs] == ["fakechip"]
    assert (dirs[0][0] / "F1x1x1.yaml").is_file()
    assert fakechip_dirs("no-such-case") == []


def test_only_the_chosen_vendors_configs_count():
    host = build_host()
    select_device(host, "cpu")
    assert plugin_config_dirs(host, "retinanet") == []


def test_missing_hardware_file_is_announced_with_those_that_exist():
    case = load_case("retinanet")
    facade = select_device(build_host(), "fakechip")
    lines = []
    config, sources = resolve_run_config(case, None, facade.hardware_id(), Topology(nproc_per_node=2),
                                         [], {}, extra_dirs=fakechip_dirs(), announce=lines.append)
    assert lines[0] == ("no hardware config F1x1x2.yaml for tag F1 and topology 1x2 (case "
                        "retinanet has: F1x1x1); using the case defaults")
    assert lines[1].startswith("config layers: ") and lines[1].endswith("embedded.yaml")
    assert config["eval"]["batch_size"] == 8  # the case default, not fakechip's 2
    assert not any("F1x1x1" in s for s in sources)


def test_plugin_config_found_by_name_too():
    case = load_case("retinanet")
    facade = select_device(build_host(), "fakechip")
    config, sources = resolve_run_config(case, "F1x1x1", facade.hardware_id(),
                                         Topology(nproc_per_node=2), [], {},
                                         extra_dirs=fakechip_dirs())
    assert config["eval"]["batch_size"] == 2 and sources[0].endswith("retinanet/F1x1x1.yaml")


def test_a_plugin_answering_garbage_is_one_line():
    class Bad:
        from chipbench import hookimpl

        @hookimpl
        def case_config_dirs(self, case_name):
            return "/no/such/folder"

    host = build_host(load_entry_points=False)
    host.add(Bad(), "bad", "test")
    with pytest.raises(PluginError, match="plugin 'bad' returned '/no/such/folder'"):
        plugin_config_dirs(host, "retinanet")


@pytest.mark.slow
def test_core_run_fakechip_uses_and_announces_its_shipped_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "retinanet", "--vendor", "fakechip", "--output", str(out)] + TINY) == 0
    result = json.loads((out / "result.json").read_text())
    shipped = [s for s in result["config_sources"] if s.endswith("retinanet/F1x1x1.yaml")]
    assert len(shipped) == 1 and "chipbench_fakechip_configs" in shipped[0]
    assert result["config"]["eval"]["batch_size"] == 2 and result["config"]["run"]["log_every"] == 5
    err = capsys.readouterr().err
    assert "F1x1x1.yaml (from plugin fakechip)" in err and "config layers: " in err
