"""The typed facade over the chosen vendor's device hooks.

Every call checks what the vendor returned; a hook that raises or returns the wrong type becomes a
one-line :class:`chipbench.errors.PluginError` naming the vendor and the hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from chipbench.errors import PluginError, UserError, attribution
from chipbench.host.contract import CHECK, LOSS_SCALED_PRECISIONS, PRECISIONS, TIME_BOUNDED_HOOKS
from chipbench.host.manager import PluginHost
from chipbench.records import HardwareId, MemoryInfo, VendorInfo
from chipbench.util.text import shown

if TYPE_CHECKING:
    import torch



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
    return [name for name in backend_names(backend) if name not in known], known


def backend_names(backend: str) -> List[str]:
    """The backend names of a ``collective_backend`` answer as ``init_process_group`` reads it:
    the whole answer, or with a ``:`` the part after it in each comma-separated pair; lower
    case (torch's ``Backend`` lowers them), spaces kept (torch keeps them, so ``'gloo '`` is
    no backend torch knows)."""
    if ":" not in backend:
        return [backend.lower()]
    return [part.split(":", 1)[-1].lower() for part in backend.split(",")]


BACKEND_FORM = ("one backend name ('gloo') or device:backend pairs ('cpu:gloo,<device type>:"
                "<backend>', each device type once), without spaces")
"""The forms of a ``collective_backend`` answer that ``init_process_group`` parses."""


def backend_form_ok(backend: str) -> bool:
    """Whether ``backend`` has a form of :data:`BACKEND_FORM`: no empty name, no space anywhere,
    no pair without exactly one ``:``, no device type twice (torch fails on each only inside
    every worker's ``init_process_group``, or looks the name up with its spaces)."""
    if not backend or any(c.isspace() for c in backend):
        return False
    if ":" not in backend:
        return "," not in backend
    pairs = [part.split(":") for part in backend.split(",")]
    if any(len(pair) != 2 or not pair[0] or not pair[1] for pair in pairs):
        return False
    return len({pair[0].lower() for pair in pairs}) == len(pairs)


def unavailable_backends(backend: str) -> List[str]:
    """The backends named in ``backend`` that this torch is built without, by its
    ``torch.distributed.is_<name>_available()`` (MPI, NCCL, Gloo, UCC, ...); a backend without
    such a function (one a plugin registers) is taken as available."""
    import torch.distributed as dist

    missing = []
    for name in dict.fromkeys(backend_names(backend)):
        check = getattr(dist, "is_{}_available".format(name), None) if name.isidentifier() \
            else None
        try:
            available = check() if callable(check) else True
        except Exception:  # noqa: BLE001 - a probe that fails says "not available"
            available = False
        if available is False:
            missing.append(name)
    return missing


HOOK_FIX = ("report it to the plugin's authors, or choose another --vendor (rerun with --debug for "
            "the traceback)")
"""The fix of a vendor hook that raised."""


class Device:
    """The chosen vendor's devices, one typed method per device hook. Every answer is held to
    its rule in :mod:`chipbench.host.contract` (the rules ``core doctor`` checks too)."""

    def __init__(self, host: PluginHost, info: VendorInfo) -> None:
        self.host = host
        self.info = info
        self.observer_calls: Optional[Callable[[str, Callable[[], Any]], Any]] = None
        """While a run's monitor bounds them in time, what calls the hooks of
        :data:`chipbench.host.contract.TIME_BOUNDED_HOOKS`: ``observer_calls(hook, call)`` returns
        ``call()``'s answer or raises :class:`chipbench.errors.HookTimedOut`."""

    @property
    def vendor(self) -> str:
        return self.info.name

    def _call(self, hook: str, **kwargs: Any) -> Any:
        """Call device hook ``hook`` of the chosen vendor and check the answer against its rule."""
        caller = getattr(self.host.pm.hook, hook)
        bounded = self.observer_calls
        # chipbench's own errors pass as they are: a UserError names a setting of the user's
        # (CHIPBENCH_CPU_THREADS=x), a HookTimedOut a hook that did not answer in time. No
        # context manager here: this runs twice per timed training step
        try:
            if bounded is None or hook not in TIME_BOUNDED_HOOKS:
                result = caller(**kwargs)
            else:
                result = bounded(hook, lambda: caller(**kwargs))
        except BaseException as exc:  # noqa: B902 - attribution() lets the user's stop pass
            error = attribution(exc, "vendor '{}'".format(self.vendor), "hook " + hook,
                                HOOK_FIX)
            if error is exc:
                raise
            raise error from exc
        problem = CHECK[hook](result, self.info)
        if problem:
            raise self._wrong(hook, result, problem)
        return result

    def _wrong(self, hook: str, result: Any, expected: str) -> PluginError:
        error = PluginError("vendor '{}' returned {} from hook {}, expected {}".format(
            self.vendor, shown(result), hook, expected),
            "report it to the plugin's authors, or choose another --vendor")
        error.hook = hook  # type: ignore[attr-defined]  # which rule broke, for the kit
        return error

    # backend and identity
    def init_backend(self, local_rank: int = 0) -> torch.device:
        """Prepare and return the device of ``local_rank`` (sets it current, applies switches)."""
        return self._call("device_init_backend", local_rank=local_rank)

    def count(self) -> int:
        """How many devices this process sees."""
        return self._call("device_count")

    def name(self, index: int = 0) -> str:
        """Marketing name of visible device ``index``."""
        return self._call("device_name", index=index)

    def hardware_id(self) -> HardwareId:
        """Table label and config tag of the hardware."""
        return self._call("hardware_id")

    # synchronisation and memory
    def synchronize(self, device: torch.device) -> None:
        """Wait for all work queued on ``device``."""
        self._call("device_synchronize", device=device)

    def memory_query(self, device: torch.device) -> MemoryInfo:
        """Device-wide used/total memory of ``device``."""
        return self._call("device_memory_query", device=device)

    def memory_peak(self, device: torch.device) -> int:
        """This process's allocator peak on ``device`` in bytes."""
        return self._call("device_memory_peak", device=device)

    def memory_reset_peak(self, device: torch.device) -> None:
        """Reset the allocator peak."""
        self._call("device_memory_reset_peak", device=device)

    # collectives, capabilities, environment, monitoring
    def collective_backend(self) -> str:
        """Backend name for ``torch.distributed.init_process_group`` (its form checked; see
        :meth:`process_group_backend` for what only a process about to use it can check)."""
        return self._call("collective_backend")

    def process_group_backend(self) -> str:
        """``collective_backend()``, refused in one line unless ``init_process_group`` can take
        it: one of :data:`BACKEND_FORM`, names torch.distributed knows, and built into this torch
        (``is_mpi_available()`` and its like). Call it after :meth:`init_backend`: a vendor's
        extension registers its backend on import."""
        backend = self.collective_backend()  # its form is the hook's rule, checked there
        unknown, known = unknown_backends(backend)
        if unknown:
            raise self._wrong("collective_backend", backend, BACKEND_EXPECTED.format(
                ", ".join(known)))
        missing = unavailable_backends(backend)
        if missing:
            import torch

            raise PluginError(
                "vendor '{}' returned {} from hook collective_backend, but this torch ({}) is "
                "built without {} (torch.distributed.{}() is False)".format(
                    self.vendor, shown(backend), torch.__version__, ", ".join(missing),
                    "(), ".join("is_{}_available".format(name) for name in missing)),
                "install a torch built with it, or ask the plugin's authors for a backend this "
                "torch has (`core info` shows the vendor's answer)")
        return backend

    def visible_devices_env(self) -> str:
        """Name of the env var that restricts visible devices ('' when none)."""
        return self._call("visible_devices_env")

    def supported_precisions(self) -> List[str]:
        """Precisions this vendor trains in, in the order of :data:`chipbench.host.contract.PRECISIONS`."""
        result = self._call("supported_precisions")
        return [p for p in PRECISIONS if p in result]

    def environment_report(self) -> Dict[str, Any]:
        """Hardware and software facts (the seed's environment section); the software versions
        are chipbench's own reading, the rest is the vendor's."""
        from chipbench.measure.environment import software_report

        return dict(self._call("environment_report"), **software_report())  # ours win

    # run switches (optional hooks: a default when the vendor has none)
    def implements(self, hook: str) -> bool:
        """Whether the chosen vendor implements ``hook`` (for the optional ones)."""
        return bool(getattr(self.host.pm.hook, hook).get_hookimpls())

    def configure(self, device: torch.device, deterministic: bool, autotune: bool) -> None:
        """Apply the run's determinism and autotuning switches to the vendor's libraries
        (nothing when the vendor has no ``device_configure``)."""
        if self.implements("device_configure"):
            self._call("device_configure", device=device, deterministic=deterministic,
                       autotune=autotune)

    def grad_scaler(self, device: torch.device, precision: str) -> Optional[Any]:
        """The loss scaler for ``precision`` (None where none is needed): the vendor's, else
        ``torch.amp.GradScaler(device.type)``."""
        if precision not in LOSS_SCALED_PRECISIONS:
            return None
        if self.implements("device_grad_scaler"):
            scaler = self._call("device_grad_scaler", device=device, precision=precision)
            if scaler is not None:
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
        return self._call("device_sample", device=device)

    def peak_flops(self, device: "torch.device", precision: str) -> Optional[float]:  # noqa: F821
        """Peak FLOP/s of one device in ``precision`` (optional hook); None when the vendor
        does not implement it or cannot tell."""
        result = self._call("device_peak_flops", device=device, precision=precision)
        return None if result is None else float(result)

    def loader_workers(self, configured: Optional[int], local_world_size: int) -> Optional[int]:
        """Loader workers per rank chosen by the vendor (it budgets its host threads for them);
        None when the vendor leaves the choice to the caller."""
        return self._call("device_loader_workers", configured=configured,
                          local_world_size=local_world_size)
