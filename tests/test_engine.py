"""The engine's options end to end on the DocRED task: evidence, the NCRL authors' head, the prior start, AFL."""
import json

import numpy as np
import pytest
import torch

import evaluation
import losses
import train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(data, model, out, *extra):
    return ["--data_dir", str(data), "--model_name_or_path", str(model), "--output_dir", str(out),
            "--max_seq_length", "128", "--emb_size", "64", "--block_size", "16", "--cache_dir", "none",
            "--no_progress", "--learning_rate", "1e-3", "--classifier_lr", "1e-3", *map(str, extra)]


def test_evidence_is_written_for_predicted_facts_and_scored(small_synthetic_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "evi"
    scores = train.main(tiny(small_synthetic_dir, tiny_bert_dir, out, "--max_steps", 2, "--loss", "bce",
                             "--evidence_lambda", 0.1, "--evidence_threshold", 0.05))
    dev = json.loads((small_synthetic_dir / "dev.json").read_text())
    n_sents = {d["title"]: len(d["sents"]) for d in dev}
    preds = json.loads((out / "dev_pred.json").read_text())
    assert preds and all("evidence" in p for p in preds)  # BCE at its tuned threshold predicts something
    assert all(all(0 <= s < n_sents[p["title"]] for s in p["evidence"]) for p in preds)
    assert any(p["evidence"] for p in preds)
    again = evaluation.official_evaluate(preds, dev, train_annotated=str(small_synthetic_dir / "train_annotated.json"))
    assert scores["dev_evi_f1"] == pytest.approx(again["evi_f1"])
    assert json.loads((out / "dev_scores.json").read_text())["evi_f1"] == pytest.approx(again["evi_f1"])
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    assert ckpt["meta"]["evidence"] is True
    result = json.loads((out / "result.json").read_text())
    for record in result:
        assert set(record) == {"title", "h_idx", "t_idx", "r", "evidence"}
    # test mode takes evidence_lambda from the checkpoint and writes the same facts with the same evidence
    again = tmp_path / "again"
    train.main(["--load_path", str(out / "best.pt"), "--data_dir", str(small_synthetic_dir), "--output_dir",
                str(again), "--cache_dir", "none", "--no_progress", "--evidence_threshold", "0.05"])
    assert json.loads((again / "result.json").read_text()) == result


@pytest.mark.parametrize("loss", ["atl", "ncrl", "afl"])
def test_evidence_trains_with_every_loss(small_synthetic_dir, tiny_bert_dir, tmp_path, loss):
    """The evidence term joins any relation loss: finite training losses, and every predicted fact carries evidence
    (threshold 0 keeps each sentence with attention; at 1024 tokens, in windows, no entity is cut off)."""
    out = tmp_path / loss
    train.main(tiny(small_synthetic_dir, tiny_bert_dir, out, "--max_steps", 2, "--loss", loss, "--logging_steps", 1,
                    "--evidence_lambda", 0.1, "--evidence_threshold", 0, "--test_file", "", "--max_seq_length", 1024))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    assert "evi_f1" in json.loads((out / "dev_scores.json").read_text())
    preds = json.loads((out / "dev_pred.json").read_text())
    assert preds and all(p["evidence"] for p in preds)


def test_without_evidence_nothing_changes(small_synthetic_dir, tiny_bert_dir, tmp_path):
    """--evidence_lambda 0 (the default) takes the plain path: no evidence field, same files as before."""
    out = tmp_path / "plain"
    train.main(tiny(small_synthetic_dir, tiny_bert_dir, out, "--max_steps", 1, "--test_file", ""))
    preds = json.loads((out / "dev_pred.json").read_text())
    assert all("evidence" not in p for p in preds)
    assert "evi_f1" not in json.loads((out / "dev_scores.json").read_text())


def test_prior_start_and_the_authors_head_reach_the_checkpoint(small_synthetic_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "prior"
    train.main(tiny(small_synthetic_dir, tiny_bert_dir, out, "--max_steps", 1, "--test_file", "",
                    "--learning_rate", 0, "--classifier_lr", 0, "--init_none_prior", "--bilinear", "maxsym",
                    "--loss", "afl", "--afl_gamma_pos", 2))
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    assert ckpt["meta"]["model"]["bilinear"] == "maxsym" and ckpt["args"]["afl_gamma_pos"] == 2
    import prepro
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    from collate import DocRECollator, label_counts
    from settings import DocRESettings

    settings = DocRESettings(ckpt["meta"]["rel2id"], max_seq_length=128)
    features = prepro.read_docred(small_synthetic_dir / "train_annotated.json", tokenizer, settings)
    counts, n = label_counts(features, DocRECollator(len(ckpt["meta"]["rel2id"])))
    expected = torch.logit(losses.positive_rates(counts, n)[1:]).float()
    bias = ckpt["model"]["bilinear.bias"]
    assert bias[0] == 0 and torch.allclose(bias[1:], expected, atol=1e-6)  # lr 0: the start, unchanged
    assert np.all(bias[1:].numpy() < 0)  # every relation starts below the none class


def test_clip_groups_are_clipped_each_on_its_own():
    """Two clip groups: each gradient is scaled to --max_grad_norm by its own norm; the logged norm is of both."""
    from types import SimpleNamespace

    from engine.trainer import Trainer

    small, large = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    small.grad, large.grad = torch.tensor([0.3, 0.4]), torch.tensor([30.0, 40.0])  # norms 0.5 and 50
    args = SimpleNamespace(max_grad_norm=1.0)
    norm = Trainer.clip(SimpleNamespace(clip_groups=[[small], [large]], args=args))
    assert norm == pytest.approx((0.5 ** 2 + 50 ** 2) ** 0.5)
    assert torch.allclose(small.grad, torch.tensor([0.3, 0.4]))  # under the limit: untouched
    assert float(large.grad.norm()) == pytest.approx(1.0, rel=1e-4)
    small.grad, large.grad = torch.tensor([0.3, 0.4]), torch.tensor([30.0, 40.0])
    Trainer.clip(SimpleNamespace(clip_groups=[[small, large]], args=args))  # one group: the large norm scales both
    assert float(small.grad.norm()) == pytest.approx(0.5 / 50.0025, rel=1e-3)


def test_end_to_end_clips_the_entity_heads_apart():
    """DocRED's clip groups: every parameter once; with --end_to_end the entity heads form their own group."""
    from types import SimpleNamespace

    model = torch.nn.Module()
    model.encoder, model.entity_heads = torch.nn.Linear(2, 2), torch.nn.Linear(2, 3)
    task = train.DocRED()
    task.settings = SimpleNamespace(end_to_end=False)
    assert [len(g) for g in task.clip_groups(model)] == [4]
    task.settings = SimpleNamespace(end_to_end=True)
    rest, heads = task.clip_groups(model)
    assert {id(p) for p in heads} == {id(p) for p in model.entity_heads.parameters()}
    assert {id(p) for p in rest} == {id(p) for p in model.encoder.parameters()}
