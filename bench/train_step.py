"""Training-step throughput and MFU: the GLM objective vs. a plain causal-LM batch on the same model,
and vs. transformers' GlmForCausalLM of identical dimensions.

Run: .venv/bin/python bench/train_step.py [--repeats 3] [--batch 4] [--seq-len 256] [--device cpu|cuda]
                                         [--compile] [--activation-checkpointing]

One process, one device. Each step is forward + backward + AdamW with exactly the trainer's loss
(pretrain.train.loss). Our model runs the trainer's own path: parallelize() on a one-rank mesh, i.e.
FSDP2 with its mixed precision (bf16 parameters and activations on GPU, fp32 on CPU; fp32 gradient
reduction and master weights), optionally compiled and activation-checkpointed as train.compile /
train.activation_checkpointing do, and the trainer's AdamW (fused on GPU). Three contenders on the same
token ids and shapes:
  glm     our GLMModel on GLMCollator batches (glm-10b mixture) from the embedded corpus;
  causal  our GLMModel on the same ids as plain next-token prediction (one causal segment per row);
  hf      transformers GlmForCausalLM (GLM-4 architecture) built from our config via export.hf_config,
          bf16 autocast on GPU (its usual recipe), fp32 on CPU.
TFLOP/s counts each batch's real attention work (PaLM 6N + 12·L·H·D·P with P = the keys each query
may see: GLM's bidirectional Part A costs more than a causal row). If the objective adds no overhead
beyond those FLOPs, glm and causal reach the same TFLOP/s. MFU needs a peak: the GPU table
(pretrain.train.metrics) or --peak-tflops. Ratios are within one run, so machine load cancels out
to first order; the contenders are interleaved step by step for the same reason.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import time

import torch

from pretrain.model import GLMModel, model_config
from pretrain.model.attention import visible_pairs
from pretrain.model.export import hf_config, hf_state_dict
from pretrain.tokens import SpecialTokens
from pretrain.model.flops import batch_flops
from pretrain.train.loss import CrossEntropyHead
from pretrain.train.metrics import peak_tflops
from pretrain.train.setup import resolve_dtype

_INPUTS = ("input_ids", "position_ids", "block_position_ids", "segment_ids", "part_a")


def glm_batches(batch: int, seq_len: int, count: int, position_encoding: str) -> list[dict]:
    from pretrain.data.config import DataConfig
    from pretrain.data.loader import build_loader, glm_collator, open_data
    from pretrain.objectives import ObjectiveConfig, raw_length, resolve_gmask_positions
    # [gMASK] block positions as a run of this model would lay them out (configs/glm-4-9b.yaml: auto)
    objective = resolve_gmask_positions(ObjectiveConfig(strategy="glm-10b", gmask_positions="auto"), position_encoding)
    geometry = dict(seq_len=seq_len, raw_len=raw_length(objective, seq_len), global_batch_size=batch,
                    micro_batch_size=batch, dp_rank=0, dp_size=1, seed=0)
    data = DataConfig(corpus="embedded", num_workers=0)
    source = open_data(data)
    collator = glm_collator(source, objective, seq_len=seq_len, seed=0, global_batch_size=batch)
    loader = build_loader(data, collator, **geometry, source=source)
    batches = iter(loader)
    return [next(batches) for _ in range(count)]


def causal_batch(glm: dict) -> dict:
    """The GLM batch's ids as next-token prediction: one causal segment per row, loss on every token."""
    ids = glm["input_ids"]
    batch, seq_len = ids.shape
    positions = torch.arange(seq_len).expand(batch, seq_len)
    return {"input_ids": ids, "target_ids": torch.roll(ids, -1, dims=1), "loss_mask": torch.ones(batch, seq_len),
            "position_ids": positions, "block_position_ids": torch.zeros_like(ids),
            "segment_ids": torch.zeros_like(ids), "part_a": torch.zeros_like(ids, dtype=torch.bool)}


def trainer_path(model: torch.nn.Module, device: torch.device, args) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The trainer's wrapping of a GLMModel (pretrain.train.setup.build_engine) on a one-rank mesh."""
    from pretrain.parallel.mesh import ParallelDims, build_mesh, init_distributed
    from pretrain.parallel.parallelize import parallelize
    from pretrain.train.config import TrainConfig
    from pretrain.train.optim import build_optimizer
    init_distributed(device.type)
    mesh = build_mesh(device.type, ParallelDims(world_size=1, tp=1))
    model = parallelize(model.to(device), mesh, sequence_parallel=False,
                        activation_checkpointing=args.activation_checkpointing, compile=args.compile,
                        param_dtype=resolve_dtype("auto", device), reshard_after_forward=True)
    return model, build_optimizer(model, TrainConfig(lr=1e-4, weight_decay=0.0))


