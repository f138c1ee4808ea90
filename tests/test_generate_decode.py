"""Generation on random models: the KV cache reproduces the full forward, cached decoding equals
recomputing the whole sequence token for token (greedy and seeded sampling, every position
encoding, GQA, [gMASK] blocks at the mask's position or prolonging the text, a batch of prompts vs
each prompt alone), the positions fed are the training layout's, sampling draws from the
distribution it claims, prompts become Part A as the trainer frames documents."""
import numpy as np
import pytest
import torch

from pretrain.data.tokenizer import train_tokenizer
from pretrain.generate.infill import fill_blanks
from pretrain.generate.kv_cache import KVCache, attached
from pretrain.generate.prompt import filled_text, parse_prompt
from pretrain.generate.sampling import Sampling, next_tokens
from pretrain.model import build_model
from pretrain.objectives import build_sample, rng
from pretrain.tokens import SpecialTokens

SPECIAL = SpecialTokens()
SMALL = dict(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, ffn_hidden_size=96, max_position_embeddings=64)
ENCODINGS = {
    "learned_2d": dict(),
    "rope_2d": dict(position_encoding="rope_2d"),
    "rope_1d_gqa": dict(position_encoding="rope_1d", partial_rotary_factor=0.5, rope_interleaved=True,
                        norm="rmsnorm", mlp="swiglu", num_kv_heads=2, bias=False, tie_embeddings=False),
}
SAMPLED = Sampling(temperature=0.8, top_k=40, top_p=0.95, seed=7)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread


def random_model(encoding: str, backend: str = "sdpa"):
    torch.manual_seed(0)
    model = build_model("glm-tiny", **SMALL, **ENCODINGS[encoding], attention_backend=backend).eval()
    with torch.no_grad():  # a spread of logits: greedy decoding then writes varied tokens
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    return model


def prompts() -> list[np.ndarray]:
    """Part A rows of different lengths and blanks: [MASK] inside, [sMASK] + [MASK], a final [gMASK]."""
    words = np.random.default_rng(0).integers(8, 128, 40)
    s = SPECIAL
    return [np.array([s.cls, *words[:6], s.mask, *words[6:14], s.eos]),
            np.array([s.cls, *words[14:17], s.smask, *words[17:30], s.mask, *words[30:32], s.eos]),
            np.array([s.cls, *words[32:36], s.gmask])]


