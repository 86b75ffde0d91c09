"""Every registered vendor's hooks return the documented types (on the vendors available here,
plus MetaX and CUDA simulated)."""

import os
import types
from pathlib import Path

import pytest
import torch

from chipbench.hookspecs import DEVICE_HOOKS
from chipbench.host.device import Device
from chipbench.host.manager import build_host
from chipbench.host.selection import select_device
from chipbench.records import HardwareId
from tests.conftest import vendor_module, write_tool


def check_contract(facade: Device, with_device_calls: bool = True) -> None:
    """The conformance kit's checks (the same ones `core doctor` runs): none may fail.
    ``with_device_calls=False`` leaves out the live ones (simulated machines have no device)."""
    from chipbench.conformance import run_checks

    failures = [r.line() for r in run_checks(facade, live=with_device_calls) if not r.ok]
    assert not failures, "\n".join(failures)


def test_every_installed_vendor_plugin_loads():
    """The shipped vendors and the installed example plugin register, none broken."""
    records = build_host().records
    assert not [(r.name, r.error) for r in records if r.broken]
    assert {"cpu", "cuda", "metax", "fakechip"} <= {r.name for r in records}


@pytest.mark.parametrize("hook", DEVICE_HOOKS)
def test_a_vendor_lacking_a_device_hook_is_refused_naming_it(hook):
    """A vendor plugin without one device hook is broken, not listed, and choosing it says so
    (it would otherwise fail mid-run at the first call of that hook)."""
    from chipbench.errors import UserError

    partial = vendor_module("partial")
    delattr(partial, hook)
    host = build_host(load_entry_points=False)
    record = host.add(partial, "partial", "test")
    assert record.broken and record.error == "vendor plugin lacks hooks: " + hook
    assert "partial" not in [v.name for v in host.vendors()]
    with pytest.raises(UserError, match="vendor plugin 'partial' [(]test[)] is broken: vendor "
                                        "plugin lacks hooks: " + hook):
        select_device(host, "partial")


def test_available_vendors_honour_the_contract():
    for info in build_host().vendors():
        if info.available:
            check_contract(select_device(build_host(), info.name), with_device_calls=False)


def test_cpu_details():
    facade = select_device(build_host(load_entry_points=False), "cpu")
    assert facade.collective_backend() == "gloo"
    assert facade.visible_devices_env() == ""
    assert facade.hardware_id() == HardwareId("CPU", "CPU")
    assert facade.init_backend(3) == torch.device("cpu")


def test_metax_simulated_contract(metax_machine, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 5 * 2**30)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    host = build_host(load_entry_points=False)
    facade = select_device(host, None)  # auto: MetaX outranks CPU (and CUDA)
    assert facade.vendor == "metax"
    check_contract(facade, with_device_calls=False)
    device = facade.init_backend(1)
    assert device == torch.device("cuda", 1)
    memory = facade.memory_query(device)
    assert memory.used_bytes == 37120 * 2**20 and memory.total_bytes == 65536 * 2**20
    assert memory.source == "mx-smi"


def test_cuda_simulated_contract(cuda_machine):
    host = build_host(load_entry_points=False)
    facade = select_device(host, None)
    assert facade.vendor == "cuda"
    check_contract(facade, with_device_calls=False)
    assert facade.hardware_id() == HardwareId("A100", "A100")
    assert facade.supported_precisions() == ["fp32", "amp", "fp16", "bf16"]
    report = facade.environment_report()
    assert report["device_model"] == "NVIDIA A100-SXM4-80GB" and report["driver_version"] == "535.104.05"
    sample = facade.sample(torch.device("cuda", 0))
    assert sample["util_percent"] == 87.0 and sample["power_w"] == 301.5
    assert facade.memory_query(torch.device("cuda", 0)).used_bytes == 20 * 2**30


