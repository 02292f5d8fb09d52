"""Faults during a run: a failed write keeps the previous file, non-finite steps are skipped, counted and
eventually abort, and an out-of-memory error says what to change.

Covered elsewhere: SIGKILL mid-epoch then --resume (test_train.test_resume_after_sigkill_matches_uninterrupted_run;
with two processes, test_distributed.test_two_process_resume_after_sigkill_matches_an_uninterrupted_run),
a corrupted or half-written feature cache is rebuilt with a warning (test_prepro.test_corrupted_cache_is_rebuilt_with_a_
warning, test_prepro.test_a_failed_build_leaves_no_cache_behind).
"""
from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch

import train
import utils
from model import DocREModel
from test_bad_input import run_args

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished_run(small_synthetic_dir, tiny_bert_dir, tmp_path_factory):
    """A complete two-step run: best.pt, last.pt, result.json and the rest."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train.main(run_args(small_synthetic_dir, tiny_bert_dir, out, "--max_steps", 2))
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def leftovers(folder: Path) -> List[str]:
    """Temporary files of atomic writes still lying in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- writes


def test_failed_checkpoint_write_keeps_the_previous_last(run_copy, small_synthetic_dir, tiny_bert_dir,
                                                         monkeypatch):
    before = (run_copy / "last.pt").read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if ".last.pt." in Path(f).name:  # the temporary file beside last.pt: cut it in half, then fail
            data = Path(f).read_bytes()
            Path(f).write_bytes(data[: len(data) // 2])
            raise disk_full()

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):  # the resumed run dies writing its next last.pt
        train.main(run_args(small_synthetic_dir, tiny_bert_dir, run_copy, "--max_steps", 3, "--resume"))
    assert (run_copy / "last.pt").read_bytes() == before
    ckpt = torch.load(run_copy / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["model"] and ckpt["meta"]["rel2id"]["Na"] == 0 and ckpt["state"]["step"] == 2
    assert leftovers(run_copy) == []


class FailingFile:
    """A text file that writes half of what it is given, then reports a full disk."""

    def __init__(self, f):
        self.f = f

    def __enter__(self) -> "FailingFile":
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, text: str) -> int:
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        raise disk_full()


def test_failed_result_write_keeps_the_previous_result(run_copy, small_synthetic_dir, tiny_bert_dir, tmp_path,
                                                       monkeypatch):
    before = (run_copy / "result.json").read_text(encoding="utf-8")
    assert json.loads(before)  # the fixture's run predicted something
    out = tmp_path / "test-mode"  # a folder holding only an earlier result.json (--overwrite would remove it)
    out.mkdir()
    (out / "result.json").write_text(before, encoding="utf-8")

    def open_failing(file, mode="r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)
        return FailingFile(f) if ".result.json." in Path(file).name and "w" in mode else f

    monkeypatch.setattr(utils, "open", open_failing, raising=False)  # utils' writers see this `open`
    with pytest.raises(OSError, match="No space left"):  # test mode dies writing result.json
        train.main(run_args(small_synthetic_dir, tiny_bert_dir, out, "--load_path", run_copy / "best.pt"))
    assert (out / "result.json").read_text(encoding="utf-8") == before
    dev = json.loads((out / "dev_scores.json").read_text(encoding="utf-8"))  # written before the failure,
    assert {"precision", "recall", "f1", "ign_f1"} <= set(dev)  # through the same writer
    assert leftovers(out) == []


# ----------------------------------------------------------------------------- numerical faults


def poison_training_forward(monkeypatch, plan: Callable[[int], str]) -> Dict[str, int]:
    """Make DocREModel's training forward return NaN logits ("logits") or logits whose gradient is NaN ("grad")
    at the calls `plan(call index)` says; evaluation is untouched."""
    real_forward = DocREModel.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        logits = real_forward(self, *args, **kwargs)
        if not self.training:
            return logits
        calls["n"] += 1
        fault = plan(calls["n"])
        if fault == "logits":
            return logits * float("nan")
        if fault == "grad":
            logits.register_hook(lambda grad: grad * float("nan"))
        return logits

    monkeypatch.setattr(DocREModel, "forward", forward)
    return calls


def train_records(out: Path) -> List[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r]


def test_non_finite_steps_are_skipped_and_counted(small_synthetic_dir, tiny_bert_dir, tmp_path, monkeypatch):
    faults = {1: "logits", 3: "grad"}
    poison_training_forward(monkeypatch, lambda call: faults.get(call, ""))
    out = tmp_path / "run"
    train.main(run_args(small_synthetic_dir, tiny_bert_dir, out, "--max_steps", 4, "--max_bad_steps", 2,
                        "--test_file", ""))
    records = train_records(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["skipped_steps"] for r in records] == [1, 1, 2, 2]
    # a non-finite loss or gradient norm is logged as null: metrics.jsonl stays JSON (NaN is no JSON value)
    assert records[0]["loss"] is None and math.isfinite(records[2]["loss"]) and records[2]["grad_norm"] is None
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(w).all() for w in best.values())  # no NaN gradient reached the weights
    assert (out / "dev_scores.json").exists()  # the run finished


def test_too_many_bad_steps_in_a_row_abort(small_synthetic_dir, tiny_bert_dir, tmp_path, monkeypatch):
    """Needs /tmp/train_patch_reliability.diff: the aborting step is logged before the error."""
    calls = poison_training_forward(monkeypatch, lambda call: "logits")
    out = tmp_path / "run"
    with pytest.raises(utils.UserError, match="3 optimizer steps in a row had a non-finite loss") as info:
        train.main(run_args(small_synthetic_dir, tiny_bert_dir, out, "--max_steps", 10, "--max_bad_steps", 3,
                            "--test_file", ""))
    assert "--learning_rate" in str(info.value) and "--amp off" in str(info.value)
    assert calls["n"] == 3
    assert [r["skipped_steps"] for r in train_records(out)] == [1, 2, 3]


# ----------------------------------------------------------------------------- out of memory


def raise_oom_when(monkeypatch, training: bool) -> None:
    def forward(self, *args, **kwargs):
        if self.training == training:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, *args, **kwargs)

    real_forward = DocREModel.forward
    monkeypatch.setattr(DocREModel, "forward", forward)


