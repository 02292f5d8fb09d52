"""Fuzzing: random DocRED-like documents give consistent features or prepro's ValidationError, and valid ones run
through the model to finite logits and gradients.

The default Hypothesis profile keeps this module under a minute; `pytest tests/test_fuzz.py
--hypothesis-profile=long` runs 20x more examples (profile registered in conftest.py).
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import losses
from prepro import ValidationError, read_docred
from settings import DocRESettings

pytestmark = pytest.mark.usefixtures("one_thread")
REL2ID = {"Na": 0, "P1": 1, "P2": 2, "P3": 3}
EXAMPLES = settings.default.max_examples  # of the active profile
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# words: unicode, empty strings, whitespace, markers and special tokens written as text
WORDS = st.text(max_size=6) | st.sampled_from(["Paris", "*", "[SEP]", "</s>", "", " ", "\u200b", "été", "北京"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)


@st.composite
def documents(draw) -> Dict[str, Any]:
    """A valid document: random sentences and entities, overlapping mentions, labels (h == t and duplicates too)."""
    sents = draw(st.lists(st.lists(WORDS, max_size=10), min_size=1, max_size=4).filter(lambda s: any(s)))
    nonempty = [i for i, s in enumerate(sents) if s]
    vertex_set = []
    for _ in range(draw(st.integers(0, 5))):
        mentions = []
        for _ in range(draw(st.integers(1, 3))):
            s = draw(st.sampled_from(nonempty))
            a = draw(st.integers(0, len(sents[s]) - 1))
            b = draw(st.integers(a + 1, len(sents[s])))
            mentions.append({"name": " ".join(sents[s][a:b]), "pos": [a, b], "sent_id": s,
                             "type": draw(st.sampled_from(["PER", "LOC", ""]))})
        vertex_set.append(mentions)
    doc = {"title": draw(st.text(max_size=8)), "sents": sents, "vertexSet": vertex_set}
    n = len(vertex_set)
    if n and draw(st.booleans()):
        label = st.fixed_dictionaries({"h": st.integers(0, n - 1), "t": st.integers(0, n - 1),
                                       "r": st.sampled_from(["P1", "P2", "P3"]),
                                       "evidence": st.lists(st.integers(0, len(sents) - 1), max_size=2)})
        doc["labels"] = draw(st.lists(label, max_size=6))
    return doc


def corpora(min_size: int = 1, max_size: int = 4) -> st.SearchStrategy:
    """Lists of valid documents with distinct titles."""
    return st.lists(documents(), min_size=min_size, max_size=max_size, unique_by=lambda d: d["title"])


def paths(obj: Any, prefix: Tuple = ()) -> Iterator[Tuple]:
    """The path (keys and indices) of every value inside `obj`, `obj` itself included."""
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        yield from paths(value, prefix + (key,))


@st.composite
def damaged_corpora(draw) -> List[Any]:
    """Valid documents with 1-3 random edits: a value replaced or deleted, an integer nudged, a relation renamed."""
    docs = draw(corpora(max_size=3))
    for _ in range(draw(st.integers(1, 3))):
        if not docs:
            break
        where = draw(st.sampled_from(list(paths(docs))[1:]))
        parent = docs
        for key in where[:-1]:
            parent = parent[key]
        key, old = where[-1], parent[where[-1]]
        edit = draw(st.sampled_from(["replace", "delete", "nudge"]))
        if edit == "delete":
            del parent[key]
        elif edit == "nudge" and type(old) is int:
            parent[key] = old + draw(st.sampled_from([-2, -1, 1, 2, 10**6]))
        elif edit == "nudge" and isinstance(old, str):
            parent[key] = draw(st.sampled_from(["P9", "Na", old + old, ""]))
        else:
            parent[key] = draw(JSON_VALUES)
    return docs


@pytest.fixture(scope="module")
def tokenizers(tiny_bert_dir, tiny_roberta_dir) -> Dict[str, Any]:
    from transformers import AutoTokenizer

    return {"bert": AutoTokenizer.from_pretrained(tiny_bert_dir),
            "roberta": AutoTokenizer.from_pretrained(tiny_roberta_dir)}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "docs.json"


def is_subsequence(short: List[int], long: List[int]) -> bool:
    it = iter(long)
    return all(x in it for x in short)


def check_consistent(docs: List[Dict[str, Any]], features: Any, tokenizer: Any, max_len: int, marker: bool) -> None:
    """The feature contract, document by document, against the JSON it came from."""
    assert len(features) == len(docs)
    specials = tokenizer("x")["input_ids"]
    for doc, f in zip(docs, features):
        n = len(doc["vertexSet"])
        ids = np.asarray(f["input_ids"])
        assert f["title"] == doc["title"]
        assert len(specials) - 1 <= len(ids) <= max_len
        assert ids[0] == specials[0] and ids[-1] == specials[-1] and ids.min() >= 0 and ids.max() < len(tokenizer)
        pairs = [(h, t) for h in range(n) for t in range(n) if h != t]
        assert f["hts"].shape == (len(pairs), 2) and [tuple(p) for p in f["hts"].tolist()] == pairs
        index = {p: i for i, p in enumerate(pairs)}
        expected = {(index[(lab["h"], lab["t"])], REL2ID[lab["r"]])
                    for lab in doc.get("labels") or [] if lab["h"] != lab["t"]}
        rows = [tuple(r) for r in f["labels"].tolist()]
        assert len(rows) == len(set(rows)) and set(rows) == expected
        evidence = {}  # a duplicate label keeps the first one's evidence
        for lab in doc.get("labels") or []:
            if lab["h"] != lab["t"]:
                evidence.setdefault((index[(lab["h"], lab["t"])], REL2ID[lab["r"]]), lab.get("evidence", []))
        assert f["evidence"] == [evidence[r] for r in rows]
        check_sent_pos(doc, f, len(specials) - 1, marker)
        assert len(f["entity_pos"]) == n == len(f["mention_sent_ids"])
        kept = 0
        for ent, spans, sent_ids in zip(doc["vertexSet"], f["entity_pos"], f["mention_sent_ids"]):
            assert len(spans) == len(sent_ids) <= len(ent)
            assert is_subsequence(sent_ids, [m["sent_id"] for m in ent])
            for start, end in spans:
                assert 1 <= start < end <= len(ids)  # never the leading special token
                if marker:
                    assert tokenizer.convert_ids_to_tokens(int(ids[start])).lstrip("Ġ▁") == "*"
            kept += len(spans)
        assert kept + f["n_truncated_mentions"] == sum(len(ent) for ent in doc["vertexSet"])
        if len(ids) < max_len:
            assert f["n_truncated_mentions"] == 0


def check_sent_pos(doc: Dict[str, Any], f: Dict[str, Any], n_specials: int, marker: bool) -> None:
    """Sentence spans tile the content tokens in order (clipped at truncation) and hold their mentions (without
    markers, a mention whose words yield no token points at the one token after them, maybe past its sentence)."""
    pos = f["sent_pos"]
    n_tokens = len(f["input_ids"])
    assert pos.dtype == np.int32 and pos.shape == (len(doc["sents"]), 2)
    assert (pos[:, 0] <= pos[:, 1]).all() and (pos[1:, 0] == pos[:-1, 1]).all()
    assert 1 <= pos[0, 0] and pos[-1, 1] <= n_tokens - 1 and n_tokens - pos[-1, 1] <= n_specials
    for spans, sent_ids in zip(f["entity_pos"], f["mention_sent_ids"]):
        for (start, end), s in zip(spans, sent_ids):
            assert pos[s, 0] <= start < end and (end <= pos[s, 1] or not marker and end == start + 1)


def read_or_reject(path, tokenizer, max_len: int, marker: bool) -> Any:
    """read_docred's features, or None when it raised its own ValidationError (anything else propagates)."""
    try:
        return read_docred(path, tokenizer, DocRESettings(REL2ID, max_seq_length=max_len,
                                                          entity_marker="*" if marker else None))
    except ValidationError as e:
        assert str(path) in str(e) and e.problems
        return None


