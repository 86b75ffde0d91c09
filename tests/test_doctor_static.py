"""`core doctor --static` asks no device runtime: on a machine whose vendor is detected and whose
management tool answers but whose runtime finds no device (simulated MetaX and ROCm machines, a
vendor whose runtime hooks all raise), the checks that need the device are listed as not run,
never failed, and the others still run."""

import json
import sys

import pytest
import torch

from chipbench.cli import main
from chipbench.conformance import CHECKS, run_checks
from chipbench.conformance.subject import (
    DEVICE_FREE_HOOKS,
    NOT_RUN_STATIC,
    NOT_RUN_STATIC_WORK,
    device_free,
)
from chipbench.host import contract
from chipbench.host.manager import build_host
from chipbench.host.selection import select_device
from chipbench.records import VendorInfo
from tests.conftest import vendor_module, write_tool

DEVICE_FREE_CHECKS = {name for name, fn in CHECKS if device_free(fn)}
"""What static mode runs where the device is not the host's CPU."""


def static_doctor(capsys, vendor):
    """`core doctor --static --json --vendor VENDOR`: its exit code and checks by name."""
    code = main(["doctor", "--vendor", vendor, "--static", "--json"])
    report = json.loads(capsys.readouterr().out)
    return code, {c["check"]: c for c in report["checks"]}


def assert_nothing_asked_the_device(code, checks):
    failed = ["{}: {}".format(name, c["got"]) for name, c in checks.items() if c["status"] == "fail"]
    assert code == 0 and not failed, failed
    for name, check in checks.items():
        if name in DEVICE_FREE_CHECKS:
            assert check["got"] != NOT_RUN_STATIC, name
        else:
            assert check["status"] == "skip" and check["got"] == NOT_RUN_STATIC, (name, check)


def test_static_mode_runs_what_needs_no_device():
    """The split itself: the rule checks of the device-free hooks and the checks that only read
    the plugin run; every check that initialises, counts or uses the device does not."""
    assert DEVICE_FREE_HOOKS <= set(contract.RULE)
    assert DEVICE_FREE_CHECKS == {
        "vendor_detect", "returns:device_name", "returns:hardware_id",
        "returns:collective_backend", "returns:visible_devices_env", "returns:environment_report",
        "collective_backend", "shipped_configs", "optional_hooks"}


def _no_driver(hook):
    def raising(**kwargs):
        raise RuntimeError("Found no driver on your system ({} asked the device)".format(hook))
    return raising


def test_a_vendor_without_its_driver_fails_no_static_check():
    """An accelerator vendor whose every hook that is not device-free raises, as a driverless
    runtime does: static mode never calls one, live mode fails on them (so the raising hooks are
    really there to be met)."""
    import inspect

    from chipbench import hookspecs

    overrides = {"vendor_detect": lambda: VendorInfo("nodriver", "npu", -5, True, "simulated")}
    for hook in (h for h in contract.DEVICE_HOOKS if h not in DEVICE_FREE_HOOKS):
        names = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
        overrides[hook] = eval("lambda {}: raising()".format(names),  # noqa: S307 - pluggy wants
                               {"raising": _no_driver(hook)})  # the spec's argument names
    host = build_host(load_entry_points=False)
    host.add(vendor_module("nodriver", **overrides), "nodriver", "test")
    facade = select_device(host, "nodriver")
    static = {r.check: r for r in run_checks(facade, live=False)}
    assert not [r.line() for r in static.values() if not r.ok]
    assert {name for name, r in static.items() if r.got != NOT_RUN_STATIC} == DEVICE_FREE_CHECKS
    assert static["returns:collective_backend"].status == "pass"
    live = run_checks(facade, live=True,
                      only=["returns:device_count", "returns:supported_precisions"])
    assert [r.status for r in live] == ["fail", "fail"]
    assert all("Found no driver" in r.got for r in live)


def test_a_device_that_is_the_host_s_cpu_is_asked_in_static_mode():
    """The CPU is there wherever the command runs: static mode asks it (counts, names, answers of
    every hook), and leaves out only the work on it and the child processes."""
    facade = select_device(build_host(load_entry_points=False), "cpu")
    untimed = [name for name, _ in CHECKS if name != "call_overhead"]  # timings: a busy machine
    static = {r.check: r for r in run_checks(facade, live=False, only=untimed)}
    assert static["returns:device_count"].status == "pass"
    assert static["device_init_backend"].status == "pass"
    left_out = {name for name, r in static.items() if r.got == NOT_RUN_STATIC_WORK}
    assert left_out == {"device_memory_peak", "device_synchronize", "visible_devices_env",
                        "collective_all_reduce"}
    assert not [r.line() for r in static.values() if not r.ok]


