"""Backbone weights (file://, hash check, none, unreachable) and COCO evaluation."""

import hashlib

import pytest
import torch
from torchvision.models import resnet50

from chipbench.cases.retinanet.evaluate import coco_bbox_map, detections_to_coco
from chipbench.cases.retinanet.model import build_retinanet, resolve_backbone_weights, sha256_prefix_ok
from chipbench.errors import UserError


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A ResNet-50 state dict written by the test, named with its own SHA-256 prefix."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1)
    raw = folder / "raw.pth"
    torch.save(resnet50(weights=None).state_dict(), str(raw))
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()[:8]
    named = folder / "resnet50-{}.pth".format(digest)
    raw.rename(named)
    return named


def test_file_url_with_matching_hash_loads_into_frozen_backbone(weights_file):
    path = resolve_backbone_weights("file://" + str(weights_file))
    assert path == weights_file and sha256_prefix_ok(path) is True
    model = build_retinanet(4, path, 128, 128)
    expected = torch.load(str(weights_file), weights_only=True)["layer1.0.conv1.weight"]
    assert torch.equal(model.backbone.body.layer1[0].conv1.weight, expected)
    frozen = type(model.backbone.body.bn1).__name__
    assert frozen == "FrozenBatchNorm2d"
    assert not model.backbone.body.layer1[0].conv1.weight.requires_grad  # 3 trainable stages


def test_mismatching_hash_is_refused(weights_file, tmp_path):
    wrong = tmp_path / "resnet50-0676ba61.pth"
    wrong.write_bytes(weights_file.read_bytes())
    with pytest.raises(UserError) as err:
        resolve_backbone_weights("file://" + str(wrong))
    assert "SHA-256" in err.value.one_line()


def test_none_and_missing_and_unreachable(monkeypatch, tmp_path):
    assert resolve_backbone_weights("none") is None
    with pytest.raises(UserError, match="does not exist"):
        resolve_backbone_weights("file:///no/such/resnet50-0676ba61.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as err:
        resolve_backbone_weights("imagenet")
    line = err.value.one_line()
    assert "cannot fetch backbone weights" in line and "file://" in line and "none" in line


def test_weights_that_are_not_a_state_dict(tmp_path):
    bad = tmp_path / "resnet50.pth"
    torch.save({"something": torch.zeros(1)}, str(bad))
    with pytest.raises(UserError, match="cannot be loaded"):
        build_retinanet(4, bad, 128, 128)


def test_random_init_uses_trainable_batch_norm():
    model = build_retinanet(4, None, 128, 128)
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in model.backbone.body.parameters())


def _gt():
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "width": 100, "height": 100},
                               {"id": 2, "width": 100, "height": 100}],
                    "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                     "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
                                    {"id": 2, "image_id": 2, "category_id": 2,
                                     "bbox": [50, 40, 20, 40], "area": 800, "iscrowd": 0}],
                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    coco.createIndex()
    return coco


def test_empty_detections_give_zero_not_a_crash():
    assert coco_bbox_map(_gt(), [], [1, 2])["mAP"] == 0.0


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_perfect_and_wrong_detections(backend):
    if backend == "faster_coco_eval":
        pytest.importorskip("faster_coco_eval")
    outputs = [{"boxes": torch.tensor([[10.0, 10, 40, 40]]), "scores": torch.tensor([0.9]),
                "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[50.0, 40, 70, 80]]), "scores": torch.tensor([0.8]),
                "labels": torch.tensor([2])}]
    results = detections_to_coco(outputs, [1, 2])
    assert results[0]["bbox"] == [10.0, 10.0, 30.0, 30.0]
    assert coco_bbox_map(_gt(), results, [1, 2], backend)["mAP"] == pytest.approx(1.0)
    half = [dict(results[0], bbox=[10.0, 10.0, 30.0, 15.0])] + results[1:]  # IoU 0.5 on image 1
    assert 0.3 < coco_bbox_map(_gt(), half, [1, 2], backend)["mAP"] < 0.8
    for r in results:
        r["category_id"] = 3 - r["category_id"]
    assert coco_bbox_map(_gt(), results, [1, 2], backend)["mAP"] == 0.0


