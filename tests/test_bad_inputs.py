"""Bad inputs: careless or hostile input to ``core``, one short row each, in tables by how
``core`` meets it.

- ``REFUSED``: ``core`` refuses before it makes a run folder, and leaves everything in the
  working folder as it was (an output folder that is not empty, a file where the output goes).
- ``RESUME_REFUSED``: ``core run --resume`` refuses, and the interrupted run stays byte-identical.
- ``FAILED``: the run folder is made, and its result.json says ``failed`` with the error.
- ``SIGNALS``: a run in a child process gets a signal; its result.json says ``interrupted``.

A refusal or failure is exactly one ``error: <problem>; <fix>`` line on stderr, exit code 2, no
traceback. Rows run in-process through ``chipbench.cli.main``, signals in a subprocess.

What a row's fields mean (``Row``; ``SignalRow`` the same less setup and env):

- ``id``: the test id.
- ``args``: the command line. ``{tmp}`` in it is the test's own folder (also the working folder),
  ``{out}`` the output folder the command is given (``{tmp}/out``), ``{coco}`` a copy of the tiny
  COCO data set, ``{run}`` a copy of an interrupted tiny run (one epoch, with its checkpoint).
  ``RUN``, ``DATA`` (``RUN`` on ``{coco}``) and ``RESUME`` are the common beginnings.
- ``fragment``: a part of the error line (of result.json's error too, for ``FAILED``).
- ``setup``: ``setup(paths, monkeypatch)`` makes the bad input before the command runs.
- ``env``: environment variables for the command (``{tmp}`` etc. as in ``args``).
- ``check``: ``check(paths)``, a property the row asserts beyond its table's.
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
from tests.conftest import ROOT, copy_run, default_sigint

TINY = ["--vendor", "cpu", "--set", "data.synthetic.train_images=8",
        "--set", "data.synthetic.val_images=4", "--set", "data.synthetic.image_size=64",
        "--set", "train.max_iters=1", "--set", "run.monitor_interval_s=0.2",
        "--set", "data.num_workers=0", "--set", "model.min_size=64", "--set", "model.max_size=64"]
RUN = ["run", "retinanet", "--output", "{out}"] + TINY
DATA = RUN + ["--data-dir", "{coco}", "--set", "model.backbone_weights=none",
              "--set", "model.min_size=64", "--set", "model.max_size=64",
              "--set", "train.batch_size=2"]
RESUME = ["run", "--resume", "{run}"]


class Paths(NamedTuple):
    tmp: Path
    out: Path
    coco: Path
    run: Path
    marker: Path


Setup = Callable[[Paths, Any], None]


class Row(NamedTuple):
    id: str
    args: List[str]
    fragment: str
    setup: Optional[Setup] = None
    env: Optional[Dict[str, str]] = None
    check: Optional[Callable[[Paths], None]] = None


class SignalRow(NamedTuple):
    id: str
    args: List[str]
    send: signal.Signals
    after: str
    """The signal is sent once stderr shows this text."""
    fragment: str
    check: Optional[Callable[[Paths], None]] = None


class Evil:
    """A pickle payload: loading it with plain pickle would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, ("touch '{}'".format(self.marker),))


# --------------------------------------------------------------------------------------------------
# setups
# --------------------------------------------------------------------------------------------------


def write(name: str, text: str) -> Setup:
    def setup(p: Paths, monkeypatch: Any) -> None:
        (p.tmp / name).write_text(text)
    return setup


def coco_edit(split: str, edit: Callable[[Dict[str, Any]], Any]) -> Setup:
    """Change one annotation file of the row's copy of the tiny COCO folder."""
    def setup(p: Paths, monkeypatch: Any) -> None:
        path = p.coco / "annotations" / "instances_{}2017.json".format(split)
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return setup


def coco_set(split: str, section: str, index: int, key: str, value: Any) -> Setup:
    """Set ``key`` of item ``index`` of ``section`` (images, annotations) in one split."""
    return coco_edit(split, lambda d: d[section][index].__setitem__(key, value))


def coco_pop(split: str, section: str, index: int, key: str) -> Setup:
    """Remove ``key`` from item ``index`` of ``section`` in one split."""
    return coco_edit(split, lambda d: d[section][index].pop(key))


