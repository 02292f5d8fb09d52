"""Hostile and heavy inputs (#37): bounded memory on many entities, shared caches, honest resume, clear errors."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import engine.runner as engine_runner
import engine.task as engine_task
import engine.trainer as trainer_module
import evaluation
import feature_cache
import goemotions
import json_stream
import predict
import prepro
import text2doc
import train
import utils
from collate import DocRECollator
from engine.rundir import RunDirectory
from model import DocREModel
from prepro import features_from_documents, load_rel2id, read_docred
from settings import DocRESettings
from conftest import ROOT, shared_file
from test_bad_input import run_args
from test_prepro import SETTINGS, make_doc
from test_prepro import write as write_docs
from test_model import NUM_CLASS, batch_of, bert_tok, make_feature, tiny_model, with_sentences  # noqa: F401


# ----------------------------------------------------------------------------- memory bounded by design
def all_pairs_context(hidden, entity_att, entity_doc, hts, pair_doc, sent_pos=None):
    """The pre-#37 pooling: q for every entity pair of every document at once [B, E, E, L], then picked."""
    b = hidden.shape[0]
    counts = torch.bincount(entity_doc, minlength=b)
    local = torch.arange(len(entity_doc)) - (counts.cumsum(0) - counts)[entity_doc]
    e_max = int(counts.max()) if len(entity_doc) else 0
    att = entity_att.new_zeros(b, e_max, *entity_att.shape[1:]).index_put((entity_doc, local), entity_att)
    q = torch.einsum("bihl,bjhl->bijl", att, att) / att.shape[2]  # [B, E, E, L]
    q = q / (q.sum(-1, keepdim=True) + 1e-5)
    ctx = torch.matmul(q.view(b, e_max * e_max, -1), hidden).view(b, e_max, e_max, -1)
    pick = (pair_doc, local[hts[:, 0]], local[hts[:, 1]])
    return ctx[pick], None if sent_pos is None else DocREModel.sentence_attention(q, sent_pos)[pick]


def head_inputs(model: DocREModel, batch: dict):
    """(hidden, entity attention, entity_doc, hts, pair_doc, sent_pos) of a batch, with gradients."""
    hidden, att = model.encode(batch["input_ids"], batch["attention_mask"], batch["mention_pos"], batch["mention_doc"])
    _, ent_att = model.pool_entities(hidden, att, batch["mention_pos"], batch["mention_doc"], batch["mention_entity"],
                                     len(batch["entity_doc"]))
    return hidden, ent_att, batch["entity_doc"], batch["hts"], batch["pair_doc"], batch.get("sent_pos")


@pytest.mark.parametrize("chunk", [1, 7, 10 ** 6])
def test_context_in_chunks_of_pairs_equals_all_pairs_at_once_with_gradients(tiny_bert_dir, bert_tok, chunk):
    """Chunked context and sentence attention (and their gradients) equal the [B, E, E, L] path; pairs in any
    order (a shuffled batch) come back in their order."""
    model = tiny_model(tiny_bert_dir)
    feats = [with_sentences(make_feature(bert_tok, n, t, s), k, s)
             for s, (n, t, k) in enumerate([(0, 30, 1), (2, 50, 2), (15, 120, 6), (4, 70, 3)])]
    feats[3]["entity_pos"][1] = []
    batch = DocRECollator(NUM_CLASS, bert_tok.pad_token_id)(feats)
    hidden, ent_att, entity_doc, hts, pair_doc, sent_pos = head_inputs(model, batch)
    perm = torch.randperm(len(hts), generator=torch.Generator().manual_seed(0))
    weights = torch.randn(len(hts), hidden.shape[-1]), torch.randn(len(hts), sent_pos.shape[1])
    results = []
    for pool, p in ((all_pairs_context, slice(None)), (DocREModel.pool_context, perm)):
        extra = (chunk,) if pool is DocREModel.pool_context else ()
        ctx, sent = pool(hidden, ent_att, entity_doc, hts[p], pair_doc[p], sent_pos, *extra)
        loss = (ctx * weights[0][p]).sum() + (sent * weights[1][p]).sum()
        grads = torch.autograd.grad(loss, [hidden, ent_att])
        results.append((ctx[torch.argsort(perm)] if p is perm else ctx,
                        sent[torch.argsort(perm)] if p is perm else sent, *grads))
    assert results[1][0].shape == (len(hts), hidden.shape[-1]) and results[1][1].dtype == torch.float32
    for old, new in zip(*results):  # gradients reach 1e4 (q's normalisation): tolerance relative to their scale
        torch.testing.assert_close(new, old, atol=1e-6 * max(1.0, old.abs().max().item()), rtol=1e-5)


