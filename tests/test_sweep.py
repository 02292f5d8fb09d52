"""The seed sweep: the runner (skip finished runs, resume, report failures) and the table maker (mean ± std)."""
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.task import parse_args
import train
import utils

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import configs  # noqa: E402
import make_tables  # noqa: E402
import sweep  # noqa: E402


# ----------------------------------------------------------------------------- table maker
@pytest.fixture(scope="module")
def real_runs(synthetic_dir, tiny_bert_dir, tmp_path_factory):
    """Two real (tiny, 2-step) DocRED runs, NCRL and BCE, to copy into fake sweeps."""
    out = tmp_path_factory.mktemp("real-runs")
    common = ["--data_dir", str(synthetic_dir), "--model_name_or_path", tiny_bert_dir, "--max_steps", "2",
              "--cache_dir", "none", "--test_file", "", "--emb_size", "64", "--block_size", "16",
              "--max_seq_length", "512", "--no_progress", "--logging_steps", "1", "--seed", "61"]
    train.main([*common, "--loss", "ncrl", "--shift", "0.05", "--output_dir", str(out / "ncrl")])
    train.main([*common, "--loss", "bce", "--output_dir", str(out / "bce")])
    return out


def clone(src: Path, dst: Path, dev=None, test=None, **flags) -> Path:
    """Copy a run directory with other flags (e.g. seed) and known dev/test scores (ign_f1, f1)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.pt"))
    args = json.loads((dst / "args.json").read_text())
    (dst / "args.json").write_text(json.dumps({**args, **flags, "output_dir": str(dst)}))
    flat = {}
    for split, scores in (("dev", dev), ("test", test)):
        if scores is not None:
            ign, f1 = scores
            values = {"precision": 50.0, "recall": 50.0, "f1": f1, "ign_f1": ign}
            (dst / f"{split}_scores.json").write_text(json.dumps(values))
            flat.update({f"{split}_{k}": v for k, v in values.items()})
    (dst / "scores.json").write_text(json.dumps(flat))
    return dst


NCRL_DEV = {61: (58.10, 60.40), 62: (59.30, 61.00), 63: (57.65, 59.90)}  # seed: (dev Ign F1, dev F1)
NCRL_TEST = {61: (57.0, 59.5), 62: (58.2, 60.1)}  # seed 63 without test scores
BCE_DEV = {61: (55.0, 57.5), 62: (56.5, 58.25)}


@pytest.fixture
def sweep_dir(real_runs, tmp_path):
    d = tmp_path / "sweep"
    for seed, dev in NCRL_DEV.items():
        clone(real_runs / "ncrl", d / f"ncrl-seed{seed}", dev, NCRL_TEST.get(seed), seed=seed)
    (d / "ncrl-seed62" / "result.zip").write_bytes(b"zip")
    for seed, dev in BCE_DEV.items():
        clone(real_runs / "bce", d / f"bce-seed{seed}", dev, seed=seed)
    clone(real_runs / "ncrl", d / "ncrl-noreg-seed61", (57.0, 59.0), seed=61, margin_reg=False)
    unfinished = clone(real_runs / "ncrl", d / "ncrl-seed64", seed=64)
    (unfinished / "scores.json").unlink()
    clone(real_runs / "ncrl", d / "test-mode", (1.0, 1.0), load_path="x/best.pt", do_train=False)
    for seed, (f1, f1c) in {1: (60.0, 55.0), 2: (62.0, 56.0)}.items():
        run = d / "dialogre" / f"atl-seed{seed}"
        run.mkdir(parents=True)
        (run / "args.json").write_text(json.dumps({"task": "dialogre", "loss": "atl", "seed": seed,
                                                   "model_name_or_path": "bert-base-uncased"}))
        (run / "scores.json").write_text(json.dumps({"dev_f1": f1, "dev_f1c": f1c, "test_f1": f1 - 1,
                                                     "test_f1c": f1c - 1}))
    rescored = d / "dialogre" / "atl-seed1-test"  # dialogre.py --load_path: a score of seed 1, not a third seed
    rescored.mkdir()
    (rescored / "args.json").write_text(json.dumps({"task": "dialogre", "loss": "atl", "seed": 1, "do_train": False,
                                                    "load_path": "atl-seed1/best.pt",
                                                    "model_name_or_path": "bert-base-uncased"}))
    (rescored / "scores.json").write_text(json.dumps({"dev_f1": 99.0, "dev_f1c": 99.0}))
    run = d / "goemotions" / "ncrl-seed1"
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"task": "goemotions", "loss": "ncrl", "shift": 0.0, "seed": 1,
                                               "model_name_or_path": "x"}))
    (run / "scores.json").write_text(json.dumps({"dev_map": 50.5, "test_map": 49.0, "test_lrap": 80.0,
                                                 "test_macro_f1": 45.0, "n_comments": {"dev": 3}}))
    return d


def cell(values) -> str:
    """The expected table cell: mean ± sample std (ddof=1), computed independently with numpy."""
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def table_rows(markdown: str, first_cell: str):
    return [line for line in markdown.splitlines() if line.startswith(f"| {first_cell} |")]


def test_table_means_and_sample_stds_over_seeds(sweep_dir, tiny_bert_dir):
    report = make_tables.main([str(sweep_dir), "--latex", "--plot"])
    md = (sweep_dir / "tables.md").read_text()
    assert md == report.markdown
    encoder = Path(tiny_bert_dir).name
    rows = table_rows(md, encoder)
    ncrl = next(r for r in rows if "| NCRL (γ=0.05) |" in r)
    ign, f1 = zip(*NCRL_DEV.values())
    test_ign, test_f1 = zip(*NCRL_TEST.values())
    assert ncrl == (f"| {encoder} | annotated | NCRL (γ=0.05) | 3 | {cell(ign)} | {cell(f1)} | "
                    f"{cell(test_ign)} (n=2) | {cell(test_f1)} (n=2) | "
                    f"ncrl-seed62 (59.30, ncrl-seed62/result.zip) |")
    bce = next(r for r in rows if "| BCE |" in r)
    ign, f1 = zip(*BCE_DEV.values())
    assert bce == f"| {encoder} | annotated | BCE | 2 | {cell(ign)} | {cell(f1)} | – | – | bce-seed62 (56.50) |"
    lone = next(r for r in rows if "| NCRL -margin reg (γ=0.05) |" in r)
    assert "| 1 | 57.00 | 59.00 |" in lone  # one seed: no ±

    summary = json.loads((sweep_dir / "summary.json").read_text())
    row = next(r for r in summary["rows"] if r["loss"] == "NCRL")
    assert row["seeds"] == [61, 62, 63]
    assert row["dev_f1"]["mean"] == pytest.approx(np.mean([v[1] for v in NCRL_DEV.values()]))
    assert row["dev_f1"]["std"] == pytest.approx(np.std([v[1] for v in NCRL_DEV.values()], ddof=1))

    # ablation table: Δ of the mean dev Ign F1 against NCRL
    ablation = md.split("### Ablation")[1].split("##")[0]
    delta = np.mean([v[0] for v in BCE_DEV.values()]) - np.mean([v[0] for v in NCRL_DEV.values()])
    assert f"| {delta:+.2f} |" in next(line for line in ablation.splitlines() if line.startswith("| BCE |"))
    assert ablation.index("NCRL (γ") < ablation.index("NCRL -margin reg") < ablation.index("| BCE |")

    # other tasks, unfinished and left-out runs
    assert f"| bert-base-uncased | annotated | ATL | 2 | {cell([60, 62])} | {cell([55, 56])} |" in md
    assert "| x | annotated | NCRL -margin shift | 1 | 50.50 | 49.00 | 80.00 | 45.00 |" in md
    assert "ncrl-seed64 (NCRL (γ=0.05), seed 64): unfinished, last dev_f1" in md
    assert "test-mode: a test-mode run" in md
    assert "\\pm" in (sweep_dir / "tables.tex").read_text()
    assert (sweep_dir / "sweep_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_paper_rows_and_differing_flags(sweep_dir, tiny_bert_dir, tmp_path):
    paper = tmp_path / "paper.json"
    paper.write_text(json.dumps({"rows": [{"task": "docred", "encoder": "tiny-bert", "training": "annotated",
                                           "loss": "NCRL", "dev_ign_f1": 61.5, "dev_f1": 63.25,
                                           "cite": "NCRL (Zhou and Lee, 2022)"}]}))
    json_args = sweep_dir / "bce-seed62" / "args.json"
    json_args.write_text(json.dumps({**json.loads(json_args.read_text()), "learning_rate": 1.0}))
    md = make_tables.main([str(sweep_dir), "--paper", "--paper_file", str(paper)]).markdown
    lines = md.splitlines()
    ncrl = next(i for i, line in enumerate(lines) if "| NCRL (γ=0.05) | 3 |" in line)
    assert lines[ncrl + 1].startswith("|  |  | ↳ paper: NCRL (Zhou and Lee, 2022) |  | 61.50 | 63.25 | – | – |")
    assert sum("↳ paper" in line for line in lines) == 1  # only the matching row
    assert "BCE (" in md and "its runs differ in learning_rate" in md

    # test columns appear without labelled test runs only when a shown published row has them
    bce = [r for r in make_tables.group_runs(make_tables.collect_runs(sweep_dir)[0]) if r.config.loss == "BCE"]
    spec = make_tables.TASKS["docred"]
    assert [k for k, _ in make_tables.filled_columns(bce, spec)] == ["dev_ign_f1", "dev_f1"]
    published = [{"task": "docred", "encoder": "tiny-bert", "loss": "BCE", "test_f1": 60.0}]
    assert [k for k, _ in make_tables.filled_columns(bce, spec, published)] == ["dev_ign_f1", "dev_f1", "test_f1"]


def test_shipped_paper_file_is_well_formed():
    rows = make_tables.load_paper(make_tables.PAPER_FILE)
    data = json.loads(make_tables.PAPER_FILE.read_text())
    for row in rows:
        assert row["task"] in make_tables.TASKS and row["source"] in data["sources"]
        assert row["loss"] in make_tables.ABLATION_ORDER + ["ATL"]
    atlop = make_tables.Config("docred", "roberta-large", "annotated", "ATL")
    assert make_tables.paper_row(atlop, rows)["test_f1"] == 63.40


def test_configuration_labels():
    label = lambda **a: make_tables.loss_config(a)  # noqa: E731
    assert label(loss="ncrl", shift=0.05) == ("NCRL", "γ=0.05")
    assert label(loss="ncrl", shift=0.05, no_margin_reg=True)[0] == "NCRL -margin reg"
    assert label(loss="ncrl", shift=0.0)[0] == "NCRL -margin shift"
    assert label(loss="ncrl", shift=0.0, no_margin_reg=True)[0] == "NCRL -both"
    assert label(loss="bce", prob_shift=0.05) == ("BCE + P-shift", "m=0.05")
    assert label(loss="atl") == ("ATL", "")
    assert make_tables.setup_of({"bilinear": "atlop", "classifier_weight_decay": 0.0, "init_none_prior": False,
                                 "evidence_lambda": 0.0}) == ""
    assert make_tables.setup_of({"bilinear": "maxsym", "classifier_weight_decay": 0.01, "init_none_prior": True,
                                 "evidence_lambda": 0.1}) == "maxsym head, head wd 0.01, prior start, evidence λ=0.1"
    assert make_tables.Config("docred", "minilm", "annotated", "ATL", "", "prior start").loss_label == \
        "ATL [prior start]"
    regime = make_tables.training_regime
    assert regime({"load_path": "a/best.pt", "do_train": True}) == "+ distant"
    assert regime({"train_file": "train_distant.json"}) == "distant (stage 1)"
    assert regime({"train_file": "train_annotated.json"}) == "annotated"
    assert make_tables.encoder_name("minilm") == "minilm" and make_tables.encoder_name("/m/roberta-large/") == \
        "roberta-large"


@pytest.mark.parametrize("name", sorted(configs.CONFIGS))
def test_every_configuration_parses_as_train_py_flags(name):
    """Each configuration's flags are train.py flags with the loss options they name (ncrl-noreg once failed)."""
    argv = ["--loss", configs.loss_of(name), *configs.flags(name, shift=0.05)]
    args, _ = parse_args(train.DocRED(), argv, "")
    assert args.margin_reg == ("--no_margin_reg" not in argv)
    assert configs.name_of(vars(args)) == configs.resolve(name)


