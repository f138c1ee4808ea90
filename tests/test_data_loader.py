"""Loader: rank/worker partition, worker invariance, exact resume, elastic dp, valid split, refusals."""
import dataclasses
import json
import math
import multiprocessing
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pretrain.data import DataConfig, DataExhaustedError, ResumeMismatchError, build_loader, open_data, prepare_embedded_corpus
from pretrain.data.loader import glm_collator as build_glm_collator
from pretrain.data.index import LanguageWindows, split_documents
from pretrain.data.store import LanguageStore, open_store
from pretrain.objectives import ObjectiveConfig, raw_length
from pretrain.tokens import SpecialTokens

SEQ_LEN, G, SEED = 128, 8, 3


@pytest.fixture(scope="session")
def cfg(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "data-cache"  # shared by every data test module
    return DataConfig(path=str(prepare_embedded_corpus(cache)), cache_dir=str(cache), num_workers=0)


def ids_collator(samples):
    return {"sample_ids": torch.tensor([s.sample_id for s in samples]),
            "tokens": [np.concatenate(s.documents) for s in samples],
            "loss_mask": torch.ones(len(samples), 2)}


@pytest.fixture(scope="session")
def glm_collator(cfg):
    """A factory of fresh GLM collators (all three strategies) for the embedded tokenizer."""
    source = open_data(cfg)
    return lambda: build_glm_collator(source, ObjectiveConfig(strategy="glm-10b"), seq_len=SEQ_LEN, seed=SEED,
                                      global_batch_size=G)


def make(cfg, collator=ids_collator, *, mbs=2, dp_rank=0, dp_size=1, split="train", **changes):
    cfg = dataclasses.replace(cfg, **changes)
    raw_len = raw_length(ObjectiveConfig(strategy="glm-10b"), SEQ_LEN)
    return build_loader(cfg, collator, seq_len=SEQ_LEN, raw_len=raw_len,
                        global_batch_size=G, micro_batch_size=mbs, dp_rank=dp_rank, dp_size=dp_size, seed=SEED,
                        split=split)


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def same(a: dict, b: dict) -> bool:
    def equal(x, y):
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y)
        return len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y))
    return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dp_size, mbs, workers", [(1, 8, 0), (2, 2, 2), (4, 1, 0)])
