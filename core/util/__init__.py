"""Helpers every part of chipbench shares, about input it does not trust and its own process.

- :mod:`~chipbench.util.safeio`: reading and writing files chipbench does not trust (reads
  bounded and of regular files only, writes that never follow a link);
- :mod:`~chipbench.util.text`: outside text made safe for a terminal, a table or a file;
- :mod:`~chipbench.util.streams`: the command's streams, whatever the parent left;
- :mod:`~chipbench.util.exiting`: leaving the process quickly once the work is done.
"""
