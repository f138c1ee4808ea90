"""`python -m pretrain infill` on trained models: a model that memorised a tiny corpus fills its blanks
exactly; a GLM-4-like tokenizer (special tokens above id 150,000) runs preprocess -> train -> infill;
user mistakes are one line and exit code 2."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
import yaml
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from pretrain.__main__ import main as cli
from pretrain.config import to_dict
from pretrain.data.config import DataConfig
from pretrain.data.loader import build_loader, glm_collator, open_data
from pretrain.data.tokenizer import save_tokenizer, train_tokenizer
from pretrain.model import build_model
from pretrain.objectives import ObjectiveConfig, raw_length

SAYINGS = ["the quick brown fox jumps over the lazy dog.", "a journey of a thousand miles begins with a single step.",
           "all that glitters is not gold.", "early to bed and early to rise makes a man healthy."]
MODEL_INPUTS = ("input_ids", "position_ids", "block_position_ids", "segment_ids", "part_a")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
    return path


def preprocess(root: Path, texts: list[str], tokenizer: Path) -> Path:
    corpus = write_jsonl(root / "en.jsonl", texts)
    assert cli(["preprocess", "--input", f"en={corpus}", "--tokenizer", str(tokenizer), "--output", str(root / "data")]) == 0
    return root / "data"


@pytest.fixture(scope="module")
def memorised_run(tmp_path_factory) -> Path:
    """glm-tiny trained (a plain loop over the project's loader, collator and model: 300 steps) on the four
    sayings repeated, [MASK] spans and [gMASK] suffixes/infills mixed per sample, saved as a run directory."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("memorised")
    save_tokenizer(train_tokenizer(SAYINGS * 20, vocab_size=512), root / "tokenizer.json")  # one token per word
    data = DataConfig(path=str(preprocess(root, SAYINGS * 50, root / "tokenizer.json")), num_workers=0,
                      cache_dir=str(root / "cache"))
    source = open_data(data)
    objective = ObjectiveConfig(strategy="mixture", mixture={"token": 1, "document": 1}, mixture_level="sample")
    seq_len, batch, steps, lr = 48, 16, 300, 3e-3
    collator = glm_collator(source, objective, seq_len=seq_len, seed=0, global_batch_size=batch)
    loader = build_loader(data, collator, seq_len=seq_len, raw_len=raw_length(objective, seq_len),
                          global_batch_size=batch, micro_batch_size=batch, dp_rank=0, dp_size=1, seed=0, source=source)
    torch.manual_seed(0)
    model = build_model("glm-tiny", vocab_size=source.vocab_size, attention_backend="dense")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for step, rows in zip(range(steps), loader):
        logits = model(*(rows[k] for k in MODEL_INPUTS))
        ce = F.cross_entropy(logits.flatten(0, 1), rows["target_ids"].flatten(), reduction="none")
        (ce @ rows["loss_mask"].flatten() / rows["loss_mask"].sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
        for group in optimizer.param_groups:
            group["lr"] = lr * (1 - (step + 1) / steps)
    # the run directory as the trainer writes it (pretrain/train/run_dir.py reads it)
    run = root / "run"
    checkpoint = run / "checkpoints" / f"step_{steps:08d}"
    dcp.save({"model": model.state_dict()}, checkpoint_id=checkpoint)
    (checkpoint / "complete").touch()
    (run / "config.yaml").write_text(yaml.safe_dump({
        "objective": to_dict(objective), "resolved_model": dataclasses.asdict(model.cfg),
        "resolved_special_tokens": source.special.roles()}))
    source.tokenizer.save(str(run / "tokenizer.json"))
    torch.set_num_threads(threads)
    return run


def test_memorised_corpus_blanks_are_filled_exactly(memorised_run, capsys):
    prompts = ["the quick brown [MASK] jumps over the lazy dog.",  # one word inside
               "all that [MASK] is not [MASK].",  # two blanks, the second right before the final period
               "[MASK] fox jumps over the lazy dog.",  # several words at the start
               "early to bed and [gMASK]"]  # continue the text: [gMASK] at the end
    assert cli(["infill", "--run", str(memorised_run), "--mark", "--batch-size", "3", *prompts]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "the quick brown [[fox]] jumps over the lazy dog.",
        "all that [[glitters]] is not [[gold]].",
        "[[the quick brown]] fox jumps over the lazy dog.",
        "early to bed and [[early to rise makes a man healthy.]]"]


def test_prompts_from_a_file_and_sampling_flags(memorised_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a journey of a [MASK] miles begins with a single step.\n\nall that [MASK] is not gold.\n")
    assert cli(["infill", "--run", str(memorised_run), "--file", str(prompts), "--temperature", "0.7",
                "--top-k", "5", "--top-p", "0.9", "--seed", "3"]) == 0
    # a memorised fill is far more likely than anything else: sampling finds it too
    assert capsys.readouterr().out.splitlines() == ["a journey of a thousand miles begins with a single step.",
                                                    "all that glitters is not gold."]


@pytest.mark.parametrize("args, message", [
    (["the cat sat."], "infill: prompt 1: no blank in 'the cat sat.'"),
    (["--max-new-tokens", "0", "a [MASK]"], "max_new_tokens=0 must be >= 1"),
    (["--top-p", "2", "a [MASK]"], "top_p=2.0 must lie in (0, 1]"),
    ([], "no prompt: give PROMPT arguments or --file"),
])
def test_infill_refuses_bad_requests_in_one_line(memorised_run, capsys, args, message):
    assert cli(["infill", "--run", str(memorised_run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_infill_names_a_missing_run_or_checkpoint(memorised_run, tmp_path, capsys):
    assert cli(["infill", "--run", str(tmp_path / "nowhere"), "a [MASK]"]) == 2
    assert f"{tmp_path / 'nowhere'} is not a training run directory" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "tokenizer.json"):
        (run / name).write_bytes((memorised_run / name).read_bytes())
    assert cli(["infill", "--run", str(run), "a [MASK]"]) == 2
    assert f"no complete checkpoint under {run / 'checkpoints'}; pass --checkpoint" in capsys.readouterr().err


def glm4_like_tokenizer(texts: list[str], path: Path, first_special: int = 150_000) -> Path:
    """A byte-level BPE padded with filler entries up to ``first_special``, then GLM-4's special
    strings as added tokens (GLM-4: 151,329 <|endoftext|>, [MASK], [gMASK], [sMASK], <sop>, <eop>)."""
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(trained.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab.update({f"<filler_{i}>": i for i in range(len(vocab), first_special)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in model["merges"]]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in
                                  ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>")])
    tokenizer.save(str(path))
    return path


def test_glm4_like_tokenizer_with_high_special_ids_preprocess_train_infill(tmp_path, single_process_env, capsys):
    tokenizer = glm4_like_tokenizer(SAYINGS * 10, tmp_path / "glm4.json")
    data = preprocess(tmp_path, SAYINGS * 10, tokenizer)
    config = {"model": {"preset": "glm-4-9b", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
                        "head_dim": 16, "ffn_hidden_size": 64, "max_position_embeddings": 64},
              "objective": {"strategy": "glm-130b"},
              "data": {"path": str(data), "num_workers": 0, "cache_dir": str(tmp_path / "cache")},
              "train": {"max_steps": 2, "global_batch_size": 2, "micro_batch_size": 2, "seq_len": 32},
              "parallel": {"tp": 1}, "run": {"dir": str(tmp_path / "run")}, "metrics": {"tensorboard": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert cli(["train", "--config", str(tmp_path / "run.yaml")]) == 0
    run = tmp_path / "run"
    roles = yaml.safe_load((run / "config.yaml").read_text())["resolved_special_tokens"]
    assert roles == {"pad": 150_006, "eos": 150_000, "cls": 150_007, "mask": 150_001, "smask": 150_003,
                     "gmask": 150_002, "sop": 150_004, "eop": 150_005}  # GLM-4's own, pad and cls added after
    assert yaml.safe_load((run / "config.yaml").read_text())["resolved_model"]["vocab_size"] == 150_016  # 128 | v
    capsys.readouterr()
    assert cli(["infill", "--run", str(run), "--max-new-tokens", "4", "--mark",
                "the quick brown [MASK] jumps.", "all that [gMASK]"]) == 0
    lines = capsys.readouterr().out.splitlines()  # two training steps: the fills are noise, but decoded text
    assert len(lines) == 2 and lines[0].startswith("the quick brown") and lines[0].endswith("]] jumps.")
    assert lines[1].startswith("all that") and "[[" in lines[1] and lines[1].endswith("]]")
    assert not any(s in line for line in lines for s in ("[MASK]", "[gMASK]", "<sop>", "<|endoftext|>", "[CLS]"))
