"""Checks that start processes (:mod:`chipbench.conformance.probes`): the visible-devices variable
restricts what a child sees, and the collective backend all-reduces among processes."""

from chipbench.conformance.subject import CheckFailed, CheckSkipped, Subject, runs_work


@runs_work
def check_visible_devices(subject: Subject) -> str:
    """A child process started with the vendor's visible-devices variable set to '0' sees 1 device
    (where this process sees more than one: with one, it would see one anyway)."""
    from chipbench.conformance.probes import child_device_count

    name = subject.obeys("visible_devices_env")
    if not name:
        raise CheckSkipped("the vendor has no visible-devices variable")
    count = subject.count()
    if count < 2:
        raise CheckSkipped("cannot tell with one visible device whether {} restricts the "
                           "devices a process sees (run it where two or more are)".format(name))
    seen = child_device_count(subject.info.name, {name: "0"})
    if seen != 1:
        raise CheckFailed("a child with {}=0 to see 1 device".format(name), str(seen))
    return "a child with {}=0 sees 1 device (this process sees {})".format(name, count)


@runs_work
def check_collective(subject: Subject) -> str:
    """The collective backend all-reduces among 2 processes (1 where one device is visible and
    the vendor refuses a second local rank on it, as the hook specification allows)."""
    from chipbench.conformance.probes import all_reduce
    from chipbench.errors import PluginError

    backend = subject.obeys("collective_backend")
    world, note = 2, ""
    if subject.count() < 2:
        try:
            subject.facade.init_backend(1)
        except PluginError:
            world, note = 1, " (one visible device, and no second local rank on it)"
        finally:
            subject.facade.init_backend(0)
    got = all_reduce(subject.info.name, backend, world)
    expected = float(world * (world + 1) // 2)
    if got != expected:
        raise CheckFailed("all_reduce of 1..{} to give {}".format(world, expected), str(got))
    return "{} all_reduce over {} process(es) = {}{}".format(backend, world, got, note)
