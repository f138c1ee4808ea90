"""Inputs that cannot work raise a ValueError (or ConfigError) that names the value."""
import numpy as np
import pytest

from pretrain.config import ConfigError, from_dict
from pretrain.objectives import GLMCollator, ObjectiveConfig, TextSample, build_sample, raw_length
from pretrain.objectives.infill import Spans, layout_rows
from pretrain.objectives.strategies import Context
from pretrain.objectives.strategies.sentence import SentenceConfig, SentenceStrategy
from pretrain.objectives.strategies.token import TokenConfig, TokenStrategy
from pretrain.tokens import SpecialTokens

S = SpecialTokens()
DOC = np.array([S.cls, 11, 12, 13, 14, S.eos])


def collator(**kw):
    return GLMCollator(ObjectiveConfig(**kw), S, seq_len=64, seed=0, global_batch_size=2)


@pytest.mark.parametrize("tokens, spans, order, match", [
    ([], [], [], "non-empty"),
    ([11, 12, 13], [(1, 1)], [0], r"\(1, 1\)"),
    ([11, 12, 13], [(2, 4)], [0], r"\(2, 4\).*<= 3"),
    ([11, 12, 13], [(-1, 1)], [0], r"\(-1, 1\)"),
    ([11, 12, 13, 14], [(0, 2), (1, 3)], [0, 1], "overlaps"),
    ([11, 12, 13, 14], [(2, 3), (0, 1)], [0, 1], "sorted"),
    ([11, 12, 13, 14], [(0, 1), (2, 3)], [0, 0], "permutation"),
    ([11, 12, 13, 14], [(0, 1), (2, 3)], [0], "permutation"),
])
def test_build_sample_rejects_bad_spans_and_orders(tokens, spans, order, match):
    with pytest.raises(ValueError, match=match):
        build_sample(tokens, spans, order, S.mask, S.sop, S.eop)


def test_build_sample_rejects_colliding_special_ids():
    with pytest.raises(ValueError, match="distinct"):
        build_sample([11, 12], [(0, 1)], [0], mask_id=5, sop_id=5, eop_id=7)


