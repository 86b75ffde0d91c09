"""mAP is the standard COCO score of the annotation file as given, whatever the evaluation batch
size: scored against plain pycocotools on the file (a zero-width box, a box outside the image and
a crowd region in it), and a real model evaluated one image at a time and in batches of 4."""

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest
import torch
from torch.utils.data import DataLoader

from chipbench.cases.retinanet.data import CocoDetection, collate, scoring_ground_truth
from chipbench.cases.retinanet.evaluate import (
    COCO_STAT_NAMES,
    coco_bbox_map,
    detection_transform,
    padded_shape,
    predict,
    shape_grouped_batches,
)
from chipbench.cases.retinanet.facts import data_facts
from tests.conftest import write_annotations, write_set

IMAGES = [{"id": 1, "file_name": "a.png", "width": 100, "height": 80},
          {"id": 2, "file_name": "b.png", "width": 90, "height": 120},
          {"id": 3, "file_name": "c.png", "width": 64, "height": 64}]

ANNOTATIONS = [
    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20], "area": 600.0,
     "iscrowd": 0},
    {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 10, 0, 20], "area": 0.0,
     "iscrowd": 0},  # zero width: training drops it, the standard score counts it
    {"id": 3, "image_id": 1, "category_id": 2, "bbox": [120, 10, 20, 20], "area": 400.0,
     "iscrowd": 0},  # outside the image
    {"id": 4, "image_id": 2, "category_id": 2, "bbox": [0, 0, 60, 60], "area": 3600.0,
     "iscrowd": 1},  # a crowd region: detections on it are neither right nor wrong
    {"id": 5, "image_id": 2, "category_id": 2, "bbox": [65, 70, 20, 30], "area": 600.0,
     "iscrowd": 0},
    {"id": 6, "image_id": 3, "category_id": 1, "bbox": [4, 4, 40, 50], "area": 2000.0,
     "iscrowd": 0}]

DETECTIONS = [
    {"image_id": 1, "category_id": 1, "bbox": [11, 10, 30, 20], "score": 0.9},
    {"image_id": 1, "category_id": 1, "bbox": [49, 10, 2, 20], "score": 0.8},
    {"image_id": 1, "category_id": 2, "bbox": [80, 10, 19, 20], "score": 0.4},
    {"image_id": 2, "category_id": 2, "bbox": [5, 5, 30, 30], "score": 0.95},  # on the crowd
    {"image_id": 2, "category_id": 2, "bbox": [64, 69, 21, 30], "score": 0.7},
    {"image_id": 3, "category_id": 1, "bbox": [5, 4, 39, 50], "score": 0.6},
    {"image_id": 3, "category_id": 2, "bbox": [30, 30, 20, 20], "score": 0.3}]


