"""The generic vendor over ``torch.accelerator``: detection on this torch and on one without it,
a faked accelerator (an Intel-XPU-like device type, and the CPU driven through the generic API so
that a real run can train), dedicated vendors winning for their device type, built in and
installed; and the cuda vendor's monitoring through NVML."""

import json
import os
import sys
import types

import pytest
import torch

from chipbench.cli import main
from chipbench.host.manager import build_host
from chipbench.host.selection import select_device
from tests.conftest import tiny, write_distribution, write_tool

GIB = 2**30


def check_contract(facade) -> None:
    """The conformance kit's static checks (those `core doctor --static` runs): none may fail."""
    from chipbench.conformance import run_checks

    failures = [r.line() for r in run_checks(facade, live=False) if not r.ok]
    assert not failures, "\n".join(failures)


def make_fake_accelerator(kind: str, count: int = 2) -> types.ModuleType:
    """A module with the parts of ``torch.accelerator`` (torch 2.9 and later) the vendor uses.

    For ``kind="cpu"`` the memory figures are the CPU's own (the cpu vendor's, so peaks rise with
    real allocations) and tensors really run: torch drives the CPU through the generic API. For
    other kinds the figures are fixed: 16 GiB of 64 used, a 3 GiB peak."""
    from chipbench.plugins import cpu

    module = types.ModuleType("torch.accelerator")
    real = getattr(torch, "accelerator", None)
    if real is not None:  # what torch's own code uses of it, and the vendor does not
        module.__getattr__ = lambda name: getattr(real, name)
    module.calls = []
    module.current_accelerator = lambda check_available=False: torch.device(kind)
    module.device_count = lambda: count
    module.is_available = lambda: count > 0
    module.set_device_index = lambda index: module.calls.append(("set_device_index", index))
    module.synchronize = lambda device=None: module.calls.append(("synchronize", device))
    if kind == "cpu":
        def memory_info(device=None):
            info = cpu.device_memory_query(device)
            return info.total_bytes - info.used_bytes, info.total_bytes

        module.get_memory_info = memory_info
        module.max_memory_reserved = cpu.device_memory_peak
        module.reset_peak_memory_stats = cpu.device_memory_reset_peak
    else:
        module.get_memory_info = lambda device=None: (48 * GIB, 64 * GIB)
        module.max_memory_reserved = lambda device=None: 3 * GIB
        module.reset_peak_memory_stats = lambda device=None: module.calls.append(("reset", device))
    return module


@pytest.fixture
def fake_accelerator(monkeypatch):
    """Install a fake ``torch.accelerator`` of the given device type (also on torch 2.0, which
    has none); NVIDIA GPUs and probes of earlier tests are out of the way."""
    import chipbench.plugins.accelerator as generic

    monkeypatch.setattr(generic, "_probed", {})

    def install(kind: str, count: int = 2) -> types.ModuleType:
        module = make_fake_accelerator(kind, count)
        monkeypatch.setattr(torch, "accelerator", module, raising=False)
        return module

    return install


def vendors_line(capsys, name: str) -> str:
    assert main(["vendors"]) == 0
    return [row for row in capsys.readouterr().out.splitlines() if row.startswith(name + " ")][0]


# --------------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------------


def test_unavailable_on_this_machine_with_the_reason(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    info = build_host(load_entry_points=False).record("accelerator").info
    assert not info.available and info.priority == 1
    if hasattr(torch, "accelerator"):
        assert info.reason.startswith("no accelerator: torch ")
    else:  # the old stack
        assert "has no torch.accelerator" in info.reason
    line = vendors_line(capsys, "accelerator")
    assert " no " in line and info.reason in line


def test_unavailable_on_a_torch_without_torch_accelerator(monkeypatch):
    """torch 2.0 (the old stack) has no torch.accelerator: the vendor still imports and answers."""
    import chipbench.plugins.accelerator as generic

    monkeypatch.delattr(torch, "accelerator", raising=False)
    info = generic.vendor_detect()
    assert not info.available and info.device_type == "none"
    assert "has no torch.accelerator (this torch predates it)" in info.reason


def test_unavailable_where_torch_accelerator_lacks_a_call(fake_accelerator, monkeypatch):
    import chipbench.plugins.accelerator as generic

    module = fake_accelerator("xpu")
    module.get_memory_info = None  # not callable: as if this torch lacked it
    monkeypatch.setattr(generic, "_device_module", lambda kind: None)
    info = generic.vendor_detect()
    assert not info.available and "offers no memory_info for device type 'xpu'" in info.reason
    fake_accelerator("xpu", count=0)
    info = generic.vendor_detect()
    assert not info.available and "built for 'xpu' but sees no such device" in info.reason
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a: None)
    assert generic.vendor_detect().reason.startswith("no accelerator: ")


