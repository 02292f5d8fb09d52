"""The training and prediction machinery every task shares: `run(task, argv)` and what it is made of.

A task (train.py for DocRED, dialogre.py, goemotions.py) implements the `Task` contract below: its flags,
its model, how to read a split, how to tune its decision on dev, score and write predictions. The engine
owns everything else, once: the run directory, the loop, evaluation and best-checkpoint selection,
resume, DDP, checkpoints, length-sorted prediction and the error path of the command line.

One run, as `run` narrates it:
    flags -> run directory claimed (nothing written yet) -> encoder + tokenizer -> checkpoint (--load_path)
    -> task.build_model -> dev/test/train read and validated -> run directory written (args.json, train.log)
    -> Trainer: epochs of micro-batches, evaluate on dev (tune the Decision, score, keep best.pt)
    -> best.pt reloaded -> task.write for dev and test -> scores.json
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import logging.handlers
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

import losses
import utils
from utils import UserError

logger = logging.getLogger("docre")
STATE_VERSION = 2  # 2: the decision is a value in the checkpoint; task metadata under "meta"


# ----------------------------------------------------------------------------- the task contract
@dataclass
class Split:
    """One split of a task: model inputs, gold answers, and extra inputs predicted only for the outputs."""
    name: str
    features: Sequence[dict]
    gold: Any = None  # whatever the task's score() needs; None when the split has no labels
    aux: Dict[str, Sequence[dict]] = field(default_factory=dict)  # e.g. DialogRE's dialogue prefixes for F1c
    source: str = ""  # the file it was read from, for messages


@dataclass(frozen=True)
class Decision:
    """How logits become predictions, tuned on dev and stored in best.pt: passed as a value, never written into
    the loss. `threshold` is BCE's global threshold; `params` holds task rules such as DialogRE's (t1, t2)."""
    top_k: int = -1
    threshold: Optional[float] = None
    params: Dict[str, float] = field(default_factory=dict)

    def labels(self, loss_fn: Any, logits: torch.Tensor, threshold: Optional[float] = None) -> torch.Tensor:
        """Multi-hot predictions `[N, K+1]` of the loss's own rule under this decision."""
        t = self.threshold if threshold is None else threshold
        return loss_fn.get_label(logits, num_labels=self.top_k, **({"threshold": t} if t is not None else {}))

    def margins(self, logits: torch.Tensor) -> torch.Tensor:
        """Margins `[N, K]` of classes 1..K, positive where the rule predicts the class (before top-k):
        f_i - f_0, or f_i - logit(threshold) for a tuned threshold (BCE: sigma(f_i) > t <=> f_i > logit(t))."""
        logits = logits.float()
        if self.threshold is not None:
            return logits[:, 1:] - math.log(self.threshold / (1.0 - self.threshold))  # [N, K]
        return logits[:, 1:] - logits[:, :1]  # [N, K]

    def report(self) -> Dict[str, float]:
        """The tuned values, for score files and logs."""
        return {**({"threshold": self.threshold} if self.threshold is not None else {}), **self.params}

    def replace(self, **changes: Any) -> "Decision":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, ckpt: Dict[str, Any], top_k: int) -> "Decision":
        """The decision saved in a checkpoint; checkpoints of version 1 kept it in "threshold" and "decision"."""
        saved = ckpt.get("decision")
        if isinstance(saved, dict) and "top_k" in saved:
            return cls(top_k=saved["top_k"], threshold=saved.get("threshold"), params=dict(saved.get("params", {})))
        params = {k: float(v) for k, v in (saved or {}).items()}  # version 1: DialogRE's {"t1", "t2"}
        return cls(top_k=top_k, threshold=ckpt.get("threshold"), params=params)


def best_of(grid: Sequence[float], metric: Callable[[float], float]) -> float:
    """The value of `grid` with the highest `metric` (the first one on ties): one rule for every tuned threshold."""
    scores = [metric(v) for v in grid]
    return grid[int(np.argmax(scores))]


def logits_loss(model: nn.Module, batch: Dict[str, torch.Tensor], labels: torch.Tensor, loss_fn: Any,
                autocast: Callable[[], Any]) -> List[Tuple[torch.Tensor, int]]:
    """The model under autocast and the loss of its logits in fp32: one loss term, a mean over the rows."""
    with autocast():
        logits = model(**batch)
    return [(loss_fn(logits.float(), labels), labels.shape[0])]


