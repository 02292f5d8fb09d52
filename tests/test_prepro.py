"""prepro: label map, features (pairs, labels, markers, special tokens, truncation), cache, bad input."""
from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import feature_cache
import prepro
from conftest import shared_file
from prepro import check_num_class, features_from_documents, load_rel2id, read_docred
from settings import DocRESettings

REL2ID = {"Na": 0, "P17": 1, "P131": 2, "P27": 3}
SETTINGS = DocRESettings(REL2ID)


def make_doc(title="Doc A", labels=True):
    """A small valid document: 3 entities, one with two mentions, 2 sentences."""
    doc = {
        "title": title,
        "sents": [["Alice", "Smith", "was", "born", "in", "Paris", "."], ["She", "moved", "to", "France", "."]],
        "vertexSet": [
            [{"name": "Alice Smith", "pos": [0, 2], "sent_id": 0, "type": "PER"},
             {"name": "She", "pos": [0, 1], "sent_id": 1, "type": "PER"}],
            [{"name": "Paris", "pos": [5, 6], "sent_id": 0, "type": "LOC"}],
            [{"name": "France", "pos": [3, 4], "sent_id": 1, "type": "LOC"}],
        ],
    }
    if labels:
        doc["labels"] = [{"h": 1, "t": 2, "r": "P17", "evidence": [0, 1]},
                         {"h": 0, "t": 2, "r": "P27", "evidence": [1]}]
    return doc


def write(tmp_path: Path, docs, name="data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(docs), encoding="utf-8")
    return path


def tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def gold_labels(doc, rel2id):
    """{(pair index, relation id)} from a JSON document, as the contract orders hts."""
    n = len(doc["vertexSet"])
    hts = [(h, t) for h in range(n) for t in range(n) if h != t]
    return {(hts.index((lab["h"], lab["t"])), rel2id[lab["r"]]) for lab in doc.get("labels", []) if lab["h"] != lab["t"]}


def check_features(features, docs, rel2id, tokenizer, marker=True):
    """The contract, document by document, against the JSON it came from."""
    assert len(features) == len(docs)
    for doc, f in zip(docs, features):
        n = len(doc["vertexSet"])
        assert f["title"] == doc["title"]
        assert f["hts"].shape == (n * (n - 1), 2)
        assert [tuple(p) for p in f["hts"].tolist()] == [(h, t) for h in range(n) for t in range(n) if h != t]
        assert {tuple(x) for x in f["labels"].tolist()} == gold_labels(doc, rel2id)
        assert len(f["labels"]) == len(gold_labels(doc, rel2id))  # no duplicates kept
        assert len(f["entity_pos"]) == n == len(f["mention_sent_ids"])
        toks = tokens(tokenizer, f["input_ids"])
        for ent, spans, sent_ids in zip(doc["vertexSet"], f["entity_pos"], f["mention_sent_ids"]):
            assert sent_ids == [m["sent_id"] for m in ent][:len(spans)]
            for start, end in spans:
                assert 0 <= start < end <= len(f["input_ids"])
                if marker:
                    assert toks[start].lstrip("Ġ▁") == "*" and toks[end - 1].lstrip("Ġ▁") == "*"


# ----------------------------------------------------------------------------- label map


def test_load_rel2id_prefers_file_then_rel_info_then_meta(tmp_path):
    (tmp_path / "rel_info.json").write_text(json.dumps({"P9": "x", "P2": "y", "P5": "z"}))
    assert load_rel2id(data_dir=str(tmp_path)) == {"Na": 0, "P9": 1, "P2": 2, "P5": 3}  # file order, not sorted
    (tmp_path / "map.json").write_text(json.dumps({"Na": 0, "P5": 1}))
    assert load_rel2id(data_dir=str(tmp_path), rel2id_file=str(tmp_path / "map.json")) == {"Na": 0, "P5": 1}
    other = tmp_path / "other_info.json"
    other.write_text(json.dumps({"P1": "a"}))
    assert load_rel2id(rel_info_file=str(other)) == {"Na": 0, "P1": 1}
    meta = load_rel2id(data_dir=str(tmp_path / "nowhere"))
    assert meta["Na"] == 0 and len(meta) == 97 and meta["P6"] == 1 and meta["P17"] == 2


def test_load_rel2id_rejects_a_bad_map(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"P5": 0, "Na": 1}))
    with pytest.raises(ValueError, match="'Na'"):
        load_rel2id(rel2id_file=str(tmp_path / "map.json"))
    (tmp_path / "map.json").write_text(json.dumps({"Na": 0, "P5": 2}))
    with pytest.raises(ValueError, match="0..1"):
        load_rel2id(rel2id_file=str(tmp_path / "map.json"))


