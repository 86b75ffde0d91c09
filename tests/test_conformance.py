"""The conformance kit: its two front ends (`core doctor`, the pytest entry) pass on cpu, fakechip
and the simulated MetaX and CUDA machines, and fail with one precise line per check on the broken
twin of fakechip (examples/brokenchip, found through a real entry point)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chipbench.cli import main
from chipbench.conformance import CHECK_NAMES, run_checks
from chipbench.host import contract
from chipbench.host.manager import build_host
from chipbench.host.selection import select_device

REPO = Path(__file__).resolve().parents[1]
NOT_RUN = "not run: static mode (needs the device)"

BROKEN = {  # check -> a piece of its one-line failure: one line per wrong answer
    "returns:device_count": "expected an int in 1..4096",
    "returns:device_name": "got ''",
    "returns:hardware_id": "got ('BROKEN', 'B1')",
    "returns:device_memory_query": "0 <= used <= total",
    "returns:device_memory_peak": "got 1.5",
    "returns:supported_precisions": "fp32 among them, got ['fp16']",
    "returns:environment_report": "expected driver_version of type str, got",
    "returns:device_sample": "expected util_percent a number within 0..100, got {'util_percent': '93%'}",
    "optional_hooks": "returned -3 from hook device_loader_workers, expected a count in 0..1024",
}


@pytest.fixture
def brokenchip(tmp_path, monkeypatch):
    """examples/brokenchip on sys.path (and PYTHONPATH, for child processes) with its entry point,
    as if installed."""
    site = tmp_path / "site"
    info = site / "chipbench_brokenchip-0.1.0.dist-info"
    info.mkdir(parents=True)
    shutil.copy(REPO / "examples" / "brokenchip" / "chipbench_brokenchip.py", site)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chipbench-brokenchip\n"
                                   "Version: 0.1.0\n")
    (info / "entry_points.txt").write_text("[chipbench.vendors]\n"
                                           "brokenchip = chipbench_brokenchip\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return site


def run_pytest_entry(vendor, *extra, cwd):
    """`pytest --pyargs chipbench.conformance --vendor X` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "chipbench.conformance", "--vendor", vendor,
         "-p", "no:cacheprovider", "-q"] + list(extra),
        cwd=str(cwd), capture_output=True, text=True, timeout=300)


def doctor_json(capsys, *args):
    """`core doctor --json ARGS`: the parsed report, after asserting that every check passed (the
    failing checks are in the assertion message)."""
    code = main(["doctor", "--json"] + list(args))
    report = json.loads(capsys.readouterr().out)
    failed = ["{}: expected {}, got {}".format(c["check"], c["expected"], c["got"])
              for c in report["checks"] if c["status"] == "fail"]
    assert code == 0 and not failed, failed
    return report


def test_doctor_json_passes_on_cpu(capsys):
    report = doctor_json(capsys, "--vendor", "cpu")
    assert report["vendor"] == "cpu"
    assert [c["check"] for c in report["checks"]] == list(CHECK_NAMES)
    statuses = {c["check"]: c["status"] for c in report["checks"]}
    assert statuses["collective_all_reduce"] == "pass" and statuses["device_memory_peak"] == "pass"
    assert statuses["visible_devices_env"] == "skip"  # the CPU has no such variable
    for check in report["checks"]:
        assert set(check) == {"vendor", "check", "status", "expected", "got"}


def test_pytest_entry_passes_on_fakechip(tmp_path):
    done = run_pytest_entry("fakechip", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:]
    # fakechip implements no optional hook: chipbench's defaults serve, that check skips; with
    # one visible device, whether its variable restricts the devices cannot be told
    assert "{} passed, 2 skipped".format(len(CHECK_NAMES) - 2) in done.stdout


