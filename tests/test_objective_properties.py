"""Property tests (reference §9.2 adapted to our packed layout) for every strategy and layout switch."""
import numpy as np
from hypothesis import given, settings, strategies as st

from pretrain.objectives import GLMCollator, ObjectiveConfig, TextSample, attention_matrix, build_sample
from pretrain.tokens import SpecialTokens

SPECIAL = SpecialTokens()
MASKS = {SPECIAL.mask: "token", SPECIAL.smask: "sentence", SPECIAL.gmask: "document"}
END = 99  # the sentence-end token of these tests
SEQ_LEN = 160


def split_row(batch, row):
    """Check the row-level layout and return its segments as dicts of 1-D arrays."""
    seg = batch["segment_ids"][row]
    used = int((seg >= 0).sum())
    assert (seg[:used] >= 0).all() and (seg[used:] == -1).all(), "padding only at the end"
    assert (np.diff(seg[:used]) >= 0).all() and (np.diff(seg[:used]) <= 1).all() and (used == 0 or seg[0] == 0)
    pad = slice(used, None)
    assert (batch["input_ids"][row, pad] == SPECIAL.pad).all() and (batch["target_ids"][row, pad] == SPECIAL.pad).all()
    for key in ("loss_mask", "position_ids", "block_position_ids", "part_a"):
        assert not batch[key][row, pad].any(), key
    assert (batch["strategy_ids"][row, pad] == -1).all() and (batch["strategy_ids"][row, :used] >= 0).all()
    return [{k: batch[k][row][seg == s] for k in ("input_ids", "target_ids", "loss_mask", "position_ids",
                                                 "block_position_ids", "part_a", "strategy_ids")}
            for s in range(int(seg[:used].max(initial=-1)) + 1)]


def check_segment(part, block_positions=True):
    """Invariants of one GLM sample; returns (reconstructed text, spans in text coordinates, mask ids)."""
    a = part["part_a"]
    n_a = int(a.sum())
    assert a[:n_a].all() and not a[n_a:].any(), "Part A is a prefix of the segment"
    assert (part["loss_mask"] == ~a).all()
    assert (part["position_ids"][:n_a] == np.arange(n_a)).all() and (part["block_position_ids"][:n_a] == 0).all()
    assert len(np.unique(part["strategy_ids"])) == 1
    a_ids = part["input_ids"][:n_a]
    b_in, b_tgt = part["input_ids"][n_a:], part["target_ids"][n_a:]
    b_pos, b_blk = part["position_ids"][n_a:], part["block_position_ids"][n_a:]
    starts = np.flatnonzero(b_in == SPECIAL.sop)
    assert len(b_in) == 0 or (len(starts) and starts[0] == 0)
    fills = {}
    for s, e in zip(starts, np.r_[starts[1:], len(b_in)]):
        assert b_tgt[e - 1] == SPECIAL.eop and SPECIAL.eop not in b_tgt[s:e - 1]
        assert (b_in[s + 1:e] == b_tgt[s:e - 1]).all(), "teacher forcing shift inside a block"
        assert (b_pos[s:e] == b_pos[s]).all()
        expected_blk = np.arange(1, e - s + 1) if block_positions else np.ones(e - s)
        assert (b_blk[s:e] == expected_blk).all()
        p = int(b_pos[s])
        assert a_ids[p] in MASKS and p not in fills, "each mask token is filled by exactly one block"
        fills[p] = b_tgt[s:e - 1]
    assert set(fills) == {int(i) for i in np.flatnonzero(np.isin(a_ids, list(MASKS)))}
    text, spans, mask_ids = [], [], []
    for p, token in enumerate(a_ids):
        if p in fills:
            spans.append((len(text), len(text) + len(fills[p])))
            mask_ids.append(int(token))
            text.extend(fills[p].tolist())
        else:
            text.append(int(token))
    return np.array(text), spans, mask_ids


