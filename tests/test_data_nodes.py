"""Many nodes: any number of nodes gives the single-node output byte for byte; a missing share is refused by
node and input; a node that died is simply re-run; the node comes from arguments, Slurm or torchrun."""
import json

import pytest
from hypothesis import given, strategies as st
from tokenizers import AddedToken

from pretrain.data import prepare_embedded_corpus
from pretrain.data import shards as shards_module
from pretrain.data.nodes import assign, resolve_node
from pretrain.data.preprocess import IncompleteDataError, Setup, finalize, preprocess, run_node
from pretrain.data.sources import Input, SourceOptions, read_sources
from pretrain.data.store import read_manifest
from pretrain.data.tokenizer import load_tokenizer, save_tokenizer, tokenizer_fingerprint
from test_data_preprocess import tree

SHARD_DOCUMENTS = 3


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return prepare_embedded_corpus(tmp_path_factory.getbasetemp() / "data-cache") / "tokenizer.json"


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """Three languages over seven files of different sizes, one of them with a repeated document, plus a
    file whose rows name their language."""
    folder = tmp_path_factory.mktemp("nodes-corpus")
    for lang, files in (("en", 3), ("de", 2), ("fi", 2)):
        (folder / lang).mkdir()
        for index in range(files):
            docs = [f"{lang} file {index} document {d}: " + "words " * (d * index % 7) for d in range(2 + 3 * index)]
            lines = [json.dumps({"text": t}) + "\n" for t in docs + docs[:1]]  # one repeat: a duplicate
            (folder / lang / f"part-{index}.jsonl").write_text("".join(lines))
    rows = [{"lang": "sv", "text": f"svensk text {i}"} for i in range(4)] + [{"lang": "no", "text": "norsk tekst"}]
    (folder / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = read_sources([f"{lang}={folder / lang}" for lang in ("en", "de", "fi")] + [str(folder / "mixed.jsonl")],
                        options=SourceOptions(lang_column="lang"))
    assert len(plan.inputs) == 8
    return plan


@pytest.fixture(scope="module")
def single(plan, tokenizer_path, tmp_path_factory):
    return preprocess(plan, tokenizer_path, tmp_path_factory.mktemp("single"), shard_documents=SHARD_DOCUMENTS,
                      dedup=True, progress=False)


@pytest.mark.parametrize("num_nodes", [2, 3])
def test_nodes_give_the_single_node_output_byte_for_byte(plan, tokenizer_path, single, tmp_path, num_nodes):
    setup = Setup(tmp_path / "out", tokenizer_path, SHARD_DOCUMENTS, plan.options)
    done = [run_node(plan, setup, num_nodes=num_nodes, node_rank=rank, progress=False) for rank in range(num_nodes)]
    assert all(done) and sum(map(len, done)) == len(plan.inputs)  # every node had work, every input once
    finalize(plan, setup, dedup=True, num_nodes=num_nodes)
    assert tree(setup.root) == tree(single)


def test_a_missing_share_is_refused_by_name_and_a_node_that_died_is_rerun(plan, tokenizer_path, single, tmp_path,
                                                                           monkeypatch):
    setup = Setup(tmp_path / "out", tokenizer_path, SHARD_DOCUMENTS, plan.options)
    owner = assign(plan.inputs, 3)
    for rank in (0, 2):
        run_node(plan, setup, num_nodes=3, node_rank=rank, progress=False)
    lost = [s.location for s, node in zip(plan.inputs, owner) if node == 1]
    with pytest.raises(IncompleteDataError, match=rf"{len(lost)} of 8 inputs .* node 1 of 3: {len(lost)} input\(s\) "
                                                  rf"\({lost[0]}.*re-run those nodes"):
        finalize(plan, setup, num_nodes=3)

    real_close, closed = shards_module.ShardWriter.close, []

    def dies_on_the_second_shard(writer, rows):  # node 1 is killed while writing its second shard
        if closed:
            raise KeyboardInterrupt("node lost")
        closed.append(writer.bin_path)
        return real_close(writer, rows)
    monkeypatch.setattr(shards_module.ShardWriter, "close", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        run_node(plan, setup, num_nodes=3, node_rank=1, progress=False)
    assert list(setup.root.rglob(".shard-*.tmp*"))  # it left a half-written shard behind
    monkeypatch.setattr(shards_module.ShardWriter, "close", real_close)
    finished_first = closed[0].stat().st_mtime_ns
    run_node(plan, setup, num_nodes=3, node_rank=1, progress=False)  # simply re-run the node
    assert closed[0].stat().st_mtime_ns == finished_first  # its finished shard is kept, not redone
    finalize(plan, setup, dedup=True, num_nodes=3)
    assert tree(setup.root) == tree(single)


def copy_records(plan, single, setup):
    """The input records of the single-node run, as if its nodes had run into ``setup.root``."""
    for source in plan.inputs:
        (setup.root / ".inputs" / source.group).mkdir(parents=True, exist_ok=True)
        (setup.root / ".inputs" / source.group / f"{source.ordinal:05d}.json").write_bytes(
            (single / ".inputs" / source.group / f"{source.ordinal:05d}.json").read_bytes())


def test_inputs_changed_since_a_node_ran_are_not_taken_as_done(plan, tokenizer_path, single, tmp_path):
    setup = Setup(tmp_path / "out", tokenizer_path, SHARD_DOCUMENTS + 1, plan.options)  # another --shard-documents
    copy_records(plan, single, setup)
    with pytest.raises(IncompleteDataError, match="8 of 8 inputs have no finished record"):
        finalize(plan, setup)


def test_finalize_with_another_tokenizer_names_both(plan, tokenizer_path, single, tmp_path):
    ours = tokenizer_fingerprint(load_tokenizer(tokenizer_path))
    assert read_manifest(single)["tokenizer_fingerprint"] == ours
    other = load_tokenizer(tokenizer_path)
    other.add_special_tokens([AddedToken("<extra>", special=True)])  # another id for a text: another fingerprint
    save_tokenizer(other, tmp_path / "other.json")
    setup = Setup(tmp_path / "out", tmp_path / "other.json", SHARD_DOCUMENTS, plan.options)
    copy_records(plan, single, setup)
    with pytest.raises(IncompleteDataError, match=rf"was tokenized with tokenizer fingerprint {ours}, but --tokenizer "
                                                  rf".*other.json has fingerprint {tokenizer_fingerprint(other)}"):
        finalize(plan, setup)


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=40), st.integers(1, 6))
def test_assignment_gives_every_input_to_one_node_and_balances_bytes(sizes, num_nodes):
    inputs = [Input("en", "text", i, f"f{i}", "json", size, str(i)) for i, size in enumerate(sizes)]
    owner = assign(inputs, num_nodes)
    assert owner == assign(inputs, num_nodes) and all(0 <= r < num_nodes for r in owner)
    loads = [sum(max(s, 1) for s, r in zip(sizes, owner) if r == node) for node in range(num_nodes)]
    assert max(loads) - min(loads) <= max(max(s, 1) for s in sizes)  # greedy largest-first bound


def test_the_node_comes_from_arguments_slurm_or_torchrun():
    assert resolve_node(None, None, {}) == (1, 0)
    assert resolve_node(4, 3, {"RANK": "1", "WORLD_SIZE": "2"}) == (4, 3)
    assert resolve_node(None, None, {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4",
                                     "SLURM_ARRAY_TASK_MIN": "5", "RANK": "0", "WORLD_SIZE": "8"}) == (4, 2)
    assert resolve_node(None, None, {"RANK": "1", "WORLD_SIZE": "2"}) == (2, 1)
    with pytest.raises(ValueError, match=r"--num-nodes 3 needs --node-rank"):
        resolve_node(3, None, {})
    with pytest.raises(ValueError, match=r"node rank 3 of 3 nodes"):
        resolve_node(3, 3, {})