def test_fake_xpu_is_selected_and_honours_the_contract(fake_accelerator, capsys):
    module = fake_accelerator("xpu")
    host = build_host(load_entry_points=False)
    facade = select_device(host, None)  # above the cpu vendor; no dedicated xpu vendor here
    assert facade.vendor == "accelerator" and facade.info.device_type == "xpu"
    assert "2 'xpu' device(s) through torch.accelerator" in facade.info.reason
    assert "a dedicated vendor of 'xpu' is chosen first" in facade.info.reason
    check_contract(facade)
    device = facade.init_backend(1)
    assert device == torch.device("xpu", 1) and ("set_device_index", 1) in module.calls
    memory = facade.memory_query(device)
    assert (memory.used_bytes, memory.total_bytes) == (16 * GIB, 64 * GIB)
    assert memory.source == "torch.accelerator.get_memory_info"
    assert facade.memory_peak(device) == 3 * GIB
    assert facade.sample(device) == {"memory_used_bytes": 16.0 * GIB}
    assert facade.visible_devices_env() == "ZE_AFFINITY_MASK"
    assert facade.collective_backend() in ("xccl", "gloo")  # xccl only where torch has it built
    assert facade.supported_precisions() == ["fp32"]  # no xpu kernels in this torch: probes fail
    report = facade.environment_report()
    assert report["accelerator_device_type"] == "xpu" and report["device_count"] == 2
    line = vendors_line(capsys, "accelerator")
    assert "yes" in line and "'xpu'" in line and "<- auto" in line


def test_collective_backend_is_torch_default_for_the_device_type(monkeypatch):
    import torch.distributed as dist

    import chipbench.plugins.accelerator as generic

    if not dist.is_available():
        pytest.skip("torch.distributed is not built here")
    monkeypatch.setattr(dist.Backend, "default_device_backend_map",
                        {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}, raising=False)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    assert generic.default_backend("cuda") == "nccl"
    assert generic.default_backend("npu") == "hccl"  # no is_hccl_available: a registered one
    assert generic.default_backend("mps") == "gloo"  # no default known
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    assert generic.default_backend("cuda") == "gloo"  # not built into this torch


def test_precisions_are_those_autocast_really_runs(fake_accelerator, monkeypatch):
    """On the CPU driven through the generic API, bf16 is offered exactly where a convolution
    trains in bf16 autocast (the cpu vendor's own probe agrees); an autocast that leaves the
    convolution in fp32 offers nothing beyond fp32."""
    import contextlib

    import chipbench.plugins.accelerator as generic
    from chipbench.plugins import cpu

    fake_accelerator("cpu", count=1)
    precisions = generic.supported_precisions()
    assert precisions[0] == "fp32"
    assert ("bf16" in precisions) == (cpu.bf16_kernel_error() is None)
    monkeypatch.setattr(generic, "_probed", {})
    monkeypatch.setattr(torch, "autocast", lambda **kwargs: contextlib.nullcontext())
    assert generic.supported_precisions() == ["fp32"]


# --------------------------------------------------------------------------------------------------
# a dedicated vendor always wins for its device type
# --------------------------------------------------------------------------------------------------


