"""COCO bbox evaluation: inference on this rank's shard, one gather, one COCOeval on rank 0."""

import contextlib
import io
from typing import Any, Callable, Dict, List, Sequence

import torch


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


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Any, device: torch.device,
            autocast: Callable[[], Any]) -> List[Dict[str, Any]]:
    """Run ``model`` over ``loader`` (this rank's shard) and return COCO result dicts."""
    model.eval()
    results: List[Dict[str, Any]] = []
    for images, targets in loader:
        images = [image.to(device, non_blocking=True) for image in images]
        with autocast():
            outputs = model(images)
        results.extend(detections_to_coco(outputs, [int(t["image_id"]) for t in targets]))
    return results


def coco_bbox_map(coco_gt: Any, results: List[Dict[str, Any]], image_ids: Sequence[int],
                  backend: str = "pycocotools") -> Dict[str, float]:
    """COCO bbox AP@[.50:.95] (and AP50, AP75) of ``results`` against the original annotations.

    No detection at all gives mAP 0 instead of pycocotools' crash on an empty result list.
    ``backend`` "faster_coco_eval" uses that package's drop-in ``COCOeval``.
    """
    if not results:
        return {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0}
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO as FastCOCO
        from faster_coco_eval import COCOeval_faster as COCOeval

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
    stats = [max(float(s), 0.0) for s in evaluator.stats[:3]]
    return {"mAP": stats[0], "AP50": stats[1], "AP75": stats[2]}
