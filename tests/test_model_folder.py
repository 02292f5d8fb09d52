"""A trained model is one folder: test mode and predict.py use it alone, after its training data and encoder are gone.

One tiny model is trained (random BERT copied to a temporary folder, non-default head sizes, a few steps); then the
encoder copy and the training data (rel_info.json included) are deleted, and everything below reads the run folder.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from engine import checkpoints as ck
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
    run, only_test = trained
    assert (run / "encoder" / "config.json").is_file() and (run / "encoder" / "tokenizer.json").is_file()
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    meta = ckpt["meta"]
    assert meta["model"] == {"num_class": len(meta["rel2id"]), "emb_size": 48, "block_size": 8, "max_seq_length": 256,
                             "bilinear": "atlop"}
    assert meta["entity_marker"] == "*" and set(meta["relation_names"]) == set(meta["rel2id"]) - {"Na"}
    assert json.loads((run / "result.json").read_text()), "the tiny model should predict something to compare"
    for name in ("best.pt", "last.pt"):
        torch.load(run / name, map_location="cpu", weights_only=True)  # plain types and tensors only


def test_run_writes_a_model_folder_without_pickle(trained):
    run, only_test = trained
    model = run / "model"
    names = {p.name for p in model.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith((".pt", ".bin", ".pkl", ".pickle")) for n in names)
    config = json.loads((model / "config.json").read_text())
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert config["task"] == "docred" and config["label_map"] == ckpt["meta"]["rel2id"]
    assert config["settings"] == ckpt["meta"]["settings"] and config["settings"]["emb_size"] == 48
    assert config["decision"] == ckpt["decision"] and config["loss"]["loss"] == "bce" and config["evidence"] is False
    assert config["encoder"]["config"]["model_type"] == "bert" and "output_dir" not in config["args"]
    assert config["weights"]["sha256"] == ck.file_sha256(model / "model.safetensors")
    dev = config["training"]["dev"]
    assert (dev["file"], dev["sha256"]) == ("dev.json", ck.file_sha256(only_test / "test.json"))
    assert dev["scores"]["f1"] == pytest.approx(json.loads((run / "scores.json").read_text())["dev_f1"])
    assert config["training"]["train_file"] == "train_annotated.json"
    card = (model / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: docre-ncrl\nlicense: ") and "model-index:" in card
    assert f"value: {dev['scores']['f1']:.4f}" in card and "predict.py verify --model" in card
    assert "- epochs 2.0, batch 4 x 1," in card
    weights = safetensors.torch.load_file(str(model / "model.safetensors"))
    aliases = config["weights"]["aliases"]  # weights the head shares with the encoder, stored once
    assert set(weights) | set(aliases) == set(ckpt["model"]) and not set(weights) & set(aliases)
    assert any(k.startswith("encoder.") for k in weights)


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
                                                ("--max_seq_length", 512, 256),
                                                ("--max_seq_length", 1024, 256)])  # 1024: the flag's default
def test_conflicting_flag_is_an_error_naming_both(trained, tmp_path, flag, value, saved):
    run, only_test = trained
    with pytest.raises(UserError) as err:
        run_test_mode(run, only_test, tmp_path / "x", flag, value)
    msg = str(err.value)
    assert f"trained with {flag} {saved}" in msg and f"passes {flag} {value!r}" in msg and str(run / "model") in msg


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
    # at the training length, as test mode reads (predict.py reads whole documents by default)
    proc = run_predict("--model", run, "--input", only_test / "test.json", "--output", out, "--max_seq_length", 256)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs = json.loads(out.read_text())
    assert output_triples(outputs) == triples(json.loads((run / "result.json").read_text()))
    names = json.loads(json.dumps(torch.load(run / "best.pt", weights_only=False)["meta"]["relation_names"]))
    assert all(r["relation"] == names[r["r"]] and r["evidence"] == [] for o in outputs for r in o["relations"])
    gold = json.loads((only_test / "test.json").read_text())
    assert [len(o["entities"]) for o in outputs] == [len(d["vertexSet"]) for d in gold]
    pipe = predict.DocREPipeline.from_pretrained(str(run), max_seq_length=256)
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


def test_fine_tuning_starts_from_the_model_folder_alone(trained, small_synthetic_dir, tmp_path):
    """--load_path RUN/model --do_train: the folder's encoder and weights (the original encoder is gone)."""
    run, _ = trained
    out = tmp_path / "tuned"
    train.main(["--load_path", str(run / "model"), "--do_train", "--data_dir", str(small_synthetic_dir), *HEAD,
                *common(out), "--loss", "bce", "--max_steps", "1", "--learning_rate", "0"])
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["args"]["model_name_or_path"] == json.loads((run / "model" / "config.json").read_text())["args"][
        "model_name_or_path"]
    before = safetensors.torch.load_file(str(run / "model" / "model.safetensors"))
    after = safetensors.torch.load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))  # lr 0: kept