def test_missing_sweep_folder_and_bad_json_are_named(tmp_path):
    with pytest.raises(utils.UserError, match="no such sweep folder"):
        make_tables.collect_runs(tmp_path / "absent")
    with pytest.raises(utils.UserError, match="no runs in it"):
        make_tables.collect_runs(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "args.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"run/args.json: cannot read JSON"):
        make_tables.collect_runs(tmp_path)


@pytest.mark.parametrize("name,text,message", [
    ("args.json", "[]", r"args.json: expected a JSON object of flags, got list"),
    ("args.json", '{"task": "docred", "loss": "ncrl", "shift": "abc"}', r"args.json: a flag's value is not"),
    ("scores.json", "[1, 2]", r"scores.json: expected a JSON object of scores, got list"),
    ("sweep_status.json", "[1]", r"sweep_status.json: not a sweep status"),
    ("sweep_status.json", '{"x": 5}', r"sweep_status.json: not a sweep status"),
])
def test_wrong_shapes_in_a_sweep_are_one_line_errors(tmp_path, capsys, name, text, message):
    """Valid JSON of the wrong shape is named like broken JSON: make_tables.py exits 2 without a traceback."""
    run = tmp_path / "sweep" / "ncrl-seed1"
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"task": "docred", "loss": "ncrl", "shift": 0.05, "seed": 1}))
    (run / "scores.json").write_text(json.dumps({"dev_f1": 50.0, "dev_ign_f1": 49.0}))
    (run.parent / name if name == "sweep_status.json" else run / name).write_text(text)
    assert utils.guarded(lambda: make_tables.main([str(tmp_path / "sweep")])) == 2
    assert re.search(message, capsys.readouterr().err)


