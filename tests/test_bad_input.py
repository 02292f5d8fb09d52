"""Bad input: every case of the reliability issue gets a clear error naming the file, the document (index and
title) and the field, or is accepted and reported (one entity, a 5,000-token document, labels in a test file).

The JSON-level cases (truncated file, top level not a list) name the line and column instead of a field. The
crash/resume, numerical and write faults are in test_faults.py and test_train.py; random inputs in test_fuzz.py.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

import prepro
import train
from conftest import ROOT
from prepro import ValidationError, read_docred
from test_prepro import REL2ID, SETTINGS, make_doc, write
from test_train import tiny_args
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def read_bad(tmp_path, docs, tokenizer, **kwargs):
    path = write(tmp_path, docs)
    with pytest.raises(ValidationError) as info:
        read_docred(path, tokenizer, SETTINGS, **kwargs)
    return str(info.value), str(path)


def assert_names(message, path, index, title, field, value=None):
    assert path in message
    assert f"document {index} (title {title!r})" in message
    assert f"field {field}" in message
    if value is not None:
        assert value in message


def test_validation_error_is_a_value_error():
    assert issubclass(ValidationError, ValueError)


# ----------------------------------------------------------------------------- the file


def test_truncated_json(tmp_path, minilm_tokenizer):
    path = tmp_path / "cut.json"
    text = json.dumps([make_doc(), make_doc("second")], indent=1)
    path.write_text(text[: len(text) * 3 // 4])
    with pytest.raises(ValidationError) as info:
        read_docred(path, minilm_tokenizer, SETTINGS)
    msg = str(info.value)
    assert str(path) in msg and "document 1 (title 'second')" in msg and "line" in msg and "truncated" in msg


@pytest.mark.parametrize("top", [{"title": "x"}, "docs", 3])
def test_top_level_not_a_list(tmp_path, minilm_tokenizer, top):
    path = write(tmp_path, top)
    with pytest.raises(ValidationError, match=f"JSON list of documents, got {type(top).__name__}") as info:
        read_docred(path, minilm_tokenizer, SETTINGS)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("field, edit", [
    ("title", lambda d: d.update(title="Café")),
    ("sents[0][2]", lambda d: d["sents"][0].__setitem__(2, "née")),
    ("vertexSet[1][0].name", lambda d: d["vertexSet"][1][0].update(name="Pàris")),
], ids=["title", "word", "name"])
def test_non_utf8_bytes(tmp_path, minilm_tokenizer, field, edit):
    doc = make_doc("T")
    edit(doc)
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps([make_doc(), doc], ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ValidationError, match="not valid UTF-8") as info:
        read_docred(path, minilm_tokenizer, SETTINGS)
    title = "Caf\ufffd" if field == "title" else "T"
    assert_names(str(info.value), str(path), 1, title, field, "line 1")


@pytest.mark.parametrize("text", ["", " \n", "[]", " [ ]\n"], ids=["empty", "blank", "empty_list", "spaced_list"])
def test_a_file_without_documents_is_refused_unless_allowed(tmp_path, minilm_tokenizer, text):
    path = tmp_path / "none.json"
    path.write_text(text)
    for cache_dir in (None, tmp_path / "cache"):
        with pytest.raises(ValidationError, match="no documents") as info:
            read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=cache_dir)
        assert str(path) in str(info.value)
        features = read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=cache_dir, allow_empty=True)
        assert len(features) == 0 and features.stats["documents"] == 0


def test_duplicate_titles_name_both_documents(tmp_path, minilm_tokenizer):
    msg, path = read_bad(tmp_path, [make_doc("A"), make_doc("B"), make_doc("A"), make_doc("A")], minilm_tokenizer)
    assert_names(msg, path, 2, "A", "title", "the same title as document 0")
    assert_names(msg, path, 3, "A", "title", "the same title as document 0")
    assert "2 problem(s)" in msg and "document 1 " not in msg


# ----------------------------------------------------------------------------- documents and fields


def test_document_not_an_object(tmp_path, minilm_tokenizer):
    msg, path = read_bad(tmp_path, [make_doc(), ["not", "a", "doc"]], minilm_tokenizer)
    assert_names(msg, path, 1, None, "<document>", "list")


@pytest.mark.parametrize("key", ["title", "sents", "vertexSet"])
def test_missing_key(tmp_path, minilm_tokenizer, key):
    doc = make_doc("T")
    del doc[key]
    msg, path = read_bad(tmp_path, [make_doc(), doc], minilm_tokenizer)
    assert_names(msg, path, 1, None if key == "title" else "T", key, "missing key")


def test_missing_mention_key(tmp_path, minilm_tokenizer):
    doc = make_doc("T")
    del doc["vertexSet"][1][0]["pos"]
    msg, path = read_bad(tmp_path, [doc], minilm_tokenizer)
    assert_names(msg, path, 0, "T", "vertexSet[1][0].pos", "missing key")


@pytest.mark.parametrize("field, edit, value", [
    ("title", lambda d: d.update(title=7), "7"),
    ("sents", lambda d: d.update(sents="Alice was born"), "'Alice was born'"),
    ("sents[1]", lambda d: d["sents"][1].__setitem__(2, 5), "5"),
    ("sents[0][2]", lambda d: d["sents"][0].__setitem__(2, "w\ud800s"), "'w\\ud800s'"),
    ("vertexSet[0][1].sent_id", lambda d: d["vertexSet"][0][1].update(sent_id="1"), "'1'"),
    ("vertexSet[2][0].pos", lambda d: d["vertexSet"][2][0].update(pos=[3.0, 4.0]), "[3.0, 4.0]"),
    ("vertexSet[2][0].pos", lambda d: d["vertexSet"][2][0].update(pos=[True, 4]), "[True, 4]"),
    ("vertexSet[1][0].name", lambda d: d["vertexSet"][1][0].update(name=None), "None"),
    ("labels[0].h", lambda d: d["labels"][0].update(h="1"), "'1'"),
    ("labels", lambda d: d.update(labels={"h": 1}), "{'h': 1}"),
    ("vertexSet", lambda d: d.update(vertexSet={}), "{}"),
], ids=["title", "sents", "word", "surrogate", "sent_id", "pos_float", "pos_bool", "name", "label_h", "labels",
        "vertexSet"])
def test_wrong_types(tmp_path, minilm_tokenizer, field, edit, value):
    doc = make_doc("T")
    edit(doc)
    msg, path = read_bad(tmp_path, [make_doc("A"), make_doc("B"), doc], minilm_tokenizer)
    assert_names(msg, path, 2, doc["title"], field, value)


@pytest.mark.parametrize("sents", [[], [[], []]], ids=["no_sentences", "no_words"])
def test_empty_document(tmp_path, minilm_tokenizer, sents):
    doc = make_doc("T", labels=False)
    doc["sents"], doc["vertexSet"] = sents, []
    msg, path = read_bad(tmp_path, [doc], minilm_tokenizer)
    assert_names(msg, path, 0, "T", "sents")


@pytest.mark.parametrize("pos", [[5, 8], [-1, 1], [3, 3], [4, 2]], ids=["past_end", "negative", "empty", "reversed"])
def test_pos_outside_its_sentence_or_reversed(tmp_path, minilm_tokenizer, pos):
    doc = make_doc("T")
    doc["vertexSet"][2][0]["pos"] = pos
    msg, path = read_bad(tmp_path, [doc], minilm_tokenizer)
    assert_names(msg, path, 0, "T", "vertexSet[2][0].pos", str(pos))
    assert "length of sentence 1" in msg


def test_sent_id_out_of_range(tmp_path, minilm_tokenizer):
    doc = make_doc("T")
    doc["vertexSet"][0][1]["sent_id"] = 2
    msg, path = read_bad(tmp_path, [doc], minilm_tokenizer)
    assert_names(msg, path, 0, "T", "vertexSet[0][1].sent_id", "the document has 2 sentences (got 2)")


def test_entity_without_mentions(tmp_path, minilm_tokenizer):
    doc = make_doc("T")
    doc["vertexSet"][1] = []
    msg, path = read_bad(tmp_path, [doc], minilm_tokenizer)
    assert_names(msg, path, 0, "T", "vertexSet[1]", "non-empty list of mentions")


@pytest.mark.parametrize("key, value", [("h", 3), ("t", -1), ("t", 99)])
def test_label_entity_out_of_range(tmp_path, minilm_tokenizer, key, value):
    doc = make_doc("T")
    doc["labels"][1][key] = value
    msg, path = read_bad(tmp_path, [doc], minilm_tokenizer)
    assert_names(msg, path, 0, "T", f"labels[1].{key}", f"[0, 3) (got {value})")


def test_h_equals_t_and_duplicate_labels_warn_and_drop(tmp_path, minilm_tokenizer, caplog):
    doc = make_doc("T")
    doc["labels"] += [{"h": 1, "t": 1, "r": "P17"}, dict(doc["labels"][0])]
    with caplog.at_level(logging.WARNING, logger="prepro"):
        features = read_docred(write(tmp_path, [doc]), minilm_tokenizer, SETTINGS)
    assert features[0]["labels"].tolist() == [[3, 1], [1, 3]]
    assert features.stats["dropped_labels"] == 2
    assert "dropped 2 label(s)" in caplog.text and "document 0 (title 'T')" in caplog.text
    assert "labels[2]: h == t" in caplog.text and "labels[3]: duplicate" in caplog.text


@pytest.mark.parametrize("evidence, field, value", [
    ([0, 2], "labels[1].evidence[1]", "[0, 2) (got 2)"),
    ([-1], "labels[1].evidence[0]", "(got -1)"),
    ([0, "1"], "labels[1].evidence[1]", "(got '1')"),
    ([True], "labels[1].evidence[0]", "(got True)"),
    (1, "labels[1].evidence", "list of sentence ids in [0, 2) (got 1)"),
    (None, "labels[1].evidence", "(got None)"),
], ids=["past_end", "negative", "string", "bool", "not_a_list", "null"])
def test_evidence_must_be_sentence_ids(tmp_path, minilm_tokenizer, evidence, field, value):
    doc = make_doc("T")
    doc["labels"][1]["evidence"] = evidence
    msg, path = read_bad(tmp_path, [make_doc(), doc], minilm_tokenizer)
    assert_names(msg, path, 1, "T", field, value)


@pytest.mark.parametrize("rel", ["P999", "Na", 17])
def test_relation_not_in_the_label_map(tmp_path, minilm_tokenizer, rel):
    doc = make_doc("T")
    doc["labels"][0]["r"] = rel
    msg, path = read_bad(tmp_path, [doc], minilm_tokenizer)
    assert_names(msg, path, 0, "T", "labels[0].r", repr(rel))


def test_all_problems_are_collected_first_twenty_listed(tmp_path, minilm_tokenizer):
    docs = [make_doc(f"doc{i}") for i in range(25)]
    for doc in docs:
        doc["labels"][0]["r"] = "P0"
    msg, path = read_bad(tmp_path, docs, minilm_tokenizer)
    assert msg.count("field labels[0].r") == 20 and "doc19" in msg and "doc20" not in msg
    assert "25 problem(s)" in msg and "... and 5 more problem(s)" in msg


# ----------------------------------------------------------------------------- prepro.py's command line


def cli_args(tmp_path, model_dir, name="dev.json"):
    (tmp_path / "rel_info.json").write_text(json.dumps({"P17": "country", "P131": "in", "P27": "citizen"}))
    return ["--data_dir", str(tmp_path), "--file", name, "--model_name_or_path", model_dir, "--no_cache"]


@pytest.mark.parametrize("case", ["invalid", "missing", "folder", "bad_label_map"])
def test_cli_bad_input_is_one_message_and_exit_2(tmp_path, tiny_bert_dir, capsys, case):
    args = cli_args(tmp_path, tiny_bert_dir)
    doc = make_doc("T")
    doc["labels"][0]["r"] = "P999"
    write(tmp_path, [make_doc(), doc], "dev.json")
    if case == "missing":
        args[3] = "absent.json"
    elif case == "folder":
        (tmp_path / "sub.json").mkdir()
        args[3] = "sub.json"
    elif case == "bad_label_map":
        (tmp_path / "rel2id.json").write_text(json.dumps({"Na": 1}))
        args += ["--rel2id", str(tmp_path / "rel2id.json")]
    with pytest.raises(SystemExit) as info:
        prepro.cli(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "Traceback" not in err  # (after tqdm's progress line)
    expected = {"invalid": "document 1 (title 'T'): field labels[0].r",
                "missing": f"{tmp_path / 'absent.json'}: No such file or directory",
                "folder": f"{tmp_path / 'sub.json'}: Is a directory", "bad_label_map": "'Na'"}[case]
    assert expected in err


def test_cli_as_a_script_exits_2_without_a_traceback(tmp_path, tiny_bert_dir):
    args = cli_args(tmp_path, tiny_bert_dir, name="absent.json")
    done = subprocess.run([sys.executable, str(ROOT / "prepro.py"), *args], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'absent.json'}: No such file or directory"


# ----------------------------------------------------------------------------- accepted and reported


def test_documents_with_fewer_than_two_entities_have_no_pairs(tmp_path, minilm_tokenizer):
    one, none = make_doc("one", labels=False), make_doc("none", labels=False)
    one["vertexSet"] = one["vertexSet"][:1]
    none["vertexSet"] = []
    features = read_docred(write(tmp_path, [one, none]), minilm_tokenizer, SETTINGS)
    assert [f["hts"].shape for f in features] == [(0, 2), (0, 2)]
    assert len(features[0]["entity_pos"]) == 1 and features[1]["entity_pos"] == []
    from collate import DocRECollator

    batch = DocRECollator(len(REL2ID))(list(features))
    assert batch["hts"].shape == (0, 2) and batch["labels"].shape == (0, 4)


def test_documents_without_entities_are_counted(tmp_path, minilm_tokenizer, caplog):
    none = make_doc("none", labels=False)
    none["vertexSet"] = []
    with caplog.at_level(logging.INFO, logger="prepro"):
        features = read_docred(write(tmp_path, [make_doc(), none]), minilm_tokenizer, SETTINGS)
    assert features.stats["documents_without_entities"] == 1
    assert "2 documents, 1 without entities" in caplog.text


def test_five_thousand_token_document_is_truncated_and_reported(tmp_path, minilm_tokenizer, caplog):
    doc = make_doc("Long")
    doc["sents"].insert(1, ["word"] * 5000)  # "She" and "France" (sentence 2 now) fall past 1024 tokens
    for ent in doc["vertexSet"]:
        for m in ent:
            m["sent_id"] += m["sent_id"] >= 1
    path = write(tmp_path, [make_doc(), doc])
    with caplog.at_level(logging.WARNING, logger="prepro"):
        features = read_docred(path, minilm_tokenizer, SETTINGS)
    assert [len(f["input_ids"]) for f in features] == [22, 1024]
    assert features[1]["n_truncated_mentions"] == 2 and features[1]["entity_pos"][2] == []
    assert len(features[1]["labels"]) == 2  # labels of truncated entities are kept: they still count as facts
    assert str(path) in caplog.text and "1 of 2 documents are longer than max_seq_length=1024" in caplog.text
    assert "document 1 (title 'Long'): field sents: 5022 tokens, 2 mention(s) cut" in caplog.text


def test_labels_in_a_test_file_are_fine_and_missing_labels_too(tmp_path, minilm_tokenizer):
    path = write(tmp_path, [make_doc("test doc", labels=False), make_doc()])
    features = read_docred(path, minilm_tokenizer, SETTINGS)
    assert features[0]["labels"].shape == (0, 2) and len(features[1]["labels"]) == 2


# ----------------------------------------------------------------------------- command line (train.py)


def run_args(data_dir, model_dir, out, *extra):
    """test_train's tiny run, on 128-token documents."""
    return tiny_args(data_dir, model_dir, out, "--max_seq_length", 128, *extra)