def test_a_local_rank_beyond_the_visible_devices_is_one_line(cuda_machine, monkeypatch):
    """Three processes on a node whose vendor sees two GPUs: the third rank is refused naming
    the count and the fix, before the vendor's set_device fails in its own words. Processes of a
    CPU-type vendor share the one host device, so any local rank runs there."""
    from chipbench.errors import UserError
    from chipbench.run.worker import check_local_device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    facade = select_device(build_host(load_entry_points=False), "cuda")
    check_local_device(facade, 1)
    with pytest.raises(UserError) as caught:
        check_local_device(facade, 2)
    line = caught.value.one_line()
    assert "local rank 2 has no device" in line and "sees 2 device(s)" in line
    assert "CUDA_VISIBLE_DEVICES=4,5" in line and "at most 2 process(es)" in line
    assert "\n" not in line
    check_local_device(select_device(build_host(load_entry_points=False), "cpu"), 7)


def test_cuda_declines_metax_build(metax_machine, monkeypatch):
    import chipbench.plugins.cuda

    monkeypatch.setattr(chipbench.plugins.cuda, "installed_torch_version", lambda: "2.0.0+mc2.18.0.8")
    info = chipbench.plugins.cuda.vendor_detect()
    assert not info.available and "not an NVIDIA build" in info.reason


@pytest.mark.cuda
def test_real_cuda_contract():
    if not torch.cuda.is_available():
        pytest.skip("no NVIDIA GPU here")
    facade = select_device(build_host(), "cuda")
    check_contract(facade)


@pytest.mark.metax
def test_real_metax_contract():
    host = build_host()
    if not host.record("metax").info.available:
        pytest.skip("no MetaX GPU here: " + host.record("metax").info.reason)
    check_contract(select_device(host, "metax"))


def test_optional_run_switches_default_without_a_vendor_hook():
    facade = select_device(build_host(load_entry_points=False), "cpu")
    device = torch.device("cpu")
    assert not facade.implements("device_configure")
    assert facade.configure(device, deterministic=True, autotune=True) is None
    assert facade.grad_scaler(device, "fp32") is None and facade.grad_scaler(device, "bf16") is None
    if hasattr(torch.amp, "GradScaler"):
        assert isinstance(facade.grad_scaler(device, "fp16"), torch.amp.GradScaler)


def test_optional_run_switches_reach_the_vendor():
    calls = []
    scaler = types.SimpleNamespace(**{m: lambda *a: None for m in ("scale", "unscale_", "step",
                                                                   "update")})

    def device_configure(device, deterministic, autotune):
        calls.append((device, deterministic, autotune))

    def device_grad_scaler(precision):  # a subset of the spec's arguments
        return scaler if precision == "fp16" else None

    host = build_host(load_entry_points=False)
    host.add(vendor_module("switchy", device_configure=device_configure,
                           device_grad_scaler=device_grad_scaler), "switchy", "test")
    facade = select_device(host, "switchy")
    facade.configure(torch.device("cpu"), deterministic=False, autotune=True)
    assert calls == [(torch.device("cpu"), False, True)]
    assert facade.grad_scaler(torch.device("cpu"), "fp16") is scaler
    assert facade.grad_scaler(torch.device("cpu"), "fp32") is None  # never asked


@pytest.mark.parametrize("peak", [1e-30, 0.5, 1e30])
def test_answers_outside_the_contract_from_optional_hooks_are_refused(peak):
    """``device_configure`` answering anything but None, and a peak no device can have, are
    refused by the facade (so by `core doctor`, the conformance kit and runs alike); a run
    reports the peak's refusal as its MFU note instead of failing."""
    from chipbench.conformance import run_checks
    from chipbench.errors import PluginError
    from chipbench.measure.flops import peak_flops

    host = build_host(load_entry_points=False)
    host.add(vendor_module("claims", device_configure=lambda device, deterministic, autotune: True,
                           device_peak_flops=lambda device, precision: peak), "claims", "test")
    facade = select_device(host, "claims")
    with pytest.raises(PluginError, match="returned True from hook device_configure, expected "
                                          "None;"):
        facade.configure(torch.device("cpu"), deterministic=False, autotune=False)
    with pytest.raises(PluginError, match="FLOP/s from 1e[+]06 to 1e[+]18, or None"):
        facade.peak_flops(torch.device("cpu"), "fp32")
    assert "peak unknown" in peak_flops(facade, torch.device("cpu"), "fp32")["peak_note"]
    failed = {r.check for r in run_checks(facade, live=True) if not r.ok}
    assert "optional_hooks" in failed


