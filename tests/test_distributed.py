"""torchrun with two CPU processes (gloo) takes the same steps as one process with twice the batch."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = ["args.json", "metrics.jsonl", "best.pt", "last.pt", "dev_pred.json", "dev_scores.json",
             "result.json", "result.zip", "train.log"]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def command(nproc, data_dir, model_dir, out, *extra):
    """train.py's command line, under torchrun when `nproc` > 1."""
    args = ["--data_dir", str(data_dir), "--model_name_or_path", str(model_dir), "--output_dir", str(out),
            "--max_seq_length", "512", "--test_batch_size", "3", "--emb_size", "64", "--block_size", "16",
            "--no_progress", "--learning_rate", "1e-3", "--classifier_lr",
            "1e-3", "--logging_steps", "1", "--loss", "atl", "--device", "cpu", *map(str, extra)]
    cmd = [sys.executable, str(ROOT / "train.py")] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
        str(ROOT / "train.py")]
    return cmd + args


def launch(nproc, data_dir, model_dir, out, *extra, timeout=600):
    proc = subprocess.run(command(nproc, data_dir, model_dir, out, *extra), cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_two_processes_match_one_process_with_the_global_batch(synthetic_dir, tiny_bert_dir, tmp_path):
    """With the evidence loss on and documents longer than the encoder's 512 positions (windows), so the evidence
    supervision, the weighing of its mean over positive pairs, and the written evidence are checked under DDP."""
    common = ["--num_train_epochs", "1", "--max_steps", "4", "--gradient_accumulation_steps", "2", "--seed", "3",
              "--evidence_lambda", "0.1", "--evidence_threshold", "0.05", "--max_seq_length", "1024",
              "--loss", "bce"]  # BCE at its tuned threshold predicts something after 4 steps
    one = launch(1, synthetic_dir, tiny_bert_dir, tmp_path / "one", "--train_batch_size", "4", *common)
    two = launch(2, synthetic_dir, tiny_bert_dir, tmp_path / "two", "--train_batch_size", "2", *common)
    a = torch.load(one / "last.pt", map_location="cpu", weights_only=False)
    b = torch.load(two / "last.pt", map_location="cpu", weights_only=False)
    assert a["state"]["step"] == b["state"]["step"] == 4
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=0, atol=1e-5, msg=name)
    assert len(b["rng"]) == 2  # every rank's RNG state, for resume
    # BCE at a threshold tuned after 4 steps predicts most pairs, some within float noise (weights agree to 1e-5) of
    # the threshold, so a few facts may flip; the evidence of every fact both predict must be the same
    facts = lambda run: {(p["title"], p["h_idx"], p["t_idx"], p["r"]): p["evidence"]  # noqa: E731
                         for p in json.loads((run / "dev_pred.json").read_text())}
    a_facts, b_facts = facts(one), facts(two)
    assert a_facts and any(a_facts.values())
    assert len(a_facts.keys() ^ b_facts.keys()) <= len(a_facts) // 1000
    assert all(a_facts[k] == b_facts[k] for k in a_facts.keys() & b_facts.keys())
    evi = [json.loads((run / "dev_scores.json").read_text())["evi_f1"] for run in (one, two)]
    assert evi[0] == __import__("pytest").approx(evi[1], abs=0.1)
    args = json.loads((two / "args.json").read_text())
    assert args["world_size"] == 2 and args["effective_batch_size"] == 2 * 2 * 2
    losses = lambda run: [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                          if "loss" in r]
    assert losses(one) == __import__("pytest").approx(losses(two), abs=1e-5)


