"""One-command check of the CUDA path (`make gpu-check`, < 8 minutes on one H100/H200): JSON + Markdown
in --out (gpu_check.json, gpu_check.md); exit status 1 if any check fails.

    versions       torch/CUDA/NCCL/libraries, the GPU, and the FSDP2 / DTensor / Flex APIs the trainer uses
    flex_vs_dense  FlexAttention forward + backward in bf16 vs a dense fp32 reference on random packed GLM
                   layouts, GQA 16:1 and 8:1, head_dim 128 (bf16 error judged against dense bf16's)
    compiled_block one GLM-4-9B block, activation-checkpointed and compiled as the trainer does, over three
                   layouts: one compile, no graph break (dynamo's counters; TORCH_LOGS=recompiles,graph_breaks)
    block_mask     BlockMask build time and memory at S = 8k / 32k / 128k
    flex_vs_flash  Flex fwd+bwd on a packed GLM row vs causal flash SDPA at 8k / 32k: useful pairs/s
    trainer_run    a scaled-down GLM-4-shaped run (hidden 1024, 8 layers, seq 2048, compile, AC, meta init):
                   12 steps with eval, checkpoint at 10, resume from it, the same losses; tokens/s, MFU,
                   peak memory, host syncs under torch.cuda.set_sync_debug_mode("warn") (bench/_gpu_check_run.py)

Without CUDA (or with --dry-run) it is a reduced dry run at tiny sizes: the parts that run on CPU run
(Flex forward only, eager; compile with the aot_eager backend; the trainer without compile), the
CUDA-only ones are skipped with the reason recorded. The test suite runs the dry run.
"""
from __future__ import annotations

import argparse
import inspect
import json
import platform
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.model.attention import build_attention, glm_mask_mod, visible_pairs
from pretrain.model.presets import model_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sizes:
    attn: tuple[int, int, int, int]  # batch, query heads, seq, head_dim (flex_vs_dense)
    block: dict  # model_config overrides of glm-4-9b for the compiled block
    block_seq: int
    mask_lengths: tuple[int, ...]
    flash_lengths: tuple[int, ...]


GPU = Sizes(attn=(2, 16, 2048, 128), block={"vocab_size": 2048}, block_seq=4096,
            mask_lengths=(8192, 32768, 131072), flash_lengths=(8192, 32768))
DRY = Sizes(attn=(2, 16, 128, 16), block={"vocab_size": 256, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2,
                                          "head_dim": 16, "ffn_hidden_size": 128}, block_seq=64,
            mask_lengths=(256, 512, 1024), flash_lengths=())


class Skip(Exception):
    """A check (or part) that cannot run here; the message is the recorded reason."""


@dataclass
class Context:
    device: torch.device
    dry: bool
    sizes: Sizes
    out: Path
    data_cache: Path


