"""Property tests (reference §9.2 adapted to our packed layout) for every strategy and layout switch:
substituting Part B (and the inline predictions) back into Part A gives the text; positions and block
positions follow contract 1; each strategy's spans keep its own rules; eop is trained only where a
document really ends; segments are isolated; a row is the same alone or in any batch."""
import numpy as np
from hypothesis import given, settings, strategies as st

from pretrain.config import from_dict
from pretrain.objectives import (GLMCollator, ObjectiveConfig, TextSample, TokenTables, attention_matrix,
                                 build_sample)
from pretrain.objectives.strategies.base import N_SENTINELS, SENTINELS
from pretrain.objectives.strategies.fim import ROLES as FIM_ROLES
from pretrain.objectives.strategies.ul2 import MODES
from pretrain.tokens import SpecialTokens

EXTRA = {role: 200 + i for i, role in enumerate([*SENTINELS, *FIM_ROLES, *MODES])}
SPECIAL = SpecialTokens(extra=EXTRA)
SENTINEL_IDS = [EXTRA[role] for role in SENTINELS]
PRE, MID, SUF = (EXTRA[role] for role in FIM_ROLES)
NLU, NLG, S2S = (EXTRA[role] for role in MODES)
VOCAB = 400
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
    """Invariants of one laid-out segment. Returns (text, pieces, replaced, markers): the reconstructed
    text; per Part-B piece, in Part-B order, its span in text coordinates, mask id, opener, whether it
    closes its block and whether that eop is trained; per inline prediction (text position, the token
    that stood there); per inserted marker (text position, token)."""
    a = part["part_a"]
    n_a = int(a.sum())
    assert a[:n_a].all() and not a[n_a:].any(), "Part A is a prefix of the segment"
    assert (part["position_ids"][:n_a] == np.arange(n_a)).all() and (part["block_position_ids"][:n_a] == 0).all()
    assert len(np.unique(part["strategy_ids"])) == 1
    a_ids, a_tgt, a_loss = part["input_ids"][:n_a], part["target_ids"][:n_a], part["loss_mask"][:n_a]
    assert (a_tgt[a_loss == 0] == a_ids[a_loss == 0]).all(), "untrained Part-A targets are placeholders"
    b_in, b_tgt, b_loss = part["input_ids"][n_a:], part["target_ids"][n_a:], part["loss_mask"][n_a:]
    b_pos, b_blk = part["position_ids"][n_a:], part["block_position_ids"][n_a:]
    starts = np.flatnonzero(np.r_[True, np.diff(b_pos) != 0]) if len(b_in) else np.zeros(0, dtype=int)
    pieces, fills = [], {}
    for s, e in zip(starts, np.r_[starts[1:], len(b_in)]):
        p = int(b_pos[s])     # one piece per mask token: its Part-B tokens share the mask's position
        assert p not in fills
        assert (b_in[s + 1:e] == b_tgt[s:e - 1]).all(), "teacher forcing shift inside a piece"
        assert (b_blk[s:e] == (np.arange(1, e - s + 1) if block_positions else 1)).all()
        assert (b_loss[s:e - 1] == 1).all(), "every Part-B target but a closing eop is trained"
        closes = e == len(b_in) or b_tgt[e - 1] != b_in[e]
        assert b_tgt[e - 1] == (SPECIAL.eop if closes else b_in[e]) and (closes or b_loss[e - 1] == 1)
        assert SPECIAL.eop not in b_tgt[s:e - 1] and SPECIAL.sop not in b_in[s + 1:e]
        fills[p] = b_in[s + 1:e]
        pieces.append({"position": p, "mask": int(a_ids[p]), "opener": int(b_in[s]), "closes": bool(closes),
                       "eop_loss": bool(b_loss[e - 1]) if closes else None})
    text, at, replaced, markers = [], {}, [], []
    for p, token in enumerate(a_ids):
        if p in fills:
            at[p] = (len(text), len(text) + len(fills[p]))
            text.extend(fills[p].tolist())
        elif a_loss[p]:
            replaced.append((len(text), int(token)))
            text.append(int(a_tgt[p]))
        elif token in (NLU, NLG, S2S):
            markers.append((len(text), int(token)))
        else:
            text.append(int(token))
    for piece in pieces:
        piece["span"] = at[piece["position"]]
    return np.array(text), pieces, replaced, markers


def maskable_range(doc):
    """[lo, hi): never cls, never the last token (token-level spans); document-level ones run to len."""
    return int(doc[0] == SPECIAL.cls), len(doc) - 1