def test_paper_file_rows_must_be_objects(tmp_path):
    for text in ("[]", '{"rows": [5]}'):
        (tmp_path / "paper.json").write_text(text)
        with pytest.raises(utils.UserError, match="paper.json: "):
            make_tables.load_paper(tmp_path / "paper.json")


def test_damaged_metrics_null_ign_f1_and_paper_encoders(tmp_path):
    """An unfinished run's metrics.jsonl with bad bytes, a non-object line and a null score still gives its notes;
    runs without Ign F1 (no annotated training file) name their best run by dev F1; the published RoBERTa-large row
    is not xlm-roberta-large's."""
    sweep_dir = tmp_path / "sweep"
    for seed, f1 in ((1, 50.0), (2, 52.0)):
        run = sweep_dir / f"atl-seed{seed}"
        run.mkdir(parents=True)
        (run / "args.json").write_text(json.dumps({"task": "docred", "loss": "atl", "seed": seed,
                                                   "model_name_or_path": "xlm-roberta-large"}))
        (run / "scores.json").write_text(json.dumps({"dev_f1": f1, "dev_ign_f1": None}))
    cut = sweep_dir / "atl-seed3"
    cut.mkdir()
    (cut / "args.json").write_text(json.dumps({"task": "docred", "loss": "atl", "seed": 3}))
    (cut / "metrics.jsonl").write_bytes(b'\xff{"step": 1}\n5\n{"step": 2, "dev_f1": 40.0}\n{"step": 3, "dev_f1": null}\n')
    md = make_tables.main([str(sweep_dir), "--paper", "--plot"]).markdown
    assert "| xlm-roberta-large | annotated | ATL | 2 | 51.00 ± 1.41 | atl-seed2 (52.00) |" in md  # no Ign F1 column
    assert "↳ paper" not in md
    assert "atl-seed3 (ATL, seed 3): unfinished, last dev_f1 40.00 at step 2" in md
    atlop = make_tables.Config("docred", "bert-base-cased", "annotated", "ATL")
    assert make_tables.paper_row(atlop, make_tables.load_paper(make_tables.PAPER_FILE))["test_f1"] == 61.3


