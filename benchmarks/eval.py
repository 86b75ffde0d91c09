"""COCO bbox evaluation: faster-coco-eval against pycocotools on COCO-sized synthetic detections.

Generates a ground truth of ``--images`` images (COCO's 5000 val images, ~7 objects each over 80
categories) and ~``--dets`` detections per image (noisy copies of the objects plus false
positives, as a detector's top-100), evaluates both backends on the same input, checks that the 12
summary figures agree to 1e-6 and prints the time ratio last. With ``--result`` (a run's
result.json) it also prints the share of evaluation in that run's wall time.

    python benchmarks/eval.py [--images 5000] [--dets 100] [--result runs/<run>/result.json]

Goal: pycocotools / faster-coco-eval >= 5x, identical figures.
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from chipbench.cases.retinanet.evaluate import coco_stats


def synthetic_set(images: int, dets: int, seed: int = 0) -> Tuple[Any, List[Dict[str, Any]]]:
    """A pycocotools ``COCO`` ground truth and detection results of it."""
    from pycocotools.coco import COCO

    rng = random.Random(seed)
    dataset: Dict[str, Any] = {"images": [], "annotations": [],
                               "categories": [{"id": c, "name": str(c)} for c in range(1, 81)]}
    results: List[Dict[str, Any]] = []
    for image_id in range(1, images + 1):
        dataset["images"].append({"id": image_id, "width": 640, "height": 480})
        objects = []
        for _ in range(rng.randint(1, 14)):
            w, h = rng.uniform(8, 300), rng.uniform(8, 300)
            box = [rng.uniform(0, 640 - w), rng.uniform(0, 480 - h), w, h]
            category = rng.randint(1, 80)
            objects.append((box, category))
            dataset["annotations"].append({"id": len(dataset["annotations"]) + 1,
                                           "image_id": image_id, "category_id": category,
                                           "bbox": box, "area": w * h,
                                           "iscrowd": int(rng.random() < 0.01)})
        for _ in range(dets):
            if objects and rng.random() < 0.3:
                (x, y, w, h), category = rng.choice(objects)
                box = [x + rng.gauss(0, w * 0.1), y + rng.gauss(0, h * 0.1),
                       max(1.0, w * rng.uniform(0.7, 1.3)), max(1.0, h * rng.uniform(0.7, 1.3))]
                if rng.random() < 0.2:
                    category = rng.randint(1, 80)
            else:
                w, h = rng.uniform(4, 300), rng.uniform(4, 300)
                box = [rng.uniform(0, 640 - w), rng.uniform(0, 480 - h), w, h]
                category = rng.randint(1, 80)
            results.append({"image_id": image_id, "category_id": category,
                            "bbox": [round(v, 2) for v in box], "score": round(rng.random(), 5)})
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco, results


def timed(coco: Any, results: List[Dict[str, Any]], backend: str) -> Tuple[float, List[float]]:
    start = time.perf_counter()
    stats = coco_stats(coco, [dict(r) for r in results], sorted(coco.imgs), backend)
    return time.perf_counter() - start, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each backend")
    parser.add_argument("--result", help="a run's result.json: print evaluation's share of it")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    coco, results = synthetic_set(args.images, args.dets)
    print("{} images, {} annotations, {} detections".format(
        len(coco.imgs), len(coco.anns), len(results)), flush=True)
    times: Dict[str, List[float]] = {"pycocotools": [], "faster_coco_eval": []}
    stats: Dict[str, List[float]] = {}
    for _ in range(args.repeat):  # interleaved
        for backend in ("faster_coco_eval", "pycocotools"):
            seconds, stats[backend] = timed(coco, results, backend)
            times[backend].append(seconds)
            print("{:<17} {:7.2f} s  mAP {:.6f}".format(backend, seconds, stats[backend][0]),
                  flush=True)
    diff = max(abs(a - b) for a, b in zip(stats["pycocotools"], stats["faster_coco_eval"]))
    ratio = min(times["pycocotools"]) / min(times["faster_coco_eval"])
    figures = {"images": len(coco.imgs), "detections": len(results), "seconds": times,
               "stats": stats, "max_stat_difference": diff, "speedup": ratio}
    if args.result:
        metrics = json.loads(Path(args.result).read_text()).get("metrics", {})
        wall = metrics.get("e2e_time")
        if wall:
            figures["eval_share_of_e2e"] = metrics.get("eval_seconds", 0.0) / wall
            print("evaluation in {}: {:.1f} s of {:.1f} s e2e ({:.0%})".format(
                args.result, metrics.get("eval_seconds", 0.0), wall,
                figures["eval_share_of_e2e"]))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print("stats identical to 1e-6: {} (max difference {:.2g})".format(diff <= 1e-6, diff))
    print("pycocotools / faster_coco_eval time: {:.2f}x (goal >= 5x)".format(ratio))
    return 0 if diff <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
