"""The MetaX plugin on a simulated C500 machine: mx-smi table, pymxsml, visible devices, CLI."""

import os
import sys

import pytest
import torch

from chipbench.cli import main
from tests.conftest import MX_SMI_TABLE, make_fake_pymxsml, write_tool


def test_parse_documented_table(metax_machine):
    parsed = metax_machine.parse_mx_smi(MX_SMI_TABLE.read_text())
    assert parsed["driver_version"] == "2.2.0" and parsed["bios_version"] == "1.0.102.0"
    assert parsed["maca_version"] == "2.0" and parsed["mx_smi_version"] == "2.0.12"
    devices = parsed["devices"]
    assert [d["index"] for d in devices] == list(range(8))
    assert {d["name"] for d in devices} == {"MXC500"}
    assert devices[1]["memory_used_mib"] == 37120 and devices[1]["memory_total_mib"] == 65536
    assert devices[1]["util_percent"] == 97.0 and devices[1]["power_w"] == 301.0
    assert devices[6]["temperature_c"] == 63.0 and devices[6]["bus_id"] == "0000:bc:00.0"


def test_parse_moved_columns_and_process_table(metax_machine):
    text = """\
| MX-SMI 2.1.6              Kernel Mode Driver Version: 2.5.1                 |
| MACA Version: 2.23.0.6    BIOS Version: 1.12.3.0                            |
| GPU  Name    Persistence-M | Bus-id        | Memory-Usage      | GPU-Util   |
| Temp  Pwr:Usage/Cap       |               |                   |            |
| 0    MXC500  Off           | 0000:0f:00.0  | 2048/65536 MiB    | 12%        |
| 41C  88W / 350W           |               |                   |            |
| 1    MXC500  Off           | 0000:10:00.0  | 30000/65536 MiB   | 100%       |
| 70C  340W / 350W          |               |                   |            |
+---------------------------------------------------------------------------+
| Process:                                                                  |
|  GPU  PID    Process Name          GPU Memory Usage                       |
|  0    4242   python                1500/65536 MiB 0000:0f:00.0            |
"""
    parsed = metax_machine.parse_mx_smi(text)
    assert parsed["driver_version"] == "2.5.1" and parsed["bios_version"] == "1.12.3.0"
    assert len(parsed["devices"]) == 2
    first, second = parsed["devices"]
    assert first["memory_used_mib"] == 2048 and first["util_percent"] == 12.0
    assert first["temperature_c"] == 41.0 and first["power_w"] == 88.0
    assert second["memory_used_mib"] == 30000 and second["util_percent"] == 100.0


def test_detect_reasons_without_metax(monkeypatch):
    import chipbench.plugins.metax

    monkeypatch.setattr(chipbench.plugins.metax, "installed_torch_version", lambda: "2.1.0+cu121")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("MACA_PATH", raising=False)
    info = chipbench.plugins.metax.vendor_detect()
    assert not info.available
    assert "not a MetaX build" in info.reason and "mx-smi not found" in info.reason
    assert "MACA_PATH unset" in info.reason


@pytest.mark.parametrize("version", ["2.0.0+mc2.18.0.8", "2.8.0+metax3.5.3.9"])
def test_detect_metax_builds(metax_machine, monkeypatch, version):
    monkeypatch.setattr(metax_machine, "installed_torch_version", lambda: version)
    info = metax_machine.vendor_detect()
    assert info.available and "8 MetaX GPU" in info.reason and info.priority > 50


def test_pymxsml_wins_over_mx_smi(metax_machine, monkeypatch):
    fake = make_fake_pymxsml(used_kib=(1024 * 1024, 2 * 1024 * 1024))
    monkeypatch.setitem(sys.modules, "pymxsml", fake)
    memory = metax_machine.device_memory_query(torch.device("cuda", 1))
    assert memory.source == "pymxsml"
    assert memory.used_bytes == 2 * 2**30 and memory.total_bytes == 64 * 2**30
    sample = metax_machine.device_sample(torch.device("cuda", 0))
    assert sample["util_percent"] == 42.0 and sample["temperature_c"] == 51.5
    assert "init" in fake.calls


