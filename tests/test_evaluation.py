"""Tests for evaluation.py: official DocRED arithmetic, Ign F1, analysis tables, Codalab files and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import evaluation as ev
from conftest import ROOT, shared_file

# ---------------------------------------------------------------------------- a hand-built document
# sentences: 0 "Paris France Rome", 1 "French Republic Berlin", 2 "Germany"
DOC = {
    "title": "Capitals",
    "sents": [["Paris", "France", "Rome"], ["French", "Republic", "Berlin"], ["Germany"]],
    "vertexSet": [
        [{"name": "Paris", "pos": [0, 1], "sent_id": 0, "type": "LOC"}],
        [{"name": "France", "pos": [1, 2], "sent_id": 0, "type": "LOC"},
         {"name": "French Republic", "pos": [0, 2], "sent_id": 1, "type": "LOC"}],
        [{"name": "Berlin", "pos": [2, 3], "sent_id": 1, "type": "LOC"}],
        [{"name": "Germany", "pos": [0, 1], "sent_id": 2, "type": "LOC"}],
        [{"name": "Rome", "pos": [2, 3], "sent_id": 0, "type": "LOC"}],
    ],
    "labels": [
        {"h": 0, "t": 1, "r": "P17", "evidence": [0]},  # g1, intra, pair (0,1) has 2 relations
        {"h": 2, "t": 3, "r": "P17", "evidence": [1, 2]},  # g2, inter
        {"h": 1, "t": 0, "r": "P150", "evidence": []},  # g3, intra
        {"h": 2, "t": 0, "r": "P47", "evidence": [1]},  # g4, inter
        {"h": 0, "t": 1, "r": "P361", "evidence": [0]},  # g5, intra
    ],
}
TRUTH = [DOC]


def rec(h: int, t: int, r: str, title: str = "Capitals", **extra) -> dict:
    return {"title": title, "h_idx": h, "t_idx": t, "r": r, **extra}


def train_doc(title: str, names_h: list, names_t: list, r: str) -> dict:
    ents = [[{"name": n, "pos": [0, 1], "sent_id": 0, "type": "X"} for n in names] for names in (names_h, names_t)]
    return {"title": title, "sents": [["x"]], "vertexSet": ents, "labels": [{"h": 0, "t": 1, "r": r, "evidence": []}]}


# g1, g2, g3 correct; (0,3,P17) wrong; (3,2,P17) wrong although (Germany, Berlin, P17) is a training fact
PRED = [rec(0, 1, "P17"), rec(2, 3, "P17"), rec(1, 0, "P150"), rec(0, 3, "P17"), rec(3, 2, "P17")]
TRAIN = [
    train_doc("t1", ["Paris"], ["French Republic"], "P17"),  # matches g1 through e1's second mention
    train_doc("t2", ["Germany"], ["Berlin"], "P17"),  # reversed direction: matches no correct fact
    train_doc("t3", ["France"], ["Paris"], "P150"),  # matches g3
]
DISTANT = [train_doc("d1", ["Berlin"], ["Germany"], "P17")]  # matches g2


def test_import_needs_no_torch():
    code = "import sys, evaluation; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# ---------------------------------------------------------------------------- official_evaluate


def test_hand_case_precision_recall_f1_and_ign_f1():
    s = ev.official_evaluate(PRED, TRUTH, train_annotated=TRAIN, train_distant=DISTANT)
    assert (s["n_pred"], s["n_gold"], s["n_correct"]) == (5, 5, 3)
    assert s["precision"] == pytest.approx(60.0)
    assert s["recall"] == pytest.approx(60.0)
    assert s["f1"] == pytest.approx(60.0)
    # 2 correct facts in train: Ign P = (3-2)/(5-2) = 1/3, R = 3/5, Ign F1 = 2*(1/3)*(3/5)/(1/3+3/5) = 3/7
    assert s["ign_f1"] == pytest.approx(100 * 3 / 7)
    # 1 correct fact in distant: P = 2/4, Ign F1 = 2*(1/2)*(3/5)/(1/2+3/5) = 6/11
    assert s["ign_f1_distant"] == pytest.approx(100 * 6 / 11)
    assert "evi_f1" not in s


def test_no_train_file_means_no_ign_key_and_file_equals_list(tmp_path):
    no_train = ev.official_evaluate(PRED, TRUTH)
    assert no_train["ign_f1"] is None and "ign_f1_distant" not in no_train  # not F1, not 0: not computed
    train_path = tmp_path / "train_annotated.json"
    train_path.write_text(json.dumps(TRAIN))
    pred_path, truth_path = tmp_path / "pred.json", tmp_path / "truth.json"
    pred_path.write_text(json.dumps(PRED))
    truth_path.write_text(json.dumps(TRUTH))
    from_files = ev.official_evaluate(str(pred_path), truth_path, train_annotated=str(train_path))
    assert from_files == ev.official_evaluate(PRED, TRUTH, train_annotated=TRAIN)


def test_every_correct_fact_in_train_gives_zero_not_a_crash():
    perfect = [rec(lab["h"], lab["t"], lab["r"]) for lab in DOC["labels"]]
    s = ev.official_evaluate(perfect, TRUTH, train_annotated=TRUTH)
    assert s["f1"] == pytest.approx(100.0)
    assert s["ign_f1"] == 0.0  # (5-5)/(5-5): the official scorer divides by zero here


def test_empty_prediction_scores_zero():
    s = ev.official_evaluate([], TRUTH, train_annotated=TRAIN)
    assert {k: s[k] for k in ("precision", "recall", "f1", "ign_f1", "n_pred")} == \
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "ign_f1": 0.0, "n_pred": 0}


def test_truth_without_labels_scores_zero():
    s = ev.official_evaluate(PRED, [{k: v for k, v in DOC.items() if k != "labels"}])
    assert (s["n_gold"], s["recall"], s["f1"]) == (0, 0.0, 0.0)


def test_duplicates_are_counted_once():
    s = ev.official_evaluate([rec(0, 1, "P17")] * 3 + [rec(0, 3, "P17"), rec(0, 3, "P17")], TRUTH)
    assert (s["n_pred"], s["n_correct"]) == (2, 1)
    assert s["precision"] == pytest.approx(50.0)
    assert s["recall"] == pytest.approx(20.0)


def test_unknown_titles_are_skipped_but_count_against_precision():
    pred = [rec(0, 1, "P17"), rec(0, 1, "P17", title="Not in the truth"), rec(9, 9, "P1", title="Another")]
    s = ev.official_evaluate(pred, TRUTH)
    assert (s["n_pred"], s["n_correct"]) == (3, 1)
    assert s["precision"] == pytest.approx(100 / 3)
    assert s["recall"] == pytest.approx(20.0)


def test_evidence_scores():
    pred = [rec(0, 1, "P17", evidence=[0, 1]), rec(2, 3, "P17", evidence=[1]), rec(0, 3, "P17", evidence=[0]),
            rec(0, 1, "P17", title="Unknown", evidence=[0, 1, 2])]  # unknown title: no evidence counted
    s = ev.official_evaluate(pred, TRUTH)
    # predicted evidence 2+1+1 = 4, correct 1+1 = 2, gold evidence 1+2+0+1+1 = 5
    assert s["evi_precision"] == pytest.approx(50.0)
    assert s["evi_recall"] == pytest.approx(40.0)
    assert s["evi_f1"] == pytest.approx(100 * 2 * 0.5 * 0.4 / 0.9)


def test_malformed_prediction_names_the_item():
    with pytest.raises(ValueError, match="prediction 1 has no field 'r'"):
        ev.official_evaluate([rec(0, 1, "P17"), {"title": "Capitals", "h_idx": 0, "t_idx": 1}], TRUTH)


def test_malformed_truth_names_the_document():
    with pytest.raises(ValueError, match="truth document 1 must be an object with 'title' and 'vertexSet'"):
        ev.official_evaluate(PRED, [DOC, {"title": "x"}])
    with pytest.raises(ValueError, match=r"truth document 0 \('Capitals'\) label 0 has no field 'r'"):
        ev.official_evaluate(PRED, [dict(DOC, labels=[{"h": 0, "t": 1}])])


def test_unreadable_files_are_named(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match="broken.json"):
        ev.official_evaluate(str(bad), TRUTH)
    with pytest.raises(FileNotFoundError, match="missing_train.json"):
        ev.official_evaluate(PRED, TRUTH, train_annotated=str(tmp_path / "missing_train.json"))
    not_list = tmp_path / "obj.json"
    not_list.write_text("{}")
    with pytest.raises(ValueError, match="obj.json must be a JSON list"):
        ev.official_evaluate(PRED, str(not_list))


# ---------------------------------------------------------------------------- training fact cache


def test_facts_follow_all_mention_name_combinations():
    facts = ev.facts_of([train_doc("t", ["A", "A2"], ["B", "B2", "B3"], "P1")])
    assert facts == {(h, t, "P1") for h in ("A", "A2") for t in ("B", "B2", "B3")}


def test_fact_sets_are_cached_in_memory_and_on_disk(tmp_path):
    train_path = tmp_path / "train_annotated.json"
    train_path.write_text(json.dumps(TRAIN))
    cache = tmp_path / "cache"
    ev._facts_of_file.cache_clear()
    facts = ev.train_facts(str(train_path), cache)
    assert facts == ev.facts_of(TRAIN)
    (cache_file,) = cache.glob("facts-train_annotated-*.json")
    assert {tuple(x) for x in json.loads(cache_file.read_text())} == facts
    ev.train_facts(str(train_path), cache)
    assert ev._facts_of_file.cache_info().hits == 1
    # a fresh process would read the disk cache, not the training file: prove it with a doctored cache
    cache_file.write_text(json.dumps([["Berlin", "Germany", "P17"]]))
    ev._facts_of_file.cache_clear()
    assert ev.train_facts(str(train_path), cache) == {("Berlin", "Germany", "P17")}
    # a changed training file has another content hash, hence another cache file
    train_path.write_text(json.dumps(DISTANT + TRAIN))
    assert ev.train_facts(str(train_path), cache) == ev.facts_of(DISTANT + TRAIN)
    assert len(list(cache.glob("facts-*.json"))) == 2
    ev._facts_of_file.cache_clear()


@pytest.mark.parametrize("damage", ["truncated", "[[\"a\"]]", "{}", "[[\"a\", \"b\", 17]]"])
def test_a_damaged_fact_cache_is_rebuilt_not_trusted(tmp_path, caplog, damage):
    train_path = tmp_path / "train_annotated.json"
    train_path.write_text(json.dumps(TRAIN))
    cache = tmp_path / "cache"
    ev._facts_of_file.cache_clear()
    ev.train_facts(str(train_path), cache)
    (cache_file,) = cache.glob("facts-*.json")
    good = cache_file.read_text()
    cache_file.write_text(good[: len(good) // 2] if damage == "truncated" else damage)
    ev._facts_of_file.cache_clear()
    assert ev.train_facts(str(train_path), cache) == ev.facts_of(TRAIN)
    assert f"fact cache {cache_file} is damaged" in caplog.text and "rebuilding it" in caplog.text
    assert cache_file.read_text() == good
    ev._facts_of_file.cache_clear()


# ---------------------------------------------------------------------------- to_official


def feature(title: str, n_ent: int) -> dict:
    hts = [[h, t] for h in range(n_ent) for t in range(n_ent) if h != t]
    return {"title": title, "hts": np.array(hts, dtype=np.int64).reshape(-1, 2)}


ID2REL = {1: "P17", 2: "P131", 3: "P150"}


def test_to_official_maps_rows_to_pairs_and_columns_to_pids():
    feats = [feature("A", 3), feature("B", 2)]  # 6 + 2 pairs
    preds = np.zeros((8, 4), dtype=np.float32)
    preds[:, 0] = 1  # Na everywhere: never reported
    preds[1, 2] = 1  # A pair 1 = (0, 2)
    preds[1, 3] = 1
    preds[5, 1] = 1  # A pair 5 = (2, 1)
    preds[7, 1] = 1  # B pair 1 = (1, 0)
    out = ev.to_official(preds, feats, ID2REL)
    assert out == [rec(0, 2, "P131", "A"), rec(0, 2, "P150", "A"), rec(2, 1, "P17", "A"), rec(1, 0, "P17", "B")]
    assert all(type(x["h_idx"]) is int and type(x["t_idx"]) is int for x in out)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "bool", "int64"])
def test_to_official_accepts_torch_tensors(dtype):
    torch = pytest.importorskip("torch")
    feats = [feature("A", 3)]
    preds = torch.zeros((6, 4), dtype=getattr(torch, dtype))
    preds[3, 2] = 1  # pair 3 = (1, 2)
    assert ev.to_official(preds, feats, ID2REL) == [rec(1, 2, "P131", "A")]


def test_to_official_matches_a_loop_and_removes_duplicates():
    rng = np.random.default_rng(0)
    feats = [feature("A", 5), feature("B", 4), feature("A", 5)]  # "A" twice: its records appear once
    n_pairs = sum(len(f["hts"]) for f in feats)
    preds = (rng.random((n_pairs, 4)) < 0.3).astype(np.int64)
    expected, row = [], 0
    for f in feats:
        for h, t in f["hts"]:
            expected += [rec(int(h), int(t), ID2REL[c], f["title"]) for c in range(1, 4) if preds[row, c]]
            row += 1
    first = list({tuple(x.values()): x for x in reversed(expected)}.values())[::-1]
    first = sorted(first, key=expected.index)  # first occurrences, in input order
    assert len(first) < len(expected)
    assert ev.to_official(preds, feats, ID2REL) == first
    assert ev.to_official(np.zeros((0, 4)), [], ID2REL) == []


def test_to_official_rejects_a_row_count_mismatch():
    with pytest.raises(ValueError, match="7 rows but the features have 6 pairs"):
        ev.to_official(np.zeros((7, 4)), [feature("A", 3)], ID2REL)


# ---------------------------------------------------------------------------- analysis


def test_score_by_category_hand_case():
    cats = ev.score_by_category(PRED, TRUTH, {"P17": "country"})
    p17 = cats["per_relation"]["P17"]
    assert (p17["name"], p17["support"], p17["n_pred"], p17["n_correct"]) == ("country", 2, 4, 2)
    assert (p17["precision"], p17["recall"]) == pytest.approx((50.0, 100.0))
    assert cats["per_relation"]["P47"]["name"] == "P47"
    assert cats["per_relation"]["P47"]["f1"] == 0.0
    intra, inter = cats["sentence"]["intra"], cats["sentence"]["inter"]
    assert (intra["support"], intra["n_pred"], intra["n_correct"]) == (3, 2, 2)
    assert intra["f1"] == pytest.approx(80.0)
    assert (inter["support"], inter["n_pred"], inter["n_correct"]) == (2, 3, 1)
    assert (inter["precision"], inter["recall"], inter["f1"]) == pytest.approx((100 / 3, 50.0, 40.0))
    by_n = cats["n_relations"]
    assert list(by_n) == ["0", "1", "2"]
    assert (by_n["0"]["support"], by_n["0"]["n_pred"]) == (0, 2)
    assert (by_n["1"]["support"], by_n["1"]["n_correct"], by_n["1"]["f1"]) == (3, 2, pytest.approx(80.0))
    assert (by_n["2"]["support"], by_n["2"]["n_correct"], by_n["2"]["recall"]) == (2, 1, pytest.approx(50.0))


# ---------------------------------------------------------------------------- Codalab


REL_IDS = ["Na", "P17", "P47", "P150", "P361"]


@pytest.mark.parametrize("items, match", [
    ({"not": "a list"}, "must be a JSON list"),
    ([rec(0, 1, "P17"), "x"], "item 1 must be an object"),
    ([{"title": "Capitals", "h_idx": 0, "r": "P17"}], r"item 0 has missing fields \['t_idx'\]"),
    ([rec(0, 1, "P17", score=0.9)], r"item 0 has .*unexpected fields \['score'\]"),
    ([rec(0, 1, "P17"), rec("0", 1, "P17")], "item 1 field 'h_idx' must be int"),
    ([rec(True, 1, "P17")], "item 0 field 'h_idx' must be int"),
    ([rec(0, 1, 17)], "item 0 field 'r' must be str"),
    ([{**rec(0, 1, "P17"), "title": None}], "item 0 field 'title' must be str"),
    ([rec(0, 1, "P17", title="Nope")], "item 0 .title 'Nope'. field 'title': no document"),
    ([rec(0, 5, "P17")], "item 0 .* field 't_idx' = 5 is out of range: the document has 5 entities"),
    ([rec(-1, 0, "P17")], "item 0 .* field 'h_idx' = -1 is out of range"),
    ([rec(2, 2, "P17")], "item 0 .* 'h_idx' and 't_idx' are both 2"),
    ([rec(0, 1, "P999")], "item 0 .* field 'r' = 'P999' is not a known relation id"),
    ([rec(0, 1, "Na")], "item 0 .* field 'r' = 'Na' is not a known relation id"),
    ([rec(0, 1, "P17", evidence=[3])], "item 0 .* field 'evidence' must be a list of sentence ids in \\[0, 3\\)"),
    ([rec(0, 1, "P17"), rec(0, 2, "P17"), rec(0, 1, "P17")], "item 2 repeats item 0"),
])
def test_check_submission_rejects_each_malformed_case(items, match):
    with pytest.raises(ValueError, match=match):
        ev.check_submission(items, TRUTH, REL_IDS)


def test_check_submission_accepts_valid_and_checks_pid_shape_without_rel_ids():
    ev.check_submission(PRED + [rec(0, 1, "P361", evidence=[0, 2])], TRUTH, REL_IDS)
    ev.check_submission([], TRUTH, REL_IDS)
    ev.check_submission([rec(0, 1, "P9999")], TRUTH)
    with pytest.raises(ValueError, match="not a Wikidata property id"):
        ev.check_submission([rec(0, 1, "country")], TRUTH)


def test_check_submission_names_the_file(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps([rec(0, 1, "P17"), rec(0, 9, "P17")]))
    with pytest.raises(ValueError, match=r"result.json: item 1 .*'t_idx' = 9"):
        ev.check_submission(str(path), TRUTH, REL_IDS)


@pytest.mark.parametrize("as_path", [False, True])
def test_write_codalab_zip_puts_result_json_at_the_root(tmp_path, as_path):
    src = tmp_path / "result.json"
    src.write_text(json.dumps(PRED))
    out = ev.write_codalab_zip(str(src) if as_path else PRED, tmp_path / "sub" / "result.zip")
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["result.json"]
        assert json.loads(zf.read("result.json")) == PRED
    assert [p.name for p in out.parent.iterdir()] == ["result.zip"]  # no temporary file left behind


# ---------------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "evaluation.py"), *args], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture
def hand_files(tmp_path):
    paths = {}
    for name, obj in (("pred", PRED), ("truth", TRUTH), ("train", TRAIN), ("distant", DISTANT),
                      ("rel_info", {"P17": "country", "P150": "contains admin. territorial entity"})):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(obj))
    return {k: str(v) for k, v in paths.items()}


def test_cli_json(hand_files):
    f = hand_files
    res = run_cli("--pred", f["pred"], "--truth", f["truth"], "--train_annotated", f["train"],
                  "--train_distant", f["distant"], "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["f1"] == pytest.approx(60.0)
    assert out["ign_f1"] == pytest.approx(100 * 3 / 7)
    assert out["ign_f1_distant"] == pytest.approx(100 * 6 / 11)


def test_cli_text_with_per_relation(hand_files):
    f = hand_files
    res = run_cli("--pred", f["pred"], "--truth", f["truth"], "--train_annotated", f["train"],
                  "--rel_info", f["rel_info"], "--per_relation")
    assert res.returncode == 0, res.stderr
    assert "Ign F1            42.86" in res.stdout
    assert "F1                60.00" in res.stdout
    assert "P17 country" in res.stdout and "P47 " in res.stdout
    assert "intra" in res.stdout and "inter" in res.stdout and "by number of gold relations" in res.stdout


def test_cli_check_submission_and_zip(hand_files, tmp_path):
    f = hand_files
    res = run_cli("--check_submission", f["pred"], "--truth", f["truth"], "--codalab_zip", str(tmp_path / "r.zip"))
    assert res.returncode == 0, res.stderr
    assert zipfile.ZipFile(tmp_path / "r.zip").namelist() == ["result.json"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([rec(0, 1, "P17"), rec(0, 1, "P6")]))
    res = run_cli("--check_submission", str(bad), "--truth", f["truth"], "--rel_info", f["rel_info"])
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "bad.json: item 1" in res.stderr and "'P6' is not a known relation id" in res.stderr


def test_cli_names_a_missing_file(hand_files):
    res = run_cli("--pred", hand_files["pred"], "--truth", "/nonexistent/dev.json")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "/nonexistent/dev.json" in res.stderr
    res = run_cli("--pred", hand_files["pred"], "--truth", hand_files["truth"], "--rel_info", "/nonexistent/ri.json")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--rel_info file /nonexistent/ri.json" in res.stderr


def test_cli_refuses_predictions_the_truth_lacks_and_an_unlabelled_truth(hand_files, tmp_path):
    f = hand_files
    truth = json.loads(open(f["truth"]).read())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([rec(0, 1, "P17"), {**rec(0, 1, "P17"), "title": "no such doc"},
                               rec(0, 99, "P17"), rec(0, 1, "P6")]))
    res = run_cli("--pred", str(bad), "--truth", f["truth"], "--rel_info", f["rel_info"])
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "3 of 4 predictions" in res.stderr and "'no such doc'" in res.stderr
    assert "'t_idx' = 99 is out of range" in res.stderr and "'P6' is not a known relation id" in res.stderr
    unlabelled = tmp_path / "test.json"
    unlabelled.write_text(json.dumps([{k: v for k, v in d.items() if k != "labels"} for d in truth]))
    res = run_cli("--pred", f["pred"], "--truth", str(unlabelled))
    assert res.returncode == 2 and "has no labels in any document" in res.stderr


@pytest.mark.parametrize("docs, message", [
    ([{k: v for k, v in DOC.items() if k != "title"}], "document 0 (title None): field title: missing key"),
    (["a string"], "document 0 (title None): field <document>: a document must be a JSON object"),
    ([dict(DOC, title=["Capitals"])], "document 0 (title ['Capitals']): field title: must be a string"),
    ([dict(DOC, labels=[{"h": 0, "t": 99, "r": "P17"}])], "field labels[0].t: must be an entity index in [0, 5)"),
    ([], "no documents"),
])
@pytest.mark.parametrize("mode", ["--pred", "--check_submission"])
def test_cli_validates_the_truth_file_before_scoring(hand_files, tmp_path, capsys, docs, message, mode):
    truth = tmp_path / "bad_truth.json"
    truth.write_text(json.dumps(docs))
    assert ev.main([mode, hand_files["pred"], "--truth", str(truth)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"{truth}: 1 problem(s)" in err and message in err, err


@pytest.mark.parametrize("docs, message", [
    ([{"foo": 1}], "document 0 (title None): field vertexSet: missing key"),
    ([dict(DOC, labels=[{"h": 99, "t": 1, "r": "P17"}])], "document 0 (title 'Capitals'): field labels[0].h: must be "
                                                          "an entity index in [0, 5) (got 99)"),
    ([[["Speaker 1: hi"], [{"x": "Speaker 1", "y": "Bob", "r": ["per:alternate_names"]}]]],
     "document 0 (title None): field <document>: a document must be a JSON object"),
])
def test_cli_names_document_and_field_of_a_bad_training_file(hand_files, tmp_path, capsys, docs, message):
    train = tmp_path / "bad_train.json"
    train.write_text(json.dumps(docs))
    assert ev.main(["--pred", hand_files["pred"], "--truth", hand_files["truth"], "--train_annotated", str(train)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"error: {train}: " in err and message in err and "Error(" not in err, err


@pytest.mark.parametrize("what, flag", [("truth file", "--truth"), ("training file", "--train_annotated")])
@pytest.mark.parametrize("obj", [{"data": [DOC]}, {}])
def test_cli_refuses_a_json_object_for_a_list_of_documents(hand_files, tmp_path, capsys, what, flag, obj):
    path = tmp_path / "obj.json"
    path.write_text(json.dumps(obj))
    files = {"--truth": hand_files["truth"], "--train_annotated": hand_files["train"], flag: str(path)}
    assert ev.main(["--pred", hand_files["pred"], *[x for kv in files.items() for x in kv]]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {what} {path}: must be a JSON list of DocRED documents, got a JSON object\n"


def test_cli_refuses_a_folder_as_codalab_zip_before_writing(hand_files, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    assert ev.main(["--pred", hand_files["pred"], "--truth", hand_files["truth"], "--codalab_zip", str(folder)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: --codalab_zip {folder} is a folder: name a file in it, e.g. " \
        f"{folder / 'result.zip'}\n"
    assert list(folder.iterdir()) == []
    with pytest.raises(ValueError, match="is a folder"):
        ev.write_codalab_zip(PRED, folder)


def test_cli_zips_predictions_only_when_they_pass_the_submission_check(hand_files, tmp_path, capsys):
    repeated = tmp_path / "repeated.json"
    repeated.write_text(json.dumps(PRED + PRED))
    out_zip = tmp_path / "r.zip"
    assert ev.main(["--pred", str(repeated), "--truth", hand_files["truth"], "--codalab_zip", str(out_zip)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and not out_zip.exists()
    assert err == f"error: submission {repeated}: item 5 repeats item 0 (same title, h_idx, t_idx, r); the Codalab " \
        f"scorer would count it twice against precision\n"


@pytest.mark.parametrize("flags, message", [
    (["--pred", "pred", "--end_to_end", "--codalab_zip", "out.zip"], "--codalab_zip writes official records"),
    (["--pred", "pred", "--end_to_end", "--per_relation", "--train_annotated", "train"],
     "--per_relation, --train_annotated: flag(s) for scoring official records"),
    (["--pred", "pred", "--end_to_end", "--rel_info", "rel_info"], "--end_to_end scores predict.py's output"),
    (["--check_submission", "pred", "--fact_cache_dir", "cache"], "this run has no --pred"),
])
def test_cli_refuses_flags_it_would_ignore_or_cannot_honour(hand_files, tmp_path, capsys, flags, message):
    argv = [hand_files.get(a, str(tmp_path / a) if a in ("out.zip", "cache") else a) for a in flags]
    assert ev.main(argv + ["--truth", hand_files["truth"]]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out.zip").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("flag, under", [("--codalab_zip", "r.zip"), ("--codalab_zip", "sub/r.zip"),
                                         ("--fact_cache_dir", ""), ("--fact_cache_dir", "cache")])
def test_cli_refuses_an_output_under_a_file_before_scoring(hand_files, tmp_path, capsys, flag, under):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    out_path = str(a_file / under) if under else str(a_file)
    argv = ["--pred", hand_files["pred"], "--truth", hand_files["truth"], "--train_annotated", hand_files["train"]]
    assert ev.main(argv + [flag, out_path]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {flag} {out_path}: cannot write there ({a_file} is not a writable folder); " \
        f"choose another path\n"
    assert a_file.read_text() == "x"


def test_cli_refuses_a_zip_over_an_input_and_a_fact_cache_without_facts(hand_files, capsys):
    truth = Path(hand_files["truth"])
    before = truth.read_bytes()
    assert ev.main(["--pred", hand_files["pred"], "--truth", str(truth), "--codalab_zip", str(truth)]) == 2
    assert "--truth and --codalab_zip are the same file" in capsys.readouterr().err and truth.read_bytes() == before
    assert ev.main(["--pred", hand_files["pred"], "--truth", str(truth), "--fact_cache_dir", str(truth.parent)]) == 2
    assert "--fact_cache_dir keeps the facts of --train_annotated or --train_distant" in capsys.readouterr().err


@pytest.mark.parametrize("rel_info, message", [
    ([["P17", "country"]], "must be a non-empty JSON object {relation id: name}, e.g. {\"P17\": \"country\"}; "
                           "got a JSON list"),
    ([], "got a JSON list"),
    ({}, "got an empty object"),
    ({"a": 1}, "entry 'a': the name must be a string, got 1"),
    ({"data": [{"P17": "country"}]}, "entry 'data': the name must be a string"),
])
@pytest.mark.parametrize("mode", ["--pred", "--check_submission"])
def test_cli_refuses_a_rel_info_that_is_no_map_of_names(hand_files, tmp_path, capsys, rel_info, message, mode):
    path = tmp_path / "ri.json"
    path.write_text(json.dumps(rel_info))
    argv = [mode, hand_files["pred"], "--truth", hand_files["truth"], "--rel_info", str(path)]
    assert ev.main(argv + (["--per_relation"] if mode == "--pred" else [])) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: --rel_info file {path}: ") and message in err and err.count("\n") == 1


def test_cli_scores_a_relation_the_truth_file_lacks_as_a_wrong_prediction(hand_files, tmp_path, capsys):
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(PRED + [rec(0, 4, "P1198")]))  # no label of the truth file holds P1198
    assert ev.main(["--pred", str(pred), "--truth", hand_files["truth"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_pred"] == len(PRED) + 1
    assert ev.main(["--pred", str(pred), "--truth", hand_files["truth"], "--rel_info", hand_files["rel_info"]]) == 2
    assert "field 'r' = 'P1198' is not a known relation id" in capsys.readouterr().err


def test_cli_names_the_rel_info_file_of_an_unknown_relation(hand_files, tmp_path, capsys):
    path = tmp_path / "ri.json"
    path.write_text(json.dumps({"P1": "head of government"}))
    assert ev.main(["--pred", hand_files["pred"], "--truth", hand_files["truth"], "--rel_info", str(path)]) == 2
    assert f"field 'r' = 'P17' is not a known relation id (not in --rel_info file {path})" in capsys.readouterr().err


# ---------------------------------------------------------------------------- end-to-end scores (evaluation_e2e.py)


def far_span(out: dict) -> None:
    out["entities"][0]["mentions"][0].update(char_start=100000, char_end=100005)


@pytest.mark.parametrize("damage, message", [
    (far_span, "field entities[0].mentions[0]: needs integers 0 <= char_start < char_end <= 48, the length of the "
               "gold document's text (got {'char_start': 100000, 'char_end': 100005})"),
    (lambda out: out["entities"][0]["mentions"][0].update(char_start=True), "field entities[0].mentions[0]: needs "
                                                                             "integers"),
    (lambda out: out["relations"][0].update(h_idx=True), "field relations[0].h_idx: must be an entity index in "
                                                         "[0, 5) (got True)"),
    (lambda out: out["entities"].append({"type": "LOC", "mentions": []}), "field entities[5].mentions: must be a "
                                                                           "non-empty list of mentions (got [])"),
])
@pytest.mark.parametrize("cli", ["evaluation_e2e", "evaluation"])
def test_end_to_end_refuses_bad_output_objects_naming_file_item_and_field(tmp_path, capsys, damage, message, cli):
    import evaluation_e2e

    (out,) = evaluation_e2e.gold_outputs(TRUTH)
    damage(out)
    gold, pred = tmp_path / "gold.json", tmp_path / "pred.json"
    gold.write_text(json.dumps(TRUTH))
    pred.write_text(json.dumps([out]))
    argv = ["--gold", str(gold)] if cli == "evaluation_e2e" else ["--end_to_end", "--truth", str(gold)]
    assert (evaluation_e2e if cli == "evaluation_e2e" else ev).main(argv + ["--pred", str(pred)]) == 2
    stdout, err = capsys.readouterr()
    assert stdout == "" and err.startswith(f"error: prediction file {pred}: 1 problem(s): item 0 (title 'Capitals'): ")
    assert message in err and err.count("\n") == 1, err


def test_end_to_end_names_the_file_and_item_of_a_title_the_gold_lacks(tmp_path, capsys):
    import evaluation_e2e

    (out,) = evaluation_e2e.gold_outputs(TRUTH)
    gold, pred = tmp_path / "gold.json", tmp_path / "pred.json"
    gold.write_text(json.dumps(TRUTH))
    pred.write_text(json.dumps([out, dict(out, title="nope")]))
    assert evaluation_e2e.main(["--gold", str(gold), "--pred", str(pred)]) == 2
    assert capsys.readouterr().err == f"error: prediction file {pred}: 1 problem(s): item 1 (title 'nope'): field " \
        f"title: no gold document has this title\n"


# ---------------------------------------------------------------------------- corpora


def gold_records(docs: list) -> list:
    return [rec(lab["h"], lab["t"], lab["r"], doc["title"]) for doc in docs for lab in doc["labels"]]


def check_perfect_half_and_wrong(docs: list) -> None:
    gold = list({tuple(x.values()): x for x in gold_records(docs)}.values())
    n = len(gold)
    assert n >= 2
    s = ev.official_evaluate(gold, docs)
    assert (s["precision"], s["recall"], s["f1"]) == (100.0, 100.0, 100.0)
    half = gold[: n // 2]
    s = ev.official_evaluate(half, docs)
    assert s["precision"] == 100.0 and s["recall"] == pytest.approx(100 * (n // 2) / n)
    # the same pair with a relation it does not hold
    wrong = next(dict(g, r=r) for g in gold for r in ("P17", "P131", "P1")
                 if (g["title"], g["h_idx"], g["t_idx"], r) not in {tuple(x.values()) for x in gold})
    s = ev.official_evaluate(gold + [wrong], docs)
    assert s["precision"] == pytest.approx(100 * n / (n + 1)) and s["recall"] == 100.0


def test_synthetic_corpus_perfect_half_and_wrong(synthetic_dir):
    dev = json.loads((Path(synthetic_dir) / "dev.json").read_text())
    check_perfect_half_and_wrong(dev)
    train = json.loads((Path(synthetic_dir) / "train_annotated.json").read_text())
    s = ev.official_evaluate(gold_records(dev), dev, train_annotated=str(Path(synthetic_dir) / "train_annotated.json"))
    assert s["ign_f1"] <= s["f1"]
    assert s["ign_f1"] == ev.official_evaluate(gold_records(dev), dev, train_annotated=train)["ign_f1"]


def test_synthetic_test_file_round_trip(synthetic_dir, tmp_path):
    test_docs = json.loads((Path(synthetic_dir) / "test.json").read_text())
    rel_info = json.loads((Path(synthetic_dir) / "rel_info.json").read_text())
    pred = [rec(0, 1, next(iter(rel_info)), doc["title"]) for doc in test_docs if len(doc["vertexSet"]) >= 2]
    ev.check_submission(pred, test_docs, list(rel_info))
    zipped = ev.write_codalab_zip(pred, tmp_path / "result.zip")
    assert json.loads(zipfile.ZipFile(zipped).read("result.json")) == pred


def test_redocred_dev_perfect_half_wrong_and_ign():
    dev = json.loads(shared_file("redocred", "dev_revised.json").read_text())
    check_perfect_half_and_wrong(dev)
    gold = gold_records(dev)
    wrong = [rec(0, 1, "P0", doc["title"]) for doc in dev]  # no gold fact has relation P0
    s = ev.official_evaluate(gold + wrong, dev, train_annotated=dev[:250])
    assert s["recall"] == 100.0 and s["precision"] == pytest.approx(100 * len(gold) / (len(gold) + len(dev)))
    # the first half's facts are "seen in train": removing them lowers precision, recall is unchanged
    assert 0.0 < s["ign_f1"] < s["f1"]
    rel_info = json.loads(shared_file("docred-meta", "rel_info.json").read_text())
    ev.check_submission(gold_records(dev[:50]), dev, list(rel_info))
    cats = ev.score_by_category(gold, dev, rel_info)
    assert all(row["f1"] == 100.0 for row in cats["per_relation"].values())
    assert sum(row["support"] for row in cats["sentence"].values()) == s["n_gold"]
