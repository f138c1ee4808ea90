"""The training loop: build everything from a Config, resume, train, evaluate, checkpoint, log.

One code path for 1..N processes and both engines (pretrain/parallel: torch = DTensor TP + FSDP2,
always on, even at dp=1; deepspeed = AutoTP + ZeRO), on a (dp, tp) mesh (1 x 1 without torchrun).
Each optimizer step reads ``global_batch_size / (micro_batch_size * dp)`` micro-batches per rank,
counts the step's Part-B tokens over all of them and all dp ranks first, then runs forward/backward
per micro-batch with the loss divided by that global count (see loss.py).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from pretrain.config import ConfigError
from pretrain.model.attention import visible_pairs
from pretrain.model.flops import batch_flops
from pretrain.train import checkpoint
from pretrain.train.loss import CrossEntropyHead, StrategyLosses
from pretrain.train.metrics import MetricsWriter, max_memory_gib, peak_tflops, print_line
from pretrain.train.optim import lr_factor
from pretrain.train.config import Config
from pretrain.train.setup import Setup, build_setup

logger = logging.getLogger(__name__)

_MODEL_INPUTS = ("input_ids", "position_ids", "block_position_ids", "segment_ids", "part_a")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a NaN/inf loss or gradient norm."""


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.s: Setup = build_setup(cfg)  # validates the topology before any heavy work
        s = self.s
        self.engine = s.engine
        self.step = 0
        self.nonfinite_skipped = 0
        self.consecutive_nonfinite = 0
        self.ckpt_root = cfg.checkpoint_dir()
        self.stop_requested = False
        self._resume()
        self.metrics = MetricsWriter(Path(cfg.run.dir), s.rank == 0, cfg.metrics.tensorboard, self.step)
        self.peak = peak_tflops(s.device, cfg.metrics.peak_tflops)
        if s.rank == 0:
            self._write_resolved_config()

    # ----------------------------------------------------------------------------- state
    def trainer_state(self) -> dict:
        return {"step": self.step, "loader": self.s.loader.state_dict(), "nonfinite_skipped": self.nonfinite_skipped,
                "consecutive_nonfinite": self.consecutive_nonfinite, "topology": self._topology()}

    def _topology(self) -> dict:
        return {"engine": self.engine.name, "tp": self.s.dims.tp, "dp": self.s.dims.dp}

    def _resume(self) -> None:
        if self.s.rank == 0:
            checkpoint.remove_partial(self.ckpt_root)
        dist.barrier()
        latest = checkpoint.latest_checkpoint(self.ckpt_root) if self.cfg.checkpoint.resume else None
        if latest is None:
            return
        state = checkpoint.trainer_state(latest)
        saved = state["topology"]
        if saved["engine"] != self.engine.name or (not self.engine.reshardable and saved != self._topology()):
            raise ConfigError(f"{latest} was written by the {saved['engine']} engine with tp={saved['tp']}, "
                              f"dp={saved['dp']}; this run is {self._topology()}. The {self.engine.name} engine "
                              f"cannot reshard it: resume with that layout (or use a new checkpoint.dir)")
        self.s.loader.load_state_dict(state["loader"])  # names a data or tokenizer change before the weights do
        checkpoint.load(latest, self.engine)
        self.step = state["step"]
        self.nonfinite_skipped = state["nonfinite_skipped"]
        self.consecutive_nonfinite = state["consecutive_nonfinite"]
        logger.info("resumed from %s at step %d", latest, self.step)

    def save(self) -> None:
        checkpoint.save(self.ckpt_root, self.step, self.engine, self.trainer_state(), self.cfg.checkpoint.keep)

    def _write_resolved_config(self) -> None:
        """config.yaml (with the resolved model and special tokens) and the tokenizer in use: what
        export, infill and evaluation read from a run directory."""
        data = self.cfg.to_dict()
        data["resolved_model"] = dataclasses.asdict(self.s.model_cfg)
        data["resolved_special_tokens"] = self.s.data.special.roles()
        run_dir = Path(self.cfg.run.dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        self.s.data.tokenizer.save(str(run_dir / "tokenizer.json"))

    # ----------------------------------------------------------------------------- loop
    def train(self) -> int:
        """Train to max_steps (or until SIGTERM); returns the last completed step."""
        cfg, s = self.cfg, self.s
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        batches = iter(s.loader)
        try:
            while self.step < cfg.train.max_steps:
                record = self.train_step(batches)
                if cfg.eval.interval and self.step % cfg.eval.interval == 0:
                    record.update(self.evaluate())
                if self.step % cfg.metrics.log_interval == 0 or "eval/loss" in record:
                    self.metrics.log(record)
                    if s.rank == 0:
                        print_line(record, cfg.train.max_steps)
                stop = self._agree_to_stop()
                if stop or (cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0):
                    self.save()
                if stop:
                    logger.warning("SIGTERM: saved step %d, exiting", self.step)
                    return self.step
            if checkpoint.latest_checkpoint(self.ckpt_root) != checkpoint.step_dir(self.ckpt_root, self.step):
                self.save()
            return self.step
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.metrics.close()

    def train_step(self, batches) -> dict:
        cfg, s = self.cfg, self.s
        start = time.perf_counter()
        micro = [next(batches) for _ in range(s.accumulation_steps)]
        # [Part-B tokens, real tokens, attended (query, key) pairs] of the whole step over all dp ranks;
        # the first is the loss denominator, so it must be known before the first backward.
        counts = torch.tensor([[b["loss_mask"].sum(), (b["segment_ids"] >= 0).sum(),
                                visible_pairs(b["segment_ids"], b["part_a"]).sum()] for b in micro],
                              dtype=torch.float64).sum(0).to(s.device)
        dist.all_reduce(counts, group=s.dp_group)
        denominator = counts[0].clamp(min=1).float()
        strategies = StrategyLosses(len(s.strategy_names), s.device)
        for i, batch in enumerate(micro):
            batch = {k: v.to(s.device, non_blocking=True) for k, v in batch.items()}
            # The loss runs inside the model's forward, over chunks of tokens: no logits outlive it (loss.py)
            loss, ce = self.engine.model(*(batch[k] for k in _MODEL_INPUTS), output_head=CrossEntropyHead(
                batch["target_ids"], batch["loss_mask"] / denominator))
            self.engine.backward(loss, last_micro_batch=i == len(micro) - 1)
            strategies.add(ce * batch["loss_mask"], batch["loss_mask"], batch["strategy_ids"])
        reduced = strategies.packed()  # every Part-B token belongs to one strategy: their sums are the loss
        dist.all_reduce(reduced, group=s.dp_group)
        loss_value = (reduced[:len(s.strategy_names)].sum() / denominator).item()
        lr = cfg.train.lr * lr_factor(self.step, cfg.train)
        # The engine skips the update on a non-finite loss or grad norm: the same decision on every rank.
        grad_norm = self.engine.step(lr, cfg.train.grad_clip, skip=not math.isfinite(loss_value))
        if math.isfinite(loss_value) and math.isfinite(grad_norm):
            self.consecutive_nonfinite = 0
        else:
            self._count_nonfinite(loss_value, grad_norm)
        self.step += 1
        if s.device.type == "cuda":
            torch.cuda.synchronize(s.device)
        _, tokens, pairs = counts.tolist()
        return {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                **StrategyLosses.means(reduced, s.strategy_names, "loss"),
                **self._throughput(tokens, pairs, time.perf_counter() - start),
                "nonfinite_skipped": self.nonfinite_skipped}

    def _count_nonfinite(self, loss_value: float, grad_norm: float) -> None:
        self.nonfinite_skipped += 1
        self.consecutive_nonfinite += 1
        logger.warning("step %d: loss %s, grad norm %s: update skipped (%d in a row)", self.step + 1,
                       loss_value, grad_norm, self.consecutive_nonfinite)
        if self.consecutive_nonfinite >= self.cfg.train.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{self.consecutive_nonfinite} consecutive steps had a non-finite loss or gradient norm "
                f"(last: loss {loss_value}, grad norm {grad_norm} at step {self.step + 1}); the run is "
                f"diverging. Lower train.lr, raise train.warmup_steps or train.grad_clip, or resume from an "
                f"earlier checkpoint (train.max_consecutive_nonfinite={self.cfg.train.max_consecutive_nonfinite})")

    def _throughput(self, tokens: float, pairs: float, elapsed: float) -> dict:
        """Global tokens/s (real, non-padding tokens) and this device's TFLOP/s and MFU, with the
        attention term counted from the step's attended pairs (metrics.py)."""
        s = self.s
        tflops = batch_flops(s.model_cfg, tokens, pairs) / elapsed / s.dims.world_size / 1e12  # per device
        return {"tokens_per_s": tokens / elapsed, "tflops": tflops,
                "mfu": tflops / self.peak if self.peak else None, "max_memory_gib": max_memory_gib(s.device)}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out loss (mean CE over Part-B tokens) overall and per strategy on eval.batches global
        batches under cfg.eval_objective(): the same samples whatever the (dp, tp) layout."""
        s = self.s
        self.engine.model.eval()
        strategies = StrategyLosses(len(s.eval_strategy_names), s.device)
        for i, batch in enumerate(s.eval_loader):
            if i == self.cfg.eval.batches * s.accumulation_steps:
                break
            batch = {k: v.to(s.device) for k, v in batch.items()}
            _, ce = self.engine.model(*(batch[k] for k in _MODEL_INPUTS),
                                      output_head=CrossEntropyHead(batch["target_ids"], batch["loss_mask"]))
            strategies.add(ce * batch["loss_mask"], batch["loss_mask"], batch["strategy_ids"])
        self.engine.model.train()
        packed = strategies.packed()
        dist.all_reduce(packed, group=s.dp_group)
        sums, counts = packed.chunk(2)
        overall = (sums.sum() / counts.sum().clamp(min=1)).item()
        return {"eval/loss": overall, **StrategyLosses.means(packed, s.eval_strategy_names, "eval/loss")}

    # ----------------------------------------------------------------------------- preemption
    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True

    def _agree_to_stop(self) -> bool:
        """Any rank that got SIGTERM stops all ranks after the same step."""
        flag = torch.tensor([float(self.stop_requested)], device=self.s.device)
        dist.all_reduce(flag)
        return bool(flag.item())
