"""End-to-end training: the run directory, learning with each loss, resume after a kill, test mode."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zipfile

import pytest
import torch

import train
from baselines import docred_baselines
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = ["args.json", "metrics.jsonl", "best.pt", "last.pt", "dev_pred.json", "dev_scores.json",
             "result.json", "result.zip", "curves.png", "train.log"]


def tiny_args(data_dir, model_dir, out, *extra):
    return ["--data_dir", str(data_dir), "--model_name_or_path", str(model_dir), "--output_dir", str(out),
            "--max_seq_length", "512", "--train_batch_size", "4", "--test_batch_size", "8",
            "--emb_size", "64", "--block_size", "16", "--cache_dir", "none", "--no_progress",
            "--learning_rate", "1e-3", "--classifier_lr", "1e-3", "--logging_steps", "1", *map(str, extra)]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_run_directory_is_complete_and_test_mode_reproduces_dev_scores(synthetic_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    train.main(tiny_args(synthetic_dir, tiny_bert_dir, out, "--num_train_epochs", "2", "--loss", "bce"))
    for name in RUN_FILES:
        assert (out / name).exists(), name
    args = json.loads((out / "args.json").read_text())
    assert args["loss"] == "bce" and args["num_class"] > 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r and "lr" in r and "grad_norm" in r for r in records)
    assert sum("dev_f1" in r for r in records) == 2  # one evaluation per epoch
    dev = json.loads((out / "dev_scores.json").read_text())
    assert {"precision", "recall", "f1", "ign_f1", "threshold"} <= set(dev)
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    assert ckpt["decision"]["threshold"] == dev["threshold"] and ckpt["meta"]["rel2id"]["Na"] == 0

    again = tmp_path / "test-mode"
    result = train.main(tiny_args(synthetic_dir, tiny_bert_dir, again, "--load_path", out / "best.pt",
                                  "--loss", "bce"))
    assert not (again / "best.pt").exists()  # no training happened
    assert {k: result[f"dev_{k}"] for k in dev if k != "threshold"} == pytest.approx(
        {k: v for k, v in dev.items() if k != "threshold"})
    assert result["threshold"] == dev["threshold"]
    assert json.loads((again / "result.json").read_text()) == json.loads((out / "result.json").read_text())


def test_checkpoint_of_another_label_map_is_refused(synthetic_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    train.main(tiny_args(synthetic_dir, tiny_bert_dir, out, "--max_steps", "1", "--test_file", ""))
    rel2id = json.loads((synthetic_dir / "rel_info.json").read_text())
    other = {"Na": 0, **{r: i + 1 for i, r in enumerate(sorted(rel2id, reverse=True))}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(UserError, match="label map"):
        train.main(tiny_args(synthetic_dir, tiny_bert_dir, tmp_path / "x", "--load_path", out / "best.pt",
                             "--rel2id", tmp_path / "other.json"))


def test_test_mode_uses_the_checkpoints_threshold_and_zips_the_official_result(small_synthetic_dir, tiny_bert_dir,
                                                                                tmp_path):
    """A BCE checkpoint saved with threshold 0.7 (not the default 0.5) whose every pair scores sigma = 0.3 for
    most relations, 0.6 for relation 1 and 0.8 for relation 2: test mode must predict exactly relation 2 for
    every pair (the default 0.5 would add relation 1, a re-tuned threshold would change the set)."""
    out = tmp_path / "run"
    train.main(tiny_args(small_synthetic_dir, tiny_bert_dir, out, "--max_seq_length", 128, "--max_steps", 1,
                         "--loss", "bce"))
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    bias = torch.full_like(ckpt["model"]["bilinear.bias"], math.log(0.3 / 0.7))  # [K+1]: logit 0.3
    bias[1], bias[2] = math.log(0.6 / 0.4), math.log(0.8 / 0.2)
    ckpt["model"]["bilinear.weight"].zero_()  # every pair's logits are the bias
    ckpt["model"]["bilinear.bias"] = bias
    ckpt["decision"]["threshold"] = 0.7
    torch.save(ckpt, out / "best.pt")
    id2rel = {i: r for r, i in ckpt["meta"]["rel2id"].items()}

    again = tmp_path / "test-mode"
    result = train.main(tiny_args(small_synthetic_dir, tiny_bert_dir, again, "--max_seq_length", 128,
                                  "--load_path", out / "best.pt"))
    assert result["threshold"] == 0.7
    assert json.loads((again / "dev_scores.json").read_text())["threshold"] == 0.7
    for split, name in (("dev", "dev_pred.json"), ("test", "result.json")):
        docs = json.loads((small_synthetic_dir / f"{split}.json").read_text())
        every_pair = sorted((d["title"], h, t) for d in docs for h in range(len(d["vertexSet"]))
                            for t in range(len(d["vertexSet"])) if h != t)
        preds = json.loads((again / name).read_text())
        assert sorted((p["title"], p["h_idx"], p["t_idx"]) for p in preds) == every_pair, split
        assert {p["r"] for p in preds} == {id2rel[2]}, split
    with zipfile.ZipFile(again / "result.zip") as zf:  # what Codalab reads: result.json alone, at the root
        assert zf.namelist() == ["result.json"]
        zipped = json.loads(zf.read("result.json"))
    assert zipped == json.loads((again / "result.json").read_text())
    assert all(set(p) == {"title", "h_idx", "t_idx", "r"} for p in zipped)  # the official fields (no evidence
    # without --evidence_lambda)
    # test mode needs only the model and the test file: --data_dir may be absent (it was refused), and no folder is made
    absent = tmp_path / "no-such-dir"
    train.main(["--load_path", str(out / "best.pt"), "--data_dir", str(absent), "--dev_file", "",
                "--test_file", str(small_synthetic_dir / "test.json"), "--output_dir", str(tmp_path / "t2"),
                "--no_progress"])
    assert json.loads((tmp_path / "t2" / "result.json").read_text()) == zipped and not absent.exists()


def test_fine_tuning_takes_the_head_sizes_of_its_checkpoint(small_synthetic_dir, tiny_bert_dir, tmp_path):
    """--do_train --load_path without --emb_size/--block_size built the default head and failed on its weights."""
    out = tmp_path / "run"
    train.main(tiny_args(small_synthetic_dir, tiny_bert_dir, out, "--max_seq_length", 128, "--max_steps", 1))
    argv = tiny_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "tuned", "--max_seq_length", 128, "--max_steps", 1,
                     "--load_path", out / "best.pt", "--do_train")
    for flag in ("--emb_size", "--block_size"):
        i = argv.index(flag)
        del argv[i:i + 2]
    train.main(argv)
    saved = json.loads((tmp_path / "tuned" / "args.json").read_text())
    assert (saved["emb_size"], saved["block_size"]) == (64, 16)


def test_evaluation_steps_and_save_path(small_synthetic_dir, tiny_bert_dir, tmp_path):
    """8 documents in batches of 2: 4 steps an epoch; --evaluation_steps 2 over 2 epochs evaluates at steps 2, 4,
    6 and 8, once each (4 and 8 also end an epoch); --save_path gets a copy of best.pt, folders made."""
    out, saved = tmp_path / "run", tmp_path / "elsewhere" / "model.pt"
    train.main(tiny_args(small_synthetic_dir, tiny_bert_dir, out, "--max_seq_length", 128, "--train_batch_size", 2,
                         "--num_train_epochs", 2, "--evaluation_steps", 2, "--save_path", saved, "--test_file", ""))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "dev_f1" in r] == [2, 4, 6, 8]
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    copy = torch.load(saved, map_location="cpu", weights_only=False)
    assert copy["state"] == best["state"] and copy["decision"] == best["decision"]
    assert copy["model"].keys() == best["model"].keys()
    assert all(torch.equal(copy["model"][k], best["model"][k]) for k in best["model"])


def test_cpu_bf16_training_follows_fp32(small_synthetic_dir, minilm_path, tmp_path, monkeypatch):
    """--amp bf16 on CPU: MiniLM (attention dropout on, so CPU training's own attention runs) takes the steps fp32
    takes within bf16 rounding, and keeps fp32 weights."""
    import encoder_kernels

    calls = []
    apply = encoder_kernels.DropoutAttentionFunction.apply
    monkeypatch.setattr(encoder_kernels.DropoutAttentionFunction, "apply", lambda *a: calls.append(a[0].dtype) or apply(*a))
    losses = {}
    for amp in ("off", "bf16"):
        out = tmp_path / amp
        train.main(tiny_args(small_synthetic_dir, minilm_path, out, "--max_seq_length", 128, "--train_batch_size", 2,
                             "--max_steps", 4, "--test_file", "", "--amp", amp, "--loss", "atl", "--seed", 3))
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[amp] = [r["loss"] for r in records if "loss" in r]
        assert all(v.dtype == torch.float32 for v in weights(out / "best.pt").values() if v.is_floating_point())
    assert "amp torch.bfloat16" in (tmp_path / "bf16" / "train.log").read_text()
    assert torch.bfloat16 in calls and torch.float32 in calls
    assert len(losses["bf16"]) == len(losses["off"]) == 4
    assert losses["bf16"] == pytest.approx(losses["off"], rel=0.05)


def run_cli(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def test_resume_after_sigkill_matches_uninterrupted_run(synthetic_dir, tiny_bert_dir, tmp_path):
    common = ["--num_train_epochs", "2", "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
              "--save_steps", "1", "--test_file", "", "--loss", "ncrl", "--shift", "0.05"]
    full = tmp_path / "full"
    assert run_cli(tiny_args(synthetic_dir, tiny_bert_dir, full, *common)).wait() == 0

    cut = tmp_path / "cut"
    proc = run_cli(tiny_args(synthetic_dir, tiny_bert_dir, cut, *common))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill mid-epoch 1, once a few steps are saved
        lines = (cut / "metrics.jsonl").read_text().splitlines() if (cut / "metrics.jsonl").exists() else []
        if sum('"loss"' in line for line in lines) >= 3 and (cut / "last.pt").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "dev_scores.json").exists()

    resumed = run_cli(tiny_args(synthetic_dir, tiny_bert_dir, cut, *common, "--resume"))
    assert resumed.wait() == 0, resumed.stderr.read().decode()[-2000:]
    a, b = weights(full / "last.pt"), weights(cut / "last.pt")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert json.loads((full / "dev_scores.json").read_text()) == json.loads((cut / "dev_scores.json").read_text())
    steps = [json.loads(line)["step"] for line in (cut / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # no duplicated log lines after resume


# Each loss must beat the best text-blind baseline (tests/baselines.py: relations guessed from the pair's entity
# types, topic roles and sentence co-occurrence with the threshold best on dev; 33.6 dev F1 on this corpus) by a
# margin, so only a model that reads the relation words passes. Measured on 80 short documents (dev F1, seeds
# 1 / 2 / 3): ATL (12 epochs) 61.4 / 63.6 / 55.9, NCRL (12 epochs) 65.2 / 46.8 / 65.4, BCE from the prior start
# (--init_none_prior, 8 epochs) 71.8 / 66.5 / 70.1, where the plain start reached only 11.95 in 12 epochs (seed 1).
# The same runs with every word but the mentions replaced by "the" and each mention by its type (positions and
# types kept, relation words gone): ATL at most 31.6 in any epoch (0 at the checkpoint chosen by Ign F1), NCRL
# predicts nothing (0), BCE at most 37.9 in any epoch (2.5 at the checkpoint chosen by Ign F1).
LEARNING = {  # loss: (extra flags, epochs, margin over the best baseline)
    "atl": ([], 12, 15.0),
    "ncrl": ([], 12, 8.0),
    "bce": (["--init_none_prior"], 8, 20.0),
}


@pytest.mark.parametrize("loss", sorted(LEARNING))
def test_learns_synthetic_relations(loss, learning_corpus, learning_baselines, minilm_path, tmp_path):
    extra, epochs, margin = LEARNING[loss]
    args = ["--data_dir", str(learning_corpus), "--model_name_or_path", minilm_path, "--output_dir",
            str(tmp_path / loss), "--max_seq_length", "512", "--train_batch_size", "4", "--test_batch_size", "16",
            "--num_train_epochs", str(epochs), "--learning_rate", "1e-4", "--classifier_lr", "1e-3",
            "--emb_size", "256", "--block_size", "32", "--loss", loss, *extra, "--test_file", "",
            "--cache_dir", "none", "--no_progress", "--seed", "1"]
    result = train.main(args)
    bar = max(learning_baselines.values()) + margin
    assert result["dev_f1"] > bar, (result, learning_baselines)


@pytest.fixture(scope="module")
def learning_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("learn")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_synthetic.py"), "--out", str(out), "--seed", "3",
                    "--n_train", "80", "--n_dev", "20", "--n_test", "4", "--min_sents", "4", "--max_sents", "5"],
                   check=True)
    return out


@pytest.fixture(scope="module")
def learning_baselines(learning_corpus):
    """Dev F1 of each text-blind baseline fitted on the learning corpus' training documents."""
    read = lambda name: json.loads((learning_corpus / name).read_text(encoding="utf-8"))  # noqa: E731
    return docred_baselines(read("train_annotated.json"), read("dev.json"))
