"""Instruction data: records -> (prompt, response) pairs, stored with prompt lengths, and an instruction entry
of the mixture whose samples are whole records with ``TextSample.prompt_lengths``, laid out by the collator
as prompt + [gMASK] (Part A) and the response as the Part-B block, loss on the response only, packed with
pretraining rows in the same batches, each record its own segment (the isolation rules of packed text)."""
import json
import pickle

import numpy as np
import pytest

from pretrain.data import DataConfig, build_loader, glm_collator, open_data, prepare_embedded_corpus
from pretrain.data.instruct import InstructionFormat, record_pairs
from pretrain.data.instruct_windows import SPAN_TOKENS, InstructionWindows
from pretrain.data.preprocess import preprocess
from pretrain.data.sources import read_sources
from pretrain.data.store import open_store, read_manifest
from pretrain.objectives import ObjectiveConfig, raw_length
from pretrain.objectives.stats import objective_stats
from pretrain.tokens import SpecialTokens

SEQ_LEN, G, SEED = 128, 8, 5
PAIRS = [{"prompt": f"Question {i}: what is {i} plus {i}?", "response": f"It is {2 * i}."} for i in range(14)]
CHATS = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Hi {i}"},
                       {"role": "assistant", "content": f"Hello {i}!"}, {"role": "user", "content": "Bye"},
                       {"role": "assistant", "content": "Goodbye."}]} for i in range(4)]
LONG = {"prompt": "Tell a long story.", "response": "Once upon a time " * 60}
EMPTY = {"prompt": "Say nothing.", "response": ""}
TEXTS = {lang: [f"{lang} document {i}: " + "some words here " * (1 + i % 5) for i in range(12)]
         for lang in ("en", "de", "fr")}


def chat_pair(i, turn):
    head = f"<|system|>\nBe brief.<|user|>\nHi {i}<|assistant|>\n"
    return (head, f"Hello {i}!") if turn == 0 else (head + f"Hello {i}!<|user|>\nBye<|assistant|>\n", "Goodbye.")


EXPECTED = {(r["prompt"], r["response"]) for r in PAIRS} | {chat_pair(i, t) for i in range(4) for t in (0, 1)}


