import pytest

from chipbench.metrics import RunMeter, mem_text, reduce_ranks, throughput


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
