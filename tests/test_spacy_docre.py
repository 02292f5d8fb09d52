"""The spaCy component: the same facts as predict.py on the same text, written onto the Doc with Spans.

One tiny model with evidence on is trained (random BERT, a few steps) and its model folder is used.
"""
from __future__ import annotations

import pytest

import predict
import spacy_docre  # noqa: F401  (registers the "docre" factory)
import text2doc
import train

TEXTS = ["Marie Curie was born in Warsaw, Poland. She moved to Paris in 1891 and worked at the Sorbonne with "
         "Pierre Curie.",
         "Barack Obama was born in Honolulu, Hawaii. The United Nations praised him in New York in 2010."]


@pytest.fixture(scope="module")
def model_folder(small_synthetic_dir, tiny_bert_dir, tmp_path_factory):
    """RUN/model of a tiny evidence model."""
    run = tmp_path_factory.mktemp("spacy") / "run"
    train.main(["--data_dir", str(small_synthetic_dir), "--model_name_or_path", tiny_bert_dir, "--emb_size", "48",
                "--block_size", "8", "--max_seq_length", "256", "--output_dir", str(run), "--cache_dir", "none",
                "--no_progress", "--loss", "bce", "--evidence_lambda", "0.1", "--evidence_threshold", "0.05",
                "--num_train_epochs", "2", "--learning_rate", "1e-3", "--classifier_lr", "1e-3", "--test_file", ""])
    return run / "model"


@pytest.fixture(scope="module")
def nlp(model_folder):
    nlp = text2doc.load_spacy()
    nlp.add_pipe("docre", config={"model": str(model_folder), "batch_size": 2})
    return nlp


def facts_of_output(out):
    """(head name, relation, tail name, score, evidence sentence texts) of predict.py's output object."""
    names = [e["name"] for e in out["entities"]]
    return [(names[r["h_idx"]], r["r"], names[r["t_idx"]], round(r["score"], 5),
             [out["text"][slice(*out["sent_spans"][s])] for s in r["evidence"]]) for r in out["relations"]]


def facts_of_doc(doc):
    return [(r["head"]["name"], r["relation"], r["tail"]["name"], round(r["score"], 5),
             [s.text for s in r["evidence"]]) for r in doc._.relations]


def test_component_gives_predict_facts_with_spans(nlp, model_folder):
    docs = list(nlp.pipe(TEXTS))
    outputs = predict.DocREPipeline.from_pretrained(str(model_folder), nlp=text2doc.load_spacy())(TEXTS)
    assert [facts_of_doc(d) for d in docs] == [facts_of_output(o) for o in outputs]
    assert any(doc._.relations for doc in docs), "the tiny model should predict something to compare"
    for doc, out in zip(docs, outputs):
        assert [e["type"] for e in doc._.entities] == [e["type"] for e in out["entities"]]
        for ent, gold in zip(doc._.entities, out["entities"]):
            assert [m.text for m in ent["mentions"]] == [m["text"] for m in gold["mentions"]]
            assert all(m.doc is doc for m in ent["mentions"])
        for rel in doc._.relations:
            assert rel["head"] in doc._.entities and rel["tail"] in doc._.entities and rel["name"]
            assert all(s.doc is doc and 0 <= s.start < s.end <= len(doc) for s in rel["evidence"])
            assert all(any(s.start == sent.start and s.end == sent.end for sent in doc.sents)
                       for s in rel["evidence"])
    assert sum(len(r["evidence"]) for d in docs for r in d._.relations), "evidence on: some sentences expected"
    assert facts_of_doc(nlp(TEXTS[0])) == facts_of_doc(docs[0])  # one Doc as in a batch


def test_component_refuses_unknown_entity_sources(model_folder):
    nlp = text2doc.load_spacy()
    with pytest.raises(ValueError, match="entities='ner'"):
        nlp.add_pipe("docre", config={"model": str(model_folder), "entities": "ner"})
    with pytest.raises(ValueError, match="needs a model trained with --end_to_end"):  # no entity heads
        nlp.add_pipe("docre", config={"model": str(model_folder), "entities": "model"})
    for size in (0, -1):  # 0 made nlp.pipe yield no Doc at all
        with pytest.raises(ValueError, match=rf"batch_size={size}: documents through the model at a time"):
            nlp.add_pipe("docre", config={"model": str(model_folder), "batch_size": size})