class Task:
    """What a task provides to the engine (see ARCHITECTURE.md, "The Task contract").

    Decisions travel as `Decision` values; `meta()` is what a checkpoint must carry for the model to be used
    alone, and `check_meta` refuses a checkpoint of another task setup, naming both.
    """
    name = "task"  # written into args.json, checked in checkpoints
    unit = "instances"  # what one feature is, for the log
    model_settings: Tuple[str, ...] = ()  # the task's flags shaping the model: test mode takes them from the checkpoint
    args: argparse.Namespace
    flag_defaults: Dict[str, Any]  # the parser's defaults: a flag differing from its default was given explicitly

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        """The task's own flags (and defaults of the shared ones, with `parser.set_defaults`)."""

    def check_args(self, args: argparse.Namespace) -> None:
        """Refuse flags that cannot work (a missing data folder, ...) before anything is loaded."""

    def default_decision(self, args: argparse.Namespace) -> Decision:
        return Decision(top_k=args.top_k, threshold=0.5 if losses.build_loss(args.loss).tunes_threshold else None)

    def build_model(self, args: argparse.Namespace, tokenizer: Any, encoder: nn.Module,
                    meta: Optional[Dict[str, Any]]) -> nn.Module:
        """The model on `encoder`; `meta` is a loaded checkpoint's metadata (None when training from scratch)."""
        raise NotImplementedError

    def read(self, split: str) -> Optional[Split]:
        """Features and gold of "train", "dev" or "test"; None when the split is not asked for."""
        raise NotImplementedError

    def collate(self, features: Sequence[dict]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def rows(self, feature: dict) -> int:
        """Rows of logits a feature yields (DocRED: its entity pairs)."""
        return 1

    def prepare_training(self, model: nn.Module, train: Split) -> None:
        """Change a freshly built model before training starts (e.g. a prior start of the classifier)."""

    def training_loss(self, model: nn.Module, batch: Dict[str, torch.Tensor], labels: torch.Tensor, loss_fn: Any,
                      autocast: Callable[[], Any]) -> List[Tuple[torch.Tensor, int]]:
        """The loss terms of one micro-batch, each a mean and how many instances it averages over (the Trainer
        weighs each by its own count across ranks); default: the loss of the logits, a mean over the rows."""
        return logits_loss(model, batch, labels, loss_fn, autocast)

    def predict_rows(self, model: nn.Module, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """What prediction keeps per row, `[rows, C]`: the logits, or the logits and more columns."""
        return model(**batch)

    def select_metric(self) -> str:
        """The dev score that picks best.pt."""
        return self.args.select_metric

    def tune(self, logits: torch.Tensor, split: Split, loss_fn: Any, decision: Decision) -> Decision:
        """The decision tuned on dev (BCE's threshold, ...); losses without tuned parts keep `decision`."""
        return decision

    def score(self, logits: torch.Tensor, split: Split, loss_fn: Any, decision: Decision) -> Dict[str, Any]:
        """Scores (percent) of `logits` on a labelled split."""
        raise NotImplementedError

    def write(self, run: "RunDirectory", split: Split, logits: torch.Tensor, aux: Dict[str, torch.Tensor],
              loss_fn: Any, decision: Decision) -> Dict[str, Any]:
        """Write the split's prediction files; return its scores (empty when unlabelled)."""
        raise NotImplementedError

    def meta(self) -> Dict[str, Any]:
        """What a checkpoint must carry for the model to be used alone (label map, head settings, ...)."""
        return {}

    def summary(self) -> Dict[str, Any]:
        """Facts of this run for args.json (number of classes, dropped instances, ...)."""
        return {}

    def check_meta(self, meta: Dict[str, Any], path: str) -> None:
        """Refuse a checkpoint whose metadata does not fit this run."""

    def adopt_meta(self, meta: Dict[str, Any], path: str) -> None:
        """Test mode: take what the checkpoint's metadata fixes (e.g. the label map) unless a flag overrides it."""


# ----------------------------------------------------------------------------- flags
def add_training_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags shared by every task: encoder, optimisation, schedule, precision, run directory, loss."""
    g = parser.add_argument_group("training")
    g.add_argument("--model_name_or_path", default="minilm",
                   help="Hugging Face name or local folder; `minilm` is the packaged offline encoder")
    g.add_argument("--config_name", default="", help="config name or path, if not the model's")
    g.add_argument("--tokenizer_name", default="", help="tokenizer name or path, if not the model's")
    g.add_argument("--train_batch_size", type=int, default=4, help="documents per device and micro-batch")
    g.add_argument("--test_batch_size", type=int, default=8)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--learning_rate", type=float, default=5e-5, help="encoder learning rate")
    g.add_argument("--classifier_lr", type=float, default=1e-4, help="learning rate of the new layers")
    g.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay of the encoder")
    g.add_argument("--classifier_weight_decay", type=float, default=0.0,
                   help="AdamW weight decay of the new layers (the NCRL authors' DocRED runs: 0.01)")
    g.add_argument("--adam_epsilon", type=float, default=1e-6)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--warmup_ratio", type=float, default=0.06)
    g.add_argument("--num_train_epochs", type=float, default=30.0)
    g.add_argument("--max_steps", type=int, default=-1, help="stop after this many optimizer steps (smoke runs)")
    g.add_argument("--evaluation_steps", type=int, default=-1,
                   help="also evaluate every N optimizer steps (-1: only at the end of each epoch)")
    g.add_argument("--logging_steps", type=int, default=10)
    g.add_argument("--save_steps", type=int, default=0,
                   help="also write last.pt every N optimizer steps (0: at evaluations only)")
    g.add_argument("--seed", type=int, default=66)
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                   help="auto: bf16 on GPUs that support it, fp16 + GradScaler on older ones, off on CPU "
                        "(bf16 on CPU pays where it has AMX units; BENCHMARKS.md)")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--gradient_checkpointing", action="store_true", help="trade compute for encoder memory")
    g.add_argument("--mmap_threshold_mb", type=float, default=4.0,
                   help="glibc: blocks of at least this many MiB get their own mapping, freed at once, so "
                        "freed activations do not stay resident (0: malloc's own dynamic threshold)")
    g.add_argument("--length_bucketing", action="store_true",
                   help="batch documents of similar length together (same epoch content, fewer pad tokens)")
    g.add_argument("--output_dir", default=None, help="run directory (default runs/<task>-<loss>-<model>-seed<seed>-<time>)")
    g.add_argument("--overwrite", action="store_true", help="replace the run already in --output_dir")
    g.add_argument("--save_path", default="", help="also copy the best checkpoint to this file, with encoder/ beside it (ATLOP's flag)")
    g.add_argument("--load_path", default="", help="checkpoint to load: test mode, or initial weights with --do_train")
    g.add_argument("--do_train", action="store_true",
                   help="train even when --load_path is given (fine-tuning after distant pretraining)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output_dir from its last.pt")
    g.add_argument("--max_bad_steps", type=int, default=10,
                   help="abort after this many optimizer steps in a row with a non-finite loss or gradient")
    g.add_argument("--wandb", action="store_true")
    g.add_argument("--wandb_project", default="docre")
    g.add_argument("--run_name", default=None)
    g.add_argument("--no_progress", action="store_true", help="no tqdm bars (logs only)")
    g = parser.add_argument_group("loss")
    g.add_argument("--loss", default="ncrl", choices=losses.available_losses(), help="see losses.py")
    g.add_argument("--shift", type=float, default=0.0, help="NCRL margin shifting gamma")
    # two flags, not BooleanOptionalAction: that one spells the negation --no-margin_reg, against the house style
    g.add_argument("--margin_reg", action="store_true", default=True, help="NCRL margin regularization (default)")
    g.add_argument("--no_margin_reg", dest="margin_reg", action="store_false", help="NCRL without margin regularization")
    g.add_argument("--prob_shift", type=float, default=0.0, help="BCE probability shifting for negatives")
    g.add_argument("--afl_gamma_pos", type=float, default=1.0,
                   help="adaptive focal loss (KD-DocRE): focusing exponent of the positive term")
    g.add_argument("--top_k", "--num_labels", dest="top_k", type=int, default=4,
                   help="keep at most this many labels per instance (-1: all); --num_labels is ATLOP's name")
    return parser


def add_split_args(group: argparse._ArgumentGroup, data_dir: str, train: str, dev: str, test: str) -> None:
    """--data_dir and the three split files of a task (a bare name is a file of --data_dir)."""
    group.add_argument("--data_dir", default=data_dir)
    group.add_argument("--train_file", default=train)
    group.add_argument("--dev_file", default=dev)
    group.add_argument("--test_file", default=test, help="'' to skip the test set")


def add_prior_arg(group: argparse._ArgumentGroup) -> None:
    """--init_none_prior, which a task's `prepare_training` honours."""
    group.add_argument("--init_none_prior", action="store_true",
                       help="start the classifier at the training set's relation priors (bias_i = logit p_i), "
                            "so every pair starts at 'no relation' with calibrated margins")


def parse_args(task: Task, argv: Optional[Sequence[str]], description: str,
               fill_output_dir: bool = True) -> argparse.Namespace:
    """The shared flags plus the task's (their defaults kept in `task.flag_defaults`), with the default run
    directory filled in unless `fill_output_dir` is False."""
    parser = argparse.ArgumentParser(description=description)
    add_training_args(parser)
    task.add_args(parser)
    args = parser.parse_args(argv)
    task.flag_defaults = {name: parser.get_default(name) for name in vars(args)}
    if fill_output_dir:
        fill_default_output_dir(task, args)
    return args


def fill_default_output_dir(task: Task, args: argparse.Namespace) -> None:
    """--output_dir defaults to runs/<task>-<loss>-<model>-seed<seed>-<time>."""
    if args.output_dir is None:
        model = Path(args.model_name_or_path.rstrip("/")).name or "model"
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        args.output_dir = str(Path("runs") / f"{task.name}-{args.loss}-{model}-seed{args.seed}-{stamp}")


# ----------------------------------------------------------------------------- run directory
class RunDirectory:
    """The files of one run: args, metrics log, checkpoints, predictions, curves."""

    def __init__(self, path: str | os.PathLike, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        self.wandb = None
        # the records logged before the folder may be written, replayed into train.log by open()
        self.early_log = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)

    def start_logging(self) -> None:
        """Log to the console (other ranks: warnings only), keeping the records until train.log is attached."""
        logging.basicConfig(level=logging.INFO if self.is_main else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                            handlers=[logging.StreamHandler(sys.stdout), self.early_log], force=True)

    def claim(self, resume: bool, overwrite: bool) -> None:
        """Refuse a folder that holds another run (finished or not) unless resuming or overwriting; writes nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--output_dir {self.path} is a file, not a folder: pass another --output_dir")
        for parent in self.path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise UserError(f"--output_dir {self.path}: {parent} is a file, so the folder cannot be made")
                if not os.access(parent if not self.path.exists() else self.path, os.W_OK):
                    raise UserError(f"--output_dir {self.path} is not writable: pass a folder you can write to")
                break
        held = [n for n in ("args.json", "best.pt", "last.pt") if self.file(n).exists()]
        if not held or resume or overwrite:
            return
        state = "a finished run" if self.file("scores.json").exists() else "a run (unfinished or still running)"
        raise UserError(f"--output_dir {self.path} already holds {state} ({', '.join(held)}): pass --resume to "
                        f"continue it, --overwrite to replace it, or another --output_dir")

    def open(self) -> None:
        """Create the folder and start train.log (with what was logged before)."""
        if not self.is_main:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
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
        """Append one JSON line to metrics.jsonl."""
        if self.is_main:
            with open(self.file("metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if self.wandb is not None:
                self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record.get("step"))

    def read_metrics(self) -> List[Dict[str, Any]]:
        path = self.file("metrics.jsonl")
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_metrics(self, max_step: int) -> None:
        """Drop log lines written after the checkpoint a resumed run starts from."""
        if self.is_main:
            kept = [r for r in self.read_metrics() if r.get("step", 0) <= max_step]
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


# ----------------------------------------------------------------------------- optimisation
def build_optimizer(model: nn.Module, encoder: nn.Module, args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW: the encoder's parameters at --learning_rate/--weight_decay, the new layers at --classifier_lr/
    --classifier_weight_decay."""
    enc_ids = {id(p) for p in encoder.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) in enc_ids], "lr": args.learning_rate,
               "weight_decay": args.weight_decay},
              {"params": [p for p in params if id(p) not in enc_ids], "lr": args.classifier_lr,
               "weight_decay": args.classifier_weight_decay}]
    # fused: one kernel per step, no parameter-sized temporaries (the foreach default briefly needs a few)
    return torch.optim.AdamW([g for g in groups if g["params"]], eps=args.adam_epsilon, fused=True)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to each group's rate, then linear decay to 0 at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  bucketing: bool = False) -> List[List[int]]:
    """The shuffled batches of one epoch, a pure function of (seed, epoch), so resume can replay it."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not bucketing:
        return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    lengths = np.asarray(lengths)
    chunk = batch_size * 50  # sort within chunks so batches stay random across the epoch
    batches = []
    for i in range(0, len(order), chunk):
        part = order[i:i + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[j:j + batch_size].tolist() for j in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def build_loss_from_args(args: argparse.Namespace) -> losses.DocRELoss:
    """The loss chosen by --loss and its options; flags that do not apply are named in a warning."""
    name = args.loss.lower()
    options: Dict[str, Any] = {}
    if name == "ncrl":
        options = {"shift": args.shift, "margin_reg": args.margin_reg}
    elif name == "bce":
        options = {"prob_shift": args.prob_shift}
    elif name == "afl":
        options = {"gamma_pos": args.afl_gamma_pos}
    ignored = [flag for flag, used in (("--shift", args.shift and name != "ncrl"),
                                       ("--prob_shift", args.prob_shift and name != "bce"),
                                       ("--afl_gamma_pos", args.afl_gamma_pos != 1.0 and name != "afl")) if used]
    if ignored:
        logger.warning("%s do(es) not apply to --loss %s and is ignored", ", ".join(ignored), name)
    return losses.build_loss(name, **options)


# ----------------------------------------------------------------------------- distributed
def rng_states() -> Dict[str, Any]:
    """Every RNG state a run depends on."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def init_distributed(device: Optional[str] = None) -> Tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, utils.select_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), world, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def world_info() -> Tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if world_info()[1] > 1:
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a cache), then the other ranks."""
    rank, world = world_info()
    if world > 1 and rank != 0:
        barrier()
    yield
    if world > 1 and rank == 0:
        barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def oom_message(args: argparse.Namespace, batch_shape: Optional[Sequence[int]] = None) -> str:
    """What to change when the GPU runs out of memory in training on a batch of `batch_shape` (documents, tokens)."""
    batch = f" on a batch of {batch_shape[0]} documents x {batch_shape[1]} tokens" if batch_shape else ""
    return (f"CUDA out of memory{batch} at --train_batch_size {args.train_batch_size} and --max_seq_length "
            f"{getattr(args, 'max_seq_length', '?')}. Lower memory with --gradient_checkpointing, a smaller "
            f"--train_batch_size with more --gradient_accumulation_steps (same effective batch), or a "
            f"smaller --max_seq_length.")


# ----------------------------------------------------------------------------- prediction
@torch.no_grad()
def predict_logits(model: nn.Module, features: Sequence[dict], collate: Callable, rows: Callable[[dict], int],
                   batch_size: int, dtype: Optional[torch.dtype], desc: str = "predict", progress: bool = True,
                   forward: Optional[Callable[[nn.Module, Dict[str, torch.Tensor]], torch.Tensor]] = None
                   ) -> Optional[torch.Tensor]:
    """Logits of every instance of `features`, in their order, fp32 on the CPU: `[sum of rows, C]`.

    Features are batched in order of length (fewer pad tokens; order does not change a feature's logits).
    In a distributed run each rank predicts every world-th of them and rank 0 gets all logits back in order;
    the other ranks get None.
    """
    rank, world = world_info()
    device = next(model.parameters()).device
    order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
    mine = order[rank::world].tolist()
    was_training = model.training
    model.eval()
    blocks: Dict[int, torch.Tensor] = {}
    for i in tqdm(range(0, len(mine), batch_size), desc=desc, disable=not progress or rank != 0, leave=False,
                  dynamic_ncols=True):
        ids = mine[i:i + batch_size]
        docs = [features[j] for j in ids]
        batch = collate(docs)
        batch.pop("labels", None)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        try:
            with utils.autocast(device, dtype):
                logits = (forward(model, batch) if forward else model(**batch)).float().cpu()
        except torch.cuda.OutOfMemoryError as e:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory predicting a batch of {len(docs)} documents x {batch['input_ids'].shape[1]} "
                f"tokens (--test_batch_size {batch_size}). Lower memory with a smaller --test_batch_size or "
                f"--max_seq_length.") from e
        blocks.update(zip(ids, logits.split([rows(f) for f in docs])))  # one block per feature
    model.train(was_training)
    if world > 1:
        shards = [None] * world if rank == 0 else None
        dist.gather_object(blocks, shards, dst=0)
        if rank != 0:
            return None
        blocks = {j: b for shard in shards for j, b in shard.items()}
    if not blocks:
        return torch.zeros(0, 0)
    return torch.cat([blocks[j] for j in range(len(features))])


# ----------------------------------------------------------------------------- the loop
class Trainer:
    """Runs the optimisation loop; the task supplies the model, loss, data and an evaluate function.

    `evaluate(model) -> (scores, decision)` scores dev (percent, including `metric`) with the decision tuned
    there; the decision of the best evaluation is stored in best.pt.
    """

    def __init__(self, args: argparse.Namespace, model: nn.Module, encoder: nn.Module, loss_fn: Any,
                 train_features: Sequence[dict], collate: Callable,
                 evaluate: Optional[Callable[[nn.Module], Tuple[Dict[str, Any], Decision]]],
                 run: Optional[RunDirectory], metric: str, checkpoint_meta: Dict[str, Any],
                 training_loss: Optional[Callable] = None):
        self.args, self.loss_fn, self.features = args, loss_fn, train_features
        self.training_loss = training_loss or logits_loss
        self.collate, self.evaluate, self.run, self.metric = collate, evaluate, run, metric
        self.meta = checkpoint_meta
        self.decision: Optional[Decision] = None
        self.device = next(model.parameters()).device
        self.dtype = utils.amp_dtype(self.device, args.amp)
        utils.set_mmap_threshold(args.mmap_threshold_mb)  # both lower the training peak (BENCHMARKS.md)
        utils.cap_onednn_cache()
        self.rank, self.world = world_info()
        self.module = model  # unwrapped: checkpoints and evaluation
        self.model = model if self.world == 1 else nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.lengths = [len(f["input_ids"]) for f in train_features]
        self.global_batch = args.train_batch_size * self.world
        self.batches_per_epoch = math.ceil(len(train_features) / self.global_batch)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / args.gradient_accumulation_steps)
        total = int(math.ceil(self.steps_per_epoch * args.num_train_epochs))
        self.total_steps = min(total, args.max_steps) if args.max_steps > 0 else total
        self.optimizer = build_optimizer(model, encoder, args)
        self.scheduler = linear_schedule(self.optimizer, int(args.warmup_ratio * self.total_steps), self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_score": -1.0, "best_step": -1,
                      "bad_steps": 0, "skipped_steps": 0, "last_eval_step": -1}

    # -- checkpoints
    def checkpoint(self, full: bool) -> Dict[str, Any]:
        ckpt = {"version": STATE_VERSION, "model": self.module.state_dict(), "args": vars(self.args),
                "meta": self.meta, "decision": self.decision.to_dict() if self.decision else None,
                "state": dict(self.state)}
        if full:
            ckpt.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                        scaler=self.scaler.state_dict(), rng=self.gather(rng_states()))
        return ckpt

    def gather(self, obj: Any) -> List[Any]:
        """`obj` of every rank, in rank order (on rank 0; other ranks get their own only)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out if self.rank == 0 else [obj]

    def resume_from(self, path: Path) -> None:
        """Restore everything saved in last.pt."""
        ckpt = load_checkpoint(str(path), self.device)
        self.module.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.decision = Decision.from_checkpoint(ckpt, self.args.top_k) if ckpt.get("decision") else None
        self.state.update(ckpt["state"])
        rng = ckpt["rng"]
        set_rng_states(rng[self.rank] if len(rng) == self.world else rng[0])
        self.run.truncate_metrics(self.state["step"])
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.state["step"],
                    self.state["epoch"], self.state["batch_in_epoch"])

    # -- one optimizer step
    def micro_step(self, docs: List[int], n_micro: int, sync: bool) -> float:
        """Forward and backward this rank's share of one global micro-batch; returns the batch's loss.

        The loss is the mean over the instances of the whole global micro-batch (all ranks), so a run on
        N processes takes the same steps as one process with an N times larger batch.
        """
        local = docs[self.rank * self.args.train_batch_size:(self.rank + 1) * self.args.train_batch_size]
        batch = self.collate([self.features[i] for i in (local or docs[:1])])  # an empty share still syncs
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        labels = batch.pop("labels")
        context = self.model.no_sync() if self.world > 1 and not sync else contextlib.nullcontext()
        try:
            with context:
                autocast = lambda: utils.autocast(self.device, self.dtype)  # noqa: E731
                terms = self.training_loss(self.model, batch, labels, self.loss_fn, autocast)
                loss = sum(term * w for (term, _), w in zip(terms, self.term_weights([n for _, n in terms], local)))
                self.scaler.scale(loss / n_micro).backward()
        except torch.cuda.OutOfMemoryError as e:
            raise torch.cuda.OutOfMemoryError(oom_message(self.args, tuple(batch["input_ids"].shape))) from e
        loss = loss.detach() / self.world
        if self.world > 1:
            dist.all_reduce(loss)
        return loss.item()

    def term_weights(self, counts: List[int], local: List[int]) -> torch.Tensor:
        """Weights that turn each rank's mean into its share of the mean over the whole global micro-batch."""
        n_local = torch.tensor([float(n) if local else 0.0 for n in counts], device=self.device)  # [terms]
        n_global = n_local.clone()
        if self.world > 1:
            dist.all_reduce(n_global)
        return n_local * self.world / n_global.clamp(min=1)

    def step(self, group: List[List[int]]) -> Dict[str, float]:
        """One optimizer step over `group`, its global micro-batches (lists of document indices)."""
        return self.optimizer_step([self.micro_step(b, len(group), sync=j == len(group) - 1)
                                    for j, b in enumerate(group)])

    def optimizer_step(self, losses: List[float]) -> Dict[str, float]:
        """Clip, step, schedule; skip the step when the loss or gradient is not finite."""
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm).item()
        loss = float(np.mean(losses))
        finite = math.isfinite(loss) and (math.isfinite(grad_norm) or self.scaler.is_enabled())
        if finite:
            self.scaler.step(self.optimizer)
            self.state["bad_steps"] = 0
        else:
            self.state["bad_steps"] += 1
            self.state["skipped_steps"] += 1
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["step"] += 1
        return {"loss": loss, "grad_norm": grad_norm, "skipped": not finite}

    # -- evaluation and checkpoints
    def evaluate_and_save(self) -> Optional[Dict[str, Any]]:
        """Evaluate on dev (every rank predicts its shard; rank 0 scores), keep the best, save last.pt."""
        self.module.eval()
        scores, decision = self.evaluate(self.module)
        self.module.train()
        self.state["last_eval_step"] = self.state["step"]
        if self.rank != 0:
            self.save_last()  # joins the gathering of RNG states
            barrier()
            return None
        score = scores[self.metric]
        if score > self.state["best_score"]:
            self.state["best_score"], self.state["best_step"] = score, self.state["step"]
            self.decision = decision
            self.run.save("best.pt", self.checkpoint(full=False))
        record = {"step": self.state["step"], "epoch": self.state["epoch"],
                  **{f"dev_{k}": v for k, v in scores.items() if isinstance(v, (int, float)) or v is None}}
        self.run.log_metrics(record)
        logger.info("step %d epoch %d | dev %s | best %s %.2f at step %d", self.state["step"], self.state["epoch"],
                    fmt_scores(scores), self.metric, self.state["best_score"], self.state["best_step"])
        self.save_last()
        self.run.plot_curves(self.metric)
        barrier()
        return scores

    def save_last(self) -> None:
        ckpt = self.checkpoint(full=True)  # every rank: it gathers the RNG states
        self.run.save("last.pt", ckpt)

    # -- the loop
    def train(self) -> Dict[str, Any]:
        """Train until the epochs or --max_steps run out; returns the final state."""
        args, state = self.args, self.state
        resume = self.run.file("last.pt")
        if args.resume and resume.exists():
            self.resume_from(resume)
        self.model.train()
        n_epochs = math.ceil(args.num_train_epochs)
        bar = tqdm(total=self.total_steps, initial=state["step"], desc="train", dynamic_ncols=True,
                   disable=args.no_progress or self.rank != 0)
        window: List[float] = []
        while state["epoch"] < n_epochs and state["step"] < self.total_steps:
            batches = epoch_batches(self.lengths, self.global_batch, args.seed, state["epoch"],
                                    args.length_bucketing)
            while state["batch_in_epoch"] < len(batches) and state["step"] < self.total_steps:
                start = state["batch_in_epoch"]
                group = batches[start:start + args.gradient_accumulation_steps]
                out = self.step(group)
                state["batch_in_epoch"] += len(group)
                window.append(out["loss"])
                bar.update(1)
                bar.set_postfix(loss=f"{out['loss']:.4f}", epoch=state["epoch"])
                self.after_step(out, window)
            if state["batch_in_epoch"] >= len(batches):
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
                self.evaluate_and_save()
        bar.close()
        if state.get("last_eval_step") != state["step"]:
            self.evaluate_and_save()
        return state

    def after_step(self, out: Dict[str, float], window: List[float]) -> None:
        """Log, evaluate and save on their schedules."""
        args, state = self.args, self.state
        step = state["step"]
        if out["skipped"] or step % args.logging_steps == 0 or step == self.total_steps:
            self.run.log_metrics({"step": step, "epoch": state["epoch"] + state["batch_in_epoch"] /
                                  max(1, self.batches_per_epoch), "loss": float(np.mean(window)),
                                  "lr": self.scheduler.get_last_lr()[0], "grad_norm": out["grad_norm"],
                                  "skipped_steps": state["skipped_steps"]})
            window.clear()
        if state["bad_steps"] >= args.max_bad_steps:  # after logging, so metrics.jsonl shows every skipped step
            raise FloatingPointError(
                f"{state['bad_steps']} optimizer steps in a row had a non-finite loss or gradient "
                f"(last loss {out['loss']}, grad norm {out['grad_norm']}); try a lower --learning_rate or --amp off")
        if state["batch_in_epoch"] >= self.batches_per_epoch:
            return  # the epoch's last step: train() evaluates and saves at the epoch end, once
        if args.evaluation_steps > 0 and step % args.evaluation_steps == 0:
            self.evaluate_and_save()
        elif args.save_steps > 0 and step % args.save_steps == 0:
            self.save_last()