def test_build_meta_writes_na_first_then_rel_info_order(tmp_path):
    info = tmp_path / "rel_info.json"
    info.write_text(json.dumps({"P17": "country", "P6": "head of government"}))
    out = tmp_path / "meta" / "rel2id.json"
    prepro.main(["--build_meta", "--rel_info", str(info), "--out", str(out)])
    assert list(json.loads(out.read_text()).items()) == [("Na", 0), ("P17", 1), ("P6", 2)]


def test_check_num_class():
    assert check_num_class(REL2ID, None) == 4 and check_num_class(REL2ID, 4) == 4
    with pytest.raises(ValueError, match="--num_class 97 does not match .* 4 classes"):
        check_num_class(REL2ID, 97)


# ----------------------------------------------------------------------------- features


def test_hand_made_document(tmp_path, minilm_tokenizer):
    docs = [make_doc(), make_doc("Doc B", labels=False)]
    features = read_docred(write(tmp_path, docs), minilm_tokenizer, SETTINGS)
    check_features(features, docs, REL2ID, minilm_tokenizer)
    f = features[0]
    toks = tokens(minilm_tokenizer, f["input_ids"])
    assert toks == ["[CLS]", "*", "alice", "smith", "*", "was", "born", "in", "*", "paris", "*", ".",
                    "*", "she", "*", "moved", "to", "*", "france", "*", ".", "[SEP]"]
    assert f["entity_pos"] == [[(1, 5), (12, 15)], [(8, 11)], [(17, 20)]]
    assert f["mention_sent_ids"] == [[0, 1], [0], [0 + 1]]
    assert f["labels"].tolist() == [[3, 1], [1, 3]]  # (1, 2) is pair 3, (0, 2) is pair 1
    assert features[1]["labels"].shape == (0, 2)
    assert features.stats["documents"] == 2 and features.stats["positive_pairs"] == 2
    assert features.stats["negative_pairs"] == 2 * 6 - 2


def sentence_tokens(tokenizer, f):
    """The tokens of each sentence span of a feature."""
    toks = tokens(tokenizer, f["input_ids"])
    return [toks[start:end] for start, end in f["sent_pos"].tolist()]


def test_sentence_spans_and_evidence(tmp_path, minilm_tokenizer):
    f = read_docred(write(tmp_path, [make_doc()]), minilm_tokenizer, SETTINGS)[0]
    assert f["sent_pos"].dtype == np.int32 and f["sent_pos"].tolist() == [[1, 12], [12, 21]]
    assert sentence_tokens(minilm_tokenizer, f) == [
        ["*", "alice", "smith", "*", "was", "born", "in", "*", "paris", "*", "."],
        ["*", "she", "*", "moved", "to", "*", "france", "*", "."]]
    assert f["labels"].tolist() == [[3, 1], [1, 3]] and f["evidence"] == [[0, 1], [1]]  # one list per label row
    plain = read_docred(write(tmp_path, [make_doc()]), minilm_tokenizer, SETTINGS.replace(entity_marker=None))[0]
    assert sentence_tokens(minilm_tokenizer, plain) == [["alice", "smith", "was", "born", "in", "paris", "."],
                                                        ["she", "moved", "to", "france", "."]]


def test_evidence_of_a_dropped_duplicate_and_of_a_label_without_evidence(tmp_path, minilm_tokenizer):
    doc = make_doc()
    doc["labels"] += [{"h": 1, "t": 2, "r": "P17", "evidence": [1]}, {"h": 2, "t": 0, "r": "P131"}]
    f = read_docred(write(tmp_path, [doc]), minilm_tokenizer, SETTINGS)[0]
    assert f["labels"].tolist() == [[3, 1], [1, 3], [4, 2]] and f["evidence"] == [[0, 1], [1], []]


