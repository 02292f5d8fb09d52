"""Run a grid of configurations x seeds with one of the run scripts, one run directory each.

    python scripts/sweep.py scripts/run_roberta.sh --configs bce atl ncrl --seeds 61 62 63 64 65 \
        --sweep_dir runs/sweep-roberta -- --num_train_epochs 8

Runs one after another (each may use every GPU of the machine through the script's NPROC). A run whose
exit status 0 is recorded in SWEEP_DIR/sweep_status.json is skipped, so running the same command again
continues an interrupted sweep; an unfinished run with a last.pt continues with --resume. A failed run does
not stop the others: failures are listed at the end (exit status 1) with their logs in SWEEP_DIR/logs/.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import utils  # noqa: E402
from configs import ABLATION, CONFIGS, flags, loss_of, resolve  # noqa: E402

DEFAULT_SEEDS = [61, 62, 63, 64, 65]


@dataclass
class Job:
    """One run: a configuration and a seed."""
    name: str
    loss: str
    seed: int
    flags: List[str] = field(default_factory=list)


def expand_configs(names: Sequence[str], pshift: float) -> List[tuple]:
    """(name, LOSS, flags) of each configuration (scripts/configs.py); `ablation` stands for Table 4's six rows,
    any other name is passed to the script as LOSS."""
    out, seen = [], set()
    for name in names:
        for n in (ABLATION if name == "ablation" else [resolve(name)]):
            if n not in seen:
                seen.add(n)
                out.append((n, loss_of(n), flags(n, None, pshift)))
    return out


def plan(configs: Sequence[str], seeds: Sequence[int], pshift: float = 0.05) -> List[Job]:
    """Every (configuration, seed) run, seeds innermost."""
    return [Job(f"{name}-seed{seed}", loss, seed, flags)
            for name, loss, flags in expand_configs(configs, pshift) for seed in seeds]


def script_uses_out(script: Path) -> bool:
    """Two-stage scripts (run_*_distant.sh) take their folder from the environment's OUT (`OUT=${OUT:-...}`);
    --output_dir would reach both stages. A script that sets OUT itself (run_tiny.sh: from its --output_dir) does
    not; one that reads $OUT without setting it does. A wrapper counts as two-stage when a script it runs from the
    same folder is."""
    text = "\n".join(line for line in script.read_text(encoding="utf-8").splitlines()
                     if not line.lstrip().startswith("#"))
    if re.search(r"\$\{OUT:?[-=]", text):  # OUT from the environment, with a default
        return True
    if re.search(r"\$\{?OUT\b", text) and not re.search(r"^\s*(export\s+)?OUT=", text, re.M):
        return True
    called = {script.parent / m for m in re.findall(r"(run_\w+\.sh)", text)} - {script}
    return any(s.is_file() and script_uses_out(s) for s in called)


def read_status(sweep_dir: Path) -> Dict[str, dict]:
    """SWEEP_DIR/sweep_status.json: {run name: {rc, seconds, log, command, finished_at}} ({} before the first run)."""
    path = sweep_dir / "sweep_status.json"
    if not path.exists():
        return {}
    try:
        status = utils.read_json(path)
    except ValueError as e:
        raise utils.UserError(f"{e}; fix or delete the sweep status file")
    if not isinstance(status, dict) or not all(isinstance(v, dict) for v in status.values()):
        raise utils.UserError(f"{path}: not a sweep status (an object of run name -> {{\"rc\": ..., ...}}); fix or "
                              f"delete the sweep status file")
    return status


def is_finished(status: Dict[str, dict], sweep_dir: Path, job: Job) -> bool:
    return status.get(job.name, {}).get("rc") == 0 and (sweep_dir / job.name).is_dir()


def move_aside(path: Path, sweep_dir: Path, name: str) -> None:
    """Move an attempt without a checkpoint to SWEEP_DIR/.attempts/<name>-<time> (nothing is deleted)."""
    aside = sweep_dir / ".attempts" / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    aside.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(aside))


def prepare_run_dir(run_dir: Path, sweep_dir: Path, stages: bool = False) -> List[str]:
    """--resume for an interrupted run with a checkpoint; an earlier attempt without one is moved aside. With
    `stages` (a two-stage script, whose --resume reaches both stage folders) each stage folder is judged on its own:
    a stage stopped before its first last.pt is moved aside and starts over, the finished one resumes (a no-op)."""
    if not run_dir.exists():
        return []
    if stages:
        for stage in sorted(p for p in run_dir.iterdir() if p.is_dir()):
            if not (stage / "last.pt").exists():
                move_aside(stage, sweep_dir, f"{run_dir.name}-{stage.name}")
    if any(run_dir.rglob("last.pt")):
        return ["--resume"]
    move_aside(run_dir, sweep_dir, run_dir.name)
    return []


def command(job: Job, script: Path, run_dir: Path, extra: Sequence[str], uses_out: bool,
            resume: Sequence[str]) -> tuple:
    """The command line and environment of one run."""
    env = {**os.environ, "LOSS": job.loss, "SEED": str(job.seed), "PYTHONUNBUFFERED": "1"}
    flags = [*extra, *job.flags, *resume]
    if uses_out:
        env["OUT"] = str(run_dir)
    else:
        flags += ["--output_dir", str(run_dir)]
    return ["bash", str(script), *flags], env


def run_logged(cmd: Sequence[str], env: Dict[str, str], log: Path) -> int:
    """Run one job (its own process group) with its output appended to `log`; its exit status. SIGINT, SIGTERM and
    SIGHUP to the sweep reach the whole job (the script and its train.py, which saves last.pt and stops); the sweep
    waits until every process of the job is gone, then stops with utils.Interrupted: never two trainings in one
    folder, and the next sweep resumes the job."""
    received: List[int] = []
    with open(log, "a", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

        def forward(signum: int, frame: object) -> None:
            received.append(signum)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            rc = proc.wait()
            while received and group_alive(proc.pid):  # train.py may outlive the script it was started by
                time.sleep(0.2)
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
    if received:
        raise utils.Interrupted(f"the sweep was stopped ({signal.Signals(received[0]).name}) during {log.stem}, "
                                f"which saved its last.pt if it had started training; run the same command again "
                                f"to continue")
    return rc


def group_alive(pgid: int) -> bool:
    """Whether any process of process group `pgid` is still running."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def tail(path: Path, n: int = 5) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])