def maskable_ranges(docs, to_end=False):
    """[lo, hi) of each document in the concatenated text: never cls, never the last token, except
    for document-level spans (``to_end``), which run to the document's end."""
    ranges, offset = [], 0
    for d in docs:
        ranges.append((offset + int(d[0] == SPECIAL.cls), offset + len(d) - (0 if to_end else 1)))
        offset += len(d)
    return ranges


def check_batch(cfg, samples, batch, names):
    for row, sample in enumerate(samples):
        segments = split_row(batch, row)
        groups = [[d] for d in sample.documents] if cfg.layout == "packed" else [sample.documents]
        assert len(segments) == len(groups), "one segment per document (packed) or per row (legacy)"
        for part, docs in zip(segments, groups):
            text, spans, mask_ids = check_segment(part, cfg.block_positions)
            assert (text == np.concatenate(docs)).all(), "substituting Part B back gives the text"
            name = names[int(part["strategy_ids"][0])]
            check_spans(name, cfg, docs, spans, mask_ids)


def check_spans(name, cfg, docs, spans, mask_ids):
    document_level = name in ("document", "causal")
    ranges = maskable_ranges(docs, to_end=document_level)
    text = np.concatenate(docs)
    per_doc = [[(s, e) for s, e in spans if lo <= s and e <= hi] for lo, hi in ranges]
    assert sum(map(len, per_doc)) == len(spans), "every span lies inside one document's maskable region"
    expected_mask = {"token": SPECIAL.mask, "sentence": SPECIAL.smask}.get(name, SPECIAL.gmask)
    assert set(mask_ids) <= {expected_mask}
    for (lo, hi), doc_spans in zip(ranges, per_doc):
        if name == "token":
            assert all(1 <= e - s <= cfg.max_span_length for s, e in doc_spans)
            assert all(s2 - e1 >= 1 for (_, e1), (s2, _) in zip(doc_spans, doc_spans[1:])), "gap of >= 1 token"
        elif name == "sentence":
            for s, e in doc_spans:
                assert s == lo or text[s - 1] == END, "a sentence starts at its region start or after an end"
                assert e == hi or text[e - 1] == END, "a sentence ends with an end token or at the region end"
                assert END not in text[s:e - 1]
        elif name == "document" and hi - 1 > lo:
            (s, e), = doc_spans
            assert e - s >= np.ceil(cfg.document_min_ratio * (hi - lo) - 1e-9)
        elif name == "causal" and hi - 1 > lo:
            assert doc_spans == [(lo, hi)]


@st.composite
def rows(draw, seq_len=SEQ_LEN, max_raw=100):
    samples = []
    for sample_id in draw(st.lists(st.integers(0, 10 ** 6), min_size=1, max_size=4, unique=True)):
        docs, budget = [], max_raw
        while budget > 0 and (not docs or draw(st.booleans())):
            n = draw(st.integers(1, min(budget, 60)))
            body = draw(st.lists(st.sampled_from([11, 12, 13, 14, END]), min_size=n, max_size=n))
            if draw(st.booleans()):
                body[0] = SPECIAL.cls
            if n > 1 and draw(st.booleans()):
                body[-1] = SPECIAL.eos
            docs.append(np.array(body, dtype=np.int64))
            budget -= n
        samples.append(TextSample(sample_id, docs))
    return samples


STRATEGIES = [("glm", {}), ("glm-10b", {}), ("glm-130b", {}), ("token", {}), ("sentence", {}), ("document", {}),
              ("causal", {}), ("mixture", {"sentence": 1.0, "causal": 2.0, "token": 1.0})]
configs = st.sampled_from(STRATEGIES).flatmap(lambda choice: st.builds(
    ObjectiveConfig, strategy=st.just(choice[0]), mixture=st.just(choice[1]),
    mixture_level=st.sampled_from(["batch", "sample"]), shuffle_order=st.booleans(),
    block_positions=st.booleans(), layout=st.sampled_from(["packed", "legacy"]),
    mask_ratio=st.sampled_from([0.15, 0.3]), document_min_ratio=st.sampled_from([0.25, 0.5, 1.0])))


