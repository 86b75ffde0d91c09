"""What a run leaves for people to read, and how runs are compared.

- :mod:`~chipbench.outputs.report`: a run's ``report.md`` (a built-in observer plugin);
- :mod:`~chipbench.outputs.plots` and :mod:`~chipbench.outputs.svgchart`: its SVG charts;
- :mod:`~chipbench.outputs.compare`: ``core compare``, with its parts
  :mod:`~chipbench.outputs.compare_runs` (loading run folders),
  :mod:`~chipbench.outputs.compare_fairness` (what makes runs unfair to compare) and
  :mod:`~chipbench.outputs.compare_render` (its table and files).
"""
