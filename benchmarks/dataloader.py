"""The COCO input path per loader worker: JPEG decode, flip, resize to 800x1333, collate.

Writes ``--images`` COCO-like JPEGs (640x480, quality 90, textured) to a temporary folder and
times, in one process with one thread (what a DataLoader worker gets), two decoders over the same
files: PIL (``Image.open().convert("RGB")`` + ``to_tensor``, what torchvision's CocoDetection does)
and the case's ``decode_image_file`` (``torchvision.io.decode_jpeg`` for JPEGs). Each is timed for
the host path the case runs (decode, flip, float tensor, collate: the model resizes on the
device) and with the resize to 800x1333 on the host as well. Prints images/s per worker and how
many workers per device feed the published rates.

    python benchmarks/dataloader.py [--images 300] [--batch 2] [--rounds 3]
"""

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms import functional as F

from chipbench.cases.retinanet.data import decode_image_file

PUBLISHED = {"A100 1x8": (164.0, 8)}
"""Published p_whole (img/s) and devices per node of the rates to feed; C500: to be measured."""
MIN_SIZE, MAX_SIZE = 800, 1333


def write_jpegs(folder: Path, count: int, seed: int = 0) -> List[Path]:
    """``count`` 640x480 JPEGs with photo-like texture (smooth gradients, blobs, noise)."""
    rng = np.random.RandomState(seed)
    paths = []
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    for i in range(count):
        base = np.stack([np.sin(xx / rng.uniform(20, 200) + rng.uniform(0, 6)) * 60 + 120
                         + np.cos(yy / rng.uniform(20, 200)) * 40 for _ in range(3)], -1)
        pixels = np.clip(base + rng.normal(0, 12, size=base.shape), 0, 255).astype(np.uint8)
        if rng.rand() < 0.5:
            pixels = pixels.transpose(1, 0, 2).copy()[:480, :480]  # some other aspect ratios
        path = folder / "{:012d}.jpg".format(i)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def load_pil(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return F.to_tensor(image.convert("RGB"))


def load_tv(path: Path) -> torch.Tensor:
    """The case's own decoder (``decode_jpeg`` for these JPEGs)."""
    return decode_image_file(str(path)).to(torch.float32).div_(255)


def resize(image: torch.Tensor) -> torch.Tensor:
    """GeneralizedRCNNTransform's resize: short side 800, long side at most 1333."""
    h, w = image.shape[-2:]
    scale = min(MIN_SIZE / min(h, w), MAX_SIZE / max(h, w))
    return torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="bilinear",
                                           recompute_scale_factor=True, align_corners=False)[0]


def run(paths: List[Path], load: Callable[[Path], torch.Tensor], host_resize: bool,
        batch: int) -> float:
    """Images/s of one single-threaded worker over ``paths``."""
    rng = random.Random(0)
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        items = []
        for path in paths[i:i + batch]:
            image = load(path)
            if rng.random() < 0.5:
                image = image.flip(-1)
            if host_resize:
                image = resize(image)
            items.append((image, {"boxes": torch.zeros((0, 4))}))
        tuple(zip(*items))  # the case's collate
    return len(paths) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batch", type=int, default=2, help="images per batch (the seed: 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images)
        variants = {"pil": load_pil, "decode_jpeg": load_tv}
        rates: Dict[str, List[float]] = {}
        for _ in range(args.rounds):
            for name, load in variants.items():
                for host_resize in (False, True):
                    key = "{} {}".format(name, "+ resize 800x1333" if host_resize else "(no resize)")
                    rates.setdefault(key, []).append(run(paths, load, host_resize, args.batch))
    median = {k: statistics.median(v) for k, v in rates.items()}
    for key, value in median.items():
        print("{:<32} {:7.1f} img/s per worker".format(key, value))
    fastest = {mode: max(("pil", "decode_jpeg"), key=lambda n: median["{} {}".format(n, mode)])
               for mode in ("(no resize)", "+ resize 800x1333")}
    figures = {"images": args.images, "img_per_s_per_worker": median, "faster_decoder": fastest,
               "torch": torch.__version__, "torchvision": torchvision.__version__,
               "workers_per_device": {}}
    for label, (rate, devices) in PUBLISHED.items():
        per_device = rate / devices
        for mode, name in fastest.items():
            need = math.ceil(per_device / median["{} {}".format(name, mode)])
            figures["workers_per_device"]["{} {}".format(label, mode)] = need
            print("{}: {:.1f} img/s per device -> {} worker(s) of {} {} (C500: to be measured)"
                  .format(label, per_device, need, name, mode))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print("decode_jpeg / PIL: {:.2f}x without resize, {:.2f}x with resize".format(
        median["decode_jpeg (no resize)"] / median["pil (no resize)"],
        median["decode_jpeg + resize 800x1333"] / median["pil + resize 800x1333"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