SETUP = dict(kind=st.sampled_from(["bert", "roberta"]), max_len=st.integers(3, 80), marker=st.booleans())


@FUZZ
@given(docs=corpora(), **SETUP)
def test_valid_documents_give_consistent_features(tokenizers, data_file, docs, kind, max_len, marker):
    data_file.write_text(json.dumps(docs), encoding="utf-8")
    features = read_docred(data_file, tokenizers[kind], DocRESettings(REL2ID, max_seq_length=max_len,
                                                                      entity_marker="*" if marker else None))
    check_consistent(docs, features, tokenizers[kind], max_len, marker)


@FUZZ
@given(top=damaged_corpora() | JSON_VALUES, **SETUP)
def test_damaged_documents_and_any_json_are_rejected_or_consistent(tokenizers, data_file, top, kind, max_len, marker):
    data_file.write_text(json.dumps(top), encoding="utf-8")
    features = read_or_reject(data_file, tokenizers[kind], max_len, marker)
    if features is not None:
        check_consistent(top, features, tokenizers[kind], max_len, marker)


@FUZZ
@given(docs=corpora(max_size=3), cut=st.floats(0, 1), junk=st.binary(min_size=1, max_size=3),
       edit=st.sampled_from(["truncate", "insert", "overwrite"]))