def check_batch(cfg, samples, batch, names, dropped):
    for row, sample in enumerate(samples):
        segments = split_row(batch, row)
        n_docs = len(sample.documents)
        groups = [[i] for i in range(n_docs)] if cfg.layout == "packed" else [list(range(n_docs))]
        assert len(segments) == len(groups), "one segment per document (packed) or per row (legacy)"
        for part, group in zip(segments, groups):
            docs = [sample.documents[i] for i in group]
            text, pieces, replaced, markers = check_segment(part, cfg.block_positions)
            assert (text == np.concatenate(docs)).all(), "substituting Part B back gives the text"
            check_eop(docs, pieces)
            name = names[int(part["strategy_ids"][0])]
            if dropped[row]:
                continue  # spans lost to fit the row (or moved to whole characters): the layout holds
            first = 0
            for index, doc in zip(group, docs):  # each document by its own rules, in its own coordinates
                inside = lambda pos: first <= pos < first + len(doc)
                local = [dict(p, span=(p["span"][0] - first, p["span"][1] - first)) for p in pieces
                         if inside(p["span"][0])]
                prompt = (sample.prompt_lengths or [0] * n_docs)[index]
                if prompt:
                    assert [(p["span"], p["mask"], p["opener"]) for p in local] == [
                        ((prompt, len(doc)), SPECIAL.gmask, SPECIAL.sop)], "an instruction's response is its span"
                else:
                    own = name if name != "instruction" else row_strategy_name(batch, row, names)
                    check_document(own, cfg, doc, local, [(p - first, t) for p, t in replaced if inside(p)],
                                   [(p - first, t) for p, t in markers if inside(p)])
                first += len(doc)


def row_strategy_name(batch, row, names):
    """A legacy row holding an instruction is labelled "instruction"; its plain documents use a strategy
    that only a one-strategy config pins down."""
    return names[0] if len(names) == 2 else None


def check_eop(docs, pieces):
    """Contract 2: a closing eop is trained unless its span runs to the end of a cut piece."""
    text = np.concatenate(docs)
    ends = set(np.cumsum([len(d) for d in docs]).tolist())
    for piece in pieces:
        if piece["closes"]:
            s, e = piece["span"]
            assert piece["eop_loss"] == (not (e in ends and e > s and text[e - 1] != SPECIAL.eos))


def check_document(name, cfg, doc, pieces, replaced, markers):
    """The spans of one document (coordinates inside it) follow its strategy's rules."""
    if name is None:
        return
    lo, hi = maskable_range(doc)
    spans = [p["span"] for p in pieces]
    glm_form = all(p["opener"] == SPECIAL.sop and p["closes"] for p in pieces)
    if name != "ul2":
        assert not markers
    if name != "mlm":
        assert not replaced
    if name in ("token", "sentence", "t5"):
        assert all(lo <= s < e <= hi for s, e in spans), "spans stay inside the maskable region"
        ordered = sorted(spans)
        gap = 0 if name == "sentence" else 1
        assert all(s2 - e1 >= gap for (_, e1), (s2, _) in zip(ordered, ordered[1:]))
    if name == "token":
        in_order = sorted(pieces, key=lambda p: p["span"])
        expected = [SENTINEL_IDS[k % N_SENTINELS] if cfg.token.sentinels else SPECIAL.mask for k in range(len(pieces))]
        assert glm_form and [p["mask"] for p in in_order] == expected
        assert all(1 <= e - s <= cfg.token.max_span_length for s, e in spans)
    elif name == "sentence":
        assert glm_form and {p["mask"] for p in pieces} <= {SPECIAL.smask}
        for s, e in spans:
            assert s == lo or doc[s - 1] == END, "a sentence starts at its region start or after an end"
            assert e == hi or doc[e - 1] == END, "a sentence ends with an end token or at the region end"
            assert END not in doc[s:e - 1]
        if hi > lo and END in doc[lo:hi - 1]:
            assert sum(e - s for s, e in spans) < hi - lo, "a document of several sentences keeps one"
    elif name in ("document", "causal", "prefix_lm"):
        assert glm_form and {p["mask"] for p in pieces} <= {SPECIAL.gmask} and len(spans) == int(hi > lo)
        if spans:
            (s, e), = spans
            assert lo <= s < e <= len(doc)
            if name == "causal":
                assert (s, e) == (lo, len(doc))
            elif name == "prefix_lm":
                assert e == len(doc)
            else:
                assert e - s >= np.ceil(cfg.document.min_ratio * (len(doc) - lo) - 1e-9)
    elif name == "t5":
        check_t5(pieces)
    elif name == "mlm":
        assert not pieces and all(lo <= p < hi for p, _ in replaced)
        ordinary = set(range(VOCAB)) - set(SPECIAL.roles().values())
        assert all(t == SPECIAL.mask or t == doc[p] or t in ordinary for p, t in replaced)
    elif name == "fim":
        check_fim(pieces, lo, len(doc))
    elif name == "ul2":
        (position, mode), = markers
        assert position == 0, "the paradigm token comes before the document"
        if mode == S2S:
            assert glm_form and [e for _, e in spans] == [len(doc)] * int(hi > lo)
        else:
            assert mode in (NLU, NLG) and all(lo <= s < e <= hi for s, e in spans)
            check_t5(pieces)
    else:
        raise AssertionError(f"no rule for strategy {name}")


