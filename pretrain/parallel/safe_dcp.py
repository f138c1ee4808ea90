"""DCP checkpoints read without running code from the files, and their errors in one line.

torch's ``FileSystemReader`` unpickles ``.metadata`` with ``pickle.load`` and ``DefaultLoadPlanner`` reads
every non-tensor value (here: the optimizer's lr, betas, flags) with ``torch.load(weights_only=False)``,
so a crafted checkpoint runs code when it is loaded. Here ``.metadata`` is unpickled with an allowlist
of the classes DCP itself writes into it (anything else is refused before it is built), and non-tensor
values with ``weights_only=True``. Tensor bytes are raw storage (DCP reads them with ``weights_only=True``).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader

METADATA = ".metadata"
_ALLOWED = {
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(("torch.distributed.checkpoint.metadata", name) for name in dir(dcp_metadata)
      if isinstance(getattr(dcp_metadata, name), type)),
}


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that would need arbitrary objects to be unpickled."""


class ShapeMismatchError(ValueError):
    """A checkpoint tensor whose shape differs from the model's."""

    def __init__(self, path: Path, key: str, saved: tuple, current: tuple):
        super().__init__(f"checkpoint {path} has {key} of shape {list(saved)}, this model {list(current)}")
        self.key, self.saved, self.current = key, saved, current


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(f"refusing {module}.{name}: DCP metadata holds only its own classes")


class SafeReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            try:
                metadata = _MetadataUnpickler(stream).load()
            except UnsafeCheckpointError as err:
                raise UnsafeCheckpointError(f"{path}: {err}; this file was not written by DCP") from None
            except Exception as err:  # truncated or garbled: whatever pickle raises
                raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err})") from None
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise UnsafeCheckpointError(f"{path} holds a {type(metadata).__name__}, not DCP metadata")
        if metadata.storage_meta is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)  # refuses anything but tensors and plain containers
        safe = io.BytesIO()
        torch.save(obj, safe)  # DefaultLoadPlanner reloads it (weights_only=False), now from our own bytes
        safe.seek(0)
        super().load_bytes(read_item, safe)


def read_metadata(path: Path) -> dcp_metadata.Metadata:
    return SafeReader(path).read_metadata()


def check_shapes(path: Path, metadata: dcp_metadata.Metadata, prefix: str, state: dict[str, Any]) -> None:
    """Every tensor of ``state`` (keys under ``prefix``) is in the checkpoint with the same global shape."""
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        saved = metadata.state_dict_metadata.get(f"{prefix}.{key}")
        if saved is None:
            raise ValueError(f"checkpoint {path} has no {prefix}.{key}: it was written for another model")
        if tuple(getattr(saved, "size", ())) != tuple(value.shape):
            raise ShapeMismatchError(path, f"{prefix}.{key}", tuple(saved.size), tuple(value.shape))


def load(state: dict[str, Any], path: Path, no_dist: bool = False) -> None:
    """``dcp.load`` through SafeReader and SafeLoadPlanner, after checking the model's tensor shapes.
    ``no_dist``: this process reads alone, without collectives (e.g. rank 0 for ``train.init_from``)."""
    reader = SafeReader(path)
    if "model" in state:
        check_shapes(path, reader.read_metadata(), "model", state["model"])
    try:
        dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner(), no_dist=no_dist)
    except CheckpointException as err:  # a BaseException: one per failing rank, each with its traceback
        raise ValueError(f"checkpoint {path} cannot be loaded: {first_failure(err)}") from None


def first_failure(err: CheckpointException) -> str:
    """The first failing rank's exception, in one line (CheckpointException prints every traceback)."""
    rank, (cause, _) = min(err.failures.items())
    return f"rank {rank}: {type(cause).__name__}: {' '.join(str(cause).split())}"
