"""Bad inputs, one table: each row is a careless or hostile input to ``core``.

Every row asserts the exit code, a fragment of the ONE ``error:`` line, that no traceback is shown
and the state of the run folder afterwards. Rows run in-process through ``chipbench.cli.main``
(signals in a subprocess); most fail before any training. The resume rows share one tiny run
folder, made once for the module.
"""

import errno
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import pytest

from chipbench.cli import main
from tests.conftest import default_sigint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--vendor", "cpu", "--set", "data.synthetic.train_images=8",
        "--set", "data.synthetic.val_images=4", "--set", "data.synthetic.image_size=64",
        "--set", "train.max_iters=1", "--set", "run.monitor_interval_s=0.2",
        "--set", "data.num_workers=0", "--set", "model.min_size=64", "--set", "model.max_size=64"]
RUN = ["run", "retinanet", "--output", "{out}"] + TINY
DATA = RUN + ["--data-dir", "{coco}", "--set", "model.backbone_weights=none",
              "--set", "model.min_size=64", "--set", "model.max_size=64",
              "--set", "train.batch_size=2"]
RESUME = ["run", "--resume", "{run}"]


class Evil:
    """A pickle payload: loading it with plain pickle would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, ("touch '{}'".format(self.marker),))


class Paths(NamedTuple):
    tmp: Path
    out: Path
    coco: Path
    run: Path
    marker: Path


class Row(NamedTuple):
    id: str
    args: List[str]
    fragment: str
    folder: str = "none"
    """none: no run folder made; failed: result.json says failed; unchanged: the resume folder
    is byte-identical; finished: the run finished; interrupted: result.json says interrupted."""
    code: int = 2
    setup: Optional[Callable[[Paths, Any], None]] = None
    env: Optional[Dict[str, str]] = None
    check: Optional[Callable[[Paths], None]] = None
    signal_after: Optional[str] = None
    """Run in a subprocess and send SIGTERM/SIGINT once stderr shows this text."""


# --------------------------------------------------------------------------------------------------
# setups
# --------------------------------------------------------------------------------------------------


def write(name: str, text: str) -> Callable[[Paths, Any], None]:
    def setup(p: Paths, monkeypatch: Any) -> None:
        (p.tmp / name).write_text(text)
    return setup


def coco_edit(split: str, edit: Callable[[Dict[str, Any]], Any]) -> Callable[[Paths, Any], None]:
    """Change one annotation file of the row's copy of the tiny COCO folder."""
    def setup(p: Paths, monkeypatch: Any) -> None:
        path = p.coco / "annotations" / "instances_{}2017.json".format(split)
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return setup


def coco_replace(split: str, text: str) -> Callable[[Paths, Any], None]:
    def setup(p: Paths, monkeypatch: Any) -> None:
        (p.coco / "annotations" / "instances_{}2017.json".format(split)).write_text(text)
    return setup


def set_item(data: Dict[str, Any], section: str, index: int, key: str, value: Any) -> None:
    data[section][index][key] = value


def bad_boxes(data: Dict[str, Any]) -> None:
    anns = data["annotations"]
    anns[0]["bbox"] = [float("nan"), 1, 10, 10]
    anns[1]["bbox"] = [5, 5, -8, 10]
    anns[2]["bbox"] = [1000, 1000, 10, 10]


def remove_image(p: Paths, monkeypatch: Any) -> None:
    sorted((p.coco / "train2017").iterdir())[0].unlink()


def checkpoint_of_another_model(p: Paths, monkeypatch: Any) -> None:
    from chipbench.cases.retinanet import checkpoint

    path = p.run / "checkpoints" / "last.pt"
    state = checkpoint.load(path)
    state["model"].pop(next(iter(state["model"])))  # a parameter this model has, missing
    checkpoint.save(state, path)


def edit_json(name: str, edit: Callable[[Dict[str, Any]], None]) -> Callable[[Paths, Any], None]:
    """Change ``name`` (spec.json, result.json) of the row's copy of the resumable run."""
    def setup(p: Paths, monkeypatch: Any) -> None:
        path = p.run / name
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return setup


def edit_spec(edit: Callable[[Dict[str, Any]], None]) -> Callable[[Paths, Any], None]:
    return edit_json("spec.json", edit)


def edit_result(edit: Callable[[Dict[str, Any]], None]) -> Callable[[Paths, Any], None]:
    return edit_json("result.json", edit)


def spec_text(text: str) -> Callable[[Paths, Any], None]:
    def setup(p: Paths, monkeypatch: Any) -> None:
        (p.run / "spec.json").write_text(text)
    return setup


def checkpoint(kind: str) -> Callable[[Paths, Any], None]:
    def setup(p: Paths, monkeypatch: Any) -> None:
        import torch

        path = p.run / "checkpoints" / "last.pt"
        data = path.read_bytes()[:4096] if kind == "truncated" else None
        path.unlink()  # a hard link to the shared checkpoint: never write through it
        if kind == "truncated":
            path.write_bytes(data)
        elif kind == "garbage":
            path.write_bytes(b"not a checkpoint at all\n" * 10)
        elif kind == "payload":
            torch.save({"format": "chipbench-checkpoint-1", "meta": "{}",
                        "tensors": [], "model": Evil(p.marker)}, str(path))
        elif kind == "foreign":
            torch.save({"model": {"w": torch.zeros(2)}}, str(path))
    return setup


