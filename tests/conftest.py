"""Shared pytest fixtures. Each block is owned by the package named in its comment; keep edits additive."""
import socket

import numpy as np
import pytest
import torch


# --- pretrain.model -------------------------------------------------------------------------------
def _glm_random_layout(seed: int, batch: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (segment_ids [B, S] int64, part_a [B, S] bool) satisfying the batch contract's rule inputs:
    contiguous segments with arbitrary ids, each Part A then Part B with the boundary anywhere (empty
    Part A or Part B included), padding runs (-1) anywhere in the row."""
    rng = np.random.default_rng(seed)
    segment_ids = np.full((batch, seq_len), -1, dtype=np.int64)
    part_a = np.zeros((batch, seq_len), dtype=bool)
    for row in range(batch):
        pos, next_id = 0, int(rng.integers(0, 5))
        while pos < seq_len:
            length = int(rng.integers(1, seq_len - pos + 1)) if rng.random() < 0.3 else \
                int(rng.integers(1, max(2, seq_len // 3)))
            length = min(length, seq_len - pos)
            if rng.random() < 0.2:  # padding run
                pos += length
                continue
            segment_ids[row, pos:pos + length] = next_id
            part_a[row, pos:pos + int(rng.integers(0, length + 1))] = True
            next_id += int(rng.integers(1, 4))
            pos += length
    return torch.from_numpy(segment_ids), torch.from_numpy(part_a)


@pytest.fixture(scope="session")  # a pure function of (seed, batch, seq_len): safe under hypothesis
def glm_random_layout():
    return _glm_random_layout


@pytest.fixture
def one_thread():
    """Tiny models: a second intra-op thread only adds contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- pretrain.train / pretrain.parallel ---------------------------------------------------------------
@pytest.fixture
def single_process_env(monkeypatch):
    """The environment torchrun gives a world of one (a free loopback port), for in-process gloo groups."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def trainer_factory(tmp_path_factory, single_process_env):
    """make(run_dir, *overrides) -> a Trainer on a one-process gloo group: glm-tiny from the smoke config,
    tp 1, seq_len 64, 2 micro-batches of 2 rows, the embedded corpus, no eval, no TensorBoard."""
    from pathlib import Path

    import torch.distributed as dist

    from pretrain.data.corpus import prepare_embedded_corpus
    from pretrain.train.config import load_config
    cache = tmp_path_factory.getbasetemp() / "train-corpus"  # shared with test_train_distributed.py
    prepare_embedded_corpus(cache)
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"

    def make(run_dir: Path, *overrides: str):
        from pretrain.train.loop import Trainer
        cfg = load_config(smoke, ["parallel.tp=1", "train.seq_len=64", "train.global_batch_size=4",
                                  "train.micro_batch_size=2", "eval.interval=0", "metrics.tensorboard=false",
                                  "data.corpus=embedded", f"data.cache_dir={cache}", "data.num_workers=0",
                                  f"run.dir={run_dir}", *overrides])
        return Trainer(cfg)

    yield make
    if dist.is_initialized():
        dist.destroy_process_group()
