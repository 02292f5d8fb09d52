"""The task contract and the flags every task shares.

A task (train.py for DocRED, dialogre.py, goemotions.py) is one data set, head and metric. `engine.runner.run`
drives it through this lifecycle, each hook once where it says so:

    Task.add_args(parser)                    its flags, before any arguments exist
    task.setup(args, mode, tokenizer, meta)  once: the arguments, the mode ("train", "test" or "predict"), the
                                             tokenizer and the metadata of a loaded checkpoint (None without one):
                                             test mode takes what the checkpoint fixes, every mode refuses one
                                             that does not fit
    task.build_model(encoder)                the model on the encoder, nothing else
    task.read(split) -> Split                "dev", "test", then "train": features and gold (None: not asked for)
    task.collate(features), task.rows(f)     a batch of features; how many output rows a feature yields
    task.training_loss(model, batch, ...)    the loss terms of one micro-batch (training)
    task.clip_groups(model)                  parameter groups whose gradients are clipped each on its own
    task.outputs(model, batch)               what prediction keeps per row: {"logits": ..., "evidence": ...}
    task.tune(outputs, dev, loss_fn, d)      the Decision tuned on dev (each evaluation)
    task.tune_with_model(model, dev, ...)    decisions that need the model run again on dev, with their scores
                                             (the end-to-end mention threshold; default none)
    task.score(outputs, split, loss_fn, d)   scores in percent of a labelled split
    task.write(run, split, outputs, ...)     the split's prediction files (after training), returns its scores
    task.meta(), task.summary()              what a checkpoint carries for the model to be used alone; facts of
                                             the run for args.json and scores.json

Everything else (the loop, evaluation schedule, best checkpoint, resume, DDP, the prior start, the run directory)
is the engine's. Decisions are `losses.Decision` values, tuned on dev and stored with the model.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import losses
import utils
from losses import Decision

MODES = ("train", "test", "predict")  # train (from scratch or --load_path --do_train); test: --load_path alone


@dataclass
class Split:
    """One split of a task: model inputs, gold answers, and extra inputs predicted only for the outputs."""
    name: str
    features: Sequence[dict]
    gold: Any = None  # whatever the task's score() needs; None when the split has no labels
    aux: Dict[str, Sequence[dict]] = field(default_factory=dict)  # e.g. DialogRE's dialogue prefixes for F1c
    source: str = ""  # the file it was read from, for messages


@dataclass
class Outputs:
    """What prediction returns for a split, one row per output instance in feature order (fp32, on the CPU)."""
    logits: torch.Tensor  # [rows, C]
    evidence: Optional[torch.Tensor] = None  # [rows, S_max] DocRED's sentence attention of each pair, when on
    aux: Dict[str, "Outputs"] = field(default_factory=dict)  # the same for the split's extra inputs


def logits_loss(model: nn.Module, batch: Dict[str, torch.Tensor], labels: torch.Tensor, loss_fn: Any,
                autocast: Callable[[], Any]) -> List[Tuple[torch.Tensor, int]]:
    """The model under autocast and the loss of its logits in fp32: one loss term, a mean over the rows."""
    with autocast():
        logits = model(**batch)
    return [(loss_fn(logits.float(), labels), labels.shape[0])]


def logits_forward(model: nn.Module, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The default outputs of a batch: the model's logits."""
    return {"logits": model(**batch)}