def run_sweep(script: str | Path, configs: Sequence[str], seeds: Sequence[int], sweep_dir: str | Path,
              extra: Sequence[str] = (), pshift: float = 0.05, dry_run: bool = False) -> Dict[str, List[str]]:
    """Run every job not finished yet; returns the names of the runs done, skipped and failed."""
    script, sweep_dir = Path(script).resolve(), Path(sweep_dir).resolve()  # the scripts cd to the repository
    if not script.is_file():
        raise utils.UserError(f"{script}: no such run script")
    if any(a == "--output_dir" or a.startswith("--output_dir=") for a in extra):
        raise utils.UserError("--output_dir is set by the sweep (SWEEP_DIR/<config>-seed<seed>); do not pass it")
    jobs = plan(configs, seeds, pshift)
    uses_out = script_uses_out(script)
    status = read_status(sweep_dir)
    if not dry_run:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        utils.atomic_write_json(sweep_dir / "sweep.json", {"script": str(script), "configs": list(configs),
                                                            "seeds": list(seeds), "extra": list(extra),
                                                            "pshift": pshift}, indent=2)
    result: Dict[str, List[str]] = {"done": [], "skipped": [], "failed": []}
    for i, job in enumerate(jobs, 1):
        run_dir = sweep_dir / job.name
        prefix = f"[{i}/{len(jobs)}] {job.name}"
        if is_finished(status, sweep_dir, job):
            print(f"{prefix}: finished earlier, skipped", flush=True)
            result["skipped"].append(job.name)
            continue
        resume = [] if dry_run else prepare_run_dir(run_dir, sweep_dir, stages=uses_out)
        cmd, env = command(job, script, run_dir, extra, uses_out, resume)
        shown = " ".join(cmd) + (f"  (OUT={run_dir})" if uses_out else "")
        if dry_run:
            print(f"{prefix}: LOSS={job.loss} SEED={job.seed} {shown}", flush=True)
            continue
        log = sweep_dir / "logs" / f"{job.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"{prefix}: running{' (resume)' if resume else ''}, log {log}", flush=True)
        start = time.time()
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ LOSS={job.loss} SEED={job.seed} {shown}\n")
        rc = run_logged(cmd, env, log)
        seconds = round(time.time() - start, 1)
        # re-read first: another sweep over other seeds may share this folder and have finished runs since
        status = {**read_status(sweep_dir), job.name: {
            "rc": rc, "seconds": seconds, "log": str(log), "command": shown,
            "finished_at": datetime.now().isoformat(timespec="seconds")}}
        utils.atomic_write_json(sweep_dir / "sweep_status.json", status, indent=2)
        result["done" if rc == 0 else "failed"].append(job.name)
        print(f"{prefix}: {'ok' if rc == 0 else f'FAILED (exit status {rc})'} in {seconds:.0f} s", flush=True)
    report(result, status, sweep_dir)
    return result


def report(result: Dict[str, List[str]], status: Dict[str, dict], sweep_dir: Path) -> None:
    print(f"\nsweep {sweep_dir}: {len(result['done'])} run, {len(result['skipped'])} skipped (finished earlier), "
          f"{len(result['failed'])} failed", flush=True)
    for name in result["failed"]:
        s = status[name]
        print(f"  FAILED {name} (exit status {s['rc']}), log {s['log']}:\n{tail(Path(s['log']))}", flush=True)
    if result["failed"]:
        print("Run the same command again to retry the failed runs (finished ones are skipped).", flush=True)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0],
                                     epilog="Arguments after -- go to every run (e.g. --num_train_epochs 2).")
    parser.add_argument("script", help="run script, e.g. scripts/run_roberta.sh")
    parser.add_argument("--configs", "--losses", nargs="+", default=["ncrl"],
                        help=f"configurations: {', '.join(CONFIGS)}, `ablation` (the six rows of Table 4) "
                             "or any --loss name")
    parser.add_argument("--seeds", nargs="+", type=int, default=DEFAULT_SEEDS)
    parser.add_argument("--sweep_dir", default=None, help="default runs/sweep-<time>")
    parser.add_argument("--pshift", type=float, default=0.05, help="--prob_shift of the bce-pshift configuration")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    args.extra = extra
    if args.sweep_dir is None:
        args.sweep_dir = str(Path("runs") / f"sweep-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    result = run_sweep(args.script, args.configs, args.seeds, args.sweep_dir, args.extra, args.pshift, args.dry_run)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    utils.cli(lambda: sys.exit(main()))
