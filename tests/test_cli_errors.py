"""Every command line's error path, end to end: exit status 2, one message naming the culprit, no traceback,
and nothing already written lost. (The messages of each rule are tested where the rule lives.)"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def assert_refused(res, *culprits):
    """Exit 2, no traceback, and each culprit named in the message."""
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for c in culprits:
        assert str(c) in res.stderr, (c, res.stderr[-2000:])


def train_args(data, model, out, *extra):
    return ["train.py", "--data_dir", data, "--model_name_or_path", model, "--output_dir", out,
            "--max_seq_length", "128", "--emb_size", "64", "--block_size", "16", "--cache_dir", "none",
            "--no_progress", *map(str, extra)]


@pytest.fixture(scope="module")
def finished(small_synthetic_dir, tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    res = run(*train_args(small_synthetic_dir, tiny_bert_dir, out, "--max_steps", 1, "--test_file", ""))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture
def data_copy(small_synthetic_dir, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(small_synthetic_dir, d, ignore=shutil.ignore_patterns(".cache"))
    return d


def test_missing_data_folder(tiny_bert_dir, tmp_path):
    res = run(*train_args(tmp_path / "no-such-data", tiny_bert_dir, tmp_path / "run", "--max_steps", 1))
    assert_refused(res, "--data_dir", tmp_path / "no-such-data")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, culprit", [
    (["--train_batch_size", "0"], "argument --train_batch_size: must be >= 1, got 0"),
    (["--learning_rate", "-1"], "argument --learning_rate: must be >= 0, got -1"),
    (["--warmup_ratio", "2"], "argument --warmup_ratio: must be in [0, 1], got 2"),
    (["--max_steps", "-3"], "argument --max_steps: must be >= 1 (or -1: no limit), got -3"),
    (["--emb_size", "100", "--block_size", "64"], "--emb_size 100 must be a multiple of --block_size 64")])
def test_flags_out_of_range(flags, culprit, small_synthetic_dir, tiny_bert_dir, tmp_path):
    """Numbers no run can use (they divided by zero, trained with a negative learning rate, or trained without end)
    are refused in one line before anything is written."""
    res = run(*train_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run", *flags))
    assert_refused(res, culprit)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device, culprit", [("gpu", "not a device name"), ("cuda:99", "CUDA device")])
def test_a_device_this_machine_lacks(device, culprit, finished, small_synthetic_dir, tiny_bert_dir, tmp_path):
    """A misspelt device, or a GPU the machine lacks: one line, before anything is written (not a traceback from
    deep inside torch, nor a quiet fall back to the CPU)."""
    res = run(*train_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run", "--device", device))
    assert_refused(res, f"--device {device}: ", culprit)
    assert not (tmp_path / "run").exists()
    res = run("predict.py", "--model", finished / "model", "--text", "A met B.", "--device", device)
    assert_refused(res, f"--device {device}: ", culprit)


@pytest.mark.parametrize("case", ["missing", "garbage", "truncated", "folder"])
def test_bad_load_path(case, finished, small_synthetic_dir, tiny_bert_dir, tmp_path):
    path = {"missing": tmp_path / "nope.pt", "garbage": tmp_path / "garbage.pt",
            "truncated": tmp_path / "cut.pt", "folder": tmp_path / "empty"}[case]
    if case == "garbage":
        path.write_text("not a checkpoint")
    elif case == "truncated":
        data = (finished / "best.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "folder":
        path.mkdir()
    res = run(*train_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run", "--load_path", path))
    assert_refused(res, "--load_path", path)
    if case == "garbage":  # it was called a pickle checkpoint, to be trusted
        assert_refused(res, "is not a checkpoint (neither a PyTorch zip archive nor a pickle)")


def test_output_dir_that_is_a_file_or_lies_under_one(small_synthetic_dir, tiny_bert_dir, tmp_path):
    file = tmp_path / "a-file"
    file.write_text("x")
    assert_refused(run(*train_args(small_synthetic_dir, tiny_bert_dir, file, "--max_steps", 1)), "--output_dir", file)
    under = file / "run"
    assert_refused(run(*train_args(small_synthetic_dir, tiny_bert_dir, under, "--max_steps", 1)), under, "is a file")


def test_a_finished_run_is_never_overwritten(finished, small_synthetic_dir, tiny_bert_dir):
    before = {name: (finished / name).read_bytes() for name in ("args.json", "best.pt", "scores.json")}
    res = run(*train_args(small_synthetic_dir, tiny_bert_dir, finished, "--max_steps", 1, "--loss", "bce"))
    assert_refused(res, finished, "finished run", "--resume", "--overwrite")
    assert {name: (finished / name).read_bytes() for name in before} == before


@pytest.mark.parametrize("case", ["other flags", "best.pt", "truncated", "with --overwrite"])
def test_resume_checks_last_pt_before_writing(case, finished, small_synthetic_dir, tiny_bert_dir, tmp_path):
    """--resume with a last.pt that this command cannot continue: one line naming it (and the flags that differ),
    and the folder as it was (args.json was once rewritten with the new flags before the traceback)."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    flags = ["--max_steps", 1, "--test_file", "", "--resume"]
    culprits = [run_dir / "last.pt"]
    if case == "other flags":
        flags += ["--emb_size", "32", "--loss", "bce"]
        culprits += ["--emb_size 64 there, 32 here", "--loss 'ncrl' there, 'bce' here"]
    elif case == "best.pt":
        shutil.copy(run_dir / "best.pt", run_dir / "last.pt")
        culprits += ["holds no training state", "optimizer"]
    elif case == "truncated":
        data = (run_dir / "last.pt").read_bytes()
        (run_dir / "last.pt").write_bytes(data[: len(data) // 2])
        culprits += ["not a readable checkpoint"]
    else:
        flags += ["--overwrite"]
        culprits = ["--resume continues the run in", "--overwrite replaces it"]
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert_refused(run(*train_args(small_synthetic_dir, tiny_bert_dir, run_dir, *flags)), *culprits)
    assert {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_failing_run_writes_nothing_into_its_folder(data_copy, tiny_bert_dir, tmp_path):
    """Inputs are validated before the run directory is written: a bad dev file leaves no args.json behind."""
    docs = json.loads((data_copy / "dev.json").read_text())
    docs[1]["vertexSet"][0][0]["sent_id"] = 99
    (data_copy / "dev.json").write_text(json.dumps(docs))
    out = tmp_path / "run"
    res = run(*train_args(data_copy, tiny_bert_dir, out, "--max_steps", 1))
    assert_refused(res, data_copy / "dev.json", "document 1", "sent_id")
    assert not (out / "args.json").exists()


@pytest.mark.parametrize("content, culprit", [("[]", "no documents"), ('{"title": "x"}', "list"),
                                              ("", "train_annotated.json")])
def test_empty_or_malformed_training_file(content, culprit, data_copy, tiny_bert_dir, tmp_path):
    (data_copy / "train_annotated.json").write_text(content)
    res = run(*train_args(data_copy, tiny_bert_dir, tmp_path / "run", "--max_steps", 1))
    assert_refused(res, "train_annotated.json", culprit)
    assert not (tmp_path / "run" / "best.pt").exists()


def test_relation_missing_from_the_label_map(data_copy, tiny_bert_dir, tmp_path):
    docs = json.loads((data_copy / "train_annotated.json").read_text())
    docs[2]["labels"][0]["r"] = "P999999"
    (data_copy / "train_annotated.json").write_text(json.dumps(docs))
    res = run(*train_args(data_copy, tiny_bert_dir, tmp_path / "run", "--max_steps", 1))
    assert_refused(res, "train_annotated.json", "document 2", "P999999")


def test_checkpoints_name_their_task_and_resume_checks_the_processes(finished, tmp_path):
    """A checkpoint's args had no task, so check_task passed another task's best.pt and last.pt; a run resumed under
    torchrun with another number of processes replayed other documents."""
    import argparse

    import torch

    from engine import checkpoints as ck
    from utils import UserError

    last = torch.load(finished / "last.pt", map_location="cpu", weights_only=True)
    assert last["args"]["task"] == "docred" and last["args"]["world_size"] == 1
    with pytest.raises(UserError, match="is a docred checkpoint, not one of goemotions"):
        ck.check_task(last, "last.pt", "goemotions")
    args = argparse.Namespace(**{**last["args"], "world_size": 2})
    with pytest.raises(UserError, match=r"processes \(torchrun's --nproc_per_node\) 1 there, 2 here"):
        ck.read_resume(finished / "last.pt", args, "docred", ())
    lr = last["args"]["learning_rate"]  # last.pt's optimizer and schedule hold it: a new one was ignored
    args = argparse.Namespace(**{**last["args"], "learning_rate": lr * 10})
    with pytest.raises(UserError, match=rf"--learning_rate {lr!r} there, {lr * 10!r} here"):
        ck.read_resume(finished / "last.pt", args, "docred", ())


def test_wandb_and_an_empty_test_mode_are_refused_before_any_work(finished, small_synthetic_dir, tiny_bert_dir,
                                                                   tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("wandb") is None:  # refused before the encoder and the data: no folder is made
        res = run(*train_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run", "--max_steps", 1, "--wandb"))
        assert_refused(res, "--wandb needs the wandb package")
        assert not (tmp_path / "run").exists()
    res = run(*train_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run", "--load_path", finished,
                          "--dev_file", "", "--test_file", ""))  # exited 0 with a scores.json of nothing
    assert_refused(res, "test mode scores the model on --dev_file or --test_file, and neither is given")


def test_save_path_is_checked_before_training(finished, small_synthetic_dir, tiny_bert_dir, tmp_path):
    """A --save_path under a file was a traceback after the training; an existing file (another run's best.pt) was
    replaced without a word; test mode ignored the flag."""
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    for path, culprit in ((a_file / "best.pt", "cannot write there"), (a_file, "already exists: pass --overwrite")):
        res = run(*train_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run", "--max_steps", 1,
                              "--save_path", path))
        assert_refused(res, f"--save_path {path}", culprit)
        assert not (tmp_path / "run").exists() and a_file.read_text() == "x"
    res = run(*train_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run", "--load_path", finished,
                          "--save_path", tmp_path / "copy.pt"))
    assert_refused(res, "--save_path copies the best checkpoint of a training run; test mode trains none")


def test_a_folder_given_as_a_data_file_is_called_a_folder(small_synthetic_dir, tiny_bert_dir, tmp_path):
    res = run(*train_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run", "--dev_file", tmp_path))
    assert_refused(res, f"--dev_file {tmp_path} is a folder, not a file")  # it said "no such file"


def test_unlabelled_dev_file_cannot_select_a_checkpoint(data_copy, tiny_bert_dir, tmp_path):
    docs = json.loads((data_copy / "dev.json").read_text())
    (data_copy / "dev.json").write_text(json.dumps([{k: v for k, v in d.items() if k != "labels"} for d in docs]))
    res = run(*train_args(data_copy, tiny_bert_dir, tmp_path / "run", "--max_steps", 1))
    assert_refused(res, "--dev_file", "no labels")


def test_missing_label_map_file_is_named(finished, small_synthetic_dir, tiny_bert_dir, tmp_path):
    res = run(*train_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run", "--load_path", finished / "best.pt",
                          "--rel2id", tmp_path / "missing-map.json"))
    assert_refused(res, "missing-map.json")
    res = run(*train_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run", "--load_path", finished / "best.pt",
                          "--num_class", 3))  # it was ignored: the checkpoint's map stands
    assert_refused(res, "trained with a label map of", "--num_class 3")


def test_cli_prints_one_line_exits_2_and_writes_the_message_into_the_open_log(tmp_path, capsys):
    import logging

    import utils

    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(SystemExit) as info:
            utils.cli(lambda: (_ for _ in ()).throw(utils.UserError("--dev_file x.json: no such file")))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: --dev_file x.json: no such file\n"
    assert "--dev_file x.json: no such file" in (tmp_path / "train.log").read_text()


def test_dialogre_and_goemotions_name_their_missing_files(tiny_bert_dir, tmp_path):
    res = run("dialogre.py", "--data_dir", tmp_path, "--model_name_or_path", tiny_bert_dir, "--output_dir",
              tmp_path / "d", "--max_steps", 1, "--no_progress")
    assert_refused(res, tmp_path / "dev.json")
    res = run("goemotions.py", "--data_dir", tmp_path, "--model_name_or_path", tiny_bert_dir, "--output_dir",
              tmp_path / "g", "--max_steps", 1, "--no_progress")
    assert_refused(res, tmp_path / "labels.txt")


def test_tools_name_their_missing_inputs(tmp_path, small_synthetic_dir):
    assert_refused(run("scripts/make_tables.py", tmp_path / "no-sweep"), tmp_path / "no-sweep")
    assert_refused(run("evaluation.py", "--pred", tmp_path / "p.json", "--truth", tmp_path / "t.json"),
                   tmp_path / "t.json")  # the truth file is checked first
    assert_refused(run("evaluation.py", "--pred", tmp_path / "p.json", "--truth", small_synthetic_dir / "dev.json"),
                   tmp_path / "p.json")