# ----------------------------------------------------------------------------- runner
FAKE_SCRIPT = """#!/usr/bin/env bash
# A stand-in for a run script: records its call, writes a DocRED-like run directory, fails on request.
set -euo pipefail
echo "$LOSS $SEED $*" >> "{calls}"
out=""
args=("$@")
for ((i = 0; i < ${{#args[@]}}; i++)); do [ "${{args[$i]}}" = --output_dir ] && out=${{args[$((i + 1))]}}; done
mkdir -p "$out"
echo "{{\\"task\\": \\"docred\\", \\"loss\\": \\"$LOSS\\", \\"seed\\": $SEED, \\"model_name_or_path\\": \\"fake\\", \\"shift\\": 0.05}}" > "$out/args.json"
if [ -f "{fail}" ] && [ "$LOSS-$SEED" = "$(cat "{fail}")" ]; then echo "boom: seed $SEED diverged" >&2; exit 3; fi
echo "{{\\"dev_f1\\": $SEED, \\"dev_ign_f1\\": $SEED}}" > "$out/scores.json"
"""


@pytest.fixture
def fake_script(tmp_path):
    script = tmp_path / "fake_run.sh"
    script.write_text(FAKE_SCRIPT.format(calls=tmp_path / "calls.txt", fail=tmp_path / "fail"))
    return script