def _random_gt_and_detections(images: int = 12, seed: int = 0):
    """A small GT set and noisy detections of it (some misses, some false positives)."""
    import random

    from pycocotools.coco import COCO

    rng = random.Random(seed)
    dataset = {"images": [], "annotations": [], "categories": [{"id": c, "name": str(c)}
                                                               for c in (1, 2, 3)]}
    results = []
    for image_id in range(1, images + 1):
        dataset["images"].append({"id": image_id, "width": 200, "height": 200})
        for _ in range(rng.randint(0, 4)):
            x, y, w, h = (rng.uniform(0, 120), rng.uniform(0, 120), rng.uniform(4, 80),
                          rng.uniform(4, 80))
            category = rng.randint(1, 3)
            dataset["annotations"].append({"id": len(dataset["annotations"]) + 1,
                                           "image_id": image_id, "category_id": category,
                                           "bbox": [x, y, w, h], "area": w * h,
                                           "iscrowd": int(rng.random() < 0.05)})
            if rng.random() < 0.8:
                jitter = [v + rng.gauss(0, 3) for v in (x, y)] + [max(1.0, v + rng.gauss(0, 4))
                                                                   for v in (w, h)]
                results.append({"image_id": image_id, "category_id": category,
                                "bbox": [round(v, 2) for v in jitter],
                                "score": round(rng.random(), 5)})
        for _ in range(rng.randint(0, 3)):
            results.append({"image_id": image_id, "category_id": rng.randint(1, 3),
                            "bbox": [rng.uniform(0, 150), rng.uniform(0, 150),
                                     rng.uniform(2, 50), rng.uniform(2, 50)],
                            "score": round(rng.random(), 5)})
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco, results


def test_both_backends_give_the_same_stats():
    pytest.importorskip("faster_coco_eval")
    from chipbench.cases.retinanet.evaluate import coco_stats

    coco, results = _random_gt_and_detections()
    ids = sorted(coco.imgs)
    slow = coco_stats(coco, [dict(r) for r in results], ids, "pycocotools")
    fast = coco_stats(coco, [dict(r) for r in results], ids, "faster_coco_eval")
    assert len(slow) == len(fast) == 12
    assert 0.05 < slow[0] < 0.95  # a non-trivial mAP, so agreement means something
    assert fast == pytest.approx(slow, abs=1e-6)


def test_auto_backend_prefers_faster_coco_eval_when_importable(monkeypatch):
    import builtins

    from chipbench.cases.retinanet.evaluate import resolve_backend

    assert resolve_backend("pycocotools") == "pycocotools"
    real_import = builtins.__import__

    def no_fast(name, *args, **kwargs):
        if name.startswith("faster_coco_eval"):
            raise ImportError("hidden by the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fast)
    assert resolve_backend("auto") == "pycocotools"
    with pytest.raises(UserError, match="faster_coco_eval"):
        coco_bbox_map(_gt(), [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5],
                                "score": 0.5}], [1, 2], "faster_coco_eval")
    monkeypatch.setattr(builtins, "__import__", real_import)
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return
    assert resolve_backend("auto") == "faster_coco_eval"


@pytest.mark.parametrize("height, width, min_size, max_size", [
    (60, 90, 64, 100), (90, 60, 64, 80), (64, 64, 128, 128), (427, 640, 800, 1333),
    (100, 1000, 800, 1333)])
def test_resized_size_is_the_transform_s(height, width, min_size, max_size):
    """The memory floor's image size is what torchvision's detection transform makes of it, to
    a pixel (torch 2.0 rounds 427 x 800/427 down to 799)."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from chipbench.cases.retinanet.model import resized_size

    transform = GeneralizedRCNNTransform(min_size, max_size, [0.0] * 3, [1.0] * 3).eval()
    images, _ = transform([torch.zeros(3, height, width)])
    made = images.image_sizes[0]
    expected = resized_size(height, width, min_size, max_size)
    assert all(abs(a - b) <= 1 for a, b in zip(made, expected)), (made, expected)


def test_step_memory_floor_counts_the_largest_image_and_precision():
    from chipbench.cases.retinanet.model import step_memory_floor

    fp32 = step_memory_floor([(64, 64), (128, 64)], 128, 256, 4, "fp32")
    # the largest, (256, 128), padded; input 3 x 4 bytes, stem 64 channels at a quarter of it
    pixels = 4 * 256 * 128
    assert fp32 == pixels * 12 + pixels // 4 * 64 * 4
    assert step_memory_floor([(64, 64), (128, 64)], 128, 256, 4, "amp") == \
        pixels * 12 + pixels // 4 * 64 * 2
    assert step_memory_floor([], 128, 256, 4, "fp32") == 0
    assert step_memory_floor([(0, 10)], 128, 256, 4, "fp32") == 0