def test_broken_twin_fails_one_precise_line_per_check(brokenchip, capsys):
    assert main(["doctor", "--vendor", "brokenchip", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    failed = {c["check"]: "expected {}, got {}".format(c["expected"], c["got"])
              for c in report["checks"] if c["status"] == "fail"}
    assert set(failed) == set(BROKEN)
    for check, piece in BROKEN.items():
        assert piece in failed[check] and "\n" not in failed[check], (check, failed[check])
    # the checks that need a device count skip, naming the rule check that failed
    skipped = {c["check"]: c["got"] for c in report["checks"] if c["status"] == "skip"}
    assert skipped["device_init_backend"] == skipped["device_name"] == (
        "cannot check: device_count's answer breaks its rule (see returns:device_count)")
    assert main(["doctor", "--vendor", "brokenchip", "--static"]) == 1
    table = capsys.readouterr().out
    # the optional-hook check calls the loader hook statically too; the checks that need a
    # device count skip, naming the rule check that failed
    assert "FAIL  returns:device_count" in table and "9 failed" in table
    assert "cannot check: device_count's answer breaks its rule" in table
    assert "FAIL  optional_hooks" in table


def test_pytest_entry_fails_on_broken_twin(brokenchip, tmp_path):
    done = run_pytest_entry("brokenchip", "--static", cwd=tmp_path)
    assert done.returncode == 1
    for check, piece in BROKEN.items():
        lines = [line for line in done.stdout.splitlines()
                 if line.startswith("FAIL brokenchip {}: ".format(check))]
        assert len(lines) == 1 and piece in lines[0], check


def test_simulated_metax_passes_both_front_ends(metax_machine, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 5 * 2**30)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    report = doctor_json(capsys, "--vendor", "metax", "--static")
    static_rules = [c["status"] for c in report["checks"]
                    if c["check"].startswith("returns:") and c["got"] != NOT_RUN]
    assert len(static_rules) == 5 and set(static_rules) == {"pass"}  # names, report, constants
    # every answer keeps its rule: the simulated device answers the hooks that need it
    facade = select_device(build_host(), "metax")
    rules = run_checks(facade, only=[name for name in CHECK_NAMES if name.startswith("returns:")])
    assert len(rules) == len(contract.DEVICE_HOOKS) and {r.status for r in rules} == {"pass"}, \
        [r.line() for r in rules]
    assert pytest.main(["--pyargs", "chipbench.conformance", "--vendor", "metax", "--static",
                        "-p", "no:cacheprovider", "-q"]) == 0


def test_simulated_cuda_passes_both_front_ends(cuda_machine, capsys):
    report = doctor_json(capsys, "--vendor", "cuda", "--static")
    got = {c["check"]: c["got"] for c in report["checks"]}
    assert got["device_init_backend"] == NOT_RUN
    # the simulated device answers the checks that need it
    (backend,) = run_checks(select_device(build_host(), "cuda"), only=["device_init_backend"])
    assert backend.status == "pass" and "cuda:0, cuda:1" in backend.got
    assert pytest.main(["--pyargs", "chipbench.conformance", "--vendor", "cuda", "--static",
                        "-p", "no:cacheprovider", "-q"]) == 0


def test_a_check_that_raises_is_one_failed_line():
    facade = select_device(build_host(load_entry_points=False), "cpu")
    facade.host.pm.hook.device_name.get_hookimpls()[-1].function = _raise
    (result,) = run_checks(facade, live=False, only=["device_name"])
    assert result.status == "fail" and "RuntimeError (in _raise): no name" in result.got


def _raise(index):
    raise RuntimeError("no name")


def test_shipped_configs_are_checked(tmp_path):

    from tests.conftest import vendor_module

    (tmp_path / "Z1x1x1.yaml").write_text("train:\n  no_such_key: 1\n")

    def case_config_dirs(case_name):
        return [str(tmp_path)] if case_name == "retinanet" else []

    host = build_host(load_entry_points=False)
    host.add(vendor_module("shipper", priority=-30, case_config_dirs=case_config_dirs),
             "shipper", "test")
    facade = select_device(host, "shipper")
    (result,) = run_checks(facade, live=False, only=["shipped_configs"])
    assert result.status == "fail" and result.expected == "Z1x1x1.yaml to fit case retinanet"
    assert "no_such_key" in result.got
    (tmp_path / "Z1x1x1.yaml").write_text("train:\n  lr: 0.5\n")
    (result,) = run_checks(facade, live=False, only=["shipped_configs"])
    assert result.status == "pass" and result.got == "retinanet/Z1x1x1"
    (tmp_path / "z1-big.yaml").write_text("train:\n  lr: 0.5\n")
    (result,) = run_checks(facade, live=False, only=["shipped_configs"])
    assert result.status == "fail" and result.got.endswith("z1-big.yaml")


def test_a_vendor_suite_with_its_own_vendor_option_keeps_it(tmp_path):
    """The kit is a pytest11 plugin, loaded in every pytest session where chipbench is installed:
    a vendor's own conftest.py that adds --vendor/--static/--alloc-mib must keep working, and
    the kit stays reachable under its long names."""
    (tmp_path / "conftest.py").write_text(
        "def pytest_addoption(parser):\n"
        "    parser.addoption('--vendor', default='mine')\n"
        "    parser.addoption('--static', action='store_true')\n"
        "    parser.addoption('--alloc-mib', default='x')\n")
    (tmp_path / "test_own.py").write_text(
        "def test_own_options(request):\n"
        "    assert request.config.getoption('--vendor') == 'theirs'\n"
        "    assert request.config.getoption('--static') is True\n"
        "    assert request.config.getoption('chipbench_vendor') is None\n")
    own = subprocess.run([sys.executable, "-m", "pytest", "--vendor", "theirs", "--static", "-q",
                          "-p", "no:cacheprovider", "test_own.py"],
                         cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert own.returncode == 0, own.stdout[-2000:] + own.stderr[-2000:]
    kit = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "chipbench.conformance", "-q",
         "--chipbench-vendor", "fakechip", "--chipbench-static", "-p", "no:cacheprovider"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert kit.returncode == 0, kit.stdout[-2000:] + kit.stderr[-2000:]
    assert "passed" in kit.stdout and "checked vendor 'fakechip'" in kit.stdout


def test_kit_alloc_size_is_checked_like_doctor_does(tmp_path):
    done = run_pytest_entry("cpu", "--alloc-mib", "0", cwd=tmp_path)
    assert done.returncode == 4  # pytest's usage error, naming the option and the range
    assert "--alloc-mib" in done.stderr and "0 is not in 1..1048576" in done.stderr


def test_another_plugin_s_broken_configs_do_not_fail_this_vendor(tmp_path, capsys):
    """A plugin (here an observer) whose case_config_dirs answers garbage: the cpu vendor's
    conformance does not fail for it, and a cpu run warns and goes on."""
    from chipbench import hookimpl
    from chipbench.host.manager import PluginHost

    class Shipper:
        @hookimpl
        def case_config_dirs(self, case_name):
            return ["/nonexistent/folder"]

    real = PluginHost.load_all

    def load_all(self, modules, entry_points=True):
        real(self, modules, entry_points=False)
        self.add(Shipper(), "shipper", "test")

    host = build_host(load_entry_points=False)
    host.add(Shipper(), "shipper", "test")
    (result,) = run_checks(select_device(host, "cpu"), live=False, only=["shipped_configs"])
    assert result.status == "skip", result
    from unittest import mock

    with mock.patch.object(PluginHost, "load_all", load_all):
        code = main(["run", "retinanet", "--vendor", "cpu", "--output", str(tmp_path / "run"),
                     "--set", "train.max_iters=1", "--set", "data.synthetic.train_images=8",
                     "--set", "data.synthetic.val_images=2", "--set",
                     "data.synthetic.image_size=64", "--set", "run.checkpoint=false"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert ("warning: plugin 'shipper' returned ['/nonexistent/folder'] from case_config_dirs, "
            "expected a list of existing absolute folders") in err

