"""Plugin loading: built-ins, broken plugins of every kind, strict/block/trace switches."""

import json
import signal
import types

import pytest

from chipbench.errors import PluginError, UserError
from chipbench.hookspecs import hookimpl
from chipbench.host.manager import build_host
from chipbench.host.selection import select_device
from chipbench.records import HardwareId, MemoryInfo, VendorInfo
from tests.conftest import vendor_module

BUILTINS = ["metax", "cuda", "rocm", "accelerator", "cpu"]
"""The built-in vendors in priority order (ties by name), as a machine without GPUs lists them."""


def test_builtins_are_listed_with_origin():
    host = build_host(load_entry_points=False)
    names = [v.name for v in host.vendors()]
    assert names == BUILTINS  # priority order
    assert all(host.record(n).origin == "built-in" for n in names)
    assert host.record("cpu").info.available


def test_import_error_is_recorded_and_others_keep_working():
    host = build_host(load_entry_points=False)
    record = host.add_module("chipbench.plugins.does_not_exist")
    assert record.broken and "import failed" in record.error and "does_not_exist" in record.error
    assert [v.name for v in host.vendors()] == BUILTINS


def test_hook_with_arguments_the_spec_lacks_is_rejected():
    def device_count(extra_argument):
        return 1

    host = build_host(load_entry_points=False)
    record = host.add(vendor_module("bad", device_count=device_count), "bad", "test")
    assert record.broken and "cannot register" in record.error
    # pluggy's whole reason, not only its first line
    assert "for hook 'device_count'" in record.error
    assert "extra_argument" in record.error and "can not be found in the hookspec" in record.error
    assert "\n" not in record.error
    assert host.record("cpu").info.available


def test_unknown_hook_and_missing_hooks_are_rejected():
    def device_frobnicate():
        return 1

    host = build_host(load_entry_points=False)
    assert "unknown hooks: device_frobnicate" in host.add(
        vendor_module("odd", device_frobnicate=device_frobnicate), "odd", "test").error
    partial = vendor_module("partial")
    del partial.device_sample
    assert "lacks hooks: device_sample" in host.add(partial, "partial", "test").error


def test_vendor_detect_raising_or_wrong_type_is_broken():
    def boom():
        raise RuntimeError("driver exploded")

    host = build_host(load_entry_points=False)
    record = host.add(vendor_module("boom", vendor_detect=boom), "boom", "test")
    assert record.broken and "driver exploded" in record.error
    record = host.add(vendor_module("liar", vendor_detect=lambda: "yes"), "liar", "test")
    assert record.broken and "vendor_detect returned 'yes', expected a VendorInfo" in record.error
    assert host.vendors()[-1].name == "cpu"


@pytest.mark.parametrize("field, value, fragment", [
    ("priority", "high", "priority is an int, not 'high'"),
    ("priority", None, "priority is an int, not None"),
    ("priority", True, "priority is an int, not True"),
    ("name", None, "name is a str, not None"),
    ("name", "  ", "with a non-empty one-line name"),
    ("name", "two\nlines", "with a non-empty one-line name"),
    ("device_type", None, "device_type is a str, not None"),
    ("available", "no", "available is a bool, not 'no'"),
    ("reason", None, "reason is a str, not None"),
    ("reason", "\x1b[2J", "with a one-line reason of printable characters"),
])
def test_vendor_detect_fields_of_the_wrong_type_make_the_plugin_broken(field, value, fragment):
    """Only the answer's class was checked: a str priority then broke every command's sort."""
    info = dict(name="odd", device_type="cpu", priority=5, available=True, reason="here")
    info[field] = value
    host = build_host(load_entry_points=False)
    record = host.add(vendor_module("odd", vendor_detect=lambda: VendorInfo(**info)), "odd",
                      "test")
    assert record.broken and fragment in record.error
    assert [v.name for v in host.vendors()] == BUILTINS  # listing works


