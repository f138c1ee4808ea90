"""objective.gmask_positions=auto where an objective meets its model: the trainer's collators (train
and eval) and its downstream eval resolve it from the model's position encoding, the infill verb from
the run's resolved model (a run from before the switch decodes as it trained)."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pretrain.__main__ import main as cli
from pretrain.data.tokenizer import train_tokenizer
from pretrain.model import build_model
from pretrain.model.presets import ModelSection
from pretrain.tokens import SpecialTokens
from pretrain.train import downstream
from pretrain.train.run_dir import write_run_dir

ENCODINGS = [("rope_1d", "continue"), ("learned_2d", "mask")]


def segment_positions(batch: dict, row: int) -> list[tuple[list[int], int]]:
    """Per segment of the row: its positions and the length of its Part A."""
    seg, pos, part_a = batch["segment_ids"][row], batch["position_ids"][row], batch["part_a"][row]
    return [(pos[seg == s].tolist(), int(part_a[seg == s].sum())) for s in range(int(seg.max()) + 1)]


class Captured(Exception):
    pass


@pytest.mark.parametrize("encoding, resolved", ENCODINGS)
def test_trainer_resolves_auto_by_the_models_positions(trainer_factory, tmp_path, monkeypatch, encoding, resolved):
    """Causal documents under auto: a rope_1d model trains on positions 0, 1, 2, ... through each
    document ([cls] [gMASK] sop text), a learned_2d one on GLM's (the block at the [gMASK]'s position,
    the last of Part A); the held-out batches and the downstream eval's layout follow the same resolution."""
    trainer = trainer_factory(tmp_path, "objective.strategy=causal", "objective.gmask_positions=auto",
                              f"model.position_encoding={encoding}", "eval.interval=1", "eval.downstream=true",
                              "eval.downstream_documents=1")
    for loader in (trainer.s.loader, trainer.s.eval_loader):
        batch = next(iter(loader))
        for positions, n_a in segment_positions(batch, 0):
            glm = list(range(n_a)) + [n_a - 1] * (len(positions) - n_a)
            assert positions == (list(range(len(positions))) if resolved == "continue" else glm)
    seen = {}

    def layout_scored(*args, **kwargs):
        seen.update(kwargs)
        raise Captured

    monkeypatch.setattr(downstream, "layout_scored", layout_scored)
    with pytest.raises(Captured):
        downstream.Downstream(trainer.cfg, trainer.s)
    assert seen["gmask_positions"] == resolved


@pytest.mark.parametrize("objective, encoding, resolved", [
    ({"gmask_positions": "auto"}, "rope_1d", "continue"), ({"gmask_positions": "auto"}, "learned_2d", "mask"),
    ({"gmask_positions": "continue"}, "learned_2d", "continue"),
    ({"strategy": "glm-130b"}, "rope_1d", "mask"),  # a run from before the switch: no key, trained at the mask
])
def test_infill_decodes_as_the_run_trained(tmp_path, monkeypatch, objective, encoding, resolved):
    tokenizer = train_tokenizer(["the cat sat on the mat."] * 20, vocab_size=300)
    torch.manual_seed(0)
    model = build_model("glm-tiny", vocab_size=384, position_encoding=encoding)
    section = ModelSection("glm-tiny", {"vocab_size": 384, "position_encoding": encoding})
    write_run_dir(tmp_path, model, section, SpecialTokens(), tokenizer)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**config, "objective": objective}))
    seen = {}

    def fill_blanks(model, prompts, special, **kwargs):
        seen.update(kwargs)
        return [[[]] for _ in prompts]

    monkeypatch.setattr("pretrain.cli.infill.fill_blanks", fill_blanks)
    assert cli(["infill", "--run", str(tmp_path), "--device", "cpu", "the cat [gMASK]"]) == 0
    assert seen["gmask_positions"] == resolved and seen["block_positions"] is True
