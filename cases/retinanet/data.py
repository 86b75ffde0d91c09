"""COCO2017 detection data through torchvision's ``CocoDetection``: targets, flips, batching.

The same code reads real COCO2017 and the embedded synthetic set. Targets are converted from COCO
annotations (xywh boxes) to what torchvision's detection models take (xyxy ``boxes``, ``labels``),
crowd boxes and boxes under 1 px dropped, as in torchvision's detection references. Where
torchvision has the transforms-v2 dataset wrapper with ``target_keys`` (0.16 and later) it does the
conversion and the flip; on torchvision 0.15 a small converter of our own does the same.
"""

import contextlib
import inspect
import io
import json
import os
import random
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torchvision
from torchvision.transforms import functional as F

from chipbench.errors import UserError

SPLITS = ("train", "val")

MIN_BOX_SIDE = 1.0


def transforms_v2_api() -> Optional[Tuple[Any, Any]]:
    """``(wrap_dataset_for_transforms_v2, transforms.v2)`` where the wrapper takes target_keys."""
    try:
        with warnings.catch_warnings():  # torchvision 0.15 warns that the wrapper is beta
            warnings.simplefilter("ignore")
            from torchvision.datasets import wrap_dataset_for_transforms_v2
    except ImportError:
        return None
    if "target_keys" not in inspect.signature(wrap_dataset_for_transforms_v2).parameters:
        return None  # torchvision 0.15: its beta wrapper always decodes masks
    from torchvision.transforms import v2

    return wrap_dataset_for_transforms_v2, v2


def coco_paths(data_dir: Path, split: str) -> Tuple[Path, Path]:
    """``(image folder, annotation file)`` of ``split`` in a COCO2017 layout."""
    return (Path(data_dir) / "{}2017".format(split),
            Path(data_dir) / "annotations" / "instances_{}2017.json".format(split))


def check_data_dir(data_dir: Path) -> None:
    """Fail early, with the fix, when ``data_dir`` is not a readable COCO2017 folder."""
    data_dir = Path(data_dir)
    fix = ("point --data-dir at a COCO2017 folder (train2017/, val2017/, "
           "annotations/instances_{train,val}2017.json from cocodataset.org), or omit --data-dir "
           "to use the embedded synthetic set")
    if not data_dir.is_dir():
        raise UserError("data dir {} does not exist".format(data_dir), fix)
    for split in SPLITS:
        images, annotations = coco_paths(data_dir, split)
        if not images.is_dir():
            raise UserError("data dir {} has no {}/ image folder".format(data_dir, images.name), fix)
        if not annotations.is_file():
            raise UserError("data dir {} has no annotations/{}".format(data_dir, annotations.name),
                            fix)


