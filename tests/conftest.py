"""Shared fixtures: a private cache for the synthetic data, simulated MetaX and CUDA machines."""

import os
import stat
import sys
import types
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MX_SMI_TABLE = FIXTURES / "c500x8-mx-smi-2.0.12.txt"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Synthetic datasets go to one cache per test session, generated at most once."""
    cache = tmp_path_factory.mktemp("chipbench-cache")
    old = os.environ.get("CHIPBENCH_CACHE")
    os.environ["CHIPBENCH_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("CHIPBENCH_CACHE", None)
    else:
        os.environ["CHIPBENCH_CACHE"] = old


@pytest.fixture(autouse=True)
def clean_vendor_env(monkeypatch):
    for name in ("CHIPBENCH_VENDOR", "CHIPBENCH_STRICT_PLUGINS", "CHIPBENCH_BLOCK_PLUGINS",
                 "CHIPBENCH_TRACE_HOOKS", "MACA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)


def write_tool(folder: Path, name: str, stdout_file: Path = None, script: str = None) -> Path:
    """An executable on PATH that prints ``stdout_file`` (or runs ``script``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    body = script or "#!/bin/sh\ncat '{}'\n".format(stdout_file)
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def fake_mx_smi(tmp_path, monkeypatch):
    """``mx-smi`` on PATH printing the documented C500 x 8 table."""
    bin_dir = tmp_path / "bin"
    write_tool(bin_dir, "mx-smi", MX_SMI_TABLE)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])
    return bin_dir


@pytest.fixture
def metax_machine(fake_mx_smi, monkeypatch):
    """A simulated C500 machine: MetaX torch version string, mx-smi, MACA_PATH (no pymxsml)."""
    import chipbench.plugins.metax

    monkeypatch.setattr(chipbench.plugins.metax, "installed_torch_version", lambda: "2.0.0+mc2.18.0.8")
    monkeypatch.setenv("MACA_PATH", "/opt/maca")
    monkeypatch.setitem(sys.modules, "pymxsml", None)  # import fails, as without the binding
    monkeypatch.setitem(chipbench.plugins.metax._smi_cache, "time", -1e9)  # no answer from another test
    return chipbench.plugins.metax


def make_fake_pymxsml(used_kib=(1024 * 1024,), total_kib=64 * 1024 * 1024, name="MXC500"):
    """A module with the parts of MACA's pymxsml API that the MetaX plugin uses."""
    module = types.ModuleType("pymxsml")
    module.MXSML_USAGE_XCORE = 0
    module.MXSML_TEMPERATURE_HOTSPOT = 0
    module.calls = []
    module.mxSmlInit = lambda: module.calls.append("init")
    module.mxSmlGetDeviceCount = lambda: len(used_kib)
    module.mxSmlGetDeviceInfo = lambda i: types.SimpleNamespace(deviceName=name.encode())
    module.mxSmlGetMemoryInfo = lambda i: types.SimpleNamespace(vramUse=used_kib[i],
                                                               vramTotal=total_kib)
    module.mxSmlGetDeviceIpUsage = lambda i, kind: 42
    module.mxSmlGetTemperatureInfo = lambda i, kind: 5150
    return module