def weights(kind: str) -> Callable[[Paths, Any], None]:
    def setup(p: Paths, monkeypatch: Any) -> None:
        import torch

        if kind == "payload":
            torch.save({"conv1.weight": Evil(p.marker)}, str(p.tmp / "w.pth"))
        elif kind == "garbage":
            (p.tmp / "w.pth").write_bytes(b"\x00garbage" * 100)
        elif kind == "hash":
            (p.tmp / "resnet50-deadbeef.pth").write_bytes(b"x")
    return setup


def deny(err: int, under: str = "{out}") -> Callable[[Paths, Any], None]:
    """Make creating folders under ``under`` fail with ``err`` (as a read-only or foreign FS)."""
    def setup(p: Paths, monkeypatch: Any) -> None:
        real = pathlib.Path.mkdir
        prefix = under.format(**p._asdict())

        def mkdir(self, *args, **kwargs):
            if str(self).startswith(prefix):
                raise OSError(err, os.strerror(err), str(self))
            return real(self, *args, **kwargs)
        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    return setup


def home_under_file(p: Paths, monkeypatch: Any) -> None:
    (p.tmp / "file").write_text("x")
    monkeypatch.delenv("CHIPBENCH_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(p.tmp / "file" / "home"))


def run_dir_output(p: Paths, monkeypatch: Any) -> None:
    p.out.mkdir()
    (p.out / "result.json").write_text("{}")


def fine(p: Paths, monkeypatch: Any) -> None:
    return None


# --------------------------------------------------------------------------------------------------
# checks beyond the common ones
# --------------------------------------------------------------------------------------------------


def marker_absent(p: Paths) -> None:
    assert not p.marker.exists(), "the pickle payload ran"


def boxes_counted(p: Paths) -> None:
    data = json.loads((p.out / "result.json").read_text())["data"]
    assert data["boxes_dropped"] == 3 and data["train_boxes_dropped"] == 3
    assert data["train_images"] >= 1 and data["val_images"] == 4


def epochs_kept(p: Paths) -> None:
    folder = p.out if (p.out / "result.json").is_file() else p.run  # a new run, or a resume
    result = json.loads((folder / "result.json").read_text())
    assert len(result["epochs"]) >= 1 and (folder / "checkpoints" / "last.pt").is_file()


# --------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------

ROWS = [
    # CLI
    Row("cli-unknown-command", ["frobnicate"], "invalid choice: 'frobnicate'"),
    Row("cli-unknown-option", RUN + ["--bogus"], "unrecognized arguments: --bogus"),
    Row("cli-bad-int", ["run", "retinanet", "--nproc-per-node", "x"], "invalid int value: 'x'"),
    Row("cli-bad-port", ["run", "retinanet", "--master-port", "p"], "'p' is not an integer"),
    Row("cli-bad-join-timeout", ["run", "retinanet", "--join-timeout", "1h"],
        "'1h' is not an integer"),
    Row("cli-rdzv-port-out-of-range", ["run", "retinanet", "--rdzv-endpoint", "localhost:99999"],
        "--rdzv-endpoint: port '99999' of 'localhost:99999' is not a number in 1..65535"),
    Row("cli-rdzv-port-word", ["run", "retinanet", "--rdzv-endpoint", "localhost:abc"],
        "port 'abc' of 'localhost:abc' is not a number"),
    Row("cli-nproc-huge", RUN + ["--nproc-per-node", "100000"],
        "--nproc-per-node 100000 is more than 1024"),
    Row("config-num-workers-huge", RUN + ["--set", "data.num_workers=9223372036854775807"],
        "data.num_workers must be a count in 0..1024 or null"),
    Row("cli-port-out-of-range", ["run", "retinanet", "--master-port", "70000"],
        "--master-port: 70000 is not between 1 and 65535"),
    Row("cli-join-timeout-negative", ["run", "retinanet", "--join-timeout", "-5"],
        "--join-timeout: -5 is not between 1"),
    Row("cli-doctor-alloc-negative", ["doctor", "--vendor", "cpu", "--alloc-mib", "-1"],
        "--alloc-mib: -1 is not between 1"),
    Row("cli-empty-output", RUN + ["--output", ""], "argument --output: must not be empty"),
    Row("cli-empty-data-dir", RUN + ["--data-dir", " "], "--data-dir: must not be empty"),
    Row("cli-empty-vendor", ["info", "--vendor", ""], "--vendor: must not be empty"),
    Row("cli-empty-compare-run", ["compare", ""], "RUN_DIR: must not be empty"),
    Row("cli-vendors-bad-option", ["vendors", "--jsn"], "unrecognized arguments"),
    Row("cli-no-case", ["run"], "needs a case"),
    Row("cli-unknown-case", ["run", "nosuchcase", "--vendor", "cpu"], "unknown case"),
    Row("cli-unknown-vendor", RUN[:4] + ["--vendor", "nosuchchip"], "unknown vendor 'nosuchchip'"),
    Row("cli-info-unknown-vendor", ["info", "--vendor", "nosuchchip"], "unknown vendor"),
    Row("cli-devices-on-cpu", RUN + ["--devices", "0,1"], "no way to restrict devices"),
    Row("cli-set-no-equals", RUN + ["--set", "train.lr"], "is not key=value"),
    Row("cli-set-empty-key", RUN + ["--set", "=3"], "empty key"),
    # config
    Row("config-lr-negative", RUN + ["--set", "train.lr=-1"], "train.lr must be positive"),
    Row("config-lr-nan", RUN + ["--set", "train.lr=.nan"], "must be a finite number"),
    Row("config-lr-inf", RUN + ["--set", "train.lr=.inf"], "must be a finite number"),
    Row("config-lr-overflow", RUN + ["--set", "train.lr=1e999"], "must be a finite number"),
    Row("config-momentum-minus-inf", RUN + ["--set", "train.momentum=-.inf"], "finite number"),
    Row("config-lr-word", RUN + ["--set", "train.lr=fast"], "must be a number"),
    Row("config-unknown-key", RUN + ["--set", "train.nosuch=1"], "unknown config key"),
    Row("config-not-mapping", RUN + ["--set", "eval=3"], "must be a mapping"),
    Row("config-batch-zero", RUN + ["--set", "train.batch_size=0"], "must be positive"),
    Row("config-batch-word", RUN + ["--set", "train.batch_size=many"], "must be an integer"),
    Row("config-epochs-float", RUN + ["--set", "train.epochs=1.5"], "must be an integer"),
    Row("config-precision-set", RUN + ["--set", "train.precision=fp8"], "unknown precision"),
    Row("config-precision-flag", RUN + ["--precision", "fp8"], "unknown precision 'fp8'"),
    Row("config-hflip", RUN + ["--set", "data.hflip=2"], "between 0 and 1"),
    Row("config-target", RUN + ["--set", "target.mAP=-0.1"], "between 0 and 1"),
    Row("config-lr-steps", RUN + ["--set", "train.lr_steps=[0]"], "train.lr_steps"),
    Row("config-lr-steps-bool", RUN + ["--set", "train.lr_steps=[true]"], "train.lr_steps"),
    Row("cli-no-command", [], "no command given"),
    Row("env-detect-timeout-word", ["vendors"],
        "CHIPBENCH_DETECT_TIMEOUT_S='soon' is not a number of seconds in 0.1..3600",
        env={"CHIPBENCH_DETECT_TIMEOUT_S": "soon"}),
    Row("env-detect-timeout-zero", ["vendors"],
        "CHIPBENCH_DETECT_TIMEOUT_S='1e-300' is not a number of seconds in 0.1..3600",
        env={"CHIPBENCH_DETECT_TIMEOUT_S": "1e-300"}),
    Row("env-strict-plugins-2", ["vendors"], "CHIPBENCH_STRICT_PLUGINS='2' is neither on nor off",
        env={"CHIPBENCH_STRICT_PLUGINS": "2"}),
    Row("config-file-control-character", RUN + ["--config", "{tmp}/ctl.yaml"],
        "character 0x01 at offset 13 is not allowed", setup=write("ctl.yaml", "train:\n  lr: \x01\n")),
    Row("data-dir-name-too-long", RUN + ["--data-dir", "{tmp}/" + "a" * 5000],
        "(File name too long)", folder="failed"),
    Row("weights-empty", RUN + ["--set", "model.backbone_weights="], "model.backbone_weights is "
        "empty", folder="failed"),
    Row("weights-folder", RUN + ["--set", "model.backbone_weights={tmp}"], "is a folder, not a "
        "file", folder="failed"),
    Row("config-eval-backend", RUN + ["--set", "eval.backend=foo"], "eval.backend"),
    Row("config-image-size", RUN + ["--set", "data.synthetic.image_size=8"], "between 32 and 4096, not 8"),
    Row("config-workers", RUN + ["--set", "data.num_workers=-1"],
        "must be a count in 0..1024 or null, not -1"),
    Row("config-min-size", RUN + ["--set", "model.min_size=0"], "model.min_size must be"),
    # null where a value is needed; values torch refuses; huge numbers; odd YAML
    Row("config-lr-null", RUN + ["--set", "train.lr=null"], "train.lr' in --set must be a number"),
    Row("config-epochs-tilde", RUN + ["--set", "train.epochs=~"], "must be an integer, not None"),
    Row("config-lr-steps-null", RUN + ["--set", "train.lr_steps=null"], "must be a list"),
    Row("config-data-dir-number", RUN + ["--set", "data.dir=3"], "data.dir must be a folder"),
    Row("config-momentum-negative", RUN + ["--set", "train.momentum=-0.5"],
        "train.momentum must lie between 0 and 1"),
    Row("config-weight-decay-negative", RUN + ["--set", "train.weight_decay=-1"],
        "train.weight_decay must lie between"),
    Row("config-warmup-factor-zero", RUN + ["--set", "train.warmup_factor=0"],
        "train.warmup_factor must lie between"),
    Row("config-lr-gamma-negative", RUN + ["--set", "train.lr_gamma=-5"],
        "train.lr_gamma must lie between"),
    Row("config-seed-negative", RUN + ["--set", "data.synthetic.seed=-1"],
        "data.synthetic.seed must lie between 0 and 4.29497e+09"),
    Row("config-seed-huge", RUN + ["--set", "train.seed=1180591620717411303424"],
        "is out of range"),
    Row("config-lr-huge-integer", RUN + ["--set", "train.lr=" + "9" * 400], "is out of range"),
    Row("config-batch-5000-digits", RUN + ["--set", "train.batch_size=" + "9" * 5000],
        "must be an integer, not '99999"),
    Row("config-min-size-tiny", RUN + ["--set", "model.min_size=8", "--set", "model.max_size=8"],
        "model.min_size must lie between 64"),
    Row("config-monitor-interval-huge", RUN + ["--set", "run.monitor_interval_s=1e10"],
        "run.monitor_interval_s must lie between"),
    Row("config-set-duplicate-key", RUN + ["--set", "train={{lr: -1, lr: 0.02}}"],
        "sets key 'lr' twice"),
    Row("config-alias-bomb", RUN + ["--config", "{tmp}/bomb.yaml"], "must be a number, not [['x', 'x'",
        setup=write("bomb.yaml", "train:\n  lr:\n    - &a [x, x, x, x, x, x, x, x, x, x]\n"
                    + "".join("    - &{0} [{1}]\n".format(n, ", ".join(["*" + p] * 10))
                              for n, p in zip("bcdef", "abcde")))),
    Row("config-file-not-utf8", RUN + ["--config", "{tmp}/elf.yaml"], "is not UTF-8 text",
        setup=lambda p, mp: (p.tmp / "elf.yaml").write_bytes(b"\x7fELF\x02\x01\xff\xfe" * 8)),
    Row("config-file-missing", RUN + ["--config", "nosuch"], "config 'nosuch' not found"),
    Row("config-file-duplicate", RUN + ["--config", "{tmp}/dup.yaml"], "sets key 'lr' twice",
        setup=write("dup.yaml", "train:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n")),
    Row("config-file-duplicate-section", RUN + ["--config", "{tmp}/dup2.yaml"],
        "sets key 'train' twice", setup=write("dup2.yaml", "train:\n  lr: 0.1\ntrain:\n  lr: 1\n")),
    Row("config-file-broken", RUN + ["--config", "{tmp}/bad.yaml"], "not valid YAML",
        setup=write("bad.yaml", "train:\n  lr: [1\n")),
    Row("config-file-list", RUN + ["--config", "{tmp}/list.yaml"], "must be a mapping",
        setup=write("list.yaml", "- 1\n- 2\n")),
    Row("config-file-nan", RUN + ["--config", "{tmp}/nan.yaml"], "must be a finite number",
        setup=write("nan.yaml", "train:\n  lr: .nan\n")),
    Row("config-file-binary", RUN + ["--config", "{tmp}/b.yaml"],
        "b.yaml holds a bytes (b'hello')", setup=write(
            "b.yaml", "data:\n  dir: !!binary aGVsbG8=\n")),
    Row("config-set-timestamp", RUN + ["--set", "data.dir=2024-01-01"],
        "config key 'data.dir' in --set holds a date (datetime.date(2024, 1, 1))"),
    Row("config-file-integer-key", RUN + ["--config", "{tmp}/i.yaml"],
        "has key 1 under 'train', which is not a name", setup=write("i.yaml", "train:\n  1: 2\n")),
    Row("config-file-dotted-key", RUN + ["--config", "{tmp}/d.yaml"],
        "has key 'train.lr' under 'the top level', which is not a name",
        setup=write("d.yaml", "train.lr: 0.1\n")),
    Row("config-file-deep-list", RUN + ["--config", "{tmp}/deep.yaml"], "nests too deeply to read",
        setup=write("deep.yaml", "train: " + "[" * 100000 + "]" * 100000 + "\n")),
    Row("config-set-deep-list", RUN + ["--set", "train.lr_steps=" + "[" * 900 + "]" * 900],
        "nests too deeply to read"),
    Row("config-set-sub-key-of-a-value", RUN + ["--set", "eval=1", "--set", "eval.every=2"],
        "gives a sub-key of 'eval', which another --set sets to 1"),
    Row("config-set-value-over-sub-keys", RUN + ["--set", "eval.every=2", "--set", "eval=1"],
        "replaces the sub-keys that another --set gives 'eval'"),
    Row("config-trainable-layers-9", RUN + ["--set", "model.trainable_backbone_layers=9"],
        "model.trainable_backbone_layers must lie between 0 and 5, not 9"),
    Row("config-image-size-huge", RUN + ["--set", "data.synthetic.image_size=10000000"],
        "data.synthetic.image_size must lie between 32 and 4096"),
    Row("config-group-factor-huge", RUN + ["--set", "data.aspect_ratio_group_factor=1000000000000"],
        "data.aspect_ratio_group_factor"),
    Row("config-file-is-a-folder", RUN + ["--config", "{tmp}"], "is a folder; give a YAML file"),
    Row("config-file-unknown-key", RUN + ["--config", "{tmp}/k.yaml"], "unknown config key",
        setup=write("k.yaml", "trian:\n  lr: 1\n")),
    Row("config-batch-larger-than-data", RUN + ["--set", "train.batch_size=1000000000000"],
        "larger than the 8 usable training image(s)", folder="failed"),
    Row("config-input-too-large-to-allocate",
        RUN + ["--set", "model.min_size=100000", "--set", "model.max_size=100000"],
        "cannot allocate memory for batches of 4 image(s) resized to 100000-100000 px",
        folder="failed"),
    # data
    Row("data-dir-missing", RUN + ["--data-dir", "{tmp}/nowhere"], "does not exist",
        folder="failed"),
    Row("data-dir-is-file", RUN + ["--data-dir", "{tmp}/f"], "is a file, not a folder",
        folder="failed", setup=write("f", "x")),
    Row("data-no-train-folder", DATA, "has no train2017/ image folder", folder="failed",
        setup=lambda p, m: shutil.rmtree(str(p.coco / "train2017"))),
    Row("data-no-annotations", DATA, "has no annotations/instances_val2017.json", folder="failed",
        setup=lambda p, m: (p.coco / "annotations" / "instances_val2017.json").unlink()),
    Row("data-json-broken", DATA, "is not valid JSON", folder="failed",
        setup=coco_replace("train", "{\"images\": [")),
    Row("data-json-list", DATA, "not a COCO instances mapping", folder="failed",
        setup=coco_replace("train", "[1, 2]")),
    Row("data-no-categories", DATA, "lacks categories", folder="failed",
        setup=coco_edit("val", lambda d: d.pop("categories"))),
    Row("data-category-unknown", DATA, "annotation 1 in instances_train2017.json has category_id "
        "99", folder="failed",
        setup=coco_edit("train", lambda d: set_item(d, "annotations", 0, "category_id", 99))),
    Row("data-category-missing", DATA, "has category_id None", folder="failed",
        setup=coco_edit("val", lambda d: d["annotations"][0].pop("category_id"))),
    Row("data-annotation-of-unknown-image", DATA, "annotation 1 in instances_val2017.json has "
        "image_id 9999, which is not among its images", folder="failed",
        setup=coco_edit("val", lambda d: set_item(d, "annotations", 0, "image_id", 9999))),
    Row("data-file-name-nul", DATA, "has file_name 'a\\x00b.jpg', not a file name (it holds a "
        "control character)", folder="failed",
        setup=coco_edit("train", lambda d: set_item(d, "images", 0, "file_name", "a\x00b.jpg"))),
    Row("data-iscrowd-missing", DATA, "annotation 1 in instances_train2017.json has iscrowd "
        "None, not 0 or 1", folder="failed",
        setup=coco_edit("train", lambda d: d["annotations"][0].pop("iscrowd"))),
    Row("data-image-width-huge-integer", DATA, "image 3 in instances_train2017.json has width "
        "1.0000e+400 (an integer of 401 digits)", folder="failed",
        setup=coco_edit("train", lambda d: set_item(d, "images", 2, "width", 10 ** 400))),
    Row("data-image-width-zero", DATA, "image 3 in instances_train2017.json has width 0",
        folder="failed", setup=coco_edit("train", lambda d: set_item(d, "images", 2, "width", 0))),
    Row("data-image-height-missing", DATA, "image 1 in instances_val2017.json has width 64 and "
        "height None", folder="failed", setup=coco_edit("val", lambda d: d["images"][0].pop(
            "height"))),
    Row("data-val-empty", DATA, "instances_val2017.json lists no images", folder="failed",
        setup=coco_edit("val", lambda d: d.update(images=[], annotations=[]))),
    Row("data-train-unannotated", DATA, "no image in", folder="failed",
        setup=coco_edit("train", lambda d: d.update(annotations=[]))),
    Row("data-image-file-missing", DATA, "are missing from", folder="failed", setup=remove_image),
    Row("data-invalid-boxes-counted", DATA, "3 invalid box(es) dropped", code=0,
        folder="finished", setup=coco_edit("train", bad_boxes), check=boxes_counted),
    # COCO fields of the wrong type or out of range
    Row("data-annotations-null", DATA, "has annotations None, not a list", folder="failed",
        setup=coco_edit("train", lambda d: d.update(annotations=None))),
    Row("data-category-id-list", DATA, "has category_id [1], not a non-negative integer",
        folder="failed",
        setup=coco_edit("train", lambda d: set_item(d, "annotations", 0, "category_id", [1]))),
    Row("data-image-id-list", DATA, "has image_id [1], not a non-negative integer",
        folder="failed",
        setup=coco_edit("val", lambda d: set_item(d, "annotations", 0, "image_id", [1]))),
    Row("data-file-name-missing", DATA, "image 1 in instances_val2017.json has file_name None",
        folder="failed", setup=coco_edit("val", lambda d: d["images"][0].pop("file_name"))),
    Row("data-file-name-number", DATA, "has file_name 5, not a file name", folder="failed",
        setup=coco_edit("train", lambda d: set_item(d, "images", 0, "file_name", 5))),
    Row("data-ids-as-text", DATA, "has id '1', not a non-negative integer", folder="failed",
        setup=coco_edit("val", lambda d: set_item(d, "images", 0, "id", "1"))),
    Row("data-image-id-twice", DATA, "image id 1 appears twice in instances_val2017.json",
        folder="failed", setup=coco_edit("val", lambda d: set_item(d, "images", 1, "id", 1))),
    Row("data-category-id-huge", DATA, "category id 1000000000 in instances_train2017.json is "
        "over", folder="failed",
        setup=coco_edit("train", lambda d: d["categories"].append({"id": 10**9, "name": "x"}))),
    Row("data-json-deeply-nested", DATA, "is not valid JSON", folder="failed",
        setup=coco_replace("train", "[" * 200000 + "]" * 200000)),
    # output
    Row("output-not-empty", RUN, "is not empty (it holds notes.txt, report.md)", folder="exists",
        setup=lambda p, m: (p.out.mkdir(), (p.out / "report.md").write_text("mine"),
                            (p.out / "notes.txt").write_text("mine"))),
    Row("output-stale-progress", RUN, "is not empty (it holds progress.json)", folder="exists",
        setup=lambda p, m: (p.out.mkdir(), (p.out / "progress.json").write_text(
            '{"metrics": {"mAP": 0.99, "converged": true, "p_core": 999.0}}'))),
    Row("output-symlink-loop", ["run", "retinanet", "--output", "{tmp}/loop"] + TINY,
        "a symbolic link on the path loops",
        setup=lambda p, m: os.symlink(str(p.tmp / "loop"), str(p.tmp / "loop"))),
    Row("env-peak-gemm-nan", RUN, "CHIPBENCH_CPU_PEAK_GEMM_S='nan' is not a number of seconds",
        folder="failed", env={"CHIPBENCH_CPU_PEAK_GEMM_S": "nan"}),
    Row("output-is-file", RUN, "is a file, not a folder", folder="exists",
        setup=lambda p, m: p.out.write_text("x")),
    Row("output-under-file", ["run", "retinanet", "--output", "{tmp}/f/run"] + TINY,
        "which is a file", setup=write("f", "x")),
    Row("output-holds-run", RUN, "already holds a run", folder="exists", setup=run_dir_output),
    Row("output-permission", RUN, "permission denied", setup=deny(errno.EACCES)),
    Row("output-read-only", RUN, "read-only file system", setup=deny(errno.EROFS)),
    Row("output-disk-full", RUN, "no space left on device", setup=deny(errno.ENOSPC)),
    # cache
    Row("cache-is-file", RUN + ["--set", "data.synthetic.seed=7"], "cannot write the data cache",
        folder="failed", setup=write("c", "x"), env={"CHIPBENCH_CACHE": "{tmp}/c"}),
    Row("cache-under-file", RUN + ["--set", "data.synthetic.seed=7"], "CHIPBENCH_CACHE",
        folder="failed", setup=write("c", "x"), env={"CHIPBENCH_CACHE": "{tmp}/c/sub"}),
    Row("cache-home-not-writable", RUN + ["--set", "data.synthetic.seed=7"],
        "cannot write the data cache", folder="failed", setup=home_under_file),
    Row("cache-permission", RUN + ["--set", "data.synthetic.seed=7"], "cannot write the data "
        "cache", folder="failed", setup=deny(errno.EACCES, "{tmp}/cache"),
        env={"CHIPBENCH_CACHE": "{tmp}/cache"}),
    # weights
    Row("weights-missing", RUN + ["--set", "model.backbone_weights={tmp}/none.pth"],
        "does not exist", folder="failed"),
    Row("weights-device", RUN + ["--set", "model.backbone_weights=/dev/zero"],
        "backbone weights /dev/zero is not a regular file", folder="failed"),
    Row("weights-name-too-long", RUN + ["--set", "model.backbone_weights={tmp}/" + "w" * 5000],
        "cannot read backbone weights file", folder="failed"),
    Row("weights-garbage", RUN + ["--set", "model.backbone_weights={tmp}/w.pth"],
        "cannot be loaded", folder="failed", setup=weights("garbage")),
    Row("weights-pickle-payload", RUN + ["--set", "model.backbone_weights=file://{tmp}/w.pth"],
        "cannot be loaded", folder="failed", setup=weights("payload"), check=marker_absent),
    Row("weights-hash-mismatch",
        RUN + ["--set", "model.backbone_weights={tmp}/resnet50-deadbeef.pth"],
        "do not match the SHA-256 prefix", folder="failed", setup=weights("hash")),
    Row("weights-cache-not-writable", RUN + ["--set", "model.backbone_weights=imagenet"],
        "cannot write the weights cache", folder="failed", setup=write("t", "x"),
        env={"TORCH_HOME": "{tmp}/t"}),
    # resume
    Row("resume-missing-folder", ["run", "--resume", "{tmp}/nowhere"], "is not a run folder"),
    Row("resume-a-file", ["run", "--resume", "{tmp}/f"], "(a file)", setup=write("f", "x")),
    Row("resume-no-spec", RESUME, "no spec.json", folder="unchanged",
        setup=lambda p, m: (p.run / "spec.json").unlink()),
    Row("resume-spec-truncated", RESUME, "spec.json is unreadable", folder="unchanged",
        setup=spec_text("{\"case\": \"retinanet\", \"con")),
    Row("resume-spec-not-mapping", RESUME, "lacks a valid case", folder="unchanged",
        setup=spec_text("[1, 2]")),
    Row("resume-spec-no-config", RESUME, "lacks a valid config", folder="unchanged",
        setup=edit_spec(lambda s: s.pop("config"))),
    Row("resume-spec-lr-negative", RESUME, "train.lr must be positive, not -1.0 (in",
        folder="unchanged", setup=edit_spec(lambda s: s["config"]["train"].update(lr=-1))),
    Row("resume-checkpoint-other-model", RESUME, "does not fit this run (RuntimeError: Error(s) "
        "in loading state_dict for RetinaNet: Missing key(s)", folder="failed",
        setup=checkpoint_of_another_model, check=epochs_kept),
    Row("resume-result-e2e-text", RESUME, "result.json: metrics.e2e_time is 'x', not a finite",
        folder="unchanged", setup=edit_result(lambda r: r["metrics"].update(e2e_time="x"))),
    Row("resume-result-metrics-list", RESUME, "result.json: metrics is [1], not a dict",
        folder="unchanged", setup=edit_result(lambda r: r.update(metrics=[1]))),
    Row("resume-spec-lr-nan", RESUME, "must be a finite number", folder="unchanged",
        setup=edit_spec(lambda s: s["config"]["train"].update(lr=float("nan")))),
    Row("resume-spec-bad-type", RESUME, "must be an integer", folder="unchanged",
        setup=edit_spec(lambda s: s["config"]["train"].update(batch_size="4"))),
    Row("resume-spec-unknown-key", RESUME, "unknown config key", folder="unchanged",
        setup=edit_spec(lambda s: s["config"]["train"].update(sneaky=1))),
    Row("resume-spec-bad-topology", RESUME, "bad topology", folder="unchanged",
        setup=edit_spec(lambda s: s["topology"].update(bogus=1))),
    Row("resume-no-checkpoint", RESUME, "has no checkpoint", folder="unchanged",
        setup=lambda p, m: (p.run / "checkpoints" / "last.pt").unlink()),
    Row("resume-checkpoint-truncated", RESUME, "is unreadable", folder="unchanged",
        setup=checkpoint("truncated")),
    Row("resume-checkpoint-garbage", RESUME, "is unreadable", folder="unchanged",
        setup=checkpoint("garbage")),
    Row("resume-checkpoint-pickle-payload", RESUME, "refused unloaded", folder="unchanged",
        setup=checkpoint("payload"), check=marker_absent),
    Row("resume-checkpoint-foreign", RESUME, "not a chipbench checkpoint", folder="unchanged",
        setup=checkpoint("foreign")),
    Row("resume-with-set", RESUME + ["--set", "train.lr=1"], "--set cannot be combined",
        folder="unchanged"),
    Row("resume-with-precision", RESUME + ["--precision", "amp"], "--precision cannot be",
        folder="unchanged"),
    Row("resume-with-data-dir", RESUME + ["--data-dir", "{tmp}"], "--data-dir cannot be",
        folder="unchanged"),
    Row("resume-with-output", RESUME + ["--output", "{out}"], "--output cannot be",
        folder="unchanged"),
    Row("resume-with-case", ["run", "retinanet", "--resume", "{run}"], "a case cannot be",
        folder="unchanged"),
    Row("resume-with-config-and-nproc", RESUME + ["--config", "x", "--nproc-per-node", "2"],
        "--config, --nproc-per-node cannot be", folder="unchanged"),
    Row("resume-other-vendor", RESUME + ["--vendor", "fakechip"], "was run on vendor 'cpu'",
        folder="unchanged"),
    Row("resume-finished-run", RESUME, "nothing to resume", code=0, folder="unchanged",
        setup=lambda p, m: finish(p.run)),
    # environment
    Row("env-vendor-unknown", RUN[:4], "unknown vendor 'nosuchchip'",
        env={"CHIPBENCH_VENDOR": "nosuchchip"}),
    Row("env-vendor-unavailable", RUN[:4], "vendor 'metax' is not available",
        env={"CHIPBENCH_VENDOR": "metax"}),
    # signals (subprocess)
    # the signalled runs could go on for 500 epochs: the signal always finds them running
    Row("signal-sigterm-after-an-epoch", RUN + ["--set", "train.max_iters=0",
                                                "--set", "data.synthetic.train_images=4",
                                                "--set", "train.epochs=500"],
        "interrupted (SIGTERM)", code=143, folder="interrupted", signal_after="epoch 0 recorded",
        check=epochs_kept),
    Row("signal-sigint-before-training", RUN + ["--set", "train.max_iters=0",
                                                "--set", "train.epochs=500"],
        "interrupted", code=130, folder="interrupted", signal_after="worker pid"),
    Row("signal-sighup-before-training", RUN + ["--set", "train.max_iters=0",
                                                "--set", "train.epochs=500"],
        "interrupted (SIGHUP)", code=129, folder="interrupted", signal_after="worker pid"),
]


def finish(run_dir: Path) -> None:
    path = run_dir / "result.json"
    result = json.loads(path.read_text())
    result["status"] = "finished"
    path.write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------
# fixtures and the test
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory) -> Path:
    from chipbench.cases.retinanet.synthetic import ensure_synthetic_coco

    return ensure_synthetic_coco(8, 4, 64, 0, cache_root=tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def resumable_run(tmp_path_factory) -> Path:
    """A tiny run with one epoch and its checkpoint, left as if it had been interrupted."""
    run_dir = tmp_path_factory.mktemp("resumable") / "run"
    assert main(["run", "retinanet", "--output", str(run_dir)] + TINY) == 0
    path = run_dir / "result.json"
    result = json.loads(path.read_text())
    result["status"] = "interrupted"
    path.write_text(json.dumps(result))
    return run_dir


def copy_run(source: Path, target: Path) -> None:
    """Copy a run folder; the big checkpoint is hard-linked (rows replace it, never edit it)."""
    shutil.copytree(str(source), str(target),
                    copy_function=lambda s, d: os.link(s, d) if s.endswith(".pt")
                    else shutil.copy2(s, d))


def snapshot(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_with_signal(row: Row, args: List[str], env: Dict[str, str]) -> Any:
    full = dict(os.environ, **env)
    proc = subprocess.Popen([sys.executable, "-m", "chipbench"] + args, cwd=str(ROOT), env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    lines = []
    deadline = time.time() + 240
    for line in proc.stderr:
        lines.append(line)
        if row.signal_after in line:
            proc.send_signal({143: signal.SIGTERM, 129: signal.SIGHUP}.get(row.code,
                                                                           signal.SIGINT))
            break
        assert time.time() < deadline, "".join(lines)
    _, rest = proc.communicate(timeout=120)
    return proc.returncode, "".join(lines) + rest


TRAINS = {"signal-sigterm-after-an-epoch", "data-invalid-boxes-counted"}
"""Rows that train (an iteration or an epoch): marked slow; every other row fails before."""


@pytest.mark.parametrize("row", [pytest.param(r, marks=pytest.mark.slow) if r.id in TRAINS else r
                                 for r in ROWS], ids=[r.id for r in ROWS])
def test_bad_input(row: Row, tmp_path, monkeypatch, capsys, request) -> None:
    needs = " ".join(row.args) + json.dumps(row.env or {})
    coco = tmp_path / "coco"
    run_dir = tmp_path / "resume"
    paths = Paths(tmp=tmp_path, out=tmp_path / "out", coco=coco, run=run_dir,
                  marker=tmp_path / "PAYLOAD-RAN")
    if "{coco}" in needs:
        shutil.copytree(str(request.getfixturevalue("tiny_coco")), str(coco))
    if "{run}" in needs:
        copy_run(request.getfixturevalue("resumable_run"), run_dir)
    monkeypatch.chdir(tmp_path)
    env = {k: v.format(**paths._asdict()) for k, v in (row.env or {}).items()}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if row.setup is not None:
        row.setup(paths, monkeypatch)
    before = snapshot(run_dir) if run_dir.is_dir() else None
    args = [a.format(**paths._asdict()) for a in row.args]

    if row.signal_after:
        code, err = run_with_signal(row, args, env)
    else:
        code = main(args)
        err = capsys.readouterr().err

    assert code == row.code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if row.code == 2:
        assert len(errors) == 1, err
        assert row.fragment in errors[0], errors[0]
        assert "; " in errors[0], "no fix given: " + errors[0]
    else:
        assert not errors, err
        assert any(row.fragment in line for line in lines), err

    result_file = (paths.run if "--resume" in row.args else paths.out) / "result.json"
    if row.folder == "none":
        assert not paths.out.exists() or not any(paths.out.iterdir())
    elif row.folder in ("failed", "finished", "interrupted"):
        result = json.loads(result_file.read_text())
        assert result["status"] == row.folder, result
        if row.folder == "failed":
            assert row.fragment in result["error"]
    elif row.folder == "unchanged":
        assert snapshot(run_dir) == before
    if row.check is not None:
        row.check(paths)


def test_table_size() -> None:
    assert len({r.id for r in ROWS}) == len(ROWS) >= 60
