"""The layout core against a plain reference: ``reference_layout`` below builds the same rows one token
at a time and reads top to bottom; the vectorised ``infill.layout_rows`` must agree on random inputs
(every per-span option: openers, blocks of several spans, inline spans, empty spans, untrained eop,
blocks that prolong the text's positions)."""
import numpy as np
from hypothesis import given, settings, strategies as st

from pretrain.objectives.infill import Spans, layout_rows

PAD, SOP, EOP = 0, 6, 7
KEYS = ("input_ids", "target_ids", "loss_mask", "position_ids", "block_position_ids", "segment_ids", "part_a")


def reference_layout(tokens, seg_lengths, seg_rows, n_rows, seq_len, spans, block_positions=True):
    """Contract 1, segment by segment: Part A = the text with each span replaced by its mask token; Part
    B = per span in rank order, its opener then its text, targets shifted by one, eop where it closes; a
    block's tokens sit at its mask's position, or at the positions after it when the span prolongs the text."""
    field = lambda name, k, default: default if getattr(spans, name) is None else getattr(spans, name)[k]
    rows = [[] for _ in range(n_rows)]        # per row: (input, target, loss, position, block, segment, part_a)
    first, segments_in_row = 0, [0] * n_rows
    for row, length in zip(seg_rows, seg_lengths):
        segment, segments_in_row[row] = segments_in_row[row], segments_in_row[row] + 1
        mine = [k for k in range(len(spans.start)) if first <= spans.start[k] < first + length]
        part_a, mask_pos, at = [], {}, first
        for k in mine:
            part_a += [[t, t, 0.0] for t in tokens[at:spans.start[k]]]
            replaced = field("inline", k, False) and spans.end[k] > spans.start[k]
            mask_pos[k] = len(part_a)
            mask = spans.mask_id[k]
            part_a.append([mask, tokens[spans.start[k]] if replaced else mask, 1.0 if replaced else 0.0])
            at = spans.end[k]
        part_a += [[t, t, 0.0] for t in tokens[at:first + length]]
        rows[row] += [(i, t, loss, p, 0, segment, True) for p, (i, t, loss) in enumerate(part_a)]
        part_b = []
        for k in sorted((k for k in mine if not field("inline", k, False)), key=lambda k: field("rank", k, k)):
            text = [field("opener", k, SOP)] + list(tokens[spans.start[k]:spans.end[k]])
            prolong = field("prolong", k, False)
            part_b += [[t, None, 1.0, mask_pos[k] + (j + 1 if prolong else 0), j + 1 if block_positions else 1]
                       for j, t in enumerate(text)]
            if field("closes", k, True):
                part_b[-1][1], part_b[-1][2] = EOP, float(field("eop_loss", k, True))
        for j, token in enumerate(part_b):
            if token[1] is None:
                token[1] = part_b[j + 1][0]   # teacher forcing: the next Part-B input
        rows[row] += [(i, t, loss, p, b, segment, False) for i, t, loss, p, b in part_b]
        first += length
    padded = [r + [(PAD, PAD, 0.0, 0, 0, -1, False)] * (seq_len - len(r)) for r in rows]
    return {key: np.array([[t[i] for t in r] for r in padded]) for i, key in enumerate(KEYS)}


@st.composite
def layouts(draw):
    """Random segments tiled into rows, spans of every kind with a valid Part-B order per segment."""
    n_rows = draw(st.integers(1, 3))
    seg_rows = sorted(draw(st.lists(st.integers(0, n_rows - 1), min_size=1, max_size=5)))
    seg_lengths = draw(st.lists(st.integers(1, 9), min_size=len(seg_rows), max_size=len(seg_rows)))
    tokens = np.array(draw(st.lists(st.integers(20, 40), min_size=sum(seg_lengths), max_size=sum(seg_lengths))))
    columns = {name: [] for name in ("start", "end", "mask_id", "opener", "chain", "inline", "prolong", "rank",
                                     "closes", "eop_loss")}
    first, left_to_right = 0, True
    for length in seg_lengths:
        at, at_empty, mine = first, first, []   # an empty span at p may precede a non-empty one at p
        while at < first + length and draw(st.booleans()):
            start = draw(st.integers(at, first + length - 1))
            inline = draw(st.booleans())
            longest = 1 if inline else first + length - start
            end = start + draw(st.integers(int(start < at_empty), longest))
            mine.append((start, end, inline))
            at, at_empty = (end, end) if end > start else (start, start + 1)
        in_b = [k for k, (_, _, inline) in enumerate(mine) if not inline]
        order = draw(st.permutations(in_b)) + [k for k, (_, _, inline) in enumerate(mine) if inline]
        left_to_right &= order == sorted(order)
        for k, (start, end, inline) in enumerate(mine):
            columns["start"].append(start), columns["end"].append(end), columns["inline"].append(inline)
            columns["prolong"].append(draw(st.booleans()))
            columns["mask_id"].append(draw(st.integers(2, 5))), columns["opener"].append(draw(st.sampled_from([SOP, 8])))
            columns["rank"].append(order.index(k))
            last = bool(in_b) and k == order[len(in_b) - 1]
            columns["closes"].append(last or draw(st.booleans())), columns["eop_loss"].append(draw(st.booleans()))
        first += length
    as_array = {k: np.array(v, dtype=bool if k in ("inline", "prolong", "closes", "eop_loss") else np.int64)
                for k, v in columns.items() if k != "chain"}
    spans = Spans(**as_array)
    for name in draw(st.sets(st.sampled_from(["opener", "inline", "prolong", "rank", "closes", "eop_loss"]))):
        # None is the GLM default: sop, no inline span, positions at the mask, left to right, every span
        # closes, eop trained.
        if name == "inline" and spans.inline.any() or name == "rank" and not left_to_right:
            continue
        setattr(spans, name, None)
    return tokens, np.array(seg_lengths), np.array(seg_rows), n_rows, spans


@settings(deadline=None, max_examples=300)
@given(case=layouts(), slack=st.integers(0, 3), block_positions=st.booleans())
def test_vectorised_layout_equals_the_reference(case, slack, block_positions):
    tokens, seg_lengths, seg_rows, n_rows, spans = case
    expected = reference_layout(tokens, seg_lengths, seg_rows, n_rows, 64, spans, block_positions)
    seq_len = int(max((expected["segment_ids"][r] >= 0).sum() for r in range(n_rows))) + slack
    expected = {k: v[:, :seq_len] for k, v in expected.items()}
    got = layout_rows(tokens, seg_lengths, seg_rows, n_rows, seq_len, spans, PAD, SOP, EOP, block_positions)
    for key in KEYS:
        np.testing.assert_array_equal(got[key], expected[key].astype(got[key].dtype), err_msg=key)
