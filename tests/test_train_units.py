"""Trainer pieces in one process: config loading and topology checks, lr schedule, grad clipping,
loss pieces, metrics helpers, checkpoint bookkeeping, and the NaN-skip / keep-K behaviour of a real
Trainer on a one-process gloo group."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pretrain.config import ConfigError
from pretrain.train.config import TrainConfig, load_config
from pretrain.parallel.tp import tp_plan
from pretrain.train import checkpoint
from pretrain.train.loss import CrossEntropyHead, StrategyLosses, token_cross_entropy
from pretrain.train.metrics import console_line, peak_tflops
from pretrain.parallel.clip import clip_grad_norm_
from pretrain.train.optim import build_optimizer, lr_factor
from pretrain.train.setup import validate_topology

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


# --- config and topology ---------------------------------------------------------------------------
def test_smoke_config_loads_with_overrides():
    cfg = load_config(SMOKE, ["train.max_steps=7", "parallel.tp=1", "model.num_layers=3"])
    assert cfg.train.max_steps == 7 and cfg.parallel.tp == 1
    assert cfg.model.preset == "glm-tiny" and cfg.model.resolve(vocab_size=4096).num_layers == 3
    assert cfg.model.resolve(vocab_size=4096).vocab_size == 4096  # unset: the tokenizer's
    assert cfg.checkpoint_dir() == Path("runs/smoke/checkpoints")


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.lr=1"], "unknown section(s) ['optimizer']"),
    (["train.learning_rate=1"], "train: unknown key(s) ['learning_rate']"),
    (["train.micro_batch_size=0"], "micro_batch_size=0 must be >= 1"),
    (["model.preset=glm-huge"], "unknown model preset 'glm-huge'"),
    (["model.hidden_sise=8"], "unknown ModelConfig field(s) ['hidden_sise']"),
    (["parallel.engine=deepspeed", "parallel.zero_stage=3"], "AutoTP composes with ZeRO stages 0-2"),
    (["parallel.engine=deepspeed", "parallel.sequence_parallel=true"], "sequence_parallel is a torch-engine"),
    (["parallel.tp=1", "parallel.sequence_parallel=true"], "sequence_parallel needs tp > 1"),
])
def test_bad_configs_fail_at_load_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, overrides)
    assert message in str(err.value) and str(SMOKE) in str(err.value)


@pytest.mark.parametrize("world, overrides, message", [
    (3, ["parallel.tp=2"], "world size 3 is not divisible by parallel.tp=2"),
    (4, ["parallel.tp=2", "train.global_batch_size=12"], "make global_batch_size a multiple of 16"),
    (3, ["parallel.tp=3"], "model.num_heads=4 is not divisible by parallel.tp=3"),
    (2, ["parallel.tp=2", "model.ffn_hidden_size=255"], "model.ffn_hidden_size=255 is not divisible"),
    (2, ["parallel.tp=2", "model.vocab_size=2049"], "model.vocab_size=2049 is not divisible"),
    (2, ["parallel.tp=2", "parallel.sequence_parallel=true", "train.seq_len=127"], "train.seq_len"),
    (1, ["parallel.tp=1", "train.seq_len=1024"], "exceeds model.max_position_embeddings=512"),
])
def test_invalid_topologies_are_rejected_before_any_work(world, overrides, message):
    cfg = load_config(SMOKE, overrides)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_topology(cfg, world)


def test_valid_topology_gives_dp():
    assert validate_topology(load_config(SMOKE, ["parallel.tp=2"]), 4).dp == 2


# --- optimizer, schedule, clipping -----------------------------------------------------------------
def test_lr_schedule_golden_values():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr_decay_steps=110, min_lr_ratio=0.1)
    assert [lr_factor(s, cfg) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(10, cfg) == 1.0
    assert lr_factor(60, cfg) == pytest.approx(0.55)  # halfway through the cosine: (1 + 0.1) / 2
    assert lr_factor(110, cfg) == pytest.approx(0.1) and lr_factor(500, cfg) == pytest.approx(0.1)
    assert lr_factor(99, TrainConfig(max_steps=100, warmup_steps=0, min_lr_ratio=0.0)) == \
        pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))


def test_no_weight_decay_on_norms_and_biases():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Embedding(10, 4))
    groups = build_optimizer(model, TrainConfig(weight_decay=0.1)).param_groups
    decay = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert decay == {id(model[0].weight), id(model[2].weight)}
    assert sum(len(g["params"]) for g in groups) == 5


def test_grad_clip_matches_torch():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    x = torch.randn(5, 8)
    for model in models:
        model(x).pow(2).sum().backward()
    ours = clip_grad_norm_(list(models[0].parameters()), 0.5)
    theirs = torch.nn.utils.clip_grad_norm_(models[1].parameters(), 0.5)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6) and ours.item() > 0.5
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a.grad, b.grad)


# --- loss pieces, metrics --------------------------------------------------------------------------
def test_token_cross_entropy_and_strategy_means():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    ce = token_cross_entropy(logits, targets)
    assert ce.shape == (2, 3)
    assert ce[1, 2].item() == pytest.approx(-torch.log_softmax(logits[1, 2], -1)[targets[1, 2]].item(), rel=1e-6)
    losses = StrategyLosses(3, torch.device("cpu"))
    mask = torch.tensor([[0.0, 1, 1], [1, 0, 0]])
    losses.add(ce * mask, mask, torch.tensor([[0, 0, 0], [2, 2, -1]]))
    means = StrategyLosses.means(losses.packed(), ("token", "sentence", "document"), "loss")
    assert set(means) == {"loss/token", "loss/document"}  # sentence had no Part-B tokens
    assert means["loss/token"] == pytest.approx((ce[0, 1] + ce[0, 2]).item() / 2)
    assert means["loss/document"] == pytest.approx(ce[1, 0].item())


def test_peak_flops_and_console_line():
    assert peak_tflops(torch.device("cpu"), None) is None
    assert peak_tflops(torch.device("cpu"), 50.0) == 50.0
    line = console_line({"step": 3, "loss": 2.5, "loss/token": 2.25, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 1000.0,
                         "tflops": 1.52, "mfu": 0.25, "max_memory_gib": 1.0, "nonfinite_skipped": 0}, 10)
    assert line == ("step 3/10 30% | loss 2.5000 (token 2.250) | lr 1.00e-03 | gnorm 0.500 | 1k tok/s | 1.52 TFLOP/s | "
                    "mfu 25.0% | mem 1.00 GiB")


# --- TP plan ---------------------------------------------------------------------------------------
def test_tp_plan_covers_every_linear_and_follows_tying():
    from pretrain.model import build_model
    tied, untied = build_model("glm-tiny"), build_model("glm-tiny", tie_embeddings=False, mlp="swiglu")
    plan = tp_plan(tied, sequence_parallel=False)
    linears = {name for name, m in tied.named_modules() if isinstance(m, nn.Linear)}
    assert linears <= set(plan) and "lm_head" not in plan and "embed_tokens" in plan
    sp_plan = tp_plan(untied, sequence_parallel=True)
    assert {"lm_head", "layers.0.mlp.gate_proj", "position_embeddings", "block_position_embeddings", "norm",
            "layers.1.input_layernorm", "layers.1.self_attn"} <= set(sp_plan)


# --- checkpoint bookkeeping ------------------------------------------------------------------------
def test_latest_checkpoint_ignores_partial_and_incomplete(tmp_path):
    for name, complete in (("step_00000003", True), ("step_00000006", True), ("step_00000009", False),
                           (".step_00000012.partial", True)):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / checkpoint.COMPLETE).touch()
    assert checkpoint.latest_checkpoint(tmp_path) == tmp_path / "step_00000006"
    checkpoint.remove_partial(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003", "step_00000006", "step_00000009"]
    assert checkpoint.latest_checkpoint(tmp_path / "missing") is None


# --- a real Trainer on a one-process group (trainer_factory: conftest.py) ------------------------
def test_nonfinite_steps_are_skipped_then_stop_the_run(trainer_factory, tmp_path, monkeypatch):
    from pretrain.train import loop
    trainer = trainer_factory(tmp_path, "train.max_consecutive_nonfinite=2", "metrics.peak_tflops=0.5")
    batches = iter(trainer.s.loader)
    first = trainer.train_step(batches)
    assert math.isfinite(first["loss"]) and first["mfu"] == pytest.approx(first["tflops"] / 0.5)
    before = [p.detach().clone() for p in trainer.engine.model.parameters()]
    def poisoned(*args):  # a NaN in the head's input: loss, CE and gradients all NaN
        head = CrossEntropyHead(*args)
        return lambda hidden, weight: head(hidden * float("nan"), weight)
    monkeypatch.setattr(loop, "CrossEntropyHead", poisoned)
    record = trainer.train_step(batches)
    assert math.isnan(record["loss"]) and record["nonfinite_skipped"] == 1 and trainer.step == 2
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.engine.model.parameters()))  # no update
    with pytest.raises(loop.NonFiniteLossError, match="2 consecutive steps had a non-finite loss"):
        trainer.train_step(batches)


def test_keep_last_k_checkpoints(trainer_factory, tmp_path):
    trainer = trainer_factory(tmp_path, "checkpoint.interval=1", "checkpoint.keep=2", "train.max_steps=3")
    assert trainer.train() == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_run_configs_load(path):
    cfg = load_config(path)
    model_ranks = cfg.parallel.tp * cfg.parallel.pp * cfg.parallel.cp
    validate_topology(cfg, world_size=model_ranks * 2)


def test_checkpoint_from_another_engine_is_refused_with_a_fix(trainer_factory, tmp_path):
    saved = tmp_path / "checkpoints" / "step_00000003"
    saved.mkdir(parents=True)
    state = {"step": 3, "loader": {}, "topology": {"engine": "deepspeed", "tp": 2, "dp": 1}}
    (saved / checkpoint.TRAINER_STATE).write_text(json.dumps(state))
    (saved / checkpoint.COMPLETE).write_text(json.dumps({"step": 3, "files": {}}))
    with pytest.raises(ConfigError, match="written by the deepspeed engine with tp=2, dp=1.*resume with that layout"):
        trainer_factory(tmp_path)
