"""The biomedical task: PubTator and EoG .data readers (biomed.py), the pair filter, train_bio.py end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

import biomed
import prepro
import text2doc
import train_bio
import utils
from conftest import ROOT, shared_file
from settings import DocRESettings

CDR = biomed.DATASETS["cdr"]
SAMPLE = ("cdr", "CDR_sample.PubTator.txt")


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def nlp():
    return text2doc.load_spacy()


@pytest.fixture(scope="module")
def sample_docs(nlp) -> List[Dict[str, Any]]:
    """The CDR sample set read from PubTator (its one unmatched relation dropped)."""
    return biomed.read_pubtator(str(shared_file(*SAMPLE)), nlp, drop_unmatched=True)[0]


def pubtator_blocks(path: Path) -> List[str]:
    return path.read_text(encoding="utf-8").strip().split("\n\n")


def write_blocks(path: Path, blocks: List[str]) -> Path:
    path.write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")
    return path


def write_data(docs: List[Dict[str, Any]], path: Path, dataset: biomed.BioDataset = CDR) -> Path:
    """An EoG .data file written from its description: PMID, text (sentences "|", tokens " "), then per typed pair
    relation, direction, cross, two closest-mention spans, and per argument ids, names, type, starts, ends, sentences
    (word ids over the whole document)."""
    lines = []
    for d in docs:
        offset = np.concatenate([[0], np.cumsum([len(s) for s in d["sents"]])])
        fields = [d["title"], "|".join(" ".join(s) for s in d["sents"])]
        positive = {(lab["h"], lab["t"]) for lab in d["labels"]}

        def arg(e: int) -> List[str]:
            ms = d["vertexSet"][e]
            return [ms[0]["id"], "|".join(m["name"] for m in ms), ms[0]["type"],
                    ":".join(str(offset[m["sent_id"]] + m["pos"][0]) for m in ms),
                    ":".join(str(offset[m["sent_id"]] + m["pos"][1]) for m in ms),
                    ":".join(str(m["sent_id"]) for m in ms)]

        for h, t in biomed.typed_pairs(d, dataset):
            rel = f"1:{dataset.relation}:2" if (h, t) in positive else "1:NR:2"
            cross = "NON-CROSS" if biomed.is_intra(d, h, t) else "CROSS"
            fields += [rel, "L2R", cross, "0-1", "0-1", *arg(h), *arg(t)]
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def canonical(doc: Dict[str, Any]) -> Dict[str, Any]:
    """A document with its labels in a fixed order."""
    return {**doc, "labels": sorted(doc["labels"], key=lambda lab: (lab["h"], lab["t"], lab["r"]))}


# ----------------------------------------------------------------------------- the real sample set


def test_sample_set_parses_with_its_counts(sample_docs):
    path = shared_file(*SAMPLE)
    blocks = pubtator_blocks(path)
    relation_lines = [ln for b in blocks for ln in b.splitlines() if ln.count("\t") == 3]
    assert len(blocks) == len(sample_docs) == 50
    assert len(relation_lines) == 124
    with pytest.raises(biomed.BioFormatError, match=r"document 5 \(PMID 2385256\), line 143: field relation: CID "
                                                    r"names identifier 'D008278'"):
        biomed.parse_pubtator(str(path))
    abstracts, dropped = biomed.parse_pubtator(str(path), drop_unmatched=True)
    assert dropped == 1 and sum(len(a.relations) for a in abstracts) == 123
    assert sum(len(d["labels"]) for d in sample_docs) == 123
    assert all(a.title and a.abstract for a in abstracts)
    for a in abstracts:  # mention texts equal the text at their offsets (read here independently of the parser)
        for m in a.mentions:
            assert a.text[m.start:m.end] == m.text
    n_lines = sum(1 for b in blocks for ln in b.splitlines() if ln.count("\t") in (5, 6))
    assert sum(len(a.mentions) for a in abstracts) + sum(a.ungrounded for a in abstracts) == n_lines == 925
    for d in sample_docs:  # every mention is exactly its tokens
        for ent in d["vertexSet"]:
            for m in ent:
                words = d["sents"][m["sent_id"]][m["pos"][0]:m["pos"][1]]
                assert "".join(words) == m["name"].replace(" ", "")


def test_sample_set_is_valid_docred_and_pairs_are_typed(sample_docs, minilm_tokenizer):
    settings = DocRESettings(CDR.rel2id, max_seq_length=512, pair_types=CDR.pair_types)  # the filter, as data
    docs = [biomed.keep_paired(d, CDR) for d in sample_docs]
    feats = prepro.features_from_documents(docs, minilm_tokenizer, settings)
    assert len(feats) == 50
    n_pairs = 0
    for f, d in zip(feats, docs):
        types = prepro.entity_types(d)
        assert all("Chemical" in types[h] and "Disease" in types[t] for h, t in f["hts"].tolist())
        assert len(f["hts"]) == len(biomed.typed_pairs(d, CDR))
        gold = {(lab["h"], lab["t"]) for lab in d["labels"]}
        assert {tuple(f["hts"][r]) for r in f["labels"][:, 0]} == gold
        n_pairs += len(f["hts"])
    assert feats.stats["pairs"] == n_pairs and feats.stats["positive_pairs"] == 123


def test_data_file_reads_into_the_same_documents_as_its_pubtator_twin(sample_docs, tmp_path):
    path = write_data([biomed.keep_paired(d, CDR) for d in sample_docs], tmp_path / "sample.data")
    assert biomed.detect_format(str(path)) == "data"
    assert biomed.detect_format(str(shared_file(*SAMPLE))) == "pubtator"
    data_docs, counts = biomed.read_data(str(path))
    assert counts["name_mismatches"] == 0
    twins = [canonical(biomed.keep_paired(d, CDR)) for d in sample_docs]
    assert [canonical(d) for d in data_docs] == twins


def test_not_include_pairs_are_left_out_of_the_candidates(sample_docs, tmp_path):
    doc = biomed.keep_paired(sample_docs[0], CDR)
    path = write_data([doc], tmp_path / "one.data")
    line = path.read_text().rstrip("\n").split("\t")
    pair = next(i for i in range(2, len(line), 17) if line[i] == "1:NR:2")
    line[pair] = "not_include"
    path.write_text("\t".join(line) + "\n")
    (read,), _ = biomed.read_data(str(path))
    assert len(read["excluded_pairs"]) == 1
    assert len(biomed.typed_pairs(read, CDR)) == len(biomed.typed_pairs(doc, CDR)) - 1


# ----------------------------------------------------------------------------- bad input


GOOD = ["1|t|Aspirin causes ulcers.", "1|a|Ulcers follow aspirin use.",
        "1\t0\t7\tAspirin\tChemical\tD1", "1\t15\t21\tulcers\tDisease\tD2", "1\tCID\tD1\tD2"]
GOOD_DATA = ["1", "Aspirin causes ulcers .", "1:CID:2", "L2R", "NON-CROSS", "0-1", "2-3",
             "D1", "Aspirin", "Chemical", "0", "1", "0", "D2", "ulcers", "Disease", "2", "3", "0"]


@pytest.mark.parametrize("change, message", [
    ((3, "1\t15\t99\tulcers\tDisease\tD2"), r"line 4: field offsets: \[15, 99\) is not a span of the text"),
    ((3, "1\t15\t21\tulcer!\tDisease\tD2"), r"line 4: field text: 'ulcer!' differs from the text at its offsets"),
    ((4, "1\tCID\tD1\tD9"), r"line 5: field relation: CID names identifier 'D9'"),
    ((3, "1\t7\t8\t \tDisease\tD2"), r"line 4: field text: the mention covers only whitespace"),
    ((1, None), r"field abstract: (a mention line before the title and abstract lines|no `1\|a\|` line)"),
    ((2, "1\tx\t7\tAspirin\tChemical\tD1"), r"line 3: field offsets: not integers"),
    ((4, "1\tXYZ\tD1\tD2"), r"line 5: field relation: 'XYZ' is not a relation of CDR or GDA \(CID, GDA\)"),
    ((1, "1|a|" + "x" * 1_000_001), r"line 2: field abstract: 1,000,001 characters, more than spaCy's limit of "
                                    r"1,000,000"),  # refused before spaCy's E088
])
def test_bad_pubtator_names_file_document_line_and_field(tmp_path, nlp, change, message):
    lines = list(GOOD)
    i, new = change
    if new is None:
        del lines[i]
    else:
        lines[i] = new
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(biomed.BioFormatError, match=message) as err:
        biomed.read_pubtator(str(path), nlp)
    assert str(path) in str(err.value) and "document 0 (PMID 1)" in str(err.value)


def test_good_pubtator_and_token_splitting(tmp_path, nlp):
    lines = list(GOOD) + ["1\t25\t29\tcers\tDisease\tD3"]  # "Ulcers": a boundary inside a spaCy token
    path = tmp_path / "good.txt"
    path.write_text("\n".join(lines) + "\n")
    (doc,), counts = biomed.read_pubtator(str(path), nlp)
    assert counts["mentions_off_token_boundaries"] == 1 and counts["tokens_split"] == 1
    assert doc["sents"] == [["Aspirin", "causes", "ulcers", "."], ["Ul", "cers", "follow", "aspirin", "use", "."]]
    assert [[m["name"] for m in e] for e in doc["vertexSet"]] == [["Aspirin"], ["ulcers"], ["cers"]]
    assert doc["labels"] == [{"h": 0, "t": 1, "r": "CID", "evidence": []}]


def test_bad_data_file_and_unknown_format(tmp_path):
    bad = tmp_path / "bad.data"
    bad.write_text("1\tA b .\t1:CID:2\tL2R\n")
    with pytest.raises(utils.UserError, match="neither a PubTator file"):
        biomed.read_corpus(str(bad), lambda: None)
    bad.write_text("\t".join(GOOD_DATA[:17] + ["9", "0"]) + "\n")
    with pytest.raises(biomed.BioFormatError, match=r"document 0 \(PMID 1\), line 1, pair 0: field mention offsets "
                                                    r"of 'D2': words \[2, 9\) are not inside sentence 0"):
        biomed.read_data(str(bad))
    bad.write_text("\t".join(GOOD_DATA[:2] + ["1:XYZ:2"] + GOOD_DATA[3:]) + "\n")
    with pytest.raises(biomed.BioFormatError, match=r"line 1: field relation: '1:XYZ:2' is not 1:<relation>:2"):
        biomed.read_data(str(bad))


@pytest.mark.parametrize("pmid", [1, 200])  # in the decoder's first 8 KB block, and far after it
def test_invalid_utf8_anywhere_is_one_line_naming_line_pmid_and_offset(tmp_path, capsys, pmid):
    blocks = ["\n".join(line.replace("1", str(k), 1) for line in GOOD) for k in range(1, 201)]
    data = bytearray("\n\n".join(blocks).encode())
    offset = data.index(f"{pmid}|t|A".encode()) + len(f"{pmid}|t|")
    data[offset] = 0xFF
    path = tmp_path / "bad.txt"
    path.write_bytes(bytes(data))
    assert utils.guarded(lambda: biomed.read_corpus(str(path), lambda: None)) == 2
    assert capsys.readouterr().err == (f"error: {path} line {6 * pmid - 5} (PMID {pmid}): not valid UTF-8 (invalid "
                                       f"start byte: byte b'\\xff' at offset {offset}); re-save the file as UTF-8\n")


def test_a_byte_order_mark_is_ignored(tmp_path, nlp):
    plain, bom = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text("\n".join(GOOD) + "\n")
    bom.write_text("\ufeff" + "\n".join(GOOD) + "\n")
    assert biomed.detect_format(str(bom)) == "pubtator" and biomed.looks_like_pubtator(str(bom))
    assert biomed.read_pubtator(str(bom), nlp) == biomed.read_pubtator(str(plain), nlp)
    data = tmp_path / "bom.data"
    data.write_text("\ufeff" + "\t".join(GOOD_DATA) + "\n")
    assert biomed.detect_format(str(data)) == "data"
    assert biomed.read_data(str(data))[0][0]["title"] == "1"


def test_pair_scores_refuse_a_label_of_another_relation():
    doc = {"title": "7", "sents": [["A", "b"]], "labels": [{"h": 0, "t": 1, "r": "CID"}],
           "vertexSet": [[{"name": "A", "pos": [0, 1], "sent_id": 0, "type": "Chemical"}],
                         [{"name": "b", "pos": [1, 2], "sent_id": 0, "type": "Disease"}]]}
    assert biomed.candidate_table([doc], CDR)[1].tolist() == [True]
    with pytest.raises(utils.UserError, match=r"document 1 \(PMID 7\): field labels: relation 'GDA', not cdr's CID"):
        biomed.candidate_table([doc, {**doc, "labels": [{"h": 0, "t": 1, "r": "GDA"}]}], CDR)


def test_a_label_outside_the_candidate_pairs_is_refused(minilm_tokenizer):
    doc = {"title": "x", "sents": [["A", "b", "c", "."]],
           "vertexSet": [[{"name": "A", "pos": [0, 1], "sent_id": 0, "type": "Chemical"}],
                         [{"name": "b", "pos": [1, 2], "sent_id": 0, "type": "Disease"}],
                         [{"name": "c", "pos": [2, 3], "sent_id": 0, "type": "Chemical"}]],
           "labels": [{"h": 0, "t": 2, "r": "CID"}]}
    settings = DocRESettings(CDR.rel2id, max_seq_length=64)
    with pytest.raises(prepro.ValidationError, match=r"document 0 \(title 'x'\): field labels: .*\[\[0, 2\]\]"):
        prepro.features_from_documents([doc], minilm_tokenizer, settings, pair_filter=biomed.pair_filter(CDR))
    doc["labels"] = [{"h": 2, "t": 1, "r": "CID"}]
    f = prepro.features_from_documents([doc], minilm_tokenizer, settings, pair_filter=biomed.pair_filter(CDR))[0]
    assert f["hts"].tolist() == [[0, 1], [2, 1]] and f["labels"].tolist() == [[1, 1]]


def test_cli_refuses_bad_input_with_status_2(tmp_path, minilm_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(GOOD[:4] + ["1\tCID\tD1\tD9"]) + "\n")
    argv = ["--data_dir", str(tmp_path), "--train_file", "bad.txt", "--dev_file", "bad.txt", "--test_file", "",
            "--model_name_or_path", minilm_path, "--output_dir", str(tmp_path / "run"), "--device", "cpu"]
    assert utils.guarded(lambda: train_bio.main(argv)) == 2
    assert "field relation: CID names identifier 'D9'" in capsys.readouterr().err
    (tmp_path / "unlabelled.txt").write_text("\n".join(GOOD[:4]) + "\n")  # a candidate pair, but no CID line
    (tmp_path / "good.txt").write_text("\n".join(GOOD) + "\n")
    argv[argv.index("bad.txt")] = "unlabelled.txt"  # as --train_file: it trained and wrote a model of nothing
    argv[argv.index("bad.txt")] = "good.txt"
    assert utils.guarded(lambda: train_bio.main(argv)) == 2
    assert "unlabelled.txt has no CID relation between a Chemical and a Disease in any document" in \
        capsys.readouterr().err and not (tmp_path / "run").exists()
    argv[argv.index("unlabelled.txt")] = "good.txt"  # an abstract's pairs cost memory: capped as in train.py
    assert utils.guarded(lambda: train_bio.main(argv + ["--max_entities", "1"])) == 2
    assert "good.txt: 1 problem(s) in its documents:\n  document 0 (title '1'): field vertexSet: 2 entities, more " \
           "than --max_entities 1 (2 entity pairs" in capsys.readouterr().err and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- learning and the engine


def test_predict_tells_pubtator_by_content_and_refuses_a_bad_one(tmp_path, capsys):
    import predict

    (tmp_path / "plain.txt").write_text("Who|t|what is this line?\nAnother document.\n")
    (tmp_path / "abstracts.txt").write_text("1|t|Aspirin and pain.\n1|a|Aspirin relieves pain.\n")
    assert text2doc.input_kind(tmp_path / "plain.txt") == ".txt"
    assert text2doc.input_kind(tmp_path / "abstracts.txt") == ".pubtator"
    bad = tmp_path / "bad.pubtator"
    bad.write_text("1|t|Aspirin and pain.\n1|a|Aspirin relieves pain.\n1\t0\t99\tAspirin\tChemical\tD001241\n")
    out = tmp_path / "out.json"
    assert predict.main(["--model", str(tmp_path), "--input", str(bad), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: 1 problem(s) in this PubTator file") and "Traceback" not in err
    assert "document 0 (PMID 1), line 3: field offsets: [0, 99) is not a span of the text" in err
    assert not out.exists()
    argv = ["--model", str(tmp_path), "--input", str(tmp_path / "abstracts.txt"), "--entities", "spacy"]
    assert predict.main(argv) == 2 and "PubTator carries its entities" in capsys.readouterr().err


def test_text_blind_baselines_of_the_held_out_abstracts(sample_docs):
    """The figures docs/biomedical.md and studies/cdr-sample give for the last 10 abstracts (227 pairs, 36 CID)."""
    scores = biomed.text_blind_scores(sample_docs[40:], CDR)
    every, same = scores["every_pair"], scores["same_sentence"]
    assert (every["n_pred"], every["n_gold"], every["intra_n_gold"]) == (227, 36, 25)
    assert round(every["f1"], 1) == 27.4 and round(same["f1"], 1) == 53.8
    assert round(same["intra_f1"], 1) == 61.0 and same["inter_f1"] == 0


def test_torchrun_two_processes_then_test_mode_and_table(tmp_path, tiny_bert_dir):
    blocks = pubtator_blocks(shared_file(*SAMPLE))
    data = tmp_path / "cdr"
    data.mkdir()
    write_blocks(data / "train.txt", blocks[:6])  # holds the sample's unmatched relation
    write_blocks(data / "dev.txt", blocks[40:43])
    write_blocks(data / "test.txt", blocks[43:46])
    common = ["--data_dir", str(data), "--train_file", "train.txt", "--dev_file", "dev.txt", "--test_file",
              "test.txt", "--device", "cpu", "--no_progress", "--emb_size", "64", "--block_size", "16",
              "--max_seq_length", "512", "--drop_unmatched_relations"]
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "sweep" / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train_bio.py"), *common, "--model_name_or_path", tiny_bert_dir, "--output_dir", str(run),
           "--max_steps", "2", "--train_batch_size", "2", "--loss", "bce"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    args = json.loads((run / "args.json").read_text())
    assert args["task"] == "cdr" and args["world_size"] == 2 and args["reader"]["train"]["dropped_relations"] == 1
    for name in ("best.pt", "dev_pred.json", "dev_scores.json", "test_pred.json", "test_scores.json", "scores.json"):
        assert (run / name).exists(), name
    assert (run / "model" / "config.json").exists()
    scores = json.loads((run / "scores.json").read_text())
    assert {"dev_f1", "test_f1", "test_intra_f1", "test_inter_f1"} <= set(scores)
    again = train_bio.main([*common, "--load_path", str(run), "--output_dir", str(tmp_path / "test-mode")])
    assert again["test_f1"] == pytest.approx(scores["test_f1"])
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_tables

    report = make_tables.main([str(tmp_path / "sweep")])
    assert "## CDR" in report.markdown and "| tiny" in report.markdown.replace("| tiny-bert", "| tiny")


def test_bio_model_folder_predicts_only_its_candidate_pairs(tmp_path, tiny_bert_dir, sample_docs, capsys):
    import predict

    data = tmp_path / "cdr"
    data.mkdir()
    blocks = pubtator_blocks(shared_file(*SAMPLE))
    write_blocks(data / "train.txt", blocks[:2])
    write_blocks(data / "dev.txt", blocks[40:42])
    run = tmp_path / "run"
    train_bio.main(["--data_dir", str(data), "--train_file", "train.txt", "--dev_file", "dev.txt", "--test_file", "",
                    "--model_name_or_path", tiny_bert_dir, "--output_dir", str(run), "--device", "cpu",
                    "--no_progress", "--emb_size", "64", "--block_size", "16", "--max_seq_length", "512",
                    "--max_steps", "1", "--loss", "bce"])
    config_path = run / "model" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["meta"]["settings"]["pair_types"] == [["Chemical", "Disease"]]
    # the folder re-scores its PubTator dev file with ATLOP's pair F1, as its card says
    card = (run / "model" / "README.md").read_text()
    assert "--input abstracts.PubTator.txt" in card and "Marie Curie" not in card
    assert predict.main(["verify", "--model", str(run / "model"), "--data", str(data / "dev.txt"), "--no_progress"]) == 0
    dev, said = config["training"]["dev"]["scores"], capsys.readouterr().out
    assert f"verified: F1 {dev['f1']:.4f} equals" in said and dev["n_pred"] > 0
    assert f"({dev['n_correct']} of {dev['n_pred']} predicted facts correct, {dev['n_gold']} gold)" in said
    xyz = tmp_path / "xyz.txt"  # a relation of another name is not counted as gold: refused, as training refuses it
    xyz.write_text((data / "dev.txt").read_text().replace("\tCID\t", "\tXYZ\t", 1))
    assert predict.main(["verify", "--model", str(run / "model"), "--data", str(xyz), "--no_progress"]) == 2
    assert "field relation: 'XYZ' is not a relation of CDR or GDA" in capsys.readouterr().err
    config["decision"]["threshold"] = 1e-6  # every pair the model scores is predicted
    config_path.write_text(json.dumps(config))
    doc = sample_docs[45]  # all its entities: chemical->disease, disease->chemical and same-type pairs
    docs = tmp_path / "docs.json"
    docs.write_text(json.dumps([doc]))
    out = tmp_path / "pred.json"
    assert predict.main(["--model", str(run / "model"), "--input", str(docs), "--output", str(out)]) == 0
    pairs = {(r["h_idx"], r["t_idx"]) for r in json.loads(out.read_text())[0]["relations"]}
    assert pairs and pairs == set(biomed.typed_pairs(doc, CDR))
    assert len(doc["vertexSet"]) * (len(doc["vertexSet"]) - 1) > len(pairs)
    for name in ("abstract.pubtator", "CDR_abstract.PubTator.txt"):  # PubTator in, as BioCreative names its files
        write_blocks(tmp_path / name, blocks[45:46])
        assert predict.main(["--model", str(run / "model"), "--input", str(tmp_path / name), "--output", str(out)]) == 0
        (got,) = json.loads(out.read_text())
        assert got["title"] == doc["title"] and [[m["pos"] for m in e["mentions"]] for e in got["entities"]] == [
            [m["pos"] for m in e] for e in doc["vertexSet"]]
        assert {(r["h_idx"], r["t_idx"]) for r in got["relations"]} == pairs
    # a user's own abstract: entities given with the model's types, never spaCy's (they have DocRED's types)
    text = "Lidocaine-induced cardiac asystole. A bolus of lidocaine caused depression in a patient with asthma."
    mine = {"title": "mine", "text": text, "entities": [
        {"type": "Chemical", "mentions": [[0, 9], [47, 56]]}, {"type": "Disease", "mentions": [[18, 34]]},
        {"type": "Disease", "mentions": [[64, 74]]}, {"type": "Disease", "mentions": [[93, 99, "asthma"]]}]}
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text(json.dumps(mine) + "\n")
    assert predict.main(["--model", str(run / "model"), "--input", str(jsonl), "--output", str(out)]) == 0
    relations = json.loads(out.read_text())[0]["relations"]
    assert {(r["h_idx"], r["t_idx"]) for r in relations} == {(0, 1), (0, 2), (0, 3)}
    assert {(r["r"], r["relation"]) for r in relations} == {("CID", "chemical-induced disease")}
    capsys.readouterr()
    (tmp_path / "mine.txt").write_text(text + "\n")
    mine["entities"][3]["type"] = "PER"
    (tmp_path / "per.jsonl").write_text(json.dumps(mine) + "\n")
    for source, message in ((["--text", text], "--text: field entities: missing; the model scores pairs of "
                                                "Chemical, Disease entities, which spaCy's NER does not find"),
                            (["--input", str(tmp_path / "mine.txt")], "mine.txt: line 1: field entities: missing"),
                            (["--input", str(tmp_path / "per.jsonl")],
                             "per.jsonl: line 1 (title 'mine'): field entities[3].type: must be one of Chemical, "
                             "Disease, got 'PER'")):
        assert predict.main(["--model", str(run / "model"), *source, "--output", str(out)]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(text2doc.InputError, match="text 0 .title 'text 0'.: field entities: missing"):
        predict.DocREPipeline.from_pretrained(str(run / "model"))(text)
    import spacy
    import spacy_docre  # noqa: F401 (registers the factory)

    with pytest.raises(ValueError, match="scores pairs of Chemical, Disease entities, and this component reads"):
        spacy.blank("en").add_pipe("docre", config={"model": str(run / "model")})
    config["meta"]["settings"]["pair_types"] = [["Chemical"]]
    config_path.write_text(json.dumps(config))
    assert predict.main(["--model", str(run / "model"), "--input", str(docs), "--output", str(out)]) == 2
    assert "pair_types must be a list of [head type, tail type]" in capsys.readouterr().err
