"""Checkpoints: sharded, written atomically (in the background for the torch engine), verified before
use, last K kept; nothing read back from them is unpickled.

Layout of ``<dir>/step_00000010/``:
    engine files        model + optimizer, each rank its shards (DCP for the torch engine)
    trainer.json        step (it fixes the lr schedule), data-loader state, counters, the (engine, tp, dp)
                        layout and the vocabulary; identical on every rank, written by rank 0
    rng/rank{r}.json    each rank's RNG state
    complete            JSON: the size of every file above; written last

A checkpoint is written under ``.step_00000010.partial`` and renamed only after every rank's files are
on disk, so a crash mid-save (kill -9, disk full) leaves the previous checkpoint untouched and a
half-written directory that resume ignores and rank 0 removes. With ``checkpoint.async_save`` the torch
engine's DCP files are written by a background thread (collectives on their own gloo group) while
training goes on; rank 0 renames the directory at the first step boundary where every rank's write has
finished (DCP's save returns on rank 0 only after every rank wrote its shards and rank 0 the metadata;
each rank wrote its RNG file before starting), and the next save waits for the last.

Resume (``resume``): the checkpoint ``checkpoint.resume_from`` names is verified cheaply first, by rank 0
for everyone (every file present at its recorded size, the JSON and the DCP metadata readable); one
that fails names itself and the last good one, which ``checkpoint.fallback_to_previous`` resumes from instead.
Checkpoints newer than the one resumed from go to ``<dir>/abandoned/``, so that "latest" keeps
meaning this run's latest. Resharding (save with TP=2, load with TP=1) is DCP's.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import random
import re
import shutil
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from pretrain.config import ConfigError
from pretrain.parallel import safe_dcp
from pretrain.train.agreement import on_rank_zero, raise_if_any_rank_failed

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{8})$")
COMPLETE = "complete"
TRAINER_STATE = "trainer.json"
LEGACY_TRAINER_STATE = "trainer.pt"  # before trainer.json: a pickle, never read
ABANDONED = "abandoned"
_VOCABULARY_TENSORS = ("embed_tokens", "lm_head")


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files are missing, truncated, unreadable or not what this code writes."""


class CheckpointWriteError(RuntimeError):
    """A save that failed (disk full, permissions, a rank lost); the previous checkpoint is intact."""
    user_error = True  # one line, exit 2 (pretrain/cli/_errors.py)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


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


# ----------------------------------------------------------------------------- files
def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, default=lambda value: value.item())  # numpy scalars
        handle.flush()
        os.fsync(handle.fileno())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{path} is missing") from None
    except (OSError, ValueError) as err:
        raise CorruptCheckpointError(f"{path} is not readable JSON ({err})") from None


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != COMPLETE}


def trainer_state(path: Path) -> dict[str, Any]:
    """The checkpoint's trainer state (JSON: step, loader, counters, layout), unchecked (see ``verify``)."""
    return _read_json(path / TRAINER_STATE)


def mark_complete(path: Path, **record: Any) -> None:
    """The ``complete`` marker: every file's size (checked before a load), plus ``record``."""
    _write_json(path / COMPLETE, {**record, "files": _file_sizes(path)})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify(path: Path) -> dict[str, Any]:
    """Cheap checks before anything is loaded (no tensor is read); returns the trainer state."""
    if (path / LEGACY_TRAINER_STATE).is_file() and not (path / TRAINER_STATE).is_file():
        raise CorruptCheckpointError(
            f"{path} was written by an older version (trainer.pt, a pickle, which is not read: unpickling can "
            f"run code); resume it with that version, or start over with checkpoint.resume_from=none")
    record = _read_json(path / COMPLETE)
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise CorruptCheckpointError(f"{path / COMPLETE} does not list the checkpoint's files")
    if record.get("weights_only"):
        raise CorruptCheckpointError(f"{path} holds weights only (an import-hf run directory) and cannot be "
                                     f"resumed; train from it with train.init_from=<that run directory> and a new run.dir")
    for name, size in record["files"].items():
        file = path / name
        if not file.is_file():
            raise CorruptCheckpointError(f"{file} is missing")
        if file.stat().st_size != size:
            raise CorruptCheckpointError(f"{file} has {file.stat().st_size} bytes, {size} when it was saved: "
                                         f"truncated or replaced")
    state = _read_json(path / TRAINER_STATE)
    if not isinstance(state, dict) or not {"step", "loader", "topology"} <= set(state):
        raise CorruptCheckpointError(f"{path / TRAINER_STATE} is not a trainer state")
    if state.get("consecutive_nonfinite"):
        raise CorruptCheckpointError(f"{path} was saved inside a streak of {state['consecutive_nonfinite']} "
                                     f"non-finite steps")
    if (path / safe_dcp.METADATA).is_file():
        try:
            safe_dcp.read_metadata(path)
        except ValueError as err:
            raise CorruptCheckpointError(str(err)) from None
    return state


