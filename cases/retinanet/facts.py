"""What a RetinaNet run trains and evaluates on (``result.json``'s ``data``), and the caveats a
reader of its figures must know (the report shows them as they are)."""

import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from chipbench.case import UserError, safeio

if TYPE_CHECKING:
    from chipbench.cases.retinanet.data import CocoDetection


def annotation_count(dataset: "CocoDetection") -> int:
    """Annotations of the images that ``dataset`` uses: a training set's boxes kept, an
    evaluation set's ground truth as scored (:func:`scoring_ground_truth`)."""
    coco = dataset.scoring_coco if dataset.scoring_coco is not None else dataset.coco
    return sum(len(coco.imgToAnns.get(i, [])) for i in dataset.ids)


def data_facts(train_set: "CocoDetection", val_set: "CocoDetection", num_classes: int,
               config: Dict[str, Any], world_size: int, backbone_weights: Optional[str],
               caveats: bool = True) -> Dict[str, Any]:
    """What the run trains and evaluates on (``result.json``'s ``data``, with its ``caveats``:
    :func:`data_caveats`, where ``caveats``: rank 0 alone writes them, and finding shared files
    reads every image's size); ``backbone_weights`` is the file the model's backbone starts from
    (None: random init). Refuses a batch size that the training images of one process cannot
    fill."""
    batch = config["train"]["batch_size"]
    per_process = -(-len(train_set) // world_size)
    if batch > per_process:
        raise UserError(
            "train.batch_size {} is larger than the {} usable training image(s) each of the {} "
            "process(es) gets from {}".format(batch, per_process, world_size,
                                              train_set.annotation_file),
            "set --set train.batch_size={} or less, or use more data".format(per_process))
    return {"train_images": len(train_set), "val_images": len(val_set),
            "train_annotations": annotation_count(train_set),
            "val_annotations": annotation_count(val_set),
            "train_images_dropped": train_set.images_listed - len(train_set),
            "boxes_dropped": train_set.boxes_dropped + val_set.boxes_not_scored,
            "train_boxes_dropped": train_set.boxes_dropped,
            "val_boxes_dropped": val_set.boxes_not_scored,
            "val_invalid_boxes_scored": val_set.invalid_boxes_scored,
            "num_classes": num_classes, "min_size": config["model"]["min_size"],
            "max_size": config["model"]["max_size"], "batch_size": batch,
            "train_file": str(train_set.annotation_file), "val_file": str(val_set.annotation_file),
            "caveats": data_caveats(train_set, val_set, config, backbone_weights) if caveats else []}


COCO2017_IMAGES = (118287, 5000)
"""The images COCO2017's train and val annotation files list."""
SMALL_VAL_IMAGES = 500
"""Below this many val images, mAP is too coarse a figure to compare runs by (each image moves
it by 0.2 points or more)."""


def data_caveats(train_set: "CocoDetection", val_set: "CocoDetection",
                 config: Dict[str, Any], backbone_weights: Optional[str]) -> List[str]:
    """What the figures rest on that a reader must know (the report shows each line as it is):
    val images that are training images too, a val set too small for mAP to mean much, a
    backbone trained from random init, crowd regions, and a COCO-layout set that is not the full
    COCO2017."""
    caveats = []
    shared = shared_images(train_set, val_set)
    if shared:
        caveats.append("{} of the {} val images are also training images (the same file, or an "
                       "identical copy under the same name): mAP on them rewards memorising"
                       .format(shared, len(val_set)))
    if len(val_set) < SMALL_VAL_IMAGES:
        caveats.append("val set of {} images (under {}): mAP over so few images is a coarse "
                       "figure, not one to rank runs by".format(len(val_set), SMALL_VAL_IMAGES))
    if not backbone_weights:  # what the model was built from, not what a setting says
        caveats.append("backbone trained from random init (no backbone weights file: "
                       "model.backbone_weights none): mAP is not comparable with "
                       "ImageNet-initialised RetinaNet results")
    crowd_val, crowd_train = crowd_regions(val_set), crowd_regions(train_set)
    if crowd_val or crowd_train:
        caveats.append("{} crowd region(s) (iscrowd 1) in the val annotations, {} in the train "
                       "annotations: pycocotools ignores detections matched to them (neither "
                       "true nor false positives), and training leaves them out".format(
                           crowd_val, crowd_train))
    listed = (train_set.images_listed, val_set.images_listed)
    if (config.get("data") or {}).get("dir") is not None and listed != COCO2017_IMAGES:
        caveats.append("COCO layout, not the full COCO2017: {} train / {} val images (COCO2017 "
                       "has {} / {})".format(*(listed + COCO2017_IMAGES)))
    return caveats


def crowd_regions(dataset: "CocoDetection") -> int:
    """Crowd annotations (``iscrowd`` 1) of the images ``dataset`` uses."""
    coco = dataset.scoring_coco if dataset.scoring_coco is not None else dataset.coco
    return sum(1 for i in dataset.ids for ann in coco.imgToAnns.get(i, []) if ann.get("iscrowd"))


def shared_images(train_set: "CocoDetection", val_set: "CocoDetection") -> int:
    """Val images that are training images too: the same file (one path, or a link to it), or a
    file of the same name and identical bytes (names alone do not count: the embedded set names
    its val images like its training images). Only same-named files of equal size are read."""
    trained = set()
    by_name: Dict[str, List[Tuple[int, str]]] = {}
    for path in _image_paths(train_set):
        status = _stat(path)
        if status is not None:
            trained.add((status.st_dev, status.st_ino))
            by_name.setdefault(os.path.basename(path), []).append((status.st_size, path))
    shared = 0
    for path in _image_paths(val_set):
        status = _stat(path)
        if status is None:
            continue
        if (status.st_dev, status.st_ino) in trained or any(
                size == status.st_size and _same_bytes(path, other)
                for size, other in by_name.get(os.path.basename(path), [])):
            shared += 1
    return shared


def _image_paths(dataset: "CocoDetection") -> List[str]:
    return [os.path.join(dataset.root, dataset.coco.imgs[i]["file_name"]) for i in dataset.ids]


def _stat(path: str) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except OSError:
        return None


def _same_bytes(path: str, other: str) -> bool:
    from chipbench.cases.retinanet.data import IMAGE_LIMIT

    try:
        return safeio.read_bytes(path, IMAGE_LIMIT, follow=True, what="image") == \
            safeio.read_bytes(other, IMAGE_LIMIT, follow=True, what="image")
    except (OSError, UserError):
        return False