def coco_replace(split: str, text: str) -> Setup:
    def setup(p: Paths, monkeypatch: Any) -> None:
        (p.coco / "annotations" / "instances_{}2017.json".format(split)).write_text(text)
    return setup


def bad_boxes(data: Dict[str, Any]) -> None:
    anns = data["annotations"]
    anns[0]["bbox"] = [float("nan"), 1, 10, 10]
    anns[1]["bbox"] = [5, 5, -8, 10]
    anns[2]["bbox"] = [1000, 1000, 10, 10]


def remove_image(p: Paths, monkeypatch: Any) -> None:
    sorted((p.coco / "train2017").iterdir())[0].unlink()


def checkpoint_of_another_model(p: Paths, monkeypatch: Any) -> None:
    from chipbench.run import checkpoints as checkpoint

    path = p.run / "checkpoints" / "last.pt"
    state = checkpoint.load(path)
    state["model"].pop(next(iter(state["model"])))  # a parameter this model has, missing
    path.unlink()  # a hard link to the shared checkpoint: never write through it
    checkpoint.save(state, path)


def edit_json(name: str, edit: Callable[[Dict[str, Any]], None]) -> Setup:
    """Change ``name`` (spec.json, result.json) of the row's copy of the resumable run."""
    def setup(p: Paths, monkeypatch: Any) -> None:
        path = p.run / name
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return setup


def edit_spec(edit: Callable[[Dict[str, Any]], None]) -> Setup:
    return edit_json("spec.json", edit)


def edit_train(**values: Any) -> Setup:
    """Set ``values`` in spec.json's ``config.train``."""
    return edit_spec(lambda s: s["config"]["train"].update(values))


def edit_result(edit: Callable[[Dict[str, Any]], None]) -> Setup:
    return edit_json("result.json", edit)


def spec_text(text: str) -> Setup:
    def setup(p: Paths, monkeypatch: Any) -> None:
        (p.run / "spec.json").write_text(text)
    return setup


def checkpoint(kind: str) -> Setup:
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


def weights(kind: str) -> Setup:
    def setup(p: Paths, monkeypatch: Any) -> None:
        import torch

        if kind == "payload":
            torch.save({"conv1.weight": Evil(p.marker)}, str(p.tmp / "w.pth"))
        elif kind == "garbage":
            (p.tmp / "w.pth").write_bytes(b"\x00garbage" * 100)
        elif kind == "hash":
            (p.tmp / "resnet50-deadbeef.pth").write_bytes(b"x")
    return setup


def deny(err: int, under: str = "{out}") -> Setup:
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


def output_holding(*names: str, text: str = "mine") -> Setup:
    """An output folder that already holds files ``names``."""
    def setup(p: Paths, monkeypatch: Any) -> None:
        p.out.mkdir()
        for name in names:
            (p.out / name).write_text(text)
    return setup


def yaml_alias_bomb() -> str:
    """Six nested anchors of ten aliases each: 10**6 scalars when expanded."""
    return "train:\n  lr:\n    - &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        "    - &{0} [{1}]\n".format(n, ", ".join(["*" + p] * 10)) for n, p in zip("bcdef", "abcde"))


def mark_finished(p: Paths, monkeypatch: Any) -> None:
    edit_result(lambda r: r.update(status="finished"))(p, monkeypatch)


# --------------------------------------------------------------------------------------------------
# checks beyond a table's own
# --------------------------------------------------------------------------------------------------


def marker_absent(p: Paths) -> None:
    assert not p.marker.exists(), "the pickle payload ran"


def epochs_kept(p: Paths) -> None:
    folder = p.run if p.run.is_dir() else p.out  # a resume, or a new run
    result = json.loads((folder / "result.json").read_text())
    assert len(result["epochs"]) >= 1 and (folder / "checkpoints" / "last.pt").is_file()


# --------------------------------------------------------------------------------------------------
# the tables
# --------------------------------------------------------------------------------------------------

