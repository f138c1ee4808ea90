"""Existing tokenizers: a transformers tokenizer directory is read through its fast backend (what cannot be
is refused in one line), the tokenizer fingerprint ignores JSON layout, shards record it, a run's
data.tokenizer or a resumed run with another tokenizer is named as such; GLM-4-like specials at high ids
(above 150,000, and above uint16 with uint16 shards) go through preprocess and the collator; the model
vocabulary is padded to model.vocab_multiple."""
import dataclasses
import json

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from hf_assets import GLM4_SPECIALS, corpus_lines, save_hf_tokenizer, train_bpe
from pretrain.__main__ import main as cli
from pretrain.config import ConfigError
from pretrain.data import DataConfig, ResumeMismatchError, build_loader, open_data
from pretrain.data.loader import glm_collator
from pretrain.data.store import read_manifest
from pretrain.data.tokenizer import load_tokenizer, save_tokenizer, tokenizer_fingerprint
from pretrain.model.presets import ModelSection
from pretrain.objectives import ObjectiveConfig, raw_length

pytest.importorskip("transformers")
TEXTS = corpus_lines(120)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    (root / "en.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    save_hf_tokenizer(train_bpe(), root / "hf")
    return root


def preprocess(root, tokenizer, name):
    assert cli(["preprocess", "--input", f"en={root / 'en.jsonl'}", "--tokenizer", str(tokenizer),
                "--output", str(root / name)]) == 0
    return root / name


def test_a_tokenizer_directory_is_its_tokenizer_json(workspace, tmp_path):
    from_dir, from_file = load_tokenizer(workspace / "hf"), load_tokenizer(workspace / "hf" / "tokenizer.json")
    assert tokenizer_fingerprint(from_dir) == tokenizer_fingerprint(from_file)
    assert [e.ids for e in from_dir.encode_batch(TEXTS[:20])] == [e.ids for e in from_file.encode_batch(TEXTS[:20])]
    assert from_dir.encode("a [MASK] b", add_special_tokens=False).ids == \
        from_file.encode("a [MASK] b", add_special_tokens=False).ids  # literal specials stay text in both
    compact = tmp_path / "compact.json"
    compact.write_text(from_file.to_str(pretty=False))
    assert tokenizer_fingerprint(load_tokenizer(compact)) == tokenizer_fingerprint(from_file)  # layout-free
    from_file.add_special_tokens([AddedToken("<extra>", special=True)])
    assert tokenizer_fingerprint(from_file) != tokenizer_fingerprint(from_dir)


@pytest.mark.parametrize("case, message", [
    ("empty", "transformers cannot load a tokenizer from"),
    ("remote_code", "transformers cannot load a tokenizer from"),
    ("slow", "holds a slow (Python) SlowTokenizer without a tokenizers backend"),
])
def test_a_tokenizer_directory_that_cannot_be_read_is_refused_in_one_line(tmp_path, monkeypatch, case, message):
    directory = tmp_path / case
    directory.mkdir()
    if case == "remote_code":
        auto_map = {"AutoTokenizer": ["tokenization.CustomTokenizer", None]}
        (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CustomTokenizer",
                                                                     "auto_map": auto_map}))
        (directory / "tokenization.py").write_text("raise SystemExit('remote code ran')\n")
    if case == "slow":  # a tokenizer class without a tokenizers backend, as a Python-only tokenizer is
        import transformers
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                            lambda *args, **kwargs: type("SlowTokenizer", (), {})())
    with pytest.raises(ValueError) as err:
        load_tokenizer(directory)
    assert message in str(err.value) and str(directory) in str(err.value) and "\n" not in str(err.value)


def test_preprocess_with_a_directory_records_the_fingerprint_and_data_tokenizer_must_match(workspace, tmp_path):
    data = preprocess(workspace, workspace / "hf", "data_hf")
    manifest = read_manifest(data)
    assert manifest["tokenizer_fingerprint"] == tokenizer_fingerprint(load_tokenizer(workspace / "hf"))
    cfg = DataConfig(path=str(data), tokenizer=str(workspace / "hf"), num_workers=0, cache_dir=str(tmp_path))
    assert open_data(cfg).tokenizer.token_to_id("[gMASK]") == load_tokenizer(workspace / "hf").token_to_id("[gMASK]")
    other = tmp_path / "other.json"
    save_tokenizer(train_bpe(vocab_size=350), other)
    with pytest.raises(ValueError) as err:
        open_data(dataclasses.replace(cfg, tokenizer=str(other)))
    message = str(err.value)
    assert f"data.tokenizer={other}" in message and str(data / "tokenizer.json") in message
    assert manifest["tokenizer_fingerprint"] in message and "preprocess the data with --tokenizer" in message
    assert cli(["inspect", "--data", str(data), "--tokenizer", str(workspace / "hf"), "--seq-len", "64"]) == 0


