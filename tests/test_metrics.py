import pytest

from chipbench.measure.metrics import RunMeter, mem_text, reduce_ranks, throughput


def test_meter_skips_first_iterations():
    meter = RunMeter(skip_iters=2)
    for _ in range(5):
        meter.add_iteration(4, 0.5)
    assert meter.seen_iterations == 5
    assert meter.iterations == 3 and meter.images == 12 and meter.core_seconds == pytest.approx(1.5)


def test_reduction_sums_images_and_takes_slowest_rank():
    ranks = [
        {"images": 40, "iterations": 10, "train_seconds": 10.0, "eval_seconds": 2.0,
         "core_seconds": 6.0, "mem_used_peak_bytes": 3 * 2**30, "mem_total_bytes": 64 * 2**30},
        {"images": 36, "iterations": 9, "train_seconds": 12.0, "eval_seconds": 1.0,
         "core_seconds": 5.0, "mem_used_peak_bytes": 5 * 2**30, "mem_total_bytes": 64 * 2**30},
    ]
    reduced = reduce_ranks(ranks)
    assert reduced["images"] == 76 and reduced["iterations"] == 19
    assert reduced["train_seconds"] == 12.0 and reduced["core_seconds"] == 6.0
    assert reduced["whole_seconds"] == 13.0  # slowest rank's train + eval
    assert reduced["mem_used_peak_bytes"] == 5 * 2**30
    rates = throughput(reduced)
    assert rates["p_train"] == pytest.approx(76 / 12.0)
    assert rates["p_core"] == pytest.approx(76 / 6.0)
    assert rates["p_whole"] == pytest.approx(76 / 13.0)
    assert rates["p_whole"] < rates["p_train"] < rates["p_core"]


def test_zero_time_gives_no_rate_and_mem_text():
    assert throughput({"images": 0, "train_seconds": 0.0})["p_train"] is None
    assert mem_text(37.5 * 2**30, 64 * 2**30) == "37.5/64.0"
    assert mem_text(None, None) == "/"


def test_sampled_core_time_counts_only_the_timed_images():
    meter = RunMeter()
    for i in range(10):
        meter.add_iteration(4, 0.5 if i % 5 == 0 else None)  # every 5th iteration timed
    assert meter.images == 40 and meter.core_images == 8
    assert meter.core_seconds == pytest.approx(1.0)
    ranks = [meter.state(), dict(meter.state(), core_seconds=2.0)]
    reduced = reduce_ranks(ranks)
    assert reduced["images"] == 80 and reduced["core_images"] == 16
    assert throughput(reduced)["p_core"] == pytest.approx(16 / 2.0)  # slowest rank's time


def test_meter_saved_before_sampling_resumes_with_every_image_timed():
    old = {"skip_iters": 0, "iterations": 3, "seen_iterations": 3, "images": 12,
           "train_seconds": 2.0, "eval_seconds": 0.0, "core_seconds": 1.5}
    meter = RunMeter.from_state(old)
    assert meter.core_images == 12
    meter.add_iteration(4, 0.5)
    assert throughput(reduce_ranks([meter.state()]))["p_core"] == pytest.approx(16 / 2.0)
