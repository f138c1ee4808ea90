"""Downstream eval (eval.downstream): cloze examples from text, the scoring layout (the objective's
own, checked against build_sample and against what generation writes), the metric arithmetic, the
trainer's eval record and the ablation summary's columns. dp/tp layouts: test_train_distributed.py."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.data.tokenizer import train_tokenizer
from pretrain.generate.cloze import cloze_example, split_last_word
from pretrain.generate.infill import fill_blanks
from pretrain.generate.scoring import Scored, example_counts, layout_scored
from pretrain.model import build_model
from pretrain.objectives import build_sample
from pretrain.tokens import SpecialTokens
from pretrain.train.downstream import summarize

SPECIAL = SpecialTokens()
ROOT = Path(__file__).resolve().parents[1]
MODEL_INPUTS = ("input_ids", "position_ids", "block_position_ids", "segment_ids", "part_a")


@pytest.mark.parametrize("text, parts", [
    ("He walked all the way home.", ("He walked all the way", " home", ".")),
    ('She said: "never again!"  \n', ('She said: "never', " again", '!"')),
    ("Die Katze schläft", ("Die Katze", " schläft", "")),
    ("Ответ был 42.", ("Ответ был", " 42", ".")),
    ("北京是中国的首都。", None),  # no space before the last word: no example
    ("Hello", None),  # nothing before the word
    ("the end is " + "x" * 30 + ".", None),  # a clause, not a word
])
def test_last_word_split(text, parts):
    assert split_last_word(text) == parts


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["He walked all the way home.", "The cat sat on the mat."] * 30, vocab_size=320)


def test_cloze_example_is_framed_like_a_document_and_cut_from_the_left(tokenizer):
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False).ids
    whole = cloze_example("He walked all the way home.", tokenizer, SPECIAL, max_tokens=64)
    expected = [SPECIAL.cls, *encode("He walked all the way"), *encode(" home"), *encode("."), SPECIAL.eos]
    assert whole.tokens.tolist() == expected
    assert whole.tokens[whole.word_start:whole.word_start + whole.word_len].tolist() == encode(" home")
    cut = cloze_example("He walked all the way home.", tokenizer, SPECIAL, max_tokens=len(expected) - 1)
    assert cut.tokens.tolist() == expected[1:]  # no room for cls: a cut piece
    shorter = cloze_example("He walked all the way home.", tokenizer, SPECIAL, max_tokens=len(expected) - 2)
    assert shorter.tokens.tolist() == expected[2:] and shorter.word_start == whole.word_start - 2
    assert cloze_example("home.", tokenizer, SPECIAL, max_tokens=64) is None


def examples() -> list[Scored]:
    rs = np.random.default_rng(0)
    return [Scored(rs.integers(8, 100, 12), np.array([[3, 6]]), SPECIAL.mask, scored=2),
            Scored(rs.integers(8, 100, 9), np.array([[1, 2], [4, 7]]), SPECIAL.mask),
            Scored(rs.integers(8, 100, 10), np.array([[4, 10]]), SPECIAL.gmask, scored=3)]


def test_scoring_layout_is_the_objectives_and_marks_the_scored_targets():
    batch = layout_scored(examples(), seq_len=28, special=SPECIAL, rows_multiple=4)
    assert batch["input_ids"].shape == (4, 28)  # examples 0 (14 tokens laid out) + 1 (13) share row 0, example 2 in row 1, 2 spare rows
    placed = [(0, 0, 0), (0, 14, 1), (1, 0, 2)]  # (row, first column, example)
    for row, start, index in placed:
        example = examples()[index]
        sample = build_sample(example.tokens, example.spans, range(len(example.spans)), example.mask_id,
                              SPECIAL.sop, SPECIAL.eop)
        n = len(sample.input_ids)
        for key in ("input_ids", "target_ids", "position_ids", "block_position_ids"):
            assert batch[key][row, start:start + n].tolist() == getattr(sample, key).tolist(), key
        scored = np.flatnonzero(batch["example"][row] == index)
        in_block = sample.block_position_ids[scored - start]
        if example.scored is None:  # every span token, not the eops
            assert scored.tolist() == (np.flatnonzero(sample.loss_mask & (sample.target_ids != SPECIAL.eop))
                                       + start).tolist()
            assert len(scored) == (example.spans[:, 1] - example.spans[:, 0]).sum()
        else:  # the first `scored` targets of the block
            assert in_block.tolist() == list(range(1, example.scored + 1))
    assert (batch["segment_ids"][2:] == -1).all() and (batch["example"][2:] == -1).all()
    ablated = layout_scored(examples(), seq_len=28, special=SPECIAL, block_positions=False)
    assert ablated["block_position_ids"].tolist() == (batch["loss_mask"][:2] > 0).astype(int).tolist()
    assert np.array_equal(ablated["example"], batch["example"][:2])
    # gmask_positions=continue: the [gMASK] example's block prolongs the text, the [MASK] ones stay
    prolonged = layout_scored(examples(), seq_len=28, special=SPECIAL, rows_multiple=4, gmask_positions="continue")
    gmask = examples()[2]
    sample = build_sample(gmask.tokens, gmask.spans, [0], SPECIAL.gmask, SPECIAL.sop, SPECIAL.eop, prolong=[True])
    assert prolonged["position_ids"][1, :len(sample.position_ids)].tolist() == sample.position_ids.tolist()
    assert sample.position_ids.tolist() == list(range(len(sample.position_ids)))  # a suffix: 0, 1, 2, ...
    assert np.array_equal(prolonged["position_ids"][0], batch["position_ids"][0])
    assert all(np.array_equal(prolonged[k], batch[k]) for k in batch if k != "position_ids")


@pytest.mark.parametrize("encoding, block_positions, gmask_positions", [
    ("rope_2d", True, "mask"), ("rope_2d", False, "mask"), ("rope_1d", True, "continue"), ("rope_2d", False, "continue")])
def test_teacher_forced_scoring_agrees_with_generation(encoding, block_positions, gmask_positions):
    """What greedy generation writes into a blank, teacher forcing scores as the model's own argmax at
    every position: the two paths encode blanks, positions and block positions the same way ([gMASK]
    blocks at the mask's position or prolonging the text)."""
    torch.manual_seed(0)
    model = build_model("glm-tiny", vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, ffn_hidden_size=96,
                        max_position_embeddings=64, position_encoding=encoding).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    rs = np.random.default_rng(1)
    texts = [rs.integers(8, 128, n) for n in (14, 11, 9)]
    parts = [(np.r_[SPECIAL.cls, t[:5]], SPECIAL.mask, np.r_[t[5:], SPECIAL.eos]) for t in texts[:2]]
    parts.append((np.r_[SPECIAL.cls, texts[2]], SPECIAL.gmask, np.zeros(0, dtype=np.int64)))
    prompts = [np.r_[head, blank, tail] for head, blank, tail in parts]
    stops = [SPECIAL.eop, SPECIAL.eos]  # banned: every fill is 5 tokens
    fills = fill_blanks(model, prompts, SPECIAL, max_new_tokens=5, block_positions=block_positions,
                        gmask_positions=gmask_positions, banned=stops)
    scored = []
    for (head, blank, tail), (fill,) in zip(parts, fills):
        tokens = np.r_[head, fill, tail].astype(np.int64)
        span_end = len(tokens) if blank == SPECIAL.gmask else len(head) + len(fill)
        scored.append(Scored(tokens, np.array([[len(head), span_end]]), blank, scored=len(fill)))
    batch = layout_scored(scored, 32, SPECIAL, block_positions, gmask_positions=gmask_positions)
    batch = {k: torch.from_numpy(v) for k, v in batch.items()}
    with torch.no_grad():
        logits = model(*(batch[k] for k in MODEL_INPUTS))
    banned = [SPECIAL.pad, SPECIAL.cls, SPECIAL.mask, SPECIAL.smask, SPECIAL.gmask, SPECIAL.sop, *stops]
    logits[..., banned] = -math.inf  # generation did not write these
    correct = logits.argmax(dim=-1) == batch["target_ids"]
    counts = example_counts(batch["example"], correct, torch.zeros_like(logits[..., 0]), len(scored))
    assert counts[:, 0].tolist() == [5, 5, 5]
    assert counts[:, 1].tolist() == [5, 5, 5]


def test_metrics_arithmetic():
    labels = [("cloze", "en"), ("cloze", "en"), ("cloze", "de"), ("cloze_causal", "en"), ("infill", "en"),
              ("infill", "zh")]
    counts = np.array([[2, 2, 1.0], [3, 1, 6.0], [1, 1, 0.5], [2, 0, 4.0], [10, 7, 5.0], [30, 3, 45.0]])
    metrics = summarize(counts, labels)
    expected = {
        "eval/cloze_acc": 2 / 3, "eval/cloze_ppl": math.exp(7.5 / 6), "eval/cloze_acc/de": 1.0,
        "eval/cloze_ppl/de": math.exp(0.5), "eval/cloze_acc/en": 0.5, "eval/cloze_ppl/en": math.exp(7 / 5),
        "eval/cloze_causal_acc": 0.0, "eval/cloze_causal_ppl": math.exp(2.0), "eval/cloze_causal_acc/en": 0.0,
        "eval/cloze_causal_ppl/en": math.exp(2.0), "eval/infill_acc": 10 / 40, "eval/infill_ppl": math.exp(50 / 40),
        "eval/infill_acc/en": 0.7, "eval/infill_ppl/en": math.exp(0.5), "eval/infill_acc/zh": 0.1,
        "eval/infill_ppl/zh": math.exp(1.5)}
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key


def test_bad_downstream_setting_fails_at_load():
    from pretrain.config import ConfigError
    from pretrain.train.config import load_config
    with pytest.raises(ConfigError, match="downstream_documents=0 must be >= 1"):
        load_config(ROOT / "configs" / "smoke.yaml", ["eval.downstream_documents=0"])


def test_trainer_eval_reports_downstream_metrics_per_language(trainer_factory, tmp_path, one_thread):
    trainer = trainer_factory(tmp_path, "train.micro_batch_size=4", "eval.interval=1", "eval.batches=1",
                              "eval.downstream=true", "eval.downstream_documents=1")
    record = trainer.evaluate()
    tasks = ("cloze", "cloze_causal", "infill")
    for task in tasks:
        assert 0 <= record[f"eval/{task}_acc"] <= 1 and 1 < record[f"eval/{task}_ppl"] < 1e5
    languages = {key.rsplit("/", 1)[1] for key in record if key.startswith("eval/infill_acc/")}
    assert len(languages) == 22  # every language of the embedded corpus
    cloze = {key.rsplit("/", 1)[1] for key in record if key.startswith("eval/cloze_acc/")}
    assert {"en", "de", "ar", "ru"} <= cloze and not {"zh", "ja"} & cloze  # no space-delimited last word
    assert {key.rsplit("/", 1)[1] for key in record if key.startswith("eval/cloze_causal_ppl/")} == cloze
