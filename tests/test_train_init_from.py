"""train.init_from: a run starts from imported or published weights (fresh optimizer, step 0) under any
layout and either engine: its first loss is the source model's loss on the same batch. What does not fit
is refused naming the field or the token; a larger vocabulary is resized with logged mean rows.
Must show: import -> 5 steps on TP=2 (torchrun) -> export -> transformers computes our logits."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from hf_assets import causal_inputs, corpus_lines, save_glm1, save_hf_glm4, save_hf_tokenizer, train_bpe
from pretrain.__main__ import main as cli
from pretrain.cli.ablate import train_command
from pretrain.config import ConfigError
from pretrain.data.loader import build_loader, glm_collator, open_data
from pretrain.model.hf import read_checkpoint
from pretrain.objectives import declared_special_tokens, raw_length
from pretrain.train.checkpoint import CorruptCheckpointError
from pretrain.train.config import load_config
from pretrain.train.init_from import check_fits, initial_weights, open_source, read_state
from pretrain.train.loss import token_cross_entropy
from pretrain.train.run_dir import load_trained_model
from tests.test_train_distributed import launch

transformers = pytest.importorskip("transformers")
INPUTS = ("input_ids", "position_ids", "block_position_ids", "segment_ids", "part_a")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """hf/ (tokenizer + GlmForCausalLM), glm4/ (its import), glm1_hf/ + glm1/ (GLM-1, no tokenizer), data/."""
    root = tmp_path_factory.mktemp("init_from")
    save_hf_tokenizer(train_bpe(), root / "hf")
    save_hf_glm4(root / "hf", vocab_size=512)
    save_glm1(root / "glm1_hf", vocab=512, hidden=64, heads=4, layers=2, max_len=64)
    for source, run in (("hf", "glm4"), ("glm1_hf", "glm1")):
        assert cli(["import-hf", str(root / source), "--out", str(root / run)]) == 0
    (root / "en.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_lines(300)))
    assert cli(["preprocess", "--input", f"en={root / 'en.jsonl'}", "--tokenizer", str(root / "hf"),
                "--output", str(root / "data")]) == 0
    return root


def overrides(assets: Path, run_dir: Path, init_from: Path, *extra: str) -> list[str]:
    return [f"data.path={assets / 'data'}", "data.num_workers=0", "data.eval_documents=2",
            f"data.cache_dir={assets / 'cache'}", f"train.init_from={init_from}", "train.max_steps=5",
            "train.global_batch_size=8", "train.micro_batch_size=4", "train.seq_len=64", "train.lr=1e-3",
            "metrics.tensorboard=false", f"run.dir={run_dir}", *extra]


def first_batch_loss(config: Path, args: list[str], model: torch.nn.Module) -> float:
    """Mean Part-B cross entropy of ``model`` on the run's first global batch, in one process."""
    cfg = load_config(config, args)
    train = cfg.train
    source = open_data(cfg.data, declared_special_tokens(cfg.objective, cfg.eval_objective()))
    collator = glm_collator(source, cfg.objective, seq_len=train.seq_len, seed=train.seed,
                            global_batch_size=train.global_batch_size)
    batch = next(iter(build_loader(cfg.data, collator, seq_len=train.seq_len,
                                   raw_len=raw_length(cfg.objective, train.seq_len),
                                   global_batch_size=train.global_batch_size, micro_batch_size=train.global_batch_size,
                                   dp_rank=0, dp_size=1, seed=train.seed, source=source)))
    with torch.no_grad():
        ce = token_cross_entropy(model(*(batch[k] for k in INPUTS)), batch["target_ids"]) * batch["loss_mask"]
    return (ce.sum() / batch["loss_mask"].sum()).item()


# --- in one process ------------------------------------------------------------------------------------
@pytest.fixture
def trainer(single_process_env):
    from pretrain.train.loop import Trainer
    yield lambda config, args: Trainer(load_config(config, args))
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("source, run", [("glm4", "glm4"), ("glm1_hf", "glm1")])  # a run dir; an HF dir
def test_a_run_starts_from_the_source_weights_with_a_fresh_optimizer(assets, tmp_path, trainer, source, run):
    config = assets / run / "config.yaml"  # the import's model section rebuilds the source's model
    args = overrides(assets, tmp_path / "run", assets / source, "parallel.tp=1", "model.dropout=0.0",
                     "model.attention_dropout=0.0")
    reference = load_trained_model(assets / run)
    t = trainer(config, args)
    assert t.step == 0 and not any(optimizer.state for optimizer in t.engine.optimizers)
    ours = get_model_state_dict(t.engine.model, options=StateDictOptions(full_state_dict=True))
    theirs = reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    record = t.train_step(iter(t.s.loader))
    assert record["loss"] == pytest.approx(first_batch_loss(config, args, reference), abs=1e-5)


