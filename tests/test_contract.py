"""One definition of the vendor contract: the hook specs, the rules, the facade that runs use, the
conformance kit and the plugin guide's table all agree, rule by rule."""

import inspect
import os
from pathlib import Path

import pytest
import torch

from chipbench import hookspecs
from chipbench.conformance import run_checks
from chipbench.conformance.checks import CheckFailed, Subject
from chipbench.errors import PluginError
from chipbench.host import contract
from chipbench.host.manager import build_host
from chipbench.host.selection import select_device
from chipbench.records import HardwareId, MemoryInfo
from chipbench.run.worker import check_devices_restricted
from tests.conftest import vendor_module, write_distribution

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "vendor-plugins.md"
CPU = torch.device("cpu")

# hook -> (facade method and its arguments, answers that break the hook's rule)
WRONG = {
    "device_init_backend": (("init_backend", 0), [torch.device("meta"), 0, "cpu"]),
    "device_count": (("count",), [0, -1, True, 2.0, 10**6]),
    "device_name": (("name", 0), ["", "two\nlines", "\x1b[2J", 7, "x" * 1000]),
    "hardware_id": (("hardware_id",), [HardwareId("ok\nforged", "X1"), HardwareId("A", "X 1"),
                                       HardwareId("", "X1"), ("A", "X1")]),
    "device_synchronize": (("synchronize", CPU), [0, "done"]),
    "device_memory_query": (("memory_query", CPU), [
        MemoryInfo(2, 1, ""), MemoryInfo(-1, 2**30, ""), MemoryInfo(1, 1000, ""),
        MemoryInfo(1.0, 2**30, ""), MemoryInfo(0, 2**30, "line\nbreak"), (0, 2**30)]),
    "device_memory_peak": (("memory_peak", CPU), [-1, 1.5, True, None]),
    "device_memory_reset_peak": (("memory_reset_peak", CPU), [0]),
    "collective_backend": (("collective_backend",), ["", "gloo ", "a,b", 5]),
    "visible_devices_env": (("visible_devices_env",), ["A B", "X=1", "1X", None]),
    "supported_precisions": (("supported_precisions",), [[], ["fp16"], ["fp32", "fp32"],
                                                         ["fp32", "int4"], "fp32"]),
    "environment_report": (("environment_report",), [{}, {"device_model": "a\nb"},
                                                     {"device_model": "x", "v": float("nan")},
                                                     {"device_model": "x", "device_count": "1"}]),
    "device_sample": (("sample", CPU), [{"util_percent": 101}, {"fan": 1.0}, [],
                                        {"power_w": True}]),
    "device_peak_flops": (("peak_flops", CPU, "fp32"), [1.0, float("inf"), "1e12", True]),
    "device_loader_workers": (("loader_workers", None, 1), [-1, 10**6, 1.0, True]),
    "device_grad_scaler": (("grad_scaler", CPU, "amp"), ["scaler", 0]),
    "device_configure": (("configure", CPU, False, False), [0, "ok"]),
}


def test_every_hook_spec_has_exactly_one_rule():
    specs = {name for name, fn in vars(hookspecs).items()
             if callable(fn) and hasattr(fn, "chipbench_spec")}
    assert specs == set(contract.RULE) and len(contract.RULES) == len(contract.RULE)
    every_checked = {r.name for r in contract.RULES if r.check is not None} - {"vendor_detect",
                                                                             "case_config_dirs"}
    assert every_checked == set(WRONG)  # the table below covers every rule a vendor answers


def _params(hook):
    return list(inspect.signature(getattr(hookspecs, hook)).parameters)


def _answering(hook, answer):
    """A facade and a kit subject for a vendor whose ``hook`` answers ``answer`` (an
    implementation with the spec's argument names, as pluggy requires)."""
    implementation = eval("lambda {}: answer".format(", ".join(_params(hook))),  # noqa: S307
                          {"answer": answer})
    host = build_host(load_entry_points=False)
    host.add(vendor_module("answers", priority=-5, **{hook: implementation}), "answers", "test")
    facade = select_device(host, "answers")
    return facade, Subject(facade, live=False)


@pytest.mark.parametrize("hook, answer", [(h, a) for h, (_, answers) in WRONG.items()
                                          for a in answers])
