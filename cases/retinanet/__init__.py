"""RetinaNet R50-FPN on COCO2017: the seed's case (FlagPerf's retinanet benchmark).

Written against the public case API (:mod:`chipbench.case`) alone, and touches devices only
through ``ctx`` (the vendor's hooks), so it runs unchanged on every vendor.
"""

from pathlib import Path
from typing import Any, Dict, List, Tuple

from chipbench.case import (
    PRECISIONS,
    Case,
    Config,
    RunContext,
    UserError,
    load_yaml,
    read_checkpoint,
    shown,
)

HERE = Path(__file__).resolve().parent

MEMORY_SETTINGS = "model.min_size/model.max_size or train.batch_size"
"""The settings that make a training step's memory smaller."""


def resized_batches(config: Config) -> str:
    """What a training step holds in memory, in the settings' words."""
    return "batches of {} image(s) resized to {}-{} px".format(
        config["train"]["batch_size"], config["model"]["min_size"], config["model"]["max_size"])


class RetinaNetCase(Case):
    name = "retinanet"
    title = "RetinaNet R50-FPN, COCO2017 bbox mAP"
    config_dir = HERE / "configs"
    metric_name = "mAP"
    sample_unit = "images"
    fix_hp_keys = {"train.batch_size": "bs", "train.lr": "lr", "train.epochs": "epochs",
                   "train.lr_steps": "lr_steps", "train.momentum": "momentum",
                   "train.weight_decay": "wd", "train.warmup_iters": "warmup_iters",
                   "train.clip_grad_norm": "clip_grad_norm"}
    packages = ("torchvision", "pycocotools", "faster-coco-eval")

    def overlays(self, config: Config) -> List[Tuple[str, Config]]:
        if config["data"]["dir"] is None:
            path = self.config_dir / "embedded.yaml"
            return [(str(path), load_yaml(path))]
        return []

    def validate(self, config: Config, precisions: List[str]) -> None:
        train, data, synthetic = config["train"], config["data"], config["data"]["synthetic"]
        positive = {"train.batch_size": train["batch_size"], "train.lr": train["lr"],
                    "train.epochs": train["epochs"], "eval.every": config["eval"]["every"],
                    "eval.first_epoch": config["eval"]["first_epoch"],
                    "train.core_every": train["core_every"],
                    "eval.batch_size": config["eval"]["batch_size"],
                    "model.min_size": config["model"]["min_size"],
                    "model.max_size": config["model"]["max_size"],
                    "run.monitor_interval_s": config["run"]["monitor_interval_s"],
                    "run.timeout_s": config["run"]["timeout_s"],
                    "data.synthetic.train_images": synthetic["train_images"],
                    "data.synthetic.val_images": synthetic["val_images"]}
        for key, value in positive.items():
            if value <= 0:
                raise UserError("{} must be positive, not {}".format(key, value),
                                "set --set {}=<a positive number>".format(key))
        if data["dir"] is not None and (not isinstance(data["dir"], str) or not data["dir"]):
            raise UserError("data.dir must be a folder path or null, not {}".format(
                shown(data["dir"])), "set --data-dir /path/to/coco2017, or leave it out for "
                                     "the embedded set")
        ranges = {"train.momentum": (train["momentum"], 0.0, 1.0),
                  "train.weight_decay": (train["weight_decay"], 0.0, 1.0),
                  "train.warmup_factor": (train["warmup_factor"], 1e-12, 1.0),
                  "train.lr_gamma": (train["lr_gamma"], 1e-12, 1.0),
                  "train.seed": (train["seed"], 0, 2**32 - 1),
                  "data.synthetic.seed": (synthetic["seed"], 0, 2**32 - 1),
                  "model.min_size": (config["model"]["min_size"], 64, 10**6),
                  "model.max_size": (config["model"]["max_size"], 64, 10**6),
                  "run.monitor_interval_s": (config["run"]["monitor_interval_s"], 0.01, 3600),
                  "run.timeout_s": (config["run"]["timeout_s"], 1, 7 * 86400),
                  # torchvision's range; beyond these, an allocation or a loop of that size
                  "model.trainable_backbone_layers":
                      (config["model"]["trainable_backbone_layers"], 0, 5),
                  "data.aspect_ratio_group_factor": (data["aspect_ratio_group_factor"], -1, 100),
                  "data.synthetic.image_size": (synthetic["image_size"], 32, 4096),
                  "data.synthetic.train_images": (synthetic["train_images"], 1, 10**6),
                  "data.synthetic.val_images": (synthetic["val_images"], 1, 10**6)}
        for key, (value, low, high) in ranges.items():
            if not low <= value <= high:
                raise UserError("{} must lie between {:g} and {:g}, not {}".format(
                    key, low, high, shown(value)), "fix the value")
        workers = data["num_workers"]
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool)
                                    or not 0 <= workers <= 1024):
            raise UserError("data.num_workers must be a count in 0..1024 or null, not {}".format(
                shown(workers)), "set --set data.num_workers=0 (or 2, ...), or null to let the vendor "
                          "choose from the core count")
        non_negative = {"train.max_iters":
                        train["max_iters"], "train.warmup_iters": train["warmup_iters"],
                        "train.throughput_skip_iters": train["throughput_skip_iters"],
                        "train.clip_grad_norm": train["clip_grad_norm"]}
        for key, value in non_negative.items():
            if value < 0:
                raise UserError("{} must not be negative, not {}".format(key, value),
                                "set --set {}=0 or more".format(key))
        if not 0.0 <= data["hflip"] <= 1.0 or not 0.0 <= config["target"]["mAP"] <= 1.0:
            raise UserError("data.hflip and target.mAP must lie between 0 and 1", "fix the value")
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in train["lr_steps"]):
            raise UserError("train.lr_steps must be epoch numbers (positive integers)",
                            "e.g. --set 'train.lr_steps=[16,22]'")
        if config["eval"]["backend"] not in ("auto", "pycocotools", "faster_coco_eval"):
            raise UserError("eval.backend must be auto, pycocotools or faster_coco_eval",
                            "fix the value")
        precision = train["precision"]
        if precision not in PRECISIONS:
            raise UserError("unknown precision '{}'".format(precision),
                            "use one of {}".format(", ".join(PRECISIONS)))
        if precision not in precisions:
            raise UserError("precision {} is not supported by this vendor on this machine".format(
                precision), "use one of {} (`core info` shows the vendor's report)".format(
                ", ".join(precisions)))

    def prepare(self, config: Config) -> Dict[str, Any]:
        from chipbench.cases.retinanet.data import check_data_dir
        from chipbench.cases.retinanet.model import resolve_backbone_weights
        from chipbench.cases.retinanet.synthetic import annotated_images, ensure_synthetic_coco

        data = config["data"]
        if data["dir"] is None:
            s = data["synthetic"]
            root = ensure_synthetic_coco(s["train_images"], s["val_images"], s["image_size"],
                                         s["seed"])
            # every 16th generated image is empty, and training keeps only annotated images
            note = ("Data: the embedded synthetic COCO-format set ({} train images generated, {} "
                    "with shapes and trained on / {} val images of {} px: coloured shapes on "
                    "noise), not COCO2017; its figures are not comparable with COCO results."
                    ).format(s["train_images"], annotated_images(s["train_images"]),
                             s["val_images"], s["image_size"])
            dataset = "synthetic shapes (embedded, COCO format)"
        else:
            root = Path(data["dir"])
            check_data_dir(root)
            note, dataset = "", "COCO2017"
        weights = resolve_backbone_weights(config["model"]["backbone_weights"])
        return {"data_dir": str(root), "synthetic": data["dir"] is None, "dataset": dataset,
                "dataset_note": note, "backbone_weights_path": str(weights) if weights else None}

    def general_rows(self, config: Config, prepared: Dict[str, Any], hardware_label: str
                     ) -> List[Tuple[str, str, str]]:
        return [
            ("任务类别 task", "目标检测 object detection", ""),
            ("模型 model", "retinanet (R50-FPN)", "torchvision retinanet_resnet50_fpn"),
            ("数据集 dataset", prepared.get("dataset", "COCO2017"), ""),
            ("数据精度 precision", config["train"]["precision"], "fp32/amp/fp16/bf16"),
            ("单卡批尺寸 bs", str(config["train"]["batch_size"]), "local batch size"),
            ("超参修改 fix_hp", "see performance table", "vs. the case defaults"),
            ("硬件设备简称 hardware", hardware_label, ""),
            ("硬件存储使用 mem", "see performance table",
             "peak used/total GiB (its source below the table)"),
            ("端到端时间 e2e_time", "see performance table", "whole run, s"),
            ("总吞吐量 p_whole", "see performance table", "images / (train + eval time)"),
            ("训练吞吐量 p_train", "see performance table", "images / train time"),
            ("计算吞吐量 p_core", "see performance table", "images / fwd+bwd+step time"),
            ("训练结果 mAP", "see performance table", "COCO bbox AP@[.50:.95]"),
            ("额外修改项 extra", "none", ""),
        ]

    def check_resume(self, run_dir: Path) -> None:
        """Refuse an unreadable, unsafe or altered checkpoint before anything is written."""
        read_checkpoint(run_dir)

    def memory_hint(self, config: Config) -> Tuple[str, str]:
        """What failed to fit in memory, and the settings that make it smaller."""
        return resized_batches(config), MEMORY_SETTINGS

    def target(self, config: Config) -> Any:
        return config["target"]["mAP"]

    def run(self, ctx: RunContext) -> Dict[str, Any]:
        from chipbench.cases.retinanet.train import train_and_evaluate

        return train_and_evaluate(ctx)


CASE = RetinaNetCase()