@pytest.fixture(scope="module")
def same_file_run(small_synthetic_dir, tiny_bert_dir, tmp_path_factory):
    """A one-step run whose dev file is its training file; its best.pt serves the checkpoint tests."""
    out = tmp_path_factory.mktemp("same-file") / "run"
    train.main(run_args(small_synthetic_dir, tiny_bert_dir, out, "--max_steps", 1,
                        "--dev_file", "train_annotated.json", "--test_file", ""))
    return out


def test_same_train_and_dev_file_warns(same_file_run, small_synthetic_dir):
    log = (same_file_run / "train.log").read_text(encoding="utf-8")
    assert "WARNING --train_file and --dev_file are the same file" in log
    assert str(small_synthetic_dir / "train_annotated.json") in log and "optimistic" in log
    # Ign F1 against the dev file itself is 0 at every evaluation: it kept the first checkpoint whatever dev F1 said
    assert "the best checkpoint is chosen by dev F1: --dev_file is --ign_train_file" in log


def test_checkpoint_of_another_encoder_is_refused_naming_both(same_file_run, small_synthetic_dir, tiny_roberta_dir,
                                                              tiny_bert_dir, tmp_path):
    best = same_file_run / "best.pt"
    with pytest.raises(UserError) as info:
        train.main(run_args(small_synthetic_dir, tiny_roberta_dir, tmp_path / "run", "--load_path", best))
    msg = str(info.value)
    assert f"--load_path {best}" in msg and repr(tiny_bert_dir) in msg and repr(tiny_roberta_dir) in msg
    assert "--model_name_or_path" in msg


