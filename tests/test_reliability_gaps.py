"""Tests for the bugs that got through before (each was planted and caught only by a crash, or not at
all): every sentence-end character, the span ratio over all tokens of rows of short documents, the span
length distribution up to max_span_length, the TP plan's parallel styles, the lr schedule's shape.
Objective tests go through the public API (GLMCollator, sentence_end_ids) so they survive a refactor."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, RowwiseParallel,
                                               SequenceParallel)

from pretrain.model import build_model
from pretrain.objectives import GLMCollator, ObjectiveConfig, TextSample, raw_length, sentence_end_ids
from pretrain.objectives.strategies.token import TokenConfig
from pretrain.parallel.tp import tp_plan
from pretrain.tokens import SpecialTokens
from pretrain.train.config import TrainConfig
from pretrain.train.optim import lr_factor

S = SpecialTokens()
# The sentence splitter's set, as documented (reference §2.3, CJK included): the spec, not a copy of the code.
SENTENCE_ENDS = [".", "?", "!", ";", ":", "。", "？", "！", "；", "…", "．", "｡"]


def token_objective(**knobs) -> ObjectiveConfig:
    """The token strategy with the given ratio / span-length knobs: the one place that names them
    (``mask_ratio``, ``poisson_lambda``, ``max_span_length``), to update if the config moves them."""
    return ObjectiveConfig(strategy="token", token=TokenConfig(**knobs))


@pytest.mark.parametrize("char", SENTENCE_ENDS)
def test_every_sentence_end_character_ends_a_sentence(char):
    texts = ["word", f"end{char}", char, f"{char}\"", f"{char}」 ", "mid" + char + "dle", char + "x"]
    assert sentence_end_ids(texts).tolist() == [1, 2, 3, 4]


def test_token_spans_cover_ceil_ratio_of_every_row_of_short_documents():
    """Rows packed with 20-token documents (cls + 18 + eos): each row's masked tokens reach ceil(ratio * n)
    with n all its tokens; a ratio over the maskable tokens only (18 of 20) falls ~10% short."""
    ratio, seq_len, rows = 0.15, 512, 64
    cfg = token_objective(mask_ratio=ratio)
    per_row = raw_length(cfg, seq_len) // 20
    rng = np.random.default_rng(0)
    samples = [TextSample(i, [np.r_[S.cls, rng.integers(8, 1000, 18), S.eos] for _ in range(per_row)])
               for i in range(rows)]
    batch = GLMCollator(cfg, S, seq_len=seq_len, seed=5, global_batch_size=rows).build(samples)
    spans = (batch["target_ids"] == S.eop).sum(1)  # one eop target per span
    masked = batch["loss_mask"].sum(1) - spans  # Part-B targets are the span's tokens, then eop
    assert per_row >= 15 and (masked >= math.ceil(ratio * 20 * per_row)).all(), masked


def test_span_lengths_reach_max_span_length_with_the_truncated_poisson_mass():
    """Poisson(3) truncated to [1, 6]: length 6 carries ~8% of the spans; a cut one short has none."""
    lam, longest, rows, length = 3.0, 6, 300, 512
    cfg = token_objective(poisson_lambda=lam, max_span_length=longest)
    rng = np.random.default_rng(1)
    samples = [TextSample(i, [np.r_[S.cls, rng.integers(8, 1000, length - 2), S.eos]]) for i in range(rows)]
    batch = GLMCollator(cfg, S, seq_len=length + 96, seed=11, global_batch_size=rows).build(samples)
    lengths = batch["block_position_ids"][batch["target_ids"] == S.eop] - 1  # eop sits at block position len + 1
    k = np.arange(1, longest + 1)
    pmf = stats.poisson.pmf(k, lam) / stats.poisson.pmf(k, lam).sum()
    observed = np.bincount(lengths, minlength=longest + 1)[1:]
    assert lengths.max() == longest and len(observed) == longest
    assert stats.chisquare(observed, pmf * len(lengths)).pvalue > 1e-3


def test_tp_plan_styles_per_module():
    """Megatron's layout: vocab-parallel embedding (Rowwise), q/k/v and gate/up split by output features
    (Colwise), o/down by input features (Rowwise); under sequence parallelism the block outputs are
    Shard(1) and norms/positions follow the sequence split."""
    tied, untied = build_model("glm-tiny"), build_model("glm-tiny", tie_embeddings=False, mlp="swiglu")
    for model, sp in ((tied, False), (untied, True)):
        plan = tp_plan(model, sequence_parallel=sp)
        between = Shard(1) if sp else Replicate()
        assert type(plan["embed_tokens"]) is RowwiseParallel
        embedding = plan["embed_tokens"]
        assert embedding.input_layouts == (Replicate(),) and embedding.output_layouts == (between,)
        for layer in ("layers.0", "layers.1"):
            colwise = ["q_proj", "k_proj", "v_proj"]
            for name in colwise:
                assert type(plan[f"{layer}.self_attn.{name}"]) is ColwiseParallel, (layer, name, sp)
            for name in ("up_proj", *(["gate_proj"] if sp else [])):
                assert type(plan[f"{layer}.mlp.{name}"]) is ColwiseParallel, (layer, name, sp)
            for name in ("self_attn.o_proj", "mlp.down_proj"):
                style = plan[f"{layer}.{name}"]
                assert type(style) is RowwiseParallel and style.output_layouts == (between,), (layer, name, sp)
            if sp:
                assert type(plan[f"{layer}.input_layernorm"]) is SequenceParallel
                assert type(plan[f"{layer}.post_attention_layernorm"]) is SequenceParallel
                assert type(plan[f"{layer}.self_attn"]) is PrepareModuleInput
                assert type(plan[f"{layer}.mlp"]) is PrepareModuleInput
        if sp:
            assert type(plan["lm_head"]) is ColwiseParallel and type(plan["norm"]) is SequenceParallel
            for table in ("position_embeddings", "block_position_embeddings"):
                assert type(plan[table]) is RowwiseParallel and plan[table].output_layouts == (Shard(1),)
        else:
            assert "lm_head" not in plan and "norm" not in plan and "position_embeddings" not in plan


@pytest.mark.parametrize("warmup, decay, max_steps, floor", [(10, 110, 100, 0.1), (0, None, 50, 0.0), (3, 7, 9, 0.5)])
def test_lr_schedule_shape(warmup, decay, max_steps, floor):
    """Linear warmup to 1 ((s+1)/warmup), then a half cosine down to min_lr_ratio at lr_decay_steps
    (default max_steps), flat after."""
    cfg = TrainConfig(max_steps=max_steps, warmup_steps=warmup, lr_decay_steps=decay, min_lr_ratio=floor)
    end = decay or max_steps
    f = [lr_factor(s, cfg) for s in range(end + 20)]
    assert f[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert f[warmup] == pytest.approx(1.0)
    cosine = f[warmup:end + 1]
    assert all(a >= b for a, b in zip(cosine, cosine[1:])) and cosine[-1] == pytest.approx(floor)
    for s in range(warmup, end + 1):
        progress = (s - warmup) / max(1, end - warmup)
        assert f[s] == pytest.approx(floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2)
    assert f[end:] == pytest.approx([floor] * 20)