def fmt_scores(scores: Dict[str, Any]) -> str:
    """`f1 61.20 ign_f1 60.05 ...`: the float scores of a dict, for the log (None shown as n/a)."""
    return " ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in scores.items()
                    if isinstance(v, float) or (v is None and not k.startswith("_")))


# ----------------------------------------------------------------------------- encoder and checkpoints
def load_encoder_and_tokenizer(args: argparse.Namespace) -> Tuple[Any, nn.Module]:
    """The tokenizer and encoder of --model_name_or_path, with a clear error when neither folder nor hub works."""
    from transformers import AutoConfig, AutoTokenizer

    from model import load_encoder, use_checkpointed_sdpa, use_mask_dropout

    path = utils.resolve_model_path(args.model_name_or_path)
    if os.path.isdir(path) and not args.config_name and not os.path.exists(os.path.join(path, "config.json")):
        raise UserError(f"--model_name_or_path {args.model_name_or_path!r} is a folder without a model (no "
                        f"config.json in it): point it at a folder written by save_pretrained, or use "
                        f"--model_name_or_path minilm for the packaged offline encoder.")
    try:
        config = AutoConfig.from_pretrained(utils.resolve_model_path(args.config_name) if args.config_name else path)
        tokenizer = AutoTokenizer.from_pretrained(
            utils.resolve_model_path(args.tokenizer_name) if args.tokenizer_name else path)
        encoder = load_encoder(path, config=config)
        use_checkpointed_sdpa(encoder)
        use_mask_dropout(encoder)
    except OSError as e:
        raise UserError(
            f"--model_name_or_path {args.model_name_or_path!r} is neither a local folder nor reachable on the "
            f"model hub (offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Use "
            f"--model_name_or_path minilm for the packaged offline encoder, or download the model first. ({e})")
    if args.gradient_checkpointing:
        encoder.gradient_checkpointing_enable()
    return tokenizer, encoder


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu",
                    what: str = "--load_path") -> Dict[str, Any]:
    """A checkpoint written by this toolkit, with an error naming the file when it is missing or damaged."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path}: no such file" + (" (it is a folder: pass its best.pt)"
                                                          if os.path.isdir(path) else ""))
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise UserError(f"{what} {path} is not a readable checkpoint (truncated or another format?): "
                        f"{type(e).__name__}: {str(e)[:200]}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{what} {path} is not a checkpoint of this toolkit (no model weights in it)")
    return ckpt


def check_checkpoint(ckpt: Dict[str, Any], path: str, args: argparse.Namespace, task: Task) -> None:
    """Refuse a checkpoint of another task or encoder, naming both; the task checks its own metadata."""
    saved = ckpt.get("args", {})
    saved_task = saved.get("task", task.name)
    if saved_task != task.name:
        raise UserError(f"--load_path {path} is a {saved_task} checkpoint, not one of {task.name}")
    saved_model = saved.get("model_name_or_path")
    if saved_model is not None and utils.resolve_model_path(saved_model) != utils.resolve_model_path(
            args.model_name_or_path):
        raise UserError(f"--load_path {path} was trained with encoder {saved_model!r}, but this run uses "
                        f"--model_name_or_path {args.model_name_or_path!r}; pass the same encoder.")
    task.check_meta(checkpoint_meta(ckpt), path)


def checkpoint_meta(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """The task metadata of a checkpoint; version 1 kept it at the top level."""
    return ckpt.get("meta") or {k: ckpt[k] for k in ("rel2id", "rid2col", "label_names") if k in ckpt}


# ----------------------------------------------------------------------------- the model folder
# A trained model is one folder: the run directory, or one exported by `save_pretrained`. What loading needs:
#   best.pt    weights, args, the task's meta() and the decision (an exported one: no optimizer or RNG states)
#   encoder/   the encoder's config.json and the tokenizer files (no encoder weights: they are in best.pt)
# Runs from before model folders have no encoder/: their encoder is rebuilt from args' model_name_or_path.
BEST, ENCODER_DIR = "best.pt", "encoder"
MODEL_KEYS = ("version", "model", "args", "meta", "decision")  # what an exported best.pt keeps


@dataclass
class Pretrained:
    """A trained model loaded from its folder, in eval mode: the model, its tokenizer, the checkpoint without
    weights (args, meta, decision) and where it came from."""
    model: nn.Module
    tokenizer: Any
    checkpoint: Dict[str, Any]
    path: Path  # the best.pt read

    @property
    def args(self) -> argparse.Namespace:
        return argparse.Namespace(**self.checkpoint.get("args", {}))

    @property
    def meta(self) -> Dict[str, Any]:
        return checkpoint_meta(self.checkpoint)

    def decision(self) -> Decision:
        return Decision.from_checkpoint(self.checkpoint, self.checkpoint.get("args", {}).get("top_k", -1))

    def save(self, folder: str | os.PathLike) -> Path:
        """Export this model as a folder that `load_pretrained` reads (see `save_pretrained`)."""
        return save_pretrained(folder, {**self.checkpoint, "model": self.model.state_dict()}, self.tokenizer,
                               self.model.encoder.config)


def model_files(path: str | os.PathLike, what: str = "--load_path") -> Tuple[Path, Path]:
    """(best.pt, model folder) of a run directory, an exported model folder or a best.pt file."""
    path = Path(path)
    if path.is_dir():
        if not (path / BEST).is_file():
            raise UserError(f"{what} {path} is not a model folder: it has no {BEST} (a run directory or a folder "
                            f"exported with save_pretrained has one; is the run still before its first evaluation?)")
        return path / BEST, path
    if not path.exists():
        raise UserError(f"{what} {path}: no such file or folder")
    return path, path.parent


def write_encoder_folder(folder: str | os.PathLike, tokenizer: Any, config: Any) -> None:
    """encoder/: the encoder's config.json and the tokenizer files, all a model folder needs besides best.pt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def copy_best(ckpt: Dict[str, Any], path: Path, tokenizer: Any, config: Any) -> None:
    """--save_path: a copy of best.pt, with the encoder/ folder beside it so that the copy loads on its own."""
    utils.atomic_torch_save(ckpt, path)
    folder = path.parent / ENCODER_DIR
    if (folder / "config.json").is_file() and json.loads((folder / "config.json").read_text()) != json.loads(
            config.to_json_string()):
        logger.warning("--save_path %s: %s already holds another encoder's files, left as they are; load the copy "
                       "from the run directory's encoder/ instead", path, folder)
        return
    write_encoder_folder(folder, tokenizer, config)


