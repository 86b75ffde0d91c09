"""FLOPs are counted for the padded batches a run trains, and counting changes nothing: every
tensor of the model's state_dict and every random stream are the same before and after."""

import random
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch

from chipbench.cases.retinanet.data import CocoDetection
from chipbench.cases.retinanet.engine import trained_flops_per_image
from chipbench.measure.flops import (
    flop_counter_available,
    flops_per_trained_image,
    training_flops_per_image,
    untouched,
)
from tests.conftest import write_set

SIZE = 64

IMAGES = [{"id": i + 1, "file_name": "{}.png".format(i + 1), "width": w, "height": h}
          for i, (h, w) in enumerate([(64, 64), (64, 20), (64, 16), (64, 60)])]
"""Alone, the model pads them to 64x64, 64x32, 64x32 and 64x64."""

ANNOTATIONS = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 12, 30],
                "area": 360.0, "iscrowd": 0} for i in range(len(IMAGES))]

needs_counter = pytest.mark.skipif(not flop_counter_available(),
                                   reason="torch 2.0 has no flop counter: FLOPs are n/a")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One compute thread: two spinning beside other processes on a busy 2-core machine made
    each step of this small model 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A RetinaNet with plain (trainable) BatchNorm, as from random init, and a training set
    with random flips."""
    from chipbench.cases.retinanet.model import build_retinanet

    root = write_set(Path(tmp_path_factory.mktemp("flops")), IMAGES, ANNOTATIONS)
    train = CocoDetection(root / "train2017", root / "annotations" / "instances_train2017.json",
                          train=True, hflip=0.5)
    torch.manual_seed(0)
    model = build_retinanet(2, None, SIZE, SIZE)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    return model, train


def batch_inputs(train: CocoDetection, indices: List[int]):
    pairs = [train[i] for i in indices]
    return [image for image, _ in pairs], [target for _, target in pairs]


def snapshot(model: torch.nn.Module) -> Dict[str, Any]:
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            "modes": [m.training for m in model.modules()],
            "torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": np.random.get_state()}


def assert_same(before: Dict[str, Any], model: torch.nn.Module) -> None:
    after = snapshot(model)
    assert before["state"].keys() == after["state"].keys()
    for key, tensor in before["state"].items():
        assert torch.equal(tensor, after["state"][key]), key
    assert all((a is None and b is None) or torch.equal(a, b)
               for a, b in zip(before["grads"], after["grads"]))
    assert before["modes"] == after["modes"]
    assert torch.equal(before["torch"], after["torch"]) and before["python"] == after["python"]
    numpy_before, numpy_after = before["numpy"], after["numpy"]
    assert numpy_before[0] == numpy_after[0] and np.array_equal(numpy_before[1], numpy_after[1])
    assert numpy_before[2:] == numpy_after[2:]


def test_untouched_puts_back_what_a_training_step_changes(setup):
    """Runs on every torch: a real forward and backward in training mode moves BatchNorm's
    running statistics and num_batches_tracked, sets gradients and draws random numbers."""
    model, train = setup
    model.eval()
    before = snapshot(model)
    with untouched(model):
        model.train()
        images, targets = batch_inputs(train, [0, 1])
        sum(model(images, targets).values()).backward()
        random.random(), np.random.rand(), torch.rand(1)
        changed = model.state_dict()["backbone.body.bn1.num_batches_tracked"].item()
    assert changed == before["state"]["backbone.body.bn1.num_batches_tracked"].item() + 1
    assert_same(before, model)


@needs_counter
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_counting_leaves_the_model_and_every_random_stream_untouched(setup, mode):
    model, train = setup
    model.train(mode == "train")
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    before = snapshot(model)
    flops, note = trained_flops_per_image(model, train, [[0, 1], [2, 3]], torch.device("cpu"),
                                          SIZE, SIZE)
    assert flops and note.startswith("counted per trained batch shape")
    assert_same(before, model)


@needs_counter
def test_flops_are_those_of_the_padded_batches_trained(setup):
    model, train = setup
    cpu = torch.device("cpu")

    def counted(indices: List[int]) -> float:
        flops = training_flops_per_image(model, len(indices),
                                         lambda: batch_inputs(train, indices))
        assert flops is not None
        return flops

    alone = counted([1])                # 64x20: padded alone to 64x32
    batch = counted([0, 1, 2, 3])       # the batch pads every image to 64x64
    assert batch > 1.5 * alone
    per_image, note = trained_flops_per_image(model, train, [[0, 1, 2, 3]], cpu, SIZE, SIZE)
    assert per_image == pytest.approx(batch, rel=1e-9)  # the tallest and widest stand for all
    assert "1 padded shape(s)" in note and "64x64 (4 image(s))" in note
    # two batches of two shapes: each image counted at its own batch's padded shape
    mixed, note = trained_flops_per_image(model, train, [[0, 3], [1, 2]], cpu, SIZE, SIZE)
    assert mixed == pytest.approx((2 * batch + 2 * alone) / 4, rel=1e-9)  # [1, 2]: 64x32
    assert "2 counted" in note


@needs_counter
def test_shapes_beyond_the_counted_ones_are_scaled_by_area(setup):
    model, train = setup
    shapes = {(64, 64): [0, 3], (64, 32): [1, 2]}

    def make_inputs(shape):
        return batch_inputs(train, shapes[shape]), 2

    def area(shape):
        return float(shape[0] * shape[1])

    batches = [((64, 64), 2), ((64, 64), 2), ((64, 32), 2)]
    exact, note = flops_per_trained_image(model, batches, make_inputs, area)
    assert "2 counted" in note and "scaled" not in note
    scaled, note = flops_per_trained_image(model, batches, make_inputs, area, max_counted=1)
    assert "1 shape(s) scaled by area" in note
    assert scaled == pytest.approx(exact, rel=0.05)
