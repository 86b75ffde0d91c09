"""Tampered state, runs started together and bad input that used to be accepted.

A careless or hostile user: several ``core run`` sharing one fresh data cache, a ``spec.json``
with a key removed, a checkpoint whose epoch or counters were edited, ``--set train..lr``,
``--devices 0,0``, a vendor answering ``'GLOO '`` or a backend this torch lacks, a COCO file
whose image sizes are not the images'. Each is refused in one line naming the culprit, and keeps
the data a run folder holds.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from chipbench.cli import main
from chipbench.errors import PluginError, UserError
from tests.conftest import copy_run, snapshot, vendor_answering

ROOT = Path(__file__).resolve().parents[1]

def one_error(code: int, err: str) -> str:
    """The one ``error:`` line of a command that exited 2, with a fix and no traceback."""
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "; " in errors[0], "no fix given: " + errors[0]
    return errors[0]


# --------------------------------------------------------------------------------------------------
# the synthetic set: any number of runs may start at once on one cache
# --------------------------------------------------------------------------------------------------

GENERATE_AND_READ = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from chipbench.cases.retinanet.synthetic import ensure_synthetic_coco

    cache, control, me, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    (control / ("ready-" + me)).touch()
    while not (control / "go").exists():
        time.sleep(0.002)
    root = ensure_synthetic_coco(6, 3, 32, seed=0, cache_root=cache)
    inode = os.stat(str(root)).st_ino
    (control / ("returned-" + me)).touch()
    reads = 0
    while True:  # read the set as a run does, until every process has its answer
        done = len(list(control.glob("returned-*"))) == count
        for split in ("train", "val"):
            data = json.loads((root / "annotations" / "instances_{}2017.json".format(split))
                              .read_text())
            for image in data["images"]:
                (root / "{}2017".format(split) / image["file_name"]).read_bytes()
        reads += 1
        if done:
            break
    print(json.dumps({"root": str(root), "inode": inode, "reads": reads,
                      "inode_now": os.stat(str(root)).st_ino}))
""")


def test_runs_started_together_share_one_generated_set(tmp_path):
    """Several processes ask a fresh cache for the same set at the same moment: one generates
    it, the others wait and use it; none sees it deleted or replaced while it reads it."""
    count = 6
    cache, control = tmp_path / "cache", tmp_path / "control"
    control.mkdir()
    script = tmp_path / "generate.py"
    script.write_text(GENERATE_AND_READ)
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, str(script), str(cache), str(control), str(i),
                               str(count)], cwd=str(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(count)]
    deadline = time.monotonic() + 60
    while len(list(control.glob("ready-*"))) < count:  # every process imported, waiting
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
            p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.01)
    (control / "go").touch()
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        answers.append(json.loads(out.strip().splitlines()[-1]))
    print("{} processes generating into one fresh cache: {:.2f} s".format(
        count, time.monotonic() - started))
    assert len({a["root"] for a in answers}) == 1
    assert len({a["inode"] for a in answers} | {a["inode_now"] for a in answers}) == 1, answers
    root = Path(answers[0]["root"])
    assert (root / "COMPLETE.json").is_file()
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [root.name]  # no leftovers


