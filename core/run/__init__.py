"""Run orchestration: ``core run`` from the command line to ``result.json``.

- configs: :mod:`~chipbench.run.config` (YAML files, ``--set``) and :mod:`~chipbench.run.layers`
  (which layers make a run's config, in which order);
- cases: :mod:`~chipbench.run.caseload` (discovery, the guard around a case's code),
  :mod:`~chipbench.run.context` (the ``ctx`` a case's worker gets),
  :mod:`~chipbench.run.checkpoints` (the safe checkpoint format);
- the run: :mod:`~chipbench.run.runner` (one plan, one ``Run``), :mod:`~chipbench.run.runfolder`
  (its folder), :mod:`~chipbench.run.launcher` (its workers, through torchrun for more than one),
  :mod:`~chipbench.run.worker` (one worker process), :mod:`~chipbench.run.sentinel` (its lock, and
  the result of a killed run), :mod:`~chipbench.run.torchrun_log` and
  :mod:`~chipbench.run.childproc` (child processes);
- records: :mod:`~chipbench.run.runfiles` (the folder's file names, its JSON read and written
  safely), :mod:`~chipbench.run.specrecord` (``spec.json``) and
  :mod:`~chipbench.run.resultrecord` (``result.json``, ``progress.json``; their shared base is
  :mod:`~chipbench.run.jsonrecord`), each read and validated in one place.

A case imports none of this: its API is :mod:`chipbench.case`.
"""