def check_t5(pieces):
    """Sentinel k stands for span k in Part A and opens it in Part B; the spans come in order, one eop
    closes them."""
    assert [p["span"] for p in pieces] == sorted(p["span"] for p in pieces), "T5 spans stay in order"
    assert all(p["mask"] == p["opener"] == SENTINEL_IDS[k % N_SENTINELS] for k, p in enumerate(pieces))
    assert [p["closes"] for p in pieces] == [False] * (len(pieces) - 1) + [True] * bool(pieces)


def check_fim(pieces, lo, end):
    """Plain: one [gMASK] span [lo, end). Reordered: <PRE> x <SUF> suffix <MID> y where x, y, suffix tile
    [lo, end) as [lo, m), [m, j), [j, end) (PSM: x = prefix; SPM: x empty, y = prefix + middle)."""
    if not pieces:
        return
    if pieces[0]["opener"] == SPECIAL.sop:
        assert [(p["span"], p["mask"], p["closes"]) for p in pieces] == [((lo, end), SPECIAL.gmask, True)]
        return
    assert [p["opener"] for p in pieces] == [PRE, SUF, MID] and all(p["mask"] == p["opener"] for p in pieces)
    assert [p["closes"] for p in pieces] == [False, False, True]
    (x0, x1), (s0, s1), (y0, y1) = (p["span"] for p in pieces)
    assert x0 == lo and x1 == y0 and y1 == s0 and s1 == end and s0 < end


@st.composite
def rows(draw, max_raw=100, prompts=False):
    samples = []
    for sample_id in draw(st.lists(st.integers(0, 10 ** 6), min_size=1, max_size=4, unique=True)):
        docs, budget, prompt_lengths = [], max_raw, []
        while budget > 0 and (not docs or draw(st.booleans())):
            n = draw(st.integers(1, min(budget, 60)))
            body = draw(st.lists(st.sampled_from([11, 12, 13, 14, END]), min_size=n, max_size=n))
            if draw(st.booleans()):
                body[0] = SPECIAL.cls
            if n > 1 and draw(st.booleans()):
                body[-1] = SPECIAL.eos
            docs.append(np.array(body, dtype=np.int64))
            prompt_lengths.append(draw(st.integers(1, n - 1)) if prompts and n > 1 and draw(st.booleans()) else 0)
            budget -= n
        samples.append(TextSample(sample_id, docs, prompt_lengths=prompt_lengths if prompts else None))
    return samples


NAMES = [("glm", {}), ("glm-10b", {}), ("glm-130b", {}), ("token", {}), ("sentence", {}), ("document", {}),
         ("causal", {}), ("t5", {}), ("ul2", {}), ("fim", {}), ("prefix_lm", {}), ("mlm", {}),
         ("mixture", {"sentence": 1.0, "causal": 2.0, "token": 1.0}),
         ("mixture", {"t5": 1.0, "mlm": 1.0, "fim": 1.0, "ul2": 1.0, "document": 1.0})]


@st.composite
def configs(draw):
    strategy, mixture = draw(st.sampled_from(NAMES))
    return from_dict(ObjectiveConfig, {
        "strategy": strategy, "mixture": mixture, "mixture_level": draw(st.sampled_from(["batch", "sample"])),
        "shuffle_order": draw(st.booleans()), "block_positions": draw(st.booleans()),
        "layout": draw(st.sampled_from(["packed", "legacy"])),
        "token": {"mask_ratio": draw(st.sampled_from([0.15, 0.3])), "sentinels": draw(st.booleans())},
        "document": {"min_ratio": draw(st.sampled_from([0.25, 0.5, 1.0]))},
        "fim": {"fim_rate": draw(st.sampled_from([0.5, 1.0])), "spm_rate": draw(st.sampled_from([0.0, 0.5, 1.0]))},
    }, "objective")


