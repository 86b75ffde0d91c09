"""torchvision's RetinaNet R50-FPN and its backbone weights (ImageNet, a local file, or none)."""

import hashlib
import math
import os
import re
from pathlib import Path
from typing import IO, Iterable, Optional, Tuple
from urllib.parse import urlparse

import torch
from torchvision.models import resnet50
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from chipbench.case import UserError, safeio, user_os_error

IMAGENET_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt)$")


def sha256_prefix_ok(path: Path) -> Optional[bool]:
    """Check the SHA-256 prefix that the file name carries (``resnet50-0676ba61.pth``).

    True/False when the name carries a prefix, None when it carries none.
    """
    match = HASH_IN_NAME.search(Path(path).name)
    if not match:
        return None
    digest = hashlib.sha256()
    with open_weights(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(match.group(1))


WEIGHTS_LIMIT = 1 * safeio.GiB
"""The largest backbone weights file read (``resnet50-0676ba61.pth`` is 98 MB)."""


def open_weights(path: Path) -> IO[bytes]:
    """A reader of the weights file ``path``: a regular file (a link to one is followed) no
    larger than :data:`WEIGHTS_LIMIT`, else a one-line refusal naming what it is."""
    return safeio.open_for_read(path, WEIGHTS_LIMIT, follow=True, what="backbone weights",
                                fix="give a .pth file, or set model.backbone_weights=none")


def resolve_backbone_weights(setting: str) -> Optional[Path]:
    """Turn the ``model.backbone_weights`` setting into a checked local file, or None.

    ``none``: random init. ``imagenet``: the official ``resnet50-0676ba61.pth`` from the torch hub
    cache, downloaded there if missing. ``file:///path`` or a plain path: that file.
    """
    setting = str(setting).strip()
    if setting.lower() == "none":
        return None
    if setting.lower() == "imagenet":
        target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(IMAGENET_URL)
        if not target.is_file():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError("cannot write the weights cache {} ({})".format(
                    target.parent, exc.strerror or type(exc).__name__),
                    "set TORCH_HOME to a folder you can write to, or set "
                    "model.backbone_weights=file:///path/to/resnet50-0676ba61.pth") from None
            try:
                torch.hub.download_url_to_file(IMAGENET_URL, str(target), progress=False)
            except Exception as exc:
                raise UserError(
                    "cannot fetch backbone weights {} ({})".format(IMAGENET_URL, type(exc).__name__),
                    "download it to {} or set --set model.backbone_weights=file:///path/to/"
                    "resnet50-0676ba61.pth (or =none for random init)".format(target)) from None
        path = target
    else:
        if not setting.strip():
            raise UserError("model.backbone_weights is empty",
                            "set it to imagenet, none, or file:///path/to/resnet50-0676ba61.pth")
        path = Path(urlparse(setting).path if setting.startswith("file://") else setting)
        try:
            kind = "folder" if path.is_dir() else "file" if path.is_file() else \
                "special" if path.exists() else None
        except OSError as exc:  # a name too long, a loop of links, no permission on the way
            raise user_os_error(exc, "backbone weights file {}".format(path), "give a readable "
                                ".pth file, or set model.backbone_weights=none", verb="read") \
                or UserError("cannot read backbone weights file {} ({})".format(
                    path, exc.strerror or exc), "set model.backbone_weights=none") from None
        if kind == "folder":
            raise UserError("backbone weights {} is a folder, not a file".format(path),
                            "give the .pth file in it, or set model.backbone_weights=none")
        if kind == "special":
            raise UserError("backbone weights {} is not a regular file (a device, pipe or "
                            "socket)".format(path), "give a .pth file, or set "
                            "model.backbone_weights=none")
        if kind is None:
            raise UserError("backbone weights file {} does not exist".format(path),
                            "download {} there, or set model.backbone_weights=none".format(
                                IMAGENET_URL))
    if sha256_prefix_ok(path) is False:
        raise UserError(
            "backbone weights {} do not match the SHA-256 prefix in their name".format(path),
            "the file is corrupt or not what its name says: download it again")
    return path


def build_retinanet(num_classes: int, backbone_weights: Optional[Path], min_size: int,
                    max_size: int, trainable_backbone_layers: int = 3) -> RetinaNet:
    """RetinaNet R50-FPN as ``torchvision.models.detection.retinanet_resnet50_fpn`` builds it.

    With backbone weights: frozen batch norm and ``trainable_backbone_layers`` trainable stages
    (torchvision's defaults for a pretrained backbone); without: plain batch norm, all stages
    trainable.
    """
    pretrained = backbone_weights is not None
    norm_layer = misc_ops.FrozenBatchNorm2d if pretrained else torch.nn.BatchNorm2d
    backbone = resnet50(weights=None, norm_layer=norm_layer)
    if backbone_weights is not None:
        handle = open_weights(backbone_weights)
        try:
            with handle:
                state = torch.load(handle, map_location="cpu", weights_only=True)
            backbone.load_state_dict(state)
        except Exception as exc:
            raise UserError(
                "backbone weights {} cannot be loaded ({}: {})".format(
                    backbone_weights, type(exc).__name__, str(exc).splitlines()[0][:200]),
                "use torchvision's resnet50-0676ba61.pth, or model.backbone_weights=none"
            ) from None
    layers = trainable_backbone_layers if pretrained else 5
    backbone = _resnet_fpn_extractor(backbone, layers, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(backbone, num_classes, min_size=min_size, max_size=max_size)


SIZE_DIVISIBLE = 32
"""torchvision's detection transform pads each batch to a multiple of this."""
STEM_CHANNELS = 64
"""Channels of ResNet-50's first convolution, which halves the resolution."""


def resized_size(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """An image's size after the model's transform: the shorter side to ``min_size`` unless the
    longer would pass ``max_size`` (as torchvision's ``GeneralizedRCNNTransform`` scales)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, int(height * scale)), max(1, int(width * scale))


def step_memory_floor(sizes: Iterable[Tuple[int, int]], min_size: int, max_size: int,
                      batch_size: int, precision: str) -> int:
    """Bytes that a training step needs at least, whatever the device: the padded fp32 input
    batch around the largest resized image, and the first convolution's output on it (64
    channels at half the resolution; 2 bytes per value under amp, fp16 and bf16), which exist
    together. A floor, far under the real need (every later layer is left out): it refuses only
    inputs that can never fit, before a run asks the allocator or the host's OOM killer."""
    largest = max((resized_size(h, w, min_size, max_size) for h, w in sizes
                   if h > 0 and w > 0), key=lambda hw: hw[0] * hw[1], default=None)
    if largest is None:
        return 0
    height, width = (int(math.ceil(side / SIZE_DIVISIBLE)) * SIZE_DIVISIBLE for side in largest)
    pixels = batch_size * height * width
    stem_bytes = 4 if precision == "fp32" else 2
    return pixels * 3 * 4 + (pixels // 4) * STEM_CHANNELS * stem_bytes
