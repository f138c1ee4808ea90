"""The chunked head + cross entropy (pretrain/train/loss.py) against the unfused path it replaced
(float32 logits [B, S, V], then cross entropy), forward and backward, in one process and under TP=2;
and parallel.reduce_every_microbatch against FSDP2's once-per-step reduction."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.pipelining.microbatch import split_args_kwargs_into_chunks

from pretrain.model.presets import model_config
from pretrain.model.glm import GLMModel
from pretrain.train.loss import (LOGITS_CHUNK_BYTES, MIN_CHUNK_TOKENS, CrossEntropyHead, chunk_tokens_for,
                                 chunked_cross_entropy, token_cross_entropy)

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = dict(rtol=1e-6, atol=1e-6)  # float32: only the summation order differs


def unfused(hidden, weight, targets, token_weights):
    """The previous path: all logits in float32, then per-token cross entropy."""
    ce = token_cross_entropy(F.linear(hidden, weight).float(), targets)
    return (ce * token_weights).sum(), ce


def leaves(seed: int, batch: int, seq_len: int, hidden: int, vocab: int):
    gen = torch.Generator().manual_seed(seed)
    h = (torch.randn(batch, seq_len, hidden, generator=gen) / hidden ** 0.5).requires_grad_()
    w = torch.randn(vocab, hidden, generator=gen).requires_grad_()
    targets = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    mask = (torch.rand(batch, seq_len, generator=gen) < 0.6).float()
    return h, w, targets, mask / mask.sum().clamp(min=1)


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])  # one token, not dividing B·S, dividing it, all at once
def test_chunked_loss_and_gradients_equal_the_unfused_path(chunk):
    h, w, targets, token_weights = leaves(0, 3, 37, 16, 50)
    loss, ce = chunked_cross_entropy(h, w, targets, token_weights, chunk_tokens=chunk)
    (loss * 3.0).backward()  # the incoming gradient scales both (DeepSpeed multiplies the loss by dp)
    grads = h.grad, w.grad
    h.grad = w.grad = None
    ref_loss, ref_ce = unfused(h, w, targets, token_weights)
    (ref_loss * 3.0).backward()
    torch.testing.assert_close(loss, ref_loss, **TOLERANCE)
    torch.testing.assert_close(ce, ref_ce.detach(), **TOLERANCE)
    assert not ce.requires_grad
    for got, expected in zip(grads, (h.grad, w.grad)):
        torch.testing.assert_close(got, expected, **TOLERANCE)


def test_without_gradients_the_loss_is_the_same_and_builds_no_graph():
    h, w, targets, token_weights = leaves(1, 2, 20, 8, 30)
    with torch.no_grad():
        loss, ce = chunked_cross_entropy(h, w, targets, token_weights, chunk_tokens=6)
    ref_loss, ref_ce = unfused(h, w, targets, token_weights)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, ref_loss.detach(), **TOLERANCE)
    torch.testing.assert_close(ce, ref_ce.detach(), **TOLERANCE)


@pytest.mark.parametrize("tied", [True, False])
def test_model_output_head_gets_the_normed_hidden_states_and_the_head_weight(tied):
    torch.manual_seed(0)
    model = GLMModel(model_config("glm-tiny", vocab_size=64, tie_embeddings=tied))
    seq = torch.arange(12)[None]
    inputs = (seq, seq, seq * 0, seq * 0, torch.zeros(1, 12, dtype=torch.bool))
    logits = model(*inputs)
    seen = model(*inputs, output_head=lambda hidden, weight: F.linear(hidden, weight).float())
    torch.testing.assert_close(seen, logits)
    targets = (seq + 1) % 64
    loss, _ = model(*inputs, output_head=CrossEntropyHead(targets, torch.ones(1, 12)))
    torch.testing.assert_close(loss, token_cross_entropy(logits, targets).sum(), **TOLERANCE)


def test_heads_with_equal_targets_compare_equal():  # DeepSpeed AutoTP compares each TP rank's arguments
    targets, mask = torch.arange(6).view(2, 3), torch.ones(2, 3)
    assert CrossEntropyHead(targets, mask, 4.0) == CrossEntropyHead(targets.clone(), mask.clone(), 4.0)
    assert CrossEntropyHead(targets, mask, 4.0) != CrossEntropyHead(targets, mask, 2.0)
    assert CrossEntropyHead(targets, mask) != CrossEntropyHead(targets, mask * 0)


def test_a_head_is_split_by_rows_like_the_batch_by_a_pipeline_schedule():
    targets, mask = torch.arange(8).view(4, 2), torch.tensor([[1., 0], [1, 1], [0, 1], [1, 1]])
    _, chunks = split_args_kwargs_into_chunks((), {"output_head": CrossEntropyHead(targets, mask, 5.0)}, 2)
    assert [chunk["output_head"] for chunk in chunks] == [CrossEntropyHead(targets[:2], mask[:2], 5.0),
                                                          CrossEntropyHead(targets[2:], mask[2:], 5.0)]


def test_chunk_size_bounds_the_logits_of_one_chunk():
    assert chunk_tokens_for(torch.empty(151552, 8)) == LOGITS_CHUNK_BYTES // (4 * 151552) == 442
    assert chunk_tokens_for(torch.empty(10**9, 1, device="meta")) == MIN_CHUNK_TOKENS


@pytest.mark.slow
def test_chunked_loss_under_tp2_equals_the_unfused_vocab_parallel_loss():
    """Two gloo ranks: the TP-parallelized model (vocab-sharded head, with and without sequence
    parallelism) gives the same loss and gradients through either path (tests/tp_loss_worker.py)."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(ROOT / "tests" / "tp_loss_worker.py")], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("sequence_parallel")]
    assert len(lines) == 2, result.stdout
    for line in lines:
        _, loss_error, grad_error = line.split()
        assert float(loss_error) <= 1e-6 and float(grad_error) <= 1e-6, line


# --- parallel.reduce_every_microbatch ------------------------------------------------------------------
def test_reduce_every_microbatch_trains_the_same_losses(trainer_factory, tmp_path):
    """Two micro-batches per step: reduce-scattering each into the sharded gradients sums the same."""
    def losses(run: str, *overrides: str) -> list[float]:
        trainer = trainer_factory(tmp_path / run, "train.micro_batch_size=1", *overrides)
        batches = iter(trainer.s.loader)
        return [trainer.train_step(batches)["loss"] for _ in range(2)]  # one process group for both runs

    once, every = losses("once"), losses("every", "parallel.reduce_every_microbatch=true")
    assert all(math.isfinite(v) for v in once) and once[0] != once[1]  # it trains
    assert every == pytest.approx(once, abs=1e-6)


def test_reduce_every_microbatch_is_refused_with_deepspeed():
    from pretrain.config import ConfigError
    from pretrain.train.config import load_config
    with pytest.raises(ConfigError, match="reduce_every_microbatch is a torch-engine"):
        load_config(ROOT / "configs" / "smoke.yaml", ["parallel.engine=deepspeed", "parallel.reduce_every_microbatch=true"])
