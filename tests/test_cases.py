"""Cases and their configs: vendor-shipped configs (hook case_config_dirs), `core cases`, cases
from outside packages (entry-point group chipbench.cases) and how a case argument is read."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chipbench.cli import main
from chipbench.errors import PluginError
from chipbench.host.manager import build_host
from chipbench.host.selection import select_device
from chipbench.run.caseload import load_case, plugin_config_dirs
from chipbench.run.launcher import Topology
from chipbench.run.runner import resolve_run_config

TINY = ["--set", "train.max_iters=1", "--set", "data.synthetic.train_images=8",
        "--set", "data.synthetic.val_images=4", "--set", "data.synthetic.image_size=64",
        "--set", "run.monitor_interval_s=0.2"]


def fakechip_dirs(case_name="retinanet"):
    host = build_host()
    select_device(host, "fakechip")
    return plugin_config_dirs(host, case_name)


def test_fakechip_ships_a_retinanet_config():
    dirs = fakechip_dirs()
    assert [plugin for _, plugin in dirs] == ["fakechip"]
    assert (dirs[0][0] / "F1x1x1.yaml").is_file()
    assert fakechip_dirs("no-such-case") == []


def test_only_the_chosen_vendors_configs_count():
    host = build_host()
    select_device(host, "cpu")
    assert plugin_config_dirs(host, "retinanet") == []


def test_missing_hardware_file_is_announced_with_those_that_exist():
    case = load_case("retinanet")
    facade = select_device(build_host(), "fakechip")
    lines = []
    config, sources = resolve_run_config(case, None, facade.hardware_id(), Topology(nproc_per_node=2),
                                         [], {}, extra_dirs=fakechip_dirs(), announce=lines.append)
    assert lines[0] == ("no hardware config F1x1x2.yaml for tag F1 and topology 1x2 (case "
                        "retinanet has: F1x1x1); using the case defaults")
    assert lines[1].startswith("config layers: ") and lines[1].endswith("embedded.yaml")
    assert config["eval"]["batch_size"] == 8  # the case default, not fakechip's 2
    assert not any("F1x1x1" in s for s in sources)


def test_plugin_config_found_by_name_too():
    case = load_case("retinanet")
    facade = select_device(build_host(), "fakechip")
    config, sources = resolve_run_config(case, "F1x1x1", facade.hardware_id(),
                                         Topology(nproc_per_node=2), [], {},
                                         extra_dirs=fakechip_dirs())
    assert config["eval"]["batch_size"] == 2 and sources[0].endswith("retinanet/F1x1x1.yaml")


def test_a_plugin_answering_garbage_is_one_line():
    class Bad:
        from chipbench import hookimpl

        @hookimpl
        def case_config_dirs(self, case_name):
            return "/no/such/folder"

    host = build_host(load_entry_points=False)
    host.add(Bad(), "bad", "test")
    with pytest.raises(PluginError, match="plugin 'bad' returned '/no/such/folder'"):
        plugin_config_dirs(host, "retinanet")


@pytest.mark.slow
def test_core_run_fakechip_uses_and_announces_its_shipped_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "retinanet", "--vendor", "fakechip", "--output", str(out)] + TINY) == 0
    result = json.loads((out / "result.json").read_text())
    shipped = [s for s in result["config_sources"] if s.endswith("retinanet/F1x1x1.yaml")]
    assert len(shipped) == 1 and "chipbench_fakechip_configs" in shipped[0]
    assert result["config"]["eval"]["batch_size"] == 2 and result["config"]["run"]["log_every"] == 5
    err = capsys.readouterr().err
    assert "F1x1x1.yaml (from plugin fakechip)" in err and "config layers: " in err


# --------------------------------------------------------------------------------------------------
# cases from outside packages
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def odd_cases(tmp_path, monkeypatch):
    """Two more `chipbench.cases` entry points, as if installed: one that fails to import and one
    whose case takes a name already taken."""
    site = tmp_path / "site"
    info = site / "odd_cases-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "odd_broken_case.py").write_text("import no_such_module_here\n")
    (site / "odd_dup_case.py").write_text(
        "from chipbench.case import Case\n\nprint('hello from odd_dup_case')\n\n\n"
        "class Dup(Case):\n    name = 'retinanet'\n\n\nCASE = Dup()\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: odd-cases\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[chipbench.cases]\noddbroken = odd_broken_case\n"
                                           "odddup = odd_dup_case\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_core_cases_lists_every_case(odd_cases, capsys):
    assert main(["cases", "--json"]) == 0
    captured = capsys.readouterr()
    listed = json.loads(captured.out)
    assert "hello from odd_dup_case" in captured.err  # a print while importing: not on stdout
    rows = {r["name"]: r for r in listed if "odd-cases" not in r["origin"]}
    odd = {r["name"]: r for r in listed if "odd-cases" in r["origin"]}
    assert rows["retinanet"]["origin"] == "built-in" and rows["retinanet"]["status"] == "ok"
    assert "A100x1x8" in rows["retinanet"]["configs"]
    assert "F1x1x1 (fakechip)" in rows["retinanet"]["configs"]
    assert rows["spirals"]["origin"].startswith("entry point 'spirals' from chipbench-spirals")
    assert rows["spirals"]["title"].startswith("Three spirals")
    assert odd["oddbroken"]["status"] == "broken"
    assert "ModuleNotFoundError: No module named 'no_such_module_here'" in odd["oddbroken"]["title"]
    assert odd["retinanet"]["status"] == "broken"
    assert odd["retinanet"]["title"] == "case name 'retinanet' is already taken by built-in"
    assert load_case("retinanet").title.startswith("RetinaNet")  # the others keep working
    assert ("warning: case 'retinanet' of entry point 'odddup' from odd-cases 0.1 is not used: "
            "case name 'retinanet' is already taken by built-in") in capsys.readouterr().err
    assert main(["cases"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["name", "status", "origin", "title", "configs"]


def test_case_arguments(tmp_path, monkeypatch):
    import chipbench.cases.retinanet as retinanet_pkg

    assert load_case("retinanet").name == "retinanet"
    assert load_case("spirals").name == "spirals"
    assert load_case("cases/retinanet/").name == "retinanet"
    package = load_case(str(Path(retinanet_pkg.__file__).parent))
    assert package.name == "retinanet"
    from chipbench.errors import UserError

    (tmp_path / "retinanet").write_text("not a case")
    (tmp_path / "other" / "retinanet").mkdir(parents=True)
    bad = {str(tmp_path / "retinanet"): "is a file",
           str(tmp_path / "missing" / "retinanet"): "is a path that does not exist",
           str(tmp_path / "other" / "retinanet"): "is not a registered case's package",
           "nosuchcase": "unknown case 'nosuchcase'"}
    for argument, problem in bad.items():
        with pytest.raises(UserError, match=problem) as caught:
            load_case(argument)
        assert "\n" not in caught.value.one_line() and "spirals" in caught.value.one_line()


def run_spirals(out, *extra):
    return main(["run", "spirals", "--vendor", "cpu", "--output", str(out)] + list(extra))


def check_spirals_result(out, ranks):
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "finished" and result["case"] == "spirals"
    assert result["target_metric"] == "accuracy" and result["sample_unit"] == "points"
    metrics = result["metrics"]
    assert metrics["converged"] is True and metrics["accuracy"] >= result["target"] == 0.9
    assert metrics["ranks"] == ranks and metrics["p_train"] > 0 and metrics["images"] > 0
    assert result["versions"]["case"].startswith("chipbench-spirals ")  # compare's case version
    report = (out / "report.md").read_text()
    assert "| p_core | accuracy | mem |" in report and "points trained (all ranks)" in report
    assert "mAP" not in report
    return result


def test_outside_case_trains_to_its_target(tmp_path, capsys):
    assert run_spirals(tmp_path / "run") == 0
    check_spirals_result(tmp_path / "run", ranks=1)
    captured = capsys.readouterr()
    assert "converged: true  (target accuracy 0.9" in captured.out
    assert "no hardware config CPUx1x1.yaml for tag CPU and topology 1x1" in captured.err


@pytest.mark.slow
@pytest.mark.distributed
def test_outside_case_with_two_processes(tmp_path):
    assert run_spirals(tmp_path / "run", "--nproc-per-node", "2") == 0
    result = check_spirals_result(tmp_path / "run", ranks=2)
    assert result["topology"]["nproc_per_node"] == 2


FLAWED = '''
import math
from pathlib import Path

from chipbench.case import Case

HERE = Path(__file__).resolve().parent / "flawed_configs"


class Flawed(Case):
    config_dir = HERE
    metric_name = "score"
    returns = None

    def target(self, config):
        return config["target"]["score"]

    def run(self, ctx):
        return dict(self.returns, p_train=1.0, images=4, epochs=1)


def make(name, **attrs):
    return type(name, (Flawed,), dict(attrs, name=name))()


def no_run_method():
    return type("NoRun", (Case,), {"name": "flaw_norun", "config_dir": HERE})()


def raising(exc):
    def method(*args, **kwargs):
        raise exc
    return method


def listing(self, ctx):
    return [("score", 1.0)]


norun = no_run_method()
noconfig = make("flaw_noconfig", config_dir=Path("."))
validate = make("flaw_validate", validate=raising(ValueError("hidden must be even")))
prepare = make("flaw_prepare", prepare=raising(ZeroDivisionError("division by zero")))
run = make("flaw_run", run=raising(KeyError("r2_missing")))
memtext = make("flaw_memtext", returns={"score": 0.5, "mem_used_peak_bytes": "1G"})
inf = make("flaw_inf", returns={"score": 0.5, "p_core": math.inf})
nan = make("flaw_nan", returns={"score": math.nan})
notdict = make("flaw_notdict", run=listing)
boast = make("flaw_boast", returns={"score": 0.1, "converged": True})
exitval = make("flaw_exitval", validate=raising(SystemExit(0)))
exitrun = make("flaw_exitrun", run=raising(SystemExit(3)))
kbrun = make("flaw_kbrun", run=raising(KeyboardInterrupt()))
targetnan = make("flaw_targetnan", target=lambda self, config: math.nan)
targetstr = make("flaw_targetstr", target=lambda self, config: "0.9")
prepared = make("flaw_prepared", prepare=lambda self, config: [1])
precint = make("flaw_precint", precision=lambda self, config: 16)
rows = make("flaw_rows", general_rows=lambda self, config, prepared, label: [("a", "b")])
huge = make("flaw_huge", returns={"score": 0.5, "p_core": 10 ** 400})
notarget = make("flaw_notarget", target=lambda self, config: None,
                returns={"score": 0.95, "converged": True})
nometric = make("flaw_nometric", returns={"converged": True})
pcore = make("flaw_pcore", metric_name="p_core", returns={"p_core": 0.95})
untitled = make("flaw_untitled", title=None)
nanconf = make("flaw_nanconf", config_dir=HERE.parent / "nan_configs")
intkey = make("flaw_intkey", config_dir=HERE.parent / "intkey_configs")
'''


@pytest.fixture
def flawed_cases(tmp_path, monkeypatch):
    """Outside cases with the mistakes case authors make, registered through entry points."""
    site = tmp_path / "site"
    info = site / "flawed_cases-0.1.dist-info"
    configs = site / "flawed_configs"
    configs.mkdir(parents=True)
    info.mkdir()
    (configs / "defaults.yaml").write_text(
        "train: {precision: fp32}\ntarget: {score: 0.9}\n"
        "run: {monitor_interval_s: 1.0, timeout_s: 60}\n")
    (site / "flawed_cases.py").write_text(FLAWED)
    for folder, text in (("nan_configs", "train: {precision: fp32, lr: .nan}\n"),
                         ("intkey_configs", "train: {precision: fp32, 1: one}\n")):
        (site / folder).mkdir()
        (site / folder / "defaults.yaml").write_text(text + "target: {score: 0.9}\n")
    names = ["norun", "noconfig", "validate", "prepare", "run", "memtext", "inf", "nan",
             "notdict", "boast", "exitval", "exitrun", "kbrun", "targetnan", "targetstr", "prepared",
             "precint", "rows", "huge", "notarget", "nometric", "pcore", "untitled", "nanconf",
             "intkey"]
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flawed-cases\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[chipbench.cases]\n" + "".join(
        "flaw_{0} = flawed_cases:{0}\n".format(n) for n in names))
    monkeypatch.syspath_prepend(str(site))
    return tmp_path


def test_a_case_that_cannot_run_is_listed_broken(flawed_cases, capsys):
    assert main(["cases", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["flaw_norun"]["status"] == "broken"
    assert rows["flaw_norun"]["title"] == "it does not define run()"
    assert rows["flaw_noconfig"]["status"] == "broken"
    assert "config_dir '.' is not an absolute path" in rows["flaw_noconfig"]["title"]
    assert rows["flaw_boast"]["status"] == "ok"
    assert main(["run", "flaw_norun", "--vendor", "cpu"]) == 2
    assert "does not define run()" in capsys.readouterr().err


@pytest.mark.parametrize("name, fragment, recorded", [
    ("validate", "failed in validate(): ValueError: hidden must be even", False),
    ("prepare", "failed in prepare(): ZeroDivisionError: division by zero", True),
    ("run", "failed in run(): KeyError: 'r2_missing'", True),
    ("memtext", "returned mem_used_peak_bytes = '1G' from run()", True),
    ("inf", "returned p_core = inf from run()", True),
    ("nan", "returned score = nan from run()", True),
    ("notdict", "returned list from run(), not a dict of metrics", True),
    ("exitval", "failed in validate(): SystemExit: 0", False),
    ("exitrun", "failed in run(): SystemExit: 3", True),
    ("targetnan", "returned nan from target(), expected a finite int or float", None),
    ("targetstr", "returned '0.9' from target(), expected a finite int or float", None),
    ("prepared", "returned [1] from prepare(), expected a dict of facts", None),
    ("precint", "returned 16 from precision(), expected one of fp32", None),
    ("rows", "from general_rows(), expected a list of (indicator, value, note) rows", None),
    ("huge", "returned p_core = 1.0000e+400 (an integer of 401 digits)", True),
])
def test_a_failing_case_is_one_line_naming_it_and_the_run_says_failed(
        flawed_cases, capsys, name, fragment, recorded):
    out = flawed_cases / "run"
    assert main(["run", "flaw_" + name, "--vendor", "cpu", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    problem, fix = err[-1].split("; ", 1)
    assert problem.startswith("error: case 'flaw_{}' ".format(name)) and fragment in problem
    assert "flawed-cases 0.1" in fix, fix  # the distribution (and version) to fix or report
    assert not any("Traceback" in line for line in err)
    if recorded:
        result = json.loads((out / "result.json").read_text())
        assert result["status"] == "failed" and fragment in result["error"]
        assert (out / "report.md").is_file()
    elif recorded is False:
        assert not out.exists()


def test_a_keyboardinterrupt_raised_by_a_case_is_its_failure_not_the_user_s_ctrl_c(
        flawed_cases, capsys):
    """A case's (or plugin's) own ``raise KeyboardInterrupt`` was taken for Ctrl-C: the run said
    "interrupted", exit 130, and blamed no one. Where SIGINT is Python's default (a terminal's
    foreground job), chipbench takes it, Ctrl-C arrives as its own Interrupted, and a bare
    KeyboardInterrupt is the code's failure."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        out = flawed_cases / "run"
        assert main(["run", "flaw_kbrun", "--vendor", "cpu", "--output", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "case 'flaw_kbrun'" in err[-1] and "failed in run(): KeyboardInterrupt" in err[-1]
        result = json.loads((out / "result.json").read_text())
        assert result["status"] == "failed" and "KeyboardInterrupt" in result["error"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.distributed
@pytest.mark.oldstack_skip  # the old stack's one 2-process run is test_distributed's
def test_a_keyboardinterrupt_raised_by_a_case_in_torchrun_workers_is_its_failure_too(
        flawed_cases, monkeypatch):
    """Workers take SIGINT as core does, so the case's own KeyboardInterrupt there is not taken
    for Ctrl-C either (it was "rank 0 failed: KeyboardInterrupt", exit 1)."""
    from tests.conftest import default_sigint, free_port

    site = flawed_cases / "site"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = flawed_cases / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "chipbench", "run", "flaw_kbrun", "--vendor", "cpu",
         "--nproc-per-node", "2", "--master-port", str(free_port()), "--output", str(out)],
        env=env, capture_output=True, text=True, timeout=300, preexec_fn=default_sigint)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr
    assert "case 'flaw_kbrun'" in last and "failed in run(): KeyboardInterrupt" in last
    assert json.loads((out / "result.json").read_text())["status"] == "failed"


def test_converged_is_the_metric_reaching_the_target_not_the_case_s_word(flawed_cases, capsys):
    out = flawed_cases / "run"
    assert main(["run", "flaw_boast", "--vendor", "cpu", "--output", str(out)]) == 0
    metrics = json.loads((out / "result.json").read_text())["metrics"]
    assert metrics["score"] == 0.1 and metrics["converged"] is False


@pytest.mark.parametrize("name, reached", [("notarget", "no target, reached 0.9500"),
                                           ("nometric", "target score 0.9, reached no score")])
def test_no_target_or_no_metric_is_never_converged(flawed_cases, capsys, name, reached):
    """The case says converged, but there is no target to reach, or no metric that reached it."""
    out = flawed_cases / "run"
    assert main(["run", "flaw_" + name, "--vendor", "cpu", "--output", str(out)]) == 0
    assert "converged: false  ({})".format(reached) in capsys.readouterr().out
    assert json.loads((out / "result.json").read_text())["metrics"]["converged"] is False


def test_cases_that_break_the_contract_are_listed_broken(flawed_cases, capsys):
    assert main(["cases", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "metric_name 'p_core' is one of chipbench's own figures" in rows["flaw_pcore"]["title"]
    assert "its title None is not a one-line text" in rows["flaw_untitled"]["title"]
    for name in ("pcore", "untitled"):
        assert main(["run", "flaw_" + name, "--vendor", "cpu"]) == 2
        assert "is broken" in capsys.readouterr().err


@pytest.mark.parametrize("name, fragments", [
    ("nanconf", ("error: config key 'train.lr' in ", "nan_configs/defaults.yaml must be a finite "
                 "number, not nan")),
    ("intkey", ("error: config ", "intkey_configs/defaults.yaml has key 1 under 'train', which is "
                "not a name")),
])
def test_a_case_s_own_defaults_are_checked_like_any_config(flawed_cases, capsys, name, fragments):
    assert main(["run", "flaw_" + name, "--vendor", "cpu", "--output",
                 str(flawed_cases / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(fragments[0]) and fragments[1] in err[-1], err[-1]


def test_shipped_config_hook_may_take_no_arguments(tmp_path):
    """pluggy lets an implementation take a subset of the spec's arguments: case_config_dirs()
    without case_name is called without it."""
    import types

    from chipbench import hookimpl

    module = types.ModuleType("argless")
    module.case_config_dirs = hookimpl(lambda: [str(tmp_path)])
    host = build_host()
    host.add(module, "argless", "test")
    assert (tmp_path, "argless") in plugin_config_dirs(host, "retinanet")


def test_a_broken_shipped_config_names_the_plugin(tmp_path, capsys):
    """A shipped config the user cannot fix (it is inside an installed package) names its plugin."""
    import types

    from chipbench import hookimpl
    from chipbench.records import HardwareId

    (tmp_path / "Z1x1x1.yaml").write_text("train:\n  lr: [1\n")
    module = types.ModuleType("shipper")
    module.case_config_dirs = hookimpl(lambda case_name: [str(tmp_path)])
    host = build_host()
    host.add(module, "shipper", "test")
    with pytest.raises(PluginError) as caught:
        resolve_run_config(load_case("retinanet"), None, HardwareId("Z1 chip", "Z1"), Topology(),
                           [], {},
                           extra_dirs=plugin_config_dirs(host, "retinanet"))
    line = caught.value.one_line()
    assert "not valid YAML" in line and "(shipped by plugin 'shipper')" in line
    assert "give --config a fixed copy" in line


EARLY = '''
from pathlib import Path

from chipbench.case import Case


class Early(Case):
    """Rank 0 returns at once; the other ranks wait for it in an all-reduce it never joins."""
    name = "early"
    config_dir = Path(__file__).resolve().parent / "early_configs"
    metric_name = "score"

    def target(self, config):
        return 0.5

    def run(self, ctx):
        import torch
        import torch.distributed as dist

        if ctx.rank != 0:
            dist.all_reduce(torch.ones(1))
        return {"score": 1.0, "p_train": 1.0, "images": 4, "epochs": 1}


early = Early()
'''


@pytest.mark.distributed
def test_a_rank_returning_early_is_named_not_only_the_rank_left_waiting(tmp_path, monkeypatch,
                                                                         capsys):
    site = tmp_path / "site"
    (site / "early_configs").mkdir(parents=True)
    (site / "early_configs" / "defaults.yaml").write_text(
        "train: {precision: fp32}\nrun: {monitor_interval_s: 1.0, timeout_s: 30}\n")
    (site / "early_case.py").write_text(EARLY)
    info = site / "early_case-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: early-case\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[chipbench.cases]\nearly = early_case:early\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = tmp_path / "run"
    started = time.monotonic()
    code = main(["run", "early", "--vendor", "cpu", "--nproc-per-node", "2", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, "\n".join(err)  # the case's mistake, as any case error is
    assert time.monotonic() - started < 25  # the waiting rank fails when rank 0 leaves, not later
    assert err[-1].startswith("error: rank 0 returned from the case's run() while rank 1 was "
                              "still in a collective, which then failed: case 'early' failed in "
                              "run(): RuntimeError: "), err[-1]
    assert "every rank must run the same collectives" in err[-1]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and "rank 0 returned from" in result["error"]