def save_pretrained(folder: str | os.PathLike, ckpt: Dict[str, Any], tokenizer: Any, config: Any) -> Path:
    """Export a model folder: best.pt (weights, args, meta, decision) and encoder/ (config, tokenizer)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"cannot export a model to {folder}: it is a file")
    write_encoder_folder(folder / ENCODER_DIR, tokenizer, config)
    utils.atomic_torch_save({k: ckpt[k] for k in MODEL_KEYS if k in ckpt}, folder / BEST)
    return folder


def checkpoint_encoder(ckpt: Dict[str, Any], folder: Path, best: Path) -> Tuple[Any, nn.Module]:
    """(tokenizer, untrained encoder) of a model folder: from its encoder/, else (runs from before model folders)
    from the config and tokenizer of the checkpoint's --model_name_or_path, with an error saying what is missing."""
    from transformers import AutoConfig, AutoTokenizer

    source = folder / ENCODER_DIR
    if not (source / "config.json").is_file():
        name = ckpt.get("args", {}).get("model_name_or_path")
        if name is None:
            raise UserError(f"{best} has no {ENCODER_DIR}/ folder beside it and names no encoder in its args: "
                            f"it cannot be rebuilt")
        source = utils.resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise UserError(f"{best} has no {ENCODER_DIR}/ folder beside it (a run from before model folders), and "
                        f"its encoder {source!r} (--model_name_or_path of its args) is not available here "
                        f"(offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): put the encoder's "
                        f"config.json and tokenizer files into {folder / ENCODER_DIR}. ({str(e)[:200]})") from e
    from model import load_encoder

    return tokenizer, load_encoder(None, config=config)