def test_markers_off_point_at_the_first_word_piece(tmp_path, minilm_tokenizer):
    f = read_docred(write(tmp_path, [make_doc()]), minilm_tokenizer, SETTINGS.replace(entity_marker=None))[0]
    toks = tokens(minilm_tokenizer, f["input_ids"])
    assert "*" not in toks
    assert [toks[s:e] for s, e in f["entity_pos"][0]] == [["alice", "smith"], ["she"]]


def test_overlapping_and_shared_boundaries_get_one_marker_per_word(tmp_path, minilm_tokenizer):
    doc = make_doc()
    doc["vertexSet"].append([{"name": "Smith", "pos": [1, 2], "sent_id": 0, "type": "PER"}])  # ends with Alice Smith
    features = read_docred(write(tmp_path, [doc]), minilm_tokenizer, SETTINGS)
    check_features(features, [doc], REL2ID, minilm_tokenizer)
    toks = tokens(minilm_tokenizer, features[0]["input_ids"])
    assert toks[:7] == ["[CLS]", "*", "alice", "*", "smith", "*", "was"]


def test_long_documents_are_truncated_and_reported(tmp_path, minilm_tokenizer, caplog):
    doc = make_doc()
    filler = ["word"] * 60
    doc["sents"].insert(1, filler)  # France (sentence 2 now) falls past the end; "She" too
    for ent in doc["vertexSet"]:
        for m in ent:
            m["sent_id"] += m["sent_id"] >= 1
    with caplog.at_level(logging.WARNING, logger="prepro"):
        features = read_docred(write(tmp_path, [doc]), minilm_tokenizer, SETTINGS.replace(max_seq_length=40))
    f = features[0]
    assert len(f["input_ids"]) == 40 and tokens(minilm_tokenizer, f["input_ids"][-1:]) == ["[SEP]"]
    assert f["entity_pos"] == [[(1, 5)], [(8, 11)], []]  # Alice keeps one mention, France none
    assert f["mention_sent_ids"] == [[0], [0], []]
    assert f["sent_pos"].tolist() == [[1, 12], [12, 39], [39, 39]]  # cut at the [SEP]; past it: empty, kept
    assert f["evidence"] == [[0, 1], [1]]  # the JSON's sentence ids, whether or not the sentence survived
    assert f["n_truncated_mentions"] == 2
    assert f["n_read_words"] == 7 + 27  # sentence 0 and the filler words of tokens 12..38
    whole = features_from_documents([make_doc()], minilm_tokenizer, SETTINGS.replace(max_seq_length=40))
    assert whole[0]["n_read_words"] == 12  # every word
    s = features.stats
    assert (s["truncated_documents"], s["truncated_mentions"], s["truncated_entities"]) == (1, 2, 1)
    assert s["token_length_max"] > 40
    assert "2 mention(s) fell past the end" in caplog.text and "1 entit" in caplog.text


def test_synthetic_corpus(synthetic_dir, minilm_tokenizer):
    rel2id = load_rel2id(data_dir=str(synthetic_dir))
    for name in ("train_annotated.json", "dev.json", "test.json"):
        docs = json.loads((synthetic_dir / name).read_text())
        features = read_docred(synthetic_dir / name, minilm_tokenizer, DocRESettings(rel2id))
        check_features(features, docs, rel2id, minilm_tokenizer)
        if name == "test.json":
            assert all(f["labels"].shape == (0, 2) for f in features)
        else:
            assert features.stats["positive_pairs"] > 0


def test_features_batch_through_the_collator(synthetic_dir, minilm_tokenizer):
    from collate import DocRECollator

    rel2id = load_rel2id(data_dir=str(synthetic_dir))
    features = read_docred(synthetic_dir / "dev.json", minilm_tokenizer, DocRESettings(rel2id))
    batch = DocRECollator(len(rel2id), minilm_tokenizer.pad_token_id)(features[:4])
    assert batch["labels"].shape == (sum(len(f["hts"]) for f in features[:4]), len(rel2id))
    assert batch["labels"][:, 1:].sum() == sum(len(f["labels"]) for f in features[:4])
    ids = batch["input_ids"][batch["mention_doc"], batch["mention_pos"]]
    assert (ids == minilm_tokenizer.convert_tokens_to_ids("*")).all()


