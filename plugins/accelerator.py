"""The generic vendor: any device that PyTorch's device-generic layer ``torch.accelerator`` drives.

Every in-tree and out-of-tree torch backend implements ``torch.accelerator`` (Intel XPU, Apple
MPS, Ascend NPU through PrivateUse1, Gaudi HPU, MTIA, NVIDIA and AMD GPUs as ``cuda``), so a chip
whose vendor ships a PyTorch backend runs chipbench without a chipbench plugin: device count and
index, synchronisation and the allocator's memory figures through ``torch.accelerator``,
collectives through ``torch.distributed``'s default backend for the device type, precisions by
probing autocast on the device. What it cannot know is what a dedicated plugin adds: the
management tool's samples (util, power, temperature), peak FLOP/s for the MFU, tuned configs.

It stands back: priority 1, below every dedicated vendor (the built-in ones, and any installed
plugin of priority above 1) and above the CPU (0). On a torch without ``torch.accelerator`` (torch
2.0, the old stack) it is unavailable and says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from chipbench.hookspecs import hookimpl
from chipbench.measure.environment import installed_torch_version
from chipbench.plugins._tools import CUDA_TYPE_OWNERS, hardware_tag, torch_cuda_build_family
from chipbench.records import HardwareId, MemoryInfo, VendorInfo

if TYPE_CHECKING:
    import torch

NAME = "accelerator"
PRIORITY = 1
"""Above the cpu vendor (0), below every dedicated vendor: a dedicated plugin of the same device
type is chosen first wherever it is available."""

NO_DEVICE_TYPE = "none"
"""The ``device_type`` reported where torch names no accelerator."""

VISIBLE_ENVS = {
    "cuda": "CUDA_VISIBLE_DEVICES",
    "xpu": "ZE_AFFINITY_MASK",  # Intel's Level Zero runtime
    "npu": "ASCEND_RT_VISIBLE_DEVICES",  # Huawei's CANN runtime (torch_npu)
    "hpu": "HABANA_VISIBLE_MODULES",  # Intel Gaudi
}
"""The variable that restricts the visible devices, per device type where one is documented;
ROCm's torch (type ``cuda`` with ``torch.version.hip``) takes ``HIP_VISIBLE_DEVICES``."""

# each call the vendor needs: where to find it, in order of preference ("acc": torch.accelerator,
# "module": torch.get_device_module(type), the device type's own module such as torch.xpu)
CALLS: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "set_device": (("acc", "set_device_index"), ("acc", "set_device_idx"),
                   ("module", "set_device")),
    "synchronize": (("acc", "synchronize"), ("module", "synchronize")),
    "memory_info": (("acc", "get_memory_info"), ("module", "mem_get_info")),
    "memory_peak": (("acc", "max_memory_reserved"), ("module", "max_memory_reserved"),
                    ("acc", "max_memory_allocated"), ("module", "max_memory_allocated")),
    "reset_peak": (("acc", "reset_peak_memory_stats"), ("module", "reset_peak_memory_stats")),
}

PROBE_DTYPES = (("fp16", "float16", ("amp", "fp16")), ("bf16", "bfloat16", ("bf16",)))
"""Autocast dtypes probed on the device, and the precisions each one allows."""

_probed: Dict[Tuple[str, str], bool] = {}


# --------------------------------------------------------------------------------------------------
# what torch offers
# --------------------------------------------------------------------------------------------------


def accelerator_module() -> Optional[Any]:
    """``torch.accelerator``, or None on a torch that predates it."""
    import torch

    return getattr(torch, "accelerator", None)


def device_type() -> Optional[str]:
    """The device type ``torch.accelerator`` reports ("xpu", "cuda", ...), or None."""
    acc = accelerator_module()
    current = getattr(acc, "current_accelerator", None)
    if current is None:
        return None
    device = current()
    return None if device is None else str(device.type)


def _device_module(kind: str) -> Optional[Any]:
    import torch

    get = getattr(torch, "get_device_module", None)
    try:
        return get(kind) if get is not None else getattr(torch, kind, None)
    except (RuntimeError, AttributeError, ValueError):
        return None


