"""One import namespace: the installed distribution provides ``chipbench`` only, and chipbench
works from a folder that holds its own ``core``, ``plugins`` and ``cases`` packages."""

import ast
import os
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import List, Set

import pytest

import chipbench

QUICK = ["--vendor", "cpu", "--set", "data.synthetic.train_images=8",
         "--set", "data.synthetic.val_images=4", "--set", "data.synthetic.image_size=64",
         "--set", "train.max_iters=1", "--set", "run.checkpoint=false"]
SHADOWS = ("core", "plugins", "cases")


def top_level_names(dist: metadata.Distribution) -> Set[str]:
    """The importable top-level names that ``dist`` installs, read from its file list (and, for an
    editable install, from setuptools' finder mapping or the folders its .pth file adds)."""
    names = set()
    for file in dist.files or []:
        parts = file.parts
        if parts[0] == ".." or parts[0].endswith((".dist-info", ".egg-info")) or \
                parts[0] == "__pycache__":
            continue
        if file.name.startswith("__editable__") or file.suffix == ".pth":
            names |= _editable_names(Path(str(file.locate())))
            continue
        names.add(parts[0] if len(parts) > 1 else file.name.split(".")[0])
    return names


def _editable_names(path: Path) -> Set[str]:
    if path.suffix == ".py":  # setuptools' editable finder: MAPPING = {"chipbench": ".../core"}
        for node in ast.walk(ast.parse(path.read_text())):
            target = node.targets[0] if isinstance(node, ast.Assign) else getattr(
                node, "target", None)
            if getattr(target, "id", "") == "MAPPING" and getattr(node, "value", None):
                return {key.split(".")[0] for key in ast.literal_eval(node.value)}
        return set()
    names = set()
    for line in path.read_text().splitlines():  # a path entry exposes every package below it
        folder = Path(line.strip())
        if line.strip() and not line.startswith("import") and folder.is_dir():
            names |= {p.parent.name for p in folder.glob("*/__init__.py")}
    return names


def installed_distribution(name: str) -> metadata.Distribution:
    """The distribution ``name`` as pip installed it (not a build's ``.egg-info`` in the source
    tree, which is on ``sys.path`` while the tests run from the repository)."""
    for dist in metadata.distributions():
        if dist.metadata["Name"] == name and dist.read_text("INSTALLER") is not None:
            return dist
    pytest.skip("{} is not installed by pip here".format(name))


def test_distribution_installs_chipbench_only():
    dist = installed_distribution("chipbench")
    top_level = dist.read_text("top_level.txt")
    if top_level is not None:
        assert top_level.split() == ["chipbench"]
    assert top_level_names(dist) == {"chipbench"}
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {"core": "chipbench.cli:console_main", "chipbench": "chipbench.cli:console_main"}


def test_every_package_folder_is_in_the_distribution():
    """setup.cfg lists packages by hand (its folders are not named after the import name), so a
    package folder missing from that list would be absent from a wheel while an editable install
    still finds it."""
    import configparser

    root = Path(__file__).resolve().parents[1]
    config = configparser.ConfigParser()
    config.read(root / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    mapping = dict(line.split(" = ") for line in config["options"]["package_dir"].split("\n")
                   if line.strip())
    folders = set()
    for name, folder in mapping.items():
        for init in (root / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(root / folder)
            if "__pycache__" not in relative.parts:
                folders.add(".".join((name,) + relative.parts))
    assert folders == listed


def test_public_surface():
    from chipbench import HardwareId, MemoryInfo, VendorInfo, hookimpl  # noqa: F401

    assert set(chipbench.__all__) >= {"hookimpl", "VendorInfo", "MemoryInfo", "HardwareId",
                                      "API_VERSION"}
    assert all(hasattr(chipbench, name) for name in chipbench.__all__)
    major, minor = (int(p) for p in chipbench.API_VERSION.split("."))
    assert major >= 1


def test_every_hook_says_the_api_version_it_appeared_in():
    import re

    from chipbench import hookspecs

    api = tuple(int(p) for p in chipbench.API_VERSION.split("."))
    for name in hookspecs.DEVICE_HOOKS + hookspecs.OPTIONAL_HOOKS + hookspecs.LIFECYCLE_HOOKS + (
            "vendor_detect",):
        doc = getattr(hookspecs, name).__doc__ or ""
        found = re.findall(r"\.\. versionadded:: (\d+)\.(\d+)", doc)
        assert len(found) == 1, name
        assert (int(found[0][0]), int(found[0][1])) <= api, name


@pytest.fixture
def shadow_folder(tmp_path):
    """A working folder with its own core/, plugins/ and cases/ packages that break on import,
    put first on PYTHONPATH (for the command and for every worker torchrun starts)."""
    folder = tmp_path / "app"
    for name in SHADOWS:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            "raise ImportError('the local {} package was imported')\n".format(name))
    (folder / "cases" / "retinanet").mkdir()
    env = dict(os.environ, PYTHONPATH=str(folder), OMP_NUM_THREADS="1")
    env.pop("CHIPBENCH_VENDOR", None)
    return folder, env


def _command(name: str) -> List[str]:
    exe = Path(sys.executable).parent / name
    return [str(exe)] if exe.exists() else [shutil.which(name) or name]


def run(argv: List[str], folder: Path, env: dict, timeout: float = 300) -> str:
    done = subprocess.run(argv, cwd=str(folder), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout
    assert "was imported" not in done.stdout, done.stdout
    return done.stdout


def test_commands_ignore_local_packages(shadow_folder):
    folder, env = shadow_folder
    probe = "import importlib.util as u; print([n for n in {} if u.find_spec(n)])".format(SHADOWS)
    assert run([sys.executable, "-c", probe], folder, env).strip() == str(list(SHADOWS))
    version = "chipbench " + chipbench.__version__
    assert run([sys.executable, "-m", "chipbench", "--version"], folder, env).strip() == version
    assert run(_command("chipbench") + ["--version"], folder, env).strip() == version
    out = run(_command("core") + ["vendors"], folder, env)
    assert "cpu" in out and "<- auto" in out


@pytest.mark.slow
def test_run_from_a_folder_with_local_packages(shadow_folder):
    folder, env = shadow_folder
    out = folder / "runs" / "one"
    run(_command("core") + ["run", "cases/retinanet", "--output", str(out)] + QUICK, folder, env)
    assert (out / "result.json").is_file()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_run_from_a_folder_with_local_packages(shadow_folder):
    folder, env = shadow_folder
    out = folder / "runs" / "two"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run(_command("core") + ["run", "cases/retinanet", "--nproc-per-node", "2", "--master-port",
                            str(port), "--output", str(out)] + QUICK, folder, env, timeout=600)
    assert (out / "result.json").is_file()
    assert (out / "logs" / "rank1.log").is_file()
