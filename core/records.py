"""Small frozen records that hooks return (vendor info, memory, hardware identity)."""

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class VendorInfo:
    """What ``vendor_detect`` answers: who the vendor is and whether it can run here.

    ``name`` is what ``--vendor`` takes; ``device_type`` the torch device type its devices use
    ("cpu", "cuda", ...); higher ``priority`` wins auto-detection; ``reason`` says why the vendor is
    (not) available, in words a user can act on.
    """

    name: str
    device_type: str
    priority: int
    available: bool
    reason: str = ""
    generic: bool = False
    """A vendor that serves any device of its type through torch's device-generic layer: it
    stands back wherever a dedicated vendor of that device type is available, whatever the
    priorities."""


@dataclass(frozen=True)
class MemoryInfo:
    """Device-wide memory as the vendor's management tool shows it, in bytes."""

    used_bytes: int
    total_bytes: int
    source: str = ""

    @property
    def used_gib(self) -> float:
        return self.used_bytes / 2**30

    @property
    def total_gib(self) -> float:
        return self.total_bytes / 2**30


@dataclass(frozen=True)
class HardwareId:
    """How results and configs name the hardware.

    ``label`` is the short name in result tables ("ACX1"); ``config_tag`` prefixes the
    hardware config files of a case ("X1" selects ``X1x1x8.yaml``).
    """

    label: str
    config_tag: str


@dataclass(frozen=True)
class PluginRecord:
    """A loaded (or broken) plugin as ``core vendors`` lists it."""

    name: str
    origin: str
    info: Optional[VendorInfo] = None
    error: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def broken(self) -> bool:
        return bool(self.error)