def torch_call(what: str, kind: str) -> Optional[Callable[..., Any]]:
    """The function that does ``what`` (a key of :data:`CALLS`) for device type ``kind``."""
    places = {"acc": accelerator_module(), "module": _device_module(kind)}
    for place, name in CALLS[what]:
        function = getattr(places[place], name, None)
        if callable(function):
            return function
    return None


def _must(what: str, kind: str) -> Callable[..., Any]:
    function = torch_call(what, kind)
    if function is None:  # vendor_detect said unavailable: only a direct call lands here
        raise RuntimeError("this torch offers no {} for device type '{}'".format(what, kind))
    return function


def dedicated_owner(kind: str) -> str:
    """The built-in dedicated vendor that claims device type ``kind`` in this torch build, or
    "" (plugins installed through entry points are not known here; priority settles those)."""
    if kind != "cuda":
        return ""
    return CUDA_TYPE_OWNERS.get(torch_cuda_build_family(), "")


def _kind() -> str:
    return device_type() or NO_DEVICE_TYPE


def _device(index: int) -> torch.device:
    import torch

    return torch.device(_kind(), index)


# --------------------------------------------------------------------------------------------------
# hooks
# --------------------------------------------------------------------------------------------------


@hookimpl
def vendor_detect() -> VendorInfo:
    import torch

    version = installed_torch_version() or torch.__version__
    acc = accelerator_module()
    if acc is None:
        return VendorInfo(NAME, NO_DEVICE_TYPE, PRIORITY, False,
                          "torch {} has no torch.accelerator (this torch predates it)".format(
                              version))
    kind = device_type()
    if kind is None:
        return VendorInfo(NAME, NO_DEVICE_TYPE, PRIORITY, False,
                          "no accelerator: torch {} reports none (a CPU-only build)".format(
                              version))
    missing = [what for what in CALLS if torch_call(what, kind) is None]
    if missing or not callable(getattr(acc, "device_count", None)):
        return VendorInfo(NAME, kind, PRIORITY, False,
                          "torch {} offers no {} for device type '{}'".format(
                              version, ", ".join(missing or ["device_count"]), kind))
    count = int(acc.device_count())
    if count == 0:
        return VendorInfo(NAME, kind, PRIORITY, False,
                          "no accelerator: torch {} is built for '{}' but sees no such device"
                          .format(version, kind))
    owner = dedicated_owner(kind)
    stands_back = ("the built-in '{}' vendor claims this build".format(owner) if owner else
                   "a dedicated vendor of '{}' is chosen first".format(kind))
    return VendorInfo(NAME, kind, PRIORITY, True,
                      "{} '{}' device(s) through torch.accelerator, torch {}; priority {}: {}"
                      .format(count, kind, version, PRIORITY, stands_back), generic=True)


@hookimpl
def device_init_backend(local_rank: int) -> torch.device:
    device = _device(local_rank)
    _must("set_device", device.type)(local_rank)
    return device


@hookimpl
def device_count() -> int:
    acc = accelerator_module()
    return int(acc.device_count()) if acc is not None else 0


def _one_line(text: Any) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())[:120]


@hookimpl
def device_name(index: int) -> str:
    kind = _kind()
    module = _device_module(kind)
    for function in ("get_device_name", "get_device_properties"):
        call = getattr(module, function, None)
        if not callable(call):
            continue
        try:
            answer = call(index)
        except Exception:  # a backend without this query: try the next
            continue
        name = _one_line(getattr(answer, "name", answer))
        if name:
            return name
    return "{} device {}".format(kind, index)


@hookimpl
def hardware_id() -> HardwareId:
    tag = hardware_tag(device_name(0), "".join(c for c in _kind().upper() if c.isalnum()) or "ACC")
    return HardwareId(label=tag, config_tag=tag)


@hookimpl
def device_synchronize(device: torch.device) -> None:
    _must("synchronize", device.type)(device)