@settings(deadline=None, max_examples=150)
@given(cfg=configs, samples=rows(), seed=st.integers(0, 2 ** 32))
def test_every_strategy_and_switch_keeps_the_invariants(cfg, samples, seed):
    collator = GLMCollator(cfg, SPECIAL, SEQ_LEN, seed=seed, global_batch_size=2, sentence_end_ids=np.array([END]))
    batch = {k: v.numpy() for k, v in collator(samples).items()}
    assert all(v.shape == (len(samples), SEQ_LEN) for k, v in batch.items() if k != "sample_ids")
    assert batch["sample_ids"].tolist() == [s.sample_id for s in samples]
    check_batch(cfg, samples, batch, collator.strategy_names)
    # Rebuilding any row alone gives the same row (randomness keyed by (seed, sample id)).
    row = len(samples) - 1
    alone = collator.build([samples[row]])
    assert all((alone[k][0] == batch[k][row]).all() for k in alone)


@settings(deadline=None, max_examples=40)
@given(samples=rows(), layout=st.sampled_from(["packed", "legacy"]))
def test_attention_isolates_segments(samples, layout):
    batch = GLMCollator(ObjectiveConfig(layout=layout), SPECIAL, SEQ_LEN, 0, 4).build(samples)
    mask = attention_matrix(batch["segment_ids"], batch["part_a"])
    seg, a = batch["segment_ids"], batch["part_a"]
    for row in range(len(samples)):
        q, k = np.nonzero(mask[row])
        same = seg[row, q] == seg[row, k]
        assert same.all(), "no attention across segments (packed documents are isolated)"
        real = seg[row, q] >= 0
        assert (a[row, k[real]] | (k[real] <= q[real])).all()
        assert (q[~real] == k[~real]).all(), "padding attends only to itself"
        for s in np.unique(seg[row][seg[row] >= 0]):
            idx = np.flatnonzero(seg[row] == s)
            block = mask[row][np.ix_(idx, idx)]
            n_a = int(a[row, idx].sum())
            assert block[:, :n_a].all(), "everyone in a segment sees its Part A"
            assert not block[:n_a, n_a:].any(), "Part A never sees Part B"


@settings(deadline=None, max_examples=60)
@given(data=st.data(), n=st.integers(1, 40))
def test_build_sample_properties(data, n):
    tokens = np.array(data.draw(st.lists(st.integers(8, 50), min_size=n, max_size=n)))
    cuts = sorted(data.draw(st.sets(st.integers(0, n), max_size=8)))
    spans = [(s, e) for s, e in zip(cuts[::2], cuts[1::2])]
    order = data.draw(st.permutations(range(len(spans))))
    out = build_sample(tokens, spans, order, SPECIAL.mask, SPECIAL.sop, SPECIAL.eop)
    k, covered = len(spans), sum(e - s for s, e in spans)
    assert len(out.input_ids) == n + 2 * k and out.prefix_len == n - covered + k
    assert out.loss_mask.sum() == covered + k
    part = {"input_ids": out.input_ids, "target_ids": out.target_ids, "loss_mask": out.loss_mask.astype(bool),
            "position_ids": out.position_ids, "block_position_ids": out.block_position_ids,
            "part_a": np.arange(len(out.input_ids)) < out.prefix_len, "strategy_ids": np.zeros(n + 2 * k)}
    text, found, _ = check_segment(part)
    assert (text == tokens).all() and found == spans
    # Part-B blocks follow `order`.
    block_starts = np.flatnonzero(out.input_ids[out.prefix_len:] == SPECIAL.sop) + out.prefix_len
    mask_index = [int(np.flatnonzero(out.input_ids[:out.prefix_len] == SPECIAL.mask)[j]) for j in order]
    assert out.position_ids[block_starts].tolist() == mask_index
