"""scripts/benchmark.py: the JSON it prints, synthetic documents, both attention paths, the scaling run."""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from collate import DocRECollator
from feature_store import pair_index
from model import plan_windows
from random_encoders import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def bench():
    """scripts/benchmark.py as a module."""
    spec = importlib.util.spec_from_file_location("docre_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def roberta_tokenizer():
    return train_tokenizer("roberta")


def run_script(*args: str) -> dict:
    """Run the benchmark with --json on one thread and return the object it prints."""
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--json", "--threads", "1"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_benchmark_json_on_four_documents(small_synthetic_dir, bench):
    out = run_script("--data", str(small_synthetic_dir / "dev.json"), "--encoder_config", "tiny-bert",
                     "--docs", "4", "--batch_size", "2", "--device", "cpu")
    for key in bench.REQUIRED_KEYS:
        assert isinstance(out[key], float) and out[key] > 0, key
    figures = {k: v for k, v in out.items() if k.endswith(("_per_s", "_per_step", "_mb", "_wall_s", "_cpu_s"))}
    assert len(figures) >= 15 and all(v > 0 for v in figures.values()), figures
    assert not any(k.endswith("_peak_cuda_mb") for k in out)
    assert (out["prepro_docs"], out["train_docs"], out["eval_docs"], out["train_steps"]) == (4, 4, 4, 2)
    assert out["train_s_per_step"] == pytest.approx(out["train_wall_s"] / 2)
    assert out["train_docs_per_s"] == pytest.approx(4 / out["train_wall_s"])
    assert out["train_peak_rss_mb"] >= out["train_rss_at_start_mb"] * 0.99
    assert out["threads"] == 1 and out["torch"] == torch.__version__
    assert out["machine"]["cpu_count"] >= 1 and out["machine"]["transformers"]
    assert out["settings"]["encoder_config"] == "tiny-bert" and out["settings"]["batch_size"] == 2
    assert out["settings"]["phases"] == ["prepro", "train", "eval"] and out["settings"]["ceiling"]
    for phase in ("train", "eval"):  # the bare encoder on the same batches, and our share of its speed
        for key in (f"{phase}_bare_docs_per_s", f"{phase}_bare_wall_s", f"{phase}_bare_cpu_s",
                    f"{phase}_fraction_of_bare"):
            assert isinstance(out[key], float) and out[key] > 0, key
        assert out[f"{phase}_fraction_of_bare"] == pytest.approx(out[f"{phase}_docs_per_s"]
                                                                 / out[f"{phase}_bare_docs_per_s"])


def test_synthetic_features_follow_the_feature_contract(bench, roberta_tokenizer):
    tok = roberta_tokenizer
    feats = bench.synthetic_features(3, 64, 5, tok, num_class=7, seed=1)
    assert len(feats) == 3
    for f in feats:
        ids = f["input_ids"]
        assert len(ids) == 64 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert not np.isin(ids[1:-1], tok.all_special_ids).any()
        assert len(f["entity_pos"]) == 5 and all(1 <= len(m) <= 3 for m in f["entity_pos"])
        starts = [s for m in f["entity_pos"] for s, _ in m]
        ends = [e for m in f["entity_pos"] for _, e in m]
        assert len(set(starts)) == len(starts) and min(starts) >= 1 and max(ends) <= 63
        np.testing.assert_array_equal(f["hts"], pair_index(5))
        assert f["labels"].shape == (5, 2) and len(set(f["labels"][:, 0])) == 5
        assert f["labels"][:, 0].max() < 20 and 1 <= f["labels"][:, 1].min() and f["labels"][:, 1].max() < 7
    again = bench.synthetic_features(3, 64, 5, tok, num_class=7, seed=1)
    np.testing.assert_array_equal(again[2]["input_ids"], feats[2]["input_ids"])
    batch = DocRECollator(7, tok.pad_token_id)(feats)
    assert batch["labels"].shape == (60, 7) and batch["labels"][:, 1:].sum() == 15
    with pytest.raises(ValueError, match="no room"):
        bench.synthetic_features(1, 8, 10, tok, num_class=7)


def test_attention_paths_compute_the_same_logits(bench, roberta_tokenizer, one_thread):
    tok = roberta_tokenizer
    feats = bench.synthetic_features(2, 40, 4, tok, num_class=5, seed=0)
    batch = DocRECollator(5, tok.pad_token_id)(feats)
    batch.pop("labels")
    logits = {}
    for path in bench.ATTENTION_PATHS:
        args = vars(bench.parse_args(["--encoder_config", "tiny-roberta", "--synthetic_tokens", "40",
                                      "--attention", path]))
        model = bench.build_model(args, tok, num_class=5, max_seq_length=64).eval()
        eager = path == "eager-all-layers"
        assert model.attention_rows == ("eager" if eager else "recompute")
        assert model.encoder.config.output_attentions == eager
        assert model.encoder.config._attn_implementation == ("eager" if eager else "sdpa_checkpointed_dropout")
        with torch.no_grad():
            logits[path] = model(**batch)
    assert logits["ours"].shape == (24, 5) and torch.isfinite(logits["ours"]).all()
    torch.testing.assert_close(logits["ours"], logits["eager-all-layers"], atol=1e-4, rtol=1e-4)


def test_fastest_keeps_each_items_quickest_run(bench, monkeypatch):
    durations = iter([3.0, 1.0, 2.0, 5.0])  # repeat 0: items 0, 1; repeat 1: items 0, 1
    clock = {"now": 0.0, "start": True}

    def fake_clock():
        if not clock["start"]:
            clock["now"] += next(durations)
        clock["start"] = not clock["start"]
        return clock["now"]

    monkeypatch.setattr(bench.time, "perf_counter", fake_clock)
    monkeypatch.setattr(bench.time, "process_time", lambda: 0.0)
    calls = []
    wall, cpu = bench.fastest(calls.append, 2, 2, torch.device("cpu"))
    assert calls == [0, 1, 0, 1] and wall == 2.0 + 1.0 and cpu == 0.0


def test_alternating_rounds_and_the_first_rounds_callback(bench):
    calls = []
    timed = bench.fastest_alternating([lambda i: calls.append(("a", i)), lambda i: calls.append(("b", i))], 2, 2,
                                      torch.device("cpu"), after_first=lambda: calls.append("peak"))
    assert calls == [("a", 0), ("a", 1), "peak", ("b", 0), ("b", 1), ("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert len(timed) == 2 and all(w >= 0 and c >= 0 for w, c in timed)


def test_bare_encoder_sees_the_models_own_encoder_inputs(bench, roberta_tokenizer, one_thread):
    tok = roberta_tokenizer
    args = vars(bench.parse_args(["--encoder_config", "tiny-roberta", "--synthetic_tokens", "40"]))
    model = bench.build_model(args, tok, num_class=5, max_seq_length=64)
    model.window_size = 24  # 40- and 30-token documents are cut into windows
    feats = bench.synthetic_features(1, 40, 4, tok, num_class=5) + bench.synthetic_features(1, 30, 4, tok, 5)
    collate = DocRECollator(5, tok.pad_token_id)
    [pieces] = bench.bare_inputs(model, feats, [[0, 1]], collate, torch.device("cpu"))
    spans = [span for n in (40, 30) for span in plan_windows(n, 24, 1, 1, model.window_overlap)]
    assert len(pieces) == len(spans) and all(ids.shape[0] == 1 and mask.all() for ids, mask in pieces)
    assert max(ids.shape[1] for ids, _ in pieces) <= 24
    before = [p.detach().clone() for p in model.parameters()]
    bench.bare_encoder_run(model.train(), pieces, torch.device("cpu"), None, backward=True)
    assert all(p.grad is None for p in model.parameters())  # dropped, so training steps never see them
    assert model.encoder.config._attn_implementation == "sdpa_checkpointed_dropout"  # switched back
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bare_encoder_inputs_are_cut_for_the_encoders_device(bench, roberta_tokenizer):
    """Unpadding is the CPU's choice: on another device (`meta` here, standing for CUDA) the bare encoder gets the
    one padded batch our forward gets there, not one call per sequence (which made it 6x slower on an H200)."""
    tok = roberta_tokenizer
    args = vars(bench.parse_args(["--encoder_config", "tiny-roberta", "--synthetic_tokens", "40"]))
    model = bench.build_model(args, tok, num_class=5, max_seq_length=64)
    feats = bench.synthetic_features(1, 40, 4, tok, num_class=5) + bench.synthetic_features(1, 30, 4, tok, 5)
    collate = DocRECollator(5, tok.pad_token_id)
    [on_cpu] = bench.bare_inputs(model, feats, [[0, 1]], collate, torch.device("cpu"))
    [elsewhere] = bench.bare_inputs(model, feats, [[0, 1]], collate, torch.device("meta"))
    assert [ids.shape[1] for ids, _ in on_cpu] == [40, 30]
    [(ids, mask)] = elsewhere
    assert ids.device.type == mask.device.type == "meta" and ids.shape == mask.shape == (2, 40)


def test_profile_mode_accounts_for_each_step(bench):
    out = run_script("--encoder_config", "tiny-bert", "--synthetic_tokens", "48", "--synthetic_entities", "4",
                     "--docs", "3", "--batch_size", "1", "--profile", "2", "--device", "cpu")
    assert out["settings"]["profile"] == 2
    for phase, regions in (("train", {"collate", "encoder forward", "attention core", "entity pooling",
                                      "context pooling", "group bilinear", "loss", "backward",
                                      "group bilinear backward", "clip + AdamW + schedule"}),
                           ("eval", {"collate", "encoder forward", "attention core", "group bilinear",
                                     "decode + official records"})):
        rows = {r["region"]: r for r in out[f"{phase}_profile"]}
        assert out[f"{phase}_profile_steps"] == 2 and regions <= set(rows), set(rows)
        assert rows["step"]["ms_per_step"] > 0 and rows["step"]["share"] == 1.0
        top = [r for r in out[f"{phase}_profile"] if r["depth"] == 1]  # the step's parts, "other" included
        assert sum(r["ms_per_step"] for r in top) == pytest.approx(rows["step"]["ms_per_step"])
        assert all(r["ms_per_step"] > 0 for r in top if not r["region"].startswith("other"))
        assert rows["group bilinear"]["ms_per_step"] <= rows["extractors + group bilinear"]["ms_per_step"]
        assert "aten::" in out[f"{phase}_profile_top_ops"]
    assert "train_docs_per_s" not in out and "train_bare_docs_per_s" not in out
    table = bench.profile_markdown(out["eval_profile"]).splitlines()
    assert table[0] == "| region | ms per step | share |" and table[2].startswith("| step | ")


def test_scaling_points_and_argument_errors(bench, capsys):
    args = bench.parse_args(["--scaling", "--scaling_lengths", "256,512", "--scaling_entities", "10,20"])
    assert bench.scaling_points(args) == [(256, 20), (512, 20), (512, 10)]
    assert args.phases == ["train", "eval"] and args.model == "minilm"
    for argv, message in (
            (["--model", "minilm", "--encoder_config", "tiny-bert", "--data", "x.json"], "not both"),
            (["--model", "minilm"], "--data is required"),  # no data and nothing synthetic
            (["--data", "x.json", "--phases", "prepro,predict"], "got 'prepro,predict'"),
            (["--scaling", "--scaling_lengths", "256,0"], "expected positive integers, got '256,0'"),
            (["--synthetic_tokens", "64", "--synthetic_entities", "1"], "at least 2 entities"),
            (["--scaling", "--profile", "2"], "(not --scaling)"),
            (["--synthetic_tokens", "64", "--profile", "-1"], "argument --profile: must be >= 0, got -1"),
            (["--synthetic_tokens", "64", "--loss", "foo"], "argument --loss: invalid choice: 'foo'"),
            (["--synthetic_tokens", "64", "--max_seq_length", "0"], "argument --max_seq_length: must be >= 16"),
            (["--synthetic_tokens", "64", "--eval_batch_size", "-1"], "argument --eval_batch_size: must be >= 1"),
            (["--synthetic_tokens", "64", "--eval_batch_size", "0"], "argument --eval_batch_size: must be >= 1"),
            (["--data", "x.json", "--prepro_docs", "-3"], "argument --prepro_docs: must be >= 1 (or 0: the whole"),
            (["--synthetic_tokens", "64", "--warmup_steps", "-1"], "argument --warmup_steps: must be >= 0"),
            (["--synthetic_tokens", "10", "--synthetic_entities", "20"], "10 tokens leave no room for 20 entities"),
            (["--scaling", "--scaling_base_entities", "1"], "at least 2 entities")):
        with pytest.raises(SystemExit) as info:
            bench.parse_args(argv)
        assert info.value.code == 2 and message in capsys.readouterr().err, argv


def test_scaling_table_and_plot_show_both_sweeps(bench, tmp_path):
    args = bench.parse_args(["--scaling", "--scaling_lengths", "256,512", "--scaling_entities", "10,20",
                             "--phases", "train,eval"])
    rows = [{"tokens": t, "entities": e, "pairs_per_doc": e * (e - 1), "train_s_per_doc": t / 100 + e,
             "train_cpu_s_per_doc": 1.0, "train_peak_rss_mb": 900.0 + t, "eval_s_per_doc": 0.5,
             "eval_cpu_s_per_doc": 0.5, "eval_peak_rss_mb": 700.0} for t, e in bench.scaling_points(args)]
    table = bench.scaling_table(rows).splitlines()
    assert table[0].startswith("| tokens | entities | pairs/doc | train s per doc |") and len(table) == 2 + 3
    assert table[2].startswith("| 256 | 20 | 380 | 22.560 |")
    bench.plot_scaling(rows, args, str(tmp_path / "scaling.png"))
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_run_end_to_end(tmp_path):
    plot = tmp_path / "scaling.png"
    out = run_script("--scaling", "--encoder_config", "tiny-bert", "--scaling_lengths", "48",
                     "--scaling_entities", "4", "--scaling_base_tokens", "48", "--scaling_base_entities", "4",
                     "--scaling_docs", "2", "--batch_size", "2", "--phases", "eval", "--repeat", "2", "--plot", str(plot))
    assert [(r["tokens"], r["entities"], r["pairs_per_doc"]) for r in out["scaling"]] == [(48, 4, 12)]
    row = out["scaling"][0]
    assert row["eval_s_per_doc"] > 0 and row["eval_cpu_s_per_doc"] > 0 and row["eval_peak_rss_mb"] > 0
    assert not any(k.startswith("train_") for k in row)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out["plot"] == str(plot)
    assert out["settings"]["repeat"] == 2 and out["settings"]["scaling_docs"] == 2


def test_unreadable_data_is_a_user_error(bench, tmp_path):
    (tmp_path / "garbage.json").write_text("garbage", encoding="utf-8")
    (tmp_path / "empty.json").write_text("[]", encoding="utf-8")
    (tmp_path / "bad.json").write_text('[{"title": "x"}]', encoding="utf-8")  # was named as a phase's own copy
    for name, message in (("nope.json", "no such file"), ("garbage.json", "cannot read JSON"),
                          ("empty.json", "expected a non-empty JSON list")):
        with pytest.raises(bench.utils.UserError, match=f"^--data {tmp_path / name}.*{message}"):
            bench.load_documents(str(tmp_path / name))
    with pytest.raises(bench.utils.UserError, match=rf"(?s)^{tmp_path / 'bad.json'}: .*document 0 \(title 'x'\): "
                                                    r"field sents"):
        bench.load_documents(str(tmp_path / "bad.json"))


@pytest.mark.parametrize("argv,message", [
    (["--output", "{d}"], "--output {d} is a folder"),
    (["--output", "{f}/x.json"], "--output {f}/x.json: cannot write there"),
    (["--scaling", "--plot", "{f}/x.png"], "--plot {f}/x.png: cannot write there"),
    (["--data", "{f}", "--output", "{f}"], "--data and --output are the same file")])
def test_unwritable_outputs_are_refused_before_any_phase(bench, tmp_path, monkeypatch, argv, message):
    afile = tmp_path / "afile"
    afile.write_text("[]", encoding="utf-8")
    fill = lambda text: text.format(d=tmp_path, f=afile)  # noqa: E731
    monkeypatch.setattr(bench, "machine_info", lambda: pytest.fail("the benchmark started"))
    with pytest.raises(bench.utils.UserError, match=re.escape(fill(message))):
        bench.main(["--synthetic_tokens", "48", "--device", "cpu", *map(fill, argv)])
    assert afile.read_text(encoding="utf-8") == "[]" and sorted(tmp_path.iterdir()) == [afile]


def test_bad_input_is_one_error_line_and_exit_status_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "nope.json"), "--synthetic_tokens",
                           "48", "--device", "cpu"], capture_output=True, text=True, cwd=ROOT)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and lines == [f"error: --data {tmp_path / 'nope.json'}: no such file"], lines
