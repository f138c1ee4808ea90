"""objective.gmask_positions: [gMASK] blocks at their mask's position (GLM's 2-D scheme) or prolonging
the text (GLM-130B's 1-D scheme: sop at the [gMASK]'s position + 1, then + 2, ...). Goldens of the
GLM-130B suffix layout; over every strategy and switch, "continue" moves exactly the positions of the
[gMASK] blocks and nothing else; "auto" follows the model's position encoding and the collator refuses
it unresolved."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pretrain.config import ConfigError, from_dict
from pretrain.objectives import (GLMCollator, ObjectiveConfig, TextSample, build_sample, prolongs_gmask_blocks,
                                 resolve_gmask_positions)
from tests.test_objective_properties import END, SEQ_LEN, SPECIAL, VOCAB, configs, rows

G, SOP, EOP = SPECIAL.gmask, SPECIAL.sop, SPECIAL.eop


def collate(cfg, samples, gmask_positions, seed=0):
    cfg = dataclasses.replace(cfg, gmask_positions=gmask_positions)
    collator = GLMCollator(cfg, SPECIAL, SEQ_LEN, seed=seed, global_batch_size=2, sentence_end_ids=np.array([END]),
                           vocab_size=VOCAB)
    return collator.build(samples)


def test_glm130b_gmask_suffix_golden():
    """[cls] w0 w1 | [gMASK] | sop w2 w3 eos: context at 0..d-1 (d = 3), [gMASK] at d, sop at d + 1, and
    every generated token one further; block positions and everything else as GLM's layout."""
    text = [SPECIAL.cls, 20, 21, 22, 23, SPECIAL.eos]
    continued = build_sample(text, [(3, 6)], [0], G, SOP, EOP, prolong=[True])
    assert continued.input_ids.tolist() == [SPECIAL.cls, 20, 21, G, SOP, 22, 23, SPECIAL.eos]
    assert continued.target_ids.tolist() == [SPECIAL.cls, 20, 21, G, 22, 23, SPECIAL.eos, EOP]
    assert continued.loss_mask.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert continued.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert continued.block_position_ids.tolist() == [0, 0, 0, 0, 1, 2, 3, 4]
    assert continued.prefix_len == 4
    at_mask = build_sample(text, [(3, 6)], [0], G, SOP, EOP)  # contract 2 as GLM lays it out
    assert at_mask.position_ids.tolist() == [0, 1, 2, 3, 3, 3, 3, 3]
    for key in ("input_ids", "target_ids", "loss_mask", "block_position_ids"):
        assert (getattr(at_mask, key) == getattr(continued, key)).all(), key
    # without block positions the first dimension still counts (it does not read them)
    flat = build_sample(text, [(3, 6)], [0], G, SOP, EOP, block_positions=False, prolong=[True])
    assert flat.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert flat.block_position_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_mixed_blanks_golden():
    """Two spans, the [gMASK]-like one first in Part B: only the prolonging block's positions move."""
    text = list(range(20, 30))
    sample = build_sample(text, [(2, 4), (6, 9)], [1, 0], G, SOP, EOP, prolong=[False, True])
    # Part A: 20 21 G 24 25 G 29 (the masks at 2 and 5); Part B: span 1 (prolonging) then span 0
    assert sample.input_ids.tolist() == [20, 21, G, 24, 25, G, 29, SOP, 26, 27, 28, SOP, 22, 23]
    assert sample.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9, 2, 2, 2]
    assert sample.block_position_ids.tolist() == [0] * 7 + [1, 2, 3, 4, 1, 2, 3]
    with pytest.raises(ValueError, match="prolong has 1 entries for 2 spans"):
        build_sample(text, [(2, 4), (6, 9)], [1, 0], G, SOP, EOP, prolong=[True])


def test_causal_under_continue_sees_plain_left_to_right_positions():
    """GLM-4's view of a causal continuation: [cls] [gMASK] sop text ... at positions 0, 1, 2, ..."""
    cfg = ObjectiveConfig(strategy="causal", gmask_positions="continue")
    docs = [np.r_[SPECIAL.cls, np.arange(20, 20 + n), SPECIAL.eos] for n in (5, 17)]
    batch = GLMCollator(cfg, SPECIAL, 64, seed=0, global_batch_size=1).build([TextSample(0, docs)])
    for segment, doc in enumerate(docs):
        here = batch["segment_ids"][0] == segment
        assert batch["input_ids"][0][here].tolist() == [SPECIAL.cls, G, SOP, *doc[1:]]
        assert batch["position_ids"][0][here].tolist() == list(range(len(doc) + 2))


