"""The order of a run's config layers, and what a vendor's hardware file is told when a later
layer changes one of its settings."""

from chipbench.records import HardwareId
from chipbench.run.caseload import load_case
from chipbench.run.launcher import Topology
from chipbench.run.layers import overridden, resolve_run_config

HARDWARE = HardwareId(label="ACX1", config_tag="X1")


def test_a_later_layer_wins_and_says_which_hardware_settings_it_changed(tmp_path):
    """The embedded set's recipe is tuned to its small images: it sits above a hardware file
    written for COCO, and the run names each hardware setting it changed, with the layer."""
    path = tmp_path / "X1x1x1.yaml"
    path.write_text("train:\n  batch_size: 2\n  lr: 0.01\n  epochs: 3\n")
    lines = []
    config, sources = resolve_run_config(load_case("retinanet"), str(path), HARDWARE,
                                         Topology(), ["train.epochs=5"], {},
                                         announce=lines.append)
    embedded = [s for s in sources if s.endswith("embedded.yaml")]
    assert sources[0] == str(path) and embedded and sources.index(embedded[0]) == 1
    assert config["train"]["batch_size"] == 4 and config["train"]["epochs"] == 5
    changed = [line for line in lines if line.startswith("hardware config X1x1x1.yaml:")]
    assert len(changed) == 1, lines
    assert "train.batch_size 2 -> 4 (embedded.yaml)" in changed[0]
    assert "train.epochs 3 -> 5 (--set)" in changed[0]
    assert "train.lr" not in changed[0]  # the same value: nothing changed


def test_a_hardware_file_that_a_data_dir_run_keeps_whole_says_nothing(tmp_path):
    path = tmp_path / "X1x1x1.yaml"
    path.write_text("train:\n  batch_size: 2\n")
    lines = []
    config, _ = resolve_run_config(load_case("retinanet"), str(path), HARDWARE, Topology(), [],
                                   {"data": {"dir": str(tmp_path)}}, announce=lines.append)
    assert config["train"]["batch_size"] == 2
    assert not any(line.startswith("hardware config") for line in lines)


def test_overridden_takes_the_last_layer_that_sets_a_key():
    hardware = ("X1x1x8.yaml", {"train": {"lr": 0.04, "batch_size": 16}})
    later = [("a.yaml", {"train": {"lr": 0.1}}), ("--set", {"train": {"lr": 0.04}})]
    assert overridden(hardware, later) == []  # set back to the hardware file's value
    later.append(("b.yaml", {"train": {"batch_size": 8}}))
    assert overridden(hardware, later) == ["train.batch_size 16 -> 8 (b.yaml)"]
