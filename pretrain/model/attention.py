"""GLM attention rule (docs/contracts.md §4) and the three backends that compute it.

    q attends k  iff  segment_ids[q] == segment_ids[k] != -1  and  (part_a[k] or k <= q);
    a padding token (segment -1) attends only to itself.

A backend object is built once per batch from (segment_ids, part_a) and then called by every layer:
    flex   FlexAttention with a BlockMask (compiled kernel; skips fully masked blocks). GPU fast path;
           on CPU torch 2.13 has no Flex backward.
    sdpa   per segment: Part-A queries over Part-A keys unmasked, Part-B queries over the segment
           lower-right causal (nothing S×S is built, no masked pair computed); trains anywhere.
           Needs Part A before Part B in each segment, which is the collator's layout. On CUDA in
           bf16/fp16 the same pieces go to two variable-length flash calls per layer for the whole batch
           (all Part-A pieces in one, all Part-B pieces in the other: ``VarlenSDPAAttention``) instead of
           ~6 kernels per segment and row (without attention dropout: the varlen kernel has none).
    dense  an explicit [B, S, S] boolean mask; the reference for tests only.
Inputs are q [B, Hq, S, D], k and v [B, Hkv, S, D]; head counts come from the shapes (TP shards them).
``dropout_p`` drops attention probabilities (GLM-1 trained with 0.1; the model passes it in training mode
only): sdpa and dense apply it, flex refuses it (FlexAttention has no dropout).
"""
from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

BACKENDS = ("flex", "sdpa", "dense")


def glm_dense_mask(segment_ids: torch.Tensor, part_a: torch.Tensor, query_start: int = 0) -> torch.Tensor:
    """[B, S - query_start, S] bool, True where query (dim 1) may attend key (dim 2): the rows of the
    queries from ``query_start`` on (> 0: the newest tokens of a KV-cached decode, pretrain/generate)."""
    keys = torch.arange(segment_ids.shape[1], device=segment_ids.device)
    queries = keys[query_start:]
    query_segment = segment_ids[:, query_start:, None]
    same_segment = (query_segment == segment_ids[:, None, :]) & (query_segment >= 0)
    causal = queries[None, :, None] >= keys[None, None, :]
    diagonal = queries[None, :, None] == keys[None, None, :]
    return (same_segment & (part_a[:, None, :] | causal)) | diagonal


def visible_pairs(segment_ids: torch.Tensor, part_a: torch.Tensor) -> torch.Tensor:
    """Number of (query, key) pairs the rule admits, per row: [B] int64, in O(S) memory.

    A query sees every Part-A key of its segment plus the non-Part-A keys of its segment up to itself;
    a padding token sees itself. Holds for any part_a pattern inside contiguous segments.
    """
    real = segment_ids >= 0
    is_a = part_a & real
    is_b = ~part_a & real
    # segment starts: a real token whose left neighbour belongs to another segment
    new_segment = torch.ones_like(real)
    new_segment[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    run_id = new_segment.cumsum(dim=1) - 1  # [B, S] index of the contiguous run
    n_runs = int(run_id.max()) + 1 if run_id.numel() else 0
    a_per_run = torch.zeros(segment_ids.shape[0], n_runs, dtype=torch.long, device=segment_ids.device)
    a_per_run.scatter_add_(1, run_id, is_a.long())
    b_cumsum = is_b.long().cumsum(dim=1)
    b_before_run = torch.zeros_like(a_per_run).scatter_reduce_(
        1, run_id, b_cumsum - is_b.long(), reduce="amin", include_self=False)
    b_upto_q = b_cumsum - b_before_run.gather(1, run_id)  # non-A keys of the segment at or before q
    per_query = torch.where(real, a_per_run.gather(1, run_id) + b_upto_q, torch.ones_like(run_id))
    return per_query.sum(dim=1)


def build_attention(backend: str, segment_ids: torch.Tensor, part_a: torch.Tensor, dropout_p: float = 0.0):
    """The per-batch attention callable ``attn(q, k, v) -> [B, Hq, S, D]`` for ``backend``."""
    if segment_ids.shape != part_a.shape or segment_ids.dim() != 2:
        raise ValueError(f"segment_ids {tuple(segment_ids.shape)} and part_a {tuple(part_a.shape)} "
                         f"must both be [B, S]")
    if part_a.dtype != torch.bool:
        raise ValueError(f"part_a must be a bool tensor, got {part_a.dtype}")
    if backend == "dense":
        return DenseAttention(segment_ids, part_a, dropout_p)
    if backend == "sdpa":
        if segment_ids.device.type == "cuda" and not dropout_p:  # the varlen flash kernel has no dropout
            return VarlenSDPAAttention(segment_ids, part_a)
        return SegmentSDPAAttention(segment_ids, part_a, dropout_p)
    if backend == "flex":
        if dropout_p:
            raise ValueError(f"attention dropout {dropout_p} needs the sdpa or dense backend: FlexAttention has none")
        return FlexGLMAttention(segment_ids, part_a)
    raise ValueError(f"attention backend {backend!r} is not one of {list(BACKENDS)}")


class DenseAttention:
    """Reference: the rule as an explicit S×S mask. Quadratic memory; tests only."""

    def __init__(self, segment_ids: torch.Tensor, part_a: torch.Tensor, dropout_p: float = 0.0):
        self.mask = glm_dense_mask(segment_ids, part_a)[:, None]  # [B, 1, S, S]
        self.dropout_p = dropout_p

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, dropout_p=self.dropout_p, enable_gqa=True)


