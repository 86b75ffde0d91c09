"""The public case API (chipbench.case): what cases may import, its exports and version, and the
``ctx`` helpers every case uses (data wait, core step, DDP, loader workers, checkpoints, the run
folder's record)."""

import ast
import contextlib
import json
import logging
import re
import shutil
import time
import types
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import torch
from PIL import Image

import chipbench.case as case_api
from chipbench.case import Case, RunContext, RunMeter, UserError, read_checkpoint
from chipbench.measure.metrics import FIGURES, MAXED, reduce_ranks
from chipbench.run.runfiles import write_json_atomic
from tests.conftest import toy_detector

ROOT = Path(__file__).resolve().parent.parent
CASE_PACKAGES = {  # folder: the case's own package (its import name)
    ROOT / "cases" / "retinanet": "chipbench.cases.retinanet",
    ROOT / "examples" / "spirals" / "chipbench_spirals": "chipbench_spirals",
}


# --------------------------------------------------------------------------------------------------
# what a case imports, what the API exports
# --------------------------------------------------------------------------------------------------

def chipbench_imports(path: Path) -> List[str]:
    """Every module of chipbench (``chipbench`` or ``chipbench.*``) that ``path`` imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [n for n in names if n == "chipbench" or n.startswith("chipbench.")]
    return found


@pytest.mark.parametrize("folder", sorted(CASE_PACKAGES), ids=lambda f: f.name)
def test_cases_import_only_the_public_case_api_and_their_own_package(folder):
    own = CASE_PACKAGES[folder]
    modules = sorted(folder.glob("*.py"))
    assert modules
    for module in modules:
        for name in chipbench_imports(module):
            assert name == "chipbench.case" or name == own or name.startswith(own + "."), (
                "{} imports {}: a case imports only chipbench.case".format(
                    module.relative_to(ROOT), name))


def test_the_import_check_sees_internal_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import chipbench.measure.metrics\nfrom chipbench.util import safeio\n"
                      "from chipbench.case import Case\nimport chipbench_spirals\n"
                      "def f():\n    from chipbench.measure.flops import figures\n")
    assert chipbench_imports(source) == ["chipbench.measure.metrics", "chipbench.util", "chipbench.case",
                                         "chipbench.measure.flops"]


def test_every_exported_name_exists_and_the_version_is_major_minor():
    assert case_api.__all__ and len(set(case_api.__all__)) == len(case_api.__all__)
    missing = [name for name in case_api.__all__ if not hasattr(case_api, name)]
    assert not missing
    assert re.fullmatch(r"\d+\.\d+", case_api.CASE_API_VERSION)
    assert "CASE_API_VERSION" in (case_api.__doc__ or "")


def test_every_method_of_the_case_contract_is_a_documented_base_method():
    for name in ("overlays", "validate", "prepare", "general_rows", "precision", "target", "run",
                 "check_resume", "memory_hint"):
        method = getattr(Case, name)
        assert callable(method) and (method.__doc__ or "").strip(), name
    case = Case()
    assert case.packages == () and case.check_resume(Path("/nonexistent")) is None
    what, settings = case.memory_hint({})
    assert what and settings


def test_case_packages_must_be_distribution_names(tmp_path):
    from chipbench.run.caseload import contract_problem

    (tmp_path / "defaults.yaml").write_text("run: {}\n")

    class Tiny(Case):
        name, config_dir = "tiny", tmp_path

        def run(self, ctx):
            return {}

    assert contract_problem(Tiny()) == ""
    Tiny.packages = "torchvision"  # a string, not a tuple of names
    assert "packages" in contract_problem(Tiny())
    Tiny.packages = ("torch vision",)
    assert "packages" in contract_problem(Tiny())


def test_an_outside_case_s_memory_hint_is_checked():
    from chipbench.errors import PluginError
    from chipbench.run.caseload import guard_case

    class Odd(Case):
        name = "odd"

        def memory_hint(self, config):
            return "only one text"

    with pytest.raises(PluginError, match="memory_hint"):
        guard_case(Odd(), "test").memory_hint({})


# --------------------------------------------------------------------------------------------------
# ctx helpers
# --------------------------------------------------------------------------------------------------

def make_ctx(tmp_path: Path, **fields: Any) -> RunContext:
    calls: List[str] = []
    facade = types.SimpleNamespace(
        synchronize=lambda device: calls.append("sync"),
        loader_workers=lambda configured, local_world_size: None,
        memory_peak=lambda device: 0, memory_reset_peak=lambda device: calls.append("reset"),
        configure=lambda device, deterministic, autotune: calls.append("configure"),
        grad_scaler=lambda device, precision: None)
    ctx = RunContext(spec={"case": "test", "vendor": "cpu"}, config={}, run_dir=tmp_path,
                     host=None, facade=facade, device=torch.device("cpu"), **fields)
    ctx.calls = calls  # type: ignore[attr-defined]
    return ctx


class SlowLoader:
    """Batches that each take ``wait`` seconds to arrive; counts the batches fetched."""

    def __init__(self, batches: int, wait: float) -> None:
        self.batches, self.wait, self.fetched = batches, wait, 0

    def __iter__(self):
        for index in range(self.batches):
            time.sleep(self.wait)
            self.fetched += 1
            yield index


def test_batches_measure_the_wait_for_each_batch(tmp_path):
    ctx = make_ctx(tmp_path)
    loader = SlowLoader(4, 0.05)
    for _batch in ctx.batches(loader):
        with ctx.core_step(1, timed=False):
            time.sleep(0.01)  # the step's own time is no data wait
    assert loader.fetched == 4 and ctx.meter.iterations == 4
    assert 0.2 <= ctx.meter.data_seconds < 0.2 + 0.04 * 4


def test_the_monitor_labels_its_samples_of_the_data_wait(tmp_path):
    """While training waits for a batch the monitor's phase is "data wait" (the timeline shades
    it); the case's own phase comes back for the step."""
    class Monitor:
        phase = "train"

    seen = []

    class Loader:
        def __iter__(self):
            for index in range(3):
                seen.append(monitor.phase)
                yield index

    monitor = Monitor()
    ctx = make_ctx(tmp_path, monitor=monitor)
    during_steps = [monitor.phase for _batch in ctx.batches(Loader())]
    assert seen == ["data wait"] * 3 and during_steps == ["train"] * 3
    assert monitor.phase == "train"