def test_chunked_model_logits_equal_one_chunk_and_no_pairs_give_empty(tiny_bert_dir, bert_tok):
    feats = [make_feature(bert_tok, 0, 30, 0), make_feature(bert_tok, 12, 90, 1), make_feature(bert_tok, 5, 40, 2)]
    batch = batch_of(feats, bert_tok)
    small, large = tiny_model(tiny_bert_dir, context_chunk=5), tiny_model(tiny_bert_dir, context_chunk=10 ** 6)
    with torch.no_grad():
        torch.testing.assert_close(small(**batch), large(**batch), atol=1e-6, rtol=1e-5)
        empty = batch_of([make_feature(bert_tok, 1, 20, 3)], bert_tok)
        assert small(**empty).shape == (0, NUM_CLASS)
    with pytest.raises(ValueError, match="context_chunk"):
        tiny_model(tiny_bert_dir, context_chunk=0)


@torch.no_grad()
def test_chunked_context_on_real_documents(tiny_bert_dir):
    """Re-DocRED dev's documents with the most entities: chunked context equals the all-pairs path."""
    path = shared_file("redocred", "dev_revised.json")
    rel2id = load_rel2id(rel2id_file=str(shared_file("docred-meta", "rel2id.json")))
    docs = sorted(json.loads(path.read_text()), key=lambda d: -len(d["vertexSet"]))[:3]
    docs = [{k: d[k] for k in ("title", "sents", "vertexSet")} for d in docs]
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    feats = features_from_documents(docs, tok, DocRESettings(rel2id, max_seq_length=512))
    model = tiny_model(tiny_bert_dir, max_seq_length=512)
    batch = DocRECollator(len(rel2id), tok.pad_token_id)(list(feats))
    inputs = head_inputs(model, batch)
    old, _ = all_pairs_context(*inputs[:5])
    new, _ = DocREModel.pool_context(*inputs[:5], chunk_pairs=97)
    assert len(new) == sum(len(d["vertexSet"]) * (len(d["vertexSet"]) - 1) for d in docs) > 3000
    torch.testing.assert_close(new, old, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- caches safe to share
def build_in_child(path, cache, tokenizer, barrier, results) -> None:
    """One process of the race: wait for the other, read (build) the cache, report its folder and first ids."""
    import logging

    logging.getLogger("feature_cache").setLevel(logging.ERROR)
    barrier.wait()
    features = read_docred(path, tokenizer, SETTINGS, cache_dir=cache)
    results.put((features.cache_path, features[0]["input_ids"].tolist()))


def test_two_processes_building_the_same_cache_at_once_both_get_it(tmp_path, minilm_tokenizer):
    """Twelve rounds of two processes building one cache at the same moment: both succeed with the same
    features from the one published folder, and no temporary folder is left behind."""
    ctx = multiprocessing.get_context("fork")
    path = write_docs(tmp_path, [make_doc(), make_doc("Doc B")])
    expected = read_docred(path, minilm_tokenizer, SETTINGS)[0]["input_ids"].tolist()
    for round_ in range(12):
        cache, barrier, results = tmp_path / f"cache{round_}", ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=build_in_child, args=(path, cache, minilm_tokenizer, barrier, results))
                 for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0, 0], f"round {round_}"
        got = [results.get(timeout=5) for _ in procs]
        assert got[0] == got[1] and got[0][1] == expected
        assert [p.name for p in cache.iterdir()] == [Path(got[0][0]).name]


def test_cache_folder_mode_follows_the_umask_and_the_umask_is_left_alone(tmp_path, minilm_tokenizer):
    path = write_docs(tmp_path, [make_doc()])
    old = os.umask(0o027)
    try:
        assert utils.current_umask() == 0o027
        folder = Path(read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=tmp_path / "c").cache_path)
        assert os.umask(0o027) == 0o027  # nobody changed it
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o640 for f in folder.iterdir())


def test_a_complete_cache_in_place_is_used_not_replaced(tmp_path, minilm_tokenizer, caplog):
    path = write_docs(tmp_path, [make_doc()])
    folder = Path(read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=tmp_path / "c").cache_path)
    inode = folder.stat().st_ino
    tmp = tmp_path / "c" / ".other.tmp"
    shutil.copytree(folder, tmp)
    feature_cache.publish(tmp, folder, json.loads((folder / "meta.json").read_text())["key"])
    assert folder.stat().st_ino == inode and tmp.exists()  # the one in place kept; the caller drops its own


