"""Shared fixtures: a private cache for the synthetic data, a tiny data set and a finished tiny
run that tests share, simulated MetaX and CUDA machines."""

import os
import signal
import stat
import sys
import types
from pathlib import Path
from typing import List

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MX_SMI_TABLE = FIXTURES / "c500x8-mx-smi-2.0.12.txt"

# The tiny embedded data set: 16 training images (the 16th holds no object on purpose, so 15 are
# trained on; two ranks get 8 each) and 4 validation images, 64 px; the model sees them at 64 px.
TINY_TRAIN_IMAGES, TINY_VAL_IMAGES, TINY_SIZE, TINY_SEED = 16, 4, 64, 0
TINY_DATA = ["--set", "data.synthetic.train_images={}".format(TINY_TRAIN_IMAGES),
             "--set", "data.synthetic.val_images={}".format(TINY_VAL_IMAGES),
             "--set", "data.synthetic.image_size={}".format(TINY_SIZE),
             "--set", "model.min_size={}".format(TINY_SIZE),
             "--set", "model.max_size={}".format(TINY_SIZE)]
# the shared finished run: two iterations of batch 4 (one epoch, evaluated), sampled every 0.2 s
TINY_RUN_ITERS = 2


def default_sigint() -> None:
    """A child's ``preexec_fn``: Ctrl-C as a terminal delivers it. A shell that starts a job in
    the background (``nohup ... &``) makes its children ignore SIGINT, and Python keeps an ignored
    SIGINT ignored: a test that sends SIGINT would then see the run finish instead. SIGHUP too
    (``nohup`` ignores it, and chipbench leaves an ignored SIGHUP ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def tiny(iterations: int = 1, *more: str) -> List[str]:
    """``core run`` options of a tiny run on the tiny data set: ``iterations`` iterations."""
    return TINY_DATA + ["--set", "train.max_iters={}".format(iterations), *more]


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


@pytest.fixture(scope="session")
def tiny_data(private_cache) -> Path:
    """The tiny synthetic data set, in the session's cache (where tiny runs look for it)."""
    from chipbench.cases.retinanet.synthetic import ensure_synthetic_coco

    return ensure_synthetic_coco(TINY_TRAIN_IMAGES, TINY_VAL_IMAGES, TINY_SIZE, seed=TINY_SEED,
                                 cache_root=private_cache)


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """The folder of one finished tiny run (CPU, one process, ``TINY_RUN_ITERS`` iterations).

    Shared by every test that only READS a run's outputs (result.json, report.md, logs, monitor,
    plots, checkpoints): never write into it. A test that changes a run makes its own.
    """
    from chipbench.cli import main

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    code = main(["run", "cases/retinanet", "--vendor", "cpu", "--output", str(out)]
                + tiny(TINY_RUN_ITERS, "--set", "run.monitor_interval_s=0.2"))
    assert code == 0, "the shared tiny run failed: see {}".format(out / "logs")
    return out


ACCELERATOR_MARKS = ("cuda", "metax")


def pytest_collection_finish(session):
    """A session that selected no test marked cuda or metax (the cpu and oldstack envs) runs as
    on a machine without a GPU even where there is one: NVIDIA GPUs are hidden from torch (an
    empty ``CUDA_VISIBLE_DEVICES``, for this process and every one it starts), so auto-detection
    picks the CPU and the figures and messages the tests expect hold there too. Set before any
    test runs: torch reads the variable when CUDA initialises."""
    if not any(item.get_closest_marker(mark) for item in session.items
               for mark in ACCELERATOR_MARKS):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def pytest_sessionfinish(session, exitstatus):
    """Where ``CHIPBENCH_NO_TESTS_OK=1`` (tox sets it), a session whose markers selected no test
    (pytest's exit 5) passes: an env for absent hardware must not fail the matrix."""
    if exitstatus == 5 and os.environ.get("CHIPBENCH_NO_TESTS_OK") == "1":
        session.exitstatus = 0


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