def plain_pycocotools(annotation_file: Path, detections: List[Dict[str, Any]]) -> List[float]:
    """The 12 stats of plain pycocotools on the file, with its default parameters."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotation_file))
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(copy.deepcopy(detections)),
                             "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(s) for s in evaluator.stats]


def as_cocoeval(named: Dict[str, Any]) -> List[float]:
    """chipbench's named figures back in COCOeval's order, None as its -1."""
    return [-1.0 if named[name] is None else named[name] for name in COCO_STAT_NAMES]


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_map_is_plain_pycocotools_on_the_file_as_given(tmp_path, backend):
    if backend == "faster_coco_eval":
        pytest.importorskip("faster_coco_eval")
    root = write_set(tmp_path, IMAGES, ANNOTATIONS)
    val = CocoDetection(root / "val2017", root / "annotations" / "instances_val2017.json",
                        train=False)
    assert val.boxes_dropped == 2 and val.invalid_boxes_scored == 2
    for detections in (DETECTIONS, [dict(a, score=1.0) for a in ANNOTATIONS]):
        plain = plain_pycocotools(val.annotation_file, detections)
        ours = coco_bbox_map(val.scoring_coco, copy.deepcopy(detections), val.ids, backend)
        assert list(ours) == list(COCO_STAT_NAMES)
        assert as_cocoeval(ours) == pytest.approx(plain, abs=1e-12)
        filtered = coco_bbox_map(val.coco, copy.deepcopy(detections), val.ids, backend)
        assert filtered["mAP"] != pytest.approx(plain[0])  # what dropping invalid boxes scored
    # the ground truth scored as detections is not 1.0: the zero-width box cannot be matched
    assert 0.5 < plain_pycocotools(val.annotation_file,
                                   [dict(a, score=1.0) for a in ANNOTATIONS])[0] < 1.0


def test_data_facts_count_what_is_scored_and_what_training_drops(tmp_path):
    root = write_set(tmp_path, IMAGES, ANNOTATIONS)
    train = CocoDetection(root / "train2017", root / "annotations" / "instances_train2017.json",
                          train=True)
    val = CocoDetection(root / "val2017", root / "annotations" / "instances_val2017.json",
                        train=False)
    config = {"train": {"batch_size": 1}, "model": {"min_size": 64, "max_size": 64}}
    facts = data_facts(train, val, 3, config, 1, None)
    assert facts["train_boxes_dropped"] == 2 and facts["val_boxes_dropped"] == 0
    assert facts["val_invalid_boxes_scored"] == 2 and facts["boxes_dropped"] == 2
    assert facts["val_annotations"] == len(ANNOTATIONS) == len(val.scoring_coco.anns)
    assert facts["train_annotations"] == len(ANNOTATIONS) - 2


def test_scoring_ground_truth_leaves_out_only_boxes_no_scorer_can_place(tmp_path):
    odd = [dict(ANNOTATIONS[0], id=10, bbox=[1, 2, "3", 4]), dict(ANNOTATIONS[5], id=11)]
    odd[1].pop("area")  # pycocotools would fail; scored as faster-coco-eval does: w x h
    root = write_set(tmp_path, IMAGES, ANNOTATIONS + odd)
    val = CocoDetection(root / "val2017", root / "annotations" / "instances_val2017.json",
                        train=False)
    scoring, left_out = scoring_ground_truth(val.coco)
    assert left_out == 1 == val.boxes_not_scored and 10 not in scoring.anns
    assert scoring.anns[11]["area"] == 40 * 50 and "area" not in val.coco.anns[11]


# -- evaluation batch size -------------------------------------------------------------------

SIZE = 64
"""min_size = max_size of the model below: the longer side becomes 64 px."""

VARIED = [{"id": i + 1, "file_name": "{}.png".format(i + 1), "width": w, "height": h}
          for i, (h, w) in enumerate([(64, 48), (64, 20), (48, 64), (64, 64), (30, 64),
                                      (64, 60), (60, 64), (64, 16)])]
"""Images that the model pads to 64x64, 64x32 and 32x64 alone."""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One compute thread: the model below is small, and two threads spinning beside other
    processes on a busy 2-core machine made each forward 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def detector():
    """A RetinaNet with random weights whose classification bias is 0: every image gets
    detections that depend on its features (the default prior would give none); fewer
    candidates per level and detections per image than COCO's, to keep the test fast."""
    from chipbench.cases.retinanet.model import build_retinanet

    torch.manual_seed(0)
    model = build_retinanet(3, None, SIZE, SIZE).eval()
    torch.nn.init.zeros_(model.head.classification_head.cls_logits.bias)
    model.topk_candidates, model.detections_per_img = 50, 20
    return model


def evaluate_with(model: torch.nn.Module, val: CocoDetection, batches: Sequence[List[int]]
                  ) -> List[Dict[str, Any]]:
    loader = DataLoader(val, batch_sampler=list(batches), collate_fn=collate)
    return predict(model, loader, torch.device("cpu"), contextlib.nullcontext)


def test_padded_shape_is_what_the_model_pads_an_image_to(detector):
    for info in VARIED:
        image = torch.zeros(3, info["height"], info["width"])
        alone = detector.transform([image])[0].tensors.shape[-2:]
        assert padded_shape(detection_transform(SIZE, SIZE), info["height"], info["width"]) \
            == tuple(alone)
    coco_sized = detection_transform(800, 1333)  # torch 2.0 makes 799 x 1199 of 427 x 640
    assert padded_shape(coco_sized, 427, 640) == (800, 1216)
    assert padded_shape(coco_sized, 640, 427) == (1216, 800)