def test_real_dev_file(minilm_tokenizer):
    path = shared_file("redocred", "dev_revised.json")
    rel2id = load_rel2id(rel2id_file=str(shared_file("docred-meta", "rel2id.json")))
    docs = json.loads(path.read_text())
    features = read_docred(path, minilm_tokenizer, DocRESettings(rel2id))
    check_features(features, docs, rel2id, minilm_tokenizer)
    assert features.stats["documents"] == 500 and features.stats["truncated_mentions"] == 0
    # the batch-of-distinct-words tokenization equals tokenizing each whole document
    for doc, f in zip(docs[:100], features):
        words = prepro.mark_words(doc, "*")[0]
        assert f["input_ids"].tolist() == minilm_tokenizer(words, is_split_into_words=True)["input_ids"]
    for doc, f in zip(docs, features):
        n_sents, pos = len(doc["sents"]), f["sent_pos"]
        assert pos.shape == (n_sents, 2) and pos[0, 0] == 1 and pos[-1, 1] == len(f["input_ids"]) - 1
        assert (pos[1:, 0] == pos[:-1, 1]).all() and (pos[:, 0] < pos[:, 1]).all()
        for spans, sent_ids in zip(f["entity_pos"], f["mention_sent_ids"]):
            assert all(pos[s, 0] <= a < b <= pos[s, 1] for (a, b), s in zip(spans, sent_ids))
        assert all(0 <= s < n_sents for evidence in f["evidence"] for s in evidence)
        n = len(doc["vertexSet"])
        gold = {(lab["h"] * (n - 1) + lab["t"] - (lab["t"] > lab["h"]), rel2id[lab["r"]]): lab["evidence"]
                for lab in reversed(doc["labels"])}  # reversed: the first of duplicates wins, as in prepro
        assert f["evidence"] == [gold[tuple(row)] for row in f["labels"].tolist()]


