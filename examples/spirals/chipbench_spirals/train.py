"""The spirals worker: generate the points, train the MLP with Adam, evaluate, report metrics."""

import math
import time
from typing import Any, Dict, Iterator, Tuple

import torch

from chipbench.case import RunContext


def spirals(points: int, turns: float, noise: float, seed: int
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``points`` 2-D points on three interleaved spiral arms of ``turns`` turns, with Gaussian
    noise, and their arm (the label). No linear model separates them."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (points,), generator=gen)
    radius = torch.rand(points, generator=gen)
    angle = radius * turns * 2.0 * math.pi + labels.float() * (2.0 * math.pi / 3.0)
    xy = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return xy + noise * torch.randn(points, 2, generator=gen), labels


def build_model(hidden: int) -> torch.nn.Module:
    """A 2-``hidden``-``hidden``-3 MLP with ReLUs."""
    return torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 3))


def evaluate(ctx: RunContext, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy over every rank's shard of the held-out points."""
    with torch.no_grad():
        shard = slice(ctx.rank, None, ctx.world_size)
        right = int((model(x[shard]).argmax(dim=1) == y[shard]).sum())
    counts = ctx.all_gather((right, int(y[shard].numel())))
    return sum(r for r, _ in counts) / max(sum(n for _, n in counts), 1)


def train_and_evaluate(ctx: RunContext) -> Dict[str, Any]:
    """Adam on shuffled per-rank shards; evaluate every epoch; stop at the target accuracy."""
    threads = torch.get_num_threads()
    if ctx.device.type == "cpu":
        torch.set_num_threads(1)  # a 64-wide MLP: more intra-op threads only wait for each other
    try:
        return _train(ctx)
    finally:
        torch.set_num_threads(threads)  # a single-process run shares the `core run` process


def index_batches(indices: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """``indices`` in consecutive batches of ``batch_size`` (the last one may be smaller)."""
    for first in range(0, len(indices), batch_size):
        yield indices[first:first + batch_size]


def _train(ctx: RunContext) -> Dict[str, Any]:
    cfg, train = ctx.config, ctx.config["train"]
    torch.manual_seed(train["seed"])
    data = cfg["data"]
    x, y = spirals(data["train_points"], data["turns"], data["noise"], data["seed"])
    vx, vy = spirals(data["val_points"], data["turns"], data["noise"], data["seed"] + 1)
    ctx.data = {"train_points": len(x), "val_points": len(vx), "classes": 3}
    x, y, vx, vy = (t.to(ctx.device) for t in (x, y, vx, vy))
    bare = build_model(cfg["model"]["hidden"]).to(ctx.device)
    model = ctx.distributed(bare)
    optimizer = torch.optim.Adam(model.parameters(), lr=train["lr"])
    ctx.reset_memory_peak()
    metrics: Dict[str, Any] = {}
    for epoch in range(train["epochs"]):
        start = time.perf_counter()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        mine = order[ctx.rank::ctx.world_size].to(ctx.device)
        losses = []
        for index in ctx.batches(index_batches(mine, train["batch_size"]), train["max_iters"]):
            with ctx.core_step(len(index)):
                loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            losses.append(loss.item())
        ctx.meter.train_seconds += time.perf_counter() - start
        eval_start = time.perf_counter()
        accuracy = evaluate(ctx, bare, vx, vy)
        ctx.synchronize()
        ctx.meter.eval_seconds += time.perf_counter() - eval_start
        metrics = ctx.epoch_counters()
        metrics.update({"epoch": epoch, "epochs": epoch + 1, "accuracy": accuracy,
                        "loss": sum(losses) / max(len(losses), 1),
                        "converged": accuracy >= cfg["target"]["accuracy"]})
        ctx.log.info("epoch %d: loss %.4f, accuracy %.4f (target %.2f)", epoch, metrics["loss"],
                     accuracy, cfg["target"]["accuracy"])
        ctx.epoch_end(epoch, metrics)
        if metrics["converged"] or (train["max_iters"] and
                                    ctx.meter.seen_iterations >= train["max_iters"]):
            break
    return metrics