class Task:
    """What a task provides to the engine; the module docstring gives the order of the calls."""
    name = "task"  # written into args.json, checked in checkpoints
    unit = "instances"  # what one feature is, for the log
    model_settings: Tuple[str, ...] = ()  # the task's flags shaping the model: test mode takes them from the checkpoint
    loss_settings: Tuple[str, ...] = ()  # the task's flags shaping its loss: a resumed run must keep them
    decision_params: Dict[str, float] = {}  # the task's own decision rule before tuning (DialogRE's t1, t2)
    args: argparse.Namespace
    mode: str
    tokenizer: Any
    metric: str  # the dev score that picks best.pt

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        """The task's own flags (and defaults of the shared ones, with `parser.set_defaults`)."""

    def setup(self, args: argparse.Namespace, mode: str, tokenizer: Any, meta: Optional[Dict[str, Any]] = None,
              source: str = "") -> None:
        """Take the arguments, the mode and the tokenizer; refuse flags that cannot work, and a checkpoint (`meta`,
        read from `source`) that does not fit. Tasks extend it (calling this first)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.args, self.mode, self.tokenizer = args, mode, tokenizer
        self.metric = getattr(args, "select_metric", "f1")

    def build_model(self, encoder: nn.Module) -> nn.Module:
        """The task's model on `encoder`."""
        raise NotImplementedError

    def read(self, split: str) -> Optional[Split]:
        """Features and gold of "train", "dev" or "test"; None when the split is not asked for."""
        raise NotImplementedError

    def collate(self, features: Sequence[dict]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def rows(self, feature: dict) -> int:
        """Rows of outputs a feature yields (DocRED: its entity pairs)."""
        return 1

    def training_loss(self, model: nn.Module, batch: Dict[str, torch.Tensor], labels: torch.Tensor, loss_fn: Any,
                      autocast: Callable[[], Any]) -> List[Tuple[torch.Tensor, int]]:
        """The loss terms of one micro-batch, each a mean and how many instances it averages over (the Trainer
        weighs each by its own count across ranks); default: the loss of the logits, a mean over the rows."""
        return logits_loss(model, batch, labels, loss_fn, autocast)

    def clip_groups(self, model: nn.Module) -> List[List[nn.Parameter]]:
        """Parameter groups clipped to --max_grad_norm each on its own; default: one, every parameter."""
        return [list(model.parameters())]

    def outputs(self, model: nn.Module, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """What prediction keeps of one batch, by the names of `Outputs`' fields: `[rows, ...]` each."""
        return logits_forward(model, batch)

    def tune(self, outputs: Outputs, split: Split, loss_fn: Any, decision: Decision) -> Decision:
        """The decision tuned on dev: BCE's global threshold by the dev metric; other losses keep `decision`."""
        if not loss_fn.tunes_threshold:
            return decision
        return losses.tune_threshold(decision, lambda d: self.score(outputs, split, loss_fn, d)[self.metric])

    def tune_with_model(self, model: nn.Module, split: Split, loss_fn: Any,
                        decision: Decision) -> Tuple[Decision, Dict[str, Any]]:
        """Decisions tuned by running `model` again on dev, and the dev scores they give; default: none."""
        return decision, {}

    def score(self, outputs: Outputs, split: Split, loss_fn: Any, decision: Decision) -> Dict[str, Any]:
        """Scores (percent) of `outputs` on a labelled split."""
        raise NotImplementedError

    def write(self, run: Any, split: Split, outputs: Outputs, loss_fn: Any, decision: Decision) -> Dict[str, Any]:
        """Write the split's prediction files into the run directory; return its scores (empty when unlabelled)."""
        raise NotImplementedError

    def meta(self) -> Dict[str, Any]:
        """What a checkpoint must carry for the model to be used alone (label map, head settings, ...)."""
        return {}

    def summary(self) -> Dict[str, Any]:
        """Facts of this run for args.json and scores.json (number of classes, dropped instances, ...)."""
        return {}


def default_decision(task: Task, args: argparse.Namespace, loss_fn: Any) -> Decision:
    """The decision before any tuning: --top_k, BCE's threshold at 0.5, the task's own rule parameters."""
    return Decision(top_k=args.top_k, threshold=0.5 if loss_fn.tunes_threshold else None,
                    params=dict(task.decision_params))


# ----------------------------------------------------------------------------- flags
def add_training_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags shared by every task: encoder, optimisation, schedule, precision, run directory, loss."""
    g = parser.add_argument_group("training")
    g.add_argument("--model_name_or_path", default="minilm",
                   help="Hugging Face name or local folder; `minilm` is the packaged offline encoder")
    g.add_argument("--config_name", default="", help="config name or path, if not the model's")
    g.add_argument("--tokenizer_name", default="", help="tokenizer name or path, if not the model's")
    g.add_argument("--train_batch_size", type=utils.COUNT, default=4, help="documents per device and micro-batch")
    g.add_argument("--test_batch_size", type=utils.COUNT, default=8)
    g.add_argument("--gradient_accumulation_steps", type=utils.COUNT, default=1)
    g.add_argument("--learning_rate", type=utils.NON_NEGATIVE, default=5e-5, help="encoder learning rate")
    g.add_argument("--classifier_lr", type=utils.NON_NEGATIVE, default=1e-4, help="learning rate of the new layers")
    g.add_argument("--weight_decay", type=utils.NON_NEGATIVE, default=0.0, help="AdamW weight decay of the encoder")
    g.add_argument("--classifier_weight_decay", type=utils.NON_NEGATIVE, default=0.0,
                   help="AdamW weight decay of the new layers (the NCRL authors' DocRED runs: 0.01)")
    g.add_argument("--adam_epsilon", type=utils.POSITIVE, default=1e-6)
    g.add_argument("--max_grad_norm", type=utils.POSITIVE, default=1.0)
    g.add_argument("--warmup_ratio", type=utils.FRACTION, default=0.06)
    g.add_argument("--num_train_epochs", type=utils.POSITIVE, default=30.0)
    g.add_argument("--max_steps", type=utils.number_flag(int, 1, off=-1, off_means="no limit"), default=-1,
                   help="stop after this many optimizer steps (smoke runs)")
    g.add_argument("--evaluation_steps", type=utils.number_flag(int, 1, off=-1, off_means="at epoch ends only"),
                   default=-1,
                   help="also evaluate every N optimizer steps (-1: only at the end of each epoch)")
    g.add_argument("--logging_steps", type=utils.COUNT, default=10)
    g.add_argument("--save_steps", type=utils.COUNT_OR_ZERO, default=None,
                   help="also write last.pt every N optimizer steps (default: about every 10 minutes of training; "
                        "0: at evaluations only); SIGINT/SIGTERM write it at the next step and stop")
    g.add_argument("--seed", type=int, default=66)
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                   help="auto: bf16 on GPUs that support it, fp16 + GradScaler on older ones, off on CPU "
                        "(bf16 on CPU pays where it has AMX units; BENCHMARKS.md)")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--gradient_checkpointing", action="store_true", help="trade compute for encoder memory")
    g.add_argument("--mmap_threshold_mb", type=utils.NON_NEGATIVE, default=4.0,
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
    g.add_argument("--trust_checkpoint", action="store_true",
                   help="allow loading an old pickle checkpoint (it can run code: only files you trust)")
    g.add_argument("--max_bad_steps", type=utils.COUNT, default=10,
                   help="abort after this many optimizer steps in a row with a non-finite loss or gradient")
    g.add_argument("--wandb", action="store_true")
    g.add_argument("--wandb_project", default="docre")
    g.add_argument("--run_name", default=None)
    g.add_argument("--no_progress", action="store_true", help="no tqdm bars (logs only)")
    g = parser.add_argument_group("loss")
    g.add_argument("--loss", default="ncrl", choices=losses.available_losses(), help="see losses.py")
    g.add_argument("--shift", type=utils.BELOW_ONE, default=0.0, help="NCRL margin shifting gamma")
    # two flags, not BooleanOptionalAction: that one spells the negation --no-margin_reg, against the house style
    g.add_argument("--margin_reg", action="store_true", default=True, help="NCRL margin regularization (default)")
    g.add_argument("--no_margin_reg", dest="margin_reg", action="store_false", help="NCRL without margin regularization")
    g.add_argument("--prob_shift", type=utils.BELOW_ONE, default=0.0,
                   help="BCE probability shifting for negatives")
    g.add_argument("--afl_gamma_pos", type=utils.NON_NEGATIVE, default=1.0,
                   help="adaptive focal loss (KD-DocRE): focusing exponent of the positive term")
    g.add_argument("--init_none_prior", action="store_true",
                   help="start the classifier at the training set's relation priors (bias_i = logit p_i), "
                        "so every instance starts at 'no relation' with calibrated margins")
    g.add_argument("--top_k", "--num_labels", dest="top_k", type=utils.number_flag(int, 1, off=-1, off_means="all"),
                   default=4,
                   help="keep at most this many labels per instance (-1: all); --num_labels is ATLOP's name")
    return parser


def add_split_args(group: argparse._ArgumentGroup, data_dir: str, train: str, dev: str, test: str) -> None:
    """--data_dir and the three split files of a task (a bare name is a file of --data_dir)."""
    group.add_argument("--data_dir", default=data_dir)
    group.add_argument("--train_file", default=train)
    group.add_argument("--dev_file", default=dev)
    group.add_argument("--test_file", default=test, help="'' to skip the test set")


def parse_args(task: Task, argv: Optional[Sequence[str]], description: str = ""
               ) -> Tuple[argparse.Namespace, Dict[str, Any]]:
    """The shared flags plus the task's, and the parser's defaults (a flag differing from its default was given)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, description=description)
    add_training_args(parser)
    task.add_args(parser)
    args = parser.parse_args(argv)
    return args, {name: parser.get_default(name) for name in vars(args)}


def default_output_dir(task: Task, args: argparse.Namespace) -> str:
    """runs/<task>-<loss>-<model>-seed<seed>-<time>, the run directory when --output_dir is not given."""
    model = Path(args.model_name_or_path.rstrip("/")).name or "model"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{task.name}-{args.loss}-{model}-seed{args.seed}-{stamp}")


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
        logging.getLogger(__name__).warning("%s do(es) not apply to --loss %s and is ignored", ", ".join(ignored), name)
    return losses.build_loss(name, **options)
