"""The training loop: build everything from a Config, resume, train, evaluate, checkpoint, log.

One code path for 1..N processes and both engines (pretrain/parallel: torch = DTensor TP + FSDP2,
always on, even at dp=1, plus pipeline and context parallelism; deepspeed = AutoTP + ZeRO), on a
(pp, dp, cp, tp) mesh (all 1 without torchrun). Each optimizer step reads ``global_batch_size /
(micro_batch_size * dp)`` micro-batches per rank, counts the step's Part-B tokens over all of them and
all dp ranks first, then runs forward/backward per micro-batch (or the pipeline schedule over them)
with the loss divided by that global count (see loss.py). Under context parallelism each rank keeps
its share of every row; the per-strategy sums then add up over pp x dp x cp (``Setup.loss_group``).
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from pretrain.config import ConfigError
from pretrain.model.attention import visible_pairs
from pretrain.model.flops import batch_flops
from pretrain.parallel.context import shard_rows
from pretrain.train import checkpoint
from pretrain.train.downstream import MODEL_INPUTS, Downstream
from pretrain.train.agreement import any_rank
from pretrain.train.loss import CrossEntropyHead, StrategyLosses
from pretrain.train.metrics import ETA, MetricsWriter, max_memory_gib, peak_tflops, print_line
from pretrain.train.optim import lr_factor
from pretrain.train.config import Config
from pretrain.train.preemption import StopSignals
from pretrain.train.preflight import preflight
from pretrain.train.run_dir import write_run_config
from pretrain.train.setup import Setup, build_setup

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a NaN/inf loss or gradient norm."""
    user_error = True  # one line, exit 2 (pretrain/cli/_errors.py)


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.run_lock = None
        # validates the topology, then (preflight) the run and checkpoint dirs and the run lock, before any heavy work
        self.s: Setup = build_setup(cfg, preflight=self._preflight)
        s = self.s
        self.engine = s.engine
        self.step = 0
        self.tokens_seen = 0  # real (non-padding) tokens over all ranks, for the progress line
        self.nonfinite_skipped = 0
        self.consecutive_nonfinite = 0
        self.ckpt_root = cfg.checkpoint_dir()
        self.checkpointer = checkpoint.Checkpointer(self.ckpt_root, self.engine, cfg.checkpoint.keep,
                                                    cfg.checkpoint.async_save)
        if s.rank == 0:
            logger.info("%s", s.loader.describe())
        self._resume()
        self.metrics = MetricsWriter(Path(cfg.run.dir), s.rank == 0, cfg.metrics.tensorboard, self.step,
                                     wandb=cfg.metrics.wandb, run_config=cfg.to_dict())
        self.peak = peak_tflops(s.device, cfg.metrics.peak_tflops)
        if s.rank == 0:
            self._write_resolved_config()

    # ----------------------------------------------------------------------------- state
    def trainer_state(self) -> dict:
        return {"step": self.step, "loader": self.s.loader.state_dict(), "tokens_seen": self.tokens_seen,
                "nonfinite_skipped": self.nonfinite_skipped, "consecutive_nonfinite": self.consecutive_nonfinite,
                "topology": self._topology(), "vocabulary": self._vocabulary()}

    def _topology(self) -> dict:
        return {"engine": self.engine.name, "tp": self.s.dims.tp, "dp": self.s.dims.dp}

    def _vocabulary(self) -> dict:
        return {"size": self.s.model_cfg.vocab_size, "special_tokens": self.s.data.special.roles()}

    def _preflight(self) -> None:
        self.run_lock = preflight(self.cfg)

    def _resume(self) -> None:
        ckpt = self.cfg.checkpoint
        resumed = checkpoint.resume(self.ckpt_root, ckpt.resume_from, ckpt.fallback_to_previous, self._restore)
        self.checkpointer.saved_step = self.step if resumed else None
        if resumed:
            logger.info("resumed from %s at step %d", resumed, self.step)

    def _restore(self, path: Path, state: dict) -> None:
        """Refuse a checkpoint of another layout, vocabulary or data stream (before any weight is read),
        then load it."""
        saved = state["topology"]
        if saved["engine"] != self.engine.name or (not self.engine.reshardable and saved != self._topology()):
            raise ConfigError(f"{path} was written by the {saved['engine']} engine with tp={saved['tp']}, "
                              f"dp={saved['dp']}; this run is {self._topology()}. The {self.engine.name} engine "
                              f"cannot reshard it: resume with that layout (or use a new checkpoint.dir)")
        vocabulary = state.get("vocabulary", self._vocabulary())
        if vocabulary != self._vocabulary():
            raise ConfigError(f"{path} was trained with a vocabulary of {vocabulary['size']} (special tokens "
                              f"{vocabulary['special_tokens']}); this run has {self._vocabulary()['size']} "
                              f"({self._vocabulary()['special_tokens']}): the tokenizer/data changed. Resume with "
                              f"the tokenizer, data.special_tokens and objective it was trained with, or start a "
                              f"new run.dir")
        self.s.loader.load_state_dict(state["loader"])  # names a data or tokenizer change before the weights do
        checkpoint.load(path, self.engine)
        self.step = state["step"]
        self.tokens_seen = state.get("tokens_seen", 0)  # informational; absent in checkpoints before it existed
        self.nonfinite_skipped = state["nonfinite_skipped"]
        self.consecutive_nonfinite = state["consecutive_nonfinite"]

    def save(self, wait: bool = False) -> None:
        """Collective. Skipped inside a non-finite streak: the updates were skipped, so the last checkpoint
        (or the next one) holds these weights, and resuming must not start inside the streak."""
        if self.consecutive_nonfinite:
            logger.warning("step %d: not saving inside a streak of %d non-finite steps", self.step,
                           self.consecutive_nonfinite)
            return
        self.checkpointer.save(self.step, self.trainer_state(), wait=wait)

    def _write_resolved_config(self) -> None:
        s = self.s
        write_run_config(Path(self.cfg.run.dir), self.cfg.to_dict(), s.model_cfg, s.data.special, s.data.tokenizer)

    # ----------------------------------------------------------------------------- loop
    def train(self) -> int:
        """Train to max_steps, or until a stop signal (preemption.py: SIGTERM/SIGUSR1 to any rank or to
        torchrun) makes every rank save and return; returns the last completed step."""
        cfg, s = self.cfg, self.s
        stop_signals = StopSignals().install()
        batches = iter(s.loader)
        eta = ETA(cfg.train.max_steps)
        try:
            while self.step < cfg.train.max_steps:
                record = self.train_step(batches)
                # at the last step too, so that runs (ablations) compare their final models
                if cfg.eval.interval and (self.step % cfg.eval.interval == 0 or self.step == cfg.train.max_steps):
                    record.update(self.evaluate())
                record["eta_s"] = eta(self.step)
                if self.step % cfg.metrics.log_interval == 0 or "eval/loss" in record:
                    self.metrics.log(record)
                    if s.rank == 0:
                        print_line(record, cfg.train.max_steps)
                stop = self._step_boundary(stop_signals)
                if stop or (cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0):
                    self.save(wait=stop)
                if stop:
                    logger.warning("stop signal (%s): saved step %d, exiting",
                                   stop_signals.received or "on another rank", self.step)
                    return self.step
            if self.checkpointer.saved_step != self.step:
                self.save(wait=True)
            return self.step
        finally:
            stop_signals.restore()
            self.checkpointer.close()
            self.metrics.close()
            if self.run_lock is not None:
                self.run_lock.release()

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
        parts, tokens, pairs = counts.tolist()  # the step's one host sync before the backward passes
        denominator = max(parts, 1.0)
        strategies = StrategyLosses(len(s.strategy_names), s.device)
        sources = StrategyLosses(len(s.loader.languages), s.device)  # the same sums per data source
        if self.engine.pipeline is not None:
            self._run_pipeline([self._local(batch) for batch in micro], strategies, sources, denominator)
        else:
            for i, batch in enumerate(micro):
                batch = self._local(batch)
                # The loss runs inside the model's forward, over chunks of tokens: no logits outlive it (loss.py)
                loss, ce = self.engine.model(*(batch[k] for k in MODEL_INPUTS), output_head=CrossEntropyHead(
                    batch["target_ids"], batch["loss_mask"], denominator))
                self.engine.backward(loss, last_micro_batch=i == len(micro) - 1)
                _add_losses(ce * batch["loss_mask"], batch, strategies, sources)
        # every Part-B token belongs to one strategy: their sums are the loss
        reduced = torch.cat([strategies.packed(), sources.packed()])
        dist.all_reduce(reduced, group=s.loss_group)
        reduced = reduced.cpu()  # one host sync for every loss below
        by_strategy, by_source = reduced.split([2 * len(s.strategy_names), 2 * len(s.loader.languages)])
        loss_value = (by_strategy[:len(s.strategy_names)].sum() / denominator).item()
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
        self.tokens_seen += int(tokens)
        return {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                **StrategyLosses.means(by_strategy, s.strategy_names, "loss"),
                **StrategyLosses.means(by_source, s.loader.languages, "source_loss"),
                **self._throughput(tokens, pairs, time.perf_counter() - start),
                "tokens_seen": self.tokens_seen, "nonfinite_skipped": self.nonfinite_skipped}

    def _local(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A micro-batch on the device; under context parallelism this rank's share of each row."""
        batch = {k: v.to(self.s.device, non_blocking=True) for k, v in batch.items()}
        return shard_rows(batch, self.s.dims.cp, self.s.cp_rank) if self.s.dims.cp > 1 else batch

    def _run_pipeline(self, micro: list[dict], strategies: StrategyLosses, sources: StrategyLosses,
                      denominator: float | None) -> None:
        """Forward (and backward, given the step's ``denominator``) of ``micro`` through the pipeline stages.
        The last stage runs the same chunked loss as the plain path (each micro-batch's CrossEntropyHead
        travels with its rows through the schedule), Σ CE·loss_mask / denominator per micro-batch."""
        heads = [CrossEntropyHead(batch["target_ids"], batch["loss_mask"], denominator or 1.0) for batch in micro]
        weighted_ce = {}

        def micro_batch_loss(output: tuple[torch.Tensor, torch.Tensor], i: int) -> torch.Tensor:
            loss, ce = output
            weighted_ce[i] = ce * micro[i]["loss_mask"]  # by index: the schedule's shape inference repeats 0
            return loss

        self.engine.pipeline.run(micro, micro_batch_loss, backward=denominator is not None, heads=heads)
        for i, weighted in weighted_ce.items():
            _add_losses(weighted, micro[i], strategies, sources)

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

    @functools.cached_property
    def downstream(self) -> Downstream:
        """eval.downstream's examples, built at the first evaluation that scores them."""
        return Downstream(self.cfg, self.s)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out loss (mean CE over Part-B tokens) overall, per strategy and per source (language) on
        eval.batches global batches under cfg.eval_objective(): the same samples whatever the layout; with
        eval.downstream also the cloze and infilling metrics (downstream.py). A progress bar on rank 0 when
        stderr is a terminal."""
        s = self.s
        strategies = StrategyLosses(len(s.eval_strategy_names), s.device)
        sources = StrategyLosses(len(s.eval_loader.languages), s.device)
        micro_batches = min(len(s.eval_loader), self.cfg.eval.batches * s.accumulation_steps)
        progress = tqdm(total=micro_batches, desc=f"eval at step {self.step}", unit="batch", leave=False,
                        disable=None if s.rank == 0 else True)  # None: only on a terminal
        batches = itertools.islice(s.eval_loader, micro_batches)
        downstream = {}
        if self.engine.pipeline is not None:
            self._run_pipeline([self._local(batch) for batch in batches], strategies, sources, denominator=None)
            progress.update(micro_batches)
        else:
            self.engine.model.eval()
            for batch in batches:
                batch = self._local(batch)
                _, ce = self.engine.model(*(batch[k] for k in MODEL_INPUTS),
                                          output_head=CrossEntropyHead(batch["target_ids"], batch["loss_mask"]))
                _add_losses(ce * batch["loss_mask"], batch, strategies, sources)
                progress.update()
            if self.cfg.eval.downstream and s.dims.cp == 1:  # not under pp or cp (validate_topology warns)
                downstream = self.downstream(self.engine.model)
            self.engine.model.train()
        progress.close()
        packed = torch.cat([strategies.packed(), sources.packed()])
        dist.all_reduce(packed, group=s.loss_group)
        by_strategy, by_source = packed.split([2 * len(s.eval_strategy_names), 2 * len(s.eval_loader.languages)])
        sums, counts = by_strategy.chunk(2)
        overall = (sums.sum() / counts.sum().clamp(min=1)).item()
        return {"eval/loss": overall, **StrategyLosses.means(by_strategy, s.eval_strategy_names, "eval/loss"),
                **StrategyLosses.means(by_source, s.eval_loader.languages, "eval/source_loss"), **downstream}

    # ----------------------------------------------------------------------------- preemption
    def _step_boundary(self, stop_signals: StopSignals) -> bool:
        """Collective, once per step (one all-reduce): whether some rank got a stop signal, and whether every
        rank finished writing the last background save (then it is marked complete)."""
        stop, writing = any_rank([stop_signals.received is not None, self.checkpointer.writing()], self.s.device)
        if not writing:
            self.checkpointer.wait()
        return stop


def _add_losses(weighted: torch.Tensor, batch: dict[str, torch.Tensor], strategies: StrategyLosses,
                sources: StrategyLosses) -> None:
    """Add a micro-batch's CE·loss_mask [B, S] to the per-strategy and per-source (row) sums."""
    strategies.add(weighted, batch["loss_mask"], batch["strategy_ids"])
    sources.add(weighted, batch["loss_mask"], batch["source_ids"][:, None].expand_as(weighted))
