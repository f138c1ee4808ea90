"""The variable-length form of the sdpa backend (VarlenSDPAAttention): the batch's pieces packed into two
cu_seqlens calls must reproduce the dense reference exactly.

torch's varlen kernel (flash) runs only on CUDA in bf16/fp16, so here a CPU kernel with the same
contract (per piece: SDPA, causal aligned lower-right) stands in for it: what is tested is the packing,
the index bookkeeping and the gradients through them. bench/gpu_check.py runs the real kernel
(``build_attention("sdpa", ...)`` on CUDA tensors in bf16 against the dense backend).
"""
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st
from torch.nn.attention.bias import causal_lower_right

from pretrain.model.attention import SegmentSDPAAttention, VarlenSDPAAttention, build_attention
from tests.test_model_attention import heads_first, qkv

calls = []


def reference_varlen_kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, causal):
    """flash_varlen_attention's contract, piece by piece on CPU."""
    calls.append(causal)
    assert cu_seqlens_q.dtype == cu_seqlens_k.dtype == torch.int32
    lengths_q, lengths_k = cu_seqlens_q.diff(), cu_seqlens_k.diff()
    assert int(lengths_q.max()) == max_q and int(lengths_k.max()) == max_k
    assert int(cu_seqlens_q[-1]) == q.shape[0] and int(cu_seqlens_k[-1]) == k.shape[0]
    outs = []
    for q_piece, k_piece, v_piece in zip(q.split(lengths_q.tolist()), k.split(lengths_k.tolist()),
                                         v.split(lengths_k.tolist())):
        mask = causal_lower_right(q_piece.shape[0], k_piece.shape[0]) if causal else None
        out = F.scaled_dot_product_attention(*(t.transpose(0, 1)[None] for t in (q_piece, k_piece, v_piece)),
                                             attn_mask=mask, enable_gqa=True)
        outs.append(out[0].transpose(0, 1))
    return torch.cat(outs)


def run(attention, tensors, grad_out):
    out = attention(*heads_first(tensors))
    return out, torch.autograd.grad(out, tensors, grad_out, materialize_grads=True)


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), seq_len=st.integers(1, 70))
@example(seed=98, seq_len=1)  # every row padding: no attention call at all
def test_varlen_matches_dense_forward_and_backward(glm_random_layout, seed, seq_len):
    segment_ids, part_a = glm_random_layout(seed, 3, seq_len)
    tensors = qkv(seed, 3, seq_len)
    grad_out = torch.randn(3, 4, seq_len, 8, generator=torch.Generator().manual_seed(seed + 1))
    calls.clear()
    out, grads = run(VarlenSDPAAttention(segment_ids, part_a, kernel=reference_varlen_kernel), tensors, grad_out)
    assert len(calls) <= 2  # one call per part for the whole batch, whatever the number of segments
    ref_out, ref_grads = run(build_attention("dense", segment_ids, part_a), tensors, grad_out)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, atol=1e-5, rtol=1e-5)


def test_many_documents_per_row_take_two_calls():
    # 4 rows x 32 documents of 8 tokens (Part A 5, Part B 3), then padding
    segment_ids = torch.arange(32).repeat_interleave(8).expand(4, -1).contiguous()
    part_a = (torch.arange(8) < 5).repeat(32).expand(4, -1).contiguous()
    segment_ids = torch.cat([segment_ids, torch.full((4, 6), -1)], dim=1)
    part_a = torch.cat([part_a, torch.zeros(4, 6, dtype=torch.bool)], dim=1)
    tensors = qkv(0, 4, 262)
    calls.clear()
    out = VarlenSDPAAttention(segment_ids, part_a, kernel=reference_varlen_kernel)(*heads_first(tensors))
    assert calls == [False, True]
    torch.testing.assert_close(out, build_attention("dense", segment_ids, part_a)(*heads_first(tensors)),
                               atol=1e-5, rtol=1e-5)


def test_without_a_cuda_half_input_the_default_kernel_takes_the_per_segment_path(glm_random_layout):
    segment_ids, part_a = glm_random_layout(3, 2, 40)
    tensors = heads_first(qkv(3, 2, 40))
    attention = VarlenSDPAAttention(segment_ids, part_a)  # flash kernel: CUDA bf16/fp16 only
    torch.testing.assert_close(attention(*tensors), SegmentSDPAAttention(segment_ids, part_a)(*tensors))


def test_sdpa_backend_keeps_the_per_segment_form_on_cpu():
    attention = build_attention("sdpa", torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool))
    assert type(attention) is SegmentSDPAAttention  # CUDA: VarlenSDPAAttention (bench/gpu_check.py)