@dataclass(frozen=True)
class Run:
    """A contiguous run of one row: Part A is [start, split), Part B is [split, end); pad runs have split=end."""
    start: int
    split: int
    end: int
    padding: bool


def segment_runs(segment_ids: torch.Tensor, part_a: torch.Tensor) -> list[list[Run]]:
    """Host-side layout of each row, checked: segments contiguous, Part A before Part B in each."""
    segments = segment_ids.cpu().numpy()
    is_a = part_a.cpu().numpy()
    layout = []
    for row, (seg, pa) in enumerate(zip(segments, is_a)):
        bounds = [0, *(np.flatnonzero(np.diff(seg)) + 1).tolist(), len(seg)]
        runs, seen = [], set()
        for start, end in zip(bounds[:-1], bounds[1:]):
            sid = int(seg[start])
            if sid < 0:
                runs.append(Run(start, end, end, padding=True))
                continue
            if sid in seen:
                raise ValueError(f"row {row}: segment {sid} is split into several runs (again at position "
                                 f"{start}); segments must be contiguous")
            seen.add(sid)
            n_a = int(pa[start:end].sum())
            if not pa[start:start + n_a].all():
                raise ValueError(f"row {row}: segment {sid} at [{start}, {end}) has Part-A tokens after Part-B "
                                 f"tokens; the sdpa backend needs Part A first (use attention_backend=flex or dense)")
            runs.append(Run(start, start + n_a, end, padding=False))
        layout.append(runs)
    return layout


