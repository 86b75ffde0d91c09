"""An example chipbench case from outside the core repository: three generated spirals, a small
MLP, held-out accuracy as the target. Installed on its own; found through the entry-point group
``chipbench.cases`` (``core cases`` lists it; ``core run spirals`` runs it).

Like every case it imports only the public case API (:mod:`chipbench.case`) and touches devices
only through ``ctx`` (the vendor's hooks), so it runs unchanged on every vendor, in one process or
many under torchrun. It needs no loader workers: its batches are slices of tensors already on the
device.
"""

from pathlib import Path
from typing import Any, Dict, List, Tuple

from chipbench.case import Case, Config, RunContext, UserError


class SpiralsCase(Case):
    name = "spirals"
    title = "Three spirals, MLP classifier, held-out accuracy"
    config_dir = Path(__file__).resolve().parent / "configs"
    metric_name = "accuracy"
    sample_unit = "points"
    fix_hp_keys = {"train.batch_size": "bs", "train.lr": "lr", "train.epochs": "epochs",
                   "model.hidden": "hidden"}

    def validate(self, config: Config, precisions: List[str]) -> None:
        for key in ("data.train_points", "data.val_points", "model.hidden", "train.batch_size",
                    "train.epochs"):
            section, field = key.split(".")
            if config[section][field] <= 0:
                raise UserError("{} must be positive".format(key), "set --set {}=<n>".format(key))
        if config["train"]["precision"] != "fp32":
            raise UserError("the spirals case trains in fp32 only", "drop --precision")

    def prepare(self, config: Config) -> Dict[str, Any]:
        data = config["data"]
        return {"dataset_note": "Data: {} training and {} held-out points of three spirals, "
                                "generated ({} turns, noise {}).".format(
                                    data["train_points"], data["val_points"], data["turns"],
                                    data["noise"])}

    def general_rows(self, config: Config, prepared: Dict[str, Any], hardware_label: str
                     ) -> List[Tuple[str, str, str]]:
        return [("task", "classification", "3 classes"),
                ("model", "MLP 2-{0}-{0}-3".format(config["model"]["hidden"]), ""),
                ("dataset", "three spirals (generated)", ""),
                ("bs", str(config["train"]["batch_size"]), "local batch size"),
                ("hardware", hardware_label, ""),
                ("result", "accuracy", "held-out points classified right")]

    def target(self, config: Config) -> Any:
        return config["target"]["accuracy"]

    def run(self, ctx: RunContext) -> Dict[str, Any]:
        from chipbench_spirals.train import train_and_evaluate

        return train_and_evaluate(ctx)


CASE = SpiralsCase()
