"""COCO2017 detection data through torchvision's ``CocoDetection``: targets, flips, batching.

The same code reads real COCO2017 and the embedded synthetic set. Targets are converted from COCO
annotations (xywh boxes) to what torchvision's detection models take (xyxy ``boxes``, ``labels``),
crowd boxes and boxes under 1 px dropped, as in torchvision's detection references. Where
torchvision has the transforms-v2 dataset wrapper with ``target_keys`` (0.16 and later) it does the
conversion and the flip; on torchvision 0.15 a small converter of our own does the same. JPEG
files are decoded with ``torchvision.io.decode_jpeg`` (1.4-1.7x PIL's images/s per loader worker,
``benchmarks/dataloader.py``); other formats, and JPEGs it cannot decode, with PIL.
"""

import contextlib
import inspect
import io
import os
import random
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torchvision
from PIL import Image
from torchvision.transforms import functional as F

from chipbench.case import UserError, is_number, safeio, shown

SPLITS = ("train", "val")

MIN_BOX_SIDE = 1.0

JPEG_MAGIC = b"\xff\xd8\xff"

IMAGE_LIMIT = 256 * safeio.MiB
"""The largest image file read (COCO's are under 1 MB; a 100-megapixel JPEG is about 30 MB)."""
ANNOTATION_LIMIT = 2 * safeio.GiB
"""The largest annotation file read (COCO2017's instances_train2017.json is 448 MB)."""


