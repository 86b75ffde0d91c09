"""The check of the hardware configs a vendor ships (optional hook ``case_config_dirs``): named
``<tag>x<N>x<M>.yaml`` and fitting the case's defaults."""

from chipbench.conformance.subject import CheckFailed, CheckSkipped, Subject


def check_shipped_configs(subject: Subject) -> str:
    """Configs shipped through case_config_dirs are named <tag>x<N>x<M>.yaml and fit the case's
    defaults (no unknown keys, no bad YAML)."""
    import re

    from chipbench.errors import ChipbenchError
    from chipbench.run.caseload import discover_cases, plugin_config_dirs
    from chipbench.run.config import load_yaml, resolve

    host, shipped = subject.facade.host, []
    mine = [host.vendor_plugin_name(subject.info.name)]  # another plugin's configs are its own
    if not any(impl.plugin_name in mine
               for impl in host.pm.hook.case_config_dirs.get_hookimpls()):
        raise CheckSkipped("the vendor ships no configs (optional hook case_config_dirs)")
    for record in discover_cases():
        if record.case is None:
            continue
        defaults = load_yaml(record.case.config_dir / "defaults.yaml")
        for folder, _ in plugin_config_dirs(host, record.name, only=mine):
            for path in sorted(folder.glob("*.yaml")):
                if not re.match(r"^[A-Za-z0-9]+x[0-9]+x[0-9]+$", path.stem):
                    raise CheckFailed("config files named <tag>x<N>x<M>.yaml", str(path))
                try:
                    resolve(defaults, [(str(path), load_yaml(path))])
                except ChipbenchError as exc:  # a UserError: one line naming the key
                    raise CheckFailed("{} to fit case {}".format(path.name, record.name),
                                      exc.one_line()) from None
                shipped.append("{}/{}".format(record.name, path.stem))
    return ", ".join(shipped) or "no files for any case"