def gmask_blocks(batch, row):
    """Per Part-B token of a mask-layout row: whether its block belongs to a [gMASK] token, and its
    place in the block (1 at the opener): blocks are the runs of one segment and one mask position."""
    seg, pos, part_a = batch["segment_ids"][row], batch["position_ids"][row], batch["part_a"][row]
    used = int((seg >= 0).sum())                                   # segments in order, then padding
    seg_start = np.searchsorted(seg[:used], np.maximum(seg, 0))
    in_b = ~part_a & (seg >= 0)
    mask_token = batch["input_ids"][row][np.where(in_b, seg_start + pos, 0)]
    new_block = in_b & ~np.r_[False, in_b[:-1] & (seg[1:] == seg[:-1]) & (pos[1:] == pos[:-1])]
    block_start = np.maximum.accumulate(np.where(new_block, np.arange(len(seg)), 0))
    return in_b & (mask_token == G), np.arange(len(seg)) - block_start + 1


@settings(deadline=None, max_examples=120)
@given(cfg=configs(), samples=rows(prompts=True), seed=st.integers(0, 2 ** 32))
def test_continue_moves_exactly_the_gmask_blocks(cfg, samples, seed):
    """Every strategy (causal, document, prefix_lm, UL2's S, FIM's plain documents and instruction
    responses use [gMASK]), every switch: under continue a [gMASK] block's tokens sit at its mask's
    position + their place in the block, strictly increasing; [MASK], [sMASK], sentinel and FIM blocks
    and every other array are unchanged."""
    at_mask, continued = collate(cfg, samples, "mask", seed), collate(cfg, samples, "continue", seed)
    for key in at_mask:
        if key != "position_ids":
            assert (at_mask[key] == continued[key]).all(), key
    for row in range(len(samples)):
        gmask, place = gmask_blocks(at_mask, row)
        expected = at_mask["position_ids"][row] + np.where(gmask, place, 0)
        assert (continued["position_ids"][row] == expected).all()
        steps = np.diff(continued["position_ids"][row])
        assert (steps[gmask[1:] & (place[1:] > 1)] == 1).all(), "strictly increasing inside a [gMASK] block"


def test_strategies_mark_exactly_their_gmask_spans():
    """The collator's flag follows the role: a span prolongs the text iff its mask token is [gMASK]."""
    samples = [TextSample(i, [np.r_[SPECIAL.cls, np.arange(20, 20 + 30 + i) % 90 + 10, SPECIAL.eos]],
                          prompt_lengths=[5] if i == 3 else None) for i in range(12)]
    for strategy, own_gmask in (("glm-130b", True), ("causal", True), ("prefix_lm", True), ("ul2", True),
                                ("fim", True), ("t5", False), ("token", False), ("mlm", False)):
        cfg = from_dict(ObjectiveConfig, {"strategy": strategy, "gmask_positions": "continue",
                                          "mixture_level": "sample", "fim": {"fim_rate": 0.5}}, "objective")
        collator = GLMCollator(cfg, SPECIAL, SEQ_LEN, seed=1, global_batch_size=12, sentence_end_ids=np.array([END]),
                               vocab_size=VOCAB)
        spans = collator.plan(samples).spans
        gmask = spans.mask_id == G
        assert (spans.prolong == gmask).all(), strategy
        assert (gmask.sum() > 1) == own_gmask, strategy  # besides the instruction's response


def test_auto_follows_the_position_encoding_and_the_collator_refuses_it_unresolved():
    auto = ObjectiveConfig(gmask_positions="auto")
    assert resolve_gmask_positions(auto, "rope_1d").gmask_positions == "continue"
    assert resolve_gmask_positions(auto, "rope_2d").gmask_positions == "mask"
    assert resolve_gmask_positions(auto, "learned_2d").gmask_positions == "mask"
    assert auto.gmask_positions == "auto", "resolving returns a copy"
    for explicit in ("mask", "continue"):
        cfg = ObjectiveConfig(gmask_positions=explicit)
        assert resolve_gmask_positions(cfg, "rope_1d") is cfg and resolve_gmask_positions(cfg, "learned_2d") is cfg
    assert ObjectiveConfig().gmask_positions == "mask", "runs from before the switch stay as they trained"
    with pytest.raises(ValueError, match=r"gmask_positions='auto' must be resolved .*resolve_gmask_positions"):
        GLMCollator(auto, SPECIAL, 64, seed=0, global_batch_size=1)
    with pytest.raises(ValueError, match="must be resolved"):
        prolongs_gmask_blocks("auto")
    with pytest.raises(ConfigError, match="gmask_positions"):
        from_dict(ObjectiveConfig, {"gmask_positions": "prolong"}, "objective")
