"""The run directory: one folder per run, the same shape for every task.

    args.json  metrics.jsonl  train.log  best.pt  last.pt  scores.json  curves.png  <the task's prediction files>

Only rank 0 writes; the log is kept in memory until the folder may be written (`open`), so a run refused at start-up
leaves no trace in a folder that holds another run.
"""
from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import utils
from utils import UserError

logger = logging.getLogger(__name__)

# what --overwrite removes: the old run's checkpoints, records and predictions (other files are left alone)
OLD_RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "scores.json", "args.json", "train.log", "curves.png",
                 "result.json", "result.zip", "dev_scores.json", "test_scores.json")
OLD_RUN_FOLDERS = ("model", "encoder")
STALE_TMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # tempfile.mkstemp(prefix=".NAME.", suffix=".tmp")


class RunDirectory:
    """The files of one run: args, metrics log, checkpoints, predictions, curves."""

    def __init__(self, path: str | os.PathLike, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        self.wandb = None
        self.overwrite = False  # set by claim: the folder holds a run that --overwrite replaces
        self.keep: Optional[Path] = None  # the --load_path being used: --overwrite never removes it
        # the records logged before the folder may be written, replayed into train.log by open()
        self.early_log = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)

    def start_logging(self) -> None:
        """Log to the console (other ranks: warnings only), keeping the records until train.log is attached."""
        logging.basicConfig(level=logging.INFO if self.is_main else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                            handlers=[logging.StreamHandler(sys.stdout), self.early_log], force=True)

    def claim(self, resume: bool, overwrite: bool) -> bool:
        """Refuse a folder that holds another run (finished or not) unless resuming or overwriting; writes nothing.
        Returns whether the run resumes from last.pt (--resume on an absent or empty folder is a fresh start)."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--output_dir {self.path} is a file, not a folder: pass another --output_dir")
        for parent in self.path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise UserError(f"--output_dir {self.path}: {parent} is a file, so the folder cannot be made")
                if not os.access(parent if not self.path.exists() else self.path, os.W_OK):
                    raise UserError(f"--output_dir {self.path} is not writable: pass a folder you can write to")
                break
        if resume and overwrite:
            raise UserError(f"--resume continues the run in {self.path} and --overwrite replaces it: pass one of them")
        if resume:
            return self.claim_resume()
        held = [n for n in ("args.json", "best.pt", "last.pt") if self.file(n).exists()]
        self.overwrite = overwrite and bool(held)
        if not held or overwrite:
            return False
        state = "a finished run" if self.file("scores.json").exists() else "a run (unfinished or still running)"
        raise UserError(f"--output_dir {self.path} already holds {state} ({', '.join(held)}): pass --resume to "
                        f"continue it, --overwrite to replace it, or another --output_dir")

    def claim_resume(self) -> bool:
        """--resume: True with a last.pt; False (a fresh start, every start-up option applied) on an absent or empty
        folder; anything else is an error naming the folder, never a silent restart."""
        if self.file("last.pt").is_file():
            return True
        held = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        if not held:
            logger.info("--resume: %s has no run yet; starting a fresh one there", self.path)
            return False
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise UserError(f"--resume: {self.path} has no last.pt to resume from (it holds {shown}): pass --overwrite "
                        f"to start that run over, or another --output_dir")

    def clear_old_run(self) -> None:
        """--overwrite: remove the old run's checkpoints, records and predictions before anything new is written."""
        keep = self.keep.resolve() if self.keep else None
        for name in OLD_RUN_FILES + tuple(p.name for p in self.path.glob("*_pred*.json")):
            path = self.file(name)
            if path.is_file() and path.resolve() != keep:
                path.unlink()
        for name in OLD_RUN_FOLDERS:
            path = self.file(name)
            if path.is_dir() and not (keep and (keep == path.resolve() or path.resolve() in keep.parents)):
                shutil.rmtree(path)
        logger.info("--overwrite: removed the previous run's checkpoints, records and predictions from %s", self.path)

    def remove_stale_temporaries(self) -> None:
        """Remove the `.NAME.XXXXXXXX.tmp` files that utils.atomic_path left when a kill interrupted a write."""
        for path in self.path.glob(".*.tmp"):
            if not STALE_TMP.fullmatch(path.name):
                continue
            logger.warning("removing %s, left by an interrupted write", path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def open(self) -> None:
        """Create the folder (clearing the old run with --overwrite, and stale temporary files) and start train.log
        (with what was logged before)."""
        if not self.is_main:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if self.overwrite:
                self.clear_old_run()
            self.remove_stale_temporaries()
            self.attach_log_file()
        except OSError as e:
            raise UserError(f"--output_dir {self.path}: cannot write there ({e.strerror})") from e

    def attach_log_file(self) -> None:
        """Send the log to train.log from now on, starting with what was logged before the folder existed."""
        handler = logging.FileHandler(self.file("train.log"), encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
        for record in self.early_log.buffer:
            handler.handle(record)
        self.early_log.buffer.clear()
        root = logging.getLogger()
        root.removeHandler(self.early_log)
        root.addHandler(handler)

    def enable_wandb(self, args: argparse.Namespace) -> None:
        """Mirror metrics to Weights & Biases (imported only when --wandb is asked for)."""
        if not self.is_main:
            return
        try:
            import wandb
        except ImportError as e:
            raise UserError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from e
        self.wandb = wandb.init(project=args.wandb_project, name=args.run_name or self.path.name,
                                config=vars(args), dir=str(self.path))

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> None:
        if self.is_main:
            utils.atomic_write_json(self.file(name), obj, indent=2)

    def log_metrics(self, record: Dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (a NaN or infinite score as null: the file stays JSON)."""
        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        if self.is_main:
            with open(self.file("metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if self.wandb is not None:
                self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record.get("step"))

    def read_metrics(self) -> List[Dict[str, Any]]:
        """The records of metrics.jsonl; a torn last line (a kill or a full disk mid-write) is dropped (warned)."""
        path = self.file("metrics.jsonl")
        if not path.exists():
            return []
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                if i < len(lines) - 1:
                    raise UserError(f"{path}: line {i + 1} is not JSON ({e.msg}): fix or remove that line") from e
                logger.warning("%s: dropping its torn last line %d (%.40r...)", path, i + 1, line)
                continue
            if not isinstance(record, dict) or not isinstance(record.get("step", 0), (int, float, type(None))):
                raise UserError(f"{path}: line {i + 1} is not a metrics record (a JSON object with a numeric "
                                f"step): fix or remove that line")
            records.append(record)
        return records

    def truncate_metrics(self, max_step: int) -> None:
        """Drop log lines written after the checkpoint a resumed run starts from."""
        if self.is_main:
            kept = [r for r in self.read_metrics() if (r.get("step") or 0) <= max_step]
            utils.atomic_write_text(self.file("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in kept))

    def save(self, name: str, obj: Any) -> None:
        if self.is_main:
            utils.atomic_torch_save(obj, self.file(name))

    def plot_curves(self, metric: str) -> None:
        """curves.png: training loss and the dev metric against optimizer steps."""
        if not self.is_main:
            return
        records = self.read_metrics()
        train = [r for r in records if "loss" in r and "step" in r]
        dev = [r for r in records if isinstance(r.get(f"dev_{metric}"), (int, float))]
        if not train and not dev:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax1 = plt.subplots(figsize=(7, 4))
        ax1.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", lw=1, label="train loss")
        ax1.set_xlabel("optimizer step")
        ax1.set_ylabel("train loss", color="tab:blue")
        ax2 = ax1.twinx()
        ax2.plot([r["step"] for r in dev], [r[f"dev_{metric}"] for r in dev], "o-", color="tab:red",
                 label=f"dev {metric}")
        ax2.set_ylabel(f"dev {metric} (%)", color="tab:red")
        ax1.set_title(self.path.name, fontsize=9)
        fig.tight_layout()
        with utils.atomic_path(self.file("curves.png")) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