@pytest.mark.parametrize("data, match", [
    ({"token": {"mask_ratio": 0.0}}, r"objective.token: mask_ratio=0.0"),
    ({"token": {"mask_ratio": 1.0}}, r"objective.token: mask_ratio=1.0"),
    ({"sentence": {"mask_ratio": -0.1}}, r"objective.sentence: mask_ratio=-0.1"),
    ({"document": {"min_ratio": 0.0}}, r"objective.document: min_ratio=0.0"),
    ({"document": {"suffix_prob": 1.5}}, r"objective.document: suffix_prob=1.5"),
    ({"token": {"poisson_lambda": 0.0}}, "poisson_lambda"), ({"token": {"max_span_length": 0}}, "max_span_length"),
    ({"strategy": "bert"}, "'bert' is unknown"), ({"causal": {"tokens_per_document": 1}}, "tokens_per_document=1"),
    ({"t5": {"mean_span_length": 0.5}}, r"objective.t5: mean_span_length=0.5"),
    ({"mlm": {"mask_prob": 0.9, "random_prob": 0.2}}, r"mask_prob \+ random_prob"),
    ({"fim": {"fim_rate": 1.5}}, "fim_rate=1.5"),
    ({"ul2": {"denoisers": {"R": {"mask_ratio": 2.0}}}}, r"objective.ul2.denoisers.R: mask_ratio=2.0"),
    ({"ul2": {"denoisers": {"R": {"weight": 0.0}}}}, "positive total weight"),
    ({"boundaries": "bytes"}, r"boundaries: 'bytes' is not one of"),
])
def test_config_rejects_values_that_cannot_work(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(ObjectiveConfig, data, "objective")


def test_a_section_built_by_hand_is_validated_with_the_objective():
    with pytest.raises(ValueError, match=r"^token.mask_ratio=1.5 must lie in \(0, 1\)"):
        ObjectiveConfig(token=TokenConfig(mask_ratio=1.5)).validate()


def test_config_errors_name_the_file_and_key():
    with pytest.raises(ConfigError, match=r"run.yaml:objective.token: mask_ratio=1.5"):
        from_dict(ObjectiveConfig, {"token": {"mask_ratio": 1.5}}, "run.yaml:objective")
    with pytest.raises(ConfigError, match=r"run.yaml:objective.token: unknown key.*mask_prob"):
        from_dict(ObjectiveConfig, {"token": {"mask_prob": 0.1}}, "run.yaml:objective")
    # The flat knobs of older configs now live in their strategy's section: the error lists the keys.
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['mask_ratio'\].*'token'"):
        from_dict(ObjectiveConfig, {"mask_ratio": 0.1}, "run.yaml:objective")
    with pytest.raises(ConfigError, match=r"layout.*'stacked'"):
        from_dict(ObjectiveConfig, {"layout": "stacked"}, "run.yaml:objective")


@pytest.mark.parametrize("data, match", [
    ({"strategy": "mixture", "mixture": {"token": 1, "span": 1}}, r"unknown strategy name.*'span'"),
    ({"strategy": "mixture", "mixture": {"token": -1}}, "non-negative"),
    ({"strategy": "mixture", "mixture": {}}, "positive sum"),
    ({"strategy": "glm", "mixture": {"token": 1}}, "only used with strategy='mixture'"),
])
def test_mixture_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(ObjectiveConfig, data, "objective")


def test_collator_rejects_colliding_or_out_of_vocabulary_special_ids():
    with pytest.raises(ValueError, match="distinct"):
        GLMCollator(ObjectiveConfig(), SpecialTokens(gmask=7), 64, 0, 1)
    with pytest.raises(ValueError, match=r"eop=7 is outside the vocabulary \[0, 7\)"):
        GLMCollator(ObjectiveConfig(), S, 64, 0, 1, vocab_size=7)
    with pytest.raises(ValueError, match=r"pad=-1 is outside the vocabulary \[0\); choose a non-negative id"):
        GLMCollator(ObjectiveConfig(), SpecialTokens(pad=-1), 64, 0, 1)


def test_sentence_strategy_needs_sentence_end_ids():
    with pytest.raises(ValueError, match="sentence_end_ids"):
        GLMCollator(ObjectiveConfig(strategy="glm-10b"), S, 64, 0, 1)


@pytest.mark.parametrize("sample, match", [
    (TextSample(3, []), "sample 3 has no documents"),
    (TextSample(4, [DOC, np.array([], dtype=np.int64)]), "sample 4 document 1 must be a non-empty"),
    (TextSample(5, [DOC.astype(float)]), "sample 5 document 0 must be a non-empty 1-D integer"),
    (TextSample(6, [DOC.reshape(2, 3)]), "sample 6 document 0"),
    (TextSample(7, [np.arange(65)]), "sample 7 holds 65 tokens, more than seq_len=64"),
])
def test_collator_rejects_bad_samples(sample, match):
    with pytest.raises(ValueError, match=match):
        collator().build([TextSample(0, [DOC]), sample])


def test_collator_rejects_an_empty_batch_and_bad_sizes():
    with pytest.raises(ValueError, match="empty list"):
        collator().build([])
    with pytest.raises(ValueError, match="global_batch_size=0"):
        GLMCollator(ObjectiveConfig(), S, 64, 0, 0)
    with pytest.raises(ValueError, match="seq_len=8 leaves no room"):
        raw_length(ObjectiveConfig(), 8)


@pytest.mark.parametrize("document, match", [
    ([], "non-empty"), ([S.cls, S.eos], "no maskable token"), ([11], "no maskable token"),
])
def test_strategies_reject_documents_too_short_for_a_span(document, match):
    with pytest.raises(ValueError, match=match):
        TokenStrategy(TokenConfig(), Context(S)).spans_for(document, seed=0)
    with pytest.raises(ValueError, match=match):
        SentenceStrategy(SentenceConfig(), Context(S, np.array([9]))).spans_for(document, seed=0)


def test_layout_rows_refuses_rows_that_do_not_fit():
    spans = Spans(np.array([1]), np.array([2]), np.array([S.mask]), rank=np.array([0]))
    with pytest.raises(ValueError, match="row 0 needs 6 tokens.*seq_len is 5"):
        layout_rows(np.array([11, 12, 13, 14]), np.array([4]), np.array([0]), 1, 5, spans, S.pad, S.sop, S.eop)
