"""The exported model under lm-eval (lm-evaluation-harness, its ``hf`` model type), offline, on two
small local tasks the test writes: a JSONL multiple-choice task and a LAMBADA-style cloze task.
lm-eval's per-request log-likelihoods must equal our model's own (causal view, the same tokens), so
the numbers it reports are the numbers of the model we trained."""
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from pretrain.data.tokenizer import resolve_special_tokens, train_tokenizer
from pretrain.model import build_model, export_hf

lm_eval = pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")

SENTENCES = ["The cat sat on the mat.", "A dog ran in the park.", "Paris is the capital of France.",
             "Water boils at one hundred degrees.", "The sun rises in the east."]
MC = [{"question": "Where did the cat sit?", "choices": ["on the mat", "in the park", "in France"], "label": 0},
      {"question": "Where did the dog run?", "choices": ["on the mat", "in the park"], "label": 1},
      {"question": "What is the capital of France?", "choices": ["Rome", "Paris", "Berlin", "Madrid"], "label": 1},
      {"question": "Where does the sun rise?", "choices": ["in the west", "in the east"], "label": 1}]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread


def task_files(folder: Path) -> Path:
    """Two lm-eval tasks over local JSONL files (datasets' json builder: no network)."""
    (folder / "mc.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in MC))
    (folder / "cloze.jsonl").write_text("".join(json.dumps({"text": s.rstrip(".")}) + "\n" for s in SENTENCES))
    common = {"dataset_path": "json", "test_split": "test", "metadata": {"version": 1.0}}
    tasks = {
        "glm_local_mc": {"output_type": "multiple_choice", "doc_to_text": "Question: {{question}}\nAnswer:",
                         "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
                         "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]},
        "glm_local_cloze": {"output_type": "loglikelihood",  # lm-eval's own lambada_openai recipe
                            "doc_to_text": "{{text.split(' ')[:-1]|join(' ')}}",
                            "doc_to_target": "{{' '+text.split(' ')[-1]}}",
                            "metric_list": [{"metric": "perplexity", "aggregation": "perplexity",
                                             "higher_is_better": False},
                                            {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]},
    }
    for name, task in tasks.items():
        data = folder / f"{name.removeprefix('glm_local_')}.jsonl"
        kwargs = {"data_files": {"test": str(data)}, "cache_dir": str(folder / "datasets-cache")}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **common, "dataset_kwargs": kwargs, **task}))
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small GLM-4-shaped model and our trained BPE, exported as a transformers directory."""
    folder = tmp_path_factory.mktemp("hf")
    tokenizer = train_tokenizer(SENTENCES * 10 + [d["question"] + " " + " ".join(d["choices"]) for d in MC] * 10,
                                vocab_size=320)
    torch.manual_seed(0)
    model = build_model("glm-4-9b", vocab_size=tokenizer.get_vocab_size(), hidden_size=64, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=16, ffn_hidden_size=96, max_position_embeddings=128).eval()
    with torch.no_grad():  # spread the logits so choices differ clearly
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    export_hf(model, folder, resolve_special_tokens(tokenizer), tokenizer)  # with its tokenizer files
    return folder, model


def our_loglikelihood(model, hf_tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """Sum of log p(continuation | context) and whether every continuation token is the argmax, with
    lm-eval's tokenization (whole = context + continuation, split after the context's tokens)."""
    whole = hf_tokenizer.encode(context + continuation, add_special_tokens=False)
    split = len(hf_tokenizer.encode(context, add_special_tokens=False))
    ids = torch.tensor([whole])
    n = len(whole)
    causal = dict(position_ids=torch.arange(n)[None], block_position_ids=torch.zeros(1, n, dtype=torch.long),
                  segment_ids=torch.zeros(1, n, dtype=torch.long), part_a=torch.zeros(1, n, dtype=torch.bool))
    with torch.no_grad():
        logprobs = model(ids, **causal)[0, split - 1:n - 1].log_softmax(-1)
    targets = ids[0, split:]
    return logprobs.gather(-1, targets[:, None]).sum().item(), bool((logprobs.argmax(-1) == targets).all())


def test_exported_model_runs_under_lm_eval_with_our_loglikelihoods(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder, model = exported
    from lm_eval.tasks import TaskManager
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={folder},dtype=float32", tasks=["glm_local_mc", "glm_local_cloze"],
        task_manager=TaskManager(include_path=str(task_files(tmp_path)), include_defaults=False), device="cpu",
        batch_size=2,
        log_samples=True)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)

    mc = sorted(results["samples"]["glm_local_mc"], key=lambda s: s["doc_id"])
    assert len(mc) == len(MC)
    correct = 0
    for sample, doc in zip(mc, MC):
        context = f"Question: {doc['question']}\nAnswer:"
        ours = [our_loglikelihood(model, hf_tokenizer, context, " " + choice)[0] for choice in doc["choices"]]
        theirs = [response[0] for response in sample["filtered_resps"]]
        assert theirs == pytest.approx(ours, abs=1e-4)
        correct += max(range(len(ours)), key=ours.__getitem__) == doc["label"]
    assert results["results"]["glm_local_mc"]["acc,none"] == pytest.approx(correct / len(MC))

    cloze = sorted(results["samples"]["glm_local_cloze"], key=lambda s: s["doc_id"])
    ours = [our_loglikelihood(model, hf_tokenizer, context, " " + word)
            for context, word in (s.rstrip(".").rsplit(" ", 1) for s in SENTENCES)]
    for sample, (loglikelihood, greedy) in zip(cloze, ours):
        assert sample["filtered_resps"][0][0] == pytest.approx(loglikelihood, abs=1e-4)
        assert sample["filtered_resps"][0][1] == greedy
    metrics = results["results"]["glm_local_cloze"]
    assert metrics["acc,none"] == pytest.approx(sum(g for _, g in ours) / len(ours))
    assert metrics["perplexity,none"] == pytest.approx(math.exp(-sum(l for l, _ in ours) / len(ours)), rel=1e-4)