def test_built_in_dedicated_vendor_wins(fake_accelerator, cuda_machine):
    fake_accelerator("cuda")
    host = build_host(load_entry_points=False)
    generic = host.record("accelerator").info
    assert generic.available and generic.device_type == "cuda"
    assert "the built-in 'cuda' vendor claims this build" in generic.reason
    assert select_device(host, None).vendor == "cuda"
    # the generic vendor still runs the same device when asked for
    facade = select_device(build_host(load_entry_points=False), "accelerator")
    assert facade.init_backend(0) == torch.device("cuda", 0)


def test_built_in_rocm_wins(fake_accelerator, monkeypatch):
    import chipbench.plugins.cuda
    import chipbench.plugins.rocm

    for module in (chipbench.plugins.rocm, chipbench.plugins.cuda):
        monkeypatch.setattr(module, "installed_torch_version", lambda: "2.5.1+rocm6.2")
    monkeypatch.setattr(torch.version, "hip", "6.2.41133-dd7f95766", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    fake_accelerator("cuda", count=8)
    host = build_host(load_entry_points=False)
    assert "the built-in 'rocm' vendor claims this build" in host.record("accelerator").info.reason
    assert host.record("accelerator").info.available
    assert [v.name for v in host.vendors() if v.available][:2] == ["rocm", "accelerator"]
    assert select_device(host, None).vendor == "rocm"


DEDICATED_XPU = """
from chipbench import VendorInfo, hookimpl
import chipbench.plugins.accelerator as base
from chipbench.hookspecs import DEVICE_HOOKS
for _name in DEVICE_HOOKS:
    globals()[_name] = getattr(base, _name)

@hookimpl
def vendor_detect():
    return VendorInfo("xpuchip", "xpu", {priority}, {available}, "a dedicated xpu vendor")
"""


@pytest.mark.parametrize("available, priority", [(True, 2), (True, -20), (False, 2)])
def test_installed_dedicated_vendor_wins(fake_accelerator, tmp_path, monkeypatch, available,
                                         priority):
    """The generic vendor stands back for a dedicated plugin of its device type installed through
    an entry point (a real dist-info), whatever the priorities: the dedicated one is chosen (or,
    where its priority is below the CPU's, asking to be chosen by name only, the CPU is); where
    it is unavailable the generic vendor runs the device instead of the CPU."""
    site = tmp_path / "site"
    module = "xpuchip_vendor_{}_{}".format(available, priority).lower().replace("-", "m")
    write_distribution(site, "xpuchip-chipbench", {"xpuchip": module},
                       {module: DEDICATED_XPU.format(priority=priority, available=available)})
    monkeypatch.syspath_prepend(str(site))
    fake_accelerator("xpu")
    host = build_host()
    assert host.record("xpuchip").origin.startswith("entry point 'xpuchip'")
    assert host.record("accelerator").info.available
    expected = "accelerator" if not available else "xpuchip" if priority > 0 else "cpu"
    assert select_device(host, None).vendor == expected


# --------------------------------------------------------------------------------------------------
# doctor and a real run
# --------------------------------------------------------------------------------------------------


def test_doctor_static_passes(fake_accelerator, capsys):
    fake_accelerator("xpu")
    assert main(["doctor", "--vendor", "accelerator", "--static"]) == 0
    assert "accelerator" in capsys.readouterr().out


def test_two_iteration_run_on_the_cpu_through_the_generic_api(fake_accelerator, tiny_data,
                                                               tmp_path):
    """A real run of the case, every device hook going through torch.accelerator's API (here
    driving the CPU): it trains two iterations, records the generic vendor and its memory."""
    module = fake_accelerator("cpu", count=1)
    out = tmp_path / "run"
    code = main(["run", "cases/retinanet", "--vendor", "accelerator", "--output", str(out)]
                + tiny(2))
    assert code == 0, "the run failed: see {}".format(out / "logs")
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "finished" and result["vendor"] == "accelerator"
    assert ("set_device_index", 0) in module.calls
    assert any(call[0] == "synchronize" for call in module.calls)


# --------------------------------------------------------------------------------------------------
# the cuda vendor's monitoring through NVML (pynvml), nvidia-smi as the fallback
# --------------------------------------------------------------------------------------------------


def make_fake_pynvml(fail_handles: bool = False) -> types.ModuleType:
    """A module with the parts of NVIDIA's pynvml (nvidia-ml-py) the cuda vendor uses."""
    module = types.ModuleType("pynvml")
    module.calls = []
    module.NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def handle(index):
        module.calls.append(("handle", index))
        if fail_handles:
            raise NVMLError("Unknown Error")
        return index

    module.NVMLError = NVMLError
    module.nvmlInit = lambda: module.calls.append("init")
    module.nvmlDeviceGetCount = lambda: 2
    module.nvmlDeviceGetHandleByIndex = handle
    module.nvmlDeviceGetName = lambda h: b"NVIDIA A100-SXM4-80GB"
    module.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    module.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=55, memory=20)
    module.nvmlDeviceGetPowerUsage = lambda h: 250500  # mW

    def temperature(h, sensor):
        raise NVMLError("Not Supported")

    module.nvmlDeviceGetTemperature = temperature
    module.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        used=(10 + h) * GIB, total=80 * GIB, free=(70 - h) * GIB)
    return module


