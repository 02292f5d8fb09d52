"""A trained model is one folder: test mode and predict.py use it alone, after its training data and encoder are gone.

One tiny model is trained (random BERT copied to a temporary folder, non-default head sizes, a few steps); then the
encoder copy and the training data (rel_info.json included) are deleted, and everything below reads the run folder.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.inference import predict_outputs
import evaluation
import predict
import text2doc
import train
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]
HEAD = ["--emb_size", "48", "--block_size", "8", "--max_seq_length", "256"]


def common(out):
    return ["--output_dir", str(out), "--cache_dir", "none", "--no_progress", "--test_batch_size", "4"]


@pytest.fixture(scope="module")
def trained(small_synthetic_dir, tiny_bert_dir, tmp_path_factory):
    """(run folder, folder holding only test.json): the run's data and encoder deleted after training."""
    base = tmp_path_factory.mktemp("folder")
    data, encoder = base / "data", base / "encoder-copy"
    shutil.copytree(small_synthetic_dir, data)
    shutil.copytree(tiny_bert_dir, encoder)
    run = base / "run"
    train.main(["--data_dir", str(data), "--model_name_or_path", str(encoder), *HEAD, *common(run), "--loss", "bce",
                "--num_train_epochs", "2", "--train_batch_size", "4", "--learning_rate", "1e-3",
                "--classifier_lr", "1e-3", "--test_file", "dev.json",  # labelled "test" predictions to compare
                "--save_path", str(base / "export" / "model.pt")])
    only_test = base / "only-test"
    only_test.mkdir()
    shutil.copy(data / "dev.json", only_test / "test.json")
    shutil.rmtree(data)
    shutil.rmtree(encoder)
    return run, only_test


def run_test_mode(run, data, out, *extra):
    return train.main(["--load_path", str(run), "--data_dir", str(data), "--test_file", "test.json", *common(out),
                       *map(str, extra)])


def triples(preds):
    return sorted((p["title"], p["h_idx"], p["t_idx"], p["r"]) for p in preds)


def output_triples(outputs):
    return sorted((o["title"], r["h_idx"], r["t_idx"], r["r"]) for o in outputs for r in o["relations"])


def test_run_folder_holds_the_model(trained):
    run, _ = trained
    assert (run / "encoder" / "config.json").is_file() and (run / "encoder" / "tokenizer.json").is_file()
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    meta = ckpt["meta"]
    assert meta["model"] == {"num_class": len(meta["rel2id"]), "emb_size": 48, "block_size": 8, "max_seq_length": 256,
                             "bilinear": "atlop"}
    assert meta["entity_marker"] == "*" and set(meta["relation_names"]) == set(meta["rel2id"]) - {"Na"}
    assert json.loads((run / "result.json").read_text()), "the tiny model should predict something to compare"


def test_test_mode_needs_only_the_checkpoint_and_the_test_file(trained, tmp_path):
    run, only_test = trained
    scores = run_test_mode(run, only_test, tmp_path / "t")  # no dev, train or rel_info; no head or encoder flags
    assert triples(json.loads((tmp_path / "t" / "result.json").read_text())) == triples(
        json.loads((run / "result.json").read_text()))
    saved = json.loads((run / "scores.json").read_text())
    assert scores["test_f1"] == pytest.approx(saved["test_f1"]) and scores["threshold"] == saved["threshold"]
    args = json.loads((tmp_path / "t" / "args.json").read_text())
    assert (args["emb_size"], args["block_size"], args["loss"]) == (48, 8, "bce")
    assert "flag_defaults" not in args
    run_test_mode(run / "best.pt", only_test, tmp_path / "file")  # the checkpoint file works as well
    assert (tmp_path / "file" / "result.json").read_text() == (tmp_path / "t" / "result.json").read_text()


def test_save_path_copy_loads_on_its_own(trained, tmp_path):
    """--save_path writes encoder/ beside the copy, so it works with the run folder and the encoder gone."""
    run, only_test = trained
    copy = run.parent / "export" / "model.pt"
    assert (copy.parent / "encoder" / "config.json").is_file()
    run_test_mode(copy, only_test, tmp_path / "copy")
    assert (tmp_path / "copy" / "result.json").read_text() == (run / "result.json").read_text()