def test_end_to_end_two_processes_match_one_process(synthetic_dir, tiny_bert_dir, tmp_path):
    """--end_to_end under torchrun: the entity heads' losses go through the wrapped model's forward and every rank
    has the same loss terms, so two processes take one process's steps with the global batch."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(synthetic_dir / "rel_info.json", data)
    for name, n in (("train_annotated.json", 8), ("dev.json", 2)):
        (data / name).write_text(json.dumps(json.loads((synthetic_dir / name).read_text())[:n]))
    common = ["--end_to_end", "--num_train_epochs", "1", "--max_steps", "2", "--seed", "4", "--test_file", ""]
    one = launch(1, data, tiny_bert_dir, tmp_path / "one", "--train_batch_size", "4", *common)
    two = launch(2, data, tiny_bert_dir, tmp_path / "two", "--train_batch_size", "2", *common)
    a = torch.load(one / "last.pt", map_location="cpu", weights_only=False)
    b = torch.load(two / "last.pt", map_location="cpu", weights_only=False)
    assert a["state"]["step"] == b["state"]["step"] == 2
    assert any(name.startswith("entity_heads.") for name in a["model"])
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=0, atol=1e-5, msg=name)


def test_tiny_dev_set_and_a_single_run_directory(synthetic_dir, tiny_bert_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train_annotated.json", "rel_info.json", "test.json"):
        shutil.copy(synthetic_dir / name, data / name)
    dev = json.loads((synthetic_dir / "dev.json").read_text())[:1]  # fewer documents than ranks
    (data / "dev.json").write_text(json.dumps(dev))
    runs = tmp_path / "runs"
    launch(2, data, tiny_bert_dir, runs / "run", "--train_batch_size", "2", "--max_steps", "2",
           "--num_train_epochs", "1", timeout=300)
    assert [p.name for p in runs.iterdir() if p.is_dir()] == ["run"]
    for name in RUN_FILES:
        assert (runs / "run" / name).exists(), name

    # input rank 0 refuses is refused on every rank, in one line each: rank 1 waited for rank 0 and died in a
    # traceback (connection closed by peer), and torchrun exited 1
    bad = json.loads((data / "dev.json").read_text())
    bad[0]["vertexSet"][0][0]["sent_id"] = 99
    (data / "dev.json").write_text(json.dumps(bad))
    for out, culprit in ((runs / "run", "already holds a finished run"), (runs / "bad", "field vertexSet[0][0]")):
        proc = subprocess.run(command(2, data, tiny_bert_dir, out, "--train_batch_size", "2", "--max_steps", "2"),
                              cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
        # (a rank's line may follow another's progress bar on the same line)
        assert proc.returncode != 0 and proc.stderr.count("error: ") == 2 and proc.stderr.count(culprit) == 2, \
            proc.stderr[-3000:]
        assert "[rank1]: Traceback" not in proc.stderr and "Connection closed" not in proc.stderr


def by_document(path: Path) -> dict:
    """{title: sorted facts} of a prediction file."""
    facts: dict = {}
    for p in json.loads(path.read_text()):
        facts.setdefault(p["title"], []).append(json.dumps(p, sort_keys=True))
    return {title: sorted(f) for title, f in facts.items()}


def test_two_process_prediction_of_an_odd_document_count_equals_one_process(synthetic_dir, tiny_bert_dir,
                                                                              tmp_path):
    """Test mode on 7 test documents in batches of 3: rank 0 predicts 4 (batches of 3 and 1), rank 1 predicts 3
    (5 dev documents: 3 and 2); the facts of every document equal one process's."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train_annotated.json", "rel_info.json"):
        shutil.copy(synthetic_dir / name, data / name)
    for name, source, n in (("dev.json", "dev.json", 5), ("odd.json", "test.json", 7)):
        (data / name).write_text(json.dumps(json.loads((synthetic_dir / source).read_text())[:n]))
    run = launch(1, data, tiny_bert_dir, tmp_path / "run", "--train_batch_size", "4", "--max_steps", "3",
                 "--num_train_epochs", "1", "--test_file", "")
    outs = {n: launch(n, data, tiny_bert_dir, tmp_path / f"test{n}", "--load_path", run / "best.pt", "--test_file",
                      "odd.json") for n in (1, 2)}
    one, two = (by_document(outs[n] / "result.json") for n in (1, 2))
    assert len(one) >= 5, one.keys()  # most documents have predicted facts, so a lost or moved one shows
    assert two == one
    assert by_document(outs[2] / "dev_pred.json") == by_document(outs[1] / "dev_pred.json")


def proc_stat(pid: int) -> list:
    """(state, parent pid) of a Linux process, from /proc/<pid>/stat ([] once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []
    return [fields[0], int(fields[1])]


def descendants(pid: int) -> list:
    """Every live process below `pid`."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat:
                parents.setdefault(stat[1], []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def test_two_process_resume_after_sigkill_matches_an_uninterrupted_run(synthetic_dir, tiny_bert_dir, tmp_path):
    """Both ranks killed mid-run, then --resume: the weights and dev scores of an uninterrupted two-process run.
    The encoder has dropout, so each rank's RNG state must come back; 7 documents in global batches of 2 end
    every epoch with a batch whose second rank has no document."""
    enc = tmp_path / "encoder"
    shutil.copytree(tiny_bert_dir, enc)
    config = json.loads((enc / "config.json").read_text())
    config.update(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    (enc / "config.json").write_text(json.dumps(config))
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(synthetic_dir / "rel_info.json", data)
    for name, n in (("train_annotated.json", 7), ("dev.json", 3)):
        (data / name).write_text(json.dumps(json.loads((synthetic_dir / name).read_text())[:n]))
    common = ["--train_batch_size", "1", "--num_train_epochs", "4", "--save_steps", "1", "--test_file", "",
              "--seed", "5"]  # 4 batches, 4 steps an epoch: 16 steps
    full = launch(2, data, enc, tmp_path / "full", *common)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(command(2, data, enc, cut, *common), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # its own group: torchrun and ranks
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill once a few steps are saved
        lines = (cut / "metrics.jsonl").read_text().splitlines() if (cut / "metrics.jsonl").exists() else []
        if sum('"loss"' in line for line in lines) >= 5 and (cut / "last.pt").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    ranks = descendants(proc.pid)  # torchrun starts each rank in a session of its own
    assert len(ranks) >= 2, ranks
    for pid in [proc.pid, *ranks]:  # every process at once, as when a node dies
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    while any(proc_stat(pid)[:1] not in ([], ["Z"]) for pid in ranks):  # gone, or dead and not yet reaped
        time.sleep(0.05)
    killed_at = torch.load(cut / "last.pt", map_location="cpu", weights_only=False)["state"]["step"]
    assert 0 < killed_at < 16 and not (cut / "dev_scores.json").exists()

    launch(2, data, enc, cut, *common, "--resume")
    assert f"resumed from {cut / 'last.pt'} at step {killed_at} " in (cut / "train.log").read_text()
    a = torch.load(full / "last.pt", map_location="cpu", weights_only=False)
    b = torch.load(cut / "last.pt", map_location="cpu", weights_only=False)
    assert a["state"]["step"] == b["state"]["step"] == 16
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=0, atol=1e-6,
                                   msg=f"{name} (killed after step {killed_at})")
    assert json.loads((full / "dev_scores.json").read_text()) == json.loads((cut / "dev_scores.json").read_text())
    steps = [json.loads(line)["step"] for line in (cut / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == list(range(1, 17))  # one log line a step, none lost or repeated across the resume
