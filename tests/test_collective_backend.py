"""A vendor's ``collective_backend`` answer is checked against the backends torch.distributed
knows: ``Backend(name)`` accepts any string, so a typo ('nccll') or another vendor's name
('mccl', Moore Threads', not MetaX's) used to fail only inside every worker's
``init_process_group``, and the conformance kit passed it."""

import json
import os
import textwrap

import pytest

from chipbench.conformance import run_checks
from chipbench.errors import PluginError
from tests.conftest import (
    QUICK,
    core_process,
    finish,
    free_port,
    vendor_answering,
    write_distribution,
)


@pytest.mark.parametrize("backend", ["nccll", "mccl", "cpu:gloo,cuda:ncl"])
def test_an_unknown_backend_is_the_plugin_s_one_line_error(backend):
    facade = vendor_answering(backend)
    assert facade.collective_backend() == backend  # `core info` still shows what it says
    with pytest.raises(PluginError) as caught:
        facade.process_group_backend()
    line = caught.value.one_line()
    assert "vendor 'answers' returned {!r} from hook collective_backend".format(backend) in line
    assert "a backend torch.distributed knows (gloo, nccl" in line and "\n" not in line
    [result] = run_checks(facade, only=["collective_backend"])
    assert result.status == "fail" and "torch.distributed knows" in result.expected


@pytest.mark.parametrize("backend", ["gloo", "nccl", "cpu:gloo,cuda:nccl", "GLOO"])
def test_backends_torch_knows_pass(backend):
    facade = vendor_answering(backend)
    assert facade.process_group_backend() == backend
    [result] = run_checks(facade, live=False, only=["collective_backend"])
    assert result.status == "pass"


def test_a_backend_the_vendor_registers_in_init_backend_passes_once_it_is_registered():
    name = "chipbenchtestccl"
    facade = vendor_answering(name, registers=name)
    [static] = run_checks(facade, live=False, only=["collective_backend"])
    assert static.status == "skip" and "init_backend" in static.got
    [live] = run_checks(facade, only=["collective_backend"])  # asks init_backend first
    assert live.status == "pass"
    assert facade.process_group_backend() == name


TYPO_VENDOR = """
    import chipbench.plugins.cpu as base
    from chipbench import VendorInfo, hookimpl
    from chipbench.hookspecs import DEVICE_HOOKS
    for _name in DEVICE_HOOKS:
        globals()[_name] = getattr(base, _name)

    @hookimpl
    def vendor_detect():
        return VendorInfo("typochip", "cpu", -5, True, "a chip whose backend name has a typo")

    @hookimpl
    def collective_backend():
        return "glo"
"""


@pytest.mark.distributed
@pytest.mark.oldstack_skip  # the old stack's one 2-process run is test_distributed's
def test_a_two_process_run_on_an_unknown_backend_stops_with_one_line(tmp_path, tiny_data,
                                                                     monkeypatch):
    site = tmp_path / "site"
    write_distribution(site, "typochip", {"typochip": "typochip"},
                       {"typochip": textwrap.dedent(TYPO_VENDOR)})
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(  # core_process passes os.environ on
        [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = tmp_path / "run"
    args = [a if a != "cpu" else "typochip" for a in QUICK]  # --vendor typochip
    code, _, stderr = finish(core_process(
        "--nproc-per-node", "2", "--master-port", str(free_port()), "--output", str(out),
        "--set", "train.max_iters=1", *args), timeout=300)
    last = stderr.strip().splitlines()[-1]
    assert code == 2, stderr
    assert last.startswith("error: vendor 'typochip' returned 'glo' from hook collective_backend")
    assert "Traceback" not in stderr
    assert json.loads((out / "result.json").read_text())["status"] == "failed"