def test_a_broken_vendor_answer_is_found_by_its_vendor_name():
    """A plugin registered as 'acme_plugin' whose vendor_detect names vendor 'acme' with a bool
    priority: ``--vendor acme`` says the plugin is broken and why, not "unknown vendor"."""
    from chipbench.errors import UserError
    from chipbench.host.selection import choose_vendor

    info = VendorInfo(name="acme", device_type="cpu", priority=True, available=True)
    host = build_host(load_entry_points=False)
    host.add(vendor_module("acme", vendor_detect=lambda: info), "acme_plugin", "test")
    with pytest.raises(UserError, match="vendor plugin 'acme_plugin' .* is broken: .*priority is "
                                        "an int, not True"):
        choose_vendor(host, "acme")


def test_sys_exit_in_a_plugin_is_a_broken_plugin_or_a_plugin_error():
    def leave():
        raise SystemExit("driver not loaded")

    host = build_host(load_entry_points=False)
    record = host.add(vendor_module("quitter", vendor_detect=leave), "quitter", "test")
    assert record.broken and "SystemExit: driver not loaded" in record.error
    host.add(vendor_module("quits_later", priority=-5, device_count=lambda: exit(0)),
             "quits_later", "test")
    with pytest.raises(PluginError, match="quits_later' failed in hook device_count: SystemExit"):
        select_device(host, "quits_later").count()


def test_keyboardinterrupt_from_a_plugin_is_its_failure_while_chipbench_takes_ctrl_c():
    """While chipbench takes SIGINT (core's commands, from a terminal), Ctrl-C raises Interrupted:
    a bare KeyboardInterrupt out of a hook is the plugin's failure. Ctrl-C itself passes."""
    from chipbench.errors import Interrupted, interrupt_on_stop_signals, restore_handlers

    def interrupt():
        raise KeyboardInterrupt

    def ctrl_c():
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # as the signal would

    def device(name, hook):
        host = build_host(load_entry_points=False)  # one per vendor: selecting one keeps its hooks
        host.add(vendor_module(name, priority=-5, device_count=hook), name, "test")
        return select_device(host, name)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    taken = interrupt_on_stop_signals()
    try:
        with pytest.raises(PluginError, match="'kb' failed in hook device_count: KeyboardInterrupt"):
            device("kb", interrupt).count()
        with pytest.raises(Interrupted):
            device("cc", ctrl_c).count()
    finally:
        restore_handlers(taken)
        signal.signal(signal.SIGINT, previous)
    with pytest.raises(KeyboardInterrupt):  # chipbench not taking SIGINT: it may be Ctrl-C
        device("kb", interrupt).count()


def test_device_hooks_without_vendor_detect_are_refused_not_answering_for_another_vendor():
    """A forgotten @hookimpl on vendor_detect made a plugin an 'observer' whose hardware_id and
    memory hooks then answered for the cpu vendor in every run."""
    from chipbench.records import HardwareId

    module = types.ModuleType("hijack")
    module.hardware_id = hookimpl(lambda: HardwareId(label="HIJACK", config_tag="B1"))
    module.on_run_end = hookimpl(lambda run, result: None)
    host = build_host(load_entry_points=False)
    record = host.add(module, "hijack", "test")
    assert record.broken and "device hooks (hardware_id) without vendor_detect" in record.error
    assert select_device(host, "cpu").hardware_id().label != "HIJACK"
    observer = types.ModuleType("watcher")
    observer.on_run_end = hookimpl(lambda run, result: None)
    assert not host.add(observer, "watcher", "test").broken


def test_answers_of_the_right_type_but_impossible_values_are_plugin_errors():
    import torch

    from chipbench.records import MemoryInfo

    host = build_host(load_entry_points=False)
    host.add(vendor_module(
        "odd", priority=-5, device_memory_peak=lambda device: -4096,
        device_memory_query=lambda device: MemoryInfo(1.5e9, float("nan")),
        device_peak_flops=lambda device, precision: float("nan"),
        device_init_backend=lambda local_rank: torch.device("meta"),
        device_grad_scaler=lambda device, precision: "not a scaler"), "odd", "test")
    facade = select_device(host, "odd")
    cpu = torch.device("cpu")
    for call, fragment in ((lambda: facade.memory_peak(cpu), "byte count >= 0"),
                           (lambda: facade.memory_query(cpu), "0 <= used <= total"),
                           (lambda: facade.peak_flops(cpu, "fp32"), "FLOP/s from 1e+06 to 1e+18"),
                           (lambda: facade.init_backend(0), "a device of type 'cpu'"),
                           (lambda: facade.grad_scaler(cpu, "amp"), "a loss scaler")):
        with pytest.raises(PluginError) as err:
            call()
        assert "vendor 'odd' returned" in err.value.one_line() and fragment in str(err.value)