DIGITS_400 = "9" * 400
REFUSED = [
    # the command line
    Row("cli-no-command", [], "no command given"),
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
    Row("cli-nproc-huge", RUN + ["--nproc-per-node", "100000"], "--nproc-per-node 100000 is more "
        "than 1024"),
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
    # environment
    Row("env-detect-timeout-word", ["vendors"], "CHIPBENCH_DETECT_TIMEOUT_S='soon' is not a "
        "number of seconds in 0.1..3600", env={"CHIPBENCH_DETECT_TIMEOUT_S": "soon"}),
    Row("env-detect-timeout-zero", ["vendors"], "CHIPBENCH_DETECT_TIMEOUT_S='1e-300' is not a "
        "number of seconds in 0.1..3600", env={"CHIPBENCH_DETECT_TIMEOUT_S": "1e-300"}),
    Row("env-strict-plugins-2", ["vendors"], "CHIPBENCH_STRICT_PLUGINS='2' is neither on nor off",
        env={"CHIPBENCH_STRICT_PLUGINS": "2"}),
    Row("env-vendor-unknown", RUN[:4], "unknown vendor 'nosuchchip'",
        env={"CHIPBENCH_VENDOR": "nosuchchip"}),
    Row("env-vendor-unavailable", RUN[:4], "vendor 'metax' is not available",
        env={"CHIPBENCH_VENDOR": "metax"}),
    # --set values
    Row("config-num-workers-huge", RUN + ["--set", "data.num_workers=9223372036854775807"],
        "data.num_workers must be a count in 0..1024 or null"),
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
    Row("config-eval-backend", RUN + ["--set", "eval.backend=foo"], "eval.backend"),
    Row("config-image-size", RUN + ["--set", "data.synthetic.image_size=8"],
        "between 32 and 4096, not 8"),
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
    Row("config-lr-huge-integer", RUN + ["--set", "train.lr=" + DIGITS_400], "is out of range"),
    Row("config-batch-5000-digits", RUN + ["--set", "train.batch_size=" + "9" * 5000],
        "must be an integer, not '99999"),
    Row("config-min-size-tiny", RUN + ["--set", "model.min_size=8", "--set", "model.max_size=8"],
        "model.min_size must lie between 64"),
    Row("config-monitor-interval-huge", RUN + ["--set", "run.monitor_interval_s=1e10"],
        "run.monitor_interval_s must lie between"),
    Row("config-set-duplicate-key", RUN + ["--set", "train={{lr: -1, lr: 0.02}}"],
        "sets key 'lr' twice"),
    Row("config-set-timestamp", RUN + ["--set", "data.dir=2024-01-01"],
        "config key 'data.dir' in --set holds a date (datetime.date(2024, 1, 1))"),
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
    Row("config-group-factor-huge",
        RUN + ["--set", "data.aspect_ratio_group_factor=1000000000000"],
        "data.aspect_ratio_group_factor"),
    # --config files
    Row("config-file-control-character", RUN + ["--config", "{tmp}/ctl.yaml"],
        "character 0x01 at offset 13 is not allowed", write("ctl.yaml", "train:\n  lr: \x01\n")),
    Row("config-alias-bomb", RUN + ["--config", "{tmp}/bomb.yaml"],
        "must be a number, not [['x', 'x'", write("bomb.yaml", yaml_alias_bomb())),
    Row("config-file-not-utf8", RUN + ["--config", "{tmp}/elf.yaml"], "is not UTF-8 text",
        lambda p, mp: (p.tmp / "elf.yaml").write_bytes(b"\x7fELF\x02\x01\xff\xfe" * 8)),
    Row("config-file-missing", RUN + ["--config", "nosuch"], "config 'nosuch' not found"),
    Row("config-file-duplicate", RUN + ["--config", "{tmp}/dup.yaml"], "sets key 'lr' twice",
        write("dup.yaml", "train:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n")),
    Row("config-file-duplicate-section", RUN + ["--config", "{tmp}/dup2.yaml"],
        "sets key 'train' twice", write("dup2.yaml", "train:\n  lr: 0.1\ntrain:\n  lr: 1\n")),
    Row("config-file-broken", RUN + ["--config", "{tmp}/bad.yaml"], "not valid YAML",
        write("bad.yaml", "train:\n  lr: [1\n")),
    Row("config-file-list", RUN + ["--config", "{tmp}/list.yaml"], "must be a mapping",
        write("list.yaml", "- 1\n- 2\n")),
    Row("config-file-nan", RUN + ["--config", "{tmp}/nan.yaml"], "must be a finite number",
        write("nan.yaml", "train:\n  lr: .nan\n")),
    Row("config-file-binary", RUN + ["--config", "{tmp}/b.yaml"],
        "b.yaml holds a bytes (b'hello')", write("b.yaml", "data:\n  dir: !!binary aGVsbG8=\n")),
    Row("config-file-integer-key", RUN + ["--config", "{tmp}/i.yaml"],
        "has key 1 under 'train', which is not a name", write("i.yaml", "train:\n  1: 2\n")),
    Row("config-file-dotted-key", RUN + ["--config", "{tmp}/d.yaml"],
        "has key 'train.lr' under 'the top level', which is not a name",
        write("d.yaml", "train.lr: 0.1\n")),
    Row("config-file-deep-list", RUN + ["--config", "{tmp}/deep.yaml"], "nests too deeply to read",
        write("deep.yaml", "train: " + "[" * 100000 + "]" * 100000 + "\n")),
    Row("config-file-is-a-folder", RUN + ["--config", "{tmp}"], "is a folder; give a YAML file"),
    Row("config-file-unknown-key", RUN + ["--config", "{tmp}/k.yaml"], "unknown config key",
        write("k.yaml", "trian:\n  lr: 1\n")),
    # the output folder: what is there stays as it was
    Row("output-not-empty", RUN, "is not empty (it holds notes.txt, report.md)",
        output_holding("report.md", "notes.txt")),
    Row("output-stale-progress", RUN, "is not empty (it holds progress.json)", output_holding(
        "progress.json", text='{"metrics": {"mAP": 0.99, "converged": true, "p_core": 999.0}}')),
    Row("output-holds-run", RUN, "already holds a run", output_holding("result.json", text="{}")),
    Row("output-is-file", RUN, "is a file, not a folder", write("out", "x")),
    Row("output-under-file", ["run", "retinanet", "--output", "{tmp}/f/run"] + TINY,
        "which is a file", write("f", "x")),
    Row("output-symlink-loop", ["run", "retinanet", "--output", "{tmp}/loop"] + TINY,
        "a symbolic link on the path loops",
        lambda p, m: os.symlink(str(p.tmp / "loop"), str(p.tmp / "loop"))),
    Row("output-permission", RUN, "permission denied", deny(errno.EACCES)),
    Row("output-read-only", RUN, "read-only file system", deny(errno.EROFS)),
    Row("output-disk-full", RUN, "no space left on device", deny(errno.ENOSPC)),
    # --resume of what is not a run
    Row("resume-missing-folder", ["run", "--resume", "{tmp}/nowhere"], "is not a run folder"),
    Row("resume-a-file", ["run", "--resume", "{tmp}/f"], "(a file)", write("f", "x")),
]

