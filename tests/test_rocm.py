"""The ROCm plugin on a simulated MI300X x 8 machine: ROCm torch version, amd-smi's JSON, amdsmi,
visible devices, the cuda vendor declining the build, the generic vendor standing back."""

import json
import os
import sys
import types

import pytest
import torch
import yaml

from chipbench.cli import main
from chipbench.host.manager import build_host
from chipbench.host.selection import select_device
from tests.conftest import write_tool

ROCM_VERSION, HIP_VERSION = "2.5.1+rocm6.2", "6.2.41133-dd7f95766"
MI300X = "AMD Instinct MI300X"
GPUS = 8


def metric_rows(gpus: int = GPUS) -> list:
    """``amd-smi metric --json`` of ROCm 6.2 (one object per GPU, figures as value and unit);
    GPU i uses 1000 * (i + 1) MiB of 196592."""
    return [{
        "gpu": i,
        "usage": {"gfx_activity": {"value": 10 * i, "unit": "%"},
                  "umc_activity": {"value": 0, "unit": "%"}, "mm_activity": "N/A"},
        "power": {"socket_power": {"value": 140 + i, "unit": "W"}, "gfx_voltage": "N/A"},
        "temperature": {"edge": "N/A", "hotspot": {"value": 40 + i, "unit": "C"},
                        "mem": {"value": 35, "unit": "C"}},
        "mem_usage": {"total_vram": {"value": 196592, "unit": "MB"},
                      "used_vram": {"value": 1000 * (i + 1), "unit": "MB"},
                      "free_vram": {"value": 196592 - 1000 * (i + 1), "unit": "MB"}},
    } for i in range(gpus)]


def static_rows(gpus: int = GPUS) -> list:
    """``amd-smi static --json``: ASIC, driver and VRAM of each GPU."""
    return [{
        "gpu": i,
        "asic": {"market_name": MI300X, "vendor_id": "0x1002", "device_id": "0x74a1"},
        "driver": {"name": "amdgpu", "version": "6.8.5"},
        "vram": {"type": "HBM3", "size": {"value": 196592, "unit": "MB"}},
    } for i in range(gpus)]


def check_contract(facade) -> None:
    """The conformance kit's static checks (those `core doctor --static` runs): none may fail."""
    from chipbench.conformance import run_checks

    failures = [r.line() for r in run_checks(facade, live=False) if not r.ok]
    assert not failures, "\n".join(failures)


@pytest.fixture
def amd_smi(tmp_path, monkeypatch):
    """``amd-smi`` on PATH answering ``metric --json`` and ``static --json``; each call is counted
    in ``calls``."""
    (tmp_path / "metric.json").write_text(json.dumps(metric_rows()))
    (tmp_path / "static.json").write_text(json.dumps(static_rows()))
    calls = tmp_path / "calls"
    write_tool(tmp_path / "bin", "amd-smi", script=(
        "#!/bin/sh\necho \"$1\" >> '{calls}'\ncase \"$1\" in metric) cat '{m}';; "
        "static) cat '{s}';; *) exit 2;; esac\n").format(
            calls=calls, m=tmp_path / "metric.json", s=tmp_path / "static.json"))
    monkeypatch.setenv("PATH", "{}{}{}".format(tmp_path / "bin", os.pathsep, os.environ["PATH"]))
    return calls


@pytest.fixture
def rocm_machine(amd_smi, monkeypatch):
    """A simulated MI300X x 8: ROCm torch version (package metadata and ``torch.version.hip``),
    amd-smi on PATH, no amdsmi module, ``torch.cuda`` answering for 8 GPUs."""
    import chipbench.plugins.cuda
    import chipbench.plugins.rocm as rocm

    for module in (rocm, chipbench.plugins.cuda):
        monkeypatch.setattr(module, "installed_torch_version", lambda: ROCM_VERSION)
    monkeypatch.setattr(torch.version, "hip", HIP_VERSION, raising=False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # import fails, as without the library
    monkeypatch.setattr(rocm, "_smi_cache", {})
    monkeypatch.setattr(rocm, "_amdsmi_state", {"tried": False, "module": None})
    for name in ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: GPUS)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: MI300X)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (150 * 2**30, 192 * 2**30))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 5 * 2**30)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    return rocm


