"""GLM-4 interoperability: export_hf output loads into transformers (GlmForCausalLM; with the run's
tokenizer, AutoTokenizer + AutoModelForCausalLM with no extra step) and gives the same logits."""
import dataclasses
import json

import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml

from pretrain.__main__ import main as cli
from pretrain.model import build_model, export_hf
from pretrain.tokens import SpecialTokens

transformers = pytest.importorskip("transformers")

GLM4_SMALL = dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=24,
                  ffn_hidden_size=96, max_position_embeddings=128)


def small_glm4(**overrides):
    torch.manual_seed(0)
    model = build_model("glm-4-9b", **{**GLM4_SMALL, **overrides}).eval()
    with torch.no_grad():  # norms start at 1 and biases at 0: perturb them so every tensor's mapping matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def assert_same_causal_logits(model, hf_dir):
    reference = transformers.GlmForCausalLM.from_pretrained(hf_dir).eval()
    batch, seq_len = 2, 40
    input_ids = torch.randint(0, 256, (batch, seq_len), generator=torch.Generator().manual_seed(1))
    causal = dict(position_ids=torch.arange(seq_len).expand(batch, -1),
                  block_position_ids=torch.zeros(batch, seq_len, dtype=torch.long),
                  segment_ids=torch.zeros(batch, seq_len, dtype=torch.long),
                  part_a=torch.zeros(batch, seq_len, dtype=torch.bool))
    with torch.no_grad():
        ours = model(input_ids, **causal)
        theirs = reference(input_ids=input_ids).logits.float()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_exported_glm4_gives_the_same_logits_in_transformers(tmp_path, tie_embeddings):
    model = small_glm4(tie_embeddings=tie_embeddings)
    export_hf(model, tmp_path, SpecialTokens())
    assert_same_causal_logits(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is tie_embeddings


def test_export_cli_reads_a_run_directory_and_its_dcp_checkpoint(tmp_path):
    model = small_glm4()
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000005").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"resolved_model": dataclasses.asdict(model.cfg),
                                                     "resolved_special_tokens": SpecialTokens().roles()}))
    dcp.save({"model": model.state_dict()}, checkpoint_id=run / "checkpoints" / "step_00000005")
    (run / "checkpoints" / "step_00000005" / "complete").touch()
    assert cli(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert_same_causal_logits(model, tmp_path / "hf")


def test_export_cli_reports_what_is_missing(tmp_path, capsys):
    assert cli(["export", str(tmp_path), "--out", str(tmp_path / "hf")]) == 2
    assert f"config file {tmp_path / 'config.yaml'} does not exist" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"resolved_model": dataclasses.asdict(small_glm4().cfg)}))
    assert cli(["export", str(tmp_path), "--out", str(tmp_path / "hf")]) == 2
    assert f"no complete checkpoint under {tmp_path / 'checkpoints'}" in capsys.readouterr().err


def test_export_refuses_architectures_transformers_would_compute_differently(tmp_path):
    with pytest.raises(ValueError, match=r"this model has \{'position_encoding': 'learned_2d'"):
        export_hf(build_model("glm-tiny"), tmp_path, SpecialTokens())
    assert not (tmp_path / "config.json").exists()


def test_exported_directory_loads_with_auto_classes_tokenizer_and_generation_config(tmp_path):
    from hf_assets import save_hf_glm4, save_hf_tokenizer, train_bpe
    from pretrain.train.run_dir import load_trained_model, resolved_special_tokens, run_tokenizer
    save_hf_tokenizer(train_bpe(), tmp_path / "hf")
    save_hf_glm4(tmp_path / "hf", vocab_size=512)
    assert cli(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    assert cli(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ours, special = run_tokenizer(tmp_path / "run"), resolved_special_tokens(tmp_path / "run")
    text = "The quick brown fox, 1234."
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ours.encode(text, add_special_tokens=False).ids
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.cls_token_id, tokenizer.mask_token_id) == \
        (special.pad, special.eos, special.cls, special.mask)
    assert tokenizer("a [gMASK]<sop>", add_special_tokens=False)["input_ids"][-2:] == [special.gmask, special.sop]
    assert model.generation_config.eos_token_id == [special.eos, special.eop]
    assert model.generation_config.pad_token_id == special.pad
    assert f"{model.num_parameters():,} parameters" in (tmp_path / "out" / "README.md").read_text()
    input_ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    causal = dict(position_ids=torch.arange(input_ids.shape[1])[None], block_position_ids=torch.zeros_like(input_ids),
                  segment_ids=torch.zeros_like(input_ids), part_a=torch.zeros_like(input_ids, dtype=torch.bool))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids).logits,
                                   load_trained_model(tmp_path / "run")(input_ids, **causal), atol=1e-5, rtol=1e-5)