RESUME_REFUSED = [
    Row("resume-no-spec", RESUME, "no spec.json", lambda p, m: (p.run / "spec.json").unlink()),
    Row("resume-spec-truncated", RESUME, "spec.json is unreadable",
        spec_text("{\"case\": \"retinanet\", \"con")),
    Row("resume-spec-not-mapping", RESUME, "lacks a valid case", spec_text("[1, 2]")),
    Row("resume-spec-no-config", RESUME, "lacks a valid config",
        edit_spec(lambda s: s.pop("config"))),
    Row("resume-spec-lr-negative", RESUME, "train.lr must be positive, not -1.0 (in",
        edit_train(lr=-1)),
    Row("resume-spec-lr-nan", RESUME, "must be a finite number", edit_train(lr=float("nan"))),
    Row("resume-spec-bad-type", RESUME, "must be an integer", edit_train(batch_size="4")),
    Row("resume-spec-unknown-key", RESUME, "unknown config key", edit_train(sneaky=1)),
    Row("resume-spec-bad-topology", RESUME, "bad topology",
        edit_spec(lambda s: s["topology"].update(bogus=1))),
    Row("resume-result-e2e-text", RESUME, "result.json: metrics.e2e_time is 'x', not a finite",
        edit_result(lambda r: r["metrics"].update(e2e_time="x"))),
    Row("resume-result-metrics-list", RESUME, "result.json: metrics is [1], not a dict",
        edit_result(lambda r: r.update(metrics=[1]))),
    Row("resume-no-checkpoint", RESUME, "has no checkpoint",
        lambda p, m: (p.run / "checkpoints" / "last.pt").unlink()),
    Row("resume-checkpoint-truncated", RESUME, "is unreadable", checkpoint("truncated")),
    Row("resume-checkpoint-garbage", RESUME, "is unreadable", checkpoint("garbage")),
    Row("resume-checkpoint-pickle-payload", RESUME, "refused unloaded", checkpoint("payload"),
        check=marker_absent),
    Row("resume-checkpoint-foreign", RESUME, "not a chipbench checkpoint", checkpoint("foreign")),
    Row("resume-with-set", RESUME + ["--set", "train.lr=1"], "--set cannot be combined"),
    Row("resume-with-precision", RESUME + ["--precision", "amp"], "--precision cannot be"),
    Row("resume-with-data-dir", RESUME + ["--data-dir", "{tmp}"], "--data-dir cannot be"),
    Row("resume-with-output", RESUME + ["--output", "{out}"], "--output cannot be"),
    Row("resume-with-case", ["run", "retinanet", "--resume", "{run}"], "a case cannot be"),
    Row("resume-with-config-and-nproc", RESUME + ["--config", "x", "--nproc-per-node", "2"],
        "--config, --nproc-per-node cannot be"),
    Row("resume-other-vendor", RESUME + ["--vendor", "fakechip"], "was run on vendor 'cpu'"),
]

