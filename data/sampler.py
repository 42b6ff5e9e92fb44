"""Training sampler whose order depends only on (seed, epoch)."""

from collections.abc import Iterator, Sized

import numpy as np
from torch.utils.data import RandomSampler


class EpochShuffleSampler(RandomSampler):
    """Yields a permutation of ``range(len(data_source))`` seeded with ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` at the start of every epoch, so the order is reproducible
    across runs and after resuming from a checkpoint. Subclassing RandomSampler matters under
    DDP: Lightning recognises it as a shuffling sampler and swaps in a DistributedSampler
    (seeded by ``seed_everything``) rather than wrapping it.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_next(self, count: int) -> None:
        """Start the next iteration ``count`` samples in (resuming inside an epoch)."""
        self._skip = count

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.data_source))
        skip, self._skip = self._skip, 0
        return iter(order[skip:].tolist())
