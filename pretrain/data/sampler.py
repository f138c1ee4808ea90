"""Megatron's ``consumed_samples`` batch sampler over global sample ids, sliced by data-parallel rank.

Global batch g covers ids [g*G, (g+1)*G); micro-step m gives rank r the ids
``g*G + m*mbs*dp + r*mbs + j`` (j < mbs). The global order never depends on dp, workers or run
length, so any dp with G % (mbs*dp) == 0 continues it exactly. Tensor-parallel peers pass their
data-parallel rank, so they get identical ids.
"""
from __future__ import annotations

from typing import Iterator


def check_batch_geometry(global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int) -> None:
    if micro_batch_size < 1 or dp_size < 1:
        raise ValueError(f"micro_batch_size={micro_batch_size} and dp_size={dp_size} must be >= 1")
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank={dp_rank} is outside [0, dp_size={dp_size})")
    if global_batch_size < 1 or global_batch_size % (micro_batch_size * dp_size):
        raise ValueError(f"global_batch_size={global_batch_size} is not a positive multiple of "
                         f"micro_batch_size*dp_size={micro_batch_size}*{dp_size}; change one of them")


class RankBatchSampler:
    """Yields this rank's micro-batches of global ids from ``start`` until ``stop`` (None: forever)."""

    def __init__(self, start: int, stop: int | None, micro_batch_size: int, dp_rank: int, dp_size: int):
        self.start, self.stop = start, stop
        self.micro_batch_size, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size

    @property
    def step(self) -> int:
        """Global samples covered by one micro-step of all ranks."""
        return self.micro_batch_size * self.dp_size

    def __iter__(self) -> Iterator[list[int]]:
        first = self.start
        while self.stop is None or first + self.step <= self.stop:
            base = first + self.dp_rank * self.micro_batch_size
            yield list(range(base, base + self.micro_batch_size))
            first += self.step

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("the training stream is infinite; it has no length")
        return max(0, (self.stop - self.start) // self.step)
