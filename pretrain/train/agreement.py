"""Decisions every rank must take together: a flag set on any rank, an error raised on any rank.

A rank that stops alone leaves the others waiting in a collective; a refusal seen only by rank 3 would
be printed by nobody (only rank 0 prints, pretrain/cli/_errors.py). So these are collectives.
"""
from __future__ import annotations

import socket
from typing import Callable, Sequence

import torch
import torch.distributed as dist


def any_rank(flags: Sequence[bool], device: torch.device) -> list[bool]:
    """Collective: for each flag, whether some rank set it (one all-reduce)."""
    values = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def raise_if_any_rank_failed(error: BaseException | None, wrap: Callable[[str], BaseException]) -> None:
    """Collective: when some rank passes an error, every rank raises: its own error if it has one, else
    ``wrap("rank R on HOST: <the first failing rank's message>")``."""
    if dist.get_world_size() == 1:
        if error is not None:
            raise error
        return
    reports: list = [None] * dist.get_world_size()
    dist.all_gather_object(reports, None if error is None else (socket.gethostname(), " ".join(str(error).split())))
    if error is not None:
        raise error
    failed = next(((rank, report) for rank, report in enumerate(reports) if report is not None), None)
    if failed is not None:
        rank, (host, message) = failed
        raise wrap(f"rank {rank} on {host}: {message}")
