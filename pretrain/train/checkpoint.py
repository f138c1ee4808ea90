"""Checkpoints: sharded, written atomically, last K kept; DCP (reshardable) for the torch engine.

Layout of ``<dir>/step_00000010/``: the engine's files (model + optimizer, each rank its shards),
``trainer.pt`` (step, which fixes the lr schedule, data-loader state, counters: identical on every
rank, written by rank 0), ``rng/rank{r}.pt`` (each rank's RNG) and ``complete``. A checkpoint is
written under ``.step_00000010.partial`` and renamed only after every rank finished, so a crash
mid-save leaves the previous checkpoint untouched and a half-written directory that resume ignores
(and rank 0 removes). Resharding (e.g. save with TP=2, load with TP=1) is DCP's: state dicts are
keyed by FQN and hold DTensors whose placements describe the saved layout.
"""
from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{8})$")
COMPLETE = "complete"
TRAINER_STATE = "trainer.pt"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def remove_partial(root: Path) -> None:
    """Rank 0 at start-up: delete what a crash mid-save left behind."""
    if root.is_dir():
        for path in root.glob(".step_*.partial"):
            shutil.rmtree(path, ignore_errors=True)


def save(root: Path, step: int, engine, trainer_state: dict[str, Any], keep: int) -> Path:
    """Collective: every rank calls it. Returns the final directory."""
    rank = dist.get_rank()
    final = step_dir(root, step)
    partial = root / f".{final.name}.partial"
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "rng").mkdir(parents=True)
    dist.barrier()
    engine.save(partial)
    torch.save(_rng_state(), partial / "rng" / f"rank{rank}.pt")
    if rank == 0:
        torch.save(trainer_state, partial / TRAINER_STATE)
    dist.barrier()  # every rank's files are on disk
    if rank == 0:
        (partial / COMPLETE).touch()
        if final.exists():  # re-saving a step (e.g. SIGTERM right after an interval save)
            shutil.rmtree(final)
        partial.rename(final)
        for old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final)
    dist.barrier()
    return final


def trainer_state(path: Path) -> dict[str, Any]:
    """The step, loader state, counters and the (engine, tp, dp) layout the checkpoint was written with."""
    return torch.load(path / TRAINER_STATE, weights_only=False)


def load(path: Path, engine) -> None:
    """Collective: restore model and optimizer (the torch engine reshards to the current layout) and
    this rank's RNG. A rank that did not exist in the saved run keeps its fresh RNG."""
    engine.load(path)
    rng_file = path / "rng" / f"rank{dist.get_rank()}.pt"
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=False))


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
