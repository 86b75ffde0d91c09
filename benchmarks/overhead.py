"""The harness's tax: the case's own training step against a bare torchvision loop, in one run.

Both train the same RetinaNet (one model, one optimizer) on the same embedded synthetic batches
(same shapes, batch size, gradient clipping), in interleaved rounds (by default one iteration
each, alternating which goes first, so that both see the same load on a shared machine; the ratios
are medians of the per-round ratios). The case round is
``train_one_epoch`` over the case's own DataLoader (its worker count and thread budget from the
CPU vendor), with its RunMeter and synchronisations; the bare round is the torchvision-reference
loop over batches already in memory, timed around forward + backward + step.

    python benchmarks/overhead.py [--rounds 20] [--iters 1] [--workers N] [--json out.json]

Prints p_core(case)/bare and p_train/p_core last. Goals: >= 0.98 and >= 0.95.
"""

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _case_setup import case_config, case_model, cpu_context, step_rate, synthetic_dir  # noqa: E402

from chipbench.case import RunMeter  # noqa: E402
from chipbench.cases.retinanet.engine import TrainStep, make_sgd, train_one_epoch  # noqa: E402
from chipbench.cases.retinanet.train import build_loaders  # noqa: E402
from chipbench.plugins import cpu  # noqa: E402


def case_round(model, optimizer, ctx, loader, iters: int, clip: float) -> Dict[str, float]:
    """One epoch of the case's step, stopped after ``iters`` iterations; p_core and p_train."""
    ctx.meter = meter = RunMeter()
    train_one_epoch(model, optimizer, loader, ctx, 0,
                    TrainStep(clip_grad_norm=clip, max_iters=iters,
                              log_every=ctx.config["run"]["log_every"]))
    return {"p_core": meter.core_images / meter.core_seconds,
            "p_train": meter.images / meter.train_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved case/bare rounds")
    parser.add_argument("--iters", type=int, default=1, help="iterations per round")
    parser.add_argument("--workers", type=int, default=None,
                        help="data.num_workers for the case (default: the config's, null)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = case_config({"data": {"num_workers": args.workers}})
    ctx = cpu_context(config)
    train_set, _, sampler, loader, _ = build_loaders(
        ctx, synthetic_dir(config), ctx.loader_workers(config["data"]["num_workers"]))
    case_threads = torch.get_num_threads()
    workers = loader.num_workers
    cpu.device_init_backend(0)
    bare_threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = case_model(config, max(train_set.coco.getCatIds()) + 1)
    train = config["train"]
    optimizer = make_sgd([p for p in model.parameters() if p.requires_grad], train["lr"],
                         train["momentum"], train["weight_decay"])  # the case's own
    clip = train["clip_grad_norm"] or 1e9
    batches: List[Any] = []
    for batch in torch.utils.data.DataLoader(train_set, batch_size=train["batch_size"],
                                             shuffle=True, collate_fn=loader.collate_fn):
        batches.append(batch)
        if len(batches) == max(args.iters, 8):
            break
    step_rate(model, optimizer, batches[:2], clip)  # warm-up, not counted
    rows: Dict[str, List[float]] = {"bare": [], "p_core": [], "p_train": []}
    for r in range(args.rounds):
        sampler.set_epoch(r)
        order = ("case", "bare") if r % 2 == 0 else ("bare", "case")
        for which in order:
            if which == "bare":
                torch.set_num_threads(bare_threads)
                rows["bare"].append(step_rate(model, optimizer, batches[r % len(batches):][
                    :args.iters] or batches[:args.iters], clip))
            else:
                torch.set_num_threads(case_threads)
                got = case_round(model, optimizer, ctx, loader, args.iters, clip)
                rows["p_core"].append(got["p_core"])
                rows["p_train"].append(got["p_train"])
        print("round {}: bare {:.2f}, case p_core {:.2f}, p_train {:.2f} img/s".format(
            r + 1, rows["bare"][-1], rows["p_core"][-1], rows["p_train"][-1]), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    core_ratio = statistics.median(c / b for c, b in zip(rows["p_core"], rows["bare"]))
    train_ratio = statistics.median(t / c for t, c in zip(rows["p_train"], rows["p_core"]))
    figures = {"cores": cpu.usable_cores(), "loader_workers": workers,
               "case_threads": case_threads, "bare_threads": bare_threads,
               "batch_size": train["batch_size"], "image_size": config["model"]["min_size"],
               "rounds": args.rounds, "iters": args.iters, "median_img_per_s": med,
               "p_core_over_bare": core_ratio, "p_train_over_p_core": train_ratio,
               "torch": torch.__version__}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print("cores {cores}, loader workers {loader_workers}, threads case {case_threads} / bare "
          "{bare_threads}, bs {batch_size}, {image_size} px".format(**figures))
    print("median img/s: bare {bare:.2f}, case p_core {p_core:.2f}, p_train {p_train:.2f}".format(
        **med))
    print("median of per-round ratios: p_core(case)/bare {:.3f} (goal >= 0.98); "
          "p_train/p_core {:.3f} (goal >= 0.95)".format(
        figures["p_core_over_bare"], figures["p_train_over_p_core"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
