"""Fast paths as options, each against fp32 NCHW on this CPU, interleaved in one run.

The case's training step (RetinaNet, the embedded default's shapes and batch) timed as forward +
backward + step over the same in-memory batches, in four variants: fp32, bf16 autocast,
``train.channels_last``, and both. bf16 runs on native units only where the CPU has avx512_bf16 or
amx_bf16 (the cpu vendor's report says which); elsewhere it is emulated and may be slower than
fp32. The autotuning switch (cudnn-style benchmark, through the vendor's device_configure hook)
is a no-op on the CPU, so it is not measured here.

    python benchmarks/fast_paths.py [--rounds 3] [--iters 6] [--json out.json]
"""

import argparse
import contextlib
import copy
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _case_setup import case_config, case_model, step_rate, synthetic_dir  # noqa: E402

from chipbench.cases.retinanet.data import CocoDetection, coco_paths, collate  # noqa: E402
from chipbench.cases.retinanet.engine import make_sgd  # noqa: E402
from chipbench.plugins import cpu  # noqa: E402

VARIANTS = {"fp32": (False, False), "bf16": (False, True), "channels_last": (True, False),
            "channels_last+bf16": (True, True)}


def variant_rate(model: torch.nn.Module, optimizer: Any, batches: List[Any],
                 bf16: bool) -> float:
    """Images/s of forward + backward + step over ``batches``, under bf16 autocast if asked."""
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else \
        contextlib.nullcontext
    return step_rate(model, optimizer, batches, 10.0, autocast)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=6, help="iterations per variant and round")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    config = case_config()
    cpu.device_init_backend(0)
    train_set = CocoDetection(*coco_paths(synthetic_dir(config), "train"), train=True)
    loader = torch.utils.data.DataLoader(train_set, batch_size=config["train"]["batch_size"],
                                         shuffle=True, collate_fn=collate)
    batches = [b for _, b in zip(range(args.iters), loader)]
    torch.manual_seed(0)
    base = case_model(config, max(train_set.coco.getCatIds()) + 1)
    models, optimizers = {}, {}
    for name, (channels_last, _) in VARIANTS.items():
        model = copy.deepcopy(base)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        models[name] = model
        optimizers[name] = make_sgd([p for p in model.parameters() if p.requires_grad],
                                    0.01, 0.9, 0.0001)
        variant_rate(model, optimizers[name], batches[:1], VARIANTS[name][1])  # warm-up
    rates: Dict[str, List[float]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(list(VARIANTS)))
        for name in order:
            rates[name].append(variant_rate(models[name], optimizers[name], batches,
                                            VARIANTS[name][1]))
        print("round {}: ".format(r + 1) + ", ".join(
            "{} {:.2f}".format(n, rates[n][-1]) for n in VARIANTS) + " img/s", flush=True)
    median = {n: statistics.median(v) for n, v in rates.items()}
    ratio = {n: median[n] / median["fp32"] for n in VARIANTS}
    figures = {"cpu_bf16": cpu.bf16_support(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "img_per_s": median, "over_fp32": ratio,
               "autotune": "no-op on the CPU (not measured)"}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print("cpu bf16: {}; {} threads; autotuning: a no-op on the CPU".format(
        figures["cpu_bf16"], figures["threads"]))
    print("over fp32: " + ", ".join("{} {:.2f}x".format(n, ratio[n]) for n in VARIANTS
                                   if n != "fp32"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
