"""The embedded default dataset: synthetic COCO-format detection data, written once to a cache.

Coloured squares, discs and triangles on noisy backgrounds, as JPEG files plus COCO instances
JSON, in COCO2017's layout (``train2017/``, ``val2017/``, ``annotations/``), so that it is read
through exactly the same code path as the real dataset. The generator is deterministic: the same
parameters give the same files, byte for byte, on the same libjpeg.
"""

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from chipbench.case import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - a platform without POSIX record locks
    fcntl = None  # type: ignore[assignment]

CATEGORIES = [
    {"id": 1, "name": "red square", "supercategory": "shape"},
    {"id": 2, "name": "green disc", "supercategory": "shape"},
    {"id": 3, "name": "blue triangle", "supercategory": "shape"},
]
CLASS_COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (50, 70, 230)}
"""Each class has its own hue (jittered per object), so a small model learns it in minutes."""
GENERATOR_VERSION = 1
COMPLETE_MARKER = "COMPLETE.json"
EMPTY_EVERY = 16
"""Every 16th image holds no object, so the loader's drop-empty rule is exercised."""


def annotated_images(count: int) -> int:
    """How many of ``count`` generated images hold objects (training uses only those)."""
    return count - count // EMPTY_EVERY


def default_cache_root() -> Path:
    """``$CHIPBENCH_CACHE`` or ``~/.cache/chipbench``."""
    env = os.environ.get("CHIPBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "chipbench"


def dataset_params(train_images: int, val_images: int, image_size: int, seed: int) -> Dict[str, Any]:
    return {"generator": GENERATOR_VERSION, "train_images": int(train_images),
            "val_images": int(val_images), "image_size": int(image_size), "seed": int(seed)}


def _draw_object(draw: ImageDraw.ImageDraw, category: int, box: Tuple[int, int, int, int],
                 colour: Tuple[int, ...]) -> None:
    x0, y0, x1, y1 = box
    if category == 1:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
    elif category == 2:
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour)


def _overlaps(box: Tuple[int, int, int, int], others: List[Tuple[int, int, int, int]]) -> bool:
    return any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in others)


def make_image(rng: np.random.RandomState, size: int, empty: bool
               ) -> Tuple[Image.Image, List[Dict[str, Any]]]:
    """One noisy image with 0 (``empty``) or 1-3 non-overlapping shapes and their boxes."""
    base = rng.randint(70, 170, size=1).repeat(3) + rng.randint(-20, 21, size=3)
    noise = rng.normal(0, 20, size=(size, size, 3))
    pixels = np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    objects: List[Dict[str, Any]] = []
    boxes: List[Tuple[int, int, int, int]] = []
    count = 0 if empty else rng.randint(1, 4)
    for _ in range(count * 10):
        if len(boxes) == count:
            break
        side = int(rng.randint(size // 5, size // 2))
        x0, y0 = (int(v) for v in rng.randint(0, size - side, size=2))
        box = (x0, y0, x0 + side, y0 + side)
        if _overlaps(box, boxes):
            continue
        category = int(rng.randint(1, len(CATEGORIES) + 1))
        jitter = rng.randint(-30, 31, size=3)
        colour = tuple(int(min(255, max(0, c + j))) for c, j in zip(CLASS_COLOURS[category], jitter))
        _draw_object(draw, category, box, colour)
        boxes.append(box)
        objects.append({"category_id": category, "bbox": [x0, y0, side, side]})
    return image, objects


def _write_split(root: Path, split: str, count: int, size: int, seed: int) -> None:
    rng = np.random.RandomState(seed)
    image_dir = root / "{}2017".format(split)
    image_dir.mkdir(parents=True)
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for index in range(count):
        image_id = index + 1
        image, objects = make_image(rng, size, empty=(index % EMPTY_EVERY == EMPTY_EVERY - 1))
        file_name = "{:012d}.jpg".format(image_id)
        image.save(image_dir / file_name, quality=92)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for obj in objects:
            w, h = obj["bbox"][2], obj["bbox"][3]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": obj["category_id"], "bbox": obj["bbox"],
                                "area": float(w * h), "iscrowd": 0})
    instances = {"info": {"description": "chipbench synthetic shapes (not COCO)"},
                 "licenses": [], "images": images, "annotations": annotations,
                 "categories": CATEGORIES}
    ann_dir = root / "annotations"
    ann_dir.mkdir(exist_ok=True)
    with open(ann_dir / "instances_{}2017.json".format(split), "w") as handle:
        json.dump(instances, handle)


