"""Third-party vendors through real entry points: an installed example package, and a
dist-info folder written by the test (a real importlib.metadata distribution)."""

import json
import os
import subprocess
import sys

import pytest

from chipbench.host.manager import build_host, iter_entry_points
from tests.conftest import write_distribution


def test_dist_info_plugins_good_and_broken(tmp_path, monkeypatch):
    site = tmp_path / "site"
    write_distribution(site, "acme-chipbench", {"acme": "acme_vendor"}, {"acme_vendor": good_vendor("acme")})
    write_distribution(site, "broken-chipbench", {"broken": "broken_vendor"},
                       {"broken_vendor": "import no_such_module_anywhere\n"})
    monkeypatch.syspath_prepend(str(site))
    found = {ep.name: dist for ep, dist in iter_entry_points()}
    assert found["acme"] == "acme-chipbench 1.0" and "broken" in found
    host = build_host()
    acme = host.record("acme")
    assert acme.info.available and acme.origin == "entry point 'acme' from acme-chipbench 1.0"
    broken = host.record("broken")
    assert broken.broken and "no_such_module_anywhere" in broken.error
    assert "broken-chipbench" in broken.origin
    assert [v.name for v in host.vendors() if v.available][0] == "acme"  # 7 beats the CPU


def test_installed_example_package_is_discovered():
    host = build_host()
    record = host.record("fakechip")
    if record is None:
        pytest.skip("examples/fakechip is not installed (tox installs it)")
    assert record.origin == "entry point 'fakechip' from chipbench-fakechip 0.1.0"
    assert record.info.available and record.info.priority < 0
    out = subprocess.run([sys.executable, "-m", "chipbench", "vendors"], stdout=subprocess.PIPE,
                         text=True, check=True).stdout
    line = [row for row in out.splitlines() if row.startswith("fakechip")][0]
    assert "chipbench-fakechip 0.1.0" in line and "<- auto" not in line


def good_vendor(name: str) -> str:
    """Source of a working vendor module: the CPU plugin's device hooks, vendor ``name``."""
    return """
    import chipbench.plugins.cpu as base
    from chipbench import VendorInfo, hookimpl
    from chipbench.hookspecs import DEVICE_HOOKS
    for _name in DEVICE_HOOKS:
        globals()[_name] = getattr(base, _name)

    @hookimpl
    def vendor_detect():
        return VendorInfo({!r}, "cpu", 7, True, "acme test chip")
""".format(name)


@pytest.fixture
def acme_and_broken(tmp_path, monkeypatch):
    """An entry point 'acme-ep' whose vendor is called 'acme-shown', and two broken plugins."""
    site = tmp_path / "site"
    write_distribution(site, "acme-chipbench", {"acme-ep": "acme_shown_vendor"},
                       {"acme_shown_vendor": good_vendor("acme-shown")})
    write_distribution(site, "broken-chipbench", {"broken": "broken_vendor"},
                       {"broken_vendor": "import no_such_module_anywhere\n"})
    write_distribution(site, "odd-chipbench", {"odd": "odd_vendor"},
                       {"odd_vendor": "from chipbench import hookimpl\n\n"
                                      "@hookimpl\ndef device_count(idx):\n    return 1\n"})
    monkeypatch.syspath_prepend(str(site))
    return site


def test_block_by_entry_point_name_skips_the_import(acme_and_broken, monkeypatch, capsys):
    monkeypatch.setenv("CHIPBENCH_BLOCK_PLUGINS", "broken,acme-ep")
    host = build_host()
    assert host.record("broken") is None and host.record("acme-shown") is None
    assert host.pm.is_blocked("acme-ep") and host.pm.is_blocked("broken")
    assert "warning" not in capsys.readouterr().err


def test_block_by_distribution_name_skips_the_import(acme_and_broken, monkeypatch, capsys):
    """`core vendors` shows the distribution a plugin came from: that name blocks it too."""
    monkeypatch.setenv("CHIPBENCH_BLOCK_PLUGINS", "broken-chipbench")
    host = build_host()
    assert host.record("broken") is None and host.record("acme-shown") is not None
    assert "warning" not in capsys.readouterr().err


