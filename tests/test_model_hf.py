"""import-hf: a transformers GLM-4 checkpoint and a GLM-1 (THUDM GLMModel) one become run directories whose
model computes the original's logits; the written config rebuilds the model; import -> export -> import
is bit-identical; what cannot be imported is refused with one line."""
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

from hf_assets import causal_inputs, save_glm1, save_hf_glm4, save_hf_tokenizer, train_bpe
from pretrain.__main__ import main as cli
from pretrain.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from pretrain.model.presets import ModelSection
from pretrain.train.run_dir import load_trained_model, resolved_special_tokens

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def glm4_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("glm4")
    save_hf_tokenizer(train_bpe(), directory)
    save_hf_glm4(directory, vocab_size=512)
    return directory


def imported(hf_dir, out):
    assert cli(["import-hf", str(hf_dir), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("tie", [False, True])
def test_imported_glm4_computes_the_transformers_logits(glm4_dir, tmp_path, tie):
    hf_dir = glm4_dir
    if tie:
        hf_dir = tmp_path / "tied"
        save_hf_glm4(hf_dir, vocab_size=512, seed=1, tie_word_embeddings=True)
    reference = transformers.GlmForCausalLM.from_pretrained(hf_dir).eval()
    run = imported(hf_dir, tmp_path / "run")
    model = load_trained_model(run)
    assert (model.lm_head is None) == tie
    input_ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(**causal_inputs(input_ids)), reference(input_ids=input_ids).logits,
                                   atol=1e-5, rtol=1e-5)


def test_import_writes_a_config_that_rebuilds_the_model_and_the_tokenizer_with_its_roles(glm4_dir, tmp_path):
    run = imported(glm4_dir, tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["preset"] == "glm-4-9b"
    rebuilt = ModelSection.from_section(config["model"], "model").resolve(vocab_size=1)
    assert dataclasses.asdict(rebuilt) == config["resolved_model"]
    tokenizer, special = load_tokenizer(run / "tokenizer.json"), resolved_special_tokens(run)
    ours = load_tokenizer(glm4_dir)
    for role, token in {"eos": "<|endoftext|>", "mask": "[MASK]", "gmask": "[gMASK]", "sop": "<sop>"}.items():
        assert special[role] == ours.token_to_id(token)  # found by name where the tokenizer has them
    assert {special.pad, special.cls} == {ours.get_vocab_size(), ours.get_vocab_size() + 1}  # appended
    assert tokenizer.id_to_token(special.cls) == "[CLS]"


def test_round_trip_import_export_import_is_bit_identical(glm4_dir, tmp_path):
    first = imported(glm4_dir, tmp_path / "first")
    assert cli(["export", str(first), "--out", str(tmp_path / "hf")]) == 0
    second = imported(tmp_path / "hf", tmp_path / "second")
    a, b = load_trained_model(first).state_dict(), load_trained_model(second).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert yaml.safe_load((first / "config.yaml").read_text()) == yaml.safe_load((second / "config.yaml").read_text())
    assert tokenizer_fingerprint(load_tokenizer(first / "tokenizer.json")) == \
        tokenizer_fingerprint(load_tokenizer(second / "tokenizer.json"))
    assert cli(["export", str(second), "--out", str(tmp_path / "hf2")]) == 0
    once, twice = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "hf2" / "model.safetensors")
    assert once.keys() == twice.keys() and all(torch.equal(once[k], twice[k]) for k in once)


# --- GLM-1 ---------------------------------------------------------------------------------------------
def glm1_reference(state, heads, input_ids, position_ids, block_position_ids, sep):
    """THUDM's GLM-1 forward for one sequence, written from the original (model/modeling_glm.py,
    mpu/transformer.py): embeddings + 2-D learned positions, pre-LN blocks with the fused QKV, every
    query sees the first ``sep`` tokens and causally the rest, tanh GeLU MLP, logits on the tied
    embedding. Loops over queries and keys: slow and obviously right."""
    w = {k.removeprefix("glm."): v.double() for k, v in state.items()}
    hidden = w["word_embeddings.weight"].shape[1]
    head_dim = hidden // heads
    layer_norm = lambda x, name: F.layer_norm(x, (hidden,), w[f"{name}.weight"], w[f"{name}.bias"], 1e-5)
    linear = lambda x, name: x @ w[f"{name}.weight"].T + w[f"{name}.bias"]
    gelu = lambda x: 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))
    x = (w["word_embeddings.weight"][input_ids] + w["transformer.position_embeddings.weight"][position_ids]
         + w["transformer.block_position_embeddings.weight"][block_position_ids])
    seq_len = len(input_ids)
    for i in range(sum(k.endswith("query_key_value.weight") for k in w)):
        layer = f"transformer.layers.{i}"
        q, k, v = (t.view(seq_len, heads, head_dim) for t in
                   linear(layer_norm(x, f"{layer}.input_layernorm"), f"{layer}.attention.query_key_value").chunk(3, -1))
        context = torch.zeros(seq_len, heads, head_dim, dtype=x.dtype)
        for t in range(seq_len):
            visible = [j for j in range(seq_len) if j < sep or j <= t]
            for h in range(heads):
                scores = torch.stack([q[t, h] @ k[j, h] / math.sqrt(head_dim) for j in visible])
                context[t, h] = sum(p * v[j, h] for p, j in zip(torch.softmax(scores, 0), visible))
        x = x + linear(context.reshape(seq_len, hidden), f"{layer}.attention.dense")
        x = x + linear(gelu(linear(layer_norm(x, f"{layer}.post_attention_layernorm"), f"{layer}.mlp.dense_h_to_4h")),
                       f"{layer}.mlp.dense_4h_to_h")
    return layer_norm(x, "transformer.final_layernorm") @ w["word_embeddings.weight"].T