def build_pretrained(ckpt: Dict[str, Any], best: Path, build: Callable[[Dict[str, Any], Any, nn.Module], nn.Module],
                     device: torch.device | str = "cpu") -> Pretrained:
    """`build(meta, tokenizer, encoder)` on the folder's encoder, with the checkpoint's weights, on `device`."""
    tokenizer, encoder = checkpoint_encoder(ckpt, best.parent, best)
    model = build(checkpoint_meta(ckpt), tokenizer, encoder)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{best}: its weights do not fit the model its settings describe (a checkpoint of "
                        f"another version of the head?): {str(e)[:400]}") from e
    model.to(device).eval()
    return Pretrained(model, tokenizer, {k: v for k, v in ckpt.items() if k != "model"}, best)


def load_pretrained(path: str | os.PathLike, build: Callable[[Dict[str, Any], Any, nn.Module], nn.Module],
                    device: torch.device | str = "cpu", what: str = "--model") -> Pretrained:
    """The trained model of a run directory, exported model folder or best.pt: nothing else and no network needed.

    `build(meta, tokenizer, encoder)` makes the task's model on the untrained encoder (the engine knows no task).
    """
    best, _ = model_files(path, what)
    return build_pretrained(load_checkpoint(best, "cpu", what), best, build, device)