def test_cuda_like_switches(monkeypatch):
    import chipbench.plugins.cuda
    import chipbench.plugins.metax

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    for plugin in (chipbench.plugins.cuda, chipbench.plugins.metax):
        plugin.device_configure(torch.device("cuda", 0), deterministic=False, autotune=True)
        assert torch.backends.cudnn.benchmark is True
        plugin.device_configure(torch.device("cuda", 0), deterministic=True, autotune=True)
        assert torch.backends.cudnn.benchmark is False
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
        scaler = plugin.device_grad_scaler(torch.device("cuda", 0), "fp16")
        assert scaler is None if hasattr(torch.amp, "GradScaler") else scaler is not None


README = Path(__file__).resolve().parents[1] / "docs" / "vendor-plugins.md"


def test_readme_minimal_plugin_honours_the_contract(tmp_path, monkeypatch):
    section = README.read_text(encoding="utf-8").split("### Writing a vendor plugin", 1)[1]
    source = section.split("```python\n")[2].split("```")[0]  # [1] is the import line
    module = types.ModuleType("mychip_chipbench")
    exec(compile(source, "README:mychip_chipbench", "exec"), module.__dict__)
    host = build_host(load_entry_points=False)
    record = host.add(module, "mychip", "README")
    assert not record.broken and not record.info.available  # no mychip-smi here
    write_tool(tmp_path / "bin", "mychip-smi", script="#!/bin/sh\n")
    monkeypatch.setenv("PATH", "{}:{}".format(tmp_path / "bin", os.environ["PATH"]))
    host = build_host(load_entry_points=False)
    assert host.add(module, "mychip", "README").info.available
    facade = select_device(host, "mychip")
    check_contract(facade, with_device_calls=False)  # not installed: child processes can't load it
    assert facade.implements("device_configure") and not facade.implements("device_grad_scaler")
    facade.configure(torch.device("cpu"), deterministic=True, autotune=False)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux's peak RSS reset")
@pytest.mark.parametrize("trim", [True, False])
def test_cpu_peak_counts_new_memory_after_the_heap_kept_freed_pages(monkeypatch, trim):
    """After many small tensors are freed, glibc keeps their pages and the next allocation reuses
    them: the resident size does not grow. The cpu vendor's reset returns those pages first, so
    the peak after it rises by what is allocated (without that, by 0; the kit's memory check
    failed so in a process that had trained before)."""
    from chipbench.plugins import cpu

    if not trim:
        monkeypatch.setattr(cpu, "release_free_heap", lambda: None)
    held = [torch.ones(25 * 1024) for _ in range(2000)]  # 100 KiB each: from the heap, not mmap
    top = torch.ones(16)  # keeps the freed chunks below the heap's top, where glibc keeps them
    del held
    device = torch.device("cpu")
    cpu.device_memory_reset_peak(device)
    base = cpu.device_memory_peak(device)
    tensor = torch.ones(16 * 2**20)  # 64 MiB
    rise = cpu.device_memory_peak(device) - base
    del tensor, top
    if trim:
        assert rise >= 63 * 2**20
    elif rise >= 63 * 2**20:
        pytest.skip("this C allocator gave fresh pages: the case the trim is for did not arise")
    else:
        assert rise < 2**20  # glibc reused the kept pages: the condition the trim exists for