def test_checkpoint_of_another_label_map_is_refused_naming_both(same_file_run, small_synthetic_dir, tiny_bert_dir,
                                                                tmp_path):
    rel_info = json.loads((small_synthetic_dir / "rel_info.json").read_text())
    rel2id = {"Na": 0, **{r: i + 1 for i, r in enumerate(rel_info)}}
    dropped = list(rel2id)[-1]
    smaller = {r: i for r, i in rel2id.items() if r != dropped}
    (tmp_path / "rel2id.json").write_text(json.dumps(smaller))
    best = same_file_run / "best.pt"
    with pytest.raises(UserError) as info:
        train.main(run_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run", "--load_path", best,
                            "--rel2id", tmp_path / "rel2id.json"))
    msg = str(info.value)
    assert f"--load_path {best}" in msg and "--rel2id" in msg
    assert f"label map of {len(rel2id)} classes" in msg and f"has {len(smaller)}" in msg and repr(dropped) in msg


@pytest.mark.parametrize("name", ["missing-folder", "nobody/no-such-encoder"])
def test_unreachable_model_suggests_the_offline_default(small_synthetic_dir, tmp_path, name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = str(tmp_path / name) if name == "missing-folder" else name
    with pytest.raises(UserError) as info:
        train.main(run_args(small_synthetic_dir, model, tmp_path / "run"))
    msg = str(info.value)
    assert f"--model_name_or_path {model!r} is neither a local folder nor reachable" in msg
    assert "--model_name_or_path minilm" in msg


def test_folder_without_a_model_is_named(small_synthetic_dir, tmp_path):
    """Needs /tmp/train_patch_reliability.diff (load_encoder_and_tokenizer)."""
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    with pytest.raises(UserError) as info:
        train.main(run_args(small_synthetic_dir, folder, tmp_path / "run"))
    msg = str(info.value)
    assert f"--model_name_or_path {str(folder)!r} is a folder without a model" in msg and "config.json" in msg
    assert "--model_name_or_path minilm" in msg