def test_map_does_not_depend_on_the_eval_batch_size(tmp_path, detector):
    root = write_set(tmp_path, VARIED, [])
    val_file = root / "annotations" / "instances_val2017.json"
    val = CocoDetection(root / "val2017", val_file, train=False)
    sizes = [(info["height"], info["width"]) for info in VARIED]
    one_by_one = evaluate_with(detector, val, [[i] for i in range(len(VARIED))])
    # ground truth: each image's 3 best detections of one image at a time, so that a change in
    # an image's detections changes the score
    truth: List[Dict[str, Any]] = []
    for image_id in sorted({d["image_id"] for d in one_by_one}):
        best = sorted((d for d in one_by_one if d["image_id"] == image_id
                       and d["category_id"] in (1, 2)),
                      key=lambda d: -d["score"])[:3]
        truth += [{"id": 0, "image_id": image_id, "category_id": d["category_id"],
                   "bbox": d["bbox"], "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0}
                  for d in best]
    for number, annotation in enumerate(truth):
        annotation["id"] = number + 1
    write_annotations(root, "val", VARIED, truth)
    val = CocoDetection(root / "val2017", val_file, train=False)

    def score(detections: List[Dict[str, Any]]) -> float:
        return coco_bbox_map(val.scoring_coco, detections, val.ids, "pycocotools")["mAP"]

    grouped = shape_grouped_batches(sizes, 4, detection_transform(SIZE, SIZE))
    assert max(len(b) for b in grouped) == 4 and len(grouped) < len(VARIED)
    alone = score(one_by_one)
    in_fours = evaluate_with(detector, val, grouped)
    assert score(in_fours) == pytest.approx(alone, abs=1e-4)
    assert len(in_fours) == len(one_by_one)
    # batches of 4 in file order pad the narrow images to 64x64: their detections change
    padded = evaluate_with(detector, val, [list(range(i, i + 4)) for i in range(0, 8, 4)])
    assert abs(score(padded) - alone) > 0.01


def test_shape_grouped_batches_keep_every_image_once_in_order():
    transform = detection_transform(SIZE, SIZE)
    sizes = [(info["height"], info["width"]) for info in VARIED] * 3
    batches = shape_grouped_batches(sizes, 4, transform)
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))
    for batch in batches:
        assert len(batch) <= 4 and batch == sorted(batch)
        assert len({padded_shape(transform, *sizes[i]) for i in batch}) == 1
    singles = shape_grouped_batches(sizes, 1, transform)
    assert sorted(singles) == [[i] for i in range(len(sizes))]
    assert [i for b in batches for i in b] == [i for b in singles for i in b]  # the same order


def test_a_run_keeps_all_12_stats_and_says_how_flops_were_counted(tiny_run):
    result = json.loads((tiny_run / "result.json").read_text())
    evaluated = [e for e in result["epochs"] if "mAP" in e]
    assert evaluated and all(name in evaluated[-1] for name in COCO_STAT_NAMES)
    assert all(name in result["metrics"] for name in COCO_STAT_NAMES)
    if result["metrics"]["flops_per_image"] is not None:
        assert result["metrics"]["flops_note"].startswith("counted per trained batch shape")


def test_a_run_s_eval_loader_batches_images_of_one_padded_shape(tmp_path):
    """The evaluation loader that train.py builds, on each of two ranks' shards."""
    import logging
    from types import SimpleNamespace

    from chipbench.cases.retinanet.train import build_loaders

    root = write_set(tmp_path, VARIED, [dict(ANNOTATIONS[5], image_id=i + 1, id=i + 1)
                                      for i in range(len(VARIED))])
    config = {"data": {"num_workers": 0, "hflip": 0.5, "aspect_ratio_group_factor": 3,
                       "pin_memory": False},
              "train": {"batch_size": 2, "seed": 0}, "eval": {"batch_size": 4},
              "model": {"min_size": SIZE, "max_size": SIZE}}
    transform = detection_transform(SIZE, SIZE)
    seen: List[int] = []
    for rank in (0, 1):
        ctx = SimpleNamespace(config=config, rank=rank, world_size=2, device=torch.device("cpu"),
                              facade=SimpleNamespace(loader_workers=lambda configured, local: 0),
                              log=logging.getLogger("test"))
        _, val, _, _, loader = build_loaders(ctx, root)
        shard = loader.dataset
        for batch in loader.batch_sampler:
            assert len(batch) <= 4
            shapes = {padded_shape(transform, VARIED[shard.indices[i]]["height"],
                                   VARIED[shard.indices[i]]["width"]) for i in batch}
            assert len(shapes) == 1
            seen += [shard.indices[i] for i in batch]
    assert sorted(seen) == list(range(len(VARIED)))
