"""The run scripts end to end on a tiny encoder: what they pass to train.py, and what each stage leaves."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import evaluation

ROOT = Path(__file__).resolve().parents[1]


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def distant_data(synthetic_dir, tmp_path) -> Path:
    """8 annotated training documents; 16 "distant" ones, other documents of the synthetic corpus plus copies of
    the dev documents (so every dev fact is seen in the distant set and none in the annotated one: Ign F1
    against the wrong file differs); 4 dev and 4 test documents."""
    data = tmp_path / "data"
    data.mkdir()
    train, dev = read(synthetic_dir / "train_annotated.json"), read(synthetic_dir / "dev.json")[:4]
    copy = lambda d: {**d, "title": d["title"] + " (copy)"}  # noqa: E731
    distant = train[8:20] + [copy(d) for d in dev]
    for name, docs in (("train_annotated.json", train[:7] + [copy(dev[0])]), ("train_distant.json", distant),
                       ("dev.json", dev),
                       ("test.json", read(synthetic_dir / "test.json")[:4]),
                       ("rel_info.json", read(synthetic_dir / "rel_info.json"))):
        (data / name).write_text(json.dumps(docs), encoding="utf-8")
    return data


def test_distant_stage_one_then_stage_two(distant_data, tiny_roberta_dir, tmp_path):
    """run_roberta_distant.sh: stage 1 trains on the distant file, stage 2 fine-tunes stage 1's best.pt (at
    FT_LR 0 its encoder stays stage 1's exactly); both leave out the annotated facts for Ign F1, report the
    distant one beside it, and keep the checkpoint of the best dev Ign F1 (--select_metric ign_f1 passed
    through)."""
    out = tmp_path / "distant"
    num_class = len(read(distant_data / "rel_info.json")) + 1
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "DATA_DIR": str(distant_data), "MODEL": tiny_roberta_dir, "OUT": str(out),
           "LOSS": "bce", "DISTANT_EPOCHS": "1", "FT_EPOCHS": "1", "FT_LR": "0"}
    extra = ["--num_class", num_class, "--max_seq_length", 128, "--emb_size", 64, "--block_size", 16,
             "--train_batch_size", 2, "--test_batch_size", 4, "--classifier_lr", 0.05, "--evaluation_steps", 1,
             "--select_metric", "ign_f1", "--cache_dir", "none", "--no_progress"]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "run_roberta_distant.sh"), *map(str, extra)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stage1, stage2 = out / "stage1", out / "stage2"

    args1, args2 = read(stage1 / "args.json"), read(stage2 / "args.json")
    assert args1["train_file"] == "train_distant.json" and args1["load_path"] == ""
    assert args2["train_file"] == "train_annotated.json" and args2["do_train"] and args2["learning_rate"] == 0
    assert args2["load_path"] == str(stage1 / "best.pt")

    initial = {f"encoder.{k}": v for k, v in AutoModel.from_pretrained(tiny_roberta_dir).state_dict().items()}
    best1 = torch.load(stage1 / "best.pt", map_location="cpu", weights_only=False)
    best2 = torch.load(stage2 / "best.pt", map_location="cpu", weights_only=False)
    encoder = [k for k in best1["model"] if k.startswith("encoder.") and k in initial]
    assert len(encoder) > 10
    assert any(not torch.equal(best1["model"][k], initial[k]) for k in encoder)  # stage 1 trained the encoder
    for k in encoder:  # stage 2 started from it (and did not move it at learning rate 0)
        assert torch.equal(best2["model"][k], best1["model"][k]), k

    annotated, distant = distant_data / "train_annotated.json", distant_data / "train_distant.json"
    for stage, best in ((stage1, best1), (stage2, best2)):
        dev_pred, dev = read(stage / "dev_pred.json"), read(distant_data / "dev.json")
        assert dev_pred, stage  # the tuned threshold predicts something, so the Ign F1s below can differ
        expected = evaluation.official_evaluate(dev_pred, dev, train_annotated=annotated, train_distant=distant)
        scores = read(stage / "dev_scores.json")
        assert scores["ign_f1"] == pytest.approx(expected["ign_f1"]), stage
        assert scores["ign_f1_distant"] == pytest.approx(expected["ign_f1_distant"]), stage
        assert expected["n_correct"] > 0, stage  # so the two Ign F1s differ:
        assert evaluation.official_evaluate(dev_pred, dev, train_annotated=distant)["ign_f1"] == 0.0
        evals = [r for r in map(json.loads, (stage / "metrics.jsonl").read_text().splitlines()) if "dev_f1" in r]
        assert len(evals) >= 2, stage  # --evaluation_steps 1: a choice to make
        top = max(r["dev_ign_f1"] for r in evals)
        assert best["state"]["best_score"] == top
        assert best["state"]["best_step"] == next(r["step"] for r in evals if r["dev_ign_f1"] == top)
