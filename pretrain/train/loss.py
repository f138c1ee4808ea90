"""The GLM loss: Σ CE(logits, target_ids)·loss_mask / (Part-B tokens of the whole optimizer step).

Dividing every micro-batch by the *global* count (all micro-batches, all data-parallel ranks, known
before the first backward) makes gradient accumulation and data parallelism exact: the summed
gradients equal those of one big batch. With tensor parallelism the logits arrive vocab-sharded
(DTensor ``Shard(-1)``) and ``loss_parallel`` computes the cross entropy without gathering them.

Training never builds the [B, S, V] logits: the model hands its normed hidden states and head weight
to ``CrossEntropyHead`` (GLMModel's ``output_head``), which runs head matmul + cross entropy over
chunks of tokens and computes each chunk's gradients right away (as Liger's fused linear cross
entropy does), keeping only dL/dhidden [N, H] and dL/dW [V, H] (float32) until backward. The head matmul runs
three times per token, as in the unfused path (no recomputation), and the peak holds one chunk of
logits instead of several full fp32 copies (a 151,552-word vocabulary makes one 8K row's fp32 logits
4.6 GB). Under TP each chunk's forward and backward run through DTensor and ``loss_parallel``: no
collective is written here.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

# fp32 logits of one chunk: 256 MiB bounds the loss's peak at a few of these (logits, log-softmax and
# their gradients) while keeping the chunk's matmul large (442 tokens at a 151,552-word vocabulary).
LOGITS_CHUNK_BYTES = 256 * 2**20
MIN_CHUNK_TOKENS = 64


def loss_context(logits: torch.Tensor):
    """Forward *and* backward of a vocab-sharded cross entropy must run inside loss_parallel()."""
    return loss_parallel() if isinstance(logits, DTensor) else contextlib.nullcontext()


def token_cross_entropy(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """Per-token CE (float32, shaped like ``target_ids``) from logits [..., V], plain or vocab-sharded;
    call it under ``loss_context(logits)``."""
    ce = F.cross_entropy(logits.flatten(0, -2).float(), target_ids.flatten(), reduction="none")  # [N]
    if isinstance(ce, DTensor):
        ce = ce.to_local()  # replicated over TP: every rank holds the full per-token loss
    return ce.view(target_ids.shape)


def chunk_tokens_for(weight: torch.Tensor) -> int:
    """Tokens per chunk so that one chunk's fp32 logits (this rank's vocabulary shard) take LOGITS_CHUNK_BYTES."""
    vocab_local = (weight.to_local() if isinstance(weight, DTensor) else weight).shape[0]
    return max(MIN_CHUNK_TOKENS, LOGITS_CHUNK_BYTES // (4 * vocab_local))


class CrossEntropyHead:
    """The ``output_head`` for GLMModel: ``head(hidden, weight) -> (Σ CE·loss_mask / denominator, CE [B, S])``.

    ``denominator`` is the step's Part-B count when training (the scalar is then the micro-batch's share
    of the loss) and 1 when evaluating. CE is detached. A pytree node (tensors: target_ids and
    loss_mask, rows first), so a pipeline schedule splits it into micro-batches with the other model
    inputs; FSDP2 casts the floating tensors of its inputs to the compute dtype, which leaves a 0/1
    loss_mask exact (a float loss_mask / denominator would not be). ``==`` because DeepSpeed's AutoTP
    checks that every TP rank got equal arguments.
    """

    def __init__(self, target_ids: torch.Tensor, loss_mask: torch.Tensor, denominator: float = 1.0,
                 chunk_tokens: int | None = None):
        self.target_ids, self.loss_mask = target_ids, loss_mask
        self.denominator, self.chunk_tokens = denominator, chunk_tokens

    def __call__(self, hidden: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        token_weights = self.loss_mask.float() / self.denominator
        return chunked_cross_entropy(hidden, weight, self.target_ids, token_weights, self.chunk_tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CrossEntropyHead):
            return NotImplemented
        device = self.target_ids.device
        return ((self.denominator, self.chunk_tokens) == (other.denominator, other.chunk_tokens)
                and torch.equal(self.target_ids, other.target_ids.to(device))
                and torch.equal(self.loss_mask, other.loss_mask.to(device)))

    __hash__ = None


pytree.register_pytree_node(
    CrossEntropyHead,
    lambda head: ((head.target_ids, head.loss_mask), (head.denominator, head.chunk_tokens)),
    lambda tensors, context: CrossEntropyHead(*tensors, *context),
    serialized_type_name="pretrain.train.loss.CrossEntropyHead")


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target_ids: torch.Tensor,
                          token_weights: torch.Tensor, chunk_tokens: int | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ CE·token_weights, CE [B, S] float32, detached) of logits = hidden [B, S, H] @ weight [V, H]ᵀ,
    never materialising more than ``chunk_tokens`` rows of logits. ``weight`` may be vocab-sharded
    (DTensor ``Shard(0)``, with ``hidden`` a replicated DTensor): the TP plan's head."""
    chunk = chunk_tokens or chunk_tokens_for(weight)
    flat, targets, weights = hidden.flatten(0, 1), target_ids.flatten(), token_weights.flatten().float()
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        loss, ce = _HeadCrossEntropy.apply(flat, weight, targets, weights, chunk)
    else:
        ce = torch.cat([_chunk_cross_entropy(flat[s:s + chunk], weight, targets[s:s + chunk])
                        for s in range(0, flat.shape[0], chunk)])
        loss = (ce * weights).sum()
    return loss, ce.view(target_ids.shape)


