"""torchvision's RetinaNet R50-FPN and its backbone weights (ImageNet, a local file, or none)."""

import hashlib
import os
import re
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch
from torchvision.models import resnet50
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from chipbench.errors import UserError

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
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(match.group(1))


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
        if path.is_dir():
            raise UserError("backbone weights {} is a folder, not a file".format(path),
                            "give the .pth file in it, or set model.backbone_weights=none")
        if not path.is_file():
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
    if pretrained:
        try:
            state = torch.load(str(backbone_weights), map_location="cpu", weights_only=True)
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
