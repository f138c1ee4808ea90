"""Context parallelism's pieces in one process, cp ranks simulated: the zig-zag sharding of a batch and
its inverse, and each rank's attention over the gathered row against the dense GLM mask, forward and
backward (the gradients of K and V summed over the simulated ranks are what the all-gather's
reduce-scatter backward hands each rank). The collectives themselves run in test_parallel_distributed.py."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pretrain.model.attention import SegmentSDPAAttention, build_attention
from pretrain.parallel.context import FlexRowsAttention, row_order, shard_rows, zigzag_positions, zigzag_windows
from tests.test_model_attention import heads_first, qkv


def test_zigzag_balances_chunks_and_row_order_inverts_it():
    assert zigzag_positions(16, 2, 0).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert zigzag_positions(16, 2, 1).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert zigzag_windows(24, 3, 1) == [(4, 8), (16, 20)]
    batch = {"input_ids": torch.arange(48).view(2, 24), "part_a": torch.arange(48).view(2, 24) % 3 == 0,
             "sample_ids": torch.tensor([7, 9])}
    for cp in (1, 2, 3):
        shards = [shard_rows(batch, cp, rank) for rank in range(cp)]
        assert all(torch.equal(s["sample_ids"], batch["sample_ids"]) for s in shards)
        for key in ("input_ids", "part_a"):
            gathered = torch.cat([s[key] for s in shards], dim=1)  # what an all-gather over cp returns
            assert torch.equal(row_order(gathered, cp, 1), batch[key]), (cp, key)


def simulate_ranks(segment_ids, part_a, tensors, cp):
    """Every simulated rank's output for its own queries, over the full row's keys, put in row order."""
    q, k, v = heads_first(tensors)
    seq_len = segment_ids.shape[1]
    outputs = []
    for rank in range(cp):
        attend = SegmentSDPAAttention(segment_ids, part_a, windows=zigzag_windows(seq_len, cp, rank))
        outputs.append(attend(q[:, :, zigzag_positions(seq_len, cp, rank)], k, v))
    return row_order(torch.cat(outputs, dim=2), cp, 2)


def assert_matches_dense(segment_ids, part_a, cp, seed=0):
    batch, seq_len = segment_ids.shape
    tensors = qkv(seed, batch, seq_len)
    grad_out = torch.randn(batch, 4, seq_len, 8, generator=torch.Generator().manual_seed(seed + 1))
    out = simulate_ranks(segment_ids, part_a, tensors, cp)
    grads = torch.autograd.grad(out, tensors, grad_out, materialize_grads=True)
    ref = build_attention("dense", segment_ids, part_a)(*heads_first(tensors))
    ref_grads = torch.autograd.grad(ref, tensors, grad_out, materialize_grads=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for grad, expected in zip(grads, ref_grads):
        torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-5)


def test_packed_row_with_part_b_across_every_chunk_boundary():
    # cp=2, S=16: rank 0 holds [0, 4) + [12, 16), rank 1 holds [4, 12). Sample 0 is Part A [0, 3) and a
    # Part B [3, 10) crossing the boundaries at 4 and 8; sample 1 is A [10, 13), B [13, 15) across 12; pad.
    segment_ids = torch.tensor([[0] * 10 + [1] * 5 + [-1]])
    part_a = torch.tensor([[True] * 3 + [False] * 7 + [True] * 3 + [False] * 2 + [False]])
    assert_matches_dense(segment_ids, part_a, cp=2)
    # a sample whose Part A ends inside another rank's chunk, Part B wrapping the zig-zag seam at 8
    assert_matches_dense(torch.tensor([[3] * 16]), torch.tensor([[True] * 6 + [False] * 10]), cp=2)


@settings(deadline=None, max_examples=12)
@given(seed=st.integers(0, 2**31 - 1), cp=st.sampled_from([2, 3, 4]), chunk=st.integers(1, 6))
def test_each_rank_attends_exactly_the_glm_rule(glm_random_layout, seed, cp, chunk):
    segment_ids, part_a = glm_random_layout(seed, 2, 2 * cp * chunk)
    assert_matches_dense(segment_ids, part_a, cp, seed)


def test_flex_rows_forward_matches_dense(glm_random_layout):
    """The GPU path: Flex with the rank's queries mapped to row positions. CPU: compiled forward only
    (torch 2.13 has no Flex backward on CPU); on CUDA also backward."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    segment_ids, part_a = (t.to(device) for t in glm_random_layout(2, 2, 160))
    tensors = [t.detach().to(device).requires_grad_(device == "cuda") for t in qkv(2, 2, 160, head_dim=16)]
    q, k, v = heads_first(tensors)
    with torch.set_grad_enabled(device == "cuda"):
        ref = build_attention("dense", segment_ids, part_a)(q, k, v)
        for rank in range(2):
            positions = zigzag_positions(160, 2, rank).to(device)
            out = FlexRowsAttention(segment_ids, part_a, positions)(q[:, :, positions], k, v)
            torch.testing.assert_close(out, ref[:, :, positions], atol=2e-5, rtol=2e-5)
            if device == "cuda":
                grad_out = torch.randn_like(out)
                for grad, ref_grad in zip(torch.autograd.grad(out, tensors, grad_out),
                                          torch.autograd.grad(ref[:, :, positions], tensors, grad_out)):
                    torch.testing.assert_close(grad, ref_grad, atol=1e-4, rtol=1e-4)
