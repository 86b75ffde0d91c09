"""Shared fixtures: a private cache for the synthetic data, a tiny data set and a finished tiny
run that tests share, simulated MetaX and CUDA machines; and the helpers several test modules
use (throwaway vendors, installed distributions, child runs, run-folder snapshots, hand-made
results), so that no test module imports another."""

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

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


# --------------------------------------------------------------------------------------------------
# Helpers that several test modules use: defined here once, never imported from a test module
# (importing one runs its module code and ties the two files together).
# --------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--vendor", "cpu", *TINY_DATA, "--set", "run.monitor_interval_s=0.5",
         "--set", "run.checkpoint=false"]
"""``core run`` options of a quick CPU run on the tiny data set (no checkpoint)."""


def vendor_module(name: str, priority: int = 5, available: bool = True,
                  **overrides: Callable[..., Any]) -> types.ModuleType:
    """A throwaway vendor plugin: the CPU plugin's hooks under another name, ``overrides``
    (hook name: function) replacing some of them."""
    import chipbench.plugins.cpu as cpu_plugin
    from chipbench.hookspecs import DEVICE_HOOKS, hookimpl
    from chipbench.records import VendorInfo

    module = types.ModuleType("vendor_" + name)
    for hook in DEVICE_HOOKS:
        setattr(module, hook, getattr(cpu_plugin, hook))

    @hookimpl
    def vendor_detect() -> VendorInfo:
        return VendorInfo(name, "cpu", priority, available, "test vendor " + name)

    module.vendor_detect = vendor_detect
    for hook, fn in overrides.items():
        setattr(module, hook, hookimpl(fn))
    return module


def vendor_answering(backend: str, registers: Optional[str] = None) -> Any:
    """The facade of a CPU-like vendor whose collective_backend() is ``backend``; with
    ``registers``, its init_backend first registers that backend with torch (as a vendor's
    extension does)."""
    import torch.distributed as dist

    import chipbench.plugins.cpu as cpu
    from chipbench.host.manager import build_host
    from chipbench.host.selection import select_device

    def init_backend(local_rank):
        if registers and not hasattr(dist.Backend, registers.upper()):
            try:
                dist.Backend.register_backend(registers, lambda *args: None, devices=["cpu"])
            except TypeError:  # torch 2.0: no devices argument
                dist.Backend.register_backend(registers, lambda *args: None)
        return cpu.device_init_backend(local_rank)

    host = build_host(load_entry_points=False)
    host.add(vendor_module("answers", priority=-5, collective_backend=lambda: backend,
                           device_init_backend=init_backend), "answers", "test")
    return select_device(host, "answers")


def write_distribution(site: Path, name: str, entry_points: Dict[str, str],
                       modules: Dict[str, str]) -> None:
    """A minimal installed distribution on ``site``: METADATA, entry_points.txt (group
    chipbench.vendors, ``{entry point name: module}``) and modules (``{module name: source}``)."""
    info = site / "{}-1.0.dist-info".format(name.replace("-", "_"))
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: {}\nVersion: 1.0\n".format(name))
    (info / "entry_points.txt").write_text("[chipbench.vendors]\n" + "".join(
        "{} = {}\n".format(k, v) for k, v in entry_points.items()))
    for module, source in modules.items():
        (site / (module + ".py")).write_text(textwrap.dedent(source))


INTERRUPTER = """
    import os
    import signal
    from chipbench.hookspecs import hookimpl

    @hookimpl
    def on_epoch_end(run, epoch, metrics):
        if os.environ.get("CHIPBENCH_TEST_INTERRUPT_AT") == str(epoch):
            handler = signal.getsignal(signal.SIGINT)  # what Ctrl-C would run here
            if callable(handler):
                handler(signal.SIGINT, None)
            raise KeyboardInterrupt  # SIGINT ignored (a background job): Ctrl-C as Python's
"""
"""An observer plugin's source: Ctrl-C at the end of epoch ``$CHIPBENCH_TEST_INTERRUPT_AT``."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for torchrun's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def core_process(*args: str) -> "subprocess.Popen[str]":
    """``core run retinanet ARGS`` in a child process, one thread, stdout and stderr piped."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "chipbench", "run", "retinanet"] + list(args),
                            cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)


def finish(proc: "subprocess.Popen[str]", timeout: float = 600) -> Tuple[int, str, str]:
    """Wait for ``proc``: its exit code, stdout and stderr."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def worker_pid(log: Path) -> int:
    """The worker's pid, as a rank's log names it."""
    return int(log.read_text().split("worker pid ")[1].split(":")[0])


def copy_run(source: Path, target: Path) -> None:
    """Copy a run folder; the big checkpoint is hard-linked (rows replace it, never edit it)."""
    shutil.copytree(str(source), str(target),
                    copy_function=lambda s, d: os.link(s, d) if s.endswith(".pt")
                    else shutil.copy2(s, d))


def snapshot(folder: Path) -> Dict[str, str]:
    """Every file under ``folder`` (relative path) and the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_coco(root: Path, images: List[Dict[str, Any]],
               annotations: List[Dict[str, Any]]) -> Path:
    """A hand-written COCO folder: grey images, the same annotations for train and val."""
    from PIL import Image

    for split in ("train", "val"):
        (root / "{}2017".format(split)).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    cats = [{"id": 1, "name": "thing"}, {"id": 18, "name": "dog"}]
    for image in images:
        Image.new("RGB", (image["width"], image["height"]), (90, 90, 90)).save(
            root / "train2017" / image["file_name"])
        Image.new("RGB", (image["width"], image["height"]), (90, 90, 90)).save(
            root / "val2017" / image["file_name"])
    for split in ("train", "val"):
        with open(root / "annotations" / "instances_{}2017.json".format(split), "w") as handle:
            json.dump({"images": images, "annotations": annotations, "categories": cats}, handle)
    return root


