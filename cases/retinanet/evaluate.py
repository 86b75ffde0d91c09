"""COCO bbox evaluation: inference on this rank's shard, one gather, one COCOeval on rank 0.

Two COCOeval backends give the same figures: faster-coco-eval (C++, several times faster on
COCO-sized sets, see benchmarks/eval.py) and pycocotools. ``auto`` takes the first where installed.

The score is the standard COCO one: the ground truth is the annotation file as given
(:func:`chipbench.cases.retinanet.data.scoring_ground_truth`), and an image's detections do not
depend on the evaluation batch size: torchvision's detection transform pads every image of a batch
to the batch's largest, which changes the features near the padded edges and so the detections, so
evaluation batches hold only images that the transform pads to the same shape
(:func:`shape_grouped_batches`): each image is then computed exactly as alone, as torchvision's
detection reference does with one image per device.
"""

import contextlib
import io
import math
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch

BACKENDS = ("auto", "faster_coco_eval", "pycocotools")

COCO_STAT_NAMES = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
                   "ARm", "ARl")
"""The 12 figures of COCOeval's bbox summary, in its order: AP@[.50:.95] (``mAP``), AP at IoU
.50 and .75, AP of small, medium and large objects, AR with 1, 10 and 100 detections per image,
and AR of small, medium and large objects."""


def detections_to_coco(outputs: Sequence[Dict[str, torch.Tensor]], image_ids: Sequence[int]
                       ) -> List[Dict[str, Any]]:
    """Model outputs (xyxy boxes in original image coordinates) -> COCO result dicts (xywh)."""
    results = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output["boxes"].detach().to("cpu", torch.float32)
        if boxes.numel() == 0:
            continue
        boxes[:, 2:] -= boxes[:, :2]
        for box, score, label in zip(boxes.tolist(), output["scores"].tolist(),
                                     output["labels"].tolist()):
            results.append({"image_id": int(image_id), "category_id": int(label),
                            "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)})
    return results


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``faster_coco_eval`` where that package imports, else ``pycocotools``."""
    if backend != "auto":
        return backend
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return "pycocotools"
    return "faster_coco_eval"


def _inference_mode() -> Any:
    mode = getattr(torch, "inference_mode", None)
    return mode() if mode is not None else torch.no_grad()


def predict(model: torch.nn.Module, loader: Any, device: torch.device,
            autocast: Callable[[], Any]) -> List[Dict[str, Any]]:
    """Run ``model`` over ``loader`` (this rank's shard, in its batches, under inference mode)
    and return COCO result dicts."""
    model.eval()
    results: List[Dict[str, Any]] = []
    with _inference_mode():
        for images, targets in loader:
            images = [image.to(device, non_blocking=True) for image in images]
            with autocast():
                outputs = model(images)
            results.extend(detections_to_coco(outputs, [int(t["image_id"]) for t in targets]))
    return results


def coco_bbox_map(coco_gt: Any, results: List[Dict[str, Any]], image_ids: Sequence[int],
                  backend: str = "auto") -> Dict[str, Optional[float]]:
    """All 12 COCO bbox figures of ``results`` against ``coco_gt``, named as
    :data:`COCO_STAT_NAMES` (``mAP`` is AP@[.50:.95]).

    A figure COCOeval gives as -1 (no ground truth in that area range) is None, except ``mAP``,
    which is then 0 (a target is compared with it). No detection at all is scored as such (every
    AP and AR 0 where there is ground truth), instead of pycocotools' crash on an empty list.
    """
    stats = coco_stats(coco_gt, results, image_ids, backend if results else "pycocotools")
    named: Dict[str, Optional[float]] = {
        name: (value if value >= 0 else None) for name, value in zip(COCO_STAT_NAMES, stats)}
    named["mAP"] = max(stats[0], 0.0)
    return named


def coco_stats(coco_gt: Any, results: List[Dict[str, Any]], image_ids: Sequence[int],
               backend: str = "auto") -> List[float]:
    """The 12 COCOeval bbox summary figures of ``results`` with ``backend``.

    ``coco_gt`` is a pycocotools ``COCO``; "faster_coco_eval" rebuilds it in that package's drop-in
    ``COCO`` and evaluates with its C++ ``COCOeval_faster``. ``results`` may be empty only with
    pycocotools (scored against a result set without detections).
    """
    if resolve_backend(backend) == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO as FastCOCO
            from faster_coco_eval import COCOeval_faster as COCOeval
        except ImportError as exc:
            from chipbench.case import UserError

            raise UserError("eval.backend faster_coco_eval cannot be imported ({})".format(exc),
                            "pip install faster-coco-eval, or --set eval.backend=auto") from None
        coco_gt = FastCOCO(coco_gt.dataset)
    else:
        from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results) if results else _no_detections(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(s) for s in evaluator.stats[:12]]


def _no_detections(coco_gt: Any) -> Any:
    """A pycocotools result set without detections for ``coco_gt``'s images (``loadRes`` fails on
    an empty list)."""
    from pycocotools.coco import COCO

    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset.get("images", [])),
                       "categories": list(coco_gt.dataset.get("categories", [])),
                       "annotations": []}
    coco_dt.createIndex()
    return coco_dt


def detection_transform(min_size: int, max_size: int) -> Any:
    """The resizing and padding of RetinaNet's input as the model does it at evaluation: a
    torchvision ``GeneralizedRCNNTransform`` of ``min_size``/``max_size`` in eval mode (its
    normalisation plays no part in the shape)."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    return GeneralizedRCNNTransform(min_size, max_size, [0.0] * 3, [1.0] * 3).eval()


def padded_shape(transform: Any, height: int, width: int) -> Tuple[int, int]:
    """``(height, width)`` of an image of ``height`` x ``width`` px once ``transform`` (a
    ``GeneralizedRCNNTransform``) has resized it and padded it alone to its ``size_divisible``:
    the resize is run on a tensor without data (the meta device), or, where this torch cannot,
    on a one-channel image of zeros."""
    try:
        image = torch.empty(3, height, width, device="meta")
        resized = transform.resize(image, None)[0]
    except (NotImplementedError, RuntimeError, TypeError):
        resized = transform.resize(torch.zeros(1, height, width), None)[0]
    divisible = int(getattr(transform, "size_divisible", 32))
    height, width = (int(math.ceil(int(side) / divisible)) * divisible
                     for side in resized.shape[-2:])
    return height, width


def shape_grouped_batches(sizes: Sequence[Tuple[int, int]], batch_size: int, transform: Any
                          ) -> List[List[int]]:
    """Batches of at most ``batch_size`` indices into ``sizes`` (``(height, width)`` of each
    image) in which every image is padded by ``transform`` to the same shape as alone: a batch
    pads nothing more, so every image's detections are those of a batch of one, whatever the
    batch size. Images keep their order within a shape; shapes come in order of first
    appearance."""
    shapes: Dict[Hashable, Tuple[int, int]] = {}
    groups: Dict[Tuple[int, int], List[int]] = {}
    for index, (height, width) in enumerate(sizes):
        key = (int(height), int(width))
        if key not in shapes:
            shapes[key] = padded_shape(transform, *key)
        groups.setdefault(shapes[key], []).append(index)
    size = max(1, int(batch_size))
    return [members[start:start + size] for members in groups.values()
            for start in range(0, len(members), size)]