@pytest.mark.parametrize("flag, value, saved", [("--emb_size", 64, 48), ("--loss", "atl", "'bce'"),
                                                ("--max_seq_length", 512, 256)])
def test_conflicting_flag_is_an_error_naming_both(trained, tmp_path, flag, value, saved):
    run, only_test = trained
    with pytest.raises(UserError) as err:
        run_test_mode(run, only_test, tmp_path / "x", flag, value)
    msg = str(err.value)
    assert f"trained with {flag} {saved}" in msg and f"passes {flag} {value!r}" in msg and str(run / "best.pt") in msg


def test_unknown_test_relations_are_reported_and_scored_as_misses(trained, tmp_path):
    run, only_test = trained
    docs = json.loads((only_test / "test.json").read_text())
    docs[0]["labels"].append({"h": 0, "t": 1, "r": "P_unknown", "evidence": []})
    docs[1]["labels"].append({"h": 1, "t": 0, "r": "P_unknown", "evidence": []})
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.json").write_text(json.dumps(docs))
    scores = run_test_mode(run, data, tmp_path / "t")
    log = (tmp_path / "t" / "train.log").read_text()
    assert "2 label(s) of 1 relation(s) not in the label map (P_unknown x2) are left out of the features" in log
    preds = json.loads((tmp_path / "t" / "result.json").read_text())
    assert triples(preds) == triples(json.loads((run / "result.json").read_text()))
    expected = evaluation.official_evaluate(preds, docs)
    assert scores["test_recall"] == pytest.approx(expected["recall"])
    assert expected["recall"] < evaluation.official_evaluate(preds, json.loads(
        (only_test / "test.json").read_text()))["recall"]