# ----------------------------------------------------------------------------- RNG (JSON, not pickle)
def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode()


def _tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
             "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor(s) for s in state["cuda"]])


# ----------------------------------------------------------------------------- save
@dataclass
class _Pending:
    step: int
    partial: Path
    future: Future


class Checkpointer:
    """The saves of one run. Collective: every rank calls every method, in the same order."""

    def __init__(self, root: Path, engine, keep: int, asynchronous: bool):
        self.root, self.engine, self.keep = root, engine, keep
        self.group = dist.new_group(backend="gloo") if asynchronous else None  # background writes' collectives
        self.pending: _Pending | None = None
        self.saved_step: int | None = None  # of the last save started (or the checkpoint resumed from)

    def save(self, step: int, trainer_state: dict[str, Any], wait: bool) -> None:
        self.wait()  # the next save waits for the last
        rank, partial = dist.get_rank(), self.root / f".{step_dir(self.root, step).name}.partial"

        def prepare() -> None:
            if rank == 0:
                shutil.rmtree(partial, ignore_errors=True)
                (partial / "rng").mkdir(parents=True)

        def write_own_files() -> None:
            _write_json(partial / "rng" / f"rank{rank}.json", rng_state())
            if rank == 0:
                _write_json(partial / TRAINER_STATE, trainer_state)

        self._on_every_rank(partial, prepare)  # also the barrier before anyone writes into it
        self._on_every_rank(partial, write_own_files)
        try:
            future = self.engine.save(partial, self.group)
        except (CheckpointException, OSError) as err:
            raise self._write_error(partial, err) from None
        self.saved_step = step
        if future is None:  # written: commit once every rank is done
            dist.barrier()
            if rank == 0:
                self._commit(partial, step)
            dist.barrier()
            return
        self.pending = _Pending(step, partial, future)
        if wait:
            self.wait()

    def writing(self) -> bool:
        """This rank's background write has not finished (not collective)."""
        return self.pending is not None and not self.pending.future.done()

    def wait(self) -> None:
        """Block until the background save (if any) is written everywhere, then mark it complete."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        try:
            pending.future.result()
        except (CheckpointException, Exception) as err:  # CheckpointException is a BaseException
            raise self._write_error(pending.partial, err) from None
        if dist.get_rank() == 0:  # its DCP save returned: every rank's files are on disk
            self._commit(pending.partial, pending.step)

    def close(self) -> None:
        """At exit, also after an error: finish a background save if it can be, without raising."""
        try:
            self.wait()
        except CheckpointWriteError as err:
            logger.error("%s", err)

    def _commit(self, partial: Path, step: int) -> None:
        """Rank 0: the partial directory becomes the step's checkpoint; older ones beyond ``keep`` go."""
        final = step_dir(self.root, step)
        try:
            mark_complete(partial, step=step)
            if final.exists():  # re-saving a step (e.g. SIGTERM right after an interval save)
                shutil.rmtree(final)
            partial.rename(final)
            _fsync_dir(self.root)
        except OSError as err:
            raise self._write_error(partial, err) from None
        for old in complete_checkpoints(self.root)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final)

    def _on_every_rank(self, partial: Path, action: Callable[[], None]) -> None:
        error = None
        try:
            action()
        except OSError as err:
            error = self._write_error(partial, err)
        raise_if_any_rank_failed(error, CheckpointWriteError)

    def _write_error(self, partial: Path, err: BaseException) -> CheckpointWriteError:
        """One line for a failed save (the space left is measured before the partial files go: a full disk
        often surfaces as a short write deep inside torch rather than as ENOSPC)."""
        cause = safe_dcp.first_failure(err) if isinstance(err, CheckpointException) else \
            f"{err.strerror or err} ({err.filename})" if isinstance(err, OSError) else " ".join(str(err).split())
        free = shutil.disk_usage(self.root).free / 2**20 if self.root.is_dir() else float("nan")
        if dist.get_rank() == 0:
            shutil.rmtree(partial, ignore_errors=True)
        latest = latest_checkpoint(self.root)
        return CheckpointWriteError(
            f"could not write checkpoint {partial.name[1:-len('.partial')]} in {self.root} ({free:.1f} MiB free "
            f"there): {cause}; {f'{latest} is intact' if latest else 'there is no earlier checkpoint'}. Free space "
            f"or fix the directory, then launch again to resume")


