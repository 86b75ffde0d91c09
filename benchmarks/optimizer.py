"""The case's optimizer step against torch's default SGD, on RetinaNet's own parameters.

``make_sgd`` (cases/retinanet/engine.py) takes torch's fused SGD kernel where this torch has one
for the device; this times one ``optimizer.step()`` (momentum 0.9, weight decay 1e-4, the seed's)
of each over the case model's 32 M parameters with the same gradients, in interleaved rounds, and
checks that both give the same parameters. The whole training step is ~0.35 s at the embedded
default on 2 cores, so the saving is a few per cent of p_core.

    python benchmarks/optimizer.py [--rounds 5] [--steps 10] [--json out.json]
"""

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _case_setup import case_config, case_model  # noqa: E402

from chipbench.cases.retinanet.engine import make_sgd  # noqa: E402
from chipbench.plugins import cpu  # noqa: E402


def step_ms(optimizer: torch.optim.Optimizer, steps: int) -> float:
    """Milliseconds per ``optimizer.step()`` (the gradients stay as they are)."""
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cpu.device_init_backend(0)
    config = case_config()
    train = config["train"]
    torch.manual_seed(0)
    models = {"default": case_model(config, 5)}
    models["case"] = copy.deepcopy(models["default"])
    optimizers: Dict[str, torch.optim.Optimizer] = {}
    for name, model in models.items():
        params = [p for p in model.parameters() if p.requires_grad]
        generator = torch.Generator().manual_seed(1)
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator) * 1e-3
        if name == "default":
            optimizers[name] = torch.optim.SGD(params, lr=train["lr"], momentum=train["momentum"],
                                               weight_decay=train["weight_decay"])
        else:
            optimizers[name] = make_sgd(params, train["lr"], train["momentum"],
                                        train["weight_decay"])
    fused = bool(optimizers["case"].param_groups[0].get("fused"))
    for optimizer in optimizers.values():
        step_ms(optimizer, 1)  # warm-up (allocates the momentum buffers)
    times: Dict[str, List[float]] = {name: [] for name in optimizers}
    for r in range(args.rounds):
        for name in (list(optimizers) if r % 2 == 0 else list(reversed(list(optimizers)))):
            times[name].append(step_ms(optimizers[name], args.steps))
    difference = max(float((a.detach() - b.detach()).abs().max()) for a, b in zip(
        models["default"].parameters(), models["case"].parameters()))
    default, case = statistics.median(times["default"]), statistics.median(times["case"])
    params = sum(p.numel() for p in models["case"].parameters() if p.requires_grad)
    result = {"parameters": params, "torch": torch.__version__, "fused": fused,
              "default_ms": round(default, 2), "case_ms": round(case, 2),
              "max_param_difference": difference, "speed_ratio": round(default / case, 3)}
    print("SGD step over {:.1f} M parameters, torch {}: default {:.1f} ms, case ({}) {:.1f} ms; "
          "parameters after {} steps differ by at most {:.2g}".format(
              params / 1e6, torch.__version__, default, "fused" if fused else "torch's default",
              case, 1 + args.rounds * args.steps, difference))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print("speed ratio (default step time / case step time): {:.2f}x".format(default / case))
    return 0


if __name__ == "__main__":
    sys.exit(main())
