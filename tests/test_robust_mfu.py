"""The CPU vendor's measured peak under load, and the one MFU rule of every output: an MFU above
100 % is never a figure (docs/metrics.md)."""

import json
import subprocess
import sys
import time

import pytest
import torch  # imported before the load starts: the test times the measurement

from chipbench.cli import main
from chipbench.measure import flops
from chipbench.measure.flops import MFU_UNRELIABLE, checked_mfu, figures
from chipbench.plugins import cpu
from tests.conftest import compare_result, report_of, result_folder

HOG = "import time\nwhile True:\n    pass\n"


@pytest.fixture
def fresh_peak(tmp_path, monkeypatch):
    """No peak measured in this process yet, an empty peak cache, short measurements."""
    monkeypatch.setattr(cpu, "_measured_peaks", {})
    monkeypatch.setenv("CHIPBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(cpu.ENV_PEAK_GEMM, "0.2")
    for name in cpu.ISA_CAP_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def busy_cpu():
    """A busy process on every core while the test runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(cpu.affinity_cores())]
    time.sleep(0.3)  # scheduled and spinning
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()


class Facade:
    """The part of the device facade :func:`chipbench.measure.flops.peak_flops` uses, on the cpu vendor."""

    vendor = "cpu"

    def peak_flops(self, device, precision):
        return cpu.device_peak_flops(device, precision)


def test_peak_under_load_is_sane_or_flagged_and_bounded_in_time(fresh_peak, busy_cpu):
    start = time.perf_counter()
    facts = flops.peak_flops(Facade(), None, "fp32")
    took = time.perf_counter() - start
    # 3 tries of (size search + window) of 0.2 s each, plus the last product of each
    assert took < 3 * 2 * max(0.2, cpu.RETRY_MIN_S) + 5, took
    floor = cpu.peak_floor("fp32", cpu._peak_cores())
    if facts["peak_flops"] is None:  # flagged: the note says why, and there is no MFU
        assert "busy" in facts["peak_note"] and "no peak is known" in facts["peak_note"]
        out = figures(dict(facts, flops_per_image=1e10), p_core=5.0, devices=1)
        assert out["mfu"] is None and "busy" in out["peak_note"]
    else:  # sane: not below the floor of the vector units where that is known
        assert floor is None or facts["peak_flops"] >= floor[0]
        achieved_per_s = facts["peak_flops"] * 2  # a run "faster" than the peak
        out = figures(dict(facts, flops_per_image=achieved_per_s / 5.0), p_core=5.0, devices=1)
        assert out["mfu"] is None and MFU_UNRELIABLE in out["mfu_flag"]


def test_a_collapsed_measurement_is_retried_then_refused_or_replaced_by_the_cached_peak(
        fresh_peak, monkeypatch):
    calls = []
    monkeypatch.setattr(cpu, "_cpu_flags_and_mhz", lambda cpuinfo="": (["fma", "avx2"], 2000.0))
    monkeypatch.setattr(cpu, "measure_gemm_flops", lambda *args: calls.append(args) or 3.5e8)
    with pytest.raises(cpu.PeakUnreliable) as caught:
        cpu.robust_peak(0.2, "fp32")
    assert len(calls) == cpu.PEAK_ATTEMPTS
    assert "0.35 GFLOP/s on" in str(caught.value) and "one core 0.35" in str(caught.value)
    assert "AVX2" in str(caught.value)
    facts = flops.peak_flops(Facade(), None, "fp32")  # through the hook: no peak, the reason kept
    assert facts["peak_flops"] is None and "no peak is known" in facts["peak_note"]

    monkeypatch.setattr(cpu, "measure_gemm_flops", lambda *args: 2.0e11)  # an idle machine
    assert cpu.robust_peak(0.2, "fp32") == 2.0e11
    assert cpu.cached_peak("fp32") == 2.0e11
    monkeypatch.setattr(cpu, "measure_gemm_flops", lambda *args: 1.5e11)  # a little slower:
    assert cpu.robust_peak(0.2, "fp32") == 2.0e11  # the peak is the fastest seen
    calls.clear()
    monkeypatch.setattr(cpu, "measure_gemm_flops", lambda *args: calls.append(args) or 3.5e8)
    assert cpu.robust_peak(0.2, "fp32") == 2.0e11  # collapsed: the cached figure, after retries
    assert len(calls) == cpu.PEAK_ATTEMPTS
    assert cpu.cached_peak("bf16") is None  # cached per precision (and CPU, threads, torch)


def test_stalled_threads_fall_back_to_one_core_times_the_cores(fresh_peak, monkeypatch):
    monkeypatch.setattr(cpu, "_cpu_flags_and_mhz", lambda cpuinfo="": (["fma", "avx2"], 2000.0))
    monkeypatch.setattr(cpu, "_peak_cores", lambda: 2.0)

    def measure(seconds, precision, size=1024, threads=None):
        return 1.2e11 if threads == 1 else 3.5e8  # 2 threads stall, one core runs whole products

    monkeypatch.setattr(cpu, "measure_gemm_flops", measure)
    assert cpu.robust_peak(0.02, "fp32") == 2.4e11
    assert cpu.cached_peak("fp32") is None  # an estimate is never cached


def test_one_thread_measurement_restores_the_threads():
    before = torch.get_num_threads()
    assert cpu.measure_gemm_flops(0.01, "fp32", 256, threads=1) > 1e6
    assert torch.get_num_threads() == before


def test_the_floor_follows_the_vector_width_the_kernels_may_use(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\ncpu MHz\t\t: 2000.000\nflags\t\t: fpu sse2 avx avx2 fma "
                    "avx512f\n")
    for name in cpu.ISA_CAP_ENV:
        monkeypatch.delenv(name, raising=False)
    floor, basis = cpu.peak_floor("fp32", 2, str(info))
    assert floor == pytest.approx(0.1 * 2 * 2e9 * 32) and "AVX-512" in basis
    assert cpu.peak_floor("bf16", 2, str(info)) is None  # emulated bf16: no floor known
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")  # no cap below AVX-512
    assert cpu.peak_floor("fp32", 2, str(info))[0] == floor
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # benchmarks/slow_cpu.sh's cap
    assert cpu.peak_floor("fp32", 2, str(info))[0] == pytest.approx(floor / 2)
    assert cpu.peak_floor("fp32", 2, str(tmp_path / "absent")) is None


def test_an_mfu_above_100_percent_is_flagged_in_every_output(tmp_path, capsys):
    # the figures of the run that printed "MFU 1311.11 %": a peak measured on a busy machine
    facts = {"flops_per_image": 92.7e9, "peak_flops": 0.35e9, "peak_note": ""}
    metrics = figures(facts, p_core=0.0495, devices=1)
    assert metrics["mfu"] is None and MFU_UNRELIABLE in metrics["mfu_flag"]
    assert "1311%" in metrics["mfu_flag"]  # the ratio is named in the flag, not as an MFU

    result = compare_result("CPU 1 node x 1 card (1x1)")
    result["metrics"].update(metrics)
    report = report_of(result)
    assert MFU_UNRELIABLE in report and "- MFU: " not in report

    old = compare_result("CPU 1 node x 1 card (1x1)")  # written before the rule, or by hand
    old["metrics"].update({"mfu": 13.11, "achieved_tflops": 0.00459, "peak_tflops": 0.00035,
                           "flops_per_image": 92.7e9})
    assert MFU_UNRELIABLE in report_of(old) and "1311.11%" not in report_of(old)
    bare = compare_result("CPU 1 node x 1 card (1x1) bare")
    bare["metrics"]["mfu"] = 13.11  # no rates to check it against: still not a figure
    folders = [result_folder(tmp_path, "old", old), result_folder(tmp_path, "bare", bare)]
    assert main(["compare", "--json"] + [str(f) for f in folders]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    for run in runs:
        assert run["metrics"]["mfu"] is None and MFU_UNRELIABLE in run["metrics"]["mfu_flag"]


def test_an_mfu_within_100_percent_is_kept_as_it_is():
    kept = checked_mfu({"achieved_tflops": 0.05, "peak_tflops": 0.2, "mfu": 0.25})
    assert kept["mfu"] == 0.25 and "mfu_flag" not in kept
    assert checked_mfu({"mfu": 0.4})["mfu"] == 0.4
    assert checked_mfu({"mfu": -1})["mfu"] is None
    again = checked_mfu(checked_mfu({"achieved_tflops": 2.0, "peak_tflops": 1.0, "peak_note": "x"}))
    assert again["peak_note"].count(MFU_UNRELIABLE) == 1 and again["peak_note"].endswith("; x")
