"""GLMCollator behaviour: batch contract, determinism and exact resume, fallbacks and counters."""
import numpy as np
import torch

from pretrain.config import from_dict
from pretrain.objectives import (GLMCollator, ObjectiveConfig, TextSample, raw_length, sentence_end_ids)
from pretrain.tokens import SpecialTokens

S = SpecialTokens()
END_IDS = np.array([9])


def samples(ids, length=60, seed=0, docs_per_row=2):
    rng = np.random.default_rng(seed)
    out = []
    for i in ids:
        docs = [np.r_[S.cls, rng.integers(8, 100, length // docs_per_row - 2), S.eos] for _ in range(docs_per_row)]
        out.append(TextSample(int(i), docs))
    return out


def test_batch_matches_the_architecture_table():
    collator = GLMCollator(ObjectiveConfig(strategy="glm-10b"), S, 96, seed=1, global_batch_size=4,
                           sentence_end_ids=END_IDS)
    batch = collator(samples(range(4)))
    dtypes = {"input_ids": torch.int64, "target_ids": torch.int64, "loss_mask": torch.float32,
              "position_ids": torch.int64, "block_position_ids": torch.int64, "segment_ids": torch.int64,
              "part_a": torch.bool, "strategy_ids": torch.int64, "sample_ids": torch.int64}
    assert {k: v.dtype for k, v in batch.items()} == dtypes
    assert all(v.shape == (4, 96) for k, v in batch.items() if k != "sample_ids")
    assert batch["sample_ids"].tolist() == [0, 1, 2, 3]


def test_rows_depend_only_on_seed_and_sample_id():
    cfg = ObjectiveConfig(strategy="glm-130b", mixture_level="sample")
    whole = GLMCollator(cfg, S, 96, seed=5, global_batch_size=8).build(samples(range(8)))
    # Two data-parallel ranks, each with half of the global batch, in a fresh process after a resume.
    rank0 = GLMCollator(cfg, S, 96, seed=5, global_batch_size=8).build(samples(range(8))[:4])
    warm = GLMCollator(cfg, S, 96, seed=5, global_batch_size=8)
    warm.build(samples(range(100, 108)))  # earlier steps leave no state behind
    rank1 = warm.build(samples(range(8))[4:])
    for key in whole:
        assert (np.concatenate([rank0[key], rank1[key]]) == whole[key]).all(), key
    other_seed = GLMCollator(cfg, S, 96, seed=6, global_batch_size=8).build(samples(range(8)))
    assert (other_seed["input_ids"] != whole["input_ids"]).any()


def test_rows_built_alone_match_rows_built_in_a_batch_that_mixes_strategies():
    # One row per call takes the one-strategy path; a batch of mixed strategies splits and merges.
    cfg = ObjectiveConfig(strategy="glm-10b", mixture_level="sample")
    rows = samples(range(16))
    mixed = GLMCollator(cfg, S, 96, seed=2, global_batch_size=8, sentence_end_ids=END_IDS)
    batch = mixed.build(rows)
    assert set(batch["strategy_ids"].max(axis=1).tolist()) == {0, 1, 2}
    alone = GLMCollator(cfg, S, 96, seed=2, global_batch_size=8, sentence_end_ids=END_IDS)
    singles = [alone.build([row]) for row in rows]
    for key in batch:
        assert (np.concatenate([single[key] for single in singles]) == batch[key]).all(), key
    assert alone.stats == mixed.stats


def test_per_batch_mixture_gives_one_strategy_per_global_batch():
    collator = GLMCollator(ObjectiveConfig(strategy="glm-130b"), S, 96, seed=3, global_batch_size=4)
    batch = collator.build(samples(range(64)))
    per_row = [int(np.unique(row[row >= 0])[0]) for row in batch["strategy_ids"]]
    assert all(len(set(per_row[i:i + 4])) == 1 for i in range(0, 64, 4))
    assert set(per_row) == {0, 1} and collator.strategy_names == ("token", "document", "instruction")


def test_documents_too_short_to_mask_stay_as_context_and_are_counted():
    collator = GLMCollator(ObjectiveConfig(strategy="token"), S, 96, seed=0, global_batch_size=1)
    short = np.array([S.cls, S.eos])
    batch = collator.build([TextSample(0, [short, np.r_[S.cls, np.arange(10, 70), S.eos]])])
    seg0 = batch["segment_ids"][0] == 0
    assert batch["input_ids"][0][seg0].tolist() == [S.cls, S.eos]
    assert batch["part_a"][0][seg0].all() and batch["loss_mask"][0][seg0].sum() == 0
    assert collator.stats["too_short"] == 1 and collator.stats["context_only"] == 1
    assert collator.stats["rows"] == 1 and collator.stats["documents"] == 2


def test_spans_that_do_not_fit_are_reduced_and_counted():
    cfg = from_dict(ObjectiveConfig, {"strategy": "token", "token": {"mask_ratio": 0.8}}, "objective")
    collator = GLMCollator(cfg, S, 512, seed=0, global_batch_size=1)
    batch = collator.build(samples(range(20), length=100, docs_per_row=1))
    assert collator.stats["span_fallbacks"] > 0
    assert (batch["loss_mask"].sum(axis=1) > 0).all(), "documents keep the spans that fit"


def test_rows_that_overflow_lose_their_last_spans_and_are_counted():
    collator = GLMCollator(ObjectiveConfig(strategy="token"), S, 64, seed=0, global_batch_size=1)
    full = [TextSample(i, [np.r_[S.cls, np.arange(10, 72), S.eos]]) for i in range(4)]  # 64 = seq_len tokens
    batch = collator.build(full)
    assert collator.stats["overflow_rows"] == 4
    n_spans = (batch["input_ids"] == S.sop).sum(axis=1)
    assert ((batch["segment_ids"] >= 0).sum(axis=1) == 64).all()
    assert (n_spans == 0).all(), "64 text tokens leave no room for any block in a 64-token row"
    assert (batch["input_ids"][:, :64] == np.stack([s.documents[0] for s in full])).all()


def test_raw_length_leaves_room_for_part_b():
    cfg = ObjectiveConfig()
    assert raw_length(cfg, 512) == 444 and raw_length(cfg, 2048) == 1818
    assert raw_length(ObjectiveConfig(strategy="causal"), 512) == 494   # 9 documents of 64 tokens
    assert raw_length(from_dict(ObjectiveConfig, {"strategy": "causal", "causal": {"tokens_per_document": 256}},
                                "objective"), 512) == 506
    # the mixture reserves for its most demanding strategy
    assert raw_length(ObjectiveConfig(strategy="glm-130b"), 512) == raw_length(cfg, 512)
    collator = GLMCollator(cfg, S, 512, seed=0, global_batch_size=1)
    rng = np.random.default_rng(1)
    rows = [TextSample(i, [np.r_[S.cls, rng.integers(8, 100, 442), S.eos]]) for i in range(500)]
    collator.build(rows)
    assert collator.stats["overflow_rows"] == 0


def test_causal_rows_of_documents_at_the_assumed_length_keep_every_span():
    cfg = ObjectiveConfig(strategy="causal")                      # causal.tokens_per_document = 64
    collator = GLMCollator(cfg, S, 512, seed=0, global_batch_size=1)
    docs = [np.r_[S.cls, np.arange(10, 72), S.eos]] * (collator.raw_length // 64)
    batch = collator.build([TextSample(0, docs)])
    assert (batch["input_ids"] == S.sop).sum() == len(docs) and collator.stats["overflow_rows"] == 0


def test_config_loads_from_yaml_dict_and_resolves_presets():
    cfg = from_dict(ObjectiveConfig, {"strategy": "mixture", "mixture": {"token": 1, "causal": 3},
                                      "mixture_level": "sample", "layout": "legacy"}, "objective")
    assert cfg.weights() == {"token": 0.25, "causal": 0.75}
    assert ObjectiveConfig(strategy="glm-10b").weights() == {"token": 0.5, "sentence": 0.3, "document": 0.2}
    assert ObjectiveConfig(strategy="glm-130b").weights() == {"token": 0.3, "document": 0.7}
    assert ObjectiveConfig(strategy="sentence").weights() == {"sentence": 1.0}


def test_sentence_end_ids_handles_cjk_quotes_and_line_breaks():
    texts = ["hello", ".", " end.", "3.14", "。", "！」", "?\"", "\n", "line\nbreak", "e.g", "；", "…", " "]
    assert sentence_end_ids(texts).tolist() == [1, 2, 4, 5, 6, 7, 8, 10, 11]