ENGINE_SETTINGS = ("model_name_or_path", "loss", "shift", "margin_reg", "prob_shift", "top_k")


def adopt_settings(args: argparse.Namespace, ckpt: Dict[str, Any], task: Task, path: str) -> List[str]:
    """Test mode: the model's settings (encoder, loss and rule, the task's `model_settings`) from the checkpoint's
    args; a flag given explicitly (not at its default) with another value is an error naming both. Returns the
    adopted `name=value`s that differ from this run's defaults, for the log."""
    saved, adopted = ckpt.get("args", {}), []
    for name in ENGINE_SETTINGS + tuple(task.model_settings):
        if name not in saved:
            continue  # an older checkpoint without it: keep the flag
        value, default = getattr(args, name), task.flag_defaults.get(name)
        if value != default and name == "model_name_or_path":
            continue  # check_checkpoint names both encoders
        if value != default and value != saved[name]:
            raise UserError(f"--load_path {path} was trained with --{name} {saved[name]!r}, but this run passes "
                            f"--{name} {value!r}: drop the flag (test mode takes it from the checkpoint)")
        setattr(args, name, saved[name])
        if saved[name] != default:
            adopted.append(f"{name}={saved[name]}")
    return adopted


# ----------------------------------------------------------------------------- the driver
def start_run(args: argparse.Namespace, task: Task) -> Tuple[RunDirectory, int, int, torch.device]:
    """Join the process group (under torchrun), claim the run directory (writing nothing), start logging, seed."""
    rank, world, device = init_distributed(args.device)
    if world > 1:
        args.output_dir = broadcast_object(args.output_dir)  # one run directory, named by rank 0
    run = RunDirectory(args.output_dir, is_main=rank == 0)
    run.start_logging()
    if run.is_main:
        run.claim(args.resume, args.overwrite)
    utils.set_seed(args.seed)
    return run, rank, world, device


