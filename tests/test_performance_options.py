"""Performance options (issue 10): the CPU core budget, the loss read-back window, eval backends.

Behaviour only; speed is measured in benchmarks/, never here.
"""

import types

import pytest
import torch

from chipbench.cases.retinanet.engine import LossWindow
from chipbench.errors import UserError
from chipbench.plugins import cpu


@pytest.mark.parametrize("cores,ranks", [(1, 1), (2, 1), (2, 2), (16, 1), (64, 8), (96, 1)])
def test_cpu_budget_never_oversubscribes(cores, ranks, monkeypatch):
    monkeypatch.delenv(cpu.THREADS_ENV, raising=False)
    workers, threads = cpu.core_budget(None, ranks, cores=cores)
    per_rank = max(1, cores // ranks)
    assert threads >= 1 and workers >= 0
    assert workers + threads <= max(per_rank, 1 + workers)
    if per_rank >= 2:
        assert workers + threads <= per_rank
    if per_rank < cpu.CORES_PER_LOADER_WORKER:
        assert workers == 0 and threads == per_rank


def test_cpu_budget_gives_configured_workers_their_cores(monkeypatch):
    monkeypatch.delenv(cpu.THREADS_ENV, raising=False)
    assert cpu.core_budget(3, 1, cores=8) == (3, 5)
    monkeypatch.setenv(cpu.THREADS_ENV, "2")
    assert cpu.core_budget(3, 1, cores=8) == (3, 2)
    monkeypatch.setenv(cpu.THREADS_ENV, "many")
    with pytest.raises(UserError, match=cpu.THREADS_ENV):
        cpu.core_budget(None, 1, cores=8)


def test_cpu_vendor_sets_threads_for_its_workers(monkeypatch):
    monkeypatch.delenv(cpu.THREADS_ENV, raising=False)
    monkeypatch.setattr(cpu, "usable_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        assert cpu.device_loader_workers(configured=1, local_world_size=1) == 1
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_loader_workers_fall_back_when_the_vendor_has_no_hook():
    from chipbench.cases.retinanet.train import DEFAULT_LOADER_WORKERS, loader_workers

    facade = types.SimpleNamespace(loader_workers=lambda configured, local_world_size: None)
    ctx = types.SimpleNamespace(config={"data": {"num_workers": 2}}, world_size=1, facade=facade)
    assert loader_workers(ctx) == 2
    ctx.config["data"]["num_workers"] = None
    assert 0 <= loader_workers(ctx) <= DEFAULT_LOADER_WORKERS


def test_loss_window_reads_the_mean_and_names_the_iterations_of_a_nan():
    window = LossWindow(epoch=2, first_iteration=10)
    for value in (1.0, 2.0, 3.0):
        window.add(torch.tensor(value), {"cls": torch.tensor(value)})
    assert window.read(13) == pytest.approx(2.0)
    window.add(torch.tensor(float("nan")), {"cls": torch.tensor(float("nan"))})
    with pytest.raises(UserError, match=r"epoch 2 \(iterations 14-14"):
        window.read(14)


def test_bf16_support_names_native_units_or_warns(tmp_path):
    native = tmp_path / "native"
    native.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    assert cpu.bf16_support(str(native)) == "native (avx512_bf16)"
    assert "slower than fp32" in cpu.bf16_support(str(plain))
    assert "slower than fp32" in cpu.bf16_support(str(tmp_path / "missing"))
    assert "cpu_bf16" in cpu.environment_report()


def test_channels_last_and_auto_backend_are_config_defaults():
    from chipbench.cases.retinanet import RetinaNetCase
    from chipbench.config import load_yaml

    defaults = load_yaml(RetinaNetCase.config_dir / "defaults.yaml")
    assert defaults["train"]["channels_last"] is False
    assert defaults["eval"]["backend"] == "auto" and defaults["data"]["num_workers"] is None
    for bad in (-1, "four", True):
        config = load_yaml(RetinaNetCase.config_dir / "defaults.yaml")
        config["data"]["num_workers"] = bad
        with pytest.raises(UserError, match="data.num_workers"):
            RetinaNetCase().validate(config, ["fp32"])