def make_fake_amdsmi(used_mb=(2048, 4096)) -> types.ModuleType:
    """A module with the parts of AMD's amdsmi API that the ROCm plugin uses."""
    module = types.ModuleType("amdsmi")
    module.calls = []
    module.AmdSmiTemperatureType = types.SimpleNamespace(EDGE=0, HOTSPOT=1)
    module.AmdSmiTemperatureMetric = types.SimpleNamespace(CURRENT=0)
    module.amdsmi_init = lambda *flags: module.calls.append("init")
    module.amdsmi_get_processor_handles = lambda: ["h{}".format(i) for i in range(len(used_mb))]
    index = {"h{}".format(i): i for i in range(len(used_mb))}
    module.amdsmi_get_gpu_asic_info = lambda h: {"market_name": MI300X}
    module.amdsmi_get_gpu_vram_usage = lambda h: {"vram_total": 196592,
                                                  "vram_used": used_mb[index[h]]}
    module.amdsmi_get_gpu_activity = lambda h: {"gfx_activity": 99, "umc_activity": 10,
                                                "mm_activity": "N/A"}
    module.amdsmi_get_power_info = lambda h: {"current_socket_power": "N/A",
                                              "average_socket_power": 650}

    def temperature(handle, kind, metric):
        if kind == module.AmdSmiTemperatureType.HOTSPOT:
            return 71
        raise RuntimeError("AMDSMI_STATUS_NOT_SUPPORTED")

    module.amdsmi_get_temp_metric = temperature
    return module


def test_parse_documented_metric_json(rocm_machine):
    devices = rocm_machine.parse_amd_smi_metric(json.dumps(metric_rows()))
    assert [d["index"] for d in devices] == list(range(GPUS))
    third = devices[2]
    assert third["memory_used_mib"] == 3000 and third["memory_total_mib"] == 196592
    assert third["util_percent"] == 20.0 and third["power_w"] == 142.0
    assert third["temperature_c"] == 42.0  # the hotspot: MI300X reports no edge temperature


def test_parse_later_layouts_and_unknown_figures(rocm_machine):
    text = json.dumps({"gpu_data": [
        {"gpu": 0, "usage": "N/A", "power": {"socket_power": "N/A"}, "mem_usage": "N/A"},
        {"gpu": 1, "usage": {"gfx_activity": 7}, "mem_usage": {"total_vram": 65520,
                                                                "used_vram": 12}}]})
    first, second = rocm_machine.parse_amd_smi_metric(text)
    assert first == {"index": 0}
    assert second == {"index": 1, "util_percent": 7.0, "memory_used_mib": 12,
                      "memory_total_mib": 65520}
    assert rocm_machine.parse_amd_smi_metric("not json") == []
    static = rocm_machine.parse_amd_smi_static(json.dumps(static_rows(2)))
    assert static[1] == {"index": 1, "name": MI300X, "driver_version": "6.8.5",
                         "memory_total_mib": 196592}


def test_detect_reasons_without_rocm(monkeypatch):
    import chipbench.plugins.rocm as rocm

    monkeypatch.setattr(rocm, "installed_torch_version", lambda: "2.4.0+cu121")
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    info = rocm.vendor_detect()
    assert not info.available and info.device_type == "cuda"
    assert "not a ROCm build (torch.version.hip unset; amd-smi not on PATH)" in info.reason


def test_detect_rocm_build_and_no_gpu(rocm_machine, monkeypatch):
    info = rocm_machine.vendor_detect()
    assert info.available and info.priority == 50
    assert info.reason == "8 AMD GPU(s), torch {}, HIP {}".format(ROCM_VERSION, HIP_VERSION)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    info = rocm_machine.vendor_detect()
    assert not info.available and "sees no GPU" in info.reason and "ROCR_VISIBLE_DEVICES" in info.reason


@pytest.mark.parametrize("version, hip", [(ROCM_VERSION, HIP_VERSION), ("2.5.1", HIP_VERSION),
                                          (ROCM_VERSION, None)])
def test_cuda_declines_rocm_builds(rocm_machine, monkeypatch, version, hip):
    """A ROCm build by its version or by torch.version.hip: the cuda vendor declines it, the rocm
    vendor takes it (one shared decision, so never both or neither)."""
    import chipbench.plugins.cuda

    for module in (rocm_machine, chipbench.plugins.cuda):
        monkeypatch.setattr(module, "installed_torch_version", lambda: version)
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch.version, "cuda", None if hip else "12.1")
    cuda = chipbench.plugins.cuda.vendor_detect()
    assert not cuda.available and "rocm vendor takes it" in cuda.reason
    assert rocm_machine.vendor_detect().available


