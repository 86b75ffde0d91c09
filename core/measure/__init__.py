"""Measurement: what a run's figures are and how they are taken.

- :mod:`~chipbench.measure.metrics`: throughput (p_whole, p_train, p_core) and memory figures;
- :mod:`~chipbench.measure.flops`: FLOPs of a training step, TFLOP/s and MFU;
- :mod:`~chipbench.measure.monitor`, :mod:`~chipbench.measure.samplers`,
  :mod:`~chipbench.measure.monitor_samples`: the background device and host monitor, and its files
  read back; :mod:`~chipbench.measure.cpu_share`: the run's share of the CPU;
- :mod:`~chipbench.measure.profiling`: ``core run --profile``;
- :mod:`~chipbench.measure.environment`: software versions every result records.

docs/metrics.md defines each figure.
"""