def test_a_killed_builds_temporary_folder_is_swept_and_a_live_one_kept(tmp_path, minilm_tokenizer):
    path = write_docs(tmp_path, [make_doc()])
    folder = Path(read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=tmp_path / "c").cache_path)
    old, live = (folder.parent / f".{folder.name}.{tag}.tmp" for tag in ("killed", "live"))
    for tmp in (old, live):
        tmp.mkdir()
        (tmp / "input_ids.bin").write_bytes(b"1234")
    hours_ago = time.time() - 2 * feature_cache.ABANDONED_SECONDS
    for f in (old / "input_ids.bin", old):
        os.utime(f, (hours_ago, hours_ago))
    shutil.rmtree(folder)  # the next read rebuilds, and sweeps first
    assert read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=tmp_path / "c").cache_path == str(folder)
    assert not old.exists() and live.exists()


def test_an_unreadable_cache_folder_is_left_alone_with_a_clear_warning(tmp_path, minilm_tokenizer, caplog,
                                                                       monkeypatch):
    """Another user's 0700 cache: one warning saying so, features cached in the per-user folder, nothing deleted
    and no 'corrupted'."""
    path = write_docs(tmp_path, [make_doc()])
    folder = Path(read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=tmp_path / "c").cache_path)
    monkeypatch.setattr(feature_cache, "unreadable", lambda f: "permission denied: another user's folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    with caplog.at_level(logging.WARNING, logger="feature_cache"):
        features = read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=tmp_path / "c")
    assert "cannot be read (permission denied: another user's folder)" in caplog.text
    assert "corrupted" not in caplog.text and folder.exists()
    assert Path(features.cache_path).parent == tmp_path / "home" / "docre"


# ----------------------------------------------------------------------------- resume that never lies
@pytest.fixture(scope="module")
def two_step_run(small_synthetic_dir, tiny_bert_dir, tmp_path_factory):
    """A finished two-step run (best.pt, last.pt, records and predictions)."""
    out = tmp_path_factory.mktemp("two-step") / "run"
    train.main(run_args(small_synthetic_dir, tiny_bert_dir, out, "--max_steps", 2))
    return out


def test_resume_without_last_pt_is_an_error_naming_the_folder(small_synthetic_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "notes-only"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(utils.UserError, match=rf"--resume: {out} has no last.pt to resume from \(it holds notes.txt\)"):
        train.main(run_args(small_synthetic_dir, tiny_bert_dir, out, "--max_steps", 1, "--resume"))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_on_an_absent_folder_is_a_fresh_start_with_every_option_and_timed_saves(
        small_synthetic_dir, tiny_bert_dir, tmp_path, monkeypatch):
    """--resume with nothing to resume applies --init_none_prior; without --save_steps, last.pt follows the clock."""
    monkeypatch.setattr(trainer_module, "SAVE_SECONDS", 0)  # "every 10 minutes" made "every step"
    saved = []
    real = trainer_module.Trainer.save_last
    monkeypatch.setattr(trainer_module.Trainer, "save_last", lambda self: (saved.append(self.state["step"]),
                                                                          real(self))[1])
    out = tmp_path / "fresh"
    train.main(run_args(small_synthetic_dir, tiny_bert_dir, out, "--max_steps", 3, "--resume", "--init_none_prior",
                        "--evaluation_steps", 100, "--test_file", ""))
    log = (out / "train.log").read_text(encoding="utf-8")
    assert "starting a fresh one" in log and "classifier bias set to the relation priors" in log
    assert saved[:2] == [1, 2] and json.loads((out / "args.json").read_text())["resume"] is False


def test_overwrite_removes_the_old_runs_checkpoints_and_records_first(two_step_run, small_synthetic_dir,
                                                                      tiny_bert_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(two_step_run, out)
    (out / "notes.txt").write_text("mine")
    (out / ".last.pt.abc12345.tmp").write_bytes(b"half a checkpoint")
    old = {"last.pt", "best.pt", "metrics.jsonl", "scores.json", "result.json", "dev_pred.json"}
    assert old <= {p.name for p in out.iterdir()}

    def crash(self, resume=None):
        raise RuntimeError("stop before training")

    monkeypatch.setattr(trainer_module.Trainer, "train", crash)
    with pytest.raises(RuntimeError, match="stop before training"):
        train.main(run_args(small_synthetic_dir, tiny_bert_dir, out, "--max_steps", 1, "--overwrite"))
    left = {p.name for p in out.iterdir()}
    assert not old & left and "notes.txt" in left and not any(n.endswith(".tmp") for n in left)


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, caplog):
    run = RunDirectory(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in run.read_metrics()] == [1, 2]
    assert "torn last line 3" in caplog.text
    run.truncate_metrics(2)
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(utils.UserError, match="metrics.jsonl: line 2 is not JSON"):
        run.read_metrics()
    for line in ("5", '{"step": "x"}'):  # JSON, but no record: once an AttributeError or TypeError on --resume
        (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n' + line + '\n{"step": 3}\n')
        with pytest.raises(utils.UserError, match="metrics.jsonl: line 2 is not a metrics record"):
            run.truncate_metrics(2)


def test_checkpoints_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b))[1])
    utils.atomic_torch_save({"w": torch.ones(2)}, tmp_path / "last.pt")
    kinds = [k for k, _ in events]
    tmp = events[kinds.index("replace")][1]
    assert ("fsync", tmp) in events[:kinds.index("replace")]