def test_special_tokens_and_markers_of_each_tokenizer(tmp_path, tiny_encoder_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    docs = [make_doc(), make_doc("Doc B")]
    features = read_docred(write(tmp_path, docs), tokenizer, SETTINGS)
    check_features(features, docs, REL2ID, tokenizer)
    specials = tokenizer("x")["input_ids"]
    content = tokenizer("x", add_special_tokens=False)["input_ids"]
    n_prefix = specials.index(content[0])
    ids = features[0]["input_ids"].tolist()
    assert ids[:n_prefix] == specials[:n_prefix] and ids[len(ids) - (len(specials) - n_prefix - 1):] == \
        specials[n_prefix + 1:]
    assert ids[0] in (tokenizer.cls_token_id, tokenizer.bos_token_id)
    assert ids[-1] in (tokenizer.sep_token_id, tokenizer.eos_token_id)


def test_byte_level_words_get_their_leading_space(tmp_path, tiny_roberta_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    assert not tokenizer.backend_tokenizer.pre_tokenizer.add_prefix_space
    doc = make_doc()
    f = read_docred(write(tmp_path, [doc]), tokenizer, SETTINGS)[0]
    # exactly the tokens of the running text " * Alice Smith * was born ...", every word with its space
    words = prepro.mark_words(doc, "*")[0]
    assert f["input_ids"][1:-1].tolist() == tokenizer(" " + " ".join(words), add_special_tokens=False)["input_ids"]
    assert tokens(tokenizer, f["input_ids"][1:4]) == ["Ġ*", "ĠAlice", "Ġ"]


def test_slow_tokenizer_fallback_matches_the_fast_path(tmp_path, minilm_tokenizer):
    class SlowWrapper:
        """A tokenizer without a Rust backend (is_fast False), delegating to MiniLM."""

        is_fast = False
        name_or_path = "slow-minilm"

        def __init__(self, tok):
            self.tok = tok

        def __call__(self, *args, **kwargs):
            return self.tok(*args, **kwargs)

        def __len__(self):
            return len(self.tok)

        def build_inputs_with_special_tokens(self, ids):  # what a transformers PythonBackend BERT does
            return [self.tok.cls_token_id] + list(ids) + [self.tok.sep_token_id]

        def get_vocab(self):
            return self.tok.get_vocab()

    path = write(tmp_path, [make_doc(), make_doc("Doc B")])
    fast = read_docred(path, minilm_tokenizer, SETTINGS)
    slow = read_docred(path, SlowWrapper(minilm_tokenizer), SETTINGS, cache_dir=tmp_path / "cache")
    assert_same_features(fast, slow)


# ----------------------------------------------------------------------------- documents in memory


@pytest.mark.parametrize("changes", [{}, {"entity_marker": None, "max_seq_length": 60}, {"entity_marker": "#"}],
                         ids=["defaults", "no_marker_truncated", "other_marker"])
def test_documents_in_memory_give_the_features_of_their_file(synthetic_dir, minilm_tokenizer, changes):
    settings = DocRESettings(load_rel2id(data_dir=str(synthetic_dir)), **changes)
    for name in ("train_annotated.json", "dev.json", "test.json"):
        docs = json.loads((synthetic_dir / name).read_text())
        from_file = read_docred(synthetic_dir / name, minilm_tokenizer, settings)
        in_memory = features_from_documents(docs, minilm_tokenizer, settings)
        assert_same_features(from_file, in_memory)
        assert in_memory.stats == from_file.stats and in_memory.path == "the documents"


def test_documents_in_memory_write_no_file(tmp_path, minilm_tokenizer, monkeypatch):
    def no_files(*args, **kwargs):
        raise AssertionError("features of documents in memory must not touch the disk")

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryDirectory"):
        monkeypatch.setattr(f"tempfile.{name}", no_files)
    doc = make_doc()
    doc.update(text="Alice Smith was born in Paris. She moved to France.", sent_spans=[[0, 30], [31, 51]])
    doc["vertexSet"][1][0]["pos"] = (np.int64(5), np.int64(6))  # built in code: NumPy integers, a tuple
    features = features_from_documents([doc, make_doc("Doc B", labels=False)], minilm_tokenizer, SETTINGS)
    assert_same_features(features, read_docred(write(tmp_path, [make_doc(), make_doc("Doc B", labels=False)]),
                                                minilm_tokenizer, SETTINGS))
    assert len(features_from_documents([], minilm_tokenizer, SETTINGS)) == 0


def test_documents_in_memory_are_validated_by_the_same_rules(minilm_tokenizer, caplog):
    bad = make_doc("Doc B")
    bad["vertexSet"][2][0]["sent_id"] = 5
    with pytest.raises(prepro.ValidationError) as err:
        features_from_documents([make_doc(), bad, make_doc()], minilm_tokenizer, SETTINGS, source="request 7")
    assert err.value.path == "request 7" and str(err.value).startswith("request 7: 2 problem(s)")
    assert "document 1 (title 'Doc B'): field vertexSet[2][0].sent_id: out of range" in str(err.value)
    assert "document 2 (title 'Doc A'): field title: the same title as document 0" in str(err.value)
    with pytest.raises(prepro.ValidationError, match="expected a list of documents, got dict"):
        features_from_documents(make_doc(), minilm_tokenizer, SETTINGS)
    unknown = make_doc()
    unknown["labels"].append({"h": 0, "t": 1, "r": "P999"})
    with pytest.raises(prepro.ValidationError, match=r"field labels\[2\]\.r: relation not in the label map"):
        features_from_documents([unknown], minilm_tokenizer, SETTINGS)
    with caplog.at_level(logging.WARNING, logger="prepro"):
        kept = features_from_documents([unknown], minilm_tokenizer, SETTINGS, skip_unknown_relations=True)
    assert kept.stats["unknown_labels"] == {"P999": 1} and "the documents: 1 label(s) of 1 relation(s)" in caplog.text


# ----------------------------------------------------------------------------- cache


def assert_same_features(a, b):
    assert len(a) == len(b)
    for fa, fb in zip(a, b):
        assert fa.keys() == fb.keys()
        for key in fa:
            if isinstance(fa[key], np.ndarray):
                assert fa[key].dtype == fb[key].dtype and np.array_equal(fa[key], fb[key]), key
            else:
                assert fa[key] == fb[key], key


def test_cache_gives_identical_features_and_is_reused(synthetic_dir, minilm_tokenizer, tmp_path, monkeypatch):
    rel2id = load_rel2id(data_dir=str(synthetic_dir))
    path = synthetic_dir / "train_annotated.json"
    fresh = read_docred(path, minilm_tokenizer, DocRESettings(rel2id))
    built = read_docred(path, minilm_tokenizer, DocRESettings(rel2id), cache_dir=tmp_path)
    assert built.cache_path and Path(built.cache_path).parent == tmp_path
    assert_same_features(fresh, built)
    assert built.stats == fresh.stats

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(prepro, "_featurize_chunk", fail)
    reloaded = read_docred(path, minilm_tokenizer, DocRESettings(rel2id), cache_dir=tmp_path)
    assert isinstance(reloaded.cols["input_ids"], np.memmap)
    assert_same_features(fresh, reloaded)
    assert_same_features(fresh, pickle.loads(pickle.dumps(reloaded)))


def test_new_feature_format_gets_a_new_cache(tmp_path, minilm_tokenizer, monkeypatch):
    path = write(tmp_path, [make_doc()])
    current = read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(feature_cache, "FEATURE_FORMAT_VERSION", feature_cache.FEATURE_FORMAT_VERSION - 1)
    older = read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=tmp_path / "cache")
    assert older.cache_path != current.cache_path
    assert_same_features(current, older)


def test_cache_key_changes_with_every_input(tmp_path, minilm_tokenizer, tiny_bert_dir):
    from transformers import AutoTokenizer

    path = write(tmp_path, [make_doc()])
    cache = tmp_path / "cache"
    base = read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=cache).cache_path
    variants = [
        read_docred(path, minilm_tokenizer, SETTINGS.replace(max_seq_length=512), cache_dir=cache),
        read_docred(path, minilm_tokenizer, SETTINGS.replace(entity_marker=None), cache_dir=cache),
        read_docred(path, minilm_tokenizer, SETTINGS.replace(entity_marker="#"), cache_dir=cache),
        read_docred(path, AutoTokenizer.from_pretrained(tiny_bert_dir), SETTINGS, cache_dir=cache),
        read_docred(path, minilm_tokenizer, DocRESettings({**REL2ID, "P1": 4}), cache_dir=cache),
    ]
    doc = make_doc()
    doc["sents"][0][0] = "Alicia"
    write(tmp_path, [doc])
    changed = read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=cache)
    assert "alicia" in tokens(minilm_tokenizer, changed[0]["input_ids"])
    paths = {base, changed.cache_path, *(v.cache_path for v in variants)}
    assert len(paths) == 7
    assert len(variants[0][0]["input_ids"]) == len(changed[0]["input_ids"])