class Contender:
    def __init__(self, name: str, model: torch.nn.Module, batches: list[dict], device: torch.device, cfg, args):
        self.name, self.device, self.cfg = name, device, cfg
        self.batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        if name == "hf":
            self.model = model.to(device)
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.0,
                                               fused=device.type == "cuda")
        else:
            self.model, self.optimizer = trainer_path(model, device, args)
        self.best = [float("inf")] * len(batches)  # fastest time of each batch: load spikes drop out

    def loss(self, batch: dict) -> torch.Tensor:
        if self.name == "hf":  # transformers shifts labels itself: give it the unshifted ids
            return self.model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        head = CrossEntropyHead(batch["target_ids"], batch["loss_mask"], batch["loss_mask"].sum().item())
        loss, _ = self.model(*(batch[k] for k in _INPUTS), output_head=head)  # the trainer's chunked loss
        return loss

    def step(self, i: int, timed: bool) -> None:
        batch = self.batches[i % len(self.batches)]
        _sync(self.device)
        start = time.perf_counter()
        # autocast for transformers only: ours gets its bf16 from FSDP2's mixed precision, as in training
        hf_on_gpu = self.device.type == "cuda" and self.name == "hf"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=hf_on_gpu):
            loss = self.loss(batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        if timed:
            self.best[i % len(self.batches)] = min(self.best[i % len(self.batches)], time.perf_counter() - start)

    def totals(self) -> tuple[float, int, float, float]:
        """(seconds, tokens, attended pairs, model FLOPs) over one pass of the batches at best times."""
        tokens = sum(b["segment_ids"].numel() for b in self.batches)
        pairs = [float(visible_pairs(b["segment_ids"], b["part_a"]).sum()) for b in self.batches]
        flops = sum(batch_flops(self.cfg, b["segment_ids"].numel(), p) for b, p in zip(self.batches, pairs))
        return sum(self.best), tokens, sum(pairs), flops


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the 4 batches (best time kept)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="per-device peak for MFU")
    parser.add_argument("--compile", action="store_true", help="ours: torch.compile per block (train.compile)")
    parser.add_argument("--activation-checkpointing", action="store_true", help="ours: train.activation_checkpointing")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    # GLM-4 architecture (what GlmForCausalLM computes), scaled down; vocab = the embedded tokenizer's
    cfg = model_config("glm-4-9b", vocab_size=2048, hidden_size=args.hidden, num_layers=args.layers,
                       num_heads=args.heads, num_kv_heads=args.kv_heads, head_dim=args.hidden // args.heads,
                       ffn_hidden_size=args.hidden * 8 // 3 // 64 * 64, max_position_embeddings=args.seq_len)
    ours = GLMModel(cfg)
    glm = glm_batches(args.batch, args.seq_len, count=4, position_encoding=cfg.position_encoding)
    causal = [causal_batch(b) for b in glm]
    from transformers import GlmConfig, GlmForCausalLM
    hf = GlmForCausalLM(GlmConfig(**{k: v for k, v in hf_config(ours, SpecialTokens()).items() if k != "architectures"}))
    hf.load_state_dict(hf_state_dict(ours))  # before ours is sharded
    hf.config._attn_implementation = "sdpa"
    contenders = [Contender("glm", ours, glm, device, cfg, args),
                  Contender("causal", GLMModel(cfg), causal, device, cfg, args),
                  Contender("hf", hf, causal, device, cfg, args)]
    batches = len(glm)
    for i in range(batches * (1 + args.repeats)):  # first pass: warm-up
        for contender in contenders:  # interleaved: load changes hit all three alike
            contender.step(i, timed=i >= batches)
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}; ours: FSDP2 "
          f"{resolve_dtype('auto', device)}, compile {args.compile}, AC {args.activation_checkpointing}")
    print(f"model: GLM-4 arch, hidden {cfg.hidden_size}, layers {cfg.num_layers}, heads {cfg.num_heads}/"
          f"{cfg.num_kv_heads}, ffn {cfg.ffn_hidden_size}, vocab {cfg.vocab_size}; batch {args.batch} x "
          f"{args.seq_len}, {batches} batches, best of {args.repeats} timed passes")
    base_seconds, base_tokens, _, base_flops = contenders[1].totals()
    print("| contender | tokens/s | keys/query | TFLOP/s (real attention) | MFU | tokens/s vs causal | "
          "TFLOP/s vs causal |\n|---|---|---|---|---|---|---|")
    for c in contenders:
        seconds, tokens, pairs, flops = c.totals()
        tflops = flops / seconds / 1e12
        mfu = f"{tflops / peak:.1%}" if peak else "n/a"
        print(f"| {c.name} | {tokens / seconds:,.0f} | {pairs / tokens:.1f} | {tflops:.4f} | {mfu} | "
              f"{(tokens / seconds) / (base_tokens / base_seconds):.2f} | "
              f"{(flops / seconds) / (base_flops / base_seconds):.2f} |")


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


if __name__ == "__main__":
    main()