def run(task: Task, argv: Optional[Sequence[str]] = None, description: str = "") -> Dict[str, Any]:
    """Train (unless only --load_path is given), then predict and score dev and test; returns the scores.

    Every input is read and validated before the run directory is written, so a failing run never touches
    the files of another.
    """
    args = parse_args(task, argv, description, fill_output_dir=False)
    task.args = args
    task.check_args(args)
    do_train = args.do_train or not args.load_path
    ckpt, adopted = None, []
    if args.load_path:
        best, _ = model_files(args.load_path)
        ckpt = load_checkpoint(best)
        if not do_train:  # test mode: the model's settings and metadata come from the checkpoint
            adopted = adopt_settings(args, ckpt, task, str(best))
            task.adopt_meta(checkpoint_meta(ckpt), str(best))
        check_checkpoint(ckpt, str(best), args, task)
    fill_default_output_dir(task, args)
    run_dir, rank, world, device = start_run(args, task)
    loss_fn = build_loss_from_args(args)
    if do_train:
        tokenizer, encoder = load_encoder_and_tokenizer(args)
        model = task.build_model(args, tokenizer, encoder, checkpoint_meta(ckpt) if ckpt else None)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
        model.to(device)
        decision = task.default_decision(args)
    else:
        model = build_pretrained(ckpt, best, lambda meta, tok, enc: task.build_model(args, tok, enc, meta),
                                 device).model
        decision = Decision.from_checkpoint(ckpt, args.top_k)
    splits = {name: task.read(name) for name in (["dev", "test"] + (["train"] if do_train else []))}
    if do_train and splits["dev"] is None:
        raise UserError("training needs --dev_file for evaluation and checkpoint selection")
    if do_train and not len(splits["train"].features):
        raise UserError(f"--train_file {splits['train'].source}: no documents to train on")

    run_dir.open()
    if args.wandb:
        run_dir.enable_wandb(args)
    if ckpt is not None:
        logger.info("loaded weights from %s%s", best, f" (test mode; from the checkpoint: {', '.join(adopted)})"
                    if adopted else "")
    run_dir.write_json("args.json", {**vars(args), "task": task.name, "device": str(device), "world_size": world,
                                     "effective_batch_size": args.train_batch_size * world *
                                     args.gradient_accumulation_steps, **task.summary()})
    dtype = utils.amp_dtype(device, args.amp)
    predict = lambda feats, desc: predict_logits(model, feats, task.collate, task.rows,  # noqa: E731
                                                 args.test_batch_size, dtype, desc, not args.no_progress,
                                                 forward=task.predict_rows)
    if do_train:
        decision = train_and_restore_best(task, args, model, encoder, tokenizer, loss_fn, splits, run_dir, predict,
                                          decision)
    return write_outputs(task, run_dir, splits, predict, loss_fn, decision, world)


