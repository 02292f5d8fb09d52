"""The CUDA path, where a GPU is present: logits and gradients equal the CPU's, bf16 autocast follows fp32, and
train.py, torchrun (NCCL), test mode, --end_to_end and predict.py run on the GPU, their folders loading on a CPU.

CI has no GPU, so there these tests skip; run them on a GPU machine with `python -m pytest tests/test_cuda.py`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_model import BF16_TOLERANCE, batch_of, make_feature, mixed_features, tiny_model, with_sentences
from test_train import tiny_args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (CI has none)")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def exact_cuda_matmuls():
    """fp32 products in fp32 on the GPU (no TF32), so CPU and GPU agree to float rounding."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def to_cuda(batch: dict) -> dict:
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def features(tok) -> list:
    """Mixed documents with sentences and evidence, and one of 70 entities (4,830 pairs: two context blocks)."""
    feats = mixed_features(tok) + [make_feature(tok, 70, 400, 9)]
    return [with_sentences(f, 3, i) for i, f in enumerate(feats)]


@pytest.mark.parametrize("bilinear", ["atlop", "maxsym"])
def test_cuda_logits_and_evidence_equal_the_cpus(tiny_encoder_dir, bilinear):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    model = tiny_model(tiny_encoder_dir, bilinear=bilinear, context_chunk=2048)
    batch = batch_of(features(tok), tok)
    with torch.no_grad():
        ref, ref_evi = model(**batch, return_evidence=True)  # [P, K+1], [P, S_max]
        out, evi = model.cuda()(**to_cuda(batch), return_evidence=True)
    assert out.is_cuda and out.shape == ref.shape and ref.shape[0] > 4096
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(evi.cpu(), ref_evi, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bilinear", ["atlop", "maxsym"])
def test_cuda_bf16_autocast_follows_fp32(tiny_bert_dir, bilinear):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = tiny_model(tiny_bert_dir, bilinear=bilinear).cuda()
    batch = to_cuda(batch_of(mixed_features(tok), tok))
    with torch.no_grad():
        ref = model(**batch)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(**batch)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ref, rtol=0, atol=BF16_TOLERANCE * ref.abs().max().item())


def _loss_and_grads(model, batch: dict, dtype=None):
    """A loss of every output (logits and sentence attention) and the gradient of every parameter, flattened."""
    model.zero_grad()
    with torch.autocast(batch["input_ids"].device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits, evi = model(**batch, return_evidence=True)
    loss = logits.float().pow(2).mean() + evi.float().pow(2).sum()
    loss.backward()
    names = [n for n, p in model.named_parameters() if p.grad is not None]
    return loss.detach().cpu(), names, torch.cat([model.get_parameter(n).grad.flatten().cpu() for n in names])


def test_cuda_gradients_equal_the_cpus_through_every_custom_backward(tiny_bert_dir):
    """Dropout off (so CPU and GPU draw nothing): the checkpointed context blocks, the group bilinear's own
    backward and the encoder give the CPU's gradients on the GPU; bf16 autocast gives finite ones."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = tiny_model(tiny_bert_dir, bilinear="maxsym", context_chunk=2048).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    batch = batch_of(features(tok), tok)
    ref_loss, ref_names, ref = _loss_and_grads(model, batch)
    loss, names, grads = _loss_and_grads(model.cuda(), to_cuda(batch))
    assert names == ref_names and ref.abs().sum() > 0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads, ref, rtol=1e-3, atol=1e-5)
    _, _, low = _loss_and_grads(model, to_cuda(batch), torch.bfloat16)
    assert torch.isfinite(low).all() and low.abs().sum() > 0


def _log(run: Path) -> str:
    return (run / "train.log").read_text(encoding="utf-8")


def test_train_py_on_cuda_in_bf16_then_test_mode_and_a_cpu_folder(small_synthetic_dir, tiny_bert_dir, tmp_path):
    import predict
    import train

    run = tmp_path / "run"
    train.main(tiny_args(small_synthetic_dir, tiny_bert_dir, run, "--num_train_epochs", 2, "--loss", "ncrl"))
    assert "device cuda" in _log(run) and "amp torch.bfloat16" in _log(run)
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())
    dev = json.loads((run / "dev_scores.json").read_text())
    again = train.main(tiny_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "test-mode", "--load_path",
                                 run / "best.pt", "--loss", "ncrl"))
    assert again["dev_f1"] == pytest.approx(dev["f1"])
    docs = json.loads((small_synthetic_dir / "dev.json").read_text())
    on_gpu = predict.DocREPipeline.from_pretrained(str(run / "model"), device="cuda")(docs)
    on_cpu = predict.DocREPipeline.from_pretrained(str(run / "model"), device="cpu")(docs)
    assert [d["title"] for d in on_gpu] == [d["title"] for d in on_cpu] == [d["title"] for d in docs]
    gpu_model = predict.DocREPipeline.from_pretrained(str(run / "model"), device="cuda").model_bundle
    assert next(gpu_model.pretrained.model.parameters()).is_cuda and gpu_model.dtype == torch.bfloat16


def test_end_to_end_training_and_entities_from_the_heads_on_cuda(small_synthetic_dir, tiny_bert_dir, tmp_path):
    import predict
    import train

    run = tmp_path / "e2e"
    train.main(["--data_dir", str(small_synthetic_dir), "--model_name_or_path", tiny_bert_dir, "--end_to_end",
                "--num_train_epochs", "1", "--output_dir", str(run), "--no_progress", "--loss", "atl",
                "--test_file", "", "--classifier_lr", "1e-2", "--max_seq_length", "256"])
    assert "device cuda" in _log(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("dev_e2e_mention_f1" in r for r in records), records[-1]
    pipe = predict.DocREPipeline.from_pretrained(str(run / "model"), device="cuda", entities="model")
    heads = pipe.model_bundle.pretrained.model.entity_heads
    assert next(heads.parameters()).is_cuda
    heads.span_out.weight.data.zero_()
    heads.span_out.bias.data.fill_(5.0)  # every candidate a mention
    docs = json.loads((small_synthetic_dir / "dev.json").read_text())
    out = pipe(docs)
    assert len(out) == len(docs) and all(d["entities"] for d in out)


def test_torchrun_one_gpu_process_trains_with_nccl(small_synthetic_dir, tiny_bert_dir, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(ROOT / "train.py"), *tiny_args(small_synthetic_dir, tiny_bert_dir, run, "--num_train_epochs", 1,
                                             "--loss", "atl", "--test_file", "")]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device cuda" in _log(run) and (run / "model" / "model.safetensors").exists()