def test_sigint_during_training_saves_last_pt_and_says_how_to_resume(small_synthetic_dir, tiny_bert_dir, tmp_path,
                                                                     monkeypatch, capsys):
    """Ctrl-C at step 2: last.pt at step 2, exit status 130 and one line naming --resume, no traceback."""
    real = trainer_module.Trainer.step

    def step(self, group):
        out = real(self, group)
        if self.state["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(trainer_module.Trainer, "step", step)
    out = tmp_path / "run"
    argv = run_args(small_synthetic_dir, tiny_bert_dir, out, "--max_steps", 5, "--save_steps", 0, "--test_file", "",
                    "--evaluation_steps", 2, "--train_batch_size", 2)  # step 2: an evaluation, mid-epoch
    # Python's own handler to start from (a job a shell starts in the background has SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert utils.guarded(lambda: train.main(argv)) == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the run's handler is gone
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: training stopped by SIGINT at step 2: last.pt saved in")
    assert err[-1].endswith(f"run the same command with --resume --output_dir {out}")
    assert "Traceback" not in "\n".join(err)
    assert torch.load(out / "last.pt", weights_only=False)["state"]["step"] == 2
    monkeypatch.setattr(trainer_module.Trainer, "step", real)
    train.main(argv + ["--resume"])  # the evaluation due at step 2 is made first (it was skipped for good)
    evals = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if "dev_f1" in line]
    assert evals[:2] == [2, 4]
    capsys.readouterr()

    def ctrl_c():
        raise KeyboardInterrupt

    assert utils.guarded(ctrl_c) == 130 and capsys.readouterr().err == "error: interrupted (Ctrl-C)\n"


