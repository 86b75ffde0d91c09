"""Performance options: the CPU core budget, the loss read-back window, eval backends.

Behaviour only; speed is measured in benchmarks/, never here.
"""

import types

import pytest
import torch

from chipbench.cases.retinanet.engine import LossWindow
from chipbench.errors import UserError
from chipbench.plugins import cpu
from tests.conftest import toy_detector


@pytest.mark.parametrize("cores, ranks, workers, threads", [
    (1, 1, 0, 1), (2, 1, 0, 2), (2, 2, 0, 1), (3, 4, 0, 1),  # small: the loader runs in-process
    (16, 1, 2, 14), (64, 8, 1, 7), (96, 1, 12, 84),  # one loader worker per 8 cores of a rank
])
def test_cpu_budget_never_oversubscribes(cores, ranks, workers, threads, monkeypatch):
    """Each rank's loader workers and compute threads together use its share of the cores, no
    more (one thread at least, where ranks outnumber cores)."""
    monkeypatch.delenv(cpu.THREADS_ENV, raising=False)
    assert cpu.core_budget(None, ranks, cores=cores) == (workers, threads)
    assert workers + threads == max(1, cores // ranks)


def test_cpu_budget_gives_configured_workers_their_cores(monkeypatch):
    monkeypatch.delenv(cpu.THREADS_ENV, raising=False)
    assert cpu.core_budget(3, 1, cores=8) == (3, 5)
    monkeypatch.setenv(cpu.THREADS_ENV, "2")
    assert cpu.core_budget(3, 1, cores=8) == (3, 2)
    for bad in ("many", "-5", "0", "1e3"):  # -5 was taken as 1 in silence
        monkeypatch.setenv(cpu.THREADS_ENV, bad)
        with pytest.raises(UserError, match="is not a thread count from 1 to 4096"):
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


def test_loader_workers_fall_back_when_the_vendor_has_no_hook(monkeypatch):
    """Without the vendor's hook: the configured count, or for null the seed's 4 workers, fewer
    where a rank has fewer cores (one core stays with training)."""
    import os

    from chipbench.case import RunContext

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    facade = types.SimpleNamespace(loader_workers=lambda configured, local_world_size: None)
    ctx = RunContext(spec={}, config={}, run_dir=None, host=None, facade=facade,
                     device=torch.device("cpu"))
    assert ctx.loader_workers(2) == 2
    for cores, ranks, workers in ((64, 1, 4), (3, 1, 2), (1, 1, 0), (8, 8, 0), (16, 4, 3)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        ctx.world_size = ranks
        assert ctx.loader_workers(None) == workers, (cores, ranks)


def test_loss_window_reads_the_mean_and_names_the_iterations_of_a_nan():
    window = LossWindow(epoch=2, first_iteration=10)
    for value in (1.0, 2.0, 3.0):
        window.add(torch.tensor(value), {"cls": torch.tensor(value)})
    assert window.read(13) == pytest.approx(2.0)
    window.add(torch.tensor(float("nan")), {"cls": torch.tensor(float("nan"))})
    with pytest.raises(UserError, match=r"epoch 2 \(iterations 14-14") as caught:
        window.read(14)
    assert "train in fp32" not in str(caught.value)  # it is fp32 already
    mixed = LossWindow(epoch=0, first_iteration=0, precision="bf16")
    mixed.add(torch.tensor(float("inf")), {})
    with pytest.raises(UserError, match="or train in fp32"):
        mixed.read(1)


def test_bf16_support_names_native_units_or_warns(tmp_path):
    native = tmp_path / "native"
    native.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    assert cpu.bf16_support(str(native)) == "native (avx512_bf16)"
    assert "slower than fp32" in cpu.bf16_support(str(plain))
    assert "slower than fp32" in cpu.bf16_support(str(tmp_path / "missing"))
    assert "cpu_bf16" in cpu.environment_report()


def test_bf16_is_offered_only_where_its_kernels_run(monkeypatch, capsys, tmp_path):
    """A torch whose CPU kernels cannot train a bf16 convolution here (torch 2.0 without AVX-512)
    offers fp32 only, says why in the report, and a bf16 run is refused before it starts."""
    from chipbench.cli import main

    assert cpu.bf16_kernel_error() is None or "bf16" not in cpu.supported_precisions()
    monkeypatch.setitem(cpu._bf16_kernel_errors, "error", "could not create a primitive descriptor")
    assert cpu.supported_precisions() == ["fp32"]
    report = cpu.environment_report()["cpu_bf16"]
    assert report.startswith("unsupported") and "primitive descriptor" in report
    assert "fp32" in report and torch.__version__ in report
    out = tmp_path / "run"
    assert main(["run", "retinanet", "--vendor", "cpu", "--precision", "bf16",
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: precision bf16 is not supported") and "use one of fp32" in err
    assert not out.exists()


def test_bf16_probe_keeps_the_random_state():
    state = torch.get_rng_state()
    cpu._bf16_kernel_errors.clear()
    cpu.bf16_kernel_error()
    assert torch.equal(torch.get_rng_state(), state)


def test_data_num_workers_is_a_count_or_null():
    """The case's own defaults pass its validation; null (the vendor chooses) and a count pass,
    anything else is refused naming the key."""
    from chipbench.cases.retinanet import RetinaNetCase
    from chipbench.run.config import load_yaml

    for good in (None, 0, 3):
        config = load_yaml(RetinaNetCase.config_dir / "defaults.yaml")
        config["data"]["num_workers"] = good
        RetinaNetCase().validate(config, ["fp32"])
    for bad in (-1, "four", True):
        config = load_yaml(RetinaNetCase.config_dir / "defaults.yaml")
        config["data"]["num_workers"] = bad
        with pytest.raises(UserError, match="data.num_workers"):
            RetinaNetCase().validate(config, ["fp32"])


def _sgd_pair():
    """Two identical small models with the same gradients: torch's SGD and the case's."""
    from chipbench.cases.retinanet.engine import make_sgd

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
              for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    plain = torch.optim.SGD(models[0].parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    case = make_sgd(models[1].parameters(), 0.1, 0.9, 1e-4)
    return models, plain, case


def test_case_sgd_makes_the_seeds_update():
    models, plain, case = _sgd_pair()
    for step in range(3):
        for model, optimizer in zip(models, (plain, case)):
            for p in model.parameters():
                p.grad = torch.full_like(p, 0.01 * (step + 1)) + p.detach()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
    moved = models[1][0].weight.detach() - _sgd_pair()[0][1][0].weight.detach()
    assert moved.abs().max() > 1e-3  # the steps did something


def test_optimizer_state_resumes_with_this_optimizers_implementation():
    from chipbench.cases.retinanet.engine import load_optimizer_state

    models, plain, case = _sgd_pair()
    for model, optimizer in zip(models, (plain, case)):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
    saved = case.state_dict()
    saved["param_groups"][0]["fused"] = True  # saved where a fused kernel exists
    saved["param_groups"][0]["foreach"] = True
    implementation = {k: plain.param_groups[0].get(k, "absent") for k in ("fused", "foreach")}
    load_optimizer_state(plain, saved)  # torch 2.0's SGD has no "fused" setting: stays absent
    assert {k: plain.param_groups[0].get(k, "absent") for k in ("fused", "foreach")} == \
        implementation
    assert plain.param_groups[0]["lr"] == 0.1 and len(plain.state) == len(case.state)
    plain.step()  # still runs with its own implementation


def test_evaluation_schedule():
    from chipbench.cases.retinanet.train import evaluated_after

    every = [n for n in range(1, 11) if evaluated_after(n, {"every": 1, "first_epoch": 1})]
    assert every == list(range(1, 11))
    assert [n for n in range(1, 11) if evaluated_after(n, {"every": 2, "first_epoch": 1})] == [
        2, 4, 6, 8, 10]
    assert [n for n in range(1, 11) if evaluated_after(n, {"every": 1, "first_epoch": 7})] == [
        7, 8, 9, 10]
    assert [n for n in range(1, 11) if evaluated_after(n, {"every": 3, "first_epoch": 4})] == [
        6, 9]


def test_timed_iterations_are_one_in_n_and_not_in_step_with_epochs():
    from chipbench.cases.retinanet.engine import timed_iteration

    assert all(timed_iteration(i, 1) for i in range(100))
    for every, epoch_length in ((10, 15), (5, 15), (4, 8)):
        timed = [i for i in range(30000) if timed_iteration(i, every)]
        assert abs(len(timed) / 30000 - 1 / every) < 0.1 / every
        places = [sum(1 for i in timed if i % epoch_length == p) for p in range(epoch_length)]
        assert min(places) > 0.7 * max(places), places  # every place in the epoch, evenly
    assert [timed_iteration(i, 4) for i in range(50)] == [timed_iteration(i, 4)
                                                          for i in range(50)]  # on every rank


@pytest.mark.parametrize("core_every", [1, 2, 4, 20])
def test_core_time_sampling_waits_for_the_device_only_on_timed_iterations(core_every):
    import logging

    from chipbench.case import RunContext
    from chipbench.cases.retinanet.engine import TrainStep, timed_iteration, train_one_epoch

    timed = sum(timed_iteration(i, core_every) for i in range(10))
    model = toy_detector()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = [([torch.rand(3, 4, 4) for _ in range(2)], [{"labels": torch.zeros(1)}] * 2)
              for _ in range(10)]
    calls = []
    facade = types.SimpleNamespace(synchronize=lambda device: calls.append(meter.seen_iterations))
    ctx = RunContext(spec={}, config={}, run_dir=None, host=None, facade=facade,
                     device=torch.device("cpu"), log=logging.getLogger("test"))
    meter = ctx.meter
    stats = train_one_epoch(model, optimizer, loader, ctx, 0,
                            TrainStep(log_every=3, core_every=core_every))
    assert stats["steps"] == 10 and meter.images == 20
    assert meter.core_images == 2 * timed and (meter.core_seconds > 0) == (timed > 0)
    assert len(calls) == 2 + 2 * timed  # epoch start, twice per timed iteration, epoch end
    assert meter.train_seconds >= meter.core_seconds
    assert model.scale.item() < 1.0  # it trained