def test_exported_folder_predicts_the_same(trained, tmp_path):
    run, only_test = trained
    pipe = predict.DocREPipeline.from_pretrained(str(run / "best.pt"))
    pipe.save_pretrained(str(tmp_path / "exported"))
    names = {p.name for p in (tmp_path / "exported").iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= names
    assert not any(n.endswith(".pt") for n in names) and "encoder" not in names
    gold = json.loads((only_test / "test.json").read_text())
    assert predict.DocREPipeline.from_pretrained(str(tmp_path / "exported"))(gold) == pipe(gold)
    run_test_mode(tmp_path / "exported", only_test, tmp_path / "t")
    assert (tmp_path / "t" / "result.json").read_text() == (run / "result.json").read_text()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="cannot write a model folder to .*a-file/sub: Not a directory"):
        pipe.save_pretrained(str(tmp_path / "a-file" / "sub"))  # was a NotADirectoryError traceback


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
    result = raw_text_eval.measure_model(str(only_test / "test.json"), str(run), limit=2, max_seq_length=256)
    docs = json.loads((only_test / "test.json").read_text())[:2]
    titles = {d["title"] for d in docs}
    preds = [p for p in json.loads((run / "result.json").read_text()) if p["title"] in titles]
    assert result["gold_entities_relations"] == len(preds)
    assert result["gold_entities_official"]["f1"] == pytest.approx(evaluation.official_evaluate(preds, docs)["f1"])
    assert result["raw_text_docs_per_s"] > 0 and 0 <= result["raw_text_relations_by_name"]["f1"] <= 100


# ----------------------------------------------------------------------------- the model folder: trust and integrity
LOGITS = """
import sys, torch, predict, text2doc
from engine.inference import predict_outputs
bundle, _ = predict.load_model(sys.argv[1])
feats = predict.featurize(bundle, text2doc.read_inputs(sys.argv[2], lambda: None))
out = predict_outputs(bundle.pretrained.model, feats, bundle.collate, lambda f: len(f["hts"]), 4, None, progress=False)
torch.save(out.logits, sys.argv[3])
"""


def logits_of(bundle, path):
    feats = predict.featurize(bundle, text2doc.read_inputs(path, lambda: None))
    return predict_outputs(bundle.pretrained.model, feats, bundle.collate, lambda f: len(f["hts"]), 4, None,
                           progress=False).logits