def run_predict(*args):
    return subprocess.run([sys.executable, str(ROOT / "predict.py"), "--no_progress", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env={**__import__("os").environ,
                                                                          "HF_HUB_OFFLINE": "1"})


def test_predict_on_docred_input_equals_test_mode_and_the_api(trained, tmp_path):
    run, only_test = trained
    out = tmp_path / "pred.json"
    proc = run_predict("--model", run, "--input", only_test / "test.json", "--output", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs = json.loads(out.read_text())
    assert output_triples(outputs) == triples(json.loads((run / "result.json").read_text()))
    names = json.loads(json.dumps(torch.load(run / "best.pt", weights_only=False)["meta"]["relation_names"]))
    assert all(r["relation"] == names[r["r"]] and r["evidence"] == [] for o in outputs for r in o["relations"])
    gold = json.loads((only_test / "test.json").read_text())
    assert [len(o["entities"]) for o in outputs] == [len(d["vertexSet"]) for d in gold]
    pipe = predict.DocREPipeline.from_pretrained(str(run))
    assert pipe(gold) == outputs and pipe(gold[0]) == outputs[0]


def test_scores_are_the_decision_margins(trained, tmp_path):
    run, only_test = trained
    pipe = predict.DocREPipeline.from_pretrained(str(run))
    docs = text2doc.read_inputs(only_test / "test.json", lambda: None)
    bundle = pipe.model_bundle
    feats = predict.featurize(bundle, docs[:1])
    logits = predict_outputs(bundle.pretrained.model, feats, bundle.collate, lambda f: len(f["hts"]), 4,
                             None, progress=False).logits
    threshold = bundle.decision.threshold
    assert threshold is not None  # BCE: the margin is f_r - logit(threshold)
    hts = [tuple(x) for x in feats[0]["hts"]]
    for rel in predict.predict_docs(bundle, docs[:1], 2)[0]:
        f = logits[hts.index((rel.h_idx, rel.t_idx)), bundle.settings.rel2id[rel.r]].item()
        assert rel.score == pytest.approx(f - torch.logit(torch.tensor(threshold)).item(), abs=1e-5)
        assert rel.score > 0


def test_raw_text_from_the_folder_alone_api_and_cli_agree(trained, tmp_path):
    run, _ = trained
    text = "Marie Curie was born in Warsaw, Poland. She moved to Paris in 1891 and worked at the Sorbonne."
    pipe = predict.DocREPipeline.from_pretrained(str(run))
    out = pipe(text)
    assert len(out["entities"]) >= 3
    for ent in out["entities"]:
        for m in ent["mentions"]:
            assert text[m["char_start"]:m["char_end"]] == m["text"]
    proc = run_predict("--model", run, "--text", text)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli = json.loads(proc.stdout)
    assert cli == [dict(out, title="text")]


def test_exported_folder_predicts_the_same(trained, tmp_path):
    run, only_test = trained
    pipe = predict.DocREPipeline.from_pretrained(str(run / "best.pt"))
    pipe.save_pretrained(str(tmp_path / "exported"))
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == ["best.pt", "encoder"]
    ckpt = torch.load(tmp_path / "exported" / "best.pt", weights_only=False)
    assert set(ckpt) == {"version", "model", "args", "meta", "decision"}
    gold = json.loads((only_test / "test.json").read_text())
    assert predict.DocREPipeline.from_pretrained(str(tmp_path / "exported"))(gold) == pipe(gold)
    run_test_mode(tmp_path / "exported", only_test, tmp_path / "t")
    assert (tmp_path / "t" / "result.json").read_text() == (run / "result.json").read_text()


def test_older_checkpoints_load_from_their_encoder_or_say_what_is_missing(trained, tiny_bert_dir, tmp_path):
    run, only_test = trained
    ckpt = torch.load(run / "best.pt", weights_only=False)
    old = tmp_path / "old"
    old.mkdir()
    meta = ckpt.pop("meta")
    v1 = {**ckpt, "version": 1, "rel2id": meta["rel2id"], "threshold": ckpt["decision"]["threshold"],
          "decision": None}  # version 1: label map and threshold at the top level, no encoder/ folder
    torch.save(v1, old / "best.pt")
    with pytest.raises(UserError, match=r"has no encoder/ folder beside it .*encoder-copy"):
        predict.load_model(str(old))
    v1["args"] = {**v1["args"], "model_name_or_path": tiny_bert_dir}  # the same random BERT, still installed
    torch.save(v1, old / "best.pt")
    gold = json.loads((only_test / "test.json").read_text())
    new = predict.DocREPipeline.from_pretrained(str(run))(gold)
    assert predict.DocREPipeline.from_pretrained(str(old), rel_info=None)(gold) == [
        dict(o, relations=[dict(r, relation=r["r"]) for r in o["relations"]]) for o in new]  # no names stored


def test_bad_models_and_inputs_exit_2_naming_the_culprit(trained, tmp_path):
    run, _ = trained
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    truncated = tmp_path / "cut" / "best.pt"
    truncated.parent.mkdir()
    truncated.write_bytes((run / "best.pt").read_bytes()[:5000])
    cases = [(["--model", folder, "--text", "Ada Lovelace met Charles Babbage."], f"{folder} is not a model folder"),
             (["--model", truncated, "--text", "Ada Lovelace met Charles Babbage."],
              f"--model {truncated} is not a readable checkpoint"),
             (["--model", run, "--text", "  "], "--text: field text: empty")]
    for args, message in cases:
        proc = run_predict(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert message in proc.stderr


def test_raw_text_eval_measures_both_paths(trained):
    sys.path.insert(0, str(ROOT / "scripts"))
    import raw_text_eval

    run, only_test = trained
    result = raw_text_eval.measure_model(str(only_test / "test.json"), str(run), limit=2)
    docs = json.loads((only_test / "test.json").read_text())[:2]
    titles = {d["title"] for d in docs}
    preds = [p for p in json.loads((run / "result.json").read_text()) if p["title"] in titles]
    assert result["gold_entities_relations"] == len(preds)
    assert result["gold_entities_official"]["f1"] == pytest.approx(evaluation.official_evaluate(preds, docs)["f1"])
    assert result["raw_text_docs_per_s"] > 0 and 0 <= result["raw_text_relations_by_name"]["f1"] <= 100