@pytest.mark.parametrize("sampling", [Sampling(), SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_cached_batch_decoding_equals_recomputing_each_prompt_alone(encoding, sampling):
    model = random_model(encoding)
    cached = fill_blanks(model, prompts(), SPECIAL, max_new_tokens=6, sampling=sampling)
    alone = [fill_blanks(model, [p], SPECIAL, max_new_tokens=6, sampling=sampling, prompt_ids=[i], use_cache=False)[0]
             for i, p in enumerate(prompts())]
    assert cached == alone
    assert [len(blocks) for blocks in cached] == [1, 2, 1]
    written = [token for blocks in cached for block in blocks for token in block]
    assert len(set(written)) > 4  # the comparison is over real, varied text
    banned = {SPECIAL.pad, SPECIAL.cls, SPECIAL.mask, SPECIAL.smask, SPECIAL.gmask, SPECIAL.sop, SPECIAL.eop}
    assert not banned & set(written)


@pytest.mark.parametrize("gmask_positions", ["mask", "continue"])
def test_cached_decoding_equals_recomputing_under_both_gmask_position_schemes(gmask_positions):
    """The rope_1d model (GLM-4-like) that gmask_positions=auto prolongs for: a batch with [MASK],
    [sMASK] and a final [gMASK] blank, cached, equals each prompt alone without the cache."""
    model = random_model("rope_1d_gqa")
    fill = dict(max_new_tokens=6, sampling=SAMPLED, gmask_positions=gmask_positions)
    cached = fill_blanks(model, prompts(), SPECIAL, **fill)
    alone = [fill_blanks(model, [p], SPECIAL, prompt_ids=[i], use_cache=False, **fill)[0]
             for i, p in enumerate(prompts())]
    assert cached == alone and [len(blocks) for blocks in cached] == [1, 2, 1]
    if gmask_positions == "continue":  # only the [gMASK] blank's fill can differ from the mask scheme's
        at_mask = fill_blanks(model, prompts(), SPECIAL, max_new_tokens=6, sampling=SAMPLED)
        assert cached[:2] == at_mask[:2] and cached[2] != at_mask[2]


def test_generator_feeds_the_positions_of_the_training_layout():
    """Golden: [cls] w w [MASK] w [gMASK] with 3 tokens per blank. The [MASK] block stays at the
    blank's position 3; under continue the [gMASK] block prolongs the text from position 5: sop at 6,
    then 7, 8 (GLM-130B); under mask it stays at 5. Block positions count 1, 2, 3 either way."""
    model = random_model("rope_1d_gqa")
    s = SPECIAL
    prompt = np.array([s.cls, 20, 21, s.mask, 22, s.gmask])
    fed = []
    hook = model.register_forward_pre_hook(lambda module, inputs: fed.append((inputs[1][0].tolist(),
                                                                             inputs[2][0].tolist())))
    try:
        for gmask_positions in ("mask", "continue"):
            fill_blanks(model, [prompt], s, max_new_tokens=3, banned=[s.eop, s.eos], gmask_positions=gmask_positions)
    finally:
        hook.remove()
    steps = 1 + 2 * 3  # Part A, then 3 inputs per blank (sop and 2 written tokens; the third completes it)
    assert len(fed) == 2 * steps
    part_a = ([0, 1, 2, 3, 4, 5], [0] * 6)
    blocks = [[1], [2], [3]] * 2
    assert fed[:steps] == [part_a, *zip([[3], [3], [3], [5], [5], [5]], blocks)]
    assert fed[steps:] == [part_a, *zip([[3], [3], [3], [6], [7], [8]], blocks)]
    sample = build_sample(np.array([s.cls, 20, 21, 30, 22, 31, 32, 33]), [(3, 4), (5, 8)], [0, 1], s.mask, s.sop,
                          s.eop, prolong=[False, True])
    assert sample.position_ids.tolist()[6:] == [3, 3, 6, 7, 8, 9], "the layout the model was trained on"


@pytest.mark.parametrize("prolong", [None, [True, False]], ids=["at_mask", "prolonged"])
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_kv_cache_logits_equal_the_full_forward_over_a_laid_out_sample(encoding, prolong):
    """Part A in one chunk, then Part B (two blocks) in chunks of 1 and 3 tokens through the cache:
    every logit equals the dense reference forward over the whole row."""
    model = random_model(encoding, backend="dense")
    text = np.random.default_rng(1).integers(8, 128, 20)
    sample = build_sample(text, [(3, 6), (10, 15)], [1, 0], SPECIAL.mask, SPECIAL.sop, SPECIAL.eop, prolong=prolong)
    n = len(sample.input_ids)
    row = dict(input_ids=sample.input_ids, position_ids=sample.position_ids,
               block_position_ids=sample.block_position_ids, segment_ids=np.zeros(n, dtype=np.int64),
               part_a=np.arange(n) < sample.prefix_len)
    row = {k: torch.as_tensor(v)[None] for k, v in row.items()}
    with torch.no_grad():
        reference = model(**row)
        cache = KVCache(1, n, torch.device("cpu"))
        chunks = [(0, sample.prefix_len), *[(i, i + 1) for i in range(sample.prefix_len, sample.prefix_len + 4)]]
        chunks += [(i, min(i + 3, n)) for i in range(sample.prefix_len + 4, n, 3)]
        with attached(model, cache):
            pieces = [model(**{k: v[:, a:b] for k, v in row.items()}) for a, b in chunks]
    assert model.build_attention is not cache.build_attention  # detached again
    torch.testing.assert_close(torch.cat(pieces, dim=1), reference, atol=2e-5, rtol=1e-5)


def test_sampling_draws_from_the_filtered_softmax():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03]))
    rows = 40_000
    keys = rng.keys(3, np.arange(rows))

    def frequencies(sampling: Sampling) -> np.ndarray:
        drawn = next_tokens(logits.expand(rows, -1), sampling, keys, draw=0)
        return np.bincount(drawn.numpy(), minlength=5) / rows

    np.testing.assert_allclose(frequencies(Sampling(temperature=1.0)), [0.5, 0.25, 0.15, 0.07, 0.03], atol=0.01)
    sharpened = np.array([0.5, 0.25, 0.15, 0.07, 0.03]) ** 2
    np.testing.assert_allclose(frequencies(Sampling(temperature=0.5)), sharpened / sharpened.sum(), atol=0.01)
    np.testing.assert_allclose(frequencies(Sampling(temperature=1.0, top_k=2)), [2 / 3, 1 / 3, 0, 0, 0], atol=0.01)
    # top_p=0.8: 0.5 + 0.25 = 0.75 < 0.8, so the third token is needed too; the rest is cut
    np.testing.assert_allclose(frequencies(Sampling(temperature=1.0, top_p=0.8)), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0, 0],
                               atol=0.01)
    assert frequencies(Sampling(temperature=1.0, top_p=0.5))[0] == 1.0
    assert frequencies(Sampling())[0] == 1.0  # greedy