def test_a_run_resuming_its_own_checkpoint_ignores_init_from(assets, tmp_path):
    cfg = load_config(assets / "glm4" / "config.yaml", overrides(assets, tmp_path, assets / "hf"))
    (tmp_path / "checkpoints" / "step_00000003").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_00000003" / "complete").touch()
    assert initial_weights(cfg, None, None) is None  # nothing read, nothing collective


def test_an_import_directory_cannot_be_resumed_as_a_run(assets, tmp_path, trainer):
    with pytest.raises(CorruptCheckpointError, match="holds weights only .* train from it with train.init_from"):
        trainer(assets / "glm4" / "config.yaml", overrides(assets, assets / "glm4", assets / "hf"))


def test_what_does_not_fit_is_refused_naming_the_field_or_the_token(assets, tmp_path):
    source = open_source(assets / "hf")
    cfg = read_checkpoint(assets / "hf", weights=False).config
    tokenizer = open_data(load_config(assets / "glm4" / "config.yaml",
                                      overrides(assets, tmp_path, assets / "hf")).data).tokenizer
    check_fits(source, cfg, tokenizer)  # fits
    training_only = dataclasses.replace(cfg, dropout=0.1, init_std=0.01, max_position_embeddings=64)  # RoPE: no table
    check_fits(source, training_only, tokenizer)
    with pytest.raises(ConfigError, match="its model has hidden_size=64, this run's has 128; set model.hidden_size=64"):
        check_fits(source, dataclasses.replace(cfg, hidden_size=128), tokenizer)
    with pytest.raises(ConfigError, match="its vocabulary has 512 rows, this run's model 384; set model.vocab_size=512"):
        check_fits(source, dataclasses.replace(cfg, vocab_size=384), tokenizer)
    other = train_bpe(vocab_size=350)
    with pytest.raises(ConfigError, match=r"its tokenizer and this run's disagree on \d+ token ids .* preprocess the "
                                          r"data with"):
        check_fits(source, cfg, other)


def test_a_larger_run_vocabulary_gets_mean_rows_and_says_so(assets, caplog):
    source = open_source(assets / "glm4")
    cfg = dataclasses.replace(source.config, vocab_size=640)
    with caplog.at_level(logging.INFO, logger="pretrain.train.init_from"):
        state = read_state(source, cfg)
    original = load_trained_model(assets / "glm4").state_dict()
    for name in ("embed_tokens.weight", "lm_head.weight"):
        assert state[name].shape == (640, 64) and torch.equal(state[name][:512], original[name])
        assert torch.allclose(state[name][512:], original[name].mean(0).expand(128, -1))
    assert "vocabulary 512 -> 640 rows; the 128 new rows start as the mean" in caplog.text


# --- under torchrun --------------------------------------------------------------------------------------
def torchrun(config: Path, args: list[str], nproc: int = 2) -> dict[int, float]:
    run_dir = Path(next(a for a in args if a.startswith("run.dir=")).removeprefix("run.dir="))
    launch(train_command(config, args, nproc), run_dir, timeout=400)
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_import_train_five_steps_on_tp2_export_and_transformers_computes_our_logits(assets, tmp_path):
    config, run = assets / "glm4" / "config.yaml", tmp_path / "run"
    args = overrides(assets, run, assets / "glm4", "parallel.tp=2")
    losses = torchrun(config, args)
    assert sorted(losses) == [1, 2, 3, 4, 5]
    assert losses[1] == pytest.approx(first_batch_loss(config, args, load_trained_model(assets / "glm4")), abs=1e-5)
    assert cli(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours = load_trained_model(run)
    assert not torch.equal(ours.embed_tokens.weight, load_trained_model(assets / "glm4").embed_tokens.weight)  # trained
    input_ids = torch.tensor([tokenizer(" ".join(corpus_lines(3)), add_special_tokens=False)["input_ids"][:48]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=input_ids).logits, ours(**causal_inputs(input_ids)),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("layout", [["parallel.tp=1", "train.init_device=meta"],
                                    ["parallel.engine=deepspeed", "parallel.tp=2", "parallel.zero_stage=1"]],
                         ids=["torch_dp2_meta", "deepspeed_tp2"])
def test_init_from_gives_the_same_first_loss_under_other_layouts_and_engines(assets, tmp_path, layout):
    config, args = assets / "glm4" / "config.yaml", overrides(assets, tmp_path, assets / "hf", "train.max_steps=1",
                                                              *layout)
    assert torchrun(config, args)[1] == pytest.approx(
        first_batch_loss(config, args, load_trained_model(assets / "glm4")), abs=1e-5)
