"""The typed record of ``spec.json``, read in one place (``from_json``: validating, one line
naming the file for whatever it refuses) and written in one (``to_json``); ``result.json`` and
``progress.json`` have theirs in :mod:`chipbench.run.resultrecord`."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from chipbench.errors import UserError

SPEC_FIX = "restore the spec.json that core run wrote, or start a new run"


@dataclass(frozen=True)
class RunSpec:
    """``spec.json``: what every worker of a run runs. ``core run`` writes it before the workers
    start (and again on each resume); the workers and ``--resume`` read it."""

    case: str
    vendor: str
    config: Dict[str, Any]
    topology: Dict[str, Any]
    prepared: Dict[str, Any] = field(default_factory=dict)
    """What the case's ``prepare`` found on the launching node (data paths, counts)."""
    hardware: Dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    """Whether this attempt continues an earlier one from its checkpoint."""
    profile: bool = False
    """Whether the workers record a few iterations with torch.profiler (``core run --profile``)."""

    FIELDS = {"case": str, "vendor": str, "config": dict, "topology": dict, "prepared": dict,
              "hardware": dict, "resume": bool, "profile": bool}
    REQUIRED = ("case", "vendor", "config", "topology")

    @classmethod
    def from_json(cls, data: Any, source: Path) -> "RunSpec":
        """The spec ``data`` read from ``source``; a field missing or of the wrong type is one
        line naming the file and the fields."""
        if not isinstance(data, dict):
            raise UserError("{} lacks a valid {} (it holds no JSON object)".format(
                source, ", ".join(cls.REQUIRED)), SPEC_FIX)
        bad: List[str] = [name for name, kind in cls.FIELDS.items()
                          if (name in cls.REQUIRED or name in data)
                          and type(data.get(name)) is not kind]
        if bad:
            raise UserError("{} lacks a valid {}".format(source, ", ".join(bad)), SPEC_FIX)
        return cls(**{name: data[name] for name in cls.FIELDS if name in data})

    def to_json(self) -> Dict[str, Any]:
        """The JSON object ``spec.json`` holds."""
        return {name: getattr(self, name) for name in self.FIELDS}