@hookimpl
def device_memory_query(device: torch.device) -> MemoryInfo:
    free, total = _must("memory_info", device.type)(device)
    total = int(total)
    used = min(max(total - int(free), 0), total)
    return MemoryInfo(used_bytes=used, total_bytes=total,
                      source="torch.accelerator.get_memory_info")


@hookimpl
def device_memory_peak(device: torch.device) -> int:
    return int(_must("memory_peak", device.type)(device))


@hookimpl
def device_memory_reset_peak(device: torch.device) -> None:
    _must("reset_peak", device.type)(device)


@hookimpl
def collective_backend() -> str:
    return default_backend(_kind())


def default_backend(kind: str) -> str:
    """``torch.distributed``'s default backend for device type ``kind`` ("nccl" for cuda, "xccl"
    for xpu, "hccl" where torch_npu registered it) where this torch has it built in, else
    "gloo" (which also serves the CPU-side objects of every run)."""
    import torch.distributed as dist

    if not dist.is_available():
        return "gloo"
    mapping = getattr(getattr(dist, "Backend", None), "default_device_backend_map", {}) or {}
    backend = mapping.get(kind)
    if not isinstance(backend, str) or not backend:
        return "gloo"
    built = getattr(dist, "is_{}_available".format(backend), None)
    if callable(built) and not built():
        return "gloo"
    return backend


@hookimpl
def visible_devices_env() -> str:
    import torch

    kind = _kind()
    if kind == "cuda" and getattr(torch.version, "hip", None):
        return "HIP_VISIBLE_DEVICES"
    return VISIBLE_ENVS.get(kind, "")


def autocast_runs(kind: str, dtype_name: str) -> bool:
    """Whether a small convolution's forward and backward really run in autocast of
    ``dtype_name`` on device type ``kind`` (the output has that dtype, the gradient is finite);
    probed once per process, with the random state left as it was."""
    key = (kind, dtype_name)
    if key not in _probed:
        import torch

        ok = False
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            try:
                dtype = getattr(torch, dtype_name)
                device = torch.device(kind)
                conv = torch.nn.Conv2d(3, 4, 3).to(device)
                with torch.autocast(device_type=kind, dtype=dtype):
                    out = conv(torch.ones(1, 3, 8, 8, device=device))
                out.float().sum().backward()
                _must("synchronize", kind)(device)
                grad = conv.weight.grad
                ok = out.dtype == dtype and grad is not None and bool(torch.isfinite(grad).all())
            except Exception:  # the backend has no such kernel: the precision is not offered
                ok = False
        _probed[key] = ok
    return _probed[key]


@hookimpl
def supported_precisions() -> List[str]:
    kind = _kind()
    precisions = ["fp32"]
    for _, dtype_name, allowed in PROBE_DTYPES:
        if autocast_runs(kind, dtype_name):
            precisions.extend(allowed)
    return precisions


def runtime_version(kind: str) -> str:
    """The backend's version as torch exposes it ("CUDA 12.4", "HIP 6.2.41133", "XPU 20250101"),
    or "" where it does not."""
    import torch

    if kind == "cuda" and getattr(torch.version, "hip", None):
        return "HIP {}".format(torch.version.hip)
    version = getattr(torch.version, kind, None)
    return "{} {}".format(kind.upper(), version) if isinstance(version, str) and version else ""


@hookimpl
def environment_report() -> Dict[str, Any]:
    kind = _kind()
    report: Dict[str, Any] = {"accelerator_device_type": kind,
                              "device_model": device_name(0), "device_count": device_count()}
    runtime = runtime_version(kind)
    if runtime:
        report["runtime_version"] = runtime
    props = getattr(_device_module(kind), "get_device_properties", None)
    try:
        total = getattr(props(0), "total_memory", None) if callable(props) else None
    except Exception:  # a backend without device properties
        total = None
    if isinstance(total, int) and total > 0:
        report["device_memory_gib"] = round(total / 2**30, 1)
    return report


@hookimpl
def device_sample(device: torch.device) -> Dict[str, float]:
    memory = device_memory_query(device)  # torch has no util, power or temperature to give
    return {"memory_used_bytes": float(memory.used_bytes)}