FAILED = [
    # configs that only the data or the first batch can refute
    Row("config-batch-larger-than-data", RUN + ["--set", "train.batch_size=1000000000000"],
        "larger than the 8 usable training image(s)"),
    Row("config-input-too-large-to-allocate",
        RUN + ["--set", "model.min_size=100000", "--set", "model.max_size=100000"],
        "cannot allocate memory for batches of 4 image(s) resized to 100000-100000 px"),
    Row("env-peak-gemm-nan", RUN, "CHIPBENCH_CPU_PEAK_GEMM_S='nan' is not a number of seconds",
        env={"CHIPBENCH_CPU_PEAK_GEMM_S": "nan"}),
    # the data folder
    Row("data-dir-missing", RUN + ["--data-dir", "{tmp}/nowhere"], "does not exist"),
    Row("data-dir-is-file", RUN + ["--data-dir", "{tmp}/f"], "is a file, not a folder",
        write("f", "x")),
    Row("data-dir-name-too-long", RUN + ["--data-dir", "{tmp}/" + "a" * 5000],
        "(File name too long)"),
    Row("data-no-train-folder", DATA, "has no train2017/ image folder",
        lambda p, m: shutil.rmtree(str(p.coco / "train2017"))),
    Row("data-no-annotations", DATA, "has no annotations/instances_val2017.json",
        lambda p, m: (p.coco / "annotations" / "instances_val2017.json").unlink()),
    Row("data-image-file-missing", DATA, "are missing from", remove_image),
    # COCO annotation files
    Row("data-json-broken", DATA, "is not valid JSON", coco_replace("train", "{\"images\": [")),
    Row("data-json-deeply-nested", DATA, "is not valid JSON",
        coco_replace("train", "[" * 200000 + "]" * 200000)),
    Row("data-json-list", DATA, "not a COCO instances mapping", coco_replace("train", "[1, 2]")),
    Row("data-no-categories", DATA, "lacks categories",
        coco_edit("val", lambda d: d.pop("categories"))),
    Row("data-category-unknown", DATA, "annotation 1 in instances_train2017.json has "
        "category_id 99", coco_set("train", "annotations", 0, "category_id", 99)),
    Row("data-category-missing", DATA, "has category_id None",
        coco_pop("val", "annotations", 0, "category_id")),
    Row("data-annotation-of-unknown-image", DATA, "annotation 1 in instances_val2017.json has "
        "image_id 9999, which is not among its images",
        coco_set("val", "annotations", 0, "image_id", 9999)),
    Row("data-file-name-nul", DATA, "has file_name 'a\\x00b.jpg', not a file name (it holds a "
        "control character)", coco_set("train", "images", 0, "file_name", "a\x00b.jpg")),
    Row("data-iscrowd-missing", DATA, "annotation 1 in instances_train2017.json has iscrowd "
        "None, not 0 or 1", coco_pop("train", "annotations", 0, "iscrowd")),
    Row("data-image-width-huge-integer", DATA, "image 3 in instances_train2017.json has width "
        "1.0000e+400 (an integer of 401 digits)", coco_set("train", "images", 2, "width", 10**400)),
    Row("data-image-width-zero", DATA, "image 3 in instances_train2017.json has width 0",
        coco_set("train", "images", 2, "width", 0)),
    Row("data-image-height-missing", DATA, "image 1 in instances_val2017.json has width 64 and "
        "height None", coco_pop("val", "images", 0, "height")),
    Row("data-val-empty", DATA, "instances_val2017.json lists no images",
        coco_edit("val", lambda d: d.update(images=[], annotations=[]))),
    Row("data-train-unannotated", DATA, "no image in",
        coco_edit("train", lambda d: d.update(annotations=[]))),
    Row("data-annotations-null", DATA, "has annotations None, not a list",
        coco_edit("train", lambda d: d.update(annotations=None))),
    Row("data-category-id-list", DATA, "has category_id [1], not a non-negative integer",
        coco_set("train", "annotations", 0, "category_id", [1])),
    Row("data-image-id-list", DATA, "has image_id [1], not a non-negative integer",
        coco_set("val", "annotations", 0, "image_id", [1])),
    Row("data-file-name-missing", DATA, "image 1 in instances_val2017.json has file_name None",
        coco_pop("val", "images", 0, "file_name")),
    Row("data-file-name-number", DATA, "has file_name 5, not a file name",
        coco_set("train", "images", 0, "file_name", 5)),
    Row("data-ids-as-text", DATA, "has id '1', not a non-negative integer",
        coco_set("val", "images", 0, "id", "1")),
    Row("data-image-id-twice", DATA, "image id 1 appears twice in instances_val2017.json",
        coco_set("val", "images", 1, "id", 1)),
    Row("data-category-id-huge", DATA, "category id 1000000000 in instances_train2017.json is "
        "over", coco_edit("train", lambda d: d["categories"].append({"id": 10**9, "name": "x"}))),
    # the synthetic data's cache
    Row("cache-is-file", RUN + ["--set", "data.synthetic.seed=7"], "cannot write the data cache",
        write("c", "x"), env={"CHIPBENCH_CACHE": "{tmp}/c"}),
    Row("cache-under-file", RUN + ["--set", "data.synthetic.seed=7"], "CHIPBENCH_CACHE",
        write("c", "x"), env={"CHIPBENCH_CACHE": "{tmp}/c/sub"}),
    Row("cache-home-not-writable", RUN + ["--set", "data.synthetic.seed=7"],
        "cannot write the data cache", home_under_file),
    Row("cache-permission", RUN + ["--set", "data.synthetic.seed=7"], "cannot write the data "
        "cache", deny(errno.EACCES, "{tmp}/cache"), env={"CHIPBENCH_CACHE": "{tmp}/cache"}),
    # backbone weights
    Row("weights-empty", RUN + ["--set", "model.backbone_weights="],
        "model.backbone_weights is empty"),
    Row("weights-folder", RUN + ["--set", "model.backbone_weights={tmp}"],
        "is a folder, not a file"),
    Row("weights-missing", RUN + ["--set", "model.backbone_weights={tmp}/none.pth"],
        "does not exist"),
    Row("weights-device", RUN + ["--set", "model.backbone_weights=/dev/zero"],
        "backbone weights /dev/zero is not a regular file"),
    Row("weights-name-too-long", RUN + ["--set", "model.backbone_weights={tmp}/" + "w" * 5000],
        "cannot read backbone weights file"),
    Row("weights-garbage", RUN + ["--set", "model.backbone_weights={tmp}/w.pth"],
        "cannot be loaded", weights("garbage")),
    Row("weights-pickle-payload", RUN + ["--set", "model.backbone_weights=file://{tmp}/w.pth"],
        "cannot be loaded", weights("payload"), check=marker_absent),
    Row("weights-hash-mismatch",
        RUN + ["--set", "model.backbone_weights={tmp}/resnet50-deadbeef.pth"],
        "do not match the SHA-256 prefix", weights("hash")),
    Row("weights-cache-not-writable", RUN + ["--set", "model.backbone_weights=imagenet"],
        "cannot write the weights cache", write("t", "x"), env={"TORCH_HOME": "{tmp}/t"}),
    # a resumed run whose checkpoint does not fit: the run fails, its epochs stay
    Row("resume-checkpoint-other-model", RESUME, "does not fit this run (RuntimeError: Error(s) "
        "in loading state_dict for RetinaNet: Missing key(s)", checkpoint_of_another_model,
        check=epochs_kept),
]