@pytest.mark.parametrize("damage", ["truncate_column", "garble_meta", "drop_meta", "bad_token_id", "bad_offsets"])
def test_corrupted_cache_is_rebuilt_with_a_warning(tmp_path, minilm_tokenizer, caplog, damage):
    path = write(tmp_path, [make_doc(), make_doc("Doc B")])
    cache = tmp_path / "cache"
    fresh = read_docred(path, minilm_tokenizer, SETTINGS)
    folder = Path(read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=cache).cache_path)
    if damage == "truncate_column":
        data = (folder / "input_ids.bin").read_bytes()
        (folder / "input_ids.bin").write_bytes(data[:-4])
    elif damage == "garble_meta":
        (folder / "meta.json").write_text('{"key": "abc", "siz')
    elif damage == "drop_meta":  # what a half-written cache from an older, non-atomic writer would look like
        (folder / "meta.json").unlink()
    elif damage == "bad_token_id":
        ids = np.fromfile(folder / "input_ids.bin", dtype=np.int32)
        ids[3] = 10**9
        ids.tofile(folder / "input_ids.bin")
    else:
        counts = np.fromfile(folder / "entity_n_mentions.bin", dtype=np.int32)
        counts[0], counts[1] = counts[0] + 1, counts[1] - 1
        counts.tofile(folder / "entity_n_mentions.bin")
    with caplog.at_level(logging.WARNING, logger="feature_cache"):
        rebuilt = read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=cache)
    assert "corrupted or incomplete" in caplog.text and "rebuilding" in caplog.text
    assert_same_features(fresh, rebuilt)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="feature_cache"):
        read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=cache)
    assert "corrupted" not in caplog.text