@pytest.mark.parametrize("hook, answer, call, fragment", [
    ("device_memory_query", lambda device: MemoryInfo(64 * 2**30, 16 * 2**30), "memory_query",
     "0 <= used <= total"),
    ("device_sample", lambda device: {"power_w": -50.0}, "sample", "power_w a number within 0..1e+06"),
    ("device_sample", lambda device: {"util_percent": float("nan")}, "sample",
     "util_percent a number within 0..100"),
    ("device_sample", lambda device: {"temperature_c": -500}, "sample",
     "temperature_c a number within -273.15..1000"),
    ("hardware_id", lambda: HardwareId(5, "X"), "hardware_id", "one-line label"),
    ("environment_report", lambda: {"device_model": "x", "device_memory_gib": float("nan")},
     "environment_report", "strict JSON values"),
    ("device_loader_workers", lambda configured, local_world_size: 10**12, "loader_workers",
     "a count in 0..1024"),
])
def test_impossible_answers_are_refused_in_runs_too(hook, answer, call, fragment):
    """The facade refuses what a run would otherwise record as fact (64 GiB used of 16, a
    negative power, NaN in a strict-JSON report)."""
    import torch

    host = build_host(load_entry_points=False)
    host.add(vendor_module("liar", priority=-5, **{hook: answer}), "liar", "test")
    facade = select_device(host, "liar")
    args = {"memory_query": (torch.device("cpu"),), "sample": (torch.device("cpu"),),
            "loader_workers": (None, 1)}.get(call, ())
    with pytest.raises(PluginError) as err:
        getattr(facade, call)(*args)
    assert "vendor 'liar' returned" in err.value.one_line() and fragment in str(err.value)


