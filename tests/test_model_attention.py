"""GLM attention backends against the dense reference (forward and backward), and the rule itself."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st

from pretrain.model.attention import build_attention, glm_dense_mask, visible_pairs


def rule_by_loops(segment_ids, part_a):
    """The contract-4 sentence, token by token."""
    batch, seq_len = segment_ids.shape
    mask = torch.zeros(batch, seq_len, seq_len, dtype=torch.bool)
    for b in range(batch):
        for q in range(seq_len):
            for k in range(seq_len):
                same = segment_ids[b, q] == segment_ids[b, k] != -1
                mask[b, q, k] = (same and (part_a[b, k] or k <= q)) or (q == k and segment_ids[b, q] == -1)
    return mask


def qkv(seed, batch, seq_len, q_heads=4, kv_heads=2, head_dim=8):
    """Leaves laid out [B, S, H, D] as the model's projections are; backends get [B, H, S, D] views."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, seq_len, q_heads, head_dim), (batch, seq_len, kv_heads, head_dim),
              (batch, seq_len, kv_heads, head_dim)]
    return [torch.randn(s, generator=gen).requires_grad_() for s in shapes]


def heads_first(tensors):
    return [t.transpose(1, 2) for t in tensors]


def run(backend, segment_ids, part_a, tensors, grad_out):
    out = build_attention(backend, segment_ids, part_a)(*heads_first(tensors))
    grads = torch.autograd.grad(out, tensors, grad_out, materialize_grads=True)  # all-padding rows: q unused
    return out, grads


def test_dense_mask_is_the_rule(glm_random_layout):
    segment_ids, part_a = glm_random_layout(0, 3, 24)
    assert torch.equal(glm_dense_mask(segment_ids, part_a), rule_by_loops(segment_ids, part_a))


def test_golden_single_sample():
    # one sample: Part A = 3 tokens, Part B = 2 tokens, then 1 pad
    segment_ids = torch.tensor([[0, 0, 0, 0, 0, -1]])
    part_a = torch.tensor([[True, True, True, False, False, False]])
    expected = torch.tensor([[1, 1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 1, 0],
                             [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(glm_dense_mask(segment_ids, part_a)[0], expected)
    assert visible_pairs(segment_ids, part_a).tolist() == [expected.sum().item()]


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), seq_len=st.integers(1, 70))
@example(seed=98, seq_len=1)  # every row padding: q gets no gradient at all
def test_sdpa_matches_dense_forward_and_backward(glm_random_layout, seed, seq_len):
    segment_ids, part_a = glm_random_layout(seed, 3, seq_len)
    tensors = qkv(seed, 3, seq_len)
    grad_out = torch.randn(3, 4, seq_len, 8, generator=torch.Generator().manual_seed(seed + 1))
    out, grads = run("sdpa", segment_ids, part_a, tensors, grad_out)
    ref_out, ref_grads = run("dense", segment_ids, part_a, tensors, grad_out)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, atol=1e-5, rtol=1e-5)


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), seq_len=st.integers(1, 40))
def test_visible_pairs_counts_the_mask(glm_random_layout, seed, seq_len):
    segment_ids, part_a = glm_random_layout(seed, 2, seq_len)
    part_a = part_a ^ (torch.rand(part_a.shape, generator=torch.Generator().manual_seed(seed)) < 0.2)  # any pattern
    assert torch.equal(visible_pairs(segment_ids, part_a), glm_dense_mask(segment_ids, part_a).sum(dim=(1, 2)))


def test_flex_forward_matches_dense(glm_random_layout):
    # CPU: compiled Flex forward only (torch 2.13 has no Flex backward on CPU); on CUDA also backward
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for seed in range(3):  # same static shape: one compile, a new BlockMask per batch
        segment_ids, part_a = (t.to(device) for t in glm_random_layout(seed, 2, 160))
        # the shapes of test_model_glm's flex test: one compile per process serves both
        tensors = [t.detach().to(device).requires_grad_(device == "cuda") for t in qkv(seed, 2, 160, head_dim=16)]
        with torch.set_grad_enabled(device == "cuda"):
            out = build_attention("flex", segment_ids, part_a)(*heads_first(tensors))
            ref = build_attention("dense", segment_ids, part_a)(*heads_first(tensors))
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
        if device == "cuda":
            grad_out = torch.randn_like(out)
            for grad, ref_grad in zip(torch.autograd.grad(out, tensors, grad_out),
                                      torch.autograd.grad(ref, tensors, grad_out)):
                torch.testing.assert_close(grad, ref_grad, atol=1e-4, rtol=1e-4)


def test_sdpa_rejects_layouts_it_cannot_compute():
    tensors = heads_first(qkv(0, 1, 6))
    part_a_after_b = torch.tensor([[True, False, True, False, False, False]])
    with pytest.raises(ValueError, match="Part-A tokens after Part-B"):
        build_attention("sdpa", torch.zeros(1, 6, dtype=torch.long), part_a_after_b)(*tensors)
    split_segment = torch.tensor([[0, 0, 1, 1, 0, 0]])
    with pytest.raises(ValueError, match="segment 0 is split"):
        build_attention("sdpa", split_segment, torch.zeros(1, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="not one of"):
        build_attention("fast", split_segment, torch.zeros(1, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        build_attention("dense", split_segment, torch.zeros(1, 6, dtype=torch.long))


@pytest.mark.parametrize("prefix_len", [0, 1, 17])
def test_prefix_causal_cpu_merge_matches_lower_right_sdpa(prefix_len):
    """The CPU log-sum-exp merge and the lower-right causal SDPA (the CUDA branch) are one function."""
    from torch.nn.attention.bias import causal_lower_right
    from pretrain.model.attention import prefix_causal_attention

    q, k, v = heads_first(qkv(7, 2, 23 + prefix_len, q_heads=3, kv_heads=3))
    q_own = q[:, :, prefix_len:]
    grad_out = torch.randn_like(q_own)
    ours = prefix_causal_attention(q_own, k[:, :, :prefix_len], v[:, :, :prefix_len], k[:, :, prefix_len:],
                                   v[:, :, prefix_len:])
    ref = F.scaled_dot_product_attention(q_own, k, v, attn_mask=causal_lower_right(23, 23 + prefix_len))
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    for grad, ref_grad in zip(torch.autograd.grad(ours, (q, k, v), grad_out),
                              torch.autograd.grad(ref, (q, k, v), grad_out)):
        torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-5)
