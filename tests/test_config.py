import pytest

from chipbench.errors import UserError
from chipbench.run.config import flatten, load_yaml, merge, parse_set, resolve

DEFAULTS = {"train": {"lr": 0.01, "batch_size": 16, "steps": [16, 22], "amp": False},
            "data": {"dir": None}}


def test_layers_apply_in_order_and_ints_become_floats():
    config = resolve(DEFAULTS, [("hw", {"train": {"lr": 1, "batch_size": 24}}),
                                ("--set", {"train": {"batch_size": 8}})])
    assert config["train"] == {"lr": 1.0, "batch_size": 8, "steps": [16, 22], "amp": False}
    assert isinstance(config["train"]["lr"], float)
    assert DEFAULTS["train"]["lr"] == 0.01  # defaults untouched


def test_unknown_key_names_key_source_and_known_keys():
    with pytest.raises(UserError) as err:
        resolve(DEFAULTS, [("C500x1x8.yaml", {"train": {"learning_rate": 0.1}})])
    line = err.value.one_line()
    assert "train.learning_rate" in line and "C500x1x8.yaml" in line and "train.lr" in line


@pytest.mark.parametrize("layer", [{"train": {"batch_size": "big"}}, {"train": {"lr": True}},
                                   {"train": {"batch_size": 1.5}}, {"train": 3},
                                   {"train": {"steps": 5}}, {"train": {"amp": 1}}])
def test_wrong_types_are_errors(layer):
    with pytest.raises(UserError):
        merge(DEFAULTS, layer, "test")


def test_null_default_takes_any_value():
    assert merge(DEFAULTS, {"data": {"dir": "/coco"}}, "x")["data"]["dir"] == "/coco"


def test_parse_set_reads_yaml_values():
    assert parse_set(["train.lr=1e8"]) == {"train": {"lr": 1e8}}
    assert parse_set(["data.dir=/a.b"]) == {"data": {"dir": "/a.b"}}
    layer = parse_set(["train.lr=0.02", "train.steps=[1, 2]", "data.dir=/x", "train.amp=true"])
    assert layer == {"train": {"lr": 0.02, "steps": [1, 2], "amp": True}, "data": {"dir": "/x"}}
    with pytest.raises(UserError):
        parse_set(["train.lr"])
    with pytest.raises(UserError):
        parse_set(["=3"])


def test_broken_yaml_is_one_line_with_line_number(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [0.1\n  bs: 2\n")
    with pytest.raises(UserError) as err:
        load_yaml(path)
    assert "not valid YAML" in err.value.one_line() and "line" in err.value.one_line()
    assert "\n" not in err.value.one_line()


def test_yaml_must_be_a_mapping_and_missing_file_is_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(UserError):
        load_yaml(path)
    with pytest.raises(UserError):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}


def test_yaml_is_never_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(UserError):
        load_yaml(path)


def test_flatten():
    assert flatten(DEFAULTS)["train.lr"] == 0.01


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(UserError) as err:
        merge(DEFAULTS, {"train": {"lr": value}}, "--set")
    assert "train.lr" in err.value.one_line() and "finite" in err.value.one_line()
    with pytest.raises(UserError):
        merge({"x": [0.5]}, {"x": [1.0, value]}, "--set")


def test_duplicate_yaml_keys_name_file_line_and_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("data:\n  dir: /a\ntrain:\n  lr: 0.1\n  amp: true\n  lr: 0.2\n")
    with pytest.raises(UserError) as err:
        load_yaml(path)
    line = err.value.one_line()
    assert str(path) in line and "'lr' twice" in line and "line 6" in line
    path.write_text("train:\n  lr: 0.1\ndata:\n  dir: /a\n")  # the same key in two sections: fine
    assert load_yaml(path)["train"]["lr"] == 0.1