def test_environment_report_cannot_overwrite_chipbench_s_own_facts(monkeypatch, capsys):
    from chipbench.cli import main
    from chipbench.host.manager import PluginHost

    real = PluginHost.load_all

    def load_all(self, modules, entry_points=True):
        real(self, modules, entry_points=False)
        self.add(vendor_module("braggart", priority=-20, environment_report=lambda: {
            "device_model": "x", "vendor": "nvidia", "python": "9.9",
            "hardware_label": "A100"}), "braggart", "test")

    monkeypatch.setattr(PluginHost, "load_all", load_all)
    assert main(["info", "--vendor", "braggart", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["vendor"] == "braggart" and report["python"] != "9.9"
    assert report["hardware_label"] != "A100" and report["device_model"] == "x"


def test_duplicate_vendor_name_is_refused():
    host = build_host(load_entry_points=False)
    record = host.add(vendor_module("cpu"), "cpu-again", "test")
    assert record.broken and "'cpu' is already taken by built-in" in record.error
    assert "rename it in this plugin's vendor_detect" in record.error


def test_a_priority_tie_is_announced_with_its_rule():
    host = build_host(load_entry_points=False)
    host.add(vendor_module("zeta", priority=60), "zeta", "test")
    host.add(vendor_module("alpha", priority=60), "alpha", "test")
    lines = []
    assert select_device(host, None, announce=lines.append).vendor == "alpha"
    assert "over 'zeta' of the same priority (ties go by name; choose with --vendor)" in lines[0]


def test_strict_mode_makes_failures_fatal(monkeypatch):
    monkeypatch.setenv("CHIPBENCH_STRICT_PLUGINS", "1")
    host = build_host(load_entry_points=False)
    with pytest.raises(PluginError) as err:
        host.add_module("chipbench.plugins.does_not_exist")
    assert "does_not_exist" in err.value.one_line()


def test_block_list_skips_plugins(monkeypatch):
    monkeypatch.setenv("CHIPBENCH_BLOCK_PLUGINS", "cuda, metax")
    host = build_host(load_entry_points=False)
    assert [v.name for v in host.vendors()] == [n for n in BUILTINS if n not in ("cuda", "metax")]
    with pytest.raises(UserError, match="vendor 'cuda' is blocked by CHIPBENCH_BLOCK_PLUGINS"):
        select_device(host, "cuda")


def test_block_list_takes_vendor_names_through_pluggy(monkeypatch):
    monkeypatch.setenv("CHIPBENCH_BLOCK_PLUGINS", "shown-name")
    host = build_host(load_entry_points=False)
    plugin = vendor_module("shown-name")
    assert host.add(plugin, "module-name", "test") is None
    assert host.record("shown-name") is None and not host.pm.is_registered(plugin)
    assert host.pm.is_blocked("module-name") and host.unmatched_blocks() == []


def test_trace_writes_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("CHIPBENCH_TRACE_HOOKS", "1")
    host = build_host(load_entry_points=False)
    err = capsys.readouterr().err
    assert err.count("vendor_detect") >= 3  # one traced call per built-in vendor
    select_device(host, "cpu").count()
    host.notify("on_epoch_end", run={}, epoch=0, metrics={})
    err = capsys.readouterr().err
    assert "device_count" in err and "on_epoch_end" in err


def test_device_hook_raising_or_returning_wrong_type_is_plugin_error():
    def device_count():
        raise OSError("bus error")

    host = build_host(load_entry_points=False)
    host.add(vendor_module("flaky", priority=500, device_count=device_count,
                           device_name=lambda index: 7), "flaky", "test")
    facade = select_device(host, "flaky")
    with pytest.raises(PluginError) as err:
        facade.count()
    assert "flaky" in err.value.one_line() and "device_count" in err.value.one_line()
    with pytest.raises(PluginError) as err:
        facade.name(0)
    assert "expected a non-empty one-line name" in err.value.one_line()


def test_only_chosen_vendor_answers_device_hooks():
    host = build_host(load_entry_points=False)
    host.add(vendor_module("other", priority=1, device_count=lambda: 99), "other", "test")
    assert select_device(host, "cpu").count() == 1
    assert host.record("other") is not None and "other" not in host._vendor_plugins


def observer_module(name, calls, fail=False, **marks):
    """An observer of on_epoch_end that appends ``name`` to ``calls`` (and raises if ``fail``)."""
    module = types.ModuleType(name)

    def on_epoch_end(run, epoch, metrics):
        calls.append(name)
        if fail:
            raise ValueError("{} bug".format(name))

    module.on_epoch_end = hookimpl(**marks)(on_epoch_end)
    return module


def test_lifecycle_hooks_follow_pluggy_order():
    calls = []
    host = build_host(load_entry_points=False)
    host.add(observer_module("first", calls, tryfirst=True), "first", "test")
    host.add(observer_module("last", calls, trylast=True), "last", "test")
    host.add(observer_module("early", calls), "early", "test")
    host.add(observer_module("late", calls), "late", "test")
    assert host.notify("on_epoch_end", run={}, epoch=0, metrics={}) == []
    assert calls == ["first", "late", "early", "last"]  # pluggy: tryfirst, LIFO, trylast


def test_raising_observer_does_not_stop_the_others():
    calls = []
    host = build_host(load_entry_points=False)
    host.add(observer_module("after", calls), "after", "test")
    host.add(observer_module("boom", calls, fail=True, tryfirst=True), "boom", "test")
    failures = host.notify("on_epoch_end", run={}, epoch=0, metrics={})
    assert calls == ["boom", "after"]
    assert failures == ["plugin 'boom' failed in on_epoch_end: ValueError: boom bug"]
    assert host.notify("on_epoch_end", run={}, epoch=1, metrics={}) == [failures[0]]


def test_observer_failure_is_reported_not_raised():
    observer = types.ModuleType("observer")

    @hookimpl
    def on_epoch_end(run, epoch, metrics):
        raise ValueError("observer bug")

    observer.on_epoch_end = on_epoch_end
    host = build_host(load_entry_points=False)
    host.add(observer, "observer", "test")
    failures = host.notify("on_epoch_end", run={}, epoch=0, metrics={})
    assert failures and "observer bug" in failures[0]


def test_selection_errors():
    host = build_host(load_entry_points=False)
    with pytest.raises(UserError) as err:
        select_device(host, "nope")
    assert "unknown vendor 'nope'" in err.value.one_line() and "available: cpu" in err.value.one_line()
    with pytest.raises(UserError) as err:
        select_device(host, "metax")
    assert "not a MetaX build" in err.value.one_line() and "cpu" in err.value.one_line()
    host.add_module("chipbench.plugins.does_not_exist")
    with pytest.raises(UserError) as err:
        select_device(host, "does_not_exist")
    assert "broken" in err.value.one_line()
    host.add(vendor_module("shown"), "module-name", "test")
    with pytest.raises(UserError) as err:
        select_device(host, "module-name")
    assert "use --vendor shown" in err.value.one_line()
    with pytest.raises(UserError) as err:
        select_device(host, "report")
    assert "observes runs, not a vendor" in err.value.one_line()


def test_auto_selection_takes_priority_and_announces_cpu(monkeypatch):
    host = build_host(load_entry_points=False)
    lines = []
    assert select_device(host, None, announce=lines.append).vendor == "cpu"
    assert "running on the CPU" in lines[0]
    host = build_host(load_entry_points=False)
    host.add(vendor_module("fast", priority=70), "fast", "test")
    assert select_device(host, None, announce=lines.append).vendor == "fast"
    # names the vendor it picked, calls only the unavailable ones unavailable
    assert lines[1].startswith("auto-selected vendor 'fast'")
    assert "(metax, cuda, rocm, accelerator not available here)" in lines[1]
    assert "fast not" not in lines[1] and "cpu" not in lines[1].split(";", 1)[1]
    monkeypatch.setenv("CHIPBENCH_VENDOR", "cpu")
    host = build_host(load_entry_points=False)
    host.add(vendor_module("fast", priority=70), "fast", "test")
    assert select_device(host, None).vendor == "cpu"


def test_a_plugin_printing_while_it_loads_does_not_corrupt_stdout(monkeypatch, capsys):
    """`core vendors --json` must stay JSON when a plugin prints in its import or vendor_detect."""
    import json

    from chipbench.cli import main
    from chipbench.host.manager import PluginHost

    def chatty():
        print("hello from chatty's driver probe")
        return VendorInfo("chatty", "cpu", -20, False, "no chatty hardware")

    real = PluginHost.load_all

    def load_all(self, modules, entry_points=True):
        real(self, modules, entry_points)
        self.add(vendor_module("chatty", vendor_detect=chatty), "chatty", "test")

    monkeypatch.setattr(PluginHost, "load_all", load_all)
    assert main(["vendors", "--json"]) == 0
    captured = capsys.readouterr()
    assert "chatty" in [v["name"] for v in json.loads(captured.out)]
    assert "hello from chatty" in captured.err


def test_a_slow_vendor_detect_is_named_in_a_warning(monkeypatch, capsys):
    import chipbench.host.manager as manager
    from chipbench.host.manager import PluginHost

    monkeypatch.setattr(manager, "SLOW_DETECT_S", 0.0)  # every detect counts as slow here
    real = PluginHost.load_all

    def load_all(self, modules, entry_points=True):
        real(self, modules, entry_points=False)
        self.add(vendor_module("sluggish", priority=-20), "sluggish", "test")

    monkeypatch.setattr(PluginHost, "load_all", load_all)
    build_host()
    err = capsys.readouterr().err
    assert "warning: plugin 'sluggish' took" in err and "CHIPBENCH_BLOCK_PLUGINS=sluggish" in err


TORCH_IMPORT_PROBE = "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)"


def test_torch_s_import_is_not_counted_against_a_plugin_s_detect_time(tmp_path):
    """On a GPU machine importing torch takes seconds (its device libraries load); the built-in
    cuda vendor's detection was the first to import it and was warned about on every command.
    In a fresh process, with the warning's limit under this machine's torch import time, building
    the host names no built-in plugin."""
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-c", TORCH_IMPORT_PROBE],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    limit = float(probe.stdout) / 2
    script = ("import sys, chipbench.host.manager as m\n"
              "m.SLOW_DETECT_S = {}\n"
              "assert 'torch' not in sys.modules\n"
              "host = m.build_host(load_entry_points=False)\n"
              "assert 'torch' in sys.modules\n"
              "print(host.slow_detects)\n").format(limit)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]" and "took" not in done.stderr, (limit, done.stdout,
                                                                        done.stderr)


