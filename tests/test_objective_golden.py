"""Hand-computed goldens: the paper's Figure 2 (reference §9.1 G1), packing, order, block positions,
sentence and document modes."""
import numpy as np
import torch

from pretrain.config import from_dict
from pretrain.objectives import GLMCollator, ObjectiveConfig, TextSample, attention_matrix, build_sample
from pretrain.objectives.infill import Spans, layout_rows
from pretrain.tokens import SpecialTokens

# Reference §9.1 toy vocabulary: MASK 2, sop 5, eop 6, text x1..x6 = 11..16.
MASK, SOP, EOP = 2, 5, 6
X = [11, 12, 13, 14, 15, 16]
S = SpecialTokens()  # pad 0, eos 1, cls 2, [MASK] 3, [sMASK] 4, [gMASK] 5, sop 6, eop 7


def rows_of(text):
    return [[int(c) for c in line] for line in text.split()]


def test_g1_paper_figure_2_with_its_attention_matrix():
    out = build_sample(X, [(2, 3), (4, 6)], order=[1, 0], mask_id=MASK, sop_id=SOP, eop_id=EOP)
    assert out.input_ids.tolist() == [11, 12, 2, 14, 2, 5, 15, 16, 5, 13]
    assert out.position_ids.tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 2, 2]
    assert out.block_position_ids.tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 1, 2]
    assert out.target_ids.tolist() == [11, 12, 2, 14, 2, 15, 16, 6, 13, 6]
    assert out.loss_mask.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert out.prefix_len == 5
    expected = rows_of("1111100000 1111100000 1111100000 1111100000 1111100000 "
                       "1111110000 1111111000 1111111100 1111111110 1111111111")
    # DESIGN rule 4 on the collator's representation: one segment, Part A = the first prefix_len tokens.
    mask = attention_matrix(np.zeros(10, dtype=np.int64), np.arange(10) < out.prefix_len)
    assert mask.astype(int).tolist() == expected


def test_unshuffled_order_writes_blocks_left_to_right():
    out = build_sample(X, [(2, 3), (4, 6)], order=[0, 1], mask_id=MASK, sop_id=SOP, eop_id=EOP)
    assert out.input_ids.tolist() == [11, 12, 2, 14, 2, 5, 13, 5, 15, 16]
    assert out.target_ids.tolist() == [11, 12, 2, 14, 2, 13, 6, 15, 16, 6]
    assert out.position_ids.tolist() == [0, 1, 2, 3, 4, 2, 2, 4, 4, 4]
    assert out.block_position_ids.tolist() == [0, 0, 0, 0, 0, 1, 2, 1, 2, 3]


def test_no_block_positions_gives_every_part_b_token_block_position_one():
    out = build_sample(X, [(2, 3), (4, 6)], order=[1, 0], mask_id=MASK, sop_id=SOP, eop_id=EOP,
                       block_positions=False)
    assert out.block_position_ids.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert out.position_ids.tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 2, 2]


def test_suffix_span_is_document_level_generation():
    # Contract 2: one span (d, n) with [gMASK]: Part B = sop + text[d:], targets text[d:] + eop.
    out = build_sample(X, [(3, 6)], order=[0], mask_id=4, sop_id=SOP, eop_id=EOP)
    assert out.input_ids.tolist() == [11, 12, 13, 4, 5, 14, 15, 16]
    assert out.target_ids.tolist() == [11, 12, 13, 4, 14, 15, 16, 6]
    assert out.position_ids.tolist() == [0, 1, 2, 3, 3, 3, 3, 3]
    assert out.block_position_ids.tolist() == [0, 0, 0, 0, 1, 2, 3, 4]


def test_layout_rows_packs_segments_and_pads():
    # Row 0: d0 = cls 11 12 13 14 eos with spans [12] (2nd in Part B) and [14] (1st); d1 = cls 15 16 eos
    # with span [15 16]. Row 1: d2 = 17 18 19 without spans (context only).
    tokens = np.array([2, 11, 12, 13, 14, 1, 2, 15, 16, 1, 17, 18, 19])
    spans = Spans(start=np.array([2, 4, 7]), end=np.array([3, 5, 9]), mask_id=np.array([3, 3, 3]),
                  rank=np.array([1, 0, 0]))
    out = layout_rows(tokens, np.array([6, 4, 3]), np.array([0, 0, 1]), 2, 16, spans, S.pad, S.sop, S.eop)
    pad = [0] * 13
    assert out["input_ids"].tolist() == [[2, 11, 3, 13, 3, 1, 6, 14, 6, 12, 2, 3, 1, 6, 15, 16], [17, 18, 19] + pad]
    assert out["target_ids"].tolist() == [[2, 11, 3, 13, 3, 1, 14, 7, 12, 7, 2, 3, 1, 15, 16, 7], [17, 18, 19] + pad]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 4, 4, 2, 2, 0, 1, 2, 1, 1, 1], [0, 1, 2] + pad]
    assert out["block_position_ids"].tolist() == [[0] * 6 + [1, 2, 1, 2] + [0] * 3 + [1, 2, 3], [0] * 16]
    assert out["segment_ids"].tolist() == [[0] * 10 + [1] * 6, [0] * 3 + [-1] * 13]
    assert out["part_a"].astype(int).tolist() == [[1] * 6 + [0] * 4 + [1] * 3 + [0] * 3, [1] * 3 + pad]
    assert out["loss_mask"].tolist() == [[0] * 6 + [1] * 4 + [0] * 3 + [1] * 3, [0] * 16]
    assert out["loss_mask"].dtype == np.float32