def test_folder_round_trip_in_a_fresh_process(trained, tmp_path):
    run, only_test = trained
    pipe = predict.DocREPipeline.from_pretrained(str(run / "best.pt"))
    pipe.save_pretrained(str(tmp_path / "exported"))
    proc = subprocess.run([sys.executable, "-c", LOGITS, str(tmp_path / "exported"), str(only_test / "test.json"),
                           str(tmp_path / "logits.pt")], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = torch.load(tmp_path / "logits.pt", weights_only=True)
    assert torch.allclose(fresh, logits_of(pipe.model_bundle, only_test / "test.json"), atol=1e-5)


class _Marker:
    """Unpickling it writes a marker file: a stand-in for code hidden in a checkpoint."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('ran')",)


def test_a_pickle_that_runs_code_is_never_unpickled_without_trust(trained, tmp_path, caplog):
    run, only_test = trained
    marker, evil = tmp_path / "marker", tmp_path / "evil"
    shutil.copytree(run / "encoder", evil / "encoder")
    ckpt = {"version": 2, "model": _Marker(marker), "args": {"task": "docred"}, "meta": {}}
    for name in ("best.pt", "last.pt"):
        torch.save(ckpt, evil / name)
    with pytest.raises(UserError, match="--trust_checkpoint"):
        predict.load_model(str(evil))
    with pytest.raises(UserError, match="pickle checkpoint .* --trust_checkpoint"):
        run_test_mode(evil, only_test, tmp_path / "t")
    with pytest.raises(UserError, match="--trust_checkpoint"):
        ck.load_checkpoint(evil / "last.pt", what="--resume")  # what Trainer.resume_from reads
    assert predict.main(["--model", str(evil), "--text", "Ada Lovelace met Charles Babbage."]) == 2
    assert predict.main(["verify", "--model", str(evil), "--data", str(only_test / "test.json")]) == 2
    assert not marker.exists()
    ck.load_checkpoint(evil / "best.pt", trust=True)  # the flag: the file is unpickled, with a warning
    assert marker.exists() and "it can run code" in caplog.text


def test_old_pickle_checkpoint_loads_with_trust_checkpoint(trained, tmp_path):
    run, only_test = trained
    import numpy as np

    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["decision"] = {**ckpt["decision"], "threshold": np.float64(ckpt["decision"]["threshold"])}  # as before
    old = tmp_path / "old"
    shutil.copytree(run / "encoder", old / "encoder")
    torch.save(ckpt, old / "best.pt")
    with pytest.raises(UserError, match="pickle checkpoint"):
        predict.load_model(str(old))
    gold = json.loads((only_test / "test.json").read_text())
    assert predict.DocREPipeline.from_pretrained(str(old), trust=True)(gold) == predict.DocREPipeline.from_pretrained(
        str(run))(gold)
    run_test_mode(old, only_test, tmp_path / "t", "--trust_checkpoint")
    assert (tmp_path / "t" / "result.json").read_text() == (run / "result.json").read_text()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_changed_weights_are_refused_before_any_prediction(trained, tmp_path, monkeypatch, capsys, damage):
    run, only_test = trained
    folder = tmp_path / "model"
    shutil.copytree(run / "model", folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data if damage == "flip" else data[:len(data) // 2]))
    monkeypatch.setattr(predict, "predict_docs", lambda *a: pytest.fail("predicted with changed weights"))
    out = tmp_path / "pred.json"
    assert predict.main(["--model", str(folder), "--input", str(only_test / "test.json"), "--output", str(out),
                         "--no_progress"]) == 2
    assert f"{weights} does not match the SHA-256 its config.json records" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(UserError, match="does not match the SHA-256"):
        run_test_mode(folder, only_test, tmp_path / "t")


def test_verify_passes_on_the_honest_folder_and_fails_on_edited_scores(trained, tmp_path, capsys, caplog):
    run, only_test = trained
    data = str(only_test / "test.json")  # the dev file's bytes
    assert predict.main(["verify", "--model", str(run), "--data", data, "--no_progress"]) == 0
    assert "verified: F1" in capsys.readouterr().out
    # the documents are longer than the 256 tokens trained with, and verify reads them so, on purpose
    assert "more than --max_seq_length 256" in caplog.text and predict.READ_AS_TRAINED in caplog.text
    assert predict.READ_WHOLE not in caplog.text
    edited = tmp_path / "edited"
    shutil.copytree(run / "model", edited)
    config = json.loads((edited / "config.json").read_text())
    recorded = config["training"]["dev"]["scores"]["f1"]
    config["training"]["dev"]["scores"]["f1"] = recorded + 5
    (edited / "config.json").write_text(json.dumps(config))
    assert predict.main(["verify", "--model", str(edited), "--data", data, "--no_progress"]) == 1
    err = capsys.readouterr().err
    assert f"records {recorded + 5:.4f}" in err and f"is {recorded:.4f}" in err
    other = tmp_path / "other.json"
    other.write_text(json.dumps(json.loads((only_test / "test.json").read_text())[:2]))
    assert predict.main(["verify", "--model", str(run), "--data", str(other), "--no_progress"]) == 0
    assert "records no scores for this file" in capsys.readouterr().out


def test_folders_asking_for_custom_code_are_refused(trained, tiny_bert_dir, tmp_path):
    run, _ = trained
    encoder = tmp_path / "custom"
    shutil.copytree(tiny_bert_dir, encoder)
    config = json.loads((encoder / "config.json").read_text())
    (encoder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "evil.Model"}}))
    args = argparse.Namespace(model_name_or_path=str(encoder), config_name="", tokenizer_name="",
                              gradient_checkpointing=False)
    with pytest.raises(UserError, match="auto_map"):
        ck.load_encoder_and_tokenizer(args)
    folder = tmp_path / "model"
    shutil.copytree(run / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    config["encoder"]["config"]["auto_map"] = {"AutoModel": "evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="auto_map"):
        predict.load_model(str(folder))


def _tampered(trained, tmp_path, edit):
    """A copy of the trained model folder with `edit(folder, config)` applied to it and its config.json."""
    folder = shutil.copytree(trained[0] / "model", tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    edit(folder, config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _set(path, value):
    """An edit that sets config[path[0]][path[1]]... to `value`."""
    def edit(folder, config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda folder, config: (folder / "tokenizer.json").unlink(), "its tokenizer file tokenizer.json is missing"),
    (lambda folder, config: (folder / "tokenizer.json").write_text("{}"), "tokenizer.json does not match the SHA-256"),
    (_set(["weights"], "str"), "field weights is str, not an object"),
    (_set(["weights", "aliases"], []), "field weights.aliases is list, not an object"),
    (_set(["args"], []), "field args is list, not an object"),
    (_set(["decision"], "top4"), "field decision is str, not an object or null"),
    (_set(["format_version"], 99), "format_version 99: written by a newer version of this toolkit"),
    (_set(["weights", "file"], "../../../../etc/passwd"), "field weights.file names '../../../../etc/passwd', not a"),
    (_set(["meta", "settings", "block_size"], 0), "its settings do not describe a model"),
    (_set(["meta", "settings", "emb_size"], "256"), "its settings do not describe a model"),
    (_set(["encoder", "config", "model_type"], "no_such_arch"), "its settings do not describe a model"),
    (_set(["encoder", "config", "vocab_size"], 10 ** 9), "its weights do not fit the model its settings describe"),
    (_set(["meta", "settings", "emb_size"], 10 ** 7), "its weights do not fit the model its settings describe"),
])
def test_a_tampered_folder_is_one_line_before_memory_is_allocated(trained, tmp_path, capsys, edit, message):
    """A folder from elsewhere is untrusted: a missing or changed tokenizer file (once: a 5-token vocabulary and
    [UNK]s), fields of the wrong type (AttributeError, ZeroDivisionError, TypeError) and sizes that would allocate
    gigabytes before the weights were compared (a vocabulary of 1e9) are each one line, exit 2; the sizes are
    checked on the meta device, so nothing is allocated."""
    folder = _tampered(trained, tmp_path, edit)
    assert predict.main(["--model", str(folder), "--text", "Anna met Ben in Paris."]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err