# the signalled runs could go on for 500 epochs: the signal always finds them running
LONG = RUN + ["--set", "train.max_iters=0", "--set", "train.epochs=500"]
SIGNALS = [
    SignalRow("signal-sigterm-after-an-epoch", LONG + ["--set", "data.synthetic.train_images=4"],
              signal.SIGTERM, "epoch 0 recorded", "interrupted (SIGTERM)", check=epochs_kept),
    SignalRow("signal-sigint-before-training", LONG, signal.SIGINT, "worker pid", "interrupted"),
    SignalRow("signal-sighup-before-training", LONG, signal.SIGHUP, "worker pid",
              "interrupted (SIGHUP)"),
]
SLOW = {"signal-sigterm-after-an-epoch"}
"""Rows that train an epoch: marked slow (every other row stops before training)."""


# --------------------------------------------------------------------------------------------------
# fixtures and the tests
# --------------------------------------------------------------------------------------------------


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


def tree_state(root: Path) -> Dict[str, str]:
    """Every entry under ``root`` (links not followed): a file's SHA-256, a link's target, or
    that it is a folder."""
    state = {}
    for folder, dirs, files in os.walk(str(root)):
        for name in dirs + files:
            path = os.path.join(folder, name)
            key = os.path.relpath(path, str(root))
            if os.path.islink(path):
                state[key] = "link to " + os.readlink(path)
            elif os.path.isdir(path):
                state[key] = "folder"
            else:
                with open(path, "rb") as handle:
                    state[key] = hashlib.sha256(handle.read()).hexdigest()
    return state


