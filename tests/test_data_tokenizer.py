"""Tokenizer: GLM specials found by role (added when missing), literal "[MASK]" stays text, padding, round
trips, determinism."""
import unicodedata

import pytest

from pretrain.data.corpus import embedded_documents
from pretrain.data.tokenizer import (load_tokenizer, resolve_special_tokens, sample_training_text, save_tokenizer,
                                     train_tokenizer)
from pretrain.tokens import CORE_ROLES


@pytest.fixture(scope="module")
def documents():
    return embedded_documents()


@pytest.fixture(scope="module")
def tokenizer(documents, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    save_tokenizer(train_tokenizer(sample_training_text(documents, 0.3, 1 << 20, seed=0), 1000), path)
    return load_tokenizer(path)  # exercise the load path, which must restore encode_special_tokens


def test_special_tokens_are_found_by_role_and_vocab_is_padded(tokenizer):
    special = resolve_special_tokens(tokenizer)
    assert {role: tokenizer.id_to_token(i) for role, i in special.roles().items()} == CORE_ROLES
    assert tokenizer.get_vocab_size() == 1024  # 1000 rounded up to a multiple of 128; nothing was added
    assert tokenizer.token_to_id("<|reserved_23|>") == 1023


def test_literal_special_strings_in_text_stay_text(tokenizer):
    text = "Put [MASK] here, then [gMASK] and <|endoftext|> <sop>."
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert not set(ids) & set(resolve_special_tokens(tokenizer).roles().values())
    assert tokenizer.decode(ids) == text


def test_multilingual_round_trip(tokenizer, documents):
    for lang in ("ar", "fa", "zh", "ja", "ko", "ru", "el", "de"):
        text = unicodedata.normalize("NFC", documents[lang][0])
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids) == text, lang
    unseen = "ᚠᚢᚦ ትግርኛ 𓀀 🙂"  # scripts absent from training: byte fallback, never unknown
    assert tokenizer.decode(tokenizer.encode(unseen).ids) == unseen


def test_temperature_sample_upsamples_small_languages(documents):
    lines = list(sample_training_text(documents, 0.3, 200_000, seed=1))
    chars = {lang: sum(len(t) for t in lines if t in set(docs)) for lang, docs in documents.items()}
    raw = {lang: sum(map(len, docs)) for lang, docs in documents.items()}
    assert chars["en"] / chars["ko"] < raw["en"] / raw["ko"] / 5  # ~100x in the data, much flatter here
    assert lines == list(sample_training_text(documents, 0.3, 200_000, seed=1))


def test_training_is_deterministic(documents, tmp_path):
    shas = [save_tokenizer(train_tokenizer(sample_training_text(documents, 0.3, 1 << 18, seed=0), 600),
                           tmp_path / f"t{i}.json") for i in range(2)]
    assert shas[0] == shas[1]


def _foreign_tokenizer(specials):
    """A tokenizer made elsewhere: its own special tokens, in its own order."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    foreign = Tokenizer(models.BPE())
    foreign.pre_tokenizer = pre_tokenizers.ByteLevel()
    foreign.train_from_iterator(["some text"], trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    return foreign


def test_a_foreign_tokenizer_keeps_its_ids_and_gets_the_missing_roles_appended():
    foreign = _foreign_tokenizer(["</s>", "[MASK]", "<|startofpiece|>", "<|endofpiece|>", "[gMASK]"])
    size = foreign.get_vocab_size()
    special = resolve_special_tokens(foreign, declared={"sentinel_0": "<extra_id_0>"})
    assert (special.eos, special.mask, special.sop, special.eop, special.gmask) == (0, 1, 2, 3, 4)  # by alias too
    added = ["<pad>", "[CLS]", "[sMASK]", "<extra_id_0>"]  # missing: appended in role order
    assert [special.pad, special.cls, special.smask, special["sentinel_0"]] == list(range(size, size + 4))
    assert [foreign.id_to_token(i) for i in range(size, size + 4)] == added
    assert resolve_special_tokens(foreign, declared={"sentinel_0": "<extra_id_0>"}) == special  # stable


def test_two_roles_on_one_token_are_refused():
    foreign = _foreign_tokenizer(["<|endoftext|>", "[MASK]"])
    with pytest.raises(ValueError, match=r"\{0: \['pad', 'eos'\]\} collide.*data.special_tokens"):
        resolve_special_tokens(foreign, names={"pad": "<|endoftext|>"})
    with pytest.raises(ValueError, match=r"unknown role\(s\) \['bos'\]"):
        resolve_special_tokens(foreign, names={"bos": "<s>"})


def test_missing_tokenizer_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json does not exist"):
        load_tokenizer(tmp_path / "nothing.json")
