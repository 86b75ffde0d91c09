"""No chipbench process imports from the current folder: modules planted where the user stands (a
run folder received from someone else) never run, whatever the command, on one process or two."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chipbench.run.childproc import BOOTSTRAP, python_module_command
from tests.conftest import INTERRUPTER, tiny, write_distribution

# modules that chipbench, its sentinel, torchrun or the workers import, and Python's own runpy
PLANTED = ("json", "yaml", "torch", "pluggy", "psutil", "runpy", "numpy", "chipbench")
CORE = Path(sys.executable).with_name("core")


def plant(folder: Path, marks: Path) -> None:
    """Modules in ``folder`` that leave a file in ``marks`` if anything imports them."""
    for name in PLANTED:
        body = "open({!r}, 'w').close()\n".format(str(marks / name))
        if name == "chipbench":
            (folder / name).mkdir(exist_ok=True)
            (folder / name / "__init__.py").write_text(body)
        else:
            (folder / (name + ".py")).write_text(body)


def core(args, cwd: Path, env=None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The installed ``core`` command (as a user runs it), in ``cwd``."""
    return subprocess.run([str(CORE)] + list(args), cwd=str(cwd), env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def planted(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    here = tmp_path / "here"
    here.mkdir()
    plant(here, marks)
    return here, marks


def test_the_bootstrap_drops_the_current_folder_and_runs_the_module(planted):
    here, marks = planted
    done = subprocess.run(python_module_command("json.tool", ["--sort-keys"]), cwd=str(here),
                          input='{"b": 1, "a": 2}', capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"a": 2, "b": 1}
    assert not list(marks.iterdir())
    # a module that only the current folder holds: plain `-c` imports it, the bootstrap cannot
    (here / "only_here.py").write_text("open({!r}, 'w').close()\n".format(str(marks / "only_here")))
    subprocess.run([sys.executable, "-c", "import only_here"], cwd=str(here), timeout=60)
    assert (marks / "only_here").exists()
    (marks / "only_here").unlink()
    refused = subprocess.run(python_module_command("only_here"), cwd=str(here),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "only_here" in refused.stderr
    assert not (marks / "only_here").exists() and "sys.path" in BOOTSTRAP


@pytest.mark.skipif(not CORE.exists(), reason="the core console script is not installed")
@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=[pytest.mark.distributed,
                                                             pytest.mark.oldstack_skip])])
def test_planted_modules_never_run(planted, tmp_path, tiny_data, nproc):
    here, marks = planted
    site = tmp_path / "site"
    write_distribution(site, "interrupter", {"interrupter": "interrupter"},
                       {"interrupter": INTERRUPTER})
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1",
               CHIPBENCH_TEST_INTERRUPT_AT="0")
    out = tmp_path / "run"
    # a run from a folder holding the planted modules, stopped after its first epoch
    run = core(["run", "retinanet", "--vendor", "cpu", "--output", str(out),
                "--nproc-per-node", str(nproc), "--set", "train.epochs=2",
                "--set", "data.num_workers=0"] + tiny(1), here, env)
    # one process takes the hook's Ctrl-C as the user's; in a worker it is that rank's failure
    assert run.returncode == (130 if nproc == 1 else 1), run.stderr
    stopped = json.loads((out / "result.json").read_text())
    assert stopped["status"] in ("interrupted", "failed") and len(stopped["epochs"]) == 1
    # resumed from inside the run folder, which now holds the planted modules too
    plant(out, marks)
    env.pop("CHIPBENCH_TEST_INTERRUPT_AT")
    resumed = core(["run", "--resume", "."], out, env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "result.json").read_text())["status"] == "finished"
    if nproc == 1:
        for args in (["compare", str(out)], ["info", "--vendor", "cpu"],
                     ["doctor", "--vendor", "cpu"], ["vendors"]):
            done = core(args, here, env)
            assert done.returncode in (0, 1), (args, done.stderr)
            assert "error:" not in done.stderr, (args, done.stderr)
    assert not sorted(p.name for p in marks.iterdir())