def paths_for(tmp_path: Path) -> Paths:
    return Paths(tmp=tmp_path, out=tmp_path / "out", coco=tmp_path / "coco",
                 run=tmp_path / "resume", marker=tmp_path / "PAYLOAD-RAN")


def prepare(row: Any, paths: Paths, monkeypatch: Any, request: Any) -> List[str]:
    """Make the row's paths, environment and bad input; its command line, formatted."""
    needs = " ".join(row.args)
    if "{coco}" in needs:
        shutil.copytree(str(request.getfixturevalue("tiny_data")), str(paths.coco))
    if "{run}" in needs:
        copy_run(request.getfixturevalue("resumable_run"), paths.run)
    monkeypatch.chdir(paths.tmp)
    for key, value in (getattr(row, "env", None) or {}).items():
        monkeypatch.setenv(key, value.format(**paths._asdict()))
    if getattr(row, "setup", None) is not None:
        row.setup(paths, monkeypatch)
    return [a.format(**paths._asdict()) for a in row.args]


def the_error_line(code: int, err: str, fragment: str) -> str:
    """Exit code 2 and stderr's one ``error: <problem>; <fix>`` line, holding ``fragment``."""
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert fragment in errors[0], errors[0]
    assert "; " in errors[0], "no fix given: " + errors[0]
    return errors[0]


def ids(rows: List[Any]) -> List[Any]:
    return [pytest.param(r, id=r.id, marks=[pytest.mark.slow] if r.id in SLOW else [])
            for r in rows]