def test_a_set_completed_meanwhile_wins_and_an_incomplete_one_is_replaced(tmp_path, monkeypatch):
    """Without locks (a file system that has none), the first complete copy wins: a process
    that finishes later drops its own and leaves the other's in place. A half-written set that
    an older version left in place is replaced."""
    import contextlib

    from chipbench.cases.retinanet import synthetic

    cache = tmp_path / "cache"
    real_write = synthetic._write_split
    others: List[Path] = []

    @contextlib.contextmanager
    def no_lock(path):
        yield False

    def write_split(root, split, *args):  # another process puts its copy in place meanwhile
        real_write(root, split, *args)
        if split == "val" and not others:
            other = tmp_path / "other"
            real_write(other, "train", *args)
            real_write(other, "val", *args)
            (other / synthetic.COMPLETE_MARKER).write_text("{}")
            target = cache / root.name[1:].rsplit("-", 1)[0]  # .<set>-<random>: staging
            os.rename(str(other), str(target))
            others.append(target)

    monkeypatch.setattr(synthetic, "_generation_lock", no_lock)
    monkeypatch.setattr(synthetic, "_write_split", write_split)
    root = synthetic.ensure_synthetic_coco(3, 2, 32, seed=5, cache_root=cache)
    assert [root] == others
    inode = os.stat(str(root)).st_ino
    assert synthetic.ensure_synthetic_coco(3, 2, 32, seed=5, cache_root=cache) == root
    assert os.stat(str(root)).st_ino == inode  # the other's copy, untouched
    assert [p.name for p in cache.iterdir()] == [root.name]  # this one's staging copy is gone

    monkeypatch.undo()
    stale = synthetic.ensure_synthetic_coco(3, 2, 32, seed=6, cache_root=cache)
    marker = stale / synthetic.COMPLETE_MARKER
    marker.unlink()  # as an interrupted generation of an older version left it
    (stale / "train2017" / "000000000001.jpg").unlink()
    again = synthetic.ensure_synthetic_coco(3, 2, 32, seed=6, cache_root=cache)
    assert again == stale and marker.is_file()
    assert (again / "train2017" / "000000000001.jpg").is_file()
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == sorted([root.name, again.name])


# --------------------------------------------------------------------------------------------------
# resume: spec.json and the checkpoint are checked, not trusted
# --------------------------------------------------------------------------------------------------


def resumable(source: Path, target: Path) -> Path:
    """A copy of ``source`` (the shared tiny run: epoch 0 of 16, stopped by train.max_iters)
    whose result.json says interrupted, as a run --resume continues."""
    copy_run(source, target)
    edit_json(target / "result.json", lambda r: r.update(status="interrupted"))
    return target


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def edit_checkpoint(run_dir: Path, edit, weights: bool = True) -> Path:
    """Change the run's checkpoint; without ``weights``, its model and optimizer are left out
    (a refusal that comes before they are looked at; a checkpoint of 250 MB less to write)."""
    import torch

    from chipbench.run import checkpoints as checkpoint

    path = run_dir / "checkpoints" / "last.pt"
    state = checkpoint.unpack(torch.load(str(path), map_location="cpu", weights_only=True))
    if not weights:
        state.update(model={}, optimizer={})
    edit(state)
    path.unlink()  # a hard link to the shared run's checkpoint: never written through
    checkpoint.save(state, path)
    return path


def resume(run_dir: Path, capsys) -> Tuple[int, str]:
    code = main(["run", "--resume", str(run_dir)])
    return code, capsys.readouterr().err


def test_a_spec_lacking_a_key_is_refused_not_filled_from_the_defaults(tiny_run, tmp_path,
                                                                      capsys):
    run_dir = resumable(tiny_run, tmp_path / "run")
    edit_json(run_dir / "spec.json", lambda s: (s["config"]["data"]["synthetic"].pop(
        "train_images"), s["config"]["train"].pop("lr")))
    before = snapshot(run_dir)
    line = one_error(*resume(run_dir, capsys))
    assert "spec.json lacks config keys data.synthetic.train_images, train.lr" in line, line
    assert snapshot(run_dir) == before

    edit_json(run_dir / "spec.json", lambda s: s["config"].pop("eval"))
    before = snapshot(run_dir)
    line = one_error(*resume(run_dir, capsys))
    assert "train.lr, eval.every, eval.first_epoch, eval.batch_size, eval.backend;" in line, line
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s.update(epoch=-3), "says epoch -3, not an epoch number"),
    (lambda s: s["meter"].update(images=-1000000), "has meter images -1000000, not a whole"),
    (lambda s: s["meter"].update(train_seconds=float("nan")), "has meter train_seconds nan"),
    (lambda s: s["meter"].update(images=2.5), "has meter images 2.5, not a whole number"),
    (lambda s: s["meter"].update(core_images=10 ** 6), "has meter core_images 1000000 over"),
    (lambda s: s.update(epoch=5), "says epoch 5 with a record of epochs [0], not 0 to 5"),
    (lambda s: s["epochs"][0].update(images=-8), "records images -8 for epoch 0"),
], ids=["epoch-negative", "meter-negative", "meter-nan", "meter-fraction", "meter-core-over",
        "epoch-without-record", "record-negative"])