def calls(tmp_path):
    path = tmp_path / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_runner_reports_a_failure_and_continues_then_skips_finished_runs(fake_script, tmp_path, capsys):
    (tmp_path / "fail").write_text("ncrl-62")
    out = tmp_path / "sweep"
    argv = [str(fake_script), "--configs", "ncrl", "bce", "--seeds", "61", "62", "--sweep_dir", str(out),
            "--", "--max_steps", "2"]
    assert sweep.main(argv) == 1
    assert len(calls(tmp_path)) == 4  # the failure did not stop the runs after it
    printed = capsys.readouterr().out
    assert "3 run, 0 skipped (finished earlier), 1 failed" in printed
    assert "FAILED ncrl-seed62 (exit status 3)" in printed and "boom: seed 62 diverged" in printed
    status = json.loads((out / "sweep_status.json").read_text())
    assert status["ncrl-seed62"]["rc"] == 3 and status["bce-seed62"]["rc"] == 0
    assert all("--max_steps 2" in c and "--output_dir" in c for c in calls(tmp_path))
    assert "ncrl-seed62: failed with exit status 3" in make_tables.build_report(out).markdown

    (tmp_path / "fail").unlink()
    assert sweep.main(argv) == 0
    assert calls(tmp_path)[4:] == [f"ncrl 62 --max_steps 2 --output_dir {out / 'ncrl-seed62'}"]  # only the failed one
    assert "0 failed" in capsys.readouterr().out
    assert len(list((out / ".attempts").iterdir())) == 1  # the failed attempt, moved aside
    md = make_tables.build_report(out).markdown
    assert "| fake | annotated | NCRL (γ=0.05) | 2 | 61.50 ± 0.71 |" in md and "failed" not in md


def test_runner_resumes_interrupted_runs_and_passes_variant_flags(fake_script, tmp_path):
    out = tmp_path / "sweep"
    (out / "ncrl-noshift-seed5").mkdir(parents=True)
    (out / "ncrl-noshift-seed5" / "last.pt").write_bytes(b"")
    sweep.run_sweep(fake_script, ["ncrl-noshift", "bce-pshift"], [5], out, ["--shift", "0.3"], pshift=0.1)
    assert calls(tmp_path) == [
        f"ncrl 5 --shift 0.3 --shift 0 --resume --output_dir {out / 'ncrl-noshift-seed5'}",
        f"bce 5 --shift 0.3 --prob_shift 0.1 --output_dir {out / 'bce-pshift-seed5'}"]


def test_sweeps_over_other_seeds_can_share_a_folder(fake_script, tmp_path):
    """A second sweep finishing while the first runs must not erase the first's status (nor the reverse)."""
    out = tmp_path / "sweep"
    script = tmp_path / "other_sweep_finishes_meanwhile.sh"  # runs seed 2's sweep inside seed 1's run
    script.write_text(f'[ "$SEED" = 1 ] && {sys.executable} {ROOT / "scripts" / "sweep.py"} {fake_script} '
                      f'--configs atl --seeds 2 --sweep_dir {out} > /dev/null\nbash {fake_script} "$@"\n')
    sweep.run_sweep(script, ["atl"], [1], out)
    status = json.loads((out / "sweep_status.json").read_text())
    assert {k: v["rc"] for k, v in status.items()} == {"atl-seed1": 0, "atl-seed2": 0}
    sweep.run_sweep(fake_script, ["atl"], [1, 2], out)
    assert sorted(calls(tmp_path)) == ["atl 1 --output_dir " + str(out / "atl-seed1"),
                                       "atl 2 --output_dir " + str(out / "atl-seed2")]  # nothing run twice


def test_two_stage_scripts_get_their_folder_through_out(tmp_path):
    script = tmp_path / "distant.sh"
    script.write_text(f'echo "$LOSS $SEED $OUT $*" >> "{tmp_path / "calls.txt"}"\n')
    sweep.run_sweep(script, ["atl"], [1], tmp_path / "sweep")
    assert calls(tmp_path) == [f"atl 1 {tmp_path / 'sweep' / 'atl-seed1'} "]