@pytest.mark.parametrize("row", ids(REFUSED + RESUME_REFUSED))
def test_refused_leaving_everything_as_it_was(row: Row, tmp_path, monkeypatch, capsys,
                                              request) -> None:
    """Refused before any run starts: nothing in the working folder is made or changed (no run
    folder; an output folder or file already there, or an interrupted run, stays byte-identical)."""
    paths = paths_for(tmp_path)
    args = prepare(row, paths, monkeypatch, request)
    before = tree_state(tmp_path)
    code = main(args)
    the_error_line(code, capsys.readouterr().err, row.fragment)
    assert tree_state(tmp_path) == before
    if row.check is not None:
        row.check(paths)


@pytest.mark.parametrize("row", ids(FAILED))
def test_failure_is_recorded_in_the_run_folder(row: Row, tmp_path, monkeypatch, capsys,
                                               request) -> None:
    """Found once the run has its folder: result.json says failed, with the error line's text."""
    paths = paths_for(tmp_path)
    args = prepare(row, paths, monkeypatch, request)
    code = main(args)
    line = the_error_line(code, capsys.readouterr().err, row.fragment)
    folder = paths.run if "--resume" in row.args else paths.out
    result = json.loads((folder / "result.json").read_text())
    assert result["status"] == "failed" and row.fragment in result["error"], result
    assert result["error"] in line
    if row.check is not None:
        row.check(paths)


@pytest.mark.slow
def test_invalid_boxes_are_dropped_counted_and_trained_around(tmp_path, monkeypatch, capsys,
                                                              request) -> None:
    """Boxes no image can hold (NaN, negative width, outside the image) are dropped, counted in
    result.json and said; the run trains on the rest."""
    row = Row("data-invalid-boxes-counted", DATA,
              "3 invalid box(es) in instances_train2017.json dropped from training",
              coco_edit("train", bad_boxes))
    paths = paths_for(tmp_path)
    assert main(prepare(row, paths, monkeypatch, request)) == 0
    err = capsys.readouterr().err
    assert row.fragment in err and "error:" not in err and "Traceback" not in err
    result = json.loads((paths.out / "result.json").read_text())
    assert result["status"] == "finished"
    data = result["data"]
    assert data["boxes_dropped"] == 3 and data["train_boxes_dropped"] == 3
    assert data["train_images"] >= 1 and data["val_images"] == 4
    epochs_kept(paths)


def test_resuming_a_finished_run_changes_nothing(tmp_path, monkeypatch, capsys, request) -> None:
    """A finished run has nothing to resume: said, exit 0, its folder untouched."""
    row = Row("resume-finished-run", RESUME, "nothing to resume", mark_finished)
    paths = paths_for(tmp_path)
    args = prepare(row, paths, monkeypatch, request)
    before = tree_state(tmp_path)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert row.fragment in err and "error:" not in err and "Traceback" not in err
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize("row", ids(SIGNALS))
def test_a_signal_interrupts_the_run_and_it_says_so(row: SignalRow, tmp_path, monkeypatch,
                                                    request) -> None:
    """SIGTERM, SIGINT and SIGHUP stop a run in a child process: exit 128 + the signal's number,
    result.json says interrupted, and no error line (an interruption is not a failure)."""
    paths = paths_for(tmp_path)
    args = prepare(row, paths, monkeypatch, request)
    proc = subprocess.Popen([sys.executable, "-m", "chipbench"] + args, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    lines = []
    deadline = time.time() + 240
    for line in proc.stderr:
        lines.append(line)
        if row.after in line:
            proc.send_signal(row.send)
            break
        assert time.time() < deadline, "".join(lines)
    _, rest = proc.communicate(timeout=120)
    err = "".join(lines) + rest
    assert proc.returncode == 128 + row.send, err
    assert "Traceback" not in err and not any(line.startswith("error: ")
                                              for line in err.splitlines()), err
    assert any(row.fragment in line for line in err.splitlines()), err
    assert json.loads((paths.out / "result.json").read_text())["status"] == "interrupted"
    if row.check is not None:
        row.check(paths)
