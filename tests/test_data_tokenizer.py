"""Tokenizer: GLM specials at fixed ids, literal "[MASK]" stays text, padding, round trips, determinism."""
import unicodedata

import pytest

from pretrain.data.corpus import embedded_documents
from pretrain.data.tokenizer import load_tokenizer, sample_training_text, save_tokenizer, train_tokenizer
from pretrain.tokens import SPECIAL_TOKEN_STRINGS, SpecialTokens


@pytest.fixture(scope="module")
def documents():
    return embedded_documents()


@pytest.fixture(scope="module")
def tokenizer(documents, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    save_tokenizer(train_tokenizer(sample_training_text(documents, 0.3, 1 << 20, seed=0), 1000), path)
    return load_tokenizer(path)  # exercise the load path, which must restore encode_special_tokens


def test_special_tokens_sit_at_their_fixed_ids_and_vocab_is_padded(tokenizer):
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKEN_STRINGS] == list(range(8))
    assert tokenizer.token_to_id("[gMASK]") == SpecialTokens().gmask
    assert tokenizer.get_vocab_size() == 1024  # 1000 rounded up to a multiple of 128
    assert tokenizer.token_to_id("<|reserved_23|>") == 1023


def test_literal_special_strings_in_text_stay_text(tokenizer):
    text = "Put [MASK] here, then [gMASK] and <|endoftext|> <sop>."
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert not set(ids) & set(range(8))
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


def test_tokenizer_with_wrong_special_ids_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    foreign = Tokenizer(models.BPE())  # e.g. a tokenizer made elsewhere, with [MASK] first
    foreign.pre_tokenizer = pre_tokenizers.ByteLevel()
    specials = ["[MASK]", *[t for t in SPECIAL_TOKEN_STRINGS if t != "[MASK]"]]
    foreign.train_from_iterator(["some text"], trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    foreign.save(str(tmp_path / "foreign.json"))
    with pytest.raises(ValueError, match=r"foreign.json: special token '<pad>' has id 1, expected 0"):
        load_tokenizer(tmp_path / "foreign.json")


def test_missing_tokenizer_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json does not exist"):
        load_tokenizer(tmp_path / "nothing.json")
