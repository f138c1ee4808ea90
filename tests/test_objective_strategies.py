"""Goldens from the papers' own worked examples, one per strategy, laid out by the collator: T5's
Fig. 2, BERT's "my dog is hairy", FIM's PSM and SPM formats, UL2's paradigm tokens, GLM's Table 6
sentinel ablation; instruction samples; the registry seam."""
import re
import sys

import numpy as np
import pytest
from scipy import stats

from pretrain.config import from_dict
from pretrain.objectives import (GLMCollator, ObjectiveConfig, STRATEGIES, TextSample, declared_special_tokens,
                                 raw_length)
from pretrain.objectives.strategies import prefix_lm, t5, token, ul2
from pretrain.objectives.strategies.base import SENTINELS
from pretrain.objectives.strategies.fim import ROLES as FIM_ROLES
from pretrain.objectives.strategies.ul2 import MODES
from pretrain.tokens import SpecialTokens

EXTRA = {role: 100 + i for i, role in enumerate([*SENTINELS, *FIM_ROLES, *MODES])}
S = SpecialTokens(extra=EXTRA)  # pad 0, eos 1, cls 2, [MASK] 3, [sMASK] 4, [gMASK] 5, sop 6, eop 7
X, Y = EXTRA["sentinel_0"], EXTRA["sentinel_1"]
PRE, MID, SUF = (EXTRA[role] for role in FIM_ROLES)
NLU, NLG, S2S = (EXTRA[role] for role in MODES)
WORDS = "Thank you for inviting me to your party last week . my dog is hairy".split()
ID = {w: 20 + i for i, w in enumerate(dict.fromkeys(WORDS))}


def words(text):
    return [ID[w] for w in text.split()]


def collator(strategy, seq_len=32, **sections):
    cfg = from_dict(ObjectiveConfig, {"strategy": strategy, "shuffle_order": False, **sections}, "objective")
    return GLMCollator(cfg, S, seq_len, seed=0, global_batch_size=1, vocab_size=400)


def parts(batch, row=0, segment=0):
    """(Part A inputs, Part B inputs, Part B targets, Part B positions, Part B block positions)."""
    here = batch["segment_ids"][row] == segment
    a, b = here & batch["part_a"][row], here & ~batch["part_a"][row]
    return (batch["input_ids"][row][a].tolist(), batch["input_ids"][row][b].tolist(),
            batch["target_ids"][row][b].tolist(), batch["position_ids"][row][b].tolist(),
            batch["block_position_ids"][row][b].tolist())


def test_t5_figure_2(monkeypatch):
    # "Thank you for inviting me to your party last week ." -> input "Thank you <X> me to your party <Y>
    # week ." and target "<X> for inviting <Y> last <Z>" (our eop plays <Z>).
    doc = np.array([S.cls, *words("Thank you for inviting me to your party last week ."), S.eos])
    monkeypatch.setattr(t5, "span_corruption", lambda *_: (np.array([3, 9]), np.array([5, 10])))
    batch = collator("t5").build([TextSample(0, [doc])])
    a, b_in, b_tgt, b_pos, b_blk = parts(batch)
    assert a == [S.cls, *words("Thank you"), X, *words("me to your party"), Y, *words("week ."), S.eos]
    assert b_in == [X, *words("for inviting"), Y, *words("last")]
    assert b_tgt == [*words("for inviting"), Y, *words("last"), S.eop]
    assert b_pos == [3, 3, 3, 8, 8] and b_blk == [1, 2, 3, 1, 2]
    assert batch["loss_mask"][0].sum() == 5


def test_glm_table_6_sentinels_instead_of_one_mask(monkeypatch):
    # GLM Fig. 2's x1 x2 [M] x4 [M] (spans x3 and x5 x6) with one sentinel per span.
    doc = np.array([S.cls, 11, 12, 13, 14, 15, 16, S.eos])
    monkeypatch.setattr(token, "token_spans", lambda *_: (np.array([3, 5]), np.array([4, 7]), 0))
    a, b_in, b_tgt, b_pos, _ = parts(collator("token", token={"sentinels": True}).build([TextSample(0, [doc])]))
    assert a == [S.cls, 11, 12, X, 14, Y, S.eos]
    assert b_in == [S.sop, 13, S.sop, 15, 16] and b_tgt == [13, S.eop, 15, 16, S.eop] and b_pos == [3, 3, 5, 5, 5]
    assert "sentinel_0" in declared_special_tokens(ObjectiveConfig(token=token.TokenConfig(sentinels=True)))
    assert "sentinel_0" not in declared_special_tokens(ObjectiveConfig())