# ----------------------------------------------------------------------------- helpers
def packed_layout(batch: int, seq_len: int, seed: int, device: torch.device, mean_segment: int | None = None):
    """A random packed GLM layout as the collator makes them: contiguous segments of random lengths, each
    Part A then Part B, sometimes a padding tail. Returns (segment_ids [B, S] int64, part_a [B, S] bool)."""
    rng = np.random.default_rng(seed)
    mean_segment = mean_segment or max(8, seq_len // 6)
    segment_ids = np.full((batch, seq_len), -1, dtype=np.int64)
    part_a = np.zeros((batch, seq_len), dtype=bool)
    for row in range(batch):
        end = seq_len - (int(rng.integers(1, seq_len // 16 + 2)) if rng.random() < 0.5 else 0)
        pos, segment = 0, 0
        while pos < end:
            length = min(int(rng.integers(1, 2 * mean_segment)), end - pos)
            segment_ids[row, pos:pos + length] = segment
            part_a[row, pos:pos + int(rng.integers(0, length + 1))] = True
            pos, segment = pos + length, segment + 1
    return torch.from_numpy(segment_ids).to(device), torch.from_numpy(part_a).to(device)


def timed(fn, device: torch.device, repeats: int = 3) -> float:
    """Fastest of ``repeats`` calls after one warm-up (compilation) call, in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flex(ctx: Context, segment_ids: torch.Tensor, part_a: torch.Tensor):
    """The model's Flex path (compiled BlockMask + kernel) on CUDA; eager Flex (forward only) in the dry run,
    where compiling it would take minutes of the CPU."""
    if not ctx.dry:
        return build_attention("flex", segment_ids, part_a)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    batch, seq_len = segment_ids.shape
    mask = create_block_mask(glm_mask_mod(segment_ids, part_a), batch, None, seq_len, seq_len, device="cpu")

    def eager(q, k, v):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(q, k, v, block_mask=mask, enable_gqa=True)

    return eager


# ----------------------------------------------------------------------------- checks
def check_versions(ctx: Context) -> dict:
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import distribute_tensor
    numbers = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
               "numpy": np.__version__, "commit": _git_commit()}
    for name in ("triton", "tokenizers", "datasets", "transformers", "deepspeed", "wandb"):
        numbers[name] = _version_of(name)
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        numbers.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                       memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                       nccl=".".join(map(str, torch.cuda.nccl.version())))
    apis = {
        "FSDPModule.set_gradient_divide_factor": hasattr(FSDPModule, "set_gradient_divide_factor"),
        "FSDPModule.set_force_sum_reduction_for_comms": hasattr(FSDPModule, "set_force_sum_reduction_for_comms"),
        "FSDPModule.set_requires_gradient_sync": hasattr(FSDPModule, "set_requires_gradient_sync"),
        "distribute_tensor(src_data_rank=)": "src_data_rank" in inspect.signature(distribute_tensor).parameters,
        "init_process_group(device_id=)": "device_id" in inspect.signature(dist.init_process_group).parameters,
        "AdamW(fused=)": "fused" in inspect.signature(torch.optim.AdamW).parameters,
        "nn.utils.get_total_norm": hasattr(torch.nn.utils, "get_total_norm"),
        "flex_attention": _importable("torch.nn.attention.flex_attention"),
    }
    missing = [name for name, present in apis.items() if not present]
    return {"status": "fail" if missing else "pass", "reason": f"missing: {missing}" if missing else "",
            "numbers": numbers, "rows": [{"api": name, "present": present} for name, present in apis.items()]}


def check_flex_vs_dense(ctx: Context) -> dict:
    batch, heads, seq_len, head_dim = ctx.sizes.attn
    backward = not ctx.dry
    rows = []
    for ratio in (16, 8):
        segment_ids, part_a = packed_layout(batch, seq_len, seed=ratio, device=ctx.device)
        torch.manual_seed(ratio)
        shapes = [(batch, heads, seq_len, head_dim)] + 2 * [(batch, heads // ratio, seq_len, head_dim)]
        precise = torch.float64 if ctx.dry else torch.float32
        reference = [torch.randn(s, device=ctx.device, dtype=precise) for s in shapes]
        grad_out = torch.randn(shapes[0], device=ctx.device)
        dense = build_attention("dense", segment_ids, part_a)
        expected = _run(dense, reference, grad_out, backward)
        dense_bf16 = _run(dense, [t.bfloat16() for t in reference], grad_out, backward)
        got = _run(flex(ctx, segment_ids, part_a), [t.bfloat16() for t in reference], grad_out, backward)
        for name, want, base, have in zip(("out", "dq", "dk", "dv"), expected, dense_bf16, got):
            error, baseline = _max_error(have, want), _max_error(base, want)
            rows.append({"gqa": f"{ratio}:1 ({heads}/{heads // ratio} heads)", "tensor": name, "flex_bf16_err": error,
                         "dense_bf16_err": baseline, "ok": error <= 3 * baseline + 1e-4})
    failed = [f"{r['gqa']} {r['tensor']}" for r in rows if not r["ok"]]
    note = "" if backward else "forward only: torch has no Flex backward on CPU"
    reason = f"error above 3x dense bf16's: {failed}" if failed else note
    return {"status": "fail" if failed else "pass", "reason": reason,
            "numbers": {"batch": batch, "heads": heads, "seq_len": seq_len, "head_dim": head_dim,
                        "visible_pairs": int(visible_pairs(segment_ids, part_a).sum())}, "rows": rows}


def _run(attend, qkv: list[torch.Tensor], grad_out: torch.Tensor, backward: bool) -> list[torch.Tensor]:
    leaves = [t.detach().requires_grad_(backward) for t in qkv]
    out = attend(*leaves)
    if not backward:
        return [out.detach()]
    out.backward(grad_out.to(out.dtype))
    return [out.detach(), *(t.grad for t in leaves)]


def _max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max())


def check_compiled_block(ctx: Context) -> dict:
    """One block as the trainer runs it (checkpoint_wrapper, then .compile() in place), three layouts."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from pretrain.model.glm import GLMModel
    from pretrain.model.positions import rotary_cos_sin

    cfg = model_config("glm-4-9b", num_layers=1, max_position_embeddings=ctx.sizes.block_seq, **ctx.sizes.block)
    dtype = torch.float32 if ctx.dry else torch.bfloat16
    torch.manual_seed(0)
    model = GLMModel(cfg).to(ctx.device, dtype)
    backend = "aot_eager" if ctx.dry else "inductor"  # inductor on CPU would compile C++ for minutes
    attention = "dense" if ctx.dry else "flex"  # no Flex backward on CPU
    counter = CompileCounterWithBackend(backend)
    block = checkpoint_wrapper(model.layers["0"])
    block.compile(backend=counter)
    torch._dynamo.reset()
    counters.clear()
    torch._logging.set_logs(recompiles=True, graph_breaks=True)  # TORCH_LOGS=recompiles,graph_breaks
    try:
        for seed in range(3):
            segment_ids, part_a = packed_layout(1, ctx.sizes.block_seq, seed=100 + seed, device=ctx.device)
            positions = torch.arange(ctx.sizes.block_seq, device=ctx.device)[None]
            rotary = rotary_cos_sin(cfg, positions, torch.zeros_like(positions), dtype)
            h = torch.randn(1, ctx.sizes.block_seq, cfg.hidden_size, device=ctx.device, dtype=dtype, requires_grad=True)
            block(h, model.build_attention(attention, segment_ids, part_a), rotary).float().square().mean().backward()
    finally:
        torch._logging.set_logs()
    breaks = dict(counters["graph_break"])
    ok = counter.frame_count == 1 and not breaks
    return {"status": "pass" if ok else "fail",
            "reason": "" if ok else f"{counter.frame_count} graphs compiled, graph breaks {breaks}",
            "numbers": {"graphs_compiled": counter.frame_count, "graph_breaks": sum(breaks.values()),
                        "backend": backend, "attention": attention, "seq_len": ctx.sizes.block_seq,
                        "hidden": cfg.hidden_size, "heads": f"{cfg.num_heads}:{cfg.num_kv_heads}"}}


def check_block_mask(ctx: Context) -> dict:
    from torch.nn.attention.flex_attention import create_block_mask
    rows = []
    for seq_len in ctx.sizes.mask_lengths:
        segment_ids, part_a = packed_layout(1, seq_len, seed=seq_len, device=ctx.device)
        mask_mod = glm_mask_mod(segment_ids, part_a)
        if ctx.dry:  # eager: compiling the mask builder costs minutes of CPU
            build = lambda: create_block_mask(mask_mod, 1, None, seq_len, seq_len, device="cpu")  # noqa: E731
        else:
            build = lambda: build_attention("flex", segment_ids, part_a).block_mask  # noqa: E731
        seconds = timed(build, ctx.device)
        mask, peak = _with_peak(build, ctx.device)
        stored = sum(t.numel() * t.element_size() for t in mask.as_tuple() if isinstance(t, torch.Tensor))
        rows.append({"seq_len": seq_len, "build_ms": round(seconds * 1e3, 3), "blockmask_mib": round(stored / 2**20, 3),
                     "build_peak_mib": None if peak is None else round(peak / 2**20, 1),
                     "sparsity_pct": round(mask.sparsity(), 1)})
    return {"status": "pass", "reason": "" if not ctx.dry else "eager builder, CPU: times are not GPU numbers",
            "rows": rows}


def _with_peak(fn, device: torch.device):
    if device.type != "cuda":
        return fn(), None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = fn()
    sync(device)
    return result, torch.cuda.max_memory_allocated(device) - before


def check_flex_vs_flash(ctx: Context) -> dict:
    if ctx.dry:
        raise Skip("CUDA only: no Flex backward and no flash SDPA kernel on CPU")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    heads, kv_heads, head_dim = 16, 2, 128
    rows = []
    for seq_len in ctx.sizes.flash_lengths:
        segment_ids, part_a = packed_layout(1, seq_len, seed=7, device=ctx.device, mean_segment=seq_len // 4)
        shape = lambda h: (1, h, seq_len, head_dim)  # noqa: E731
        q = torch.randn(shape(heads), device=ctx.device, dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(shape(kv_heads), device=ctx.device, dtype=torch.bfloat16, requires_grad=True) for _ in "kv")
        k_full, v_full = (t.detach().repeat_interleave(heads // kv_heads, 1).requires_grad_() for t in (k, v))
        grad = torch.randn(shape(heads), device=ctx.device, dtype=torch.bfloat16)
        attend = build_attention("flex", segment_ids, part_a)

        def flex_step():
            attend(q, k, v).backward(grad)

        def flash_step():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                F.scaled_dot_product_attention(q, k_full, v_full, is_causal=True).backward(grad)

        glm_pairs = heads * int(visible_pairs(segment_ids, part_a).sum())
        causal_pairs = heads * seq_len * (seq_len + 1) // 2
        flex_s, flash_s = timed(flex_step, ctx.device), timed(flash_step, ctx.device)
        rows.append({"seq_len": seq_len, "flex_ms": round(flex_s * 1e3, 2), "flash_causal_ms": round(flash_s * 1e3, 2),
                     "flex_pairs_per_s": glm_pairs / flex_s, "flash_pairs_per_s": causal_pairs / flash_s,
                     "useful_ratio": round((glm_pairs / flex_s) / (causal_pairs / flash_s), 3)})
    return {"status": "pass", "numbers": {"heads": f"{heads}:{kv_heads}", "head_dim": head_dim}, "rows": rows}


CHECKS = {"versions": check_versions, "flex_vs_dense": check_flex_vs_dense, "compiled_block": check_compiled_block,
          "block_mask": check_block_mask, "flex_vs_flash": check_flex_vs_flash}


# ----------------------------------------------------------------------------- report
def run_checks(ctx: Context, names: list[str]) -> list[dict]:
    from _gpu_check_run import check_trainer_run
    checks = {**CHECKS, "trainer_run": check_trainer_run}
    results = []
    for name in names:
        start = time.perf_counter()
        try:
            result = checks[name](ctx)
        except Skip as skip:
            result = {"status": "skipped", "reason": str(skip)}
        except Exception as err:  # a broken check is a finding, not the end of the report
            result = {"status": "fail", "reason": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc()[-4000:]}
        result = {"name": name, **result, "seconds": round(time.perf_counter() - start, 1)}
        print(f"[gpu-check] {name}: {result['status']} ({result['seconds']} s) {result.get('reason', '')}", flush=True)
        results.append(result)
    return results


def markdown(report: dict) -> str:
    lines = [f"# gpu-check: {report['device']}", "", f"{report['mode']}; {report['seconds']} s; "
             f"torch {report['torch']}.", "", "| check | status | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['status']} | {r['seconds']} | {r.get('reason', '')} |" for r in report["checks"]]
    for r in report["checks"]:
        lines += ["", f"## {r['name']}", ""]
        lines += [f"- {key}: {value}" for key, value in r.get("numbers", {}).items()]
        if r.get("rows"):
            columns = list(r["rows"][0])
            lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in r["rows"]]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    names = [*CHECKS, "trainer_run"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-check")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, CPU-runnable parts (default without CUDA)")
    parser.add_argument("--only", nargs="+", choices=names, default=names, help="run these checks only")
    parser.add_argument("--data-cache", type=Path, default=ROOT / "runs" / "_data", help="embedded corpus cache")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    dry = args.dry_run or not cuda
    ctx = Context(torch.device("cuda") if cuda and not dry else torch.device("cpu"), dry, DRY if dry else GPU,
                  args.out, args.data_cache)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = run_checks(ctx, args.only)
    report = {"device": torch.cuda.get_device_name() if ctx.device.type == "cuda" else platform.processor() or "cpu",
              "mode": "dry run (tiny sizes, CPU)" if dry else "full run", "torch": torch.__version__,
              "seconds": round(time.perf_counter() - start, 1), "checks": results}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    (args.out / "gpu_check.md").write_text(markdown(report), encoding="utf-8")
    print(f"[gpu-check] wrote {args.out / 'gpu_check.json'} and gpu_check.md", flush=True)
    return 1 if any(r["status"] == "fail" for r in results) else 0


def _git_commit() -> str | None:
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return found.stdout.strip() or None
    except OSError:
        return None


def _version_of(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
