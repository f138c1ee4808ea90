"""Memory per rank of one forward + backward under context parallelism: cp=2 against cp=1 at seq 4096.

    .venv/bin/python bench/context_memory.py                      # cp 1 and 2, seq 4096, prints a table
    .venv/bin/python bench/context_memory.py --cp 1 2 4 --seq-len 8192

The GLM-4 architecture scaled down (hidden 256, 4 layers, 8/2 heads, ffn 640, vocab 2048), one packed
row of 4 documents (Part A 75 % of each), the sdpa backend, fp32, the trainer's loss (Σ CE over Part B).
Each cp size is one torchrun launch (gloo); every rank runs a warm-up step, then the measured one, and
reports (the table shows the largest rank):
  saved    bytes of the tensors autograd keeps for backward (unique storages, weights excluded): the
           activations
  peak     the rise of the process's peak RSS over the step (Linux VmHWM, reset just before it)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

MODEL = dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, head_dim=32, ffn_hidden_size=640,
             vocab_size=2048, position_encoding="rope_1d", partial_rotary_factor=0.5, rope_interleaved=True,
             norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, attention_backend="sdpa")


def packed_row(seq_len: int, documents: int = 4, part_a_share: float = 0.75) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    length = seq_len // documents
    segment_ids = torch.arange(seq_len) // length
    offset = torch.arange(seq_len) % length
    part_a = offset < int(part_a_share * length)
    return {"input_ids": torch.randint(0, MODEL["vocab_size"], (1, seq_len), generator=gen),
            "position_ids": offset[None], "block_position_ids": torch.zeros(1, seq_len, dtype=torch.long),
            "segment_ids": segment_ids[None], "part_a": part_a[None],
            "target_ids": torch.randint(0, MODEL["vocab_size"], (1, seq_len), generator=gen),
            "loss_mask": (~part_a).float()[None]}


def _vm(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))


def measure(seq_len: int) -> dict:
    """One rank of a torchrun launch: the step's saved-activation bytes and peak RSS rise."""
    from pretrain.model.glm import GLMModel
    from pretrain.model.config import ModelConfig
    from pretrain.parallel.context import ContextParallelAttention, shard_rows
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    cp, rank = dist.get_world_size(), dist.get_rank()
    torch.manual_seed(0)
    model = GLMModel(ModelConfig(max_position_embeddings=seq_len, **MODEL))
    batch = packed_row(seq_len)
    if cp > 1:
        model.build_attention = ContextParallelAttention(dist.group.WORLD)
        batch = shard_rows(batch, cp, rank)
    inputs = [batch[k] for k in ("input_ids", "position_ids", "block_position_ids", "segment_ids", "part_a")]

    weights = {param.untyped_storage().data_ptr() for param in model.parameters()}

    def step(saved: dict | None) -> None:
        def pack(tensor):
            storage = tensor.untyped_storage()
            if saved is not None and storage.data_ptr() not in weights:  # linears save their weight too
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            logits = model(*inputs)
            loss = (F.cross_entropy(logits.flatten(0, 1), batch["target_ids"].flatten(), reduction="none")
                    * batch["loss_mask"].flatten()).sum()
        loss.backward()
        model.zero_grad(set_to_none=False)  # keep the gradient buffers: the measured step reuses them

    step(None)
    saved: dict[int, int] = {}
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS
    before = _vm("VmRSS")
    step(saved)
    result = {"rank": rank, "saved": sum(saved.values()), "peak": _vm("VmHWM") - before}
    dist.destroy_process_group()
    return result


def launch(cp: int, seq_len: int) -> list[dict]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cp}", __file__,
               "--child", "--seq-len", str(seq_len)]
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode:
        raise SystemExit(f"cp={cp} failed:\n{out.stderr[-4000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.seq_len)), flush=True)
        return
    rows = {cp: launch(cp, args.seq_len) for cp in args.cp}
    base = max(r["saved"] for r in rows[args.cp[0]]), max(r["peak"] for r in rows[args.cp[0]])
    print(f"seq_len {args.seq_len}, one packed row, per rank (largest rank)")
    first = args.cp[0]
    print(f"| cp | saved activations MiB | peak RSS rise MiB | saved vs cp={first} | peak vs cp={first} |")
    print("|---|---|---|---|---|")
    for cp, ranks in rows.items():
        saved, peak = max(r["saved"] for r in ranks), max(r["peak"] for r in ranks)
        print(f"| {cp} | {saved / 2**20:.1f} | {peak / 2**20:.1f} | {saved / base[0]:.2f} | {peak / base[1]:.2f} |")


if __name__ == "__main__":
    main()