def compare_result(label: str = "ACX1 1 node x 8 cards (1x8)", precision: str = "amp",
                   p_core: float = 100.0, mAP: float = 0.36, status: str = "finished",
                   train_images: int = 118287, val_images: int = 5000, batch_size: int = 16,
                   chipbench: str = "0.3.0", converged: bool = True,
                   epochs: int = 3) -> Dict[str, Any]:
    """A hand-made RetinaNet ``result.json`` for ``core compare``."""
    return {
        "status": status, "error": None if status == "finished" else "RunFailed: rank 3 died",
        "case": "retinanet", "vendor": "acme", "row_label": label, "precision": precision,
        "target": 0.35, "fix_hp": "bs={}".format(batch_size),
        "hardware": {"label": label.split()[0]}, "topology": {"nnodes": 1, "nproc_per_node": 8},
        "config": {"data": {"dir": "/data/coco"}, "train": {"batch_size": batch_size},
                   "model": {"backbone_weights": "imagenet", "min_size": 800, "max_size": 1333},
                   "eval": {"backend": "pycocotools"}},
        "general": {"rows": [["数据集 dataset", "COCO2017", ""]]},
        "data": {"train_images": train_images, "val_images": val_images},
        "versions": {"chipbench": chipbench},
        "metrics": {"p_whole": p_core * 0.8, "p_train": p_core * 0.9, "p_core": p_core,
                    "e2e_time": 3600.0 * 100 / p_core, "mAP": mAP, "converged": converged,
                    "epochs": epochs, "mem_used_peak_bytes": 30 * 2**30,
                    "mem_total_bytes": 64 * 2**30},
        "epochs": [{"epoch": e, "loss": 1.0 / (e + 1), "mAP": mAP * (e + 1) / epochs}
                   for e in range(epochs)],
    }


def result_folder(tmp_path: Path, name: str, data: Dict[str, Any]) -> Path:
    """A run folder ``tmp_path/name`` holding only ``result.json`` = ``data``."""
    path = tmp_path / name
    path.mkdir()
    (path / "result.json").write_text(json.dumps(data))
    return path


@pytest.fixture
def cuda_machine(tmp_path, monkeypatch) -> None:
    """A simulated 2 x A100 machine: NVIDIA torch build, nvidia-smi on PATH, torch.cuda patched."""
    import torch

    import chipbench.plugins.cuda

    csv = tmp_path / "smi.csv"
    csv.write_text("NVIDIA A100-SXM4-80GB, 81920, 535.104.05\n")
    bin_dir = tmp_path / "bin"
    write_tool(bin_dir, "nvidia-smi", script="#!/bin/sh\ncase \"$*\" in *utilization*) "
               "echo '87, 301.5, 64, 40000';; *) cat '{}';; esac\n".format(csv))
    monkeypatch.setenv("PATH", "{}:{}".format(bin_dir, os.environ["PATH"]))
    monkeypatch.setattr(chipbench.plugins.cuda, "installed_torch_version", lambda: "2.1.0+cu121")
    monkeypatch.setattr(torch.version, "cuda", "12.1")
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 2**30)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)


SET_CATEGORIES = [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]
"""The categories of :func:`write_set`'s annotation files."""


def write_set(root: Path, images: List[Dict[str, Any]], annotations: List[Dict[str, Any]],
              seed: int = 0) -> Path:
    """A COCO folder whose train and val splits are ``images`` (noise PNGs) with
    ``annotations``."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    for split in ("train", "val"):
        folder = root / "{}2017".format(split)
        folder.mkdir(parents=True, exist_ok=True)
        for image in images:
            pixels = rng.randint(0, 256, size=(image["height"], image["width"], 3))
            Image.fromarray(pixels.astype(np.uint8)).save(folder / image["file_name"])
    (root / "annotations").mkdir(exist_ok=True)
    for split in ("train", "val"):
        write_annotations(root, split, images, annotations)
    return root


def write_annotations(root: Path, split: str, images: List[Dict[str, Any]],
                      annotations: List[Dict[str, Any]]) -> Path:
    """``annotations/instances_<split>2017.json`` of ``images`` and ``annotations`` (categories
    :data:`SET_CATEGORIES`)."""
    path = root / "annotations" / "instances_{}2017.json".format(split)
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": SET_CATEGORIES}))
    return path


def unescaped_pipes(line):
    """How many ``|`` split ``line`` into cells: one after an odd number of backslashes is text."""
    count, backslashes = 0, 0
    for ch in line:
        if ch == "|" and backslashes % 2 == 0:
            count += 1
        backslashes = backslashes + 1 if ch == "\\" else 0
    return count


def report_of(data: Dict[str, Any]) -> str:
    """report.md of the result.json object ``data``, read into its record as ``core run`` reads it."""
    from chipbench.outputs.report import render
    from chipbench.run.resultrecord import RunResult

    return render(RunResult.from_json(data, "result.json"))


def toy_detector() -> Any:
    """A one-parameter model that takes (images, targets) and returns a loss dict, as
    torchvision's detectors do (torch imported only by the tests that train one)."""
    import torch

    class ToyDetector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, images: Any, targets: Any) -> Dict[str, Any]:
            return {"loss": (self.scale * torch.stack(images)).square().mean()}

    return ToyDetector()
