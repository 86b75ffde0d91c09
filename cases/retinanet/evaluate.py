"""COCO bbox evaluation: inference on this rank's shard, one gather, one COCOeval on rank 0.

Two COCOeval backends give the same figures: faster-coco-eval (C++, several times faster on
COCO-sized sets, see benchmarks/eval.py) and pycocotools. ``auto`` takes the first where installed.
"""

import contextlib
import io
from typing import Any, Callable, Dict, List, Sequence

import torch

BACKENDS = ("auto", "faster_coco_eval", "pycocotools")


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
                  backend: str = "auto") -> Dict[str, float]:
    """COCO bbox AP@[.50:.95] (and AP50, AP75) of ``results`` against the original annotations.

    No detection at all gives mAP 0 instead of pycocotools' crash on an empty result list.
    """
    if not results:
        return {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0}
    stats = [max(s, 0.0) for s in coco_stats(coco_gt, results, image_ids, backend)[:3]]
    return {"mAP": stats[0], "AP50": stats[1], "AP75": stats[2]}


def coco_stats(coco_gt: Any, results: List[Dict[str, Any]], image_ids: Sequence[int],
               backend: str = "auto") -> List[float]:
    """The 12 COCOeval bbox summary figures of ``results`` (non-empty) with ``backend``.

    ``coco_gt`` is a pycocotools ``COCO``; "faster_coco_eval" rebuilds it in that package's drop-in
    ``COCO`` and evaluates with its C++ ``COCOeval_faster``.
    """
    if resolve_backend(backend) == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO as FastCOCO
            from faster_coco_eval import COCOeval_faster as COCOeval
        except ImportError as exc:
            from chipbench.errors import UserError

            raise UserError("eval.backend faster_coco_eval cannot be imported ({})".format(exc),
                            "pip install faster-coco-eval, or --set eval.backend=auto") from None
        coco_gt = FastCOCO(coco_gt.dataset)
    else:
        from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(s) for s in evaluator.stats[:12]]