def test_a_reader_closing_stdout_early_ends_quietly():
    """`predict.py ... | head`: the pipe closes under the writer; one exit status, no traceback on stderr."""
    code = ("import sys, utils\n"
            "def main():\n"
            "    for _ in range(10 ** 5):\n"
            "        print('x' * 100)\n"
            "sys.exit(utils.guarded(main))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


def test_an_ignored_sigint_stays_ignored_while_training():
    """nohup and a shell's background job ignore SIGINT: training must not start catching it."""
    import types

    from engine import trainer as trainer_module

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with trainer_module.Trainer.catching_signals(types.SimpleNamespace(stop_signal=None)):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN  # still caught to save last.pt
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- the last tracebacks
DEEP = "[" * 100_000 + "]" * 100_000  # parses only with a recursion limit over 100,000


@pytest.mark.parametrize("text", [DEEP, f'[{{"title": "deep", "sents": {DEEP}}}]'], ids=["top", "document"])
def test_deeply_nested_json_documents_are_a_user_error(tmp_path, text):
    path = tmp_path / "deep.json"
    path.write_text(text)
    with pytest.raises(utils.UserError, match="nested too deeply"):
        list(json_stream.iter_documents(path, path.read_text()))
    with pytest.raises(utils.UserError, match=rf"{path}: cannot read JSON: nested too deeply"):
        utils.read_json(path)


def test_deeply_nested_jsonl_line_is_a_user_error(tmp_path):
    with pytest.raises(utils.UserError, match=r"docs.jsonl: line 3: JSON nested too deeply"):
        text2doc._jsonl_item("docs.jsonl", 3, '{"text": "a", "entities": ' + DEEP + "}")


def test_rel_info_nested_or_not_utf8_names_the_file(tmp_path):
    deep, latin = tmp_path / "rel_info.json", tmp_path / "latin.json"
    deep.write_text('{"P1": ' + DEEP + "}")
    latin.write_bytes('{"P1": "pays d\'origine é"}'.encode("latin-1"))
    with pytest.raises(utils.UserError, match=rf"the relation file {deep}: cannot read JSON: nested too deeply"):
        prepro.load_rel2id(rel_info_file=str(deep))
    with pytest.raises(utils.UserError, match=rf"the relation file {latin}: not valid UTF-8 .* at byte 23\)"):
        prepro.build_rel2id(latin)


def test_goemotions_tsv_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes("ok\t1\tid1\n".encode() + "caf\xe9\t2\tid2\n".encode("latin-1"))
    with pytest.raises(utils.UserError, match=rf"{path} line 2: not valid UTF-8 \(invalid continuation byte: "
                                              rf"byte b'\\xe9' at offset 12\)"):
        goemotions.read_tsv(path, 28)


def test_file_sha256_runs_without_hashlib_file_digest(tmp_path, monkeypatch):
    """Python 3.10 has no hashlib.file_digest."""
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(3 << 20))
    monkeypatch.delattr(hashlib, "file_digest", raising=False)
    assert json_stream.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_document_over_max_entities_is_an_error_naming_it_even_from_the_cache(tmp_path, minilm_tokenizer):
    path = write_docs(tmp_path, [make_doc("Small"), make_doc("Big")])  # 3 entities each
    cache = tmp_path / "cache"
    assert len(read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=cache, max_entities=3)) == 2
    for cached in (None, cache):
        with pytest.raises(utils.UserError, match=rf"(?s){path}.*document 0 \(title 'Small'\): field vertexSet: 3 "
                                                  rf"entities, more than --max_entities 2 \(6 entity pairs, "):
            read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=cached, max_entities=2)
    with pytest.raises(utils.UserError, match=r"document 1 \(title 'Big'\): field vertexSet: 3 entities"):
        features_from_documents([make_doc("Small"), make_doc("Big")], minilm_tokenizer, SETTINGS, max_entities=2)
    assert prepro.build_parser().parse_args(["--file", "x"]).max_entities == prepro.MAX_ENTITIES == 250

def test_every_command_takes_max_entities_0_for_no_cap_and_refuses_negatives(capsys):
    """train.py refused 0, which its help calls "no limit"; prepro.py took -1 as no limit."""
    import predict
    import train_bio
    from engine.task import parse_args

    parsers = {"prepro": lambda a: prepro.build_parser().parse_args(["--file", "x"] + a),
               "train": lambda a: parse_args(train.DocRED(), a)[0],
               "train_bio": lambda a: parse_args(train_bio.Bio(), a)[0],
               "predict": lambda a: predict.parse_args(["--model", "m", "--text", "x"] + a)}
    for name, parse in parsers.items():
        assert parse(["--max_entities", "0"]).max_entities == 0, name
        with pytest.raises(SystemExit):
            parse(["--max_entities", "-1"])
        assert "argument --max_entities: must be >= 0, got -1" in capsys.readouterr().err, name


# ----------------------------------------------------------------------------- earlier checks in text2doc
def no_spacy():
    raise AssertionError("spaCy was loaded before the input was checked")


@pytest.mark.parametrize("chunk_docs", [None, 1])
def test_jsonl_duplicate_titles_fail_before_spacy_whatever_the_chunks(tmp_path, chunk_docs):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"title": "A", "text": "one"}\n{"title": "B", "text": "two"}\n{"title": "A", "text": "three"}\n')
    with pytest.raises(text2doc.InputError, match=rf"docs.jsonl: line 3 \(title 'A'\): field title: 'A' is also "
                                                  rf"the title of {path}: line 1"):
        text2doc.input_chunks(path, no_spacy, chunk_docs)


