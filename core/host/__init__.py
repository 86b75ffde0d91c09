"""The plugin host: the vendor contract and everything that loads, checks and calls plugins.

- :mod:`~chipbench.host.contract`: every hook's rule, defined once (runs, ``core doctor`` and the
  docs' hooks table read it);
- :mod:`~chipbench.host.manager`: the pluggy plugin manager, built-in plugins first, then the
  entry-point group ``chipbench.vendors``; :mod:`~chipbench.host.entry_points`,
  :mod:`~chipbench.host.plugin_validation`, :mod:`~chipbench.host.plugin_switches` and
  :mod:`~chipbench.host.deadlines` are its parts;
- :mod:`~chipbench.host.selection`: which vendor a command uses;
- :mod:`~chipbench.host.device`: the typed facade a run calls the chosen vendor's hooks through;
- :mod:`~chipbench.host.lifecycle`: the observers' hooks (``on_run_start``, ...).

Plugins do not import from here: their API is the top-level ``chipbench`` package.
"""