def test_a_checkpoint_no_run_writes_is_refused_before_anything_is_written(
        tiny_run, tmp_path, capsys, edit, fragment):
    run_dir = resumable(tiny_run, tmp_path / "run")
    path = edit_checkpoint(run_dir, edit, weights=False)
    before = snapshot(run_dir)
    line = one_error(*resume(run_dir, capsys))
    assert "checkpoint {} {}".format(path, fragment) in line, line
    assert "restore the checkpoints/last.pt the run wrote" in line
    assert snapshot(run_dir) == before


def beyond_the_epochs(state: Dict[str, Any]) -> None:
    """Epoch 1000, with a record of 1001 epochs to match: consistent in itself."""
    state["epochs"] = [dict(state["epochs"][-1], epoch=n) for n in range(1001)]
    state["epoch"] = 1000


def behind_the_record(run_dir: Path) -> None:
    """progress.json records epochs 0 and 1, the checkpoint epoch 0 (an older one)."""
    edit_json(run_dir / "progress.json", lambda p: p["epochs"].append(dict(p["epochs"][0],
                                                                           epoch=1)))


@pytest.mark.parametrize("edit, fragment", [
    (beyond_the_epochs, "says epoch 1000 is done, but this run has 16 epoch(s) (train.epochs)"),
    (behind_the_record, "says epochs 0 to 0 are done, but progress.json records epochs [0, 1]"),
    (lambda s: s["epochs"][0].update(loss=0.001),
     "holds figures of epoch 0 that differ from those progress.json records"),
], ids=["beyond-the-epochs", "behind-the-record", "figures-rewritten"])
def test_a_checkpoint_the_run_s_record_contradicts_is_refused_keeping_the_record(
        tiny_run, tmp_path, capsys, edit, fragment):
    run_dir = resumable(tiny_run, tmp_path / "run")
    if edit is behind_the_record:
        edit(run_dir)
        path = run_dir / "checkpoints" / "last.pt"
    else:  # refused before the weights are applied: they are left out
        path = edit_checkpoint(run_dir, edit, weights=False)
    epochs = json.loads((run_dir / "progress.json").read_text())["epochs"]
    line = one_error(*resume(run_dir, capsys))
    assert "checkpoint {} {}".format(path, fragment) in line, line
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "failed" and fragment in result["error"]
    assert result["epochs"] == epochs  # what the run recorded is kept, not the checkpoint's
    assert json.loads((run_dir / "progress.json").read_text())["epochs"] == epochs


def test_a_checkpoint_one_epoch_ahead_of_its_record_resumes(tiny_run, tmp_path, capsys):
    """A run that stopped after writing epoch 0's checkpoint and before recording the epoch:
    its checkpoint is one epoch ahead of progress.json and result.json, and it resumes (and
    finishes: its train.max_iters are spent) with the checkpoint's record of the epoch."""
    run_dir = resumable(tiny_run, tmp_path / "run")
    recorded = json.loads((run_dir / "progress.json").read_text())["epochs"]
    edit_json(run_dir / "progress.json", lambda p: p.update(epochs=[]))
    edit_json(run_dir / "result.json", lambda p: p.update(epochs=[]))
    code, err = resume(run_dir, capsys)
    assert code == 0, err
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "finished" and result["epochs"] == recorded


# --------------------------------------------------------------------------------------------------
# --set keys, --devices
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["train..lr", ".train.lr", "train.lr.", "train. lr", "..", "."])
def test_set_keys_with_empty_names_are_refused(key, tmp_path, capsys):
    from chipbench.run.config import parse_set

    with pytest.raises(UserError) as caught:
        parse_set(["{}=0.05".format(key)])
    assert "with an empty name or spaces between its dots" in caught.value.one_line()
    # train.batch_size=0 would be refused next: no run starts, even where the key were taken
    line = one_error(main(["run", "retinanet", "--vendor", "cpu", "--output",
                           str(tmp_path / "never"), "--set", "{}=0.05".format(key),
                           "--set", "train.batch_size=0"]), capsys.readouterr().err)
    assert "--set '{}=0.05' has key".format(key) in line, line