def _chunk_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight)  # [n, V] (vocab-sharded under TP)
    with loss_context(logits):
        return token_cross_entropy(logits, targets)


class _HeadCrossEntropy(torch.autograd.Function):
    """Forward computes the loss *and* its gradients chunk by chunk; backward only scales them by the
    incoming gradient of the loss. Autograd differentiates each chunk's cross entropy (inside
    loss_parallel under TP); the head matmul's two gradient matmuls are F.linear's backward written out,
    so that dL/dW accumulates in place into one float32 buffer instead of a new [V, H] per chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, weights, chunk):
        ce_chunks, grad_hidden_chunks = [], []
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]  # [n, H]
            logits = F.linear(h, weight).requires_grad_()  # [n, V] in the compute dtype, a leaf here
            with torch.enable_grad(), loss_context(logits):
                ce = token_cross_entropy(logits, targets[start:start + chunk])  # float32 [n]
                d_logits, = torch.autograd.grad((ce * weights[start:start + chunk]).sum(), logits)
            ce_chunks.append(ce.detach())
            grad_hidden_chunks.append(d_logits @ weight)  # [n, H]
            if grad_weight.dtype == d_logits.dtype:
                grad_weight.addmm_(d_logits.t(), h)
            else:  # bf16 matmul, float32 sum over chunks
                grad_weight.add_(d_logits.t() @ h)
            del logits, d_logits
        ce = torch.cat(ce_chunks)
        ctx.grads = (torch.cat(grad_hidden_chunks), grad_weight.to(weight.dtype))
        ctx.mark_non_differentiable(ce)
        return (ce * weights).sum(), ce

    @staticmethod
    def backward(ctx, grad_loss, grad_ce):
        grad_hidden, grad_weight = ctx.grads
        del ctx.grads  # a second backward through the same graph fails instead of reusing scaled buffers
        return grad_hidden.mul_(grad_loss), grad_weight.mul_(grad_loss), None, None, None


class StrategyLosses:
    """Running Σ CE·mask and Σ mask per masking strategy (indices into collator.strategy_names)."""

    def __init__(self, num_strategies: int, device: torch.device):
        self.sums = torch.zeros(num_strategies, dtype=torch.float64, device=device)
        self.counts = torch.zeros(num_strategies, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, weighted_ce: torch.Tensor, loss_mask: torch.Tensor, strategy_ids: torch.Tensor) -> None:
        """``weighted_ce`` = CE·loss_mask [B, S]."""
        ids = strategy_ids.clamp(min=0).flatten()  # padding (-1) has loss_mask 0
        self.sums.index_add_(0, ids, weighted_ce.detach().flatten().double())
        self.counts.index_add_(0, ids, loss_mask.flatten().double())

    def packed(self) -> torch.Tensor:
        return torch.cat([self.sums, self.counts])

    @staticmethod
    def means(packed: torch.Tensor, names: tuple[str, ...], prefix: str) -> dict[str, float]:
        """{prefix/name: mean CE} for strategies that had Part-B tokens (after an all-reduce of packed())."""
        sums, counts = packed.double().cpu().chunk(2)
        return {f"{prefix}/{name}": (s / c).item() for name, s, c in zip(names, sums, counts) if c > 0}