def decode_image_file(path: str) -> torch.Tensor:
    """An image file as a uint8 RGB tensor ``[3, H, W]``: a JPEG through torchvision's
    ``decode_jpeg`` where this torchvision has it; any other format, or a JPEG it refuses (CMYK on
    older torchvision), through PIL. A file neither can read raises (the caller names it); one
    that is no regular file (a FIFO, a device) or is over :data:`IMAGE_LIMIT` is refused naming
    it, never waited on or read whole."""
    data = safeio.read_bytes(path, IMAGE_LIMIT, follow=True, what="image",
                             fix="replace it with the image file, or remove it from the "
                                 "annotation file")
    decode_jpeg = getattr(torchvision.io, "decode_jpeg", None)
    if data[:3] == JPEG_MAGIC and decode_jpeg is not None:
        try:
            with warnings.catch_warnings():  # 0.29 deprecates it in favour of TorchCodec
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                   mode=torchvision.io.ImageReadMode.RGB)
        except RuntimeError:
            pass  # PIL decides: it reads more JPEG variants, and fails on truly corrupt files
    with Image.open(io.BytesIO(data)) as image:
        return F.pil_to_tensor(to_rgb(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. 16- and 32-bit integer greyscale (``I;16``, ``I``) is scaled to
    8 bits first: PIL's own conversion clips it, and a 16-bit PNG came out all white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        import numpy as np

        pixels = np.asarray(image).astype(np.int64)
        bits = 16 if image.mode.startswith("I;16") or pixels.max(initial=0) < 2**16 else 32
        image = Image.fromarray((np.clip(pixels, 0, 2**bits - 1) >> (bits - 8)).astype(np.uint8))
    return image.convert("RGB")


class _TensorImageCoco(torchvision.datasets.CocoDetection):
    """torchvision's ``CocoDetection`` with images from :func:`decode_image_file` (what the
    transforms-v2 wrapper reads through)."""

    def _load_image(self, id: int) -> torch.Tensor:
        info = self.coco.loadImgs(id)[0]
        path = os.path.join(self.root, info["file_name"])
        image = decode_image_file(path)
        check_image_size(image, info, path, getattr(self.coco, "annotation_file", None))
        return image


def check_image_size(image: torch.Tensor, info: Dict[str, Any], path: str,
                     annotation_file: Optional[Path]) -> None:
    """Refuse an image whose decoded size is not the ``width`` and ``height`` its annotation
    file gives: the boxes are placed, checked and clipped by those, so a wrong size silently
    moves or drops every box of the image."""
    height, width = (int(v) for v in image.shape[-2:])
    if (width, height) != (info.get("width"), info.get("height")):
        listed = annotation_file.name if annotation_file is not None else "its annotation file"
        raise UserError(
            "image {} (id {}) is {}x{} px, but {} gives it width {} and height {}".format(
                path, info.get("id"), width, height, listed, shown(info.get("width")),
                shown(info.get("height"))),
            "correct its width and height in {} (or replace the image): boxes are placed by "
            "them".format(annotation_file if annotation_file is not None else "that file"))


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
    try:
        if data_dir.exists() and not data_dir.is_dir():
            raise UserError("data dir {} is a file, not a folder".format(data_dir), fix)
        if not data_dir.is_dir():
            raise UserError("data dir {} does not exist".format(data_dir), fix)
        for split in SPLITS:
            images, annotations = coco_paths(data_dir, split)
            if not images.is_dir():
                raise UserError("data dir {} has no {}/ image folder".format(
                    data_dir, images.name), fix)
            kind = safeio.kind_of(annotations)
            if kind is None:
                raise UserError("data dir {} has no annotations/{}".format(
                    data_dir, annotations.name), fix)
            if kind != "a regular file":  # a FIFO would block the read, /dev/zero never end
                raise safeio.FileRefused(annotations, kind, "annotation file", fix)
    except OSError as exc:  # a name too long, a looping link, no permission to look
        raise UserError("cannot read data dir {} ({})".format(
            shown(str(data_dir)), exc.strerror or type(exc).__name__), fix) from None


def load_coco_api(annotation_file: Path) -> Any:
    """Load an instances JSON with pycocotools (quietly); a broken file is a one-line error.

    Invalid boxes (not 4 finite numbers, under 1 px, or outside the image) are removed; how many
    is ``coco.boxes_dropped``. The annotations as the file gives them stay in
    ``coco.annotations_as_given``: evaluation scores against those (:func:`scoring_ground_truth`).
    """
    from pycocotools.coco import COCO

    try:  # a regular file (a link to one is fine in a data dir), bounded: never a FIFO
        dataset = safeio.read_json(annotation_file, ANNOTATION_LIMIT, follow=True,
                                   what="annotation file", fix="re-download or regenerate it")
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError("annotation file {} is not valid JSON ({})".format(annotation_file, exc),
                        "re-download or regenerate it") from None
    if not isinstance(dataset, dict):
        raise UserError("annotation file {} is not a COCO instances mapping".format(
            annotation_file), "use a COCO instances file (instances_*2017.json)")
    missing = [k for k in ("images", "annotations", "categories") if k not in dataset]
    if missing:
        raise UserError("annotation file {} lacks {}".format(annotation_file, ", ".join(missing)),
                        "use a COCO instances file (instances_*2017.json)")
    given = dataset["annotations"]
    dataset["annotations"], dropped = check_instances(dataset, Path(annotation_file))
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    coco.boxes_dropped = dropped
    coco.annotations_as_given = given
    coco.annotation_file = Path(annotation_file)  # named when an image's size disagrees
    return coco


def check_instances(dataset: Dict[str, Any], annotation_file: Path
                    ) -> Tuple[List[Dict[str, Any]], int]:
    """Refuse images without a positive size and annotations of unknown images or categories;
    return the annotations whose boxes are valid and how many were not."""
    name = annotation_file.name
    fix = "fix or remove that entry in {}".format(annotation_file)
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise UserError("annotation file {} has {} {}, not a list".format(
                annotation_file, key, shown(dataset.get(key))), "restore the COCO file")
    for key, entries in (("image", dataset["images"]), ("category", dataset["categories"]),
                         ("annotation", dataset["annotations"])):
        seen = set()
        for entry in entries:
            ident = entry.get("id") if isinstance(entry, dict) else None
            if not _is_id(ident):
                raise UserError("{} entry {} in {} has id {}, not a non-negative integer".format(
                    key, shown(entry)[:60], name, shown(ident)), fix)
            if ident in seen:
                raise UserError("{} id {} appears twice in {}".format(key, ident, name), fix)
            seen.add(ident)
    largest = max((c["id"] for c in dataset["categories"]), default=0)
    if largest > MAX_CATEGORY_ID:
        raise UserError("category id {} in {} is over {}: the model has one output per id up to "
                        "the largest".format(largest, name, MAX_CATEGORY_ID),
                        "number the categories from 1 (COCO's go up to 90)")
    for image in dataset["images"]:
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip() \
                or any(ord(c) < 32 or c == "\x7f" for c in file_name):
            raise UserError("image {} in {} has file_name {}, not a file name{}".format(
                image["id"], name, shown(file_name), " (it holds a control character)"
                if isinstance(file_name, str) and file_name.strip() else ""), fix)
    try:
        categories = {c["id"] for c in dataset["categories"]}
        sizes = {}
        for image in dataset["images"]:
            width, height = image.get("width"), image.get("height")
            if not all(is_number(v) and v > 0 for v in (width, height)):
                raise UserError("image {} in {} has width {} and height {}; both must be "
                                "positive".format(image.get("id"), name, shown(width),
                                                  shown(height)), fix)
            sizes[image["id"]] = (width, height)
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError("annotation file {} has a malformed image or category entry ({}: {})"
                        .format(annotation_file, type(exc).__name__, exc), fix) from None
    kept, dropped = [], 0
    for ann in dataset["annotations"]:
        if not isinstance(ann, dict):
            raise UserError("annotation file {} holds an annotation that is not a mapping".format(
                annotation_file), fix)
        for field in ("image_id", "category_id"):
            if not _is_id(ann.get(field)):
                raise UserError("annotation {} in {} has {} {}, not a non-negative integer"
                                .format(ann.get("id"), name, field, shown(ann.get(field))), fix)
        if ann.get("iscrowd") not in (0, 1) or isinstance(ann.get("iscrowd"), bool):
            raise UserError("annotation {} in {} has iscrowd {}, not 0 or 1".format(
                ann.get("id"), name, shown(ann.get("iscrowd"))),
                "give every annotation \"iscrowd\": 0 (1 for a crowd region), as COCO does")
        if ann.get("category_id") not in categories:
            raise UserError("annotation {} in {} has category_id {!r}, which is not among its "
                            "categories ({})".format(ann.get("id"), name, ann.get("category_id"),
                                                     ", ".join(str(c) for c in sorted(categories))),
                            fix)
        if ann["image_id"] not in sizes:
            raise UserError("annotation {} in {} has image_id {}, which is not among its images"
                            .format(ann.get("id"), name, ann["image_id"]), fix)
        if _box_ok(ann.get("bbox"), sizes[ann["image_id"]]):
            kept.append(ann)
        else:
            dropped += 1
    return kept, dropped


def scoring_ground_truth(coco: Any) -> Tuple[Any, int]:
    """The ground truth that evaluation scores against, and how many boxes it leaves out.

    It is the annotation file as given (``coco.annotations_as_given`` of :func:`load_coco_api`),
    as plain pycocotools and the published COCO results score it: boxes under 1 px or outside the
    image, which training drops, are kept, and crowd regions (``iscrowd`` 1) stay regions whose
    detections COCOeval counts neither as true nor as false positives. Left out are only boxes
    that are not 4 finite numbers, which no COCO scorer can place (pycocotools fails on them). An
    annotation without a numeric ``area`` gets its box's width x height, as faster-coco-eval
    gives it (pycocotools would fail on it); the file's own dicts are not changed.
    """
    from pycocotools.coco import COCO

    given = getattr(coco, "annotations_as_given", None)
    if given is None:
        given = coco.dataset["annotations"]
    kept: List[Dict[str, Any]] = []
    for ann in given:
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 \
                or not all(is_number(v) for v in bbox):
            continue
        if not is_number(ann.get("area")):
            ann = dict(ann, area=float(bbox[2]) * float(bbox[3]))
        kept.append(ann)
    scoring = COCO()
    scoring.dataset = dict(coco.dataset, annotations=kept)
    with contextlib.redirect_stdout(io.StringIO()):
        scoring.createIndex()
    return scoring, len(given) - len(kept)


MAX_CATEGORY_ID = 100000
"""The largest category id taken: the classification head has an output for every id up to it."""


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _box_ok(bbox: Any, size: Optional[Tuple[float, float]]) -> bool:
    """A COCO ``[x, y, w, h]`` of finite numbers, at least 1 px wide and high inside the image."""
    if size is None or not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return False
    if not all(is_number(v) for v in bbox):  # finite, and an int a float can hold
        return False
    x, y, w, h = bbox
    width, height = size
    inside_w = min(x + w, width) - max(x, 0)
    inside_h = min(y + h, height) - max(y, 0)
    return w >= MIN_BOX_SIDE and h >= MIN_BOX_SIDE and inside_w >= MIN_BOX_SIDE \
        and inside_h >= MIN_BOX_SIDE


class CocoDetection(_TensorImageCoco):
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
        self.images_listed = len(ids)
        if not ids:
            raise UserError("{} lists no images".format(self.annotation_file),
                            "use an annotation file with images in it")
        if train:
            ids = [i for i in ids if _usable(self.coco.imgToAnns.get(i, []))]
            if not ids:
                raise UserError("no image in {} has a usable annotation (a box of 1 px or more, "
                                "not crowd)".format(self.annotation_file),
                                "training needs annotated images: fix the annotation file")
        self.ids = ids
        self.boxes_dropped = int(getattr(self.coco, "boxes_dropped", 0))
        self.scoring_coco: Any = None
        """Evaluation's ground truth (:func:`scoring_ground_truth`; None for a training set)."""
        self.boxes_not_scored = 0
        if not train:
            self.scoring_coco, self.boxes_not_scored = scoring_ground_truth(self.coco)
        self.invalid_boxes_scored = self.boxes_dropped - self.boxes_not_scored if not train else 0
        """Boxes that training would drop and evaluation scores as the file gives them."""
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
        self._v2: Any = None
        if api is not None:
            wrap, v2 = api
            raw = _TensorImageCoco.__new__(_TensorImageCoco)
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
        except UserError:
            raise
        except Exception as exc:
            raise UserError(
                "image {} is unreadable ({}: {})".format(
                    os.path.join(self.root, self.coco.imgs[image_id]["file_name"]),
                    type(exc).__name__, exc),
                "re-download it, or remove it from {}".format(self.annotation_file.name)) from None
        height, width = image.shape[-2:]
        target = convert_target(self._load_target(image_id), image_id, width, height)
        tensor = image.to(torch.float32).div_(255)
        if self.hflip and random.random() < self.hflip:
            tensor = tensor.flip(-1)
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
        return tensor, target

    def _getitem_v2(self, index: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        from torchvision import tv_tensors

        image, target = self._v2[index]
        image = tv_tensors.Image(image)
        size = tuple(image.shape[-2:])
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


def collate(batch: List[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]) -> Tuple[tuple, ...]:
    """``(images, targets)``: detection batches are tuples, not stacked tensors (images differ in
    size)."""
    return tuple(zip(*batch))