def test_set_keys_of_single_dots_still_parse():
    from chipbench.run.config import parse_set

    assert parse_set([" train.lr =0.05", "data.dir=/a..b"]) == {
        "train": {"lr": 0.05}, "data": {"dir": "/a..b"}}


@pytest.mark.parametrize("devices, procs, fragment", [
    ("0,0", 2, "lists device 0 twice"),
    ("0,00", 1, "lists device 0 twice"),
    ("-1", 1, "lists '-1', which is not a device index"),
    ("1,-2", 1, "lists '-2', which is not a device index"),
    ("+1", 1, "lists '+1'"),
    ("0,,1", 2, "has an empty entry"),
    ("0,", 1, "has an empty entry"),
    ("0 1", 1, "lists '0 1'"),
    ("0;1", 1, "lists '0;1'"),
])
def test_devices_listed_twice_negative_or_malformed_are_refused(devices, procs, fragment,
                                                                tmp_path, capsys):
    from chipbench.run.launcher import Topology

    with pytest.raises(UserError) as caught:
        Topology(nproc_per_node=procs, devices=devices)
    assert fragment in caught.value.one_line()
    line = one_error(main(["run", "retinanet", "--vendor", "cpu", "--nproc-per-node", str(procs),
                           "--devices", devices, "--output", str(tmp_path / "never")]),
                     capsys.readouterr().err)
    assert fragment in line, line
    assert not (tmp_path / "never").exists()


def test_devices_are_passed_on_plainly():
    from chipbench.run.launcher import Topology

    assert Topology(nproc_per_node=2, devices=" 4, 05 ").devices == "4,5"
    uuid = "GPU-8f3c2a1e-0000-1111-2222-333344445555"
    assert Topology(devices="{},MIG-{}/1/0".format(uuid, uuid)).devices == \
        "{},MIG-{}/1/0".format(uuid, uuid)


def test_a_resumed_spec_with_devices_listed_twice_is_refused(tiny_run, tmp_path, capsys):
    run_dir = resumable(tiny_run, tmp_path / "run")
    edit_json(run_dir / "spec.json", lambda s: s["topology"].update(devices="0,0",
                                                                   nproc_per_node=1))
    before = snapshot(run_dir)
    line = one_error(*resume(run_dir, capsys))
    assert "bad topology" in line and "lists device 0 twice" in line, line
    assert snapshot(run_dir) == before


# --------------------------------------------------------------------------------------------------
# the vendor's collective backend
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend, fragment", [
    ("GLOO ", "expected one backend name"),
    (" gloo", "expected one backend name"),
    ("cpu: gloo", "expected one backend name"),
    ("gloo,cuda:nccl", "expected one backend name"),
    ("cpu:gloo,CPU:gloo", "expected one backend name"),
    ("cpu:gloo,", "expected one backend name"),
    ("gloo,nccl", "expected one backend name"),
    ("", "expected one backend name"),
])
def test_a_backend_answer_init_process_group_cannot_parse_is_refused(backend, fragment):
    facade = vendor_answering(backend)
    with pytest.raises(PluginError) as caught:
        facade.process_group_backend()
    line = caught.value.one_line()
    assert line.startswith("vendor 'answers' returned {!r} from hook collective_backend".format(
        backend)), line
    assert fragment in line and "\n" not in line


@pytest.mark.filterwarnings("ignore")  # torch warns that it does not know 'gloo ''s devices
@pytest.mark.parametrize("backend", ["GLOO ", "cpu: gloo", "gloo,cuda:nccl", "cpu:gloo,cpu:gloo"])
def test_torch_itself_fails_on_those_answers(backend, tmp_path):
    """What the check refuses, init_process_group fails on (in every worker, without naming the
    vendor): the refusal is not stricter than torch."""
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    with pytest.raises(Exception):  # noqa: B017 - torch's own error differs by version
        dist.init_process_group(backend, store=store, rank=0, world_size=1)
    if dist.is_initialized():  # pragma: no cover - it did take it after all
        dist.destroy_process_group()