def test_maca_visible_devices_maps_to_physical_index(metax_machine, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("MACA_VISIBLE_DEVICES", "3,5")  # takes precedence
    memory = metax_machine.device_memory_query(torch.device("cuda", 1))
    assert memory.used_bytes == 36001 * 2**20  # physical GPU 5 in the table
    assert metax_machine.visible_devices_env() == "MACA_VISIBLE_DEVICES"


def test_falls_back_to_torch_when_no_tool(metax_machine, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (48 * 2**30, 64 * 2**30))
    memory = metax_machine.device_memory_query(torch.device("cuda", 0))
    assert memory.source == "cudaMemGetInfo" and memory.used_bytes == 16 * 2**30


def test_hung_mx_smi_times_out(metax_machine, tmp_path, monkeypatch):
    write_tool(tmp_path / "slow", "mx-smi", script="#!/bin/sh\nsleep 30\n")
    monkeypatch.setenv("PATH", str(tmp_path / "slow"))
    import chipbench.plugins._tools

    assert chipbench.plugins._tools.run_tool(["mx-smi"], timeout=0.5) is None


def test_tf32_switch(metax_machine, monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setenv("METAX_USE_TF32", "1")
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        metax_machine.device_init_backend(0)
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def test_core_info_on_simulated_c500(metax_machine, capsys):
    assert main(["info", "--vendor", "metax"]) == 0
    out = capsys.readouterr().out
    assert "device_model: MXC500" in out and "device_count: 8" in out
    assert "device_memory_gib: 64.0" in out
    assert "driver_version: 2.2.0" in out and "bios_version: 1.0.102.0" in out
    assert "collective_backend: nccl" in out and "hardware_label: MXC500" in out
    assert "memory_used_mib=37120" in out  # per-device memory from the table
    assert "runtime_version: MACA 2.0" in out


def test_core_info_json_and_vendors_table(metax_machine, capsys):
    import json

    assert main(["info", "--vendor", "metax", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device_count"] == 8 and len(report["devices"]) == 8
    assert main(["vendors"]) == 0
    lines = capsys.readouterr().out.splitlines()
    metax_line = [line for line in lines if line.startswith("metax")][0]
    assert "yes" in metax_line and "<- auto" in metax_line


def test_parse_tricky_layouts(metax_machine):
    text = """\
| MX-SMI 2.2.0   Kernel Mode Driver Version: 2.6.0   BIOS Version: 1.13.0.0     |
| Compute Process Mode: Default                                                |
| GPU  Name          Persist | Bus-id        | Memory-Usage        | GPU-Util    |
| 0    MXC500  Off           | 0000:4C:00.0  | 2.0/64.0 GiB        | 7%          |
| 55C  120W                  |               |                     |             |
| 1    MXC500  Off           | 0000:4D:00.0  | 10.5/64.0 GiB       | 50%         |
| 57C  200W                  |               |                     |             |
+------------------------------------------------------------------------------+
| Processes:                                                                   |
| 0    4242   python   0000:4C:00.0   1500/65536 MiB                           |
"""
    devices = metax_machine.parse_mx_smi(text)["devices"]
    assert len(devices) == 2  # the "Compute Process Mode" line does not end the table
    assert [d["name"] for d in devices] == ["MXC500", "MXC500"]
    assert devices[0]["temperature_c"] == 55.0  # not "4" from the bus id 0000:4C
    assert devices[0]["memory_used_mib"] == 2048 and devices[0]["memory_total_mib"] == 65536
    assert devices[1]["memory_used_mib"] == 10752 and devices[1]["util_percent"] == 50.0


def test_one_mx_smi_call_per_sample(metax_machine, tmp_path, monkeypatch):
    counter = tmp_path / "calls"
    write_tool(tmp_path / "counting", "mx-smi", script="#!/bin/sh\necho x >> '{}'\ncat '{}'\n"
               .format(counter, MX_SMI_TABLE))
    monkeypatch.setenv("PATH", str(tmp_path / "counting") + ":" + os.environ["PATH"])
    device = torch.device("cuda", 0)
    metax_machine.device_memory_query(device)
    metax_machine.device_sample(device)
    assert counter.read_text().count("x") == 1
