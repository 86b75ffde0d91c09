"""Aspect-ratio grouped batches (torchvision's detection references, shortened).

Images of similar shape share a batch, so padding to the largest image wastes little compute.
"""

import bisect
from typing import Dict, Iterator, List, Sequence, Sized, cast

from torch.utils.data import Sampler


def aspect_ratio_groups(aspect_ratios: Sequence[float], k: int = 3) -> List[int]:
    """Group id of every image: ``2k`` log-spaced bins between ratio 1/2 and 2 (``k=0``: one group)."""
    if k <= 0:
        return [0] * len(aspect_ratios)
    bins = [2 ** (-1 + i / k) for i in range(2 * k + 1)]
    return [bisect.bisect_right(bins, r) for r in aspect_ratios]


class GroupedBatchSampler(Sampler):
    """Batches of ``batch_size`` indices from ``sampler`` whose images share a group.

    Every index of ``sampler`` appears exactly once per epoch: the incomplete batches left at the
    end are merged, so ``len()`` is ``ceil(len(sampler) / batch_size)``.
    """

    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int) -> None:
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[List[int]]:
        buffers: Dict[int, List[int]] = {}
        for index in self.sampler:
            group = buffers.setdefault(self.group_ids[index], [])
            group.append(index)
            if len(group) == self.batch_size:
                yield list(group)
                group.clear()
        leftovers = [i for group in buffers.values() for i in group]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start:start + self.batch_size]

    def __len__(self) -> int:
        # torch's stubs give Sampler no __len__; the samplers used here have one
        return -(-len(cast(Sized, self.sampler)) // self.batch_size)
