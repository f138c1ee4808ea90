"""FLOPs, communication volume and step time of a layout (estimates; the constants are in hardware.py).

    compute    the slowest pipeline stage's FLOPs (model/flops.py; + one forward with activation
               checkpointing) at MATMUL_EFFICIENCY of the dense peak; the trainer's stage split
               (layout.stage_counts)
    bubble     pipeline idle time: compute x (pp - 1) / (micro-batches per round x virtual stages)
    tp, cp     per block: TP all-reduces the block's output twice forward and its input gradient twice
               backward (sequence parallel trades each for a reduce-scatter + all-gather: same
               bytes); CP all-gathers K/V forward and reduce-scatters their gradients backward; both
               sit on the critical path, and a recomputed forward repeats the forward ones
    pp         point-to-point activations forward and their gradients backward, per micro-batch and
               virtual stage, on the critical path
    dp         FSDP2: all-gather of the compute copies per micro-batch forward (and again for
               backward with fsdp=full), float32 reduce-scatter per step (per micro-batch with
               reduce_every_microbatch); it overlaps compute, so only what exceeds compute counts
A group talks over NVLink when its ranks sit in one node, else over InfiniBand (layout.inside_node).
"""
from __future__ import annotations

from dataclasses import dataclass

from pretrain.model.config import ModelConfig
from pretrain.model.flops import batch_flops
from pretrain.plan.hardware import LINK_EFFICIENCY, MATMUL_EFFICIENCY
from pretrain.plan.layout import Layout, Workload, bubble, inside_node, micro_batches, rank_layers
from pretrain.plan.memory import block_params, root_params


@dataclass
class Cost:
    """Per step, per GPU: bytes each rank sends per parallel dimension, and seconds."""
    tp_bytes: float
    cp_bytes: float
    pp_bytes: float
    dp_bytes: float
    compute_s: float
    bubble_s: float
    tp_s: float
    cp_s: float
    pp_s: float
    dp_exposed_s: float

    @property
    def step_s(self) -> float:
        return self.compute_s + self.bubble_s + self.tp_s + self.cp_s + self.pp_s + self.dp_exposed_s


def step_flops(w: Workload) -> float:
    """Model FLOPs of one optimizer step, as the trainer's MFU counts them (model/flops.py), for rows
    whose attention is causal (S(S+1)/2 pairs each; GLM rows count their real pairs in the trainer)."""
    return batch_flops(w.model, w.tokens, w.global_batch * w.seq_len * (w.seq_len + 1) / 2)


def mfu(w: Workload, step_s: float) -> float:
    return step_flops(w) / (step_s * w.gpus * w.gpu.peak_tflops * 1e12)


def estimate_cost(w: Workload, lay: Layout) -> Cost:
    cfg, e = w.model, w.compute_bytes
    m = micro_batches(w, lay)
    tokens = lay.micro_batch * w.seq_len / lay.cp  # this rank's tokens per micro-batch
    per_rank = rank_layers(w, lay)
    layers = max(per_rank)
    forwards = 2 if lay.activation_checkpointing else 1

    # compute: the slowest pipeline rank (a recomputed forward adds a third to the blocks' forward + backward)
    pairs = lay.micro_batch * w.seq_len * (w.seq_len + 1) / 2 / lay.cp
    recompute = (forwards + 2) / 3
    head = batch_flops(cfg, tokens, pairs=0, layers=0, head=True)
    slowest = max(batch_flops(cfg, tokens, pairs, layers=n, head=False) * recompute
                  + (head if rank == lay.pp - 1 else 0) for rank, n in enumerate(per_rank))
    compute_s = m * slowest / lay.tp / (w.gpu.peak_tflops * 1e12 * MATMUL_EFFICIENCY)

    activation = tokens * cfg.hidden_size * e  # one [b, s/cp, H] tensor
    tp_bytes = cp_bytes = pp_bytes = 0.0
    if lay.tp > 1:
        all_reduces = layers * (2 * forwards + 2) + 2  # + the embedding's forward, the head input's gradient
        tp_bytes = m * all_reduces * 2 * (lay.tp - 1) / lay.tp * activation
    if lay.cp > 1:
        kv = 2 * lay.micro_batch * w.seq_len * cfg.num_kv_heads * cfg.head_dim / lay.tp * e  # K, V of the row
        cp_bytes = m * layers * (forwards + 1) * (lay.cp - 1) / lay.cp * kv
    if lay.pp > 1:
        virtual = lay.pp_virtual_stages if lay.pp_schedule == "interleaved_1f1b" else 1
        pp_bytes = 2 * m * virtual * activation / (lay.tp if lay.sequence_parallel else 1)
    params = max(n * block_params(cfg, lay.tp) + root_params(cfg, lay, first=rank == 0, last=rank == lay.pp - 1)
                 for rank, n in enumerate(per_rank))
    gathers = m * (2 if lay.fsdp == "full" else 1)
    reduces = m if lay.reduce_every_microbatch else 1
    dp_bytes = (lay.fsdp_ranks - 1) / lay.fsdp_ranks * params * (gathers * e + reduces * 4)

    tp_s = tp_bytes / _bandwidth(w, lay, "tp", lay.tp)
    cp_s = cp_bytes / _bandwidth(w, lay, "cp", lay.cp)
    pp_s = pp_bytes / _bandwidth(w, lay, "pp", lay.pp)
    dp_s = dp_bytes / _bandwidth(w, lay, "fsdp", lay.fsdp_ranks)
    return Cost(tp_bytes=tp_bytes, cp_bytes=cp_bytes, pp_bytes=pp_bytes, dp_bytes=dp_bytes, compute_s=compute_s,
                bubble_s=bubble(w, lay) * (compute_s + tp_s + cp_s), tp_s=tp_s, cp_s=cp_s, pp_s=pp_s,
                dp_exposed_s=max(0.0, dp_s - compute_s))


def _bandwidth(w: Workload, lay: Layout, dim: str, size: int) -> float:
    """Bytes/s a rank of this group sends (NVLink inside a node, InfiniBand across nodes)."""
    gbs = w.gpu.nvlink_gbs if inside_node(w, lay, dim, size) else w.gpu.ib_gbs
    return gbs * 1e9 * LINK_EFFICIENCY