def test_resuming_on_data_of_another_tokenizer_names_the_tokenizer(workspace, tmp_path):
    other = tmp_path / "other.json"
    save_tokenizer(train_bpe(vocab_size=350), other)
    objective = ObjectiveConfig(strategy="glm-10b")

    def loader(path):
        cfg = DataConfig(path=str(path), num_workers=0, cache_dir=str(tmp_path), eval_documents=1)
        return build_loader(cfg, lambda samples: samples, seq_len=64, raw_len=raw_length(objective, 64),
                            global_batch_size=2, micro_batch_size=2, dp_rank=0, dp_size=1, seed=0)

    state = loader(preprocess(workspace, workspace / "hf", "data_a")).state_dict()
    with pytest.raises(ResumeMismatchError, match="tokenizer_sha256=.*the tokenizer changed since the checkpoint"):
        loader(preprocess(workspace, other, "data_b")).load_state_dict(state)


def word_level(regular: int, specials: list[str]) -> Tokenizer:
    """A word-level tokenizer with ``regular`` words, then ``specials`` (ids ``regular`` and up)."""
    tokenizer = Tokenizer(models.WordLevel({**{f"w{i}": i for i in range(regular - 1)}, "[UNK]": regular - 1},
                                           unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in specials])
    return tokenizer


@pytest.mark.parametrize("regular, specials, dtype", [
    (151_329, GLM4_SPECIALS, "uint32"),  # GLM-4's layout: its specials from 151,329; pad and cls appended
    (65_533, GLM4_SPECIALS[:2], "uint16"),  # the vocabulary fits uint16; the six appended roles do not
])
def test_special_tokens_at_high_ids_go_through_preprocess_and_the_collator(tmp_path, regular, specials, dtype):
    save_tokenizer(word_level(regular, specials), tmp_path / "tokenizer.json")
    rng = np.random.default_rng(0)
    docs = [" ".join(f"w{i}" for i in rng.integers(0, regular - 1, 40)) for _ in range(12)]
    (tmp_path / "en.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    data = preprocess(tmp_path, tmp_path / "tokenizer.json", "data")
    assert read_manifest(data)["dtype"] == dtype  # shards hold regular ids only: no special id is stored
    cfg = DataConfig(path=str(data), num_workers=0, cache_dir=str(tmp_path), eval_documents=1)
    source = open_data(cfg)
    special = source.special
    assert (special.eos, special.mask) == (regular, regular + 1)  # found by name
    appended = [role for role, token in zip(("pad", "cls", "smask", "gmask", "sop", "eop"),
                                            ("<pad>", "[CLS]", "[sMASK]", "[gMASK]", "<sop>", "<eop>"))
                if token not in specials]
    assert [special[role] for role in appended] == list(range(regular + len(specials), source.vocab_size))
    objective = ObjectiveConfig(strategy="glm-10b")
    collator = glm_collator(source, objective, seq_len=64, seed=0, global_batch_size=4)
    batch = next(iter(build_loader(cfg, collator, seq_len=64, raw_len=raw_length(objective, 64), global_batch_size=4,
                                   micro_batch_size=4, dp_rank=0, dp_size=1, seed=0, source=source)))
    ids = set(batch["input_ids"].unique().tolist())
    assert {special.cls, special.sop} <= ids and max(ids) < source.vocab_size  # never wrapped to the dtype
    model_vocab = ModelSection.from_section({"preset": "glm-tiny"}, "model").resolve(source.vocab_size).vocab_size
    assert model_vocab % 128 == 0 and source.vocab_size <= model_vocab < source.vocab_size + 128


def test_model_vocab_multiple_pads_the_tokenizer_vocabulary():
    section = lambda **fields: ModelSection.from_section({"preset": "glm-tiny", **fields}, "model")
    assert section().resolve(1000).vocab_size == 1024
    assert section(vocab_multiple=64).resolve(1000).vocab_size == 1024
    assert section(vocab_multiple=1).resolve(1000).vocab_size == 1000
    assert section(vocab_multiple=100).resolve(1000).vocab_size == 1000
    assert section(vocab_size=1500).resolve(1000).vocab_size == 1500  # an explicit size is taken as is
    assert section(vocab_multiple=64).to_dict() == {"preset": "glm-tiny", "vocab_multiple": 64}
    with pytest.raises(ConfigError, match="model.vocab_multiple=0 must be a positive integer"):
        section(vocab_multiple=0)