def test_damaged_bytes_are_rejected_or_consistent(tokenizers, data_file, docs, cut, junk, edit):
    data = json.dumps(docs, ensure_ascii=False).encode("utf-8")
    at = int(cut * len(data))
    data = {"truncate": data[:at], "insert": data[:at] + junk + data[at:],
            "overwrite": data[:at] + junk + data[at + len(junk):]}[edit]
    data_file.write_bytes(data)
    features = read_or_reject(data_file, tokenizers["bert"], 64, True)
    if features is not None:
        check_consistent(json.loads(data.decode("utf-8-sig")), features, tokenizers["bert"], 64, True)


# ----------------------------------------------------------------------------- through the model


@pytest.fixture(scope="module")
def tiny_model(tiny_bert_dir, tokenizers):
    from encoder_kernels import load_encoder
    from model import DocREModel

    torch.manual_seed(0)
    # a 24-token window: longer documents go through the overlapping-window path
    return DocREModel(load_encoder(tiny_bert_dir), len(REL2ID), emb_size=32, block_size=8,
                      tokenizer=tokenizers["bert"], max_seq_length=80, window_size=24, window_overlap=4)


@settings(FUZZ, max_examples=max(10, EXAMPLES // 2))
@given(docs=corpora(max_size=3), max_len=st.integers(8, 80))
@example(docs=[{"title": "no entities", "sents": [["x"]], "vertexSet": []}], max_len=8)  # once crashed pool_context
def test_valid_documents_run_through_the_model(tokenizers, data_file, tiny_model, docs, max_len):
    from collate import DocRECollator

    data_file.write_text(json.dumps(docs), encoding="utf-8")
    features = read_docred(data_file, tokenizers["bert"], DocRESettings(REL2ID, max_seq_length=max_len))
    batch = DocRECollator(len(REL2ID), tokenizers["bert"].pad_token_id)(list(features))
    labels = batch.pop("labels")
    tiny_model.zero_grad(set_to_none=True)
    logits = tiny_model(**batch)  # [P, K+1]
    assert logits.shape == (sum(len(f["hts"]) for f in features), len(REL2ID))
    assert torch.isfinite(logits).all()
    loss = losses.build_loss("ncrl").loss(logits, labels)
    assert torch.isfinite(loss)
    if logits.requires_grad and len(logits):
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in tiny_model.parameters() if p.grad is not None)