def test_every_global_id_once_across_ranks_and_micro_steps(cfg, dp_size, mbs, workers):
    steps = 6  # global batches
    loaders = [make(cfg, mbs=mbs, dp_rank=r, dp_size=dp_size, num_workers=workers) for r in range(dp_size)]
    per_rank = [[b["sample_ids"].tolist() for b in take(loader, steps * G // (mbs * dp_size))] for loader in loaders]
    flat = sorted(i for rank in per_rank for batch in rank for i in batch)
    assert flat == list(range(steps * G))  # no duplicates, no gaps
    for m in range(len(per_rank[0])):  # the documented id formula
        for r in range(dp_size):
            base = m * mbs * dp_size + r * mbs
            assert per_rank[r][m] == list(range(base, base + mbs))


def test_each_language_epoch_covers_every_training_document_exactly_once(cfg):
    store = open_store(cfg.path)
    lang = "ko"
    train, held_out = split_documents(store.languages[lang].n_docs, lang, cfg.eval_documents)
    assert len(held_out) == cfg.eval_documents and not set(train) & set(held_out)
    special = SpecialTokens()
    windows = LanguageWindows(store.languages[lang], train, 50, SEED, special, shuffle=True)
    for epoch in range(2):
        order, _, window_order = windows.epoch(epoch)
        by_position = {int(w): windows.window(epoch * windows.samples_per_epoch + p)
                       for p, w in enumerate(window_order)}
        stream = np.concatenate([np.concatenate(by_position[w]) for w in range(windows.samples_per_epoch)])
        expected = np.concatenate([np.concatenate([[special.cls], store.languages[lang].document(d), [special.eos]])
                                   for d in train[order]])
        np.testing.assert_array_equal(stream, expected)
        lengths = [sum(map(len, by_position[w])) for w in range(windows.samples_per_epoch)]
        assert max(lengths) <= 50 and max(lengths) - min(lengths) <= 1  # no nearly empty window at the end
        assert len(lengths) == math.ceil(sum(lengths) / 50)  # as few windows as fit the epoch
    assert not np.array_equal(windows.epoch(0)[0], windows.epoch(1)[0])  # fresh order per epoch


def test_window_pieces_are_framed_documents(cfg):
    loader = make(cfg)
    special = loader.special
    for g in range(40):
        sample = loader.dataset[g]
        assert sum(map(len, sample.documents)) <= loader.identity["raw_len"]
        for i, piece in enumerate(sample.documents):
            assert piece.dtype == np.int64 and len(piece)
            assert i == 0 or piece[0] == special.cls  # only the first piece may start mid-document
            assert i == len(sample.documents) - 1 or piece[-1] == special.eos  # only the last may be cut
            assert not np.isin(piece[1:-1], [special.cls, special.eos]).any()


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_batches_do_not_depend_on_worker_count(cfg, glm_collator, workers):
    reference = take(make(cfg, glm_collator(), dp_size=2, dp_rank=1), 6)
    other = take(make(cfg, glm_collator(), dp_size=2, dp_rank=1, num_workers=workers), 6)
    assert all(same(a, b) for a, b in zip(reference, other))


def test_consumed_samples_counts_handed_batches_not_prefetched_ones(cfg):
    loader = make(cfg, num_workers=2)
    it = iter(loader)
    next(it)
    next(it)  # workers have prefetched several more by now
    assert loader.state_dict()["consumed_samples"] == 2 * 2  # 2 micro-steps * mbs 2 * dp 1


def test_resume_is_exact(cfg, glm_collator):
    n, k = 8, 3
    straight = take(make(cfg, glm_collator(), num_workers=2), n)
    first = make(cfg, glm_collator())
    head = take(first, k)
    state = json.loads(json.dumps(first.state_dict()))  # small, plain, checkpoint-friendly
    resumed = make(cfg, glm_collator(), num_workers=2)
    resumed.load_state_dict(state)
    tail = take(resumed, n - k)
    assert all(same(a, b) for a, b in zip(straight, head + tail))
    # a second resume from the resumed loader continues too (no frozen state)
    again = make(cfg, glm_collator())
    again.load_state_dict(resumed.state_dict())
    assert same(take(again, 1)[0], take(make(cfg, glm_collator()), n + 1)[-1])


def test_dp2_checkpoint_resumes_on_dp1_with_the_same_global_order(cfg):
    steps, k = 4, 2  # global batches
    ranks = [make(cfg, mbs=2, dp_rank=r, dp_size=2) for r in range(2)]
    for loader in ranks:
        take(loader, k * G // 4)
    state = ranks[0].state_dict()
    assert state == ranks[1].state_dict() and state["consumed_samples"] == k * G
    single = make(cfg, mbs=4)
    single.load_state_dict(state)
    resumed = take(single, (steps - k) * G // 4)
    straight = take(make(cfg, mbs=4), steps * G // 4)
    assert all(same(a, b) for a, b in zip(resumed, straight[k * G // 4:]))
    assert resumed[0]["sample_ids"].tolist() == [k * G + j for j in range(4)]


@pytest.mark.parametrize("key, value, needle", [
    ("data_fingerprint", "0" * 16, "the training data changed"),
    ("tokenizer_sha256", "f" * 64, "the tokenizer changed"),
    ("seq_len", 64, "checkpoint has seq_len=64"),
    ("seed", 4, "checkpoint has seed=4"),
    ("mixture_hash", "x", "mixture"),
    ("consumed_samples", 3, "not a multiple"),
])
def test_resume_refuses_a_different_stream(cfg, key, value, needle):
    loader = make(cfg)
    state = {**loader.state_dict(), key: value}
    with pytest.raises(ResumeMismatchError, match=needle):
        loader.load_state_dict(state)


def test_resume_refuses_a_changed_mixture_config(cfg):
    state = make(cfg).state_dict()
    with pytest.raises(ResumeMismatchError, match="mixture_hash"):
        make(cfg, alpha=0.7).load_state_dict(state)


def test_dp_that_does_not_divide_the_global_batch_is_refused(cfg):
    with pytest.raises(ValueError, match="not a positive multiple of micro_batch_size\\*dp_size=2\\*3"):
        make(cfg, mbs=2, dp_size=3)


def test_valid_split_is_fixed_finite_and_masks_its_padding(cfg):
    loaders = [make(cfg, mbs=4, dp_rank=r, dp_size=2, split="valid") for r in range(2)]
    runs = [[b for b in loader] for loader in loaders]
    again = list(loaders[0])
    assert len(runs[0]) == len(runs[1]) == len(loaders[0]) and all(same(a, b) for a, b in zip(runs[0], again))
    total = loaders[0].dataset.index.total_samples
    ids = sorted(i for run in runs for b in run for i in b["sample_ids"].tolist())
    assert ids == list(range(len(ids))) and total <= len(ids) < total + 8 and total % 8  # some padding
    for run in runs:
        for b in run:
            padding = b["sample_ids"] >= total
            assert torch.all(b["loss_mask"][padding] == 0) and torch.all(b["loss_mask"][~padding] == 1)


def test_capped_stream_ends_with_a_clear_error(cfg):
    caps = {lang: 0.05 for lang in make(cfg).languages}
    loader = make(cfg, max_epochs=caps, mbs=8)
    with pytest.raises(DataExhaustedError, match="every language reached its data.max_epochs cap"):
        for _ in loader:
            pass


def test_weight_for_a_language_without_data_is_refused(cfg):
    with pytest.raises(ValueError, match=r"language\(s\) \['xx'\] that have no data"):
        make(cfg, weights={"xx": 0.1})


def _build_corpus(cache):
    return str(prepare_embedded_corpus(cache))


def test_concurrent_embedded_corpus_builds_agree(tmp_path):
    with multiprocessing.get_context("fork").Pool(2) as pool:
        paths = pool.map(_build_corpus, [tmp_path, tmp_path])
    assert paths[0] == paths[1]
    store = open_store(paths[0])  # verifies every checksum
    assert len(store.languages) >= 10 and {"zh", "ja", "ko", "ar", "fa"} <= set(store.languages)
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].rsplit("/", 1)[1]]  # no staging dirs left


@settings(deadline=None, max_examples=20)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=12), raw_len=st.integers(2, 40),
       epoch=st.integers(0, 3))
def test_windows_cut_the_framed_epoch_stream_exactly(lengths, raw_len, epoch):
    special = SpecialTokens()
    tokens = np.arange(100, 100 + sum(lengths), dtype=np.uint16)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.bin"
        tokens.tofile(path)
        store = LanguageStore("xx", [path], np.dtype(np.uint16), offsets, np.array([0, len(lengths)]))
        windows = LanguageWindows(store, np.arange(len(lengths)), raw_len, SEED, special, shuffle=True)
        order, _, window_order = windows.epoch(epoch)
        cut = {int(w): windows.window(epoch * windows.samples_per_epoch + p) for p, w in enumerate(window_order)}
        stream = np.concatenate([np.concatenate(cut[w]) for w in range(windows.samples_per_epoch)])
    framed = [np.concatenate([[special.cls], tokens[offsets[d]:offsets[d + 1]], [special.eos]]) for d in order]
    np.testing.assert_array_equal(stream, np.concatenate(framed))
    lengths = [sum(map(len, cut[w])) for w in range(windows.samples_per_epoch)]
    assert max(lengths) <= raw_len and max(lengths) - min(lengths) <= 1, "equal windows, the epoch's rest spread"
    assert len(lengths) == math.ceil(sum(lengths) / raw_len), "as few windows as fit the epoch"


def test_epoch_indices_are_cached_and_reused(cfg, tmp_path, monkeypatch):
    cached = dataclasses.replace(cfg, cache_dir=str(tmp_path))
    first = [b["sample_ids"].tolist() + [t.tolist() for t in b["tokens"]] for b in take(make(cached), 4)]
    files = sorted((tmp_path / "index").glob("*.npy"))
    assert files and not list((tmp_path / "index").glob(".*"))  # no temporary files left
    loader = make(cached)
    monkeypatch.setattr(np.random, "default_rng", lambda *a: pytest.fail("index rebuilt instead of loaded"))
    again = [b["sample_ids"].tolist() + [t.tolist() for t in b["tokens"]] for b in take(loader, 4)]
    assert again == first