# Two pieces: a whole document (cls a b eos) and a cut piece without cls or eos (c d e).
PIECES = [np.array([2, 11, 12, 1]), np.array([13, 14, 15])]


def test_packed_documents_golden_with_isolating_attention():
    cfg = ObjectiveConfig(strategy="causal", layout="packed")
    out = GLMCollator(cfg, S, seq_len=14, seed=0, global_batch_size=1).build([TextSample(7, PIECES)])
    # Segment 0: A = cls [gMASK], B = sop a b eos. Segment 1: A = [gMASK], B = sop c d e.
    assert out["input_ids"][0].tolist() == [2, 5, 6, 11, 12, 1, 5, 6, 13, 14, 15, 0, 0, 0]
    assert out["target_ids"][0].tolist() == [2, 5, 11, 12, 1, 7, 5, 13, 14, 15, 7, 0, 0, 0]
    assert out["position_ids"][0].tolist() == [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert out["block_position_ids"][0].tolist() == [0, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 0, 0]
    assert out["segment_ids"][0].tolist() == [0] * 6 + [1] * 5 + [-1] * 3
    # Contract 2: the whole document learns to end (eop after eos); the cut piece does not (fix 2).
    assert out["loss_mask"][0].tolist() == [0, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0]
    assert out["strategy_ids"][0].tolist() == [0] * 11 + [-1] * 3
    assert out["sample_ids"].tolist() == [7]
    expected = rows_of(
        "11000000000000 11000000000000 11100000000000 11110000000000 11111000000000 11111100000000 "
        "00000010000000 00000011000000 00000011100000 00000011110000 00000011111000 "
        "00000000000100 00000000000010 00000000000001")
    assert attention_matrix(out["segment_ids"][0], out["part_a"][0]).astype(int).tolist() == expected
    # torch in, torch out (batched), for the model's dense reference
    dense = attention_matrix(torch.from_numpy(out["segment_ids"]), torch.from_numpy(out["part_a"]))
    assert dense.dtype == torch.bool and dense.shape == (1, 14, 14) and dense[0].int().tolist() == expected


def test_legacy_layout_golden_one_segment_spans_per_document():
    cfg = ObjectiveConfig(strategy="causal", layout="legacy", shuffle_order=False)
    out = GLMCollator(cfg, S, seq_len=14, seed=0, global_batch_size=1).build([TextSample(7, PIECES)])
    # One segment: A = cls [gMASK] [gMASK], B = sop a b eos | sop c d e (left to right).
    assert out["input_ids"][0].tolist() == [2, 5, 5, 6, 11, 12, 1, 6, 13, 14, 15, 0, 0, 0]
    assert out["target_ids"][0].tolist() == [2, 5, 5, 11, 12, 1, 7, 13, 14, 15, 7, 0, 0, 0]
    assert out["position_ids"][0].tolist() == [0, 1, 2, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0]
    assert out["block_position_ids"][0].tolist() == [0] * 3 + [1, 2, 3, 4, 1, 2, 3, 4, 0, 0, 0]
    assert out["segment_ids"][0].tolist() == [0] * 11 + [-1] * 3


def test_sentence_mode_golden():
    # cls a . b c . d eos with "." = 20: sentences [a .], [b c .] and the fragment [d]. A document of
    # several sentences keeps one out of the draw (for sample 0: [d]); a ratio near 1 takes the
    # others, Part B left to right.
    cfg = from_dict(ObjectiveConfig, {"strategy": "sentence", "sentence": {"mask_ratio": 0.99},
                                      "shuffle_order": False}, "objective")
    collator = GLMCollator(cfg, S, seq_len=64, seed=0, global_batch_size=1, sentence_end_ids=np.array([20]))
    out = collator.build([TextSample(0, [np.array([2, 11, 20, 12, 13, 20, 14, 1])])])
    n = 12
    assert out["input_ids"][0, :n].tolist() == [2, 4, 4, 14, 1, 6, 11, 20, 6, 12, 13, 20]
    assert out["target_ids"][0, :n].tolist() == [2, 4, 4, 14, 1, 11, 20, 7, 12, 13, 20, 7]
    assert out["position_ids"][0, :n].tolist() == [0, 1, 2, 3, 4, 1, 1, 1, 2, 2, 2, 2]
    assert out["block_position_ids"][0, :n].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 1, 2, 3, 4]
    assert (out["segment_ids"][0, n:] == -1).all()


def test_document_mode_golden_full_span():
    # min_ratio 1 makes the [gMASK] span the whole text after cls, eos included (contract 2):
    # cls [gMASK] | sop a b c eos.
    cfg = from_dict(ObjectiveConfig, {"strategy": "document", "document": {"min_ratio": 1.0}}, "objective")
    out = GLMCollator(cfg, S, seq_len=12, seed=3, global_batch_size=1).build(
        [TextSample(0, [np.array([2, 11, 12, 13, 1])])])
    assert out["input_ids"][0].tolist() == [2, 5, 6, 11, 12, 13, 1, 0, 0, 0, 0, 0]
    assert out["target_ids"][0].tolist() == [2, 5, 11, 12, 13, 1, 7, 0, 0, 0, 0, 0]
    assert out["position_ids"][0].tolist() == [0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert out["block_position_ids"][0].tolist() == [0, 0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0]
    assert out["loss_mask"][0].tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
