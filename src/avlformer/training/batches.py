"""Training batches with a resumable position.

A ``DistributedSampler`` shuffles with ``seed + epoch``, so one step's batches across ranks are the same samples
whatever the process count; an epoch is ``steps_per_epoch * gradient_accumulation_steps`` micro-batches and a
resume skips those consumed. Each item's augmentation generator is seeded from (seed, epoch, index), so crops,
gains and MLM masks do not depend on processes or workers.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler


def micro_batches_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    return (num_samples // world_size) // batch_size


def item_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


class SampleSeededDataset(Dataset):
    """Wraps a dataset with ``set_seed(seed)`` so item ``i`` of epoch ``e`` always sees the same augmentation."""

    def __init__(self, dataset: Dataset, seed: int, limit: int = -1):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0
        self.size = len(dataset) if limit <= 0 else min(limit, len(dataset))  # --limited_samples: the first N

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        if hasattr(self.dataset, "set_seed"):
            self.dataset.set_seed(item_seed(self.seed, self.epoch, index))
        return self.dataset[index]


class EpochBatchSampler(Sampler[list[int]]):
    """This rank's micro-batches for one epoch, from ``skip`` on."""

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int, epoch: int,
                 num_batches: int, skip: int = 0):
        self.sampler = DistributedSampler(range(num_samples), num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.sampler.set_epoch(epoch)
        self.batches = BatchSampler(self.sampler, batch_size, drop_last=True)
        self.num_batches = num_batches
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        for position, batch in enumerate(self.batches):
            if position >= self.num_batches:
                return
            if position >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(0, self.num_batches - self.skip)


def epoch_loader(dataset: SampleSeededDataset, batch_sampler: EpochBatchSampler, num_workers: int, collate_fn,
                 worker_init_fn, generator_seed: int) -> DataLoader:
    # The loader's own generator keeps DataLoader start-up from drawing on the global torch RNG (which the model's
    # dropout uses), so starting a loader mid-epoch after a resume leaves that stream where the checkpoint left it.
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, collate_fn=collate_fn,
                      pin_memory=torch.cuda.is_available(), worker_init_fn=worker_init_fn,
                      generator=torch.Generator().manual_seed(generator_seed))


def eval_loader(dataset: Dataset, batch_size: int, rank: int, world_size: int, num_workers: int,
                collate_fn) -> DataLoader:
    """In order, sharded across ranks (the last shard padded with repeats; predictions are de-duplicated by key)."""
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(0))
