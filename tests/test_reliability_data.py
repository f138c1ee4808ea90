"""Data that cannot lie or stall a run: every .bin hashed once (then recorded), the .idx offsets at
every start; the loader draws nothing from the global RNG; DataLoader workers ignore stop signals and
a worker that dies anyway is restarted with the same batches."""
from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess

import numpy as np
import pytest
import torch

from pretrain.data import DataConfig, build_loader, prepare_embedded_corpus
from pretrain.data import store
from pretrain.data.store import VERIFIED, CorruptDataError, open_store, read_manifest, shard_files
from pretrain.objectives import ObjectiveConfig, raw_length

SEQ_LEN, G = 128, 8


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    return prepare_embedded_corpus(tmp_path_factory.getbasetemp() / "data-cache")  # shared with the data tests


@pytest.fixture
def data_copy(embedded, tmp_path):
    """A private copy of the embedded corpus, with no verification record yet."""
    root = tmp_path / "data"
    shutil.copytree(embedded, root)
    (root / VERIFIED).unlink(missing_ok=True)
    return root


def first_shard(root):
    manifest = read_manifest(root)
    lang = sorted(manifest["languages"])[0]
    bin_path, idx_path, _ = shard_files(root, lang, manifest["languages"][lang]["shards"][0]["name"])
    return bin_path, idx_path


def rewrite_keeping_size_and_mtime(path, data: bytes) -> None:
    """An edit that a cheap stat check cannot see."""
    stat = path.stat()
    assert len(data) == stat.st_size
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def count_bin_hashes(monkeypatch) -> list:
    hashed = []
    real = store.file_sha256
    def counting(path):
        if str(path).endswith(".bin"):
            hashed.append(path)
        return real(path)
    monkeypatch.setattr(store, "file_sha256", counting)
    return hashed


def test_each_bin_is_hashed_once_then_only_when_its_stamp_changes(data_copy, monkeypatch):
    hashed = count_bin_hashes(monkeypatch)
    open_store(data_copy)
    n_bins = sum(len(info["shards"]) for info in read_manifest(data_copy)["languages"].values())
    assert len(hashed) == n_bins and (data_copy / VERIFIED).is_file()
    hashed.clear()
    open_store(data_copy)
    assert hashed == []  # recorded: the next start only stats them
    bin_path, _ = first_shard(data_copy)
    tokens = np.fromfile(bin_path, dtype=np.uint16)
    tokens[0] ^= 1
    tokens.tofile(bin_path)  # same size, new mtime: hashed again, and the edit is caught
    with pytest.raises(CorruptDataError, match=rf"{bin_path.name} does not match its sha256"):
        open_store(data_copy)


def test_an_altered_idx_is_refused_even_with_its_size_and_mtime_unchanged(data_copy):
    open_store(data_copy)  # verified and recorded
    _, idx_path = first_shard(data_copy)
    offsets = np.load(idx_path)
    offsets[1] += 1  # still a valid offsets array: only the hash can tell
    altered = idx_path.with_suffix(".tmp.npy")
    np.save(altered, offsets)
    rewrite_keeping_size_and_mtime(idx_path, altered.read_bytes())
    with pytest.raises(CorruptDataError, match=rf"{idx_path.name} does not match its sha256"):
        open_store(data_copy)


def test_a_read_only_data_dir_keeps_its_record_in_the_cache(data_copy, tmp_path, monkeypatch):
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    for command in (["mount", "--bind", str(data_copy), str(mounted)],
                    ["mount", "-o", "remount,ro,bind", str(mounted)]):
        if subprocess.run(command, capture_output=True).returncode:
            subprocess.run(["umount", str(mounted)], capture_output=True)
            pytest.skip("needs permission to bind-mount read-only")
    try:
        hashed = count_bin_hashes(monkeypatch)
        open_store(mounted, record_dir=tmp_path / "cache")
        assert hashed and not (mounted / VERIFIED).exists()
        hashed.clear()
        open_store(mounted, record_dir=tmp_path / "cache")
        assert hashed == []
    finally:
        subprocess.run(["umount", str(mounted)], check=True)


# --- the loader ------------------------------------------------------------------------------------
def loader(embedded, workers: int):
    cfg = DataConfig(path=str(embedded), cache_dir=str(embedded.parent), num_workers=workers)
    return build_loader(cfg, lambda samples: {"sample_ids": torch.tensor([s.sample_id for s in samples]),
                                              "loss_mask": torch.ones(len(samples))},
                        seq_len=SEQ_LEN, raw_len=raw_length(ObjectiveConfig(), SEQ_LEN), global_batch_size=G,
                        micro_batch_size=2, dp_rank=0, dp_size=1, seed=1)


def test_iterating_the_loader_leaves_the_global_rng_alone(embedded):
    before = torch.get_rng_state()
    batches = iter(loader(embedded, workers=0))
    next(batches)
    assert torch.equal(before, torch.get_rng_state())


def sample_ids(batches, n):
    return [next(batches)["sample_ids"].tolist() for _ in range(n)]


@pytest.mark.parametrize("fault", [signal.SIGTERM, signal.SIGUSR1, signal.SIGKILL])
def test_workers_survive_stop_signals_and_a_killed_worker_is_restarted(embedded, fault):
    expected = sample_ids(iter(loader(embedded, workers=0)), 8)
    before = set(multiprocessing.active_children())
    batches = iter(loader(embedded, workers=2))
    got = sample_ids(batches, 2)
    workers = sorted(set(multiprocessing.active_children()) - before, key=lambda p: p.pid)
    assert len(workers) == 2
    # from another process, as torchrun's killpg or Slurm would (not from the workers' parent)
    subprocess.run(["kill", f"-{fault.name[3:]}", *(str(w.pid) for w in workers)], check=True)
    got += sample_ids(batches, 6)
    assert got == expected
    # stop signals are the trainer's to act on, not the workers'; a killed worker was replaced
    assert [w.is_alive() for w in workers] == [fault != signal.SIGKILL] * 2
    batches.close()  # the DataLoader ends its workers (SIGTERM from their parent is obeyed)
    for worker in workers:
        worker.join(timeout=30)
    assert not any(w.is_alive() for w in workers)