def test_oom_in_training_names_the_batch_and_the_flags(small_synthetic_dir, tiny_bert_dir, tmp_path,
                                                       monkeypatch):
    """Needs /tmp/train_patch_reliability.diff (Trainer.micro_step)."""
    raise_oom_when(monkeypatch, training=True)
    with pytest.raises(torch.cuda.OutOfMemoryError) as info:
        train.main(run_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run", "--train_batch_size", 2,
                            "--test_file", ""))
    msg = str(info.value)
    assert "a batch of 2 documents x 128 tokens" in msg  # every synthetic document fills --max_seq_length 128
    for flag in ("--train_batch_size 2", "--max_seq_length 128", "--gradient_checkpointing",
                 "--gradient_accumulation_steps"):
        assert flag in msg
    assert "Tried to allocate" in str(info.value.__cause__)


def test_oom_in_prediction_names_the_batch_and_the_flags(finished_run, small_synthetic_dir, tiny_bert_dir,
                                                         tmp_path, monkeypatch):
    """Needs /tmp/train_patch_reliability.diff (predict_logits)."""
    raise_oom_when(monkeypatch, training=False)
    with pytest.raises(torch.cuda.OutOfMemoryError) as info:
        train.main(run_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run",
                            "--load_path", finished_run / "best.pt", "--test_batch_size", 3))
    msg = str(info.value)
    assert "a batch of 3 documents x 128 tokens" in msg and "--test_batch_size 3" in msg
    assert "--max_seq_length" in msg
