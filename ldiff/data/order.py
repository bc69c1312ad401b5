"""The training order: a function of (seed, epoch), split over ranks, resumable mid-epoch.

Exact resume (``ldiff fit --ckpt_path last``) needs the resumed steps to see the batches,
and the random draws, that the uninterrupted run would have seen. So nothing in the
training data path reads a global random state:

- **Order.** Epoch ``e`` visits the permutation of the training items drawn from
  ``seed + e`` (torch's ``DistributedSampler``: with ``R`` ranks, rank ``r`` takes every
  ``R``-th item, padded to equal length). Being a ``DistributedSampler``, it is kept as
  is under DDP (Lightning replaces only other samplers).
- **Position.** :meth:`EpochOrder.resume_at` skips the items of epoch ``e`` that a
  checkpoint's run had already trained on, so a run killed mid-epoch goes on with the
  next batch of the same permutation.
- **Per-item draws.** The order yields ``(epoch, index)`` keys; the dataset draws an
  item's random window and shift from a generator of ``(seed, epoch, index)``
  (:func:`ldiff.diffusion.noise.keyed_generator`), the same in any worker process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler


class EpochOrder(DistributedSampler):
    """Shuffled training keys ``(epoch, index)`` for one rank (see the module docstring).

    Args:
        dataset: the training items (only its length is read).
        seed: seed of every epoch's permutation (``seed + epoch``).
        rank, replicas: this process's rank and the number of ranks.
    """

    def __init__(self, dataset: Sized, seed: int = 0, rank: int = 0, replicas: int = 1):
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=seed)
        self.skip: tuple[int, int] | None = None

    def resume_at(self, epoch: int, items: int) -> None:
        """In epoch ``epoch``, start after the first ``items`` keys of this rank."""
        self.skip = (epoch, items)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        if self.skip is not None and self.skip[0] == self.epoch:
            indices = indices[self.skip[1] :]
        return iter([(self.epoch, index) for index in indices])