def test_records_map_to_prompt_response_pairs():
    fmt = InstructionFormat()
    assert record_pairs(PAIRS[3], fmt, "x") == [(PAIRS[3]["prompt"], PAIRS[3]["response"])]
    assert record_pairs(CHATS[1], fmt, "x") == [chat_pair(1, 0), chat_pair(1, 1)]  # one per assistant turn
    assert record_pairs(CHATS[1], InstructionFormat(turns="last"), "x") == [chat_pair(1, 1)]
    alpaca = InstructionFormat(prompt_fields=("instruction", "input"), response_field="output")
    assert record_pairs({"instruction": "Add.", "input": "1 2", "output": "3"}, alpaca, "x") == [("Add.\n\n1 2", "3")]
    assert record_pairs({"instruction": "Hi.", "input": "", "output": "Hello."}, alpaca, "x") == [("Hi.", "Hello.")]
    assert record_pairs(EMPTY, fmt, "x") == []
    assert record_pairs({"messages": [{"role": "user", "content": "?"}]}, fmt, "x") == []
    with pytest.raises(ValueError, match=r"data.jsonl row 7: an instruction record needs 'messages' \(chat\) or "
                                         r"\['prompt'\] \+ 'response' fields, found \['question'\]"):
        record_pairs({"question": "?"}, fmt, "data.jsonl row 7")
    with pytest.raises(ValueError, match=r"chat turn 'hi' is not a \{role, content\} object"):
        record_pairs({"messages": ["hi"]}, fmt, "x")
    with pytest.raises(ValueError, match=r"turns='all' must be one of"):
        InstructionFormat(turns="all").validate()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three languages and an instruction source ("sft": pairs, chats, one record too long for a window,
    one with an empty response), preprocessed with the embedded tokenizer."""
    folder = tmp_path_factory.mktemp("instruct")
    tokenizer = prepare_embedded_corpus(tmp_path_factory.getbasetemp() / "data-cache") / "tokenizer.json"
    for lang, docs in TEXTS.items():
        (folder / f"{lang}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    records = PAIRS[:3] + CHATS[:2] + [LONG, EMPTY] + PAIRS[3:] + CHATS[2:]
    (folder / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plan = read_sources([f"{lang}={folder / lang}.jsonl" for lang in TEXTS], instruct=[f"sft={folder / 'sft.jsonl'}"])
    return preprocess(plan, tokenizer, folder / "out", shard_documents=8, progress=False)


def decode(source, tokens):
    return source.tokenizer.decode([int(t) for t in tokens], skip_special_tokens=False)


def test_instruction_records_are_stored_with_their_prompt_lengths(data):
    info = read_manifest(data)["languages"]["sft"]
    assert info["kind"] == "instruction" and info["n_docs"] == len(EXPECTED) + 1  # + the long one
    assert info["skipped_empty_documents"] == 1 and all("prompt_sha256" in s for s in info["shards"])
    source = open_data(DataConfig(path=str(data)))
    store = source.store.languages["sft"]
    pairs = {(decode(source, store.document(d)[:k]), decode(source, store.document(d)[k:]))
             for d, k in enumerate(store.prompt_lengths)}
    assert pairs == EXPECTED | {(LONG["prompt"], LONG["response"])}
    assert source.store.languages["en"].prompt_lengths is None


def loader(data, collator=lambda samples: samples, **changes):
    cfg = DataConfig(path=str(data), cache_dir=str(data / "cache"), num_workers=0, eval_documents=2,
                     weights={"sft": 0.25}, **changes)
    return build_loader(cfg, collator, seq_len=SEQ_LEN, raw_len=raw_length(ObjectiveConfig(), SEQ_LEN),
                        global_batch_size=G, micro_batch_size=G, dp_rank=0, dp_size=1, seed=SEED)


def test_an_instruction_entry_yields_whole_records_once_per_epoch(data):
    train = loader(data)
    assert train.languages == ["de", "en", "fr", "sft"] and train.mixture_weights["sft"] == 0.25
    assert train.dataset.index.used_before(8192)["sft"] == 2048  # its own exact share of every blend block
    windows, budget = train.dataset.windows[3], raw_length(ObjectiveConfig(), SEQ_LEN)
    assert isinstance(windows, InstructionWindows) and windows.too_long == 1  # LONG is skipped, and counted
    source = open_data(DataConfig(path=str(data)))

    def records(epoch):
        seen = []
        for k in range(epoch * windows.samples_per_epoch, (epoch + 1) * windows.samples_per_epoch):
            pieces, prompts = windows.window(k), windows.prompt_lengths(k)
            assert sum(len(p) + SPAN_TOKENS for p in pieces) <= budget  # fits, with its [gMASK] spans
            for piece, k in zip(pieces, prompts):
                assert piece[0] == source.special.cls and piece[-1] == source.special.eos  # never cut
                seen.append((decode(source, piece[1:k]), decode(source, piece[k:-1])))
        return seen
    first, second = records(0), records(1)
    assert len(first) == len(set(first)) == len(EXPECTED) - 2 and set(first) <= EXPECTED  # 2 held out
    assert sorted(second) == sorted(first) and second != first  # every record once per epoch, reordered
    for g in range(4 * G):
        sample = train.dataset[g]
        assert (sample.prompt_lengths is not None) == (sample.language == "sft")


def test_instruction_windows_are_deterministic_and_refuse_records_that_never_fit(data):
    windows = loader(data).dataset.windows[3]
    copy = pickle.loads(pickle.dumps(windows))  # what a DataLoader worker gets
    rebuilt = loader(data).dataset.windows[3]  # what a resumed run builds: samples depend on ids alone
    for k in range(3 * windows.samples_per_epoch):
        for other in (copy, rebuilt):
            assert other.prompt_lengths(k) == windows.prompt_lengths(k)
            assert all(np.array_equal(a, b) for a, b in zip(other.window(k), windows.window(k)))
    store = open_store(data).languages["sft"]
    with pytest.raises(ValueError, match=r"instruction entry 'sft': all 2 records are longer than a window of "
                                         r"raw_len=12 tokens"):
        InstructionWindows(store, np.arange(2), 12, SEED, SpecialTokens(), shuffle=True)


def test_collated_instruction_rows_reconstruct_records_with_loss_only_on_responses(data):
    train = loader(data)
    source = open_data(DataConfig(path=str(data)))
    collator = glm_collator(source, ObjectiveConfig(strategy="glm-10b"), seq_len=SEQ_LEN, seed=SEED,
                            global_batch_size=G)
    special, instruction = source.special, collator.strategy_names.index("instruction")
    samples = [train.dataset[g] for g in range(4 * G)]
    batch = {k: v.numpy() for k, v in collator(samples).items()}
    instruction_rows = 0
    for row, sample in enumerate(samples):
        strategies = batch["strategy_ids"][row]
        if sample.prompt_lengths is None:  # pretraining rows keep the row's own strategy
            assert not (strategies == instruction).any()
            continue
        instruction_rows += 1
        segments = batch["segment_ids"][row]
        ids, targets = batch["input_ids"][row], batch["target_ids"][row]
        part_a, loss = batch["part_a"][row], batch["loss_mask"][row] > 0
        order = [s for s in dict.fromkeys(segments.tolist()) if s >= 0]  # segments in document order
        assert len(order) == len(sample.documents)
        for segment, piece, k in zip(order, sample.documents, sample.prompt_lengths):
            here = segments == segment
            assert (strategies[here] == instruction).all()  # its own strategy in per-strategy losses
            assert np.array_equal(ids[here & part_a], np.append(piece[:k], special.gmask))  # prompt + [gMASK]
            assert not (loss & here & part_a).any()
            assert np.array_equal(targets[here & loss], np.append(piece[k:], special.eop))  # the response, all of it
            assert np.array_equal(ids[here & ~part_a], np.append(special.sop, piece[k:]))
        assert loss.sum() == sum(len(p) - k + 1 for p, k in zip(sample.documents, sample.prompt_lengths))
    assert instruction_rows > 0
    groups = {(g["strategy"], g["language"]): g["rows"] for g in objective_stats(collator, samples)["groups"]}
    assert groups[("instruction", "sft")] == instruction_rows  # inspect --stats counts them as instruction rows
    assert not any(strategy not in ("instruction", "all") and language == "sft" for strategy, language in groups)
    # the trainer's per-source losses (source_loss/<name>): rows of the instruction entry are its source
    real = loader(data, collator)
    batch = next(iter(real))
    from_sft = batch["source_ids"] == real.languages.index("sft")
    used = batch["segment_ids"] >= 0
    assert from_sft.any() and (batch["strategy_ids"][from_sft][used[from_sft]] == instruction).all()
    assert not (batch["strategy_ids"][~from_sft] == instruction).any()


def test_a_damaged_prompt_file_is_refused_naming_it(data, tmp_path):
    import shutil
    from pretrain.data.store import CorruptDataError, prompt_file
    copy = shutil.copytree(data, tmp_path / "copy", ignore=shutil.ignore_patterns("cache"))
    path = prompt_file(copy, "sft", read_manifest(copy)["languages"]["sft"]["shards"][0]["name"])
    prompts = np.load(path)
    prompts[0] = 10_000  # longer than its document
    np.save(path, prompts)
    with pytest.raises(CorruptDataError, match=r"sft/shard-00000-00000.prompt.npy does not match its sha256"):
        open_store(copy)
    with pytest.raises(CorruptDataError, match=r"prompt.npy does not match its sha256"):
        open_store(copy, verify_checksums=False)  # hashed at every start, like the .idx (4 bytes a document)
    path.unlink()
    with pytest.raises(CorruptDataError, match=r"prompt.npy listed in .*manifest.json is missing"):
        open_store(copy, verify_checksums=False)
