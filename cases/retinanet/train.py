"""The RetinaNet worker: data, model, optimiser, the epoch loop, evaluation, checkpoints, metrics.

Flat on purpose (torchvision's detection references are the model): every step of the seed's
recipe is visible here, and every device call goes through ``ctx`` (the vendor's hooks).
"""

import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from chipbench.case import RunContext, RunMeter, UserError
from chipbench.cases.retinanet import MEMORY_SETTINGS, checkpoint, resized_batches
from chipbench.cases.retinanet.batching import GroupedBatchSampler, aspect_ratio_groups
from chipbench.cases.retinanet.data import CocoDetection, coco_paths, collate
from chipbench.cases.retinanet.engine import (
    TrainStep,
    make_sgd,
    train_one_epoch,
    trained_flops_per_image,
)
from chipbench.cases.retinanet.evaluate import (
    coco_bbox_map,
    detection_transform,
    predict,
    resolve_backend,
    shape_grouped_batches,
)
from chipbench.cases.retinanet.facts import data_facts
from chipbench.cases.retinanet.model import build_retinanet, step_memory_floor


def seed_everything(ctx: RunContext, seed: int, deterministic: bool, autotune: bool) -> None:
    """Seed every RNG; determinism and kernel autotuning are the vendor's switches (its hook)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    ctx.configure(deterministic, autotune)


def build_loaders(ctx: RunContext, data_dir: Path, workers: int = 0):
    """Training loader (grouped, distributed sampling) and this rank's evaluation shard, each with
    ``workers`` loader processes (``ctx.loader_workers``).

    Workers are started anew each epoch (not persistent): their seeds then come from the main
    process's RNG, which checkpoints restore, so a resumed run sees the same flips.
    """
    cfg = ctx.config
    train_set = CocoDetection(*coco_paths(data_dir, "train"), train=True,
                              hflip=cfg["data"]["hflip"])
    val_set = CocoDetection(*coco_paths(data_dir, "val"), train=False)
    sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank,
                                 shuffle=True, seed=cfg["train"]["seed"])
    groups = aspect_ratio_groups(train_set.aspect_ratios(), cfg["data"]["aspect_ratio_group_factor"])
    pin = bool(cfg["data"]["pin_memory"]) and ctx.device.type != "cpu"
    ctx.log.info("data loader: %d worker process(es) per rank, %d compute thread(s)", workers,
                 torch.get_num_threads())
    extra: Dict[str, Any] = {"prefetch_factor": 2} if workers else {}
    train_loader = DataLoader(train_set, num_workers=workers, pin_memory=pin, collate_fn=collate,
                              batch_sampler=GroupedBatchSampler(sampler, groups,
                                                                cfg["train"]["batch_size"]),
                              **extra)
    shard = Subset(val_set, list(range(ctx.rank, len(val_set), ctx.world_size)))
    # its own generator: each pass over a DataLoader draws its workers' base seed from it, which
    # would otherwise be the global RNG that training's flips then continue from (a run's
    # trajectory would depend on when it evaluates). Its batches hold images that the model pads
    # to the same shape, so that no image's detections depend on eval.batch_size
    infos = [val_set.coco.imgs[val_set.ids[i]] for i in shard.indices]
    val_batches = shape_grouped_batches(
        [(info["height"], info["width"]) for info in infos], cfg["eval"]["batch_size"],
        detection_transform(cfg["model"]["min_size"], cfg["model"]["max_size"]))
    val_loader = DataLoader(shard, batch_sampler=val_batches, num_workers=workers,
                            pin_memory=pin, collate_fn=collate,
                            generator=torch.Generator().manual_seed(cfg["train"]["seed"]), **extra)
    return train_set, val_set, sampler, train_loader, val_loader


def evaluate(ctx: RunContext, model: torch.nn.Module, val_set: CocoDetection, val_loader: Any,
             precision: str) -> Dict[str, Any]:
    """Sharded inference, one gather, one COCOeval on rank 0; every rank gets the figures and the
    name of the evaluation backend that computed them (``eval_backend``: ``auto`` resolved)."""
    results = predict(model, val_loader, ctx.device, lambda: ctx.autocast(precision))
    gathered = ctx.all_gather(results)
    scores: Optional[Dict[str, Any]] = None
    if ctx.is_main:
        merged = [r for part in gathered for r in part]
        backend = ctx.config["eval"]["backend"]
        scores = dict(coco_bbox_map(val_set.scoring_coco, merged, val_set.ids, backend),
                      eval_backend=resolve_backend(backend))
    return ctx.broadcast(scores)


def evaluated_after(epochs_done: int, eval_cfg: Dict[str, Any]) -> bool:
    """Whether the schedule evaluates after ``epochs_done`` epochs (the last epoch is always
    evaluated, by the caller): every ``eval.every`` epochs, none before ``eval.first_epoch``."""
    return epochs_done >= eval_cfg["first_epoch"] and epochs_done % eval_cfg["every"] == 0


def check_step_fits(ctx: RunContext, train_set: CocoDetection) -> None:
    """Refuse, in one line and before the model is built, a training step that can never fit in
    the device's memory (an image size of 100000 px, say): on a machine with a lot of host memory
    the allocation could succeed and the OOM killer end the run instead."""
    cfg = ctx.config
    sizes = [(int(info.get("height") or 0), int(info.get("width") or 0))
             for info in train_set.coco.imgs.values()]
    floor = step_memory_floor(sizes, cfg["model"]["min_size"], cfg["model"]["max_size"],
                              cfg["train"]["batch_size"], cfg["train"]["precision"])
    total = ctx.memory_total_bytes()
    if total is None:  # a broken memory hook: the monitor warns about it and counts it
        return
    if floor > total:
        raise UserError("cannot allocate memory for {} (the input batch and the first "
                        "convolution's output alone need {:.1f} GiB; the device has {:.1f} GiB)"
                        .format(resized_batches(cfg), floor / 2**30, total / 2**30),
                        "lower " + MEMORY_SETTINGS)


def train_and_evaluate(ctx: RunContext) -> Dict[str, Any]:
    """The seed's recipe: SGD + warm-up + MultiStepLR, evaluation every epoch, stop at target."""
    cfg, train_cfg = ctx.config, ctx.config["train"]
    prepared = ctx.spec["prepared"]
    # first: a checkpoint that does not fit costs no model build
    state = ctx.load_checkpoint(train_cfg["epochs"], "train.epochs")
    seed_everything(ctx, train_cfg["seed"] + ctx.rank, train_cfg["deterministic"],
                    bool(train_cfg["autotune"]))
    workers = ctx.loader_workers(cfg["data"]["num_workers"])
    train_set, val_set, sampler, train_loader, val_loader = build_loaders(
        ctx, Path(prepared["data_dir"]), workers)
    num_classes = max(train_set.coco.getCatIds() or [0]) + 1
    weights = prepared.get("backbone_weights_path")
    ctx.data = data_facts(train_set, val_set, num_classes, cfg, ctx.world_size, weights,
                          caveats=ctx.is_main)
    warn_about_boxes(ctx, train_set, val_set)
    check_step_fits(ctx, train_set)
    model = build_retinanet(num_classes, Path(weights) if weights else None,
                            cfg["model"]["min_size"], cfg["model"]["max_size"],
                            cfg["model"]["trainable_backbone_layers"]).to(ctx.device)
    precision = train_cfg["precision"]
    perf: Dict[str, Any] = {}  # FLOPs of the training step per trained image, the vendor's peak
    if ctx.is_main:  # counted before DDP wraps the model, on this rank's batches of epoch 1
        sampler.set_epoch(0)
        perf = ctx.flops_facts(precision, *trained_flops_per_image(
            model, train_set, train_loader.batch_sampler, ctx.device, cfg["model"]["min_size"],
            cfg["model"]["max_size"]))
    if train_cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    bare_model = model
    model = ctx.distributed(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_sgd(params, train_cfg["lr"], train_cfg["momentum"],
                         train_cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=train_cfg["lr_steps"],
                                                     gamma=train_cfg["lr_gamma"])
    scaler = ctx.grad_scaler(precision)
    ctx.meter = RunMeter(skip_iters=train_cfg["throughput_skip_iters"])
    start_epoch = 0
    if state is not None:
        start_epoch = checkpoint.restore(ctx, state, bare_model, optimizer, scheduler, scaler)
        ctx.log.info("resumed from %s after epoch %d", ctx.checkpoint_path, start_epoch - 1)
        del state
    ctx.save_progress(final=False)  # the data facts, and the checkpoint's epochs on a resume
    ctx.reset_memory_peak()
    target = cfg["target"]["mAP"]
    metrics: Dict[str, Any] = dict(ctx.epochs[-1]) if ctx.epochs else {}
    ctx.log.info("training %s: %d train / %d val images, %d classes, %d iterations per epoch, "
                 "%s, %d process(es)", "retinanet", len(train_set), len(val_set), num_classes,
                 len(train_loader), precision, ctx.world_size)
    step = TrainStep(precision=precision, scaler=scaler, clip_grad_norm=train_cfg["clip_grad_norm"],
                     core_every=train_cfg["core_every"], max_iters=train_cfg["max_iters"],
                     log_every=cfg["run"]["log_every"], bar=ctx.is_main and sys.stderr.isatty())

    def iterations_spent() -> bool:
        return bool(train_cfg["max_iters"]) and ctx.meter.seen_iterations >= train_cfg["max_iters"]

    for epoch in range(start_epoch, train_cfg["epochs"]):
        if metrics.get("converged") or iterations_spent():
            break
        sampler.set_epoch(epoch)
        warmup = None
        if epoch == 0:
            warmup_iters = min(train_cfg["warmup_iters"], len(train_loader) - 1)
            if warmup_iters > 0:
                warmup = torch.optim.lr_scheduler.LinearLR(
                    optimizer, start_factor=train_cfg["warmup_factor"], total_iters=warmup_iters)
        ctx.phase("train")
        stats = train_one_epoch(model, optimizer, train_loader, ctx, epoch, step, warmup)
        scheduler.step()
        last_epoch = epoch + 1 == train_cfg["epochs"] or iterations_spent()
        scores: Dict[str, float] = {}
        if evaluated_after(epoch + 1, cfg["eval"]) or last_epoch:
            ctx.phase("eval")
            ctx.synchronize()
            eval_start = time.perf_counter()
            scores = evaluate(ctx, bare_model, val_set, val_loader, precision)  # no DDP sync
            ctx.synchronize()
            ctx.meter.eval_seconds += time.perf_counter() - eval_start
        metrics = epoch_metrics(ctx, epoch, stats, scores, perf)
        ctx.log.info("epoch %d done: loss %.4f, %s, %.1f img/s train, %.1f img/s core", epoch,
                     stats["loss"], "mAP {:.4f} (target {:.2f})".format(metrics["mAP"], target)
                     if "mAP" in metrics else "not evaluated", metrics.get("p_train") or 0.0,
                     metrics.get("p_core") or 0.0)
        states = ctx.all_gather(checkpoint.rng_state())  # also the epoch-end meeting point
        if cfg["run"]["checkpoint"]:  # the checkpoint first, then the record of the epoch:
            ctx.phase("checkpoint")     # they agree
            ctx.save_checkpoint(checkpoint.case_state(bare_model, optimizer, scheduler, scaler,
                                                      states), epoch, metrics)
        ctx.epoch_end(epoch, metrics)
        ctx.log.info("epoch %d recorded%s", epoch,
                     " (checkpoint and progress.json)" if cfg["run"]["checkpoint"] else "")
    return metrics


def epoch_metrics(ctx: RunContext, epoch: int, stats: Dict[str, Any], scores: Dict[str, float],
                  perf: Dict[str, Any]) -> Dict[str, Any]:
    """An epoch's figures over all ranks: counters, loss, mAP where evaluated, FLOPs and MFU, and
    a note of what the throughputs leave out."""
    train_cfg = ctx.config["train"]
    metrics = ctx.epoch_counters()
    metrics.update({"epoch": epoch, "epochs": epoch + 1, "loss": stats["loss"],
                    "lr": stats["lr"]})
    metrics.update(scores)  # an epoch without evaluation has no mAP
    metrics.update(ctx.flops_figures(perf, metrics.get("p_core")))
    metrics["converged"] = bool(metrics.get("mAP", 0.0) >= ctx.config["target"]["mAP"])
    notes = []
    if train_cfg["throughput_skip_iters"]:
        notes.append("the first {} iterations are left out of p_whole, p_train and "
                     "p_core".format(train_cfg["throughput_skip_iters"]))
    if train_cfg["core_every"] > 1:
        notes.append("p_core is timed on 1 in {} iterations ({} of {} images)".format(
            train_cfg["core_every"], metrics["core_images"], metrics["images"]))
    if notes:
        metrics["throughput_note"] = "; ".join(notes)
    return metrics


def warn_about_boxes(ctx: RunContext, train_set: CocoDetection, val_set: CocoDetection) -> None:
    """Tell (rank 0) of boxes training drops and boxes evaluation scores as given or leaves out."""
    if not ctx.is_main:
        return
    if train_set.boxes_dropped:
        ctx.log.warning("warning: %d invalid box(es) in %s dropped from training: not 4 finite "
                        "numbers, under 1 px, or outside the image", train_set.boxes_dropped,
                        train_set.annotation_file.name)
    if val_set.invalid_boxes_scored:
        ctx.log.warning("note: %d box(es) in %s under 1 px or outside the image are scored as "
                        "the file gives them (the standard COCO score, as pycocotools gives it)",
                        val_set.invalid_boxes_scored, val_set.annotation_file.name)
    if val_set.boxes_not_scored:
        ctx.log.warning("warning: %d box(es) in %s are not 4 finite numbers: left out of the "
                        "ground truth that mAP is scored against", val_set.boxes_not_scored,
                        val_set.annotation_file.name)