class SegmentSDPAAttention:
    """Per segment: Part-A queries over Part-A keys (one unmasked SDPA call) and Part-B queries over the
    segment's keys with a lower-right causal mask (``prefix_causal_attention``). No mask tensor is built.

    ``windows`` are the row ranges ``[(start, end), ...]`` whose queries ``q`` holds, in that order (the
    whole row by default; under context parallelism this rank's chunks, over the full row's keys). Each
    row's keys are split once at every boundary used (runs and windows) and a piece's keys are one of
    those parts or a concatenation of several, whose backward is a split: slicing would allocate a
    zero-filled row-sized gradient per slice."""

    def __init__(self, segment_ids: torch.Tensor, part_a: torch.Tensor, dropout_p: float = 0.0,
                 windows: list[tuple[int, int]] | None = None):
        self.layout = segment_runs(segment_ids, part_a)  # one host sync per batch, not per layer
        self.dropout_p = dropout_p
        self.windows = windows or [(0, segment_ids.shape[1])]
        self.plans = [RowPlan.of(runs, self.windows, segment_ids.shape[1]) for runs in self.layout]  # every layer's

    # The loop is driven by this batch's host-side layout: compiled, it would recompile for every new
    # layout, so torch.compile leaves it eager (a graph break per layer) and compiles around it.
    @torch.compiler.disable
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        groups = q.shape[1] // k.shape[1]
        if groups > 1:  # kv heads repeated to the query heads (the CPU kernels below take no GQA)
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        # unbind rather than slicing rows, for the same reason as the key parts
        rows = [self._row(plan, *(t.unsqueeze(0) for t in row))  # [1, H, len, D]
                for plan, *row in zip(self.plans, q.unbind(0), k.unbind(0), v.unbind(0))]
        return torch.cat(rows, dim=0)

    def _row(self, plan: RowPlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k_parts, v_parts = k.split(plan.key_sizes, dim=2), v.split(plan.key_sizes, dim=2)
        out = []
        for (kind, visible, own), q_part in zip(plan.pieces, q.split(plan.query_sizes, dim=2)):
            if kind == "pad":  # a padding token attends only to itself: its output is its value
                out.append(_joined(v_parts, own))
            elif kind == "a":  # Part A queries: the segment's Part A, unmasked
                out.append(F.scaled_dot_product_attention(q_part, _joined(k_parts, visible), _joined(v_parts, visible),
                                                          dropout_p=self.dropout_p))
            else:  # Part B queries: the segment's keys before the piece, then the piece itself causally
                out.append(prefix_causal_attention(q_part, _joined(k_parts, visible), _joined(v_parts, visible),
                                                   _joined(k_parts, own), _joined(v_parts, own), self.dropout_p))
        return torch.cat(out, dim=2)


@dataclass(frozen=True)
class RowPlan:
    """One row's attention work, made once per batch. Keys are split into parts of ``key_sizes``; each
    query piece (``query_sizes``, in the windows' order) is (kind: "pad" | "a" (Part A) | "b" (Part B),
    the parts [i, j) of the keys it sees unmasked, the parts [i, j) of its own span)."""
    key_sizes: list[int]
    query_sizes: list[int]
    pieces: list[tuple[str, tuple[int, int], tuple[int, int]]]

    @classmethod
    def of(cls, runs: list[Run], windows: list[tuple[int, int]], seq_len: int) -> RowPlan:
        bounds = sorted({0, seq_len, *(b for r in runs for b in (r.start, r.split, r.end)),
                         *(b for w in windows for b in w)})

        def parts(lo: int, hi: int) -> tuple[int, int]:
            return bisect.bisect_left(bounds, lo), bisect.bisect_left(bounds, hi)

        query_sizes, pieces = [], []
        for lo_window, hi_window in windows:
            for run in runs:
                lo, hi = max(run.start, lo_window), min(run.end, hi_window)
                if lo >= hi:
                    continue
                if run.padding:
                    query_sizes.append(hi - lo)
                    pieces.append(("pad", parts(lo, lo), parts(lo, hi)))
                    continue
                if lo < run.split:
                    query_sizes.append(min(run.split, hi) - lo)
                    pieces.append(("a", parts(run.start, run.split), parts(lo, min(run.split, hi))))
                if hi > run.split:
                    b_start = max(run.split, lo)
                    query_sizes.append(hi - b_start)
                    pieces.append(("b", parts(run.start, b_start), parts(b_start, hi)))
        return cls([b - a for a, b in zip(bounds[:-1], bounds[1:])], query_sizes, pieces)


def _joined(parts: tuple[torch.Tensor, ...], span: tuple[int, int]) -> torch.Tensor:
    """Key parts [i, j) along dim 2: one part as it is, several concatenated, none empty."""
    first, last = span
    if last - first == 1:
        return parts[first]
    if last == first:
        return parts[0].new_empty(*parts[0].shape[:2], 0, parts[0].shape[3])
    return torch.cat(parts[first:last], dim=2)


class VarlenSDPAAttention(SegmentSDPAAttention):
    """The per-segment pieces as two variable-length attention calls for the whole batch (cu_seqlens):
    all Part-A pieces (each bidirectional over itself) in one, all Part-B pieces (queries = the piece,
    keys = its whole segment, causal aligned lower-right) in the other; padding outputs its own value.
    Token indices are built once per batch on the host; every layer then runs two kernels plus a few
    gathers. ``kernel`` defaults to torch.nn.attention.varlen (flash: CUDA, bf16/fp16); other inputs
    take the per-segment path, whose layout this class already holds."""

    def __init__(self, segment_ids: torch.Tensor, part_a: torch.Tensor, kernel=None):
        super().__init__(segment_ids, part_a)
        self.kernel = kernel or flash_varlen_attention
        pieces = {"a": [], "b_query": [], "b_key": [], "pad": []}  # (start, end) in flattened [B·S] positions
        seq_len = segment_ids.shape[1]
        for row, runs in enumerate(self.layout):
            for run in runs:
                start, split, end = (row * seq_len + i for i in (run.start, run.split, run.end))
                if run.padding:
                    pieces["pad"].append((start, end))
                    continue
                if split > start:
                    pieces["a"].append((start, split))
                if end > split:
                    pieces["b_query"].append((split, end))
                    pieces["b_key"].append((start, end))
        device = segment_ids.device
        self.index = {name: _positions(spans, device) for name, spans in pieces.items()}
        self.cu_seqlens = {name: _cu_seqlens(spans, device) for name, spans in pieces.items() if name != "pad"}
        self.max_len = {name: max((end - start for start, end in spans), default=0) for name, spans in pieces.items()}
        # outputs are produced in the order (Part A, Part B, padding); this permutation puts them back
        order = torch.cat([self.index["a"], self.index["b_query"], self.index["pad"]])
        self.inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=device))

    @torch.compiler.disable  # the index tensors change with every batch (see SegmentSDPAAttention)
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.kernel is flash_varlen_attention and not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)):
            return super().__call__(q, k, v)
        batch, q_heads, seq_len, head_dim = q.shape
        # [B, H, S, D] -> tokens [B·S, H, D], the varlen layout
        q, k, v = (t.transpose(1, 2).reshape(batch * seq_len, t.shape[1], head_dim) for t in (q, k, v))
        parts = []
        if self.index["a"].numel():
            a = self.index["a"]
            parts.append(self.kernel(q[a], k[a], v[a], self.cu_seqlens["a"], self.cu_seqlens["a"],
                                     self.max_len["a"], self.max_len["a"], causal=False))
        if self.index["b_query"].numel():
            b_query, b_key = self.index["b_query"], self.index["b_key"]
            parts.append(self.kernel(q[b_query], k[b_key], v[b_key], self.cu_seqlens["b_query"],
                                     self.cu_seqlens["b_key"], self.max_len["b_query"], self.max_len["b_key"],
                                     causal=True))
        if self.index["pad"].numel():  # a padding token attends only to itself
            parts.append(v[self.index["pad"]].repeat_interleave(q_heads // v.shape[1], dim=1))
        out = torch.cat(parts)[self.inverse]  # [B·S, Hq, D] in token order
        return out.view(batch, seq_len, q_heads, head_dim).transpose(1, 2)


def flash_varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_q: int, max_k: int, causal: bool) -> torch.Tensor:
    """q [Tq, Hq, D], k/v [Tk, Hkv, D] packed pieces; ``causal`` is flash's lower-right alignment
    (query i of a piece sees keys up to i + len_k − len_q). CUDA only (flash, bf16/fp16)."""
    from torch.nn.attention.varlen import varlen_attn
    return varlen_attn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, window_size=(-1, 0) if causal else (-1, -1),
                       enable_gqa=q.shape[1] != k.shape[1])