def test_sampling_is_a_function_of_seed_prompt_and_draw():
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(0)).expand(6, -1)
    first = next_tokens(logits, SAMPLED, rng.keys(7, np.arange(6)), draw=0)
    assert torch.equal(first, next_tokens(logits, SAMPLED, rng.keys(7, np.arange(6)), draw=0))
    assert len(set(first.tolist())) > 1  # rows (prompts) draw different numbers
    assert not torch.equal(first, next_tokens(logits, SAMPLED, rng.keys(8, np.arange(6)), draw=0))
    assert not torch.equal(first, next_tokens(logits, SAMPLED, rng.keys(7, np.arange(6)), draw=1))


@pytest.mark.parametrize("bad, message", [(dict(temperature=-1.0), "temperature=-1.0"), (dict(top_k=-2), "top_k=-2"),
                                          (dict(top_p=0.0), "top_p=0.0"), (dict(temperature=float("nan")), "nan")])
def test_sampling_settings_are_validated(bad, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**bad).validate()


@pytest.fixture(scope="module")
def tokenizer():
    lines = ["The cat sat on the mat.", "A dog ran in the park.", "Paris is the capital of France."] * 20
    return train_tokenizer(lines, vocab_size=320)  # core roles first: SpecialTokens() ids


def test_prompt_becomes_part_a_framed_like_a_training_document(tokenizer):
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False).ids
    s = SPECIAL
    prompt = parse_prompt("The cat [MASK] on the [sMASK] mat.", tokenizer, s)
    assert prompt.blanks == ["mask", "smask"] and prompt.pieces == ["The cat", " on the", " mat."]
    assert prompt.part_a.tolist() == [s.cls, *encode("The cat"), s.mask, *encode(" on the"), s.smask,
                                      *encode(" mat."), s.eos]
    # a final [gMASK] continues the document: no eos (its span would have covered it)
    continued = parse_prompt("Paris is the [gMASK]  ", tokenizer, s)
    assert continued.part_a.tolist() == [s.cls, *encode("Paris is the"), s.gmask]
    # a final [MASK] is a blank inside the document, which still ends
    assert parse_prompt("[MASK]", tokenizer, s).part_a.tolist() == [s.cls, s.mask, s.eos]
    # only the mask roles are blanks: other special strings are text
    assert parse_prompt("<sop> [MASK]", tokenizer, s).part_a.tolist() == [s.cls, *encode("<sop>"), s.mask, s.eos]
    assert filled_text(prompt, [" sat", " red"]) == "The cat sat on the red mat."
    assert filled_text(prompt, [" sat", "red"], mark=True) == "The cat [[sat]] on the[[red]] mat."


def test_prompt_without_blank_and_bad_decoding_requests_are_refused(tokenizer):
    with pytest.raises(ValueError, match=r"no blank in 'The cat sat\.': write \[MASK\] / \[sMASK\] / \[gMASK\]"):
        parse_prompt("The cat sat.", tokenizer, SPECIAL)
    model = random_model("learned_2d")
    with pytest.raises(ValueError, match="prompt 1 has no blank"):
        fill_blanks(model, [prompts()[0], np.array([2, 9, 1])], SPECIAL)
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        fill_blanks(model, [np.array([2, *[9] * 70, 3, 1])], SPECIAL)
    with pytest.raises(ValueError, match="max_new_tokens=0 must be >= 1"):
        fill_blanks(model, prompts(), SPECIAL, max_new_tokens=0)
    with pytest.raises(ValueError, match="gmask_positions='auto' must be resolved"):
        fill_blanks(model, prompts(), SPECIAL, gmask_positions="auto")
    # a prolonged [gMASK] block runs past the prompt: 60 + 8 positions do not fit a table of 64
    long_prompt = np.array([2, *[9] * 59, SPECIAL.gmask])
    fill_blanks(model, [long_prompt], SPECIAL, max_new_tokens=1)
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        fill_blanks(model, [long_prompt], SPECIAL, max_new_tokens=8, gmask_positions="continue")