def test_batches_count_no_wait_of_skipped_iterations_and_fetch_nothing_past_max_iters(tmp_path):
    ctx = make_ctx(tmp_path, meter=RunMeter(skip_iters=2))
    loader = SlowLoader(10, 0.03)
    for _batch in ctx.batches(loader, max_iters=5):
        with ctx.core_step(1, timed=False):
            pass
    assert loader.fetched == 5 and ctx.meter.seen_iterations == 5 and ctx.meter.iterations == 3
    assert 0.09 <= ctx.meter.data_seconds < 0.09 + 0.03 * 3


def test_core_step_synchronizes_before_and_after_and_counts_the_iteration(tmp_path):
    steps = []
    ctx = make_ctx(tmp_path, on_step=lambda: steps.append(ctx.meter.seen_iterations))
    with ctx.core_step(8) as step:
        assert ctx.calls == ["sync"]
        time.sleep(0.02)
    assert ctx.calls == ["sync", "sync"]
    assert step.seconds is not None and step.seconds >= 0.02 and step.counted
    assert ctx.meter.core_images == 8 and ctx.meter.core_seconds == step.seconds
    with ctx.core_step(8, timed=False) as untimed:
        pass
    assert ctx.calls == ["sync", "sync"] and untimed.seconds is None
    assert ctx.meter.images == 16 and ctx.meter.core_images == 8
    assert steps == [1, 2]  # step_done: once per iteration, after it is counted
    with pytest.raises(RuntimeError), ctx.core_step(8):
        raise RuntimeError("a failing step")
    assert ctx.meter.seen_iterations == 2 and steps == [1, 2]


def test_distributed_is_a_no_op_in_one_process(tmp_path):
    model = torch.nn.Linear(2, 2)
    ctx = make_ctx(tmp_path)
    assert not ctx.is_distributed and ctx.distributed(model) is model


