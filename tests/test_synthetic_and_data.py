"""The embedded dataset generator and the COCO loader, on it and on a tiny hand-written fixture."""


import pytest
import torch
from PIL import Image

from chipbench.cases.retinanet.batching import GroupedBatchSampler, aspect_ratio_groups
from chipbench.cases.retinanet.data import (
    CocoDetection,
    check_data_dir,
    coco_paths,
    convert_target,
    load_coco_api,
)
from chipbench.cases.retinanet.synthetic import COMPLETE_MARKER, ensure_synthetic_coco
from chipbench.errors import UserError
from tests.conftest import (
    TINY_SEED,
    TINY_SIZE,
    TINY_TRAIN_IMAGES,
    TINY_VAL_IMAGES,
    write_coco,
)

TINY = (TINY_TRAIN_IMAGES, TINY_VAL_IMAGES, TINY_SIZE)  # 16 train, 4 val, 64 px


@pytest.fixture
def small_set(tiny_data):
    """The session's tiny data set (shared, read only)."""
    assert TINY == (16, 4, 64)  # the counts below are these
    return tiny_data


def test_generator_is_deterministic_and_cached(tmp_path, small_set):
    again = ensure_synthetic_coco(*TINY, seed=TINY_SEED, cache_root=tmp_path)
    for rel in ("annotations/instances_train2017.json", "val2017/000000000003.jpg",
                "train2017/000000000016.jpg"):
        assert (small_set / rel).read_bytes() == (again / rel).read_bytes(), rel
    mtime = (again / COMPLETE_MARKER).stat().st_mtime
    assert ensure_synthetic_coco(*TINY, seed=TINY_SEED, cache_root=tmp_path) == again
    assert (again / COMPLETE_MARKER).stat().st_mtime == mtime  # not regenerated
    other = ensure_synthetic_coco(*TINY, seed=TINY_SEED + 1, cache_root=tmp_path)
    assert other != again
    assert (other / "annotations/instances_train2017.json").read_bytes() != (
        again / "annotations/instances_train2017.json").read_bytes()


def test_generated_json_is_valid_coco(small_set):
    check_data_dir(small_set)
    for split, count in (("train", 16), ("val", 4)):
        images, annotations = coco_paths(small_set, split)
        coco = load_coco_api(annotations)
        assert len(coco.imgs) == count and sorted(coco.cats) == [1, 2, 3]
        assert len(list(images.glob("*.jpg"))) == count
        for ann in coco.anns.values():
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x + w <= 64 and y + h <= 64
            assert ann["area"] == w * h and ann["iscrowd"] == 0
    # the 16th training image is empty on purpose
    coco = load_coco_api(coco_paths(small_set, "train")[1])
    assert coco.imgToAnns.get(16, []) == []


def test_loader_drops_empty_images_in_training_only(small_set):
    train = CocoDetection(*coco_paths(small_set, "train"), train=True, hflip=0.0)
    assert 16 not in train.ids and len(train) == 15
    image, target = train[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and image.max() <= 1.0
    assert target["boxes"].shape[1] == 4 and target["labels"].dtype == torch.int64
    assert len(target["boxes"]) == len(target["labels"]) >= 1
    val = CocoDetection(*coco_paths(small_set, "val"), train=False)
    assert len(val) == 4


def test_horizontal_flip_mirrors_boxes(small_set):
    plain = CocoDetection(*coco_paths(small_set, "train"), train=True, hflip=0.0)
    flipped = CocoDetection(*coco_paths(small_set, "train"), train=True, hflip=1.0)
    image, target = plain[2]
    image_f, target_f = flipped[2]
    assert torch.equal(image_f, image.flip(-1))
    assert torch.allclose(target_f["boxes"][:, 0], 64 - target["boxes"][:, 2])
    assert torch.allclose(target_f["boxes"][:, 2], 64 - target["boxes"][:, 0])


def test_tiny_fixture_crowd_and_degenerate_boxes(tmp_path):
    images = [{"id": 7, "file_name": "a.jpg", "width": 40, "height": 30},
              {"id": 9, "file_name": "b.jpg", "width": 30, "height": 40}]
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 18, "bbox": [5, 5, 10, 8], "iscrowd": 0, "area": 80},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 40, 30], "iscrowd": 1, "area": 1},
        {"id": 3, "image_id": 7, "category_id": 1, "bbox": [35, 20, 20, 20], "iscrowd": 0, "area": 1},
        {"id": 4, "image_id": 9, "category_id": 1, "bbox": [3, 3, 0.5, 9], "iscrowd": 0, "area": 1},
    ]
    root = write_coco(tmp_path / "coco", images, annotations)
    train = CocoDetection(*coco_paths(root, "train"), train=True, hflip=0.0)
    assert train.ids == [7]  # image 9 has only a degenerate box
    _, target = train[0]
    assert target["labels"].tolist() == [18, 1]  # crowd dropped
    assert target["boxes"].tolist() == [[5, 5, 15, 13], [35, 20, 40, 30]]  # clipped to the image
    assert int(target["image_id"]) == 7
    assert CocoDetection(*coco_paths(root, "val"), train=False).aspect_ratios() == [40 / 30, 30 / 40]


def test_convert_target_empty():
    target = convert_target([], 1, 10, 10)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_data_errors(tmp_path, small_set):
    with pytest.raises(UserError, match="does not exist"):
        check_data_dir(tmp_path / "nowhere")
    (tmp_path / "half" / "train2017").mkdir(parents=True)
    with pytest.raises(UserError, match="instances_train2017.json"):
        check_data_dir(tmp_path / "half")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(UserError, match="not valid JSON"):
        load_coco_api(broken)
    broken.write_text('{"images": []}')
    with pytest.raises(UserError, match="lacks annotations, categories"):
        load_coco_api(broken)