def test_bert_my_dog_is_hairy():
    # Choosing "hairy": 80% "my dog is [MASK]", 10% a random token, 10% "my dog is hairy"; the loss
    # predicts "hairy" there and nowhere else; no Part B.
    doc = np.array([S.cls, *words("my dog is hairy"), S.eos])
    mlm = collator("mlm")
    strategy = mlm.strategies[0]
    strategy.spans = lambda docs: (strategy.replace(docs, docs.start + 4, docs.start + 5), 0)
    batch = mlm.build([TextSample(i, [doc]) for i in range(2000)])
    assert (batch["part_a"] == (batch["segment_ids"] >= 0)).all(), "everything is Part A"
    assert (batch["loss_mask"][:, 4] == 1).all() and batch["loss_mask"].sum() == 2000
    assert (batch["target_ids"][:, 4] == ID["hairy"]).all()
    assert (batch["input_ids"][:, :4] == [S.cls, *words("my dog is")]).all()
    seen = batch["input_ids"][:, 4]
    outcomes = np.array([(seen == S.mask).sum(), (seen == ID["hairy"]).sum(), ((seen != S.mask) & (seen != ID["hairy"])).sum()])
    assert stats.chisquare(outcomes, [1600, 200, 200]).pvalue > 1e-3
    assert not np.isin(seen[(seen != S.mask) & (seen != ID["hairy"])], list(S.roles().values())).any()


@pytest.mark.parametrize("spm, expected_in, expected_tgt", [
    # PSM: <PRE> prefix <SUF> suffix <MID> middle <EOT>
    (False, [PRE, 11, 12, SUF, 15, S.eos, MID, 13, 14], [11, 12, SUF, 15, S.eos, MID, 13, 14, S.eop]),
    # SPM: <PRE> <SUF> suffix <MID> prefix middle <EOT>
    (True, [PRE, SUF, 15, S.eos, MID, 11, 12, 13, 14], [SUF, 15, S.eos, MID, 11, 12, 13, 14, S.eop]),
])
def test_fim_psm_and_spm(spm, expected_in, expected_tgt):
    doc = np.array([S.cls, 11, 12, 13, 14, 15, S.eos])           # prefix 11 12 | middle 13 14 | suffix 15 eos
    fim = collator("fim")
    strategy = fim.strategies[0]
    one = lambda v: np.array([v])
    strategy.spans = lambda docs: (strategy.arrange(one(1), one(3), one(5), one(7), one(True), one(spm)), 0)
    batch = fim.build([TextSample(0, [doc])])
    a, b_in, b_tgt, _, _ = parts(batch)
    assert a == [S.cls, PRE, MID, SUF]
    assert b_in == expected_in and b_tgt == expected_tgt
    assert batch["loss_mask"][0].sum() == len(expected_in)


@pytest.mark.parametrize("denoiser, mode", [("R", NLU), ("X_long", NLG), ("X_dense", NLG)])
def test_ul2_span_denoisers_announce_their_paradigm(monkeypatch, denoiser, mode):
    doc = np.array([S.cls, 11, 12, 13, 14, S.eos])
    monkeypatch.setattr(ul2, "span_corruption", lambda *_: (np.array([2]), np.array([4])))
    only = {name: {"weight": float(name == denoiser)} for name in ("R", "X_long", "X_dense")}
    only = {name: {**ul2.default_denoisers()[name].__dict__, **w} for name, w in only.items()}
    batch = collator("ul2", ul2={"denoisers": only}).build([TextSample(0, [doc])])
    a, b_in, b_tgt, b_pos, _ = parts(batch)
    assert a == [mode, S.cls, 11, X, 14, S.eos]        # [NLU]/[NLG] before the document, no loss
    assert b_in == [X, 12, 13] and b_tgt == [12, 13, S.eop] and b_pos == [3, 3, 3]
    assert batch["loss_mask"][0].sum() == 3