def test_jsonl_span_text_is_checked_and_utf16_offsets_are_named(tmp_path, caplog):
    text = "Fans \U0001F600\U0001F600 love Paris."
    utf16_start = len(text[:text.index("Paris")].encode("utf-16-le")) // 2  # JavaScript's index: 2 more
    line = {"title": "emoji", "text": text, "entities": [{"type": "LOC", "mentions": [[utf16_start, utf16_start + 5,
                                                                                      "Paris"]]}]}
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(text2doc.InputError, match=r"line 1 \(title 'emoji'\): field entities\[0\].mentions\[0\]: "
                                                  r"span \[15, 20\] covers 'ris.', not the mention text 'Paris'; "
                                                  r"the offsets count UTF-16 units \(JavaScript"):
        text2doc.input_chunks(path, no_spacy, None)
    start = text.index("Paris")
    item = text2doc._jsonl_item(str(path), 1, json.dumps({**line, "entities": [
        {"type": "LOC", "mentions": [[start, start + 5, "Paris"]]}]}))
    assert item[2] == [{"type": "LOC", "mentions": [(start, start + 5)]}]
    with caplog.at_level(logging.WARNING, logger="text2doc"):
        text2doc._jsonl_item(str(path), 1, json.dumps({**line, "entities": [
            {"type": "LOC", "mentions": [[start, start + 5]]}]}))
    assert "not UTF-16 units" in caplog.text


def test_overwrite_keeps_the_load_path_it_reads_and_unknown_files(tmp_path):
    for name in ("best.pt", "last.pt", "metrics.jsonl", "dev_pred.json", "notes.txt", ".tmp.notes.tmp"):
        (tmp_path / name).write_text("x")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    run = RunDirectory(tmp_path)
    assert run.claim(resume=False, overwrite=True) is False and run.overwrite
    run.keep = tmp_path / "model"
    run.open()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp.notes.tmp", "model", "notes.txt", "train.log"]
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:  # train.log, attached by open
        root.removeHandler(handler)
        handler.close()


def test_train_py_max_entities_names_the_document(small_synthetic_dir, tiny_bert_dir, tmp_path):
    with pytest.raises(utils.UserError, match=r"(?s)dev.json.*document 0 \(title .*\): field vertexSet: \d+ entities, "
                                              r"more than --max_entities 2"):
        train.main(run_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run", "--max_entities", 2))
    assert not (tmp_path / "run").exists()


def test_fact_files_are_read_before_training(small_synthetic_dir, tiny_bert_dir, tmp_path):
    """A bad --train_distant or --ign_train_file was read at the first dev evaluation: a traceback after the
    training, which was lost (no best.pt, no last.pt)."""
    bad = tmp_path / "not-docred.json"
    bad.write_text('[{"foo": 1}]')
    for flag, path in (("--train_distant", tmp_path / "nope.json"), ("--ign_train_file", bad)):
        with pytest.raises(utils.UserError, match=rf"{flag}: .*{path.name}"):
            train.main(run_args(small_synthetic_dir, tiny_bert_dir, tmp_path / "run", flag, path))
        assert not (tmp_path / "run").exists()


def test_a_stale_cache_this_user_may_not_replace_gives_features_in_memory(tmp_path, minilm_tokenizer, caplog,
                                                                          monkeypatch):
    path = write_docs(tmp_path, [make_doc()])
    folder = Path(read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=tmp_path / "c").cache_path)
    (folder / "meta.json").unlink()  # incomplete, and (below) in a sticky folder of another user
    real = os.rename

    def rename(src, dst):
        if Path(src) == folder:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real(src, dst)

    monkeypatch.setattr(feature_cache.os, "rename", rename)
    with caplog.at_level(logging.WARNING, logger="feature_cache"):
        features = read_docred(path, minilm_tokenizer, SETTINGS, cache_dir=tmp_path / "c")
    assert features.cache_path is None and len(features) == 1 and folder.exists()
    assert "may not replace it; the features are kept in memory" in caplog.text
    assert [p.name for p in (tmp_path / "c").iterdir()] == [folder.name]


# ----------------------------------------------------------------------------- flags that mean what they say
def test_abbreviated_flags_are_errors_not_prefix_matches(capsys):
    """--num_train_epoch is not --num_train_epochs (argparse's prefix matching is off everywhere)."""
    with pytest.raises(SystemExit) as info:
        train.main(["--num_train_epoch", "2"])
    assert info.value.code == 2 and "unrecognized arguments: --num_train_epoch 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepro.build_parser().parse_args(["--fil", "x.json"])
    sources = [Path(m.__file__).read_text() for m in (evaluation, prepro, predict, engine_task, engine_runner)]
    sources += [p.read_text() for p in (Path(__file__).parents[1] / "scripts").glob("*.py")]
    assert all(s.count("ArgumentParser(") == s.count("ArgumentParser(allow_abbrev=False") for s in sources)
