"""Shared set-up for the benchmarks that drive the RetinaNet case in-process (not a benchmark).

Builds the case's resolved config (defaults < hardware file < embedded overlay < overrides), a
minimal run context for the CPU vendor, the case's loaders and model.
"""

import contextlib
import logging
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from chipbench.plugins import cpu
from chipbench.run.config import load_yaml, resolve

CONFIGS = Path(__file__).resolve().parents[1] / "cases" / "retinanet" / "configs"


def case_config(overrides: Optional[Dict[str, Dict[str, Any]]] = None,
                hardware: str = "CPUx1x1.yaml") -> Dict[str, Any]:
    """The embedded default's config on the CPU vendor, with ``overrides`` (nested dicts) last."""
    layers: List[Tuple[str, Dict[str, Any]]] = [
        (hardware, load_yaml(CONFIGS / hardware)),
        ("embedded.yaml", load_yaml(CONFIGS / "embedded.yaml"))]
    if overrides:
        layers.append(("benchmark", overrides))
    return resolve(load_yaml(CONFIGS / "defaults.yaml"), layers)


def cpu_context(config: Dict[str, Any]) -> Any:
    """A RunContext on the CPU vendor (its threads set) with the hooks the loaders and the
    training step call: loader workers and synchronize."""
    from chipbench.case import RunContext

    device = cpu.device_init_backend(0)
    facade = types.SimpleNamespace(
        loader_workers=lambda configured, local_world_size: cpu.device_loader_workers(
            configured=configured, local_world_size=local_world_size),
        synchronize=lambda device: cpu.device_synchronize(device))
    log = logging.getLogger("chipbench.benchmark")
    return RunContext(spec={}, config=config, run_dir=Path("."), host=None, facade=facade,
                      device=device, log=log)


def synthetic_dir(config: Dict[str, Any]) -> Path:
    """The embedded synthetic set of ``config`` (generated once into the cache)."""
    from chipbench.cases.retinanet.synthetic import ensure_synthetic_coco

    s = config["data"]["synthetic"]
    return ensure_synthetic_coco(s["train_images"], s["val_images"], s["image_size"], s["seed"])


def case_model(config: Dict[str, Any], num_classes: int) -> torch.nn.Module:
    """The case's RetinaNet (random init, the config's image size)."""
    from chipbench.cases.retinanet.model import build_retinanet

    m = config["model"]
    return build_retinanet(num_classes, None, m["min_size"], m["max_size"],
                           m["trainable_backbone_layers"])


def step_rate(model: torch.nn.Module, optimizer: Any, batches: List[Any], clip: float,
              autocast: Callable[[], Any] = contextlib.nullcontext) -> float:
    """The reference loop over in-memory batches: images / (forward + backward + step) time."""
    model.train()
    images_seen, seconds = 0, 0.0
    for images, targets in batches:
        start = time.perf_counter()
        with autocast():
            loss = sum(model(list(images), list(targets)).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        seconds += time.perf_counter() - start
        images_seen += len(images)
    return images_seen / seconds
