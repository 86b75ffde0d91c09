"""The typed facade over the chosen vendor's device hooks.

Every call checks what the vendor returned; a hook that raises or returns the wrong type becomes a
one-line :class:`chipbench.errors.PluginError` naming the vendor and the hook.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Type, Union

from chipbench.config import shown
from chipbench.errors import PluginError, UserError, plugin_fault
from chipbench.hookspecs import PRECISIONS, sample_problem
from chipbench.manager import PluginHost, describe_exception
from chipbench.metrics import is_count
from chipbench.records import HardwareId, MemoryInfo, VendorInfo

if TYPE_CHECKING:
    import torch

LOSS_SCALED_PRECISIONS = ("amp", "fp16")
SCALER_METHODS = ("scale", "unscale_", "step", "update")
"""What the training step calls on a loss scaler (torch.amp.GradScaler's interface)."""
PEAK_FLOPS_RANGE = (1e6, 1e18)
"""Peak FLOP/s one device may claim: from a megaFLOP/s (an emulated precision on an old CPU is
still above it) to an exaFLOP/s (a thousand times today's largest chips)."""


BACKEND_EXPECTED = ("a backend torch.distributed knows ({}), or one the plugin registers with "
                    "torch.distributed.Backend.register_backend")
"""What a ``collective_backend`` answer must be; formatted with the backends torch knows."""


def unknown_backends(backend: str) -> Tuple[List[str], List[str]]:
    """The backend names in ``backend`` that torch.distributed does not know (a name such as
    ``gloo``, or a per-device list such as ``cpu:gloo,<device type>:<backend>``), and the names
    it knows.
    ``Backend(name)`` accepts any string; a typo would only fail inside every worker's
    ``init_process_group``."""
    import torch.distributed as dist

    # backend_list (torch 2.1+), and the upper-case attributes and _plugins keys that
    # register_backend sets (torch 2.0 sets the attribute to the upper-case name)
    attributes = [value for key, value in vars(dist.Backend).items()
                  if key.isupper() and isinstance(value, str)]
    listed = list(getattr(dist.Backend, "backend_list", [])) + attributes + list(
        getattr(dist.Backend, "_plugins", {}))
    known = [name for name in dict.fromkeys(str(n).lower() for n in listed)
             if name not in ("undefined", "fake", "tcp")]
    names = [part.split(":", 1)[-1].strip().lower() for part in backend.split(",")]
    return [name for name in names if name not in known], known


class Device:
    """The chosen vendor's devices, one typed method per device hook."""

    def __init__(self, host: PluginHost, info: VendorInfo) -> None:
        self.host = host
        self.info = info

    @property
    def vendor(self) -> str:
        return self.info.name

    def _call(self, hook: str, expected: Union[Type, Tuple[Type, ...], None], **kwargs: Any) -> Any:
        caller = getattr(self.host.pm.hook, hook)
        try:
            result = caller(**kwargs)
        except UserError:  # the plugin names a setting of the user's (CHIPBENCH_CPU_THREADS=x)
            raise
        except BaseException as exc:  # noqa: B902 - a plugin's sys.exit() must not end chipbench
            if not plugin_fault(exc):
                raise
            raise PluginError(
                "vendor '{}' failed in hook {}: {}".format(self.vendor, hook, describe_exception(exc)),
                "report it to the plugin's authors, or choose another --vendor "
                "(rerun with --debug for the traceback)",
            ) from exc
        if expected is not None and not isinstance(result, expected):
            raise self._wrong(hook, result, _type_names(expected))
        return result

    def _wrong(self, hook: str, result: Any, expected: str) -> PluginError:
        return PluginError("vendor '{}' returned {} from hook {}, expected {}".format(
            self.vendor, shown(result), hook, expected),
            "report it to the plugin's authors, or choose another --vendor")

    # backend and identity
    def init_backend(self, local_rank: int = 0) -> torch.device:
        """Prepare and return the device of ``local_rank`` (sets it current, applies switches)."""
        import torch

        device = self._call("device_init_backend", torch.device, local_rank=local_rank)
        if device.type != self.info.device_type:
            raise self._wrong("device_init_backend", device, "a device of type '{}' (its "
                              "vendor_detect's device_type)".format(self.info.device_type))
        return device

    def count(self) -> int:
        """How many devices this process sees."""
        return self._call("device_count", int)

    def name(self, index: int = 0) -> str:
        """Marketing name of visible device ``index``."""
        return self._call("device_name", str, index=index)

    def hardware_id(self) -> HardwareId:
        """Table label and config tag of the hardware."""
        hardware = self._call("hardware_id", HardwareId)
        if not all(type(v) is str and v.strip() and "\n" not in v
                   for v in (hardware.label, hardware.config_tag)):
            raise self._wrong("hardware_id", hardware, "a one-line text label and config_tag")
        return hardware

    # synchronisation and memory
    def synchronize(self, device: torch.device) -> None:
        """Wait for all work queued on ``device``."""
        self._call("device_synchronize", None, device=device)

    def memory_query(self, device: torch.device) -> MemoryInfo:
        """Device-wide used/total memory of ``device``."""
        info = self._call("device_memory_query", MemoryInfo, device=device)
        if not (is_count(info.used_bytes) and is_count(info.total_bytes)) or info.total_bytes == 0 \
                or info.used_bytes > info.total_bytes or type(info.source) is not str:
            raise self._wrong("device_memory_query", info, "byte counts with 0 <= used <= total "
                              "and total > 0, and a text source")
        return info

    def memory_peak(self, device: torch.device) -> int:
        """This process's allocator peak on ``device`` in bytes."""
        peak = self._call("device_memory_peak", int, device=device)
        if not is_count(peak):
            raise self._wrong("device_memory_peak", peak, "a byte count >= 0")
        return peak

    def memory_reset_peak(self, device: torch.device) -> None:
        """Reset the allocator peak."""
        self._call("device_memory_reset_peak", None, device=device)

    # collectives, capabilities, environment, monitoring
    def collective_backend(self) -> str:
        """Backend name for ``torch.distributed.init_process_group``."""
        return self._call("collective_backend", str)

    def process_group_backend(self) -> str:
        """``collective_backend()``, refused in one line unless torch.distributed knows it. Call
        it after :meth:`init_backend`: a vendor's extension registers its backend on import."""
        backend = self.collective_backend()
        unknown, known = unknown_backends(backend)
        if unknown:
            raise self._wrong("collective_backend", backend, BACKEND_EXPECTED.format(
                ", ".join(known)))
        return backend

    def visible_devices_env(self) -> str:
        """Name of the env var that restricts visible devices ('' when none)."""
        return self._call("visible_devices_env", str)

    def supported_precisions(self) -> List[str]:
        """Precisions this vendor trains in, in the order of :data:`chipbench.hookspecs.PRECISIONS`."""
        result = self._call("supported_precisions", (list, tuple))
        unknown = [p for p in result if p not in PRECISIONS]
        if unknown:
            raise PluginError(
                "vendor '{}' reports unknown precisions {}".format(self.vendor, unknown),
                "supported_precisions may only name {}".format(", ".join(PRECISIONS)),
            )
        return [p for p in PRECISIONS if p in result]

    def environment_report(self) -> Dict[str, Any]:
        """Hardware and software facts (the seed's environment section); the software versions
        are chipbench's own reading, the rest is the vendor's."""
        from chipbench.environment import software_report

        report = self._call("environment_report", dict)
        try:
            json.dumps(report, allow_nan=False)
            plain = all(isinstance(key, str) for key in report)
        except (TypeError, ValueError, RecursionError):
            plain = False
        if not plain:
            raise self._wrong("environment_report", report, "a dict of text keys and strict "
                              "JSON values (no NaN, no objects)")
        return dict(report, **software_report())  # chipbench's own reading wins

    # run switches (optional hooks: a default when the vendor has none)
    def implements(self, hook: str) -> bool:
        """Whether the chosen vendor implements ``hook`` (for the optional ones)."""
        return bool(getattr(self.host.pm.hook, hook).get_hookimpls())

    def configure(self, device: torch.device, deterministic: bool, autotune: bool) -> None:
        """Apply the run's determinism and autotuning switches to the vendor's libraries
        (nothing when the vendor has no ``device_configure``)."""
        if self.implements("device_configure"):
            self._call("device_configure", type(None), device=device,
                       deterministic=deterministic, autotune=autotune)

    def grad_scaler(self, device: torch.device, precision: str) -> Optional[Any]:
        """The loss scaler for ``precision`` (None where none is needed): the vendor's, else
        ``torch.amp.GradScaler(device.type)``."""
        if precision not in LOSS_SCALED_PRECISIONS:
            return None
        if self.implements("device_grad_scaler"):
            scaler = self._call("device_grad_scaler", None, device=device, precision=precision)
            if scaler is not None:
                if not all(callable(getattr(scaler, m, None)) for m in SCALER_METHODS):
                    raise self._wrong("device_grad_scaler", scaler, "None or a loss scaler with "
                                      "methods " + ", ".join(SCALER_METHODS))
                return scaler
        import torch

        amp = getattr(torch, "amp", None)
        if amp is not None and hasattr(amp, "GradScaler"):
            return amp.GradScaler(device.type)
        raise UserError(
            "{} training on device type '{}' needs torch 2.3 or later, or a loss scaler from "
            "vendor '{}' (this is torch {})".format(precision, device.type, self.vendor,
                                                     torch.__version__),
            "use fp32 or bf16, or a newer torch")

    def sample(self, device: torch.device) -> Dict[str, float]:
        """One monitoring sample (util, power, temperature) of ``device``."""
        sample = self._call("device_sample", dict, device=device)
        problem = sample_problem(sample)
        if problem:
            raise self._wrong("device_sample", sample, problem)
        return sample

    def peak_flops(self, device: "torch.device", precision: str) -> Optional[float]:  # noqa: F821
        """Peak FLOP/s of one device in ``precision`` (optional hook); None when the vendor
        does not implement it or cannot tell."""
        result = self._call("device_peak_flops", (int, float, type(None)), device=device,
                            precision=precision)
        if result is not None and not (is_count(result)
                                       and PEAK_FLOPS_RANGE[0] <= result <= PEAK_FLOPS_RANGE[1]):
            raise self._wrong("device_peak_flops", result, "FLOP/s from {:g} to {:g}, or None".format(
                *PEAK_FLOPS_RANGE))
        return None if result is None else float(result)
    # optional hooks (a vendor may leave them out)
    def loader_workers(self, configured: Optional[int], local_world_size: int) -> Optional[int]:
        """Loader workers per rank chosen by the vendor (it budgets its host threads for them);
        None when the vendor leaves the choice to the caller."""
        result = self._call("device_loader_workers", (int, type(None)), configured=configured,
                            local_world_size=local_world_size)
        if isinstance(result, bool) or (result is not None and not 0 <= result <= MAX_WORKERS):
            raise self._wrong("device_loader_workers", result,
                              "a count in 0..{}".format(MAX_WORKERS))
        return result


MAX_WORKERS = 1024
"""The most loader worker processes per rank a vendor may ask for."""


def _type_names(expected: Union[Type, Tuple[Type, ...]]) -> str:
    """``int or None`` for ``(int, NoneType)``."""
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)