def test_an_entry_point_named_like_a_builtin_is_told_to_rename(monkeypatch):
    host = build_host(load_entry_points=False)
    record = host.add(vendor_module("shadow"), "cpu", "entry point 'cpu' from shadow 0.1")
    assert record.broken and "plugin name 'cpu' is already taken by built-in" in record.error
    assert "rename this entry point" in record.error
    assert host.record("cpu").info.name == "cpu"  # the built-in still answers


def test_a_hanging_vendor_detect_is_given_up_and_the_others_keep_working(monkeypatch):
    import threading
    import time

    monkeypatch.setenv("CHIPBENCH_DETECT_TIMEOUT_S", "0.3")
    release = threading.Event()

    def hung():
        release.wait(60)  # a driver probe that never answers
        return VendorInfo("hung", "cpu", 99, True, "")

    host = build_host(load_entry_points=False)
    started = time.perf_counter()
    record = host.add(vendor_module("hung", vendor_detect=hung), "hung", "test")
    took = time.perf_counter() - started
    release.set()
    assert 0.3 <= took < 10
    assert record.broken and "vendor_detect did not return within 0.3 s" in record.error
    assert "CHIPBENCH_BLOCK_PLUGINS=hung" in record.error and "\n" not in record.error
    assert [v.name for v in host.vendors()] == BUILTINS
    assert select_device(host, "cpu").info.name == "cpu"
    with pytest.raises(UserError, match="hung"):
        select_device(host, "hung")


