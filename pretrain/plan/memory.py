"""Peak memory per GPU of a training step under the torch engine, by what holds it.

What the trainer keeps (FSDP2 with param_dtype = compute dtype, reduce_dtype float32, AdamW):
    parameters   float32 shards (1/fsdp_ranks) + gathered compute copies: the root module (embeddings,
                 final norm, head) from forward to the end of backward; per block one or two at a time
                 (fsdp=full) or every block from its forward to its backward (grad_op)
    gradients    float32 shards after the reduce-scatter; with gradient accumulation FSDP2 keeps
                 *unsharded* float32 gradients from the first micro-batch to the last unless
                 parallel.reduce_every_microbatch reduce-scatters each one
    optimizer    AdamW's two float32 moments per shard
    activations  what autograd saves, counted tensor by tensor for GLMModel (below); with activation
                 checkpointing each block's input only, plus one block recomputed during backward
    in flight    the pipeline schedule's further micro-batches (1F1B: pp - rank; GPipe: all;
                 interleaved 1F1B: the first rank's count, taken for every rank)
    loss         pretrain/train/loss.py: dL/dW float32 [V/tp, H] and dL/dh [tokens, H] from the loss
                 forward to backward, plus one chunk's logits, log-softmax and their gradients
    workspace    backward's transients: a block's unsharded gradients and its activation gradients
The peak is the larger of two moments of the last micro-batch: the loss forward (every activation
saved, the chunk buffers live) and the first block's backward (workspace instead of the chunk), and
the optimizer step. The fullest pipeline rank decides (layout.rank_layers: the trainer's split).

Activations per token of one block (elements of the compute dtype, local to a TP rank):
    2·H (norm inputs; /tp with sequence parallel) + 2·H (norm outputs, gathered, saved by the
    projections) + (Hq + 2·Hkv)·D/tp (q, k, v after RoPE; the CPU sdpa path repeats K/V to Hq heads)
    + 2·Hq·D/tp (attention output, and its contiguous copy o_proj saves) + (2 GeLU | 4 GLU)·F/tp
which is 17·H for a GPT-style block (Korthikanti et al. 2022 count 34·H bytes in fp16), plus float32
norm statistics and the attention log-sum-exp. Context parallelism keeps S/cp queries per rank and
saves the all-gathered K/V of the whole sequence.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from pretrain.model.config import ModelConfig
from pretrain.model.flops import block_matmul_params
from pretrain.plan.layout import Layout, Workload, in_flight_on, micro_batches, rank_layers

FP32 = 4


@dataclass
class Memory:
    """Bytes per GPU at the predicted peak; the fields add up to ``total``."""
    params: float
    grads: float
    optimizer: float
    activations: float  # one micro-batch, every layer of the stage
    in_flight: float  # the pipeline's further micro-batches
    loss: float
    workspace: float

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    def gib(self) -> dict[str, float]:
        return {**{f.name: getattr(self, f.name) / 2**30 for f in fields(self)}, "total": self.total / 2**30}


def block_params(cfg: ModelConfig, tp: int) -> float:
    """Parameters of one block on one TP rank (column/row-split weights and their split biases / tp)."""
    qkv_bias = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim if cfg.qkv_bias else 0
    mlp_bias = (2 if cfg.mlp != "gelu" else 1) * cfg.ffn_hidden_size if cfg.bias else 0
    replicated = 2 * _norm_params(cfg) + (2 * cfg.hidden_size if cfg.bias else 0)  # norms, o_proj and down_proj biases
    return (block_matmul_params(cfg) + qkv_bias + mlp_bias) / tp + replicated


def root_params(cfg: ModelConfig, lay: Layout, first: bool, last: bool) -> float:
    """Embeddings (first stage) and final norm + head (last stage) on one TP rank."""
    total = 0.0
    if first:
        total += cfg.vocab_size * cfg.hidden_size / lay.tp  # vocab-parallel embedding
        if cfg.position_encoding == "learned_2d":  # split over TP only with sequence parallelism
            total += 2 * (cfg.max_position_embeddings + 1) * cfg.hidden_size / (lay.tp if lay.sequence_parallel else 1)
    if last:
        total += _norm_params(cfg)
        if not cfg.tie_embeddings or not first:  # a tied head on another stage holds its own copy
            total += cfg.vocab_size * cfg.hidden_size / lay.tp
    return total


def rank0_params(w: Workload, lay: Layout) -> float:
    """Parameters rank 0 holds at rest (its FSDP shard of the first stage): what a dry run counts."""
    stage = rank_layers(w, lay)[0] * block_params(w.model, lay.tp)
    return (stage + root_params(w.model, lay, first=True, last=lay.pp == 1)) / lay.fsdp_ranks


def model_params(cfg: ModelConfig) -> int:
    """All parameters of GLMModel (tied weights once): the sum the per-rank counts split."""
    one = Layout(tp=1, pp=1, cp=1, dp=1, micro_batch=1)
    return int(cfg.num_layers * block_params(cfg, 1) + root_params(cfg, one, first=True, last=True))


def _norm_params(cfg: ModelConfig) -> int:
    return cfg.hidden_size * (2 if cfg.norm == "layernorm" else 1)


def block_activations(w: Workload, lay: Layout) -> float:
    """Bytes one block saves for backward for one micro-batch (no activation checkpointing)."""
    cfg, e = w.model, w.compute_bytes
    tokens = lay.micro_batch * w.seq_len / lay.cp  # this rank's queries
    h, d, tp = cfg.hidden_size, cfg.head_dim, lay.tp
    sp = tp if lay.sequence_parallel else 1
    kv_heads = cfg.num_heads if w.cpu else cfg.num_kv_heads
    q_and_outputs = 3 * cfg.num_heads * d / tp  # q, the attention output and o_proj's copy of it
    per_token = 2 * h / sp + 2 * h + q_and_outputs + (4 if cfg.mlp != "gelu" else 2) * cfg.ffn_hidden_size / tp
    kv = 2 * kv_heads * d / tp * lay.micro_batch * w.seq_len  # all-gathered under context parallelism
    stats = 2 * (2 if cfg.norm == "layernorm" else 1) / sp + cfg.num_heads / tp  # float32 per token
    dropout_masks = 2 * h / sp if cfg.dropout > 0 else 0  # bool per element
    return tokens * (per_token * e + stats * FP32 + dropout_masks) + kv * e


def stage_activations(w: Workload, lay: Layout, layers: int, last: bool) -> float:
    """Bytes one micro-batch leaves saved on a stage until its backward."""
    cfg, e = w.model, w.compute_bytes
    tokens = lay.micro_batch * w.seq_len / lay.cp
    sp = lay.tp if lay.sequence_parallel else 1
    if lay.activation_checkpointing:
        per_layer = tokens * cfg.hidden_size / sp * e  # each block's input
    else:
        per_layer = block_activations(w, lay)
    rotary = tokens * cfg.rotary_dim * 2 * e  # cos/sin, shared by the blocks
    final_norm = tokens * (cfg.hidden_size / sp * e + 2 * FP32) if last else 0.0
    return layers * per_layer + rotary + final_norm


def loss_buffers(w: Workload, lay: Layout) -> tuple[float, float]:
    """(held from loss forward to backward, one chunk's transient) in bytes, last stage."""
    cfg, e = w.model, w.compute_bytes
    tokens = lay.micro_batch * w.seq_len / lay.cp
    vocab = cfg.vocab_size / lay.tp
    grad_weight = vocab * cfg.hidden_size * (FP32 + (e if e != FP32 else 0))  # float32 sum (+ its cast)
    hidden = 2 * tokens * cfg.hidden_size * e  # the gathered normed hidden states and dL/dh
    chunk = min(tokens, max(w.min_chunk_tokens, w.loss_chunk_bytes // (FP32 * vocab)))
    # logits (compute dtype) + float32 copy (bf16 only) + log-softmax + its gradient + dL/dlogits;
    # loss_parallel's vocab-sharded log-softmax keeps one more (the shifted logits)
    per_logit = e + (FP32 if e != FP32 else 0) + (3 + (lay.tp > 1)) * FP32
    return grad_weight + hidden, chunk * vocab * per_logit


def estimate_memory(w: Workload, lay: Layout) -> Memory:
    """The peak of the fullest pipeline rank (``Memory.total``) with its breakdown: the first (embeddings,
    most micro-batches in flight), the second (the most in flight of the middle ranks) or the last (head, loss)."""
    ranks = sorted({0, min(1, lay.pp - 1), lay.pp - 1})
    return max((_rank_memory(w, lay, rank) for rank in ranks), key=lambda m: m.total)


def _rank_memory(w: Workload, lay: Layout, rank: int) -> Memory:
    cfg, e = w.model, w.compute_bytes
    first, last = rank == 0, rank == lay.pp - 1
    layers = rank_layers(w, lay)[rank]
    per_block = block_params(cfg, lay.tp)
    root = root_params(cfg, lay, first, last)
    params = layers * per_block + root
    shard = params / lay.fsdp_ranks
    # gathered compute copies: the root stays gathered; blocks one at a time (two on GPU, where FSDP2
    # prefetches the next block's all-gather on its own stream), or every block (grad_op)
    working_blocks = min(layers, 1 if w.cpu else 2)
    gathered = (root + (layers if lay.fsdp == "grad_op" else working_blocks) * per_block) * e
    accumulating = micro_batches(w, lay) > 1
    if accumulating and not lay.reduce_every_microbatch:
        grads = params * FP32  # FSDP2's unsharded float32 accumulators, until the last micro-batch
    elif accumulating:
        grads = shard * FP32  # reduced every micro-batch into the sharded gradients
    else:
        grads = 0.0  # the step's only backward: shards appear while activations are freed
    activations = stage_activations(w, lay, layers, last)
    flights = in_flight_on(w, lay, rank)
    held, chunk = loss_buffers(w, lay) if last else (0.0, 0.0)
    tokens = lay.micro_batch * w.seq_len / lay.cp
    # a block's new unsharded gradients, then its float32 reduce-scatter buffers (on GPU the previous
    # block's reduce-scatter overlaps the next block's gradients), plus the activation gradients
    block_grads = per_block * (e + FP32) if not w.cpu else per_block * max(e, FP32)
    backward = block_grads + 2 * tokens * (cfg.hidden_size + cfg.ffn_hidden_size / lay.tp) * e
    if lay.activation_checkpointing:
        backward += block_activations(w, lay)  # the block being recomputed
    optimizer_step = shard * FP32 * (1 if w.cpu else 2)  # grads appear; foreach temporaries on GPU
    dynamic = max(chunk, backward)
    memory = Memory(params=shard * FP32 + gathered, grads=grads, optimizer=2 * shard * FP32,
                    activations=activations, in_flight=(flights - 1) * activations, loss=held, workspace=dynamic)
    step_peak = shard * FP32 * 3 + optimizer_step  # master + moments + (sharded grads, transients)
    if step_peak > memory.total:
        return Memory(params=shard * FP32, grads=shard * FP32, optimizer=2 * shard * FP32, activations=0.0,
                      in_flight=0.0, loss=0.0, workspace=optimizer_step - shard * FP32)
    return memory