def train_and_restore_best(task: Task, args: argparse.Namespace, model: nn.Module, encoder: nn.Module, tokenizer: Any,
                           loss_fn: Any, splits: Dict[str, Optional[Split]], run_dir: RunDirectory,
                           predict: Callable, decision: Decision) -> Decision:
    """Run the training loop, then load best.pt into `model`; returns its decision.

    encoder/ is written before the loop, so the run directory is a model folder from its first best.pt on.
    """
    dev, train_split = splits["dev"], splits["train"]

    def evaluate(m: nn.Module) -> Tuple[Dict[str, Any], Decision]:
        logits = predict(dev.features, "dev")
        if logits is None:  # not rank 0: rank 0 scores
            return {}, decision
        tuned = task.tune(logits, dev, loss_fn, decision)
        return {**task.score(logits, dev, loss_fn, tuned), **tuned.report()}, tuned

    metric = task.select_metric()
    if not args.load_path and not args.resume:
        task.prepare_training(model, train_split)
    trainer = Trainer(args, model, encoder, loss_fn, train_split.features, task.collate, evaluate, run_dir,
                      metric, task.meta(), task.training_loss)
    _, world = world_info()
    logger.info("%s: training on %d %s, %d optimizer steps, effective batch %d (%d x %d processes x %d "
                "accumulation), loss %s, amp %s, device %s, best checkpoint by dev %s", task.name,
                len(train_split.features), task.unit, trainer.total_steps, trainer.global_batch *
                args.gradient_accumulation_steps, args.train_batch_size, world, args.gradient_accumulation_steps,
                loss_fn, trainer.dtype, trainer.device, metric)
    if trainer.dtype is None and trainer.device.type == "cpu" and args.amp == "auto" and utils.cpu_multiplies_bf16():
        logger.info("this CPU has bf16 matrix units (AMX): --amp bf16 trains and predicts faster (BENCHMARKS.md); "
                    "fp32 stays the default")
    if run_dir.is_main:
        write_encoder_folder(run_dir.file(ENCODER_DIR), tokenizer, encoder.config)
    start = time.time()
    trainer.train()
    logger.info("training took %.1f s", time.time() - start)
    barrier()
    best = load_checkpoint(str(run_dir.file("best.pt")), trainer.device)
    model.load_state_dict(best["model"])
    if args.save_path and run_dir.is_main:
        copy_best(best, Path(args.save_path), tokenizer, encoder.config)
    run_dir.plot_curves(metric)
    return Decision.from_checkpoint(best, args.top_k)


def write_outputs(task: Task, run_dir: RunDirectory, splits: Dict[str, Optional[Split]], predict: Callable,
                  loss_fn: Any, decision: Decision, world: int) -> Dict[str, Any]:
    """Predict dev and test with the final model; the task writes its files; scores.json holds every score."""
    scores: Dict[str, Any] = {}
    for name in ("dev", "test"):
        split = splits.get(name)
        if split is None:
            continue
        logits = predict(split.features, name)
        aux = {k: predict(v, f"{name} {k}") for k, v in split.aux.items()}
        if logits is None:  # not rank 0
            continue
        out = task.write(run_dir, split, logits, aux, loss_fn, decision)
        scores.update({f"{name}_{k}": v for k, v in out.items()})
        if out:
            logger.info("%s: %s", name, fmt_scores(out))
    scores.update(decision.report(), **task.summary())
    run_dir.write_json("scores.json", scores)
    if run_dir.is_main:
        logger.info("run directory %s: %s", run_dir.path, " ".join(sorted(p.name for p in run_dir.path.iterdir()
                                                                          if not p.name.startswith("."))))
    barrier()
    if world > 1:
        dist.destroy_process_group()
    return scores