def test_loader_workers_are_the_vendor_s_else_the_configured_else_the_cores(tmp_path,
                                                                            monkeypatch):
    import os

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    ctx = make_ctx(tmp_path)
    assert ctx.loader_workers(2) == 2
    for cores, ranks, workers in ((64, 1, 4), (3, 1, 2), (1, 1, 0), (8, 8, 0), (16, 4, 3)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        ctx.world_size = ranks
        assert ctx.loader_workers(None) == workers, (cores, ranks)
    ctx.facade.loader_workers = lambda configured, local_world_size: 7
    assert ctx.loader_workers(2) == 7


def test_configure_reset_and_autocast_go_through_the_vendor(tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.configure(True, False)
    ctx.reset_memory_peak()
    assert ctx.calls == ["configure", "reset"]
    assert isinstance(ctx.autocast("fp32"), contextlib.nullcontext)
    bf16 = ctx.autocast("bf16")
    assert isinstance(bf16, torch.autocast) and bf16.fast_dtype == torch.bfloat16
    with pytest.raises(UserError, match="unknown precision 'fp7'"):
        ctx.autocast("fp7")


def run_state_ctx(tmp_path: Path, resume: bool) -> RunContext:
    ctx = make_ctx(tmp_path)
    ctx.spec["resume"] = resume
    return ctx


def test_a_checkpoint_round_trips_with_the_run_s_state(tmp_path):
    ctx = run_state_ctx(tmp_path, resume=False)
    ctx.meter.add_iteration(4, 0.5)
    metrics = {"loss": 0.5, "images": 4, "p_core": None}
    ctx.save_checkpoint({"weights": torch.arange(3.0), "steps": (1, 2)}, 0, metrics)
    write_json_atomic(tmp_path / "progress.json",
                      {"epochs": [dict(metrics, epoch=0)], "final": False})
    assert ctx.load_checkpoint() is None  # a new run reads none
    resumed = run_state_ctx(tmp_path, resume=True)
    state = resumed.load_checkpoint(planned_epochs=3)
    assert torch.equal(state["weights"], torch.arange(3.0)) and state["steps"] == (1, 2)
    assert resumed.resume(state) == 1
    assert resumed.meter.images == 4 and [e["epoch"] for e in resumed.epochs] == [0]
    assert read_checkpoint(tmp_path)["epoch"] == 0
    with pytest.raises(UserError, match=r"says epoch 0 is done, but this run has 0 epoch\(s\) "
                                        r"\(train.epochs\)"):
        run_state_ctx(tmp_path, resume=True).load_checkpoint(planned_epochs=0)


def test_a_file_that_is_not_a_chipbench_checkpoint_is_refused(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    torch.save({"model": torch.zeros(2)}, str(path))
    ctx = run_state_ctx(tmp_path, resume=True)
    with pytest.raises(UserError, match="is not a chipbench checkpoint"):
        ctx.load_checkpoint()
    with pytest.raises(UserError, match="is not a chipbench checkpoint"):
        read_checkpoint(tmp_path)
    torch.save({"format": "chipbench-checkpoint-1", "meta": "{}", "tensors": [],
                "code": types.SimpleNamespace(a=1)}, str(path))
    with pytest.raises(UserError, match="holds objects other than tensors and plain data"):
        ctx.load_checkpoint()


def test_recorded_epochs_come_from_progress_json_else_result_json(tmp_path):
    ctx = make_ctx(tmp_path)
    assert ctx.recorded_epochs() == ([], "result.json", False)
    write_json_atomic(tmp_path / "result.json", {"epochs": [{"epoch": 0}]})
    assert ctx.recorded_epochs() == ([{"epoch": 0}], "result.json", False)
    write_json_atomic(tmp_path / "progress.json", {"epochs": [{"epoch": 0}, {"epoch": 1}]})
    recorded = ctx.recorded_epochs()
    assert recorded.source == "progress.json" and recorded.strict
    assert [e["epoch"] for e in recorded.epochs] == [0, 1]
    (tmp_path / "progress.json").write_text("[not json")
    assert ctx.recorded_epochs().source == "result.json"


# --------------------------------------------------------------------------------------------------
# data wait in the metrics
# --------------------------------------------------------------------------------------------------

def test_data_seconds_is_a_figure_reduced_as_the_slowest_rank_s():
    assert "data_seconds" in FIGURES and "data_seconds" in MAXED
    reduced = reduce_ranks([{"data_seconds": 1.5, "images": 2}, {"data_seconds": 4.0, "images": 2}])
    assert reduced["data_seconds"] == 4.0
    old = {key: value for key, value in RunMeter(images=3).state().items() if key != "data_seconds"}
    assert RunMeter.from_state(old).data_seconds == 0.0  # a checkpoint from before it existed


def test_epoch_counters_carry_the_data_wait(tmp_path):
    ctx = make_ctx(tmp_path)
    for _batch in ctx.batches(SlowLoader(2, 0.02)):
        with ctx.core_step(1):
            pass
    ctx.meter.train_seconds = 1.0
    assert ctx.epoch_counters()["data_seconds"] == pytest.approx(ctx.meter.data_seconds)
    assert ctx.meter.data_seconds >= 0.04


@pytest.mark.parametrize("core_every", [1, 4])
def test_retinanet_epoch_times_1_in_n_steps_and_measures_the_data_wait(tmp_path, core_every):
    from chipbench.cases.retinanet.engine import TrainStep, timed_iteration, train_one_epoch

    timed = sum(timed_iteration(i, core_every) for i in range(10))
    model = toy_detector()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [([torch.rand(3, 4, 4) for _ in range(2)], [{"labels": torch.zeros(1)}] * 2)
               for _ in range(10)]
    ctx = make_ctx(tmp_path, log=logging.getLogger("test"))
    stats = train_one_epoch(model, optimizer, _Slow(batches, 0.01), ctx, 0,
                            TrainStep(core_every=core_every, log_every=3))
    assert stats["steps"] == 10 and ctx.meter.images == 20
    assert ctx.meter.core_images == 2 * timed and (ctx.meter.core_seconds > 0) == (timed > 0)
    assert ctx.calls.count("sync") == 2 + 2 * timed  # epoch start and end, twice per timed step
    assert ctx.meter.train_seconds >= ctx.meter.core_seconds + ctx.meter.data_seconds * 0.99
    assert ctx.meter.data_seconds >= 0.1
    assert model.scale.item() < 1.0  # it trained


class _Slow:
    """A list of batches, each arriving after ``wait`` seconds."""

    def __init__(self, batches: List[Any], wait: float) -> None:
        self.batches, self.wait = batches, wait

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            time.sleep(self.wait)
            yield batch


# --------------------------------------------------------------------------------------------------
# retinanet's data facts: counts that agree, caveats that are true
# --------------------------------------------------------------------------------------------------

def write_coco(root: Path, split: str, names: List[str], crowd: int = 0, seed: int = 0) -> None:
    """``names`` as noise PNGs of 64 px with one box each (and ``crowd`` crowd regions)."""
    rng = np.random.RandomState(seed)
    folder = root / "{}2017".format(split)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index, name in enumerate(names, start=1):
        Image.fromarray(rng.randint(0, 256, size=(64, 64, 3)).astype(np.uint8)).save(folder / name)
        images.append({"id": index, "file_name": name, "width": 64, "height": 64})
        annotations.append({"id": index, "image_id": index, "category_id": 1,
                            "bbox": [4, 4, 30, 30], "area": 900.0, "iscrowd": 0})
    for extra in range(crowd):
        annotations.append({"id": 1000 + extra, "image_id": 1, "category_id": 1,
                            "bbox": [40, 40, 20, 20], "area": 400.0, "iscrowd": 1})
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / "instances_{}2017.json".format(split)).write_text(json.dumps(
        {"images": images, "annotations": annotations,
         "categories": [{"id": 1, "name": "thing"}]}))


def facts_of(root: Path, config: Dict[str, Any], weights: Optional[str] = "/w/resnet50.pth"
             ) -> Dict[str, Any]:
    from chipbench.cases.retinanet.data import CocoDetection, coco_paths
    from chipbench.cases.retinanet.facts import data_facts

    train = CocoDetection(*coco_paths(root, "train"), train=True)
    val = CocoDetection(*coco_paths(root, "val"), train=False)
    return data_facts(train, val, 2, config, 1, weights)


CONFIG = {"train": {"batch_size": 1}, "model": {"min_size": 64, "max_size": 64,
                                                "backbone_weights": "imagenet"},
          "data": {"dir": "/somewhere"}}


def test_caveats_name_shared_images_crowds_a_small_val_set_and_a_partial_coco(tmp_path):
    write_coco(tmp_path, "train", ["a.png", "b.png", "c.png"], crowd=2, seed=1)
    write_coco(tmp_path, "val", ["a.png", "b.png", "d.png"], crowd=1, seed=2)
    caveats = facts_of(tmp_path, CONFIG)["caveats"]
    assert not any("also training images" in c for c in caveats)  # same names, other pixels
    assert "val set of 3 images (under 500)" in caveats[0]
    assert any(c.startswith("1 crowd region(s) (iscrowd 1) in the val annotations, 2 in the "
                            "train") and "pycocotools ignores detections matched to them" in c
               for c in caveats)
    assert caveats[-1] == ("COCO layout, not the full COCO2017: 3 train / 3 val images "
                           "(COCO2017 has 118287 / 5000)")
    assert not any("random init" in c for c in caveats)
    shutil.copy(str(tmp_path / "train2017" / "b.png"), str(tmp_path / "val2017" / "b.png"))
    (tmp_path / "val2017" / "d.png").unlink()
    (tmp_path / "val2017" / "d.png").symlink_to(tmp_path / "train2017" / "c.png")
    caveats = facts_of(tmp_path, dict(CONFIG, data={"dir": None}), weights=None)["caveats"]
    assert caveats[0].startswith("2 of the 3 val images are also training images")
    assert any(c.startswith("backbone trained from random init") for c in caveats)
    assert not any(c.startswith("COCO layout") for c in caveats)  # the embedded set: its note


def test_the_embedded_set_s_note_states_what_the_facts_count():
    from chipbench.cases.retinanet.synthetic import EMPTY_EVERY, annotated_images

    assert annotated_images(64) == 60 and annotated_images(32) == 30 and EMPTY_EVERY == 16
    from chipbench.cases.retinanet import CASE

    config = {"data": {"dir": None, "synthetic": {"train_images": 32, "val_images": 8,
                                                  "image_size": 32, "seed": 0}},
              "model": {"backbone_weights": "none"}}
    note = CASE.prepare(config)["dataset_note"]
    assert "32 train images generated, 30 with shapes and trained on / 8 val images" in note


def _tampered_checkpoint(tmp_path, change):
    """A checkpoint the run wrote after epoch 0, then changed by ``change(state)``."""
    from chipbench.run.checkpoints import load, save

    ctx = run_state_ctx(tmp_path, resume=False)
    ctx.meter.add_iteration(4, 0.5)
    ctx.save_checkpoint({"weights": torch.zeros(1)}, 0, {"loss": 0.5, "images": 4})
    path = tmp_path / "checkpoints" / "last.pt"
    state = load(path)
    change(state)
    save(state, path)
    return run_state_ctx(tmp_path, resume=True)


@pytest.mark.parametrize("change, fragment", [
    (lambda s: s["meter"].update(foo=1), "has meter 'foo', which no chipbench meter holds"),
    (lambda s: s["epochs"][0].update(e2e_time=-5), "records e2e_time -5 for epoch 0"),
    (lambda s: s["epochs"][0].update(converged="yes"), "records converged 'yes' for epoch 0"),
])
def test_a_tampered_checkpoint_is_refused_naming_it_not_the_case(tmp_path, change, fragment):
    """The run state in a checkpoint is held to the rules of the records it becomes: a refusal
    names the checkpoint and says to restore it (never a traceback, never the case's fault)."""
    ctx = _tampered_checkpoint(tmp_path, change)
    with pytest.raises(UserError) as refused:
        ctx.load_checkpoint()
    line = refused.value.one_line()
    assert fragment in line and "last.pt" in line and "restore the checkpoints/last.pt" in line


def test_epoch_figures_of_the_wrong_kind_are_the_case_s_fault(tmp_path):
    from chipbench.errors import PluginError

    ctx = run_state_ctx(tmp_path, resume=False)
    with pytest.raises(PluginError) as refused:
        ctx.epoch_end(0, {"loss": 0.1, "converged": np.float64(0.95) >= 0.9})
    line = refused.value.one_line()
    assert "case 'test' ctx.epoch_end()" in line and "converged" in line
    assert "progress.json" not in line
    with pytest.raises(PluginError, match="flops_per_image is 'abc'"):
        ctx.epoch_end(0, {"loss": 0.1, "flops_per_image": "abc"})
    for epoch in (1.0, -1, True, "2"):  # an epoch no chart, table or resume could place
        with pytest.raises(PluginError, match="epoch is .*, not a whole number >= 0"):
            ctx.epoch_end(epoch, {"loss": 0.1})
    assert not ctx.epochs