def ensure_synthetic_coco(train_images: int = 64, val_images: int = 32, image_size: int = 128,
                          seed: int = 0, cache_root: Optional[Path] = None) -> Path:
    """Return the folder of the synthetic dataset with these parameters, generating it once.

    Any number of processes may ask for the same set at once on one cache (runs started
    together): one generates it, under a lock, into a temporary folder that is renamed into place
    when whole; the others wait for it and use that copy. A complete copy is never deleted or
    replaced, so a run reading it is never pulled from under; an interrupted generation leaves no
    half-written set behind.
    """
    params = dataset_params(train_images, val_images, image_size, seed)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    cache_root = Path(cache_root) if cache_root else default_cache_root()
    target = cache_root / "synthetic-coco-{}".format(digest)
    if is_complete(target):
        return target
    try:
        return _generate(params, target, cache_root)
    except OSError as exc:
        raise UserError(
            "cannot write the data cache {} ({})".format(
                cache_root, exc.strerror or type(exc).__name__),
            "set CHIPBENCH_CACHE to a folder you can write to (default ~/.cache/chipbench)"
        ) from None


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` is a whole generated set: its marker is written last, in the temporary
    folder, before the rename that puts the set in place."""
    return (Path(folder) / COMPLETE_MARKER).is_file()


_IN_PROCESS = threading.Lock()
"""POSIX record locks belong to a process: its threads take turns through this one first."""

NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF)
"""What ``lockf`` says on a file system without POSIX locks (some NFS, FUSE mounts)."""


@contextlib.contextmanager
def _generation_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if need be; never removed: a lock file that
    is deleted and re-created lets two holders in); yields whether it is held. Where the file
    system has no locks, yields False and the caller relies on the rename alone."""
    with _IN_PROCESS:
        if fcntl is None:  # pragma: no cover - a platform without POSIX record locks
            yield False
            return
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)  # waits while another process generates
                held = True
            except OSError as exc:
                if exc.errno not in NO_LOCKS:
                    raise
                held = False
            yield held
        finally:
            os.close(fd)  # lets go of the lock


def _generate(params: Dict[str, Any], target: Path, cache_root: Path) -> Path:
    """Write the set into a staging folder under ``cache_root`` and rename it to ``target``,
    holding the set's lock; a process that waited for the lock finds the set complete."""
    if cache_root.exists() and not cache_root.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder", str(cache_root))
    cache_root.mkdir(parents=True, exist_ok=True)
    train_images, val_images = params["train_images"], params["val_images"]
    image_size, seed = params["image_size"], params["seed"]
    prefix = ".{}-".format(target.name)
    with _generation_lock(cache_root / ".{}.lock".format(target.name)) as locked:
        if is_complete(target):  # another process generated it while this one waited
            return target
        if locked:  # staging folders of this set left by a process killed while generating
            for stale in cache_root.glob(prefix + "*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=str(cache_root)))
        try:
            _write_split(staging, "train", train_images, image_size, seed)
            _write_split(staging, "val", val_images, image_size, (seed + 1) % 2**32)
            with open(staging / COMPLETE_MARKER, "w") as handle:
                json.dump(params, handle)
            _install(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target


def _install(staging: Path, target: Path) -> None:
    """Rename the whole set ``staging`` to ``target``: the first complete copy wins (a process
    on a file system without locks may have put one there meanwhile; this one's is then
    dropped). Only an incomplete ``target``, left by an older version that wrote in place, is
    moved aside and removed; a complete one is never touched."""
    for _ in range(3):
        try:
            os.rename(str(staging), str(target))
            return
        except OSError as exc:
            if is_complete(target):
                return
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        aside = Path(tempfile.mkdtemp(prefix=".stale-{}-".format(target.name),
                                      dir=str(target.parent)))
        try:
            if not is_complete(target):
                os.rename(str(target), str(aside / "set"))
                if is_complete(aside / "set"):  # completed in between: it goes back
                    os.rename(str(aside / "set"), str(target))
        except OSError:
            pass  # moved or completed by another process meanwhile: look again
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    if not is_complete(target):
        raise OSError(errno.EEXIST, "{} is in the way and cannot be replaced".format(target),
                      str(target))