def test_missing_and_corrupt_images(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 20}]
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0,
                    "area": 25}]
    root = write_coco(tmp_path / "coco", images, annotations)
    (root / "train2017" / "a.jpg").write_bytes(b"not a jpeg at all")
    dataset = CocoDetection(*coco_paths(root, "train"), train=True)
    with pytest.raises(UserError) as err:
        dataset[0]
    assert "a.jpg is unreadable" in err.value.one_line()
    (root / "train2017" / "a.jpg").unlink()
    with pytest.raises(UserError, match="missing from"):
        CocoDetection(*coco_paths(root, "train"), train=True)


def test_decoder_reads_what_pil_reads_with_the_same_pixels(tmp_path):
    """JPEG (colour, grey, CMYK), PNG under a .jpg name: the same uint8 RGB pixels as PIL; a JPEG
    cut short or with a garbage body fails, and the data set names the file."""
    import numpy as np

    from chipbench.cases.retinanet.data import decode_image_file

    rng = np.random.RandomState(0)
    pixels = rng.randint(0, 256, size=(30, 40, 3)).astype(np.uint8)
    files = {"colour.jpg": ("RGB", "JPEG"), "grey.jpg": ("L", "JPEG"),
             "cmyk.jpg": ("CMYK", "JPEG"), "png.jpg": ("RGB", "PNG")}
    for name, (mode, fmt) in files.items():
        Image.fromarray(pixels).convert(mode).save(tmp_path / name, format=fmt, quality=90)
        with Image.open(tmp_path / name) as image:
            expected = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        got = decode_image_file(str(tmp_path / name))
        assert got.dtype == torch.uint8 and got.shape == (3, 30, 40), name
        assert (got.int() - expected.int()).abs().max() <= 1, name  # libjpeg builds may round
    whole = (tmp_path / "colour.jpg").read_bytes()
    for name, data in (("cut.jpg", whole[:len(whole) // 2]),
                       ("body.jpg", whole[:20] + b"\x00" * 200)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(OSError):
            decode_image_file(str(tmp_path / name))
    images = [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}]
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0,
                    "area": 25}]
    root = write_coco(tmp_path / "coco", images, annotations)
    (root / "train2017" / "a.jpg").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(UserError, match="a.jpg is unreadable"):
        CocoDetection(*coco_paths(root, "train"), train=True)[0]


def test_grouped_batches_cover_every_index_once():
    ratios = [0.5, 2.0, 1.0, 0.6, 1.9, 1.1, 0.7, 2.1, 1.0, 0.5, 0.55]
    groups = aspect_ratio_groups(ratios, 3)
    assert groups[0] == groups[9] and groups[1] != groups[0]
    sampler = list(range(len(ratios)))
    batches = list(GroupedBatchSampler(sampler, groups, 3))
    assert sorted(i for b in batches for i in b) == sampler
    assert len(batches) == len(GroupedBatchSampler(sampler, groups, 3)) == 4
    full = [b for b in batches if len(b) == 3]
    assert all(len({groups[i] for i in b}) == 1 for b in full[:-1])


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_transforms_v2_path_matches_own_converter(tmp_path, small_set, hflip):
    from chipbench.cases.retinanet.data import transforms_v2_api

    if transforms_v2_api() is None:
        pytest.skip("this torchvision (0.15) has no v2 wrapper with target_keys: converter only")
    images = [{"id": 7, "file_name": "a.jpg", "width": 40, "height": 30}]
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 18, "bbox": [5, 5, 10, 8], "iscrowd": 0, "area": 80},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 40, 30], "iscrowd": 1, "area": 1},
        {"id": 3, "image_id": 7, "category_id": 1, "bbox": [35, 20, 20, 20], "iscrowd": 0, "area": 1},
        {"id": 4, "image_id": 7, "category_id": 1, "bbox": [3, 3, 0.5, 9], "iscrowd": 0, "area": 1},
    ]
    roots = [write_coco(tmp_path / "coco", images, annotations), small_set]
    for root in roots:
        for split, train in (("train", True), ("val", False)):
            own = CocoDetection(*coco_paths(root, split), train=train, hflip=hflip, use_v2=False)
            v2 = CocoDetection(*coco_paths(root, split), train=train, hflip=hflip, use_v2=True)
            assert own.ids == v2.ids
            for index in range(min(len(own), 5)):
                (image_a, target_a), (image_b, target_b) = own[index], v2[index]
                assert torch.allclose(image_a, image_b, atol=1e-6)
                assert torch.equal(target_a["boxes"], target_b["boxes"])
                assert torch.equal(target_a["labels"], target_b["labels"])
                assert int(target_a["image_id"]) == int(target_b["image_id"])


def test_16_bit_greyscale_images_keep_their_contrast(tmp_path):
    """PIL's own RGB conversion clips 16-bit greyscale: a 16-bit PNG came out all white."""
    import numpy as np
    from PIL import Image

    from chipbench.cases.retinanet.data import decode_image_file

    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").mode.startswith("I")
    pixels = decode_image_file(str(tmp_path / "ramp.png"))
    assert pixels.shape == (3, 64, 64) and pixels.dtype.is_floating_point is False
    assert int(pixels.min()) == 0 and int(pixels.max()) == 255
    assert 120 < float(pixels.float().mean()) < 135  # a ramp, not a white sheet (254)
