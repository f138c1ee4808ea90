"""Where an input lives: a local path or an fsspec URL (``s3://``, ``gs://``, ``hf://``, ``memory://``, ...).

Listing, globbing, identity (size plus ETag or modification time, which the skip-if-done keys hash)
and opening all go through fsspec, so every source kind reads local and remote data the same way.
A protocol's package is an optional extra of this project (``pip install 'glm-pretrain[s3]'``).
"""
from __future__ import annotations

from typing import Mapping

import fsspec
from fsspec.core import url_to_fs
from fsspec.utils import infer_compression

EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}
# What changes when a remote object is replaced, per filesystem (the first one present is used).
VERSION_KEYS = ("ETag", "etag", "md5Hash", "blob_id", "mtime", "LastModified", "updated", "created")


def is_url(location: str) -> bool:
    return "://" in location


def filesystem(location: str, storage_options: Mapping | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it); a missing protocol package names the extra to install."""
    try:
        return url_to_fs(location, **(storage_options or {}))
    except ImportError as err:
        protocol = location.split("://", 1)[0]
        extra = EXTRAS.get(protocol)
        fix = f"pip install 'glm-pretrain[{extra}]'" if extra else f"install the fsspec backend for {protocol}://"
        raise ValueError(f"input {location}: {err}; {fix}") from None


def display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The location a message shows: a local path as is, anything else as a URL."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in fs.protocol if isinstance(fs.protocol, tuple) else fs.protocol == "file"


def identity(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, str]:
    """(size in bytes, a version string that changes when the object is replaced)."""
    info = fs.info(path)
    version = next((str(info[key]) for key in VERSION_KEYS if info.get(key) is not None), "")
    return int(info.get("size") or 0), version


def is_compressed(path: str) -> bool:
    return infer_compression(path) is not None