def test_a_failed_build_leaves_no_cache_behind(tmp_path, minilm_tokenizer, monkeypatch):
    path = write(tmp_path, [make_doc()])
    cache = tmp_path / "cache"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepro, "_featurize_chunk", crash)
    with pytest.raises(KeyboardInterrupt):
        read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=cache)
    assert list(cache.iterdir()) == []


def cache_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "feature cache" in r.message]


@pytest.mark.parametrize("how", ["under_a_file", "read_only_folder"])
def test_unwritable_cache_falls_back_to_the_user_cache_then_off(tmp_path, minilm_tokenizer, monkeypatch, caplog,
                                                                 how):
    path = write(tmp_path, [make_doc(), make_doc("Doc B")])
    fresh = read_docred(path, minilm_tokenizer, SETTINGS)
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # nothing can be created under a regular file, not even by root
    if how == "under_a_file":
        cache = blocker / ".cache"
    else:
        cache = tmp_path / "read-only"
        cache.mkdir()
        cache.chmod(0o555)
        try:
            (cache / "probe").write_text("")
            pytest.skip("chmod does not stop this user (root) from writing; the under_a_file case covers the fallback")
        except PermissionError:
            pass
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    with caplog.at_level(logging.WARNING, logger="feature_cache"):
        moved = read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=cache)
    assert Path(moved.cache_path).parent == tmp_path / "user" / "docre"
    [warning] = cache_warnings(caplog)
    assert str(cache) in warning and f"caching features in {tmp_path / 'user' / 'docre'} instead" in warning
    assert_same_features(fresh, moved)

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Path(read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=cache).cache_path).parent == \
        tmp_path / "home" / ".cache" / "docre"

    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "user"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="feature_cache"):
        off = read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=cache)
    assert off.cache_path is None
    [warning] = cache_warnings(caplog)
    assert str(cache) in warning and str(blocker / "user" / "docre") in warning and "without a cache" in warning
    assert_same_features(fresh, off)
    if how == "read_only_folder":
        cache.chmod(0o755)


def test_an_existing_cache_in_a_read_only_folder_is_read(tmp_path, minilm_tokenizer, monkeypatch, caplog):
    path = write(tmp_path, [make_doc()])
    built = read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(feature_cache, "unwritable", lambda folder: "read-only file system")
    monkeypatch.setattr(prepro, "_featurize_chunk", None)  # nothing may be built
    with caplog.at_level(logging.WARNING, logger="feature_cache"):
        again = read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=tmp_path / "cache")
    assert again.cache_path == built.cache_path and not cache_warnings(caplog)