def test_a_run_and_the_kit_refuse_the_same_answer_with_the_same_words(hook, answer):
    facade, subject = _answering(hook, answer)
    problem = contract.RULE[hook].problem(answer, facade.info)
    assert problem  # the rule itself refuses it
    (method, *args), _ = WRONG[hook]
    with pytest.raises(PluginError) as run_error:
        getattr(facade, method)(*args)
    assert run_error.value.one_line().startswith("vendor 'answers' returned ")
    assert "expected {}".format(problem) in run_error.value.one_line()
    assert "\n" not in run_error.value.one_line() and "\x1b" not in run_error.value.one_line()
    kwargs = {name: value for name, value in {
        "local_rank": 0, "index": 0, "device": CPU, "precision": "amp", "configured": None,
        "local_world_size": 1, "deterministic": False, "autotune": False}.items()
        if name in _params(hook)}
    with pytest.raises(CheckFailed) as kit_error:
        subject.obeys(hook, **kwargs)
    assert kit_error.value.expected == problem and kit_error.value.hook == hook


def test_good_answers_pass_both():
    facade = select_device(build_host(load_entry_points=False), "cpu")
    subject = Subject(facade, live=False)
    for hook in contract.DEVICE_HOOKS:
        kwargs = {"device_init_backend": {"local_rank": 0}, "device_name": {"index": 0}}.get(
            hook, {"device": CPU} if "device" in _params(hook) else {})
        subject.obeys(hook, **kwargs)


def test_the_guide_s_hooks_table_is_the_contract():
    text = GUIDE.read_text(encoding="utf-8")
    assert contract.markdown_table() in text, "paste chipbench.host.contract.markdown_table() there"


def test_a_new_line_in_a_label_fails_doctor_as_it_fails_runs(capsys):
    facade, _ = _answering("hardware_id", HardwareId("A\nPASS  forged", "X1"))
    results = {r.check: r for r in run_checks(facade, live=False)}
    assert results["returns:hardware_id"].status == "fail"
    with pytest.raises(PluginError):
        facade.hardware_id()


def test_doctor_says_what_it_cannot_tell_with_one_device():
    """A visible-devices variable cannot be shown to restrict anything where one device is
    visible: the kit says so instead of passing it."""
    host = build_host(load_entry_points=False)
    host.add(vendor_module("onedev", priority=-5,
                           visible_devices_env=lambda: "ONEDEV_VISIBLE_DEVICES"), "onedev", "t")
    result = run_checks(select_device(host, "onedev"), only=["visible_devices_env"])[0]
    assert result.status == "skip" and "cannot tell with one visible device" in result.got


def test_a_variable_that_restricts_nothing_is_refused_in_the_run():
    class Facade:
        vendor = "leaky"
        info = type("Info", (), {"device_type": "cuda"})()

        def __init__(self, count):
            self._count = count

        def visible_devices_env(self):
            return "LEAKY_VISIBLE_DEVICES"

        def count(self):
            return self._count

    with pytest.raises(PluginError, match="with LEAKY_VISIBLE_DEVICES=1 this process sees 4 "
                                          "device\\(s\\), not 1"):
        check_devices_restricted(Facade(4), "1")
    check_devices_restricted(Facade(2), "1,3")  # restricted as listed
    check_devices_restricted(Facade(4), None)  # no --devices: nothing to check


CPU_TYPE_ONE_RANK = """
    import torch
    from chipbench.hookspecs import hookimpl
    from chipbench.plugins import cpu as _cpu
    from chipbench.records import VendorInfo

    for _name in ("device_count", "device_name", "hardware_id", "device_synchronize",
                  "device_memory_query", "device_memory_peak", "device_memory_reset_peak",
                  "collective_backend", "visible_devices_env", "supported_precisions",
                  "environment_report", "device_sample"):
        globals()[_name] = getattr(_cpu, _name)

    @hookimpl
    def vendor_detect():
        return VendorInfo("onerank", "cpu", -30, True, "one rank only")

    @hookimpl
    def device_init_backend(local_rank):
        if local_rank >= 1:
            raise RuntimeError("local rank {} has no device here".format(local_rank))
        return torch.device("cpu")
"""


def test_the_all_reduce_check_respects_a_vendor_that_refuses_a_second_rank(tmp_path,
                                                                           monkeypatch):
    site = tmp_path / "site"
    write_distribution(site, "onerank", {"onerank": "onerank"}, {"onerank": CPU_TYPE_ONE_RANK})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site)] + [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    result = run_checks(select_device(build_host(), "onerank"), only=["collective_all_reduce"])[0]
    assert result.status == "pass", result.line()
    assert "over 1 process(es)" in result.got


def test_an_environment_report_refusal_names_the_key():
    problem = contract.RULE["environment_report"].problem({"device_model": "x", "temp": float("nan")})
    assert "its key 'temp' is not" in problem