def _positions(spans: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    flat = np.concatenate([np.arange(start, end) for start, end in spans]) if spans else np.zeros(0, np.int64)
    return torch.from_numpy(flat).to(device)


def _cu_seqlens(spans: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    lengths = [end - start for start, end in spans]
    return torch.tensor(np.cumsum([0, *lengths]), dtype=torch.int32, device=device)


def prefix_causal_attention(q: torch.Tensor, k_prefix: torch.Tensor, v_prefix: torch.Tensor,
                            k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Queries q [.., L, D] see all of k_prefix/v_prefix [.., P, D] and causally their own k/v [.., L, D]
    (= lower-right causal over the concatenation). Only visible pairs are computed, in linear memory:
    CUDA kernels take the lower-right alignment directly; on CPU SDPA would materialise that mask, so
    the prefix and the causal part run as two flash calls merged by their log-sum-exp. The CPU flash
    kernel has no dropout (and its backward could not replay a mask), so with dropout the CPU takes
    SDPA's math path over the [L, P + L] mask of this one segment."""
    if k_prefix.shape[-2] == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    if q.device.type == "cpu" and not dropout_p:
        return _PrefixCausalCPU.apply(q, k_prefix, v_prefix, k, v)
    keys, values = torch.cat([k_prefix, k], dim=-2), torch.cat([v_prefix, v], dim=-2)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=causal_lower_right(q.shape[-2], keys.shape[-2]),
                                          dropout_p=dropout_p)


class _PrefixCausalCPU(torch.autograd.Function):
    """softmax over [prefix keys (all) ; own keys (causal)] from two CPU flash-attention calls.

    Forward merges the partial outputs with weights exp(lse_part − lse). Backward is exact because the
    flash backward of each part, given the *merged* output and log-sum-exp, yields that part's share of
    the gradient (the ring-attention identity); the two dq add up.
    """

    @staticmethod
    def forward(ctx, q, k_prefix, v_prefix, k_own, v_own):
        out_prefix, lse_prefix = _cpu_flash(q, k_prefix, v_prefix, 0.0, False)
        out_own, lse_own = _cpu_flash(q, k_own, v_own, 0.0, True)
        lse = torch.logaddexp(lse_prefix, lse_own)  # [B, H, Lq] float32
        out = (out_prefix.float() * (lse_prefix - lse).exp()[..., None]
               + out_own.float() * (lse_own - lse).exp()[..., None]).to(q.dtype)
        ctx.save_for_backward(q, k_prefix, v_prefix, k_own, v_own, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k_prefix, v_prefix, k_own, v_own, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        dq_prefix, dk_prefix, dv_prefix = _cpu_flash_backward(grad_out, q, k_prefix, v_prefix, out, lse, 0.0, False)
        dq_own, dk_own, dv_own = _cpu_flash_backward(grad_out, q, k_own, v_own, out, lse, 0.0, True)
        return dq_prefix + dq_own, dk_prefix, dv_prefix, dk_own, dv_own


_cpu_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_cpu_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


@functools.cache
def _compiled_flex_attention():
    """flex_attention compiled once per process (a per-call or per-module compile would recompile)."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


@functools.cache
def _compiled_create_block_mask():
    """create_block_mask compiled once (torch 2.13 deprecates its `_compile=True` flag in favour of this)."""
    from torch.nn.attention.flex_attention import create_block_mask
    return torch.compile(create_block_mask, dynamic=False)


def glm_mask_mod(segment_ids: torch.Tensor, part_a: torch.Tensor):
    """The rule as a FlexAttention mask_mod over index tensors (heads broadcast: TP-safe)."""

    def mask_mod(b, h, q_idx, kv_idx):
        same = (segment_ids[b, q_idx] == segment_ids[b, kv_idx]) & (segment_ids[b, q_idx] >= 0)
        return (same & (part_a[b, kv_idx] | (kv_idx <= q_idx))) | (q_idx == kv_idx)

    return mask_mod


class FlexGLMAttention:
    """FlexAttention with a BlockMask built once per batch; fully masked blocks are skipped by the kernel."""

    def __init__(self, segment_ids: torch.Tensor, part_a: torch.Tensor):
        batch, seq_len = segment_ids.shape
        self.block_mask = _compiled_create_block_mask()(
            glm_mask_mod(segment_ids, part_a), batch, None, seq_len, seq_len, device=segment_ids.device)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # contiguous: inside a compiled layer, Inductor's CPU Flex template cannot lower the transposed
        # views of the projections (torch 2.13); the copy is O(S) next to the O(S²) kernel
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return _compiled_flex_attention()(q, k, v, block_mask=self.block_mask, enable_gqa=True)
