"""FLOPs per image against a count by hand, MFU arithmetic, and the optional peak hook."""

import pytest

from chipbench.host.manager import build_host
from chipbench.host.selection import select_device
from chipbench.measure.flops import figures, flop_counter_available, peak_flops, training_flops_per_image


def test_training_flops_match_a_count_by_hand():
    torch = pytest.importorskip("torch")
    batch, cin, cout, side, k, classes = 4, 3, 8, 16, 3, 10
    model = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, padding=1), torch.nn.Flatten(),
                                torch.nn.Linear(cout * side * side, classes))
    x = torch.randn(batch, cin, side, side)
    got = training_flops_per_image(model, batch, lambda: (x,))
    if not flop_counter_available():
        assert got is None  # torch 2.0: "n/a"
        return
    conv = 2 * batch * cout * side * side * cin * k * k      # forward multiply-adds x 2
    linear = 2 * batch * (cout * side * side) * classes
    # backward: the linear layer needs input and weight gradients (2x), the first conv only
    # its weight gradient (1x: the input does not require grad)
    assert got == (conv * 2 + linear * 3) / batch
    assert all(p.grad is None for p in model.parameters())  # nothing left for the optimizer


def test_figures_compute_achieved_and_mfu():
    facts = {"flops_per_image": 2e9, "peak_flops": 1e12}
    out = figures(facts, p_core=100.0, devices=2)
    assert out["achieved_tflops"] == pytest.approx(0.2)
    assert out["peak_tflops"] == pytest.approx(2.0) and out["mfu"] == pytest.approx(0.1)
    none = figures({"flops_per_image": None, "peak_flops": None}, p_core=100.0, devices=1)
    assert none["achieved_tflops"] is None and none["mfu"] is None


def test_cpu_peak_is_measured_and_can_be_switched_off(monkeypatch):
    import chipbench.plugins.cpu as cpu

    facade = select_device(build_host(load_entry_points=False), "cpu")
    monkeypatch.setattr(cpu, "_measured_peaks", {})
    monkeypatch.setenv(cpu.ENV_PEAK_GEMM, "0.02")
    measured = peak_flops(facade, "cpu", "fp32")
    # a figure, or (on a machine too busy to measure one) none, saying so: never a wrong one
    assert measured["peak_flops"] > 1e6 if measured["peak_flops"] is not None \
        else "busy" in measured["peak_note"]
    monkeypatch.setattr(cpu, "_measured_peaks", {})
    monkeypatch.setenv(cpu.ENV_PEAK_GEMM, "0")
    off = peak_flops(facade, "cpu", "fp32")
    assert off["peak_flops"] is None and "no peak" in off["peak_note"]


def test_known_part_tables():
    from chipbench.plugins.cuda import peak_tflops

    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16", tf32=True) == 312.0
    assert peak_tflops("NVIDIA H100 PCIe", "amp", tf32=True) == 756.0
    assert peak_tflops("NVIDIA H100 80GB HBM3", "fp32", tf32=True) == 494.7
    assert peak_tflops("Tesla V100-SXM2-32GB", "fp32", tf32=True) == 15.7  # no TF32 on Volta
    assert peak_tflops("Tesla V100-SXM2-32GB", "bf16", tf32=True) is None
    assert peak_tflops("Some Future GPU", "fp32", tf32=True) is None


def test_vendor_without_the_optional_hook_gives_no_peak():
    from tests.conftest import vendor_module

    module = vendor_module("bare")
    assert not hasattr(module, "device_peak_flops")
    host = build_host(load_entry_points=False)
    assert host.add(module, "bare", "test").error in (None, "")
    assert select_device(host, "bare").peak_flops("cpu", "fp32") is None


def test_cpu_peak_measurement_keeps_to_its_window_when_products_are_slow(monkeypatch):
    """bf16 on a CPU without bf16 units: a 1024 product took 1.6 s, and a 0.5 s measurement
    took 5 s of every bf16 run's start. The matrices now shrink to fit the window."""
    import time

    import torch

    from chipbench.plugins.cpu import measure_gemm_flops

    def slow_mm(a, b):  # 1 s for a 1024 x 1024 product, as a CPU emulating bf16
        time.sleep(a.shape[0] ** 3 / 1024 ** 3)
        return a

    monkeypatch.setattr(torch, "mm", slow_mm)
    started = time.perf_counter()
    rate = measure_gemm_flops(0.2, "bf16")
    took = time.perf_counter() - started
    assert took < 0.6
    assert 0.5e9 < rate <= 2.2e9  # 2 * n^3 FLOPs per n^3 / 1024^3 s: ~2.1 GFLOP/s at any size