def load_coco_api(annotation_file: Path) -> Any:
    """Load an instances JSON with pycocotools (quietly); a broken file is a one-line error."""
    from pycocotools.coco import COCO

    try:
        with open(annotation_file) as handle:
            dataset = json.load(handle)
    except (OSError, ValueError) as exc:
        raise UserError("annotation file {} is not valid JSON ({})".format(annotation_file, exc),
                        "re-download or regenerate it") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in dataset]
    if missing:
        raise UserError("annotation file {} lacks {}".format(annotation_file, ", ".join(missing)),
                        "use a COCO instances file (instances_*2017.json)")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(torchvision.datasets.CocoDetection):
    """torchvision's ``CocoDetection`` returning (image tensor, detection target) pairs.

    ``train`` drops images without usable annotations and flips horizontally with probability
    ``hflip``. Images that are missing or corrupt raise a one-line :class:`UserError`.
    ``use_v2``: None picks torchvision's transforms-v2 wrapper where available.
    """

    def __init__(self, image_dir: Path, annotation_file: Path, train: bool,
                 hflip: float = 0.5, use_v2: Optional[bool] = None) -> None:
        # torchvision's __init__ would load the JSON again, loudly: set its fields ourselves
        torch.utils.data.Dataset.__init__(self)
        self.root = str(image_dir)
        self.transforms = self.transform = self.target_transform = None
        self.coco = load_coco_api(annotation_file)
        self.annotation_file = Path(annotation_file)
        self.train = train
        self.hflip = hflip if train else 0.0
        ids = sorted(self.coco.imgs.keys())
        if train:
            ids = [i for i in ids if _usable(self.coco.imgToAnns.get(i, []))]
        self.ids = ids
        missing = [self.coco.imgs[i]["file_name"] for i in ids
                   if not os.path.isfile(os.path.join(self.root, self.coco.imgs[i]["file_name"]))]
        if missing:
            raise UserError(
                "{} image file(s) listed in {} are missing from {} (first: {})".format(
                    len(missing), self.annotation_file.name, self.root, missing[0]),
                "restore the images, or use an annotation file that matches the folder")
        api = transforms_v2_api() if use_v2 is not False else None
        if use_v2 and api is None:
            raise RuntimeError("this torchvision has no transforms-v2 wrapper with target_keys")
        self._v2 = None
        if api is not None:
            wrap, v2 = api
            raw = torchvision.datasets.CocoDetection.__new__(torchvision.datasets.CocoDetection)
            raw.__dict__.update(root=self.root, coco=self.coco, ids=self.ids, transforms=None,
                                transform=None, target_transform=None)
            self._v2 = wrap(raw, target_keys={"image_id", "boxes", "labels", "iscrowd"})
            self._v2_transforms = v2.Compose(
                [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=MIN_BOX_SIDE)]
                + ([v2.RandomHorizontalFlip(self.hflip)] if self.hflip else [])
                + [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        image_id = self.ids[index]
        try:
            if self._v2 is not None:
                return self._getitem_v2(index)
            image = self._load_image(image_id)
            image.load()
        except UserError:
            raise
        except Exception as exc:
            raise UserError(
                "image {} is unreadable ({}: {})".format(
                    os.path.join(self.root, self.coco.imgs[image_id]["file_name"]),
                    type(exc).__name__, exc),
                "re-download it, or remove it from {}".format(self.annotation_file.name)) from None
        target = convert_target(self._load_target(image_id), image_id, image.width, image.height)
        tensor = F.to_tensor(image)
        if self.hflip and random.random() < self.hflip:
            tensor = tensor.flip(-1)
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = image.width - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
        return tensor, target

    def _getitem_v2(self, index: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        from torchvision import tv_tensors

        image, target = self._v2[index]
        size = (image.height, image.width)
        boxes = target.get("boxes")
        if boxes is None:  # the wrapper leaves out boxes of images without annotations
            boxes = torch.zeros((0, 4))
        crowd = torch.as_tensor(target.get("iscrowd", []), dtype=torch.bool).reshape(-1)
        labels = torch.as_tensor(target.get("labels", []), dtype=torch.int64).reshape(-1)
        keep = ~crowd if crowd.numel() else torch.ones(len(labels), dtype=torch.bool)
        clean = {"boxes": tv_tensors.BoundingBoxes(torch.as_tensor(boxes)[keep], format="XYXY",
                                                   canvas_size=size),
                 "labels": labels[keep]}
        image, clean = self._v2_transforms(image, clean)
        return image.as_subclass(torch.Tensor), {
            "boxes": clean["boxes"].as_subclass(torch.Tensor).to(torch.float32),
            "labels": clean["labels"],
            "image_id": torch.tensor(int(target["image_id"]), dtype=torch.int64)}

    def aspect_ratios(self) -> List[float]:
        """Width / height of every image, read from the annotations (no image is opened)."""
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.ids]


def _usable(annotations: List[Dict[str, Any]]) -> bool:
    return any(not a.get("iscrowd", 0) and a["bbox"][2] >= MIN_BOX_SIDE
               and a["bbox"][3] >= MIN_BOX_SIDE for a in annotations)


def convert_target(annotations: List[Dict[str, Any]], image_id: int, width: int, height: int
                   ) -> Dict[str, torch.Tensor]:
    """COCO annotations -> ``{"boxes": xyxy float32 [N,4], "labels": int64 [N], "image_id"}``.

    Crowd regions and boxes under 1 px once clipped to the image are dropped.
    """
    annotations = [a for a in annotations if not a.get("iscrowd", 0)]
    boxes = torch.as_tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes[:, 0::2].clamp_(min=0, max=width)
    boxes[:, 1::2].clamp_(min=0, max=height)
    labels = torch.as_tensor([a["category_id"] for a in annotations], dtype=torch.int64)
    keep = ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE) & ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE)
    return {"boxes": boxes[keep], "labels": labels[keep],
            "image_id": torch.tensor(image_id, dtype=torch.int64)}


def collate(batch: List[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]) -> Tuple[tuple, tuple]:
    """Detection batches are lists: images differ in size."""
    return tuple(zip(*batch))