@pytest.fixture
def nvml_machine(cuda_machine, tmp_path, monkeypatch):
    """The simulated 2 x A100 with an nvidia-smi that counts its calls; NVML not yet tried."""
    import chipbench.plugins.cuda

    counter = tmp_path / "smi-calls"
    real = tmp_path / "bin" / "nvidia-smi"
    write_tool(tmp_path / "counting", "nvidia-smi",
               script="#!/bin/sh\necho x >> '{}'\nexec '{}' \"$@\"\n".format(counter, real))
    monkeypatch.setenv("PATH", "{}{}{}".format(tmp_path / "counting", os.pathsep,
                                               os.environ["PATH"]))
    monkeypatch.setattr(chipbench.plugins.cuda, "_nvml_state", {"tried": False, "module": None})
    return counter


def test_cuda_samples_through_nvml_when_importable(nvml_machine, monkeypatch):
    import chipbench.plugins.cuda as cuda

    fake = make_fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    sample = cuda.device_sample(torch.device("cuda", 1))
    assert sample == {"util_percent": 55.0, "power_w": 250.5, "memory_used_bytes": 11.0 * GIB}
    assert ("handle", 1) in fake.calls and fake.calls.count("init") == 1
    report = cuda.environment_report()
    assert report["monitor_source"] == "pynvml" and report["driver_version"] == "550.54.15"
    assert report["device_count"] == 2 and report["device_memory_gib"] == 80.0
    cuda.device_sample(torch.device("cuda", 0))
    assert fake.calls.count("init") == 1  # NVML starts once per process
    assert not nvml_machine.exists()  # nvidia-smi never ran


@pytest.mark.parametrize("pynvml", ["missing", "failing"])
def test_cuda_falls_back_to_nvidia_smi(nvml_machine, monkeypatch, pynvml):
    import chipbench.plugins.cuda as cuda

    monkeypatch.setitem(sys.modules, "pynvml",
                        None if pynvml == "missing" else make_fake_pynvml(fail_handles=True))
    sample = cuda.device_sample(torch.device("cuda", 0))
    assert sample["util_percent"] == 87.0 and sample["power_w"] == 301.5
    assert nvml_machine.read_text().count("x") == 1
    assert cuda.environment_report()["monitor_source"] == "nvidia-smi"


def test_monitor_cost_benchmark_measures_both_paths(monkeypatch):
    """benchmarks/monitor_cost.py --sample-paths --fake: a cost for each path (fakes here)."""
    import importlib.util
    from pathlib import Path

    import chipbench.plugins.cuda

    monkeypatch.setattr(chipbench.plugins.cuda, "_nvml_state", {"tried": False, "module": None})
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("PATH", os.environ["PATH"])  # the benchmark prepends its fake tool
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "monitor_cost.py"
    spec = importlib.util.spec_from_file_location("monitor_cost", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    costs = bench.sample_paths(count=3, fake=True)
    assert set(costs) == {"pynvml", "nvidia-smi"}
    assert all(cost["wall_s"] > 0 for cost in costs.values())