def test_block_by_shown_vendor_name_and_warn_about_the_rest(acme_and_broken, monkeypatch, capsys):
    monkeypatch.setenv("CHIPBENCH_BLOCK_PLUGINS", "acme-shown, nothing-like-it")
    host = build_host()
    assert host.record("acme-shown") is None
    assert host.pm.get_plugin("acme-ep") is None and host.pm.is_blocked("acme-ep")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: CHIPBENCH_BLOCK_PLUGINS")
    assert "nothing-like-it" in err[0] and "acme-shown" not in err[0].split("(")[0]


def test_strict_mode_names_every_broken_plugin(acme_and_broken, monkeypatch):
    from chipbench.errors import PluginError

    monkeypatch.setenv("CHIPBENCH_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError) as err:
        build_host()
    line = err.value.one_line()
    assert "2 broken plugin(s)" in line
    assert "'broken' (entry point 'broken' from broken-chipbench 1.0)" in line
    assert "no_such_module_anywhere" in line
    assert "'odd' (entry point 'odd' from odd-chipbench 1.0)" in line
    assert "can not be found in the hookspec" in line


def test_vendor_by_distribution_name_points_at_the_plugin(acme_and_broken):
    from chipbench.errors import UserError
    from chipbench.host.selection import select_device

    with pytest.raises(UserError) as err:
        select_device(build_host(), "broken-chipbench")
    line = err.value.one_line()
    assert "'broken' (entry point 'broken' from broken-chipbench 1.0) is broken" in line
    with pytest.raises(UserError) as err:
        select_device(build_host(), "acme-chipbench")
    assert "use --vendor acme-shown" in err.value.one_line()
    assert select_device(build_host(), "acme-shown").vendor == "acme-shown"


NOISY = """
import os

import chipbench.plugins.cpu as base
from chipbench import VendorInfo, hookimpl
from chipbench.hookspecs import DEVICE_HOOKS

for _name in DEVICE_HOOKS:
    globals()[_name] = getattr(base, _name)
os.write(1, b"NATIVE BANNER ON FD 1\\n")  # a driver library printing at import
print("noisy: loaded")


@hookimpl
def environment_report():
    print("noisy: reporting")
    return {"device_model": "noisy chip"}


@hookimpl
def device_count():
    print("noisy: counting")
    return 1


@hookimpl
def vendor_detect():
    print("noisy: detecting")
    return VendorInfo("noisy", "cpu", 7, True, "")
"""


@pytest.mark.parametrize("command", [["info", "--vendor", "noisy", "--json"],
                                     ["vendors", "--json"],
                                     ["doctor", "--vendor", "noisy", "--static", "--json"],
                                     ["cases", "--json"]])
def test_json_output_stays_json_whatever_a_plugin_prints(tmp_path, command):
    """A plugin that prints (in Python or natively on file descriptor 1) while it loads or in any
    hook: stdout of a --json command holds the JSON alone, the rest goes to stderr."""
    site = tmp_path / "site"
    write_distribution(site, "noisy-chipbench", {"noisy": "noisy_vendor"},
                       {"noisy_vendor": NOISY})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    done = subprocess.run([sys.executable, "-m", "chipbench"] + command, capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    json.loads(done.stdout)
    assert "NATIVE BANNER ON FD 1" in done.stderr and "noisy: loaded" in done.stderr


def test_a_plugin_whose_import_hangs_is_given_up(tmp_path, monkeypatch):
    import time

    site = tmp_path / "site"
    write_distribution(site, "stuck-chipbench", {"stuck": "stuck_vendor"},
                       {"stuck_vendor": "import time\ntime.sleep(30)  # a driver probe at import\n"})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("CHIPBENCH_DETECT_TIMEOUT_S", "0.5")
    started = time.perf_counter()
    host = build_host()
    assert time.perf_counter() - started < 10
    record = host.record("stuck")
    assert record.broken and "its import did not return within 0.5 s" in record.error
    assert "CHIPBENCH_BLOCK_PLUGINS=stuck" in record.error
    assert host.record("cpu").info.available
