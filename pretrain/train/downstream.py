"""Downstream metrics of the trainer's eval (``eval.downstream``): numbers an ablation is judged by
besides loss, on the held-out documents (``data.eval_documents`` per language), per language.

    eval/cloze_acc, eval/cloze_ppl                LAMBADA-style: the last word of each passage as a
                                                  [MASK] blank (Part A sees the punctuation after it)
    eval/cloze_causal_acc, eval/cloze_causal_ppl  the same word as the start of a [gMASK] continuation
                                                  (Part A is the context only: the causal view)
    eval/infill_acc, eval/infill_ppl              [MASK] spans drawn by the token strategy (eval
                                                  objective's token section: mask_ratio, span lengths; eval.seed),
                                                  every token of the spans (not the closing eop)

Accuracy: cloze counts a passage when the model's greedy choice is right for every token of the word
(given the gold prefix); infill counts tokens. Perplexity: exp of the mean cross entropy over the
scored tokens. Each key also comes per language (``eval/cloze_acc/de``); cloze needs a
space-delimited last word (cloze.py), so Chinese and Japanese have none.

The examples are built identically on every rank, laid out into rows of ``seq_len`` (encoded as the
eval objective encodes: block positions or not; [gMASK] blocks at the mask's position or prolonging
the text, as objective.gmask_positions resolves for the model), padded to a multiple of
micro_batch_size × dp and split evenly: every rank runs the same forwards, each sums its examples'
counts, and one all-reduce over the data-parallel group gives every rank the totals. TP ranks hold
the same rows; vocab-sharded logits are handled by DTensor (loss_parallel cross entropy, argmax).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from pretrain.data.index import split_documents
from pretrain.generate.cloze import cloze_example
from pretrain.generate.scoring import Scored, example_counts, layout_scored
from pretrain.objectives import STRATEGIES, raw_length, resolve_gmask_positions
from pretrain.objectives.strategies.base import Context
from pretrain.train.config import Config
from pretrain.train.loss import loss_context, token_cross_entropy

TASKS = ("cloze", "cloze_causal", "infill")
# the model call of docs/contracts.md §5, in order
MODEL_INPUTS = ("input_ids", "position_ids", "block_position_ids", "segment_ids", "part_a")


def held_out_documents(store, eval_documents: int, limit: int | None) -> dict[str, list[np.ndarray]]:
    """Per language, the held-out documents (the valid split's, in id order), at most ``limit``."""
    documents = {}
    for lang in sorted(store.languages):
        language = store.languages[lang]
        held_out = split_documents(language.n_docs, lang, eval_documents)[1][:limit]
        documents[lang] = [np.asarray(language.document(int(doc)), dtype=np.int64) for doc in held_out]
    return documents


def build_examples(cfg: Config, source) -> tuple[list[Scored], list[tuple[str, str]]]:
    """Every example and its (task, language), the same on every rank."""
    special, seq_len = source.special, cfg.train.seq_len
    token_cfg = dataclasses.replace(cfg.eval_objective(), strategy="token", mixture={})
    spans = STRATEGIES["token"](token_cfg.token, Context(special))
    window = raw_length(token_cfg, seq_len)
    examples, labels = [], []
    documents = held_out_documents(source.store, cfg.data.eval_documents, cfg.eval.downstream_documents)
    for lang, docs in documents.items():
        for doc in docs:
            cloze = cloze_example(source.tokenizer.decode(doc.tolist()), source.tokenizer, special, seq_len - 2)
            if cloze is not None:
                start, end = cloze.word_start, cloze.word_start + cloze.word_len
                examples += [Scored(cloze.tokens, np.array([[start, end]]), special.mask, cloze.word_len),
                             Scored(cloze.tokens, np.array([[start, len(cloze.tokens)]]), special.gmask,
                                    cloze.word_len)]
                labels += [("cloze", lang), ("cloze_causal", lang)]
            framed = np.concatenate([[special.cls], doc, [special.eos]])[:window]
            if len(framed) > 2:  # a maskable token besides cls and the last one
                drawn = spans.spans_for(framed, cfg.eval.seed, sample_id=len(labels))
                examples.append(Scored(framed, np.array(drawn, dtype=np.int64).reshape(-1, 2), special.mask))
                labels.append(("infill", lang))
    return examples, labels


class Downstream:
    """The eval/* downstream keys. The examples depend on the config and eval.seed only: they are drawn
    and laid out once, then scored with the model at every evaluation."""

    def __init__(self, cfg: Config, s):
        examples, self.labels = build_examples(cfg, s.data)
        self.s, self.micro, self.n_examples = s, cfg.train.micro_batch_size, len(examples)
        objective = resolve_gmask_positions(cfg.eval_objective(), s.model_cfg.position_encoding)
        self.batch = layout_scored(examples, cfg.train.seq_len, s.data.special, objective.block_positions,
                                   rows_multiple=self.micro * s.dims.dp,
                                   gmask_positions=objective.gmask_positions) if examples else None

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        """Collective over the data-parallel group (call it on every rank)."""
        if self.batch is None:
            return {}
        s, micro = self.s, self.micro
        per_rank = len(self.batch["input_ids"]) // s.dims.dp
        first = dist.get_rank(s.dp_group) * per_rank
        counts = torch.zeros(self.n_examples, 3, dtype=torch.float64, device=s.device)
        for start in range(first, first + per_rank, micro):
            rows = {k: torch.from_numpy(v[start:start + micro]).to(s.device) for k, v in self.batch.items()}
            logits = model(*(rows[k] for k in MODEL_INPUTS))
            with loss_context(logits):
                ce = token_cross_entropy(logits, rows["target_ids"])
            predicted = logits.argmax(dim=-1)
            predicted = predicted.full_tensor() if isinstance(predicted, DTensor) else predicted
            counts += example_counts(rows["example"], predicted == rows["target_ids"], ce, self.n_examples)
        dist.all_reduce(counts, group=s.dp_group)
        return summarize(counts.cpu().numpy(), self.labels)


def summarize(counts: np.ndarray, labels: list[tuple[str, str]]) -> dict[str, float]:
    """counts [N, 3] (scored, correct, CE sum) -> eval/<task>_acc and _ppl, overall and per language."""
    tasks = np.array([task for task, _ in labels])
    langs = np.array([lang for _, lang in labels])
    metrics = {}
    for task in TASKS:
        for lang in [None, *sorted(set(langs[tasks == task]))]:
            chosen = counts[(tasks == task) & ((langs == lang) if lang else True)]
            scored, correct, ce = chosen.sum(axis=0)
            if scored == 0:
                continue
            whole = chosen[:, 1] == chosen[:, 0]  # cloze: every token of the word right
            suffix = f"/{lang}" if lang else ""
            metrics[f"eval/{task}_acc{suffix}"] = float(correct / scored if task == "infill" else whole.mean())
            metrics[f"eval/{task}_ppl{suffix}"] = math.exp(ce / scored)
    return metrics