def test_ul2_s_denoiser_is_a_prefix_lm_announced_by_s2s(monkeypatch):
    doc = np.array([S.cls, 11, 12, 13, 14, S.eos])
    monkeypatch.setattr(ul2, "prefix_split", lambda *_: (np.array([3]), np.array([6])))
    batch = collator("ul2", ul2={"denoisers": {"S": {"kind": "prefix", "mode": "s2s"}}}).build([TextSample(0, [doc])])
    a, b_in, b_tgt, b_pos, _ = parts(batch)
    assert a == [S2S, S.cls, 11, 12, S.gmask] and b_in == [S.sop, 13, 14, S.eos]
    assert b_tgt == [13, 14, S.eos, S.eop] and b_pos == [4] * 4


def test_prefix_lm_reads_the_prefix_both_ways_and_generates_the_rest(monkeypatch):
    doc = np.array([S.cls, 11, 12, 13, 14, S.eos])
    monkeypatch.setattr(prefix_lm, "pick_boundaries", lambda docs, lo, hi, u: lo + 1)
    a, b_in, b_tgt, _, _ = parts(collator("prefix_lm").build([TextSample(0, [doc])]))
    assert a == [S.cls, 11, S.gmask] and b_in == [S.sop, 12, 13, 14, S.eos] and b_tgt == [12, 13, 14, S.eos, S.eop]


def test_instruction_sample_trains_only_its_response_whatever_the_strategy():
    # Two instruction documents (prompt cls p p | response r r eos; a response cut by the window end)
    # packed with plain text, under T5: the plain one is corrupted, the instructions are generated.
    instruction = np.array([S.cls, 11, 12, 13, 14, S.eos])
    cut = np.array([S.cls, 11, 12, 13, 14])
    plain = np.array([S.cls, 15, 16, 17, 18, 15, 16, 17, S.eos])
    names = ("t5", "instruction")
    t5_collator = collator("t5", seq_len=48)
    batch = t5_collator.build([TextSample(0, [instruction, plain, cut], prompt_lengths=[3, 0, 3])])
    assert t5_collator.strategy_names == names
    a, b_in, b_tgt, b_pos, _ = parts(batch, segment=0)
    assert a == [S.cls, 11, 12, S.gmask] and b_in == [S.sop, 13, 14, S.eos] and b_tgt == [13, 14, S.eos, S.eop]
    a, b_in, b_tgt, _, _ = parts(batch, segment=2)
    assert a == [S.cls, 11, 12, S.gmask] and b_in == [S.sop, 13, 14] and b_tgt == [13, 14, S.eop]
    seg = batch["segment_ids"][0]
    loss, part_a = batch["loss_mask"][0], batch["part_a"][0]
    assert loss[(seg == 0) & ~part_a].tolist() == [1, 1, 1, 1] and loss[(seg == 2) & ~part_a].tolist() == [1, 1, 0]
    assert not loss[part_a].any(), "the prompts are context only"
    strategy = batch["strategy_ids"][0]
    assert [names[strategy[seg == s][0]] for s in range(3)] == ["instruction", "t5", "instruction"]
    assert X in batch["input_ids"][0][seg == 1], "the plain document keeps the row's strategy"


def test_registry_is_the_only_list_of_strategies():
    assert set(STRATEGIES) == {"token", "sentence", "document", "causal", "t5", "ul2", "fim", "prefix_lm", "mlm"}
    for name, cls in STRATEGIES.items():
        assert cls.name == name
        assert re.search(r"\(\w[^)]* et al\. (19|20)\d\d", sys.modules[cls.__module__].__doc__), f"{name} cites its paper"
        assert hasattr(ObjectiveConfig(), name), f"objective.{name} is the section of strategy {name}"
        assert raw_length(ObjectiveConfig(strategy=name), 512) > 256
        assert cls.__module__ == f"pretrain.objectives.strategies.{name}"
    assert set(declared_special_tokens(ObjectiveConfig(strategy="ul2"))) == {*SENTINELS, *MODES}
    assert set(declared_special_tokens(ObjectiveConfig(strategy="fim"))) == set(FIM_ROLES)
    assert declared_special_tokens(ObjectiveConfig(strategy="glm-10b")) == {}
