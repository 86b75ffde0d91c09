"""Built-in vendor plugins: one short module per vendor, all of the same shape.

Third-party vendors register the same hooks through the entry-point group ``chipbench.vendors``.
"""

BUILTIN_VENDORS = ("chipbench.plugins.cpu", "chipbench.plugins.cuda", "chipbench.plugins.metax",
                   "chipbench.plugins.rocm", "chipbench.plugins.accelerator")