def collate_and_check(cfg, samples, seed, tables=None):
    """Collate and check the layout; each strategy's own rules too unless ``tables`` moved its spans."""
    collator = GLMCollator(cfg, SPECIAL, SEQ_LEN, seed=seed, global_batch_size=2, sentence_end_ids=np.array([END]),
                           vocab_size=VOCAB, token_tables=tables)
    dropped = collator.plan(samples).dropped | (tables is not None)
    batch = {k: v.numpy() for k, v in collator(samples).items()}
    assert all(v.shape == (len(samples), SEQ_LEN) for k, v in batch.items() if k != "sample_ids")
    assert batch["sample_ids"].tolist() == [s.sample_id for s in samples]
    check_batch(cfg, samples, batch, collator.strategy_names, dropped)
    # Rebuilding any row alone gives the same row (randomness keyed by (seed, sample id)).
    row = len(samples) - 1
    alone = collator.build([samples[row]])
    assert all((alone[k][0] == batch[k][row]).all() for k in alone)
    return batch, collator


@settings(deadline=None, max_examples=250)
@given(cfg=configs(), samples=rows(), seed=st.integers(0, 2 ** 32))
def test_every_strategy_and_switch_keeps_the_invariants(cfg, samples, seed):
    collate_and_check(cfg, samples, seed)


@settings(deadline=None, max_examples=100)
@given(cfg=configs(), samples=rows(), seed=st.integers(0, 2 ** 32), data=st.data())
def test_spans_keep_whole_characters(cfg, samples, seed, data):
    """With token tables where some text tokens continue a character, every span begins and ends
    between whole characters, except where the text itself offers none: a document-level span's end,
    a split at a piece that begins inside a character (nothing clean to choose)."""
    continues = data.draw(st.sets(st.sampled_from([11, 12, 13, 14]), max_size=3))
    char_start = ~np.isin(np.arange(VOCAB), list(continues))
    tables = TokenTables(char_start, char_start.copy(), char_start.copy())
    batch, _ = collate_and_check(cfg, samples, seed, tables)
    for row, sample in enumerate(samples):
        segments = split_row(batch, row)
        groups = [[d] for d in sample.documents] if cfg.layout == "packed" else [sample.documents]
        for part, docs in zip(segments, groups):
            text, pieces, replaced, _ = check_segment(part, cfg.block_positions)
            clean = np.r_[char_start[text], True]
            ends = np.cumsum([len(d) for d in docs])
            starts = ends - [len(d) for d in docs]
            lows = {int(s + (d[0] == SPECIAL.cls)) for s, d in zip(starts, docs)}
            inline = sorted(p for p, _ in replaced)   # MLM: runs of replaced tokens are whole characters
            runs = [(p, p + 1) for p in inline if p - 1 not in inline]
            runs = [(s, next(q for q in range(s, len(text) + 1) if q not in inline)) for s, _ in runs]
            for s, e in [p["span"] for p in pieces] + runs:
                if e > s:
                    assert clean[s] or s in lows, "a span begins at a whole character"
                    assert clean[e] or e in ends, "a span ends at a whole character"


@settings(deadline=None, max_examples=60)
@given(cfg=configs(), samples=rows(prompts=True), seed=st.integers(0, 2 ** 32))
def test_instruction_documents_train_only_their_responses_whatever_the_strategy(cfg, samples, seed):
    batch, collator = collate_and_check(cfg, samples, seed)
    instruction = collator.strategy_names.index("instruction")
    has = [any(s.prompt_lengths) for s in samples]
    labelled = (batch["strategy_ids"] == instruction).any(axis=1)
    assert labelled.tolist() == has, "rows with an instruction have instruction segments"


@settings(deadline=None, max_examples=40)
@given(samples=rows(prompts=True), layout=st.sampled_from(["packed", "legacy"]), name=st.sampled_from(
    ["glm", "t5", "ul2", "fim", "mlm", "prefix_lm"]))
def test_attention_isolates_segments(samples, layout, name):
    collator = GLMCollator(ObjectiveConfig(strategy=name, layout=layout), SPECIAL, SEQ_LEN, 0, 4, vocab_size=VOCAB)
    batch = collator.build(samples)
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
    part = {"input_ids": out.input_ids, "target_ids": out.target_ids, "loss_mask": out.loss_mask,
            "position_ids": out.position_ids, "block_position_ids": out.block_position_ids,
            "part_a": np.arange(len(out.input_ids)) < out.prefix_len, "strategy_ids": np.zeros(n + 2 * k)}
    text, pieces, _, _ = check_segment(part)
    assert (text == tokens).all() and sorted(p["span"] for p in pieces) == spans
    # Part-B blocks follow `order`.
    assert [p["span"] for p in pieces] == [spans[j] for j in order]
