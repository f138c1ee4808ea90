"""Checks before the data and the model are built: the run directory and the checkpoint directory can
be written on every rank, and no other launch uses the run directory (run_lock.py). A problem is a
ConfigError naming the key, the path and the fix, on every rank (agreement.py), not a crash at the
first save."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch.distributed as dist

from pretrain.config import ConfigError
from pretrain.train.agreement import raise_if_any_rank_failed
from pretrain.train.config import Config
from pretrain.train.run_lock import RunLock


def check_writable(path: Path, key: str) -> None:
    """``path`` is (or can be made) a directory in which this process can create a file."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} is a file, not a directory; point {key} at a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test.{socket.gethostname()}.{os.getpid()}"
        with open(probe, "wb") as handle:
            handle.write(b"ok")
        probe.unlink()
    except OSError as err:
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
        raise ConfigError(f"{key}={path} cannot be written: {err.strerror}{where}; make it writable or point {key} "
                          f"at a writable directory") from None


def preflight(cfg: Config) -> RunLock | None:
    """Collective. Returns the run lock on rank 0 (None elsewhere); release it when the run ends."""
    checkpoint_key = "checkpoint.dir" if cfg.checkpoint.dir else "checkpoint.dir (default <run.dir>/checkpoints)"
    lock, error = None, None
    try:
        check_writable(Path(cfg.run.dir), "run.dir")
        check_writable(cfg.checkpoint_dir(), checkpoint_key)
        if dist.get_rank() == 0:
            lock = RunLock.acquire(Path(cfg.run.dir))
    except ConfigError as err:
        error = err
    try:
        raise_if_any_rank_failed(error, ConfigError)
    except ConfigError:
        if lock is not None:
            lock.release()
        raise
    return lock