def test_which_scripts_take_their_folder_from_out(tmp_path):
    """The two-stage scripts read OUT from the environment; run_tiny.sh sets an OUT of its own from --output_dir,
    so the sweep gives it --output_dir (it once got OUT, which it overwrote: its runs left the sweep folder)."""
    shipped = {p.name: sweep.script_uses_out(p) for p in (ROOT / "scripts").glob("run_*.sh")}
    assert {name for name, uses in shipped.items() if uses} == {"run_distant.sh", "run_roberta_distant.sh",
                                                                "run_deberta_distant.sh"}
    local = tmp_path / "local.sh"
    local.write_text('# OUT=${OUT:-x} in a comment does not count\nOUT=runs/x\necho "$OUT"\n')
    read = tmp_path / "read.sh"
    read.write_text('echo "$OUT/stage1"\n')
    assert not sweep.script_uses_out(local) and sweep.script_uses_out(read)


def test_a_two_stage_run_stopped_in_its_second_stage_before_a_checkpoint_continues(tmp_path):
    """--resume reaches both stages: the finished first stage resumes (a no-op), the second, stopped before its first
    last.pt, is moved aside so that it starts over (--resume on an absent folder is a fresh start)."""
    sweep_dir = tmp_path / "sweep"
    run = sweep_dir / "atl-seed1"
    for name, files in (("stage1", ["args.json", "last.pt", "best.pt", "scores.json"]), ("stage2", ["args.json"])):
        (run / name).mkdir(parents=True)
        for f in files:
            (run / name / f).write_text("{}")
    assert sweep.prepare_run_dir(run, sweep_dir, stages=True) == ["--resume"]
    assert sorted(p.name for p in run.iterdir()) == ["stage1"]
    assert [p.name.rsplit("-", 2)[0] for p in (sweep_dir / ".attempts").iterdir()] == ["atl-seed1-stage2"]
    (run / "stage1" / "last.pt").unlink()  # no checkpoint anywhere: the whole attempt goes aside
    assert sweep.prepare_run_dir(run, sweep_dir, stages=True) == [] and not run.exists()


def test_stopping_the_sweep_stops_its_run_and_waits_for_it(tmp_path):
    """SIGTERM to the sweep reaches the run's whole process group (the script and the trainer it started); the
    sweep waits for the trainer to save and stop, exits 130, and records nothing, so the next sweep resumes."""
    trainer = tmp_path / "trainer.py"
    trainer.write_text(f"""import pathlib, signal, sys, time
def stop(signum, frame):
    time.sleep(1.0)  # saving last.pt takes a while
    pathlib.Path({str(tmp_path / "saved")!r}).write_text(signal.Signals(signum).name)
    sys.exit(130)
signal.signal(signal.SIGTERM, stop)
pathlib.Path({str(tmp_path / "started")!r}).write_text("")
time.sleep(60)
""")
    script = tmp_path / "run.sh"
    script.write_text(f'{sys.executable} {trainer}\n')
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sweep.py"), str(script), "--configs", "atl",
                             "--seeds", "1", "--sweep_dir", str(tmp_path / "sweep")], stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 30
    while not (tmp_path / "started").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and (tmp_path / "saved").read_text() == "SIGTERM"
    assert "the sweep was stopped (SIGTERM) during atl-seed1" in err and "Traceback" not in err
    assert not (tmp_path / "sweep" / "sweep_status.json").exists()


def test_plan_dry_run_and_refused_output_dir(fake_script, tmp_path, capsys):
    jobs = sweep.plan(["ablation", "ncrl", "atl"], [1, 2])
    assert [j.name for j in jobs[::2]] == [f"{c}-seed1" for c in sweep.ABLATION + ["atl"]]
    sweep.run_sweep(fake_script, ["ncrl"], [1], tmp_path / "sweep", dry_run=True)
    assert "LOSS=ncrl SEED=1" in capsys.readouterr().out and not calls(tmp_path)
    assert not (tmp_path / "sweep").exists()  # a dry run writes nothing
    with pytest.raises(utils.UserError, match="--output_dir is set by the sweep"):
        sweep.run_sweep(fake_script, ["ncrl"], [1], tmp_path / "sweep", ["--output_dir", "x"])


def test_run_seeds_sh_sweeps_and_writes_tables(fake_script, tmp_path):
    out = tmp_path / "sweep"
    env = {"PATH": "/usr/bin:/bin:" + str(Path(sys.executable).parent), "HF_HUB_OFFLINE": "1",
           "LOSSES": "atl", "SEEDS": "7 8", "SWEEP_DIR": str(out)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "run_seeds.sh"), str(fake_script)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "| fake | annotated | ATL | 2 | 7.50 ± 0.71 | 7.50 ± 0.71 |" in (out / "tables.md").read_text()
