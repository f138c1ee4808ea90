"""Decisions every rank must take together: a flag set on any rank, an error raised on any rank.

A rank that stops alone leaves the others waiting in a collective; a refusal seen only by rank 3 would
be printed by nobody (only rank 0 prints, pretrain/cli/_errors.py). So these are collectives.
"""
from __future__ import annotations

import socket
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


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


def on_rank_zero(compute: Callable[[], T], expected: tuple[type[Exception], ...]) -> T:
    """Collective: rank 0 computes (reads files that every rank would read the same: one reader, not
    thousands), every rank gets the value, or raises the error rank 0 got (an ``expected`` type is
    raised as itself, anything else as a RuntimeError naming it)."""
    if dist.get_world_size() == 1:
        return compute()
    box: list = [None]
    error = None
    if dist.get_rank() == 0:
        try:
            box[0] = (True, compute())
        except Exception as err:
            error, box[0] = err, (False, (type(err), " ".join(str(err).split())))
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    ok, value = box[0]
    if ok:
        return value
    kind, message = value
    raise kind(message) if issubclass(kind, expected) else RuntimeError(f"rank 0: {kind.__name__}: {message}")