def test_simulated_contract_and_auto_selection(rocm_machine):
    """rocm outranks the cpu vendor and the generic one, passes the conformance kit's static
    checks, and reads device-wide memory from amd-smi."""
    host = build_host(load_entry_points=False)
    assert not host.record("cuda").info.available
    facade = select_device(host, None)
    assert facade.vendor == "rocm"
    check_contract(facade)
    device = facade.init_backend(1)
    assert device == torch.device("cuda", 1)
    memory = facade.memory_query(device)
    assert (memory.used_bytes, memory.total_bytes, memory.source) == (
        2000 * 2**20, 196592 * 2**20, "amd-smi")
    assert facade.sample(device) == {"util_percent": 10.0, "power_w": 141.0,
                                     "temperature_c": 41.0, "memory_used_bytes": 2000 * 2**20}
    assert facade.collective_backend() == "nccl"
    assert facade.visible_devices_env() == "HIP_VISIBLE_DEVICES"
    assert facade.hardware_id().config_tag == "MI300X"
    assert facade.supported_precisions() == ["fp32", "amp", "fp16", "bf16"]


def test_amdsmi_wins_over_amd_smi(rocm_machine, monkeypatch, amd_smi):
    fake = make_fake_amdsmi()
    monkeypatch.setitem(sys.modules, "amdsmi", fake)
    memory = rocm_machine.device_memory_query(torch.device("cuda", 1))
    assert memory.source == "amdsmi" and memory.used_bytes == 4096 * 2**20
    sample = rocm_machine.device_sample(torch.device("cuda", 0))
    assert sample == {"util_percent": 99.0, "power_w": 650.0, "temperature_c": 71.0,
                      "memory_used_bytes": 2048 * 2**20}
    assert fake.calls == ["init"]  # initialised once per process
    assert not amd_smi.exists()  # the tool never ran


def test_visible_devices_map_to_physical_index(rocm_machine, monkeypatch):
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "3,5")
    assert rocm_machine.device_memory_query(torch.device("cuda", 1)).used_bytes == 6000 * 2**20
    # ROCR_VISIBLE_DEVICES selects first, HIP_VISIBLE_DEVICES indexes what it left
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "2,4,6")
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "1")
    assert rocm_machine.physical_index(0) == 4
    assert rocm_machine.device_memory_query(torch.device("cuda", 0)).used_bytes == 5000 * 2**20


def test_falls_back_to_torch_without_tools(rocm_machine, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    device = torch.device("cuda", 0)
    memory = rocm_machine.device_memory_query(device)
    assert memory.source == "hipMemGetInfo" and memory.used_bytes == 42 * 2**30
    assert rocm_machine.device_sample(device) == {}
    assert rocm_machine.device_name(0) == MI300X


def test_one_amd_smi_call_per_sample(rocm_machine, amd_smi):
    device = torch.device("cuda", 0)
    rocm_machine.device_memory_query(device)
    rocm_machine.device_sample(device)
    assert amd_smi.read_text().split().count("metric") == 1


@pytest.mark.parametrize("name, precision, peak", [
    (MI300X, "amp", 1307.4e12), (MI300X, "bf16", 1307.4e12), (MI300X, "fp32", 163.4e12),
    ("AMD Instinct MI325X", "fp16", 1307.4e12), ("AMD Instinct MI250X / MI250", "fp16", 383e12),
    ("AMD Instinct MI210", "bf16", 181e12), ("AMD Radeon RX 7900 XTX", "fp16", None)])
def test_peak_flops_of_known_parts(rocm_machine, monkeypatch, name, precision, peak):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: name)
    answer = rocm_machine.device_peak_flops(torch.device("cuda", 0), precision)
    assert answer == pytest.approx(peak) if peak else answer is None


def test_core_info_on_simulated_mi300x(rocm_machine, capsys):
    assert main(["info", "--vendor", "rocm", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device_model"] == MI300X and report["device_count"] == GPUS
    assert report["device_memory_gib"] == 192.0 and report["driver_version"] == "6.8.5"
    assert report["runtime_version"] == "HIP " + HIP_VERSION
    assert report["monitor_source"] == "amd-smi" and len(report["devices"]) == GPUS


def test_shipped_mi300x_config_follows_the_recipe(rocm_machine):
    """MI300Xx1x8.yaml is found by the tag the plugin reports and holds the recipe's 1x8
    settings (those of A100x1x8)."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "cases" / "retinanet" / "configs"
    tag = rocm_machine.hardware_id().config_tag
    ours = yaml.safe_load((folder / "{}x1x8.yaml".format(tag)).read_text())
    assert ours == yaml.safe_load((folder / "A100x1x8.yaml").read_text())