def test_imported_glm1_computes_the_original_architecture(tmp_path):
    state = save_glm1(tmp_path / "glm1", vocab=300, hidden=64, heads=4, layers=2, max_len=64)
    run = imported(tmp_path / "glm1", tmp_path / "run")
    model = load_trained_model(run)
    assert model.cfg.position_encoding == "learned_2d" and model.cfg.tie_embeddings
    assert (model.cfg.dropout, model.cfg.attention_dropout) == (0.1, 0.1)  # recorded; eval mode applies none
    # Part A: a text with one [MASK] at 5 (sep = 12); Part B: <sop> + the span, at the mask's position with
    # block positions 1, 2, ... (GLM's 2-D encoding)
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 300, (18,), generator=gen)
    sep = 12
    position_ids = torch.cat([torch.arange(sep), torch.full((6,), 5)])
    block_position_ids = torch.cat([torch.zeros(sep, dtype=torch.long), torch.arange(1, 7)])
    expected = glm1_reference(state, 4, input_ids, position_ids, block_position_ids, sep)
    with torch.no_grad():
        ours = model(input_ids[None], position_ids[None], block_position_ids[None],
                     torch.zeros(1, 18, dtype=torch.long), (torch.arange(18) < sep)[None])[0]
    torch.testing.assert_close(ours.double(), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("case, message", [
    ("architecture", "is neither transformers' GlmForCausalLM"),
    ("rope_scaling", "only GLM-4's default RoPE and SiLU are imported"),
    ("missing_tensor", "does not fit the model: missing ['norm.weight']"),
    ("glm1_relative", "only GLM-1 with learned 2-D positions"),
    ("not_empty", "is not empty; give a new run directory"),
])
def test_what_cannot_be_imported_is_refused_in_one_line(glm4_dir, tmp_path, capsys, case, message):
    hf_dir, out = tmp_path / "hf", tmp_path / "run"
    if case.startswith("glm1"):
        save_glm1(hf_dir)
    else:
        save_hf_glm4(hf_dir, vocab_size=512)
    config = json.loads((hf_dir / "config.json").read_text())
    if case == "architecture":
        config["architectures"] = ["LlamaForCausalLM"]
    elif case == "rope_scaling":
        config["rope_parameters"]["rope_type"] = "yarn"
    elif case == "glm1_relative":
        config["relative_encoding"] = True
    elif case == "missing_tensor":
        weights = load_file(hf_dir / "model.safetensors")
        del weights["model.norm.weight"]
        save_file(weights, hf_dir / "model.safetensors")
    elif case == "not_empty":
        out.mkdir()
        (out / "old").touch()
    (hf_dir / "config.json").write_text(json.dumps(config))
    capsys.readouterr()  # transformers' progress bars
    assert cli(["import-hf", str(hf_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("import-hf: ") and message in err, err
    assert len(err.strip().splitlines()) == 1


def test_published_configs_map_onto_their_presets():
    from pretrain.model.hf import GLM1_PRESETS, glm1_fields, glm4_fields, match_preset
    from pretrain.model.presets import PRESETS, model_config
    glm_4_9b_hf = {"architectures": ["GlmForCausalLM"], "attention_bias": True, "attention_dropout": 0.0,
                   "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
                   "intermediate_size": 13696, "max_position_embeddings": 131072, "model_type": "glm",
                   "num_attention_heads": 32, "num_hidden_layers": 40, "num_key_value_heads": 2,
                   "partial_rotary_factor": 0.5, "rms_norm_eps": 1.5625e-07, "rope_theta": 10000.0,
                   "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 151552}  # THUDM/glm-4-9b-hf
    imported = match_preset("glm4", ("glm-4-9b",), glm4_fields(glm_4_9b_hf), {}, always=("num_kv_heads", "head_dim"))
    assert imported.preset == "glm-4-9b"
    assert imported.fields == {"vocab_size": 151552, "num_kv_heads": 2, "head_dim": 128}
    assert imported.config == PRESETS["glm-4-9b"]
    for preset, (layers, hidden, heads, vocab, max_len) in {"glm-large": (24, 1024, 16, 30592, 512),
                                                           "glm-10b": (48, 4096, 64, 50304, 1024)}.items():
        config = {"architectures": ["GLMModel"], "num_layers": layers, "hidden_size": hidden, "vocab_size": vocab,
                  "num_attention_heads": heads, "max_sequence_length": max_len, "block_position_encoding": True,
                  "embedding_dropout_prob": 0.1, "attention_dropout_prob": 0.1, "output_dropout_prob": 0.1}
        shapes = {"glm.transformer.position_embeddings.weight": (max_len + 1, hidden),
                  "glm.transformer.layers.0.mlp.dense_h_to_4h.weight": (4 * hidden, hidden)}
        imported = match_preset("glm1", GLM1_PRESETS, glm1_fields(config, shapes), {})
        assert (imported.preset, imported.fields) == (preset, {"vocab_size": vocab})
        assert imported.config == model_config(preset)
