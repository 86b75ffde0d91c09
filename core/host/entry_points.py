"""Installed distributions' entry points of a group, found the same way on Python 3.8 and later.

Third-party vendor plugins and cases are found here (groups ``chipbench.vendors`` and
``chipbench.cases``).
"""

from typing import Any, Iterator, Tuple

from chipbench import ENTRY_POINT_GROUP


def iter_entry_points(group: str = ENTRY_POINT_GROUP) -> Iterator[Tuple[Any, str]]:
    """Yield ``(entry_point, "distribution version")`` for every entry point of ``group``.

    Walks the distributions (works on Python 3.8, where entry points know no distribution) and
    skips duplicates that appear when a distribution is on ``sys.path`` twice.
    """
    from importlib import metadata

    seen = set()
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        for ep in dist.entry_points:
            key = (dist_name, ep.name, ep.value)
            if ep.group != group or key in seen:
                continue
            seen.add(key)
            yield ep, "{} {}".format(dist_name, dist.version)