def test_a_hanging_vendor_detect_is_fatal_in_strict_mode(monkeypatch):
    import threading

    monkeypatch.setenv("CHIPBENCH_DETECT_TIMEOUT_S", "0.2")
    release = threading.Event()

    def hung():
        release.wait(60)
        return VendorInfo("hung", "cpu", 1, True, "")

    host = build_host(load_entry_points=False, strict=True)
    try:
        with pytest.raises(PluginError, match="plugin 'hung' .* did not return within 0.2 s"):
            host.add(vendor_module("hung", vendor_detect=hung), "hung", "test")
    finally:
        release.set()


def test_vendor_detect_answers_and_errors_come_back_through_the_timeout(monkeypatch):
    monkeypatch.setenv("CHIPBENCH_DETECT_TIMEOUT_S", "30")

    def exits():
        raise SystemExit(3)

    host = build_host(load_entry_points=False)
    record = host.add(vendor_module("quits", vendor_detect=exits), "quits", "test")
    assert record.broken and "vendor_detect failed" in record.error
    assert host.add(vendor_module("fine"), "fine", "test").info.name == "fine"


def test_a_plugin_with_no_chipbench_hook_is_broken_not_a_silent_observer():
    import pluggy

    foreign = pluggy.HookimplMarker("mychip")  # another project's marker
    module = types.ModuleType("wrong_marker")
    module.vendor_detect = foreign(lambda: VendorInfo("wrong", "cpu", 1, True, ""))
    host = build_host(load_entry_points=False)
    record = host.add(module, "wrong", "test")
    assert record.broken and "implements no chipbench hook" in record.error
    function = host.add(lambda: None, "afunction", "test")  # an entry point aimed at a function
    assert function.broken and "implements no chipbench hook" in function.error