def test_a_backend_this_torch_is_built_without_names_the_vendor_and_the_hook(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_mpi_available", lambda: False)  # as on most torch builds
    facade = vendor_answering("mpi")
    with pytest.raises(PluginError) as caught:
        facade.process_group_backend()
    line = caught.value.one_line()
    assert line.startswith("vendor 'answers' returned 'mpi' from hook collective_backend, but "
                           "this torch"), line
    assert "built without mpi (torch.distributed.is_mpi_available() is False)" in line, line
    monkeypatch.setattr(dist, "is_gloo_available", lambda: False)
    facade = vendor_answering("cpu:gloo,cuda:nccl")
    with pytest.raises(PluginError, match="built without gloo"):
        facade.process_group_backend()
    monkeypatch.setattr(dist, "is_mpi_available", lambda: True)
    assert vendor_answering("mpi").process_group_backend() == "mpi"


def test_the_conformance_check_refuses_a_name_with_spaces():
    from chipbench.conformance import run_checks

    [live] = run_checks(vendor_answering("GLOO "), only=["collective_backend"])
    assert live.status == "fail" and "without spaces" in live.expected, live


# --------------------------------------------------------------------------------------------------
# COCO sizes against the images
# --------------------------------------------------------------------------------------------------


def coco_with_wrong_size(root: Path) -> Path:
    """A COCO folder whose one image is 96x64 px on disk and 640x480 in its annotation file."""
    from PIL import Image

    for split in ("train", "val"):
        (root / "{}2017".format(split)).mkdir(parents=True)
        Image.new("RGB", (96, 64), (90, 90, 90)).save(root / "{}2017".format(split) / "a.jpg")
    (root / "annotations").mkdir()
    data = {"images": [{"id": 7, "file_name": "a.jpg", "width": 640, "height": 480}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0,
                             "bbox": [200, 150, 100, 80], "area": 8000}],
            "categories": [{"id": 1, "name": "thing"}]}
    for split in ("train", "val"):
        (root / "annotations" / "instances_{}2017.json".format(split)).write_text(
            json.dumps(data))
    return root


@pytest.mark.parametrize("use_v2", [False, True])
def test_an_image_whose_size_disagrees_with_its_annotation_is_refused(tmp_path, use_v2):
    from chipbench.cases.retinanet.data import CocoDetection, coco_paths, transforms_v2_api

    if use_v2 and transforms_v2_api() is None:
        pytest.skip("this torchvision (0.15) has no v2 wrapper with target_keys")
    root = coco_with_wrong_size(tmp_path / "coco")
    for split, train in (("train", True), ("val", False)):
        dataset = CocoDetection(*coco_paths(root, split), train=train, use_v2=use_v2)
        with pytest.raises(UserError) as caught:
            dataset[0]
        line = caught.value.one_line()
        assert "a.jpg (id 7) is 96x64 px, but instances_{}2017.json gives it width 640 and " \
               "height 480".format(split) in line, line
        assert "correct its width and height in" in line


def test_a_run_on_images_of_other_sizes_stops_in_one_line(tmp_path, capsys):
    """Through the loader's worker process, as a run reads its data."""
    root = coco_with_wrong_size(tmp_path / "coco")
    out = tmp_path / "run"
    code = main(["run", "retinanet", "--vendor", "cpu", "--data-dir", str(root), "--output",
                 str(out), "--set", "model.backbone_weights=none", "--set", "model.min_size=64",
                 "--set", "model.max_size=64", "--set", "train.batch_size=1",
                 "--set", "data.num_workers=1", "--set", "train.max_iters=1"])
    line = one_error(code, capsys.readouterr().err)
    assert "a.jpg (id 7) is 96x64 px, but instances_train2017.json gives it width 640" in line
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and "is 96x64 px" in result["error"]