# ----------------------------------------------------------------------------- load
def load(path: Path, engine) -> None:
    """Collective: restore model and optimizer (the torch engine reshards to the current layout) and
    this rank's RNG. A rank that did not exist in the saved run keeps its fresh RNG."""
    try:
        engine.load(path)
    except safe_dcp.ShapeMismatchError as err:
        if any(name in err.key for name in _VOCABULARY_TENSORS):
            raise ConfigError(f"{err}: the tokenizer/data changed since this checkpoint (vocabulary {err.saved[0]} "
                              f"there, {err.current[0]} here); resume with the tokenizer, data and objective it "
                              f"was trained with, or start a new run.dir") from None
        raise ConfigError(f"{err}: the model config changed since this checkpoint; restore it, or start a new "
                          f"run.dir") from None
    except ValueError as err:
        raise CorruptCheckpointError(str(err)) from None
    rng_file, rng, error = path / "rng" / f"rank{dist.get_rank()}.json", None, None
    try:
        rng = _read_json(rng_file) if rng_file.is_file() else None
    except CorruptCheckpointError as err:
        error = err
    raise_if_any_rank_failed(error, CorruptCheckpointError)  # every rank falls back, or none
    if rng is not None:
        set_rng_state(rng)


def _last_good(older: list[Path]) -> Path | None:
    for path in reversed(older):
        try:
            verify(path)
            return path
        except CorruptCheckpointError:
            continue
    return None


def resume(root: Path, resume_from: int | str, fallback: bool,
           restore: Callable[[Path, dict[str, Any]], None]) -> Path | None:
    """Collective. ``restore(path, trainer_state)`` the checkpoint ``resume_from`` names ("latest", a step,
    or "none"); returns it, or None to start at step 0. ``restore`` raises CorruptCheckpointError for a
    checkpoint it cannot read (then the last good one is named, or with ``fallback`` restored) and
    anything else for a checkpoint that does not fit this run (raised as it is)."""
    if dist.get_rank() == 0:
        remove_partial(root)
    found = on_rank_zero(lambda: complete_checkpoints(root), ())  # rank 0 reads the directory, once
    if resume_from == "none":
        candidates = []
    elif resume_from == "latest":
        candidates = found[::-1]
    else:
        candidates = [p for p in found if step_of(p) == resume_from]
        if not candidates:
            raise ConfigError(f"checkpoint.resume_from={resume_from}: {root} has no complete checkpoint of step "
                              f"{resume_from} (it has {[step_of(p) for p in found] or 'none'}); give one of those, "
                              f"latest, or none")
    chosen = None
    for path in candidates:
        try:
            restore(path, on_rank_zero(lambda: verify(path), (CorruptCheckpointError,)))
            chosen = path
            break
        except CorruptCheckpointError as err:
            good = on_rank_zero(lambda: _last_good([p for p in found if p.name < path.name]), ())
            if resume_from != "latest" or not fallback or good is None:
                advice = (f"the last good checkpoint is {good}: resume from it with checkpoint.resume_from="
                          f"{step_of(good)} (or checkpoint.fallback_to_previous=true)" if good else
                          "no earlier checkpoint can be read: start over with checkpoint.resume_from=none")
                raise CorruptCheckpointError(f"cannot resume from {path}: {err}; {advice}") from None
            logger.warning("cannot resume from %s: %s; resuming from %s (checkpoint.fallback_to_previous)",
                           path, err, good)
    if dist.get_rank() == 0:
        _set_aside([p for p in found if chosen is None or p.name > chosen.name], root)
    return chosen


def _set_aside(newer: list[Path], root: Path) -> None:
    """Checkpoints of an abandoned future (after the one resumed from) leave the way, kept for inspection."""
    for path in newer:
        target = root / ABANDONED / path.name
        suffix = 0
        while target.exists():
            suffix += 1
            target = root / ABANDONED / f"{path.name}.{suffix}"
        target.parent.mkdir(exist_ok=True)
        path.rename(target)
        logger.warning("moved %s to %s: this run continues from an earlier step", path, target)
