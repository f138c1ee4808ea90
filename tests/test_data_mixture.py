"""Mixture: temperature weights, overrides, exact per-block counts, epoch caps (pure numpy, fast)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pretrain.data.mixture import Mixture, block_counts, mixture_weights, temperature_weights


def test_temperature_weights_match_reference_table():
    # reference-data-pipeline.md §2, alpha = 0.3 row
    tokens = dict(zip("abcdefgh", [5e9, 2e9, 8e8, 3e8, 1e8, 4e7, 1e7, 2e6]))
    q = temperature_weights(tokens, 0.3)
    assert [round(v, 3) for v in q.values()] == [0.281, 0.213, 0.162, 0.121, 0.087, 0.066, 0.044, 0.027]
    assert temperature_weights(tokens, 1.0)["a"] == pytest.approx(5e9 / sum(tokens.values()))


def test_overrides_are_kept_and_the_rest_shares_by_temperature():
    q = mixture_weights({"en": 900, "de": 90, "fr": 10}, 0.5, {"fr": 0.5})
    assert q["fr"] == 0.5 and sum(q.values()) == pytest.approx(1.0)
    assert q["en"] / q["de"] == pytest.approx((900 / 90) ** 0.5)


@pytest.mark.parametrize("overrides, message", [
    ({"xx": 0.2}, r"language\(s\) \['xx'\] that have no data"),
    ({"en": 0.5, "de": 0.5}, r"languages \['fr'\] have no weight left"),
    ({"en": 0.5, "de": 0.3, "fr": 0.1}, "must sum to 1"),
])
def test_bad_overrides_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        mixture_weights({"en": 900, "de": 90, "fr": 10}, 0.3, overrides)


@settings(deadline=None, max_examples=25, derandomize=True)  # the spread bound is empirical
@given(raw=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=12), block=st.integers(64, 2048))
def test_every_block_holds_exact_counts_within_one_of_target(raw, block):
    weights = {f"l{i:02d}": w / sum(raw) for i, w in enumerate(raw)}
    if min(weights.values()) * block < 1:
        block = int(np.ceil(1 / min(weights.values()))) + 1
    mixture = Mixture(weights, {lang: 10 for lang in weights}, {}, block)
    q = np.array(list(weights.values()))
    located = np.array([mixture.locate(g) for g in range(3 * block)])
    for b in range(3):
        langs, ks = located[b * block:(b + 1) * block].T
        counts = np.bincount(langs, minlength=len(q))
        assert np.all(np.abs(counts - q * block) < 1)  # ±1 sample per block
        for lang in range(len(q)):  # each language's k's in this block are the next consecutive ones
            assert sorted(ks[langs == lang]) == list(range(b * counts[lang], (b + 1) * counts[lang]))
    # spread evenly, not clumped: every prefix of the pattern stays close to its target share
    prefix = np.cumsum(np.eye(len(q))[located[:block, 0]], axis=0)
    assert np.max(np.abs(prefix - np.outer(np.arange(1, block + 1), q))) < 2


def test_epoch_caps_stop_a_language_and_redistribute_its_share():
    weights = {"big": 0.5, "small": 0.5}
    mixture = Mixture(weights, {"big": 1000, "small": 10}, {"small": 3.0}, block=16)
    langs = np.array([mixture.locate(g)[0] for g in range(400)])
    small = [mixture.locate(g)[1] for g in range(400) if langs[g] == 1]
    assert len(small) == 30 and small == list(range(30))  # exactly 3 epochs of 10 samples, then stop
    assert np.all(langs[np.flatnonzero(langs == 1).max() + 1:] == 0)  # the rest goes to "big"
    assert mixture.total_samples is None


def test_all_languages_capped_gives_a_finite_stream_with_a_clear_end():
    mixture = Mixture({"a": 0.5, "b": 0.5}, {"a": 8, "b": 8}, {"a": 1.0, "b": 2.0}, block=4)
    assert mixture.total_samples == 24  # a: 8 samples, b: 16 samples, nothing else
    seen = [mixture.locate(g) for g in range(24)]
    assert sorted(k for lang, k in seen if lang == 0) == list(range(8))
    assert sorted(k for lang, k in seen if lang == 1) == list(range(16))
    with pytest.raises(IndexError, match="max_epochs cap after 24 samples"):
        mixture.locate(24)


def test_a_language_too_small_for_the_block_is_refused_not_dropped():
    with pytest.raises(ValueError, match=r"\['rare'\] get 0 of blend_block=100 slots.*at least 1000"):
        block_counts(np.array([0.999, 0.001]), 100, ["big", "rare"])


def test_cap_for_unknown_language_is_refused():
    with pytest.raises(ValueError, match=r"max_epochs given for language\(s\) \['xx'\]"):
        Mixture({"a": 1.0}, {"a": 5}, {"xx": 1.0}, block=4)


def test_used_before_counts_each_languages_samples_in_a_prefix():
    mixture = Mixture({"big": 0.5, "small": 0.5}, {"big": 1000, "small": 10}, {"small": 3.0}, block=16)
    located = [mixture.locate(g)[0] for g in range(300)]
    for g in (0, 7, 16, 45, 46, 47, 299):
        assert mixture.used_before(g) == {"big": located[:g].count(0), "small": located[:g].count(1)}