def test_resolve_cache_dir_says_where_features_go(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    assert feature_cache.resolve_cache_dir(None) is None
    assert feature_cache.resolve_cache_dir(tmp_path / "c") == tmp_path / "c" and (tmp_path / "c").is_dir()
    (tmp_path / "f").write_text("")
    assert feature_cache.resolve_cache_dir(tmp_path / "f" / "c") == tmp_path / "user" / "docre"
    assert os.listdir(tmp_path / "user" / "docre") == []  # the probe leaves nothing behind


def test_cli_prints_figures_and_writes_the_cache(tmp_path, tiny_bert_dir, capsys):
    write(tmp_path, [make_doc(), make_doc("Doc B")], "dev.json")
    (tmp_path / "rel_info.json").write_text(json.dumps({"P17": "country", "P131": "in", "P27": "citizen"}))
    stats = prepro.main(["--data_dir", str(tmp_path), "--file", "dev.json", "--model_name_or_path", tiny_bert_dir,
                         "--max_seq_length", "64"])
    out = capsys.readouterr().out
    for word in ("documents 2", "positive pairs 4", "negative pairs 8", "token length mean", "p95", "max",
                 "truncated", "docs/s"):
        assert word in out
    assert stats["documents"] == 2 and len(list((tmp_path / ".cache").iterdir())) == 1


@pytest.mark.parametrize("flags", [["--no_entity_marker", "--cache_dir", "none"], ["--no_marker", "--no_cache"]],
                         ids=["train_py_spelling", "old_spelling"])
def test_cli_accepts_the_flags_of_train_py(tmp_path, tiny_bert_dir, capsys, flags):
    write(tmp_path, [make_doc(), make_doc("Doc B")], "dev.json")
    (tmp_path / "rel_info.json").write_text(json.dumps({"P17": "country", "P131": "in", "P27": "citizen"}))
    args = ["--data_dir", str(tmp_path), "--file", "dev.json", "--model_name_or_path", tiny_bert_dir]
    plain = prepro.main(args + flags)
    assert "cache off" in capsys.readouterr().out and not (tmp_path / ".cache").exists()
    marked = prepro.main(args + ["--cache_dir", "none"])
    assert plain["token_length_mean"] < marked["token_length_mean"]  # no marker tokens


# ----------------------------------------------------------------------------- labels and arguments
# (bad input: tests/test_bad_input.py)


def test_same_pair_with_two_relations_is_multi_label(tmp_path, minilm_tokenizer):
    doc = make_doc("T")
    doc["labels"].append({"h": 1, "t": 2, "r": "P131"})
    f = read_docred(write(tmp_path, [doc]), minilm_tokenizer, SETTINGS)[0]
    assert sorted(f["labels"].tolist()) == [[1, 3], [3, 1], [3, 2]]


def test_bad_marker_and_length_are_refused(tmp_path, minilm_tokenizer):
    path = write(tmp_path, [make_doc()])
    with pytest.raises(ValueError, match="entity_marker"):
        read_docred(path, minilm_tokenizer, SETTINGS.replace(entity_marker=""))
    with pytest.raises(ValueError, match="max_seq_length=2"):
        read_docred(path, minilm_tokenizer, SETTINGS.replace(max_seq_length=2))


def test_unknown_relations_are_problems_or_left_out_and_counted(tmp_path, minilm_tokenizer, caplog):
    """Test mode scores a model on files with relations it never saw: skip_unknown_relations leaves those labels
    out (counted, warned of, cached under their own key); by default they are problems naming the label."""
    doc = make_doc()
    doc["labels"] += [{"h": 0, "t": 1, "r": "P999", "evidence": [0]}, {"h": 2, "t": 0, "r": "P999"}]
    path = write(tmp_path, [doc, make_doc("Doc B")])
    with pytest.raises(prepro.ValidationError, match=r"document 0 \(title 'Doc A'\): field labels\[2\]\.r: relation "
                                                     r"not in the label map \(4 classes\) \(got 'P999'\)"):
        read_docred(path, minilm_tokenizer, SETTINGS)
    cache = tmp_path / "cache"
    for _ in range(2):  # built, then read from the cache
        with caplog.at_level(logging.WARNING, logger="prepro"):
            feats = read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=cache, skip_unknown_relations=True)
        assert "2 label(s) of 1 relation(s) not in the label map (P999 x2) are left out of the features" in caplog.text
        caplog.clear()
        assert feats.stats["unknown_labels"] == {"P999": 2}
        assert feats[0]["labels"].tolist() == read_docred(write(tmp_path, [make_doc()], "known.json"),
                                                          minilm_tokenizer, SETTINGS)[0]["labels"].tolist()
    bad = make_doc()
    bad["labels"].append({"h": 7, "t": 0, "r": "P999"})  # other fields are still checked
    with pytest.raises(prepro.ValidationError, match=r"field labels\[2\]\.h: must be an entity index"):
        read_docred(write(tmp_path, [bad], "bad.json"), minilm_tokenizer, SETTINGS, skip_unknown_relations=True)
    assert len(list(cache.iterdir())) == 1