def without_driver(monkeypatch, message):
    """torch.cuda as without a driver: setting, synchronising, naming or querying a device raises
    ``message`` (whether or not this machine has a GPU)."""

    def no_driver(*args, **kwargs):
        raise RuntimeError(message)

    for name in ("set_device", "synchronize", "mem_get_info", "get_device_name",
                 "max_memory_reserved", "reset_peak_memory_stats", "is_bf16_supported"):
        monkeypatch.setattr(torch.cuda, name, no_driver)


def test_simulated_metax_without_its_driver_passes_static_doctor(metax_machine, monkeypatch,
                                                                 capsys):
    """mx-smi answers and MetaX's torch is installed, but torch.cuda finds no driver: every check
    that asked the device used to fail here; the names and the report still come from mx-smi."""
    without_driver(monkeypatch, "Found no NVIDIA driver on your system")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    code, checks = static_doctor(capsys, "metax")
    assert_nothing_asked_the_device(code, checks)
    assert checks["returns:visible_devices_env"]["got"] == "'MACA_VISIBLE_DEVICES'"
    assert checks["returns:hardware_id"]["status"] == "pass" and "C500" in checks[
        "returns:hardware_id"]["got"]
    table_code = main(["doctor", "--vendor", "metax", "--static"])
    table = capsys.readouterr().out
    assert table_code == 0
    assert "SKIP  returns:device_init_backend       " + NOT_RUN_STATIC in table


ROCM_VERSION, HIP_VERSION = "2.5.1+rocm6.2", "6.2.41133-dd7f95766"


AMD_SMI = {
    "static": [{"gpu": i, "asic": {"market_name": "AMD Instinct MI300X"},
                "driver": {"name": "amdgpu", "version": "6.8.5"},
                "vram": {"size": {"value": 196592, "unit": "MB"}}} for i in range(8)],
    "metric": [{"gpu": i, "mem_usage": {"total_vram": {"value": 196592, "unit": "MB"},
                                        "used_vram": {"value": 1000, "unit": "MB"}}}
               for i in range(8)]}
"""What ``amd-smi static --json`` and ``amd-smi metric --json`` print on the simulated MI300X x 8."""


@pytest.fixture
def rocm_without_driver(tmp_path, monkeypatch):
    """A ROCm torch that counts 8 GPUs (detection) and amd-smi on PATH, but no driver behind
    torch.cuda: setting, synchronising or querying a device raises."""
    import os

    import chipbench.plugins.cuda
    import chipbench.plugins.rocm as rocm

    for module in (rocm, chipbench.plugins.cuda):
        monkeypatch.setattr(module, "installed_torch_version", lambda: ROCM_VERSION)
    monkeypatch.setattr(torch.version, "hip", HIP_VERSION, raising=False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    monkeypatch.setattr(rocm, "_smi_cache", {})
    monkeypatch.setattr(rocm, "_amdsmi_state", {"tried": False, "module": None})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    for name in ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    for command, rows in AMD_SMI.items():
        (tmp_path / (command + ".json")).write_text(json.dumps(rows))
    write_tool(tmp_path / "bin", "amd-smi", script="#!/bin/sh\ncat '{}/'\"$1\".json\n".format(
        tmp_path))
    monkeypatch.setenv("PATH", "{}{}{}".format(tmp_path / "bin", os.pathsep, os.environ["PATH"]))
    without_driver(monkeypatch, "No HIP GPUs are available")
    return rocm


def test_simulated_rocm_without_its_driver_passes_static_doctor(rocm_without_driver, capsys):
    code, checks = static_doctor(capsys, "rocm")
    assert_nothing_asked_the_device(code, checks)
    assert checks["returns:visible_devices_env"]["got"] == "'HIP_VISIBLE_DEVICES'"
    assert checks["returns:device_name"]["got"] == "'AMD Instinct MI300X'"
    # the same machine, live: the device is asked, and its absence is a failure
    facade = select_device(build_host(load_entry_points=False), "rocm")
    (live,) = run_checks(facade, only=["returns:device_init_backend"])
    assert live.status == "fail" and "No HIP GPUs are available" in live.got
