"""Train, evaluate and predict with a document-level RE model (ATLOP head) and BCE, ATL or NCRL.

The generic pieces (flags, optimizer, schedule, the loop, checkpoints, the run directory) are
importable so that the other tasks of the paper (dialogre.py, goemotions.py) reuse them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

import utils

logger = logging.getLogger("docre")
STATE_VERSION = 1


# ----------------------------------------------------------------------------- flags
def add_training_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags shared by every task: optimisation, schedule, precision, run directory."""
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
                   help="auto: bf16 on GPUs that support it, fp16 + GradScaler on older ones, off on CPU")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument("--length_bucketing", action="store_true",
                   help="batch documents of similar length together (same epoch content, fewer pad tokens)")
    g.add_argument("--num_workers", type=int, default=0)
    g.add_argument("--output_dir", default=None, help="run directory (default runs/<loss>-<model>-seed<seed>-<time>)")
    g.add_argument("--save_path", default="", help="also copy the best checkpoint here (ATLOP's flag)")
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
    g.add_argument("--loss", default="ncrl", help="bce, atl, ncrl (see losses.py for more)")
    g.add_argument("--shift", type=float, default=0.0, help="NCRL margin shifting gamma")
    g.add_argument("--no_margin_reg", action="store_true", help="NCRL without margin regularization")
    g.add_argument("--prob_shift", type=float, default=0.0, help="BCE probability shifting for negatives")
    g.add_argument("--num_labels", type=int, default=4, help="keep at most this many labels per instance (-1: all)")
    return parser


def add_docred_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of the DocRED task (the ATLOP/NCRL scripts' flags keep their meaning)."""
    g = parser.add_argument_group("docred")
    g.add_argument("--data_dir", default="./dataset/docred")
    g.add_argument("--transformer_type", default=None, help="accepted for script compatibility; inferred")
    g.add_argument("--train_file", default="train_annotated.json")
    g.add_argument("--dev_file", default="dev.json")
    g.add_argument("--test_file", default="test.json", help="'' to skip test predictions")
    g.add_argument("--rel_info", default=None, help="rel_info.json (default <data_dir>/rel_info.json)")
    g.add_argument("--rel2id", default=None, help="label map JSON (default: built from rel_info.json)")
    g.add_argument("--num_class", type=int, default=None, help="checked against the label map (97 on DocRED)")
    g.add_argument("--max_seq_length", type=int, default=1024)
    g.add_argument("--no_entity_marker", action="store_true", help="do not put * around mentions")
    g.add_argument("--emb_size", type=int, default=768)
    g.add_argument("--block_size", type=int, default=64)
    g.add_argument("--select_metric", default="ign_f1", choices=["f1", "ign_f1"])
    g.add_argument("--train_distant", default=None, help="distant file for the Ign F1 (distant) score")
    g.add_argument("--cache_dir", default=None, help="feature cache (default <data_dir>/.cache; 'none' to disable)")
    return parser


def default_output_dir(args: argparse.Namespace) -> str:
    """runs/<loss>-<model>-seed<seed>-<timestamp>."""
    model = Path(args.model_name_or_path.rstrip("/")).name or "model"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{args.loss}-{model}-seed{args.seed}-{stamp}")


# ----------------------------------------------------------------------------- run directory
class RunDirectory:
    """The files of one run: args, metrics log, checkpoints, predictions, curves."""

    def __init__(self, path: str | os.PathLike, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        self.wandb = None
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    def enable_wandb(self, args: argparse.Namespace) -> None:
        """Mirror metrics to Weights & Biases (imported only when --wandb is asked for)."""
        if not self.is_main:
            return
        try:
            import wandb
        except ImportError as e:
            raise SystemExit("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from e
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
        dev = [r for r in records if f"dev_{metric}" in r]
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


def setup_logging(run: Optional[RunDirectory]) -> None:
    """Log to the console and, on the main process, to <run>/train.log; other ranks log warnings only."""
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if run is not None and run.is_main:
        handlers.append(logging.FileHandler(run.file("train.log"), encoding="utf-8"))
    logging.basicConfig(level=logging.INFO if run is None or run.is_main else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", handlers=handlers, force=True)


# ----------------------------------------------------------------------------- optimisation
def build_optimizer(model: nn.Module, args: argparse.Namespace, encoder_prefix: str = "encoder.") -> torch.optim.AdamW:
    """AdamW with the encoder at --learning_rate and the new layers at --classifier_lr."""
    encoder, head = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (encoder if name.startswith(encoder_prefix) else head).append(p)
    groups = [{"params": encoder, "lr": args.learning_rate}, {"params": head, "lr": args.classifier_lr}]
    # fused: one kernel per step, no parameter-sized temporaries (the foreach default briefly needs a few)
    return torch.optim.AdamW([g for g in groups if g["params"]], eps=args.adam_epsilon, weight_decay=0.0,
                             fused=True)


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


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def oom_message(args: argparse.Namespace, batch_shape: Optional[Sequence[int]] = None) -> str:
    """What to change when the GPU runs out of memory in training on a batch of `batch_shape` (documents, tokens)."""
    batch = f" on a batch of {batch_shape[0]} documents x {batch_shape[1]} tokens" if batch_shape else ""
    return (f"CUDA out of memory{batch} at --train_batch_size {args.train_batch_size} and --max_seq_length "
            f"{getattr(args, 'max_seq_length', '?')}. Lower memory with --gradient_checkpointing, a smaller "
            f"--train_batch_size with more --gradient_accumulation_steps (same effective batch), or a "
            f"smaller --max_seq_length.")


# ----------------------------------------------------------------------------- the loop
class Trainer:
    """Runs the optimisation loop; the task supplies the model, loss, data and an evaluate function.

    `evaluate(model) -> dict` returns dev scores (percent) including `args.select_metric`; it may set
    `loss_fn.threshold` (BCE), which is stored with the best checkpoint.
    """

    def __init__(self, args: argparse.Namespace, model: nn.Module, loss_fn: Any, train_features: Sequence[dict],
                 collate: Callable, evaluate: Callable[[nn.Module], Dict[str, float]], run: RunDirectory,
                 extra_state: Optional[Dict[str, Any]] = None, lengths: Optional[Sequence[int]] = None):
        self.args, self.loss_fn, self.features = args, loss_fn, train_features
        self.collate, self.evaluate, self.run = collate, evaluate, run
        self.extra_state = extra_state or {}
        self.device = next(model.parameters()).device
        self.dtype = utils.amp_dtype(self.device, args.amp)
        self.rank, self.world = world_info()
        self.module = model  # unwrapped: checkpoints and evaluation
        self.model = model if self.world == 1 else nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.lengths = lengths if lengths is not None else [len(f["input_ids"]) for f in train_features]
        self.global_batch = args.train_batch_size * self.world
        self.batches_per_epoch = math.ceil(len(train_features) / self.global_batch)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / args.gradient_accumulation_steps)
        total = int(math.ceil(self.steps_per_epoch * args.num_train_epochs))
        self.total_steps = min(total, args.max_steps) if args.max_steps > 0 else total
        self.optimizer = build_optimizer(model, args)
        self.scheduler = linear_schedule(self.optimizer, int(args.warmup_ratio * self.total_steps), self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_score": -1.0, "best_step": -1,
                      "bad_steps": 0, "skipped_steps": 0, "last_eval_step": -1}

    # -- checkpoints
    def checkpoint(self, full: bool) -> Dict[str, Any]:
        ckpt = {"version": STATE_VERSION, "model": self.module.state_dict(), "args": vars(self.args),
                "threshold": getattr(self.loss_fn, "threshold", None), "state": dict(self.state),
                **self.extra_state}
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
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        self.module.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("threshold") is not None:
            self.loss_fn.threshold = ckpt["threshold"]
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
        n_local = torch.tensor(float(labels.shape[0] if local else 0), device=self.device)
        n_global = n_local.clone()
        if self.world > 1:
            dist.all_reduce(n_global)
        weight = n_local * self.world / n_global.clamp(min=1)
        context = self.model.no_sync() if self.world > 1 and not sync else contextlib.nullcontext()
        try:
            with context:
                with utils.autocast(self.device, self.dtype):
                    logits = self.model(**batch)
                loss = self.loss_fn(logits.float(), labels) * weight
                self.scaler.scale(loss / n_micro).backward()
        except torch.cuda.OutOfMemoryError as e:
            raise torch.cuda.OutOfMemoryError(oom_message(self.args, tuple(batch["input_ids"].shape))) from e
        loss = loss.detach() / self.world
        if self.world > 1:
            dist.all_reduce(loss)
        return loss.item()

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
    def evaluate_and_save(self) -> Optional[Dict[str, float]]:
        """Evaluate on dev (every rank predicts its shard; rank 0 scores), keep the best, save last.pt."""
        self.module.eval()
        scores = self.evaluate(self.module)
        self.module.train()
        self.state["last_eval_step"] = self.state["step"]
        if self.rank != 0:
            self.save_last()  # joins the gathering of RNG states
            barrier()
            return None
        metric = self.args.select_metric
        score = scores[metric]
        improved = score > self.state["best_score"]
        if improved:
            self.state["best_score"], self.state["best_step"] = score, self.state["step"]
            self.run.save("best.pt", self.checkpoint(full=False))
        record = {"step": self.state["step"], "epoch": self.state["epoch"],
                  **{f"dev_{k}": v for k, v in scores.items() if isinstance(v, (int, float))}}
        self.run.log_metrics(record)
        logger.info("step %d epoch %d | dev %s | best %s %.2f at step %d", self.state["step"], self.state["epoch"],
                    " ".join(f"{k} {v:.2f}" for k, v in scores.items() if isinstance(v, float)), metric,
                    self.state["best_score"], self.state["best_step"])
        self.save_last()
        self.run.plot_curves(metric)
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
                losses = [self.micro_step(b, len(group), sync=j == len(group) - 1) for j, b in enumerate(group)]
                state["batch_in_epoch"] += len(group)
                out = self.optimizer_step(losses)
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
        if args.evaluation_steps > 0 and step % args.evaluation_steps == 0:
            self.evaluate_and_save()
        elif args.save_steps > 0 and step % args.save_steps == 0:
            self.save_last()


# ----------------------------------------------------------------------------- prediction
def instance_count(feature: dict) -> int:
    """Rows of logits a feature yields: its entity pairs (DocRED), else one (a sentence, a dialogue)."""
    return len(feature["hts"]) if "hts" in feature else 1


@torch.no_grad()
def predict_logits(model: nn.Module, features: Sequence[dict], collate: Callable, batch_size: int,
                   device: torch.device, dtype: Optional[torch.dtype], desc: str = "predict",
                   progress: bool = True) -> Optional[torch.Tensor]:
    """Logits of every instance of `features`, in order, as fp32 on the CPU.

    In a distributed run each rank predicts every world-th document and rank 0 gets all logits
    back in document order; the other ranks get None.
    """
    rank, world = world_info()
    mine = list(range(rank, len(features), world))
    was_training = model.training
    model.eval()
    out: List[torch.Tensor] = []
    for i in tqdm(range(0, len(mine), batch_size), desc=desc, disable=not progress or rank != 0, leave=False,
                  dynamic_ncols=True):
        docs = [features[j] for j in mine[i:i + batch_size]]
        batch = collate(docs)
        batch.pop("labels", None)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        try:
            with utils.autocast(device, dtype):
                logits = model(**batch).float().cpu()
        except torch.cuda.OutOfMemoryError as e:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory predicting a batch of {len(docs)} documents x {batch['input_ids'].shape[1]} "
                f"tokens (--test_batch_size {batch_size}). Lower memory with a smaller --test_batch_size or "
                f"--max_seq_length.") from e
        out += list(logits.split([instance_count(f) for f in docs]))  # one block per feature
    model.train(was_training)
    if world > 1:
        shards = [None] * world if rank == 0 else None
        dist.gather_object(out, shards, dst=0)
        if rank != 0:
            return None
        out = [shards[j % world][j // world] for j in range(len(features))]
    return torch.cat(out) if out else torch.zeros(0, 0)


def load_json_file(path: str | os.PathLike) -> Any:
    """Read a JSON file with an error that names it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read JSON: {e}") from e


class DocREDTask:
    """Everything DocRED-specific: label map, features, gold files, decoding and scoring."""

    def __init__(self, args: argparse.Namespace, tokenizer, rel2id: Dict[str, int]):
        import prepro

        self.args, self.tokenizer, self.rel2id = args, tokenizer, rel2id
        self.id2rel = {v: k for k, v in rel2id.items()}
        self.num_class = len(rel2id)
        self.collate = utils.Collator(self.num_class, tokenizer.pad_token_id or 0)
        cache = None if (args.cache_dir or "").lower() == "none" else (args.cache_dir or
                                                                       os.path.join(args.data_dir, ".cache"))
        self.cache = cache
        self._read = lambda path: prepro.read_docred(
            path, tokenizer, rel2id, max_seq_length=args.max_seq_length,
            entity_marker=None if args.no_entity_marker else "*", cache_dir=cache,
            show_progress=world_info()[0] == 0)

    def read(self, path: str) -> Sequence[dict]:
        """Features of a file; in a distributed run rank 0 builds the cache while the others wait."""
        rank, world = world_info()
        if world > 1 and self.cache and rank != 0:
            barrier()
        features = self._read(path)
        if world > 1 and self.cache and rank == 0:
            barrier()
        return features

    def path(self, name: str) -> Optional[str]:
        if not name:
            return None
        return name if os.path.isabs(name) or os.path.exists(name) else os.path.join(self.args.data_dir, name)

    def decode(self, logits: torch.Tensor, loss_fn: Any, threshold: Optional[float] = None) -> torch.Tensor:
        kw = {"threshold": threshold} if threshold is not None else {}
        return loss_fn.get_label(logits, num_labels=self.args.num_labels, **kw)

    def score(self, logits: torch.Tensor, features: Sequence[dict], truth: List[dict], loss_fn: Any,
              threshold: Optional[float] = None) -> Dict[str, Any]:
        """Official scores and predictions of `logits` against the gold documents."""
        import evaluation

        preds = evaluation.to_official(self.decode(logits, loss_fn, threshold), features, self.id2rel)
        train_file = self.path(self.args.train_file) if self.args.train_file else None
        scores = evaluation.official_evaluate(
            preds, truth, train_annotated=train_file if train_file and os.path.exists(train_file) else None,
            train_distant=self.path(self.args.train_distant) if self.args.train_distant else None)
        return {"scores": scores, "preds": preds}

    def evaluate(self, model: nn.Module, features: Sequence[dict], truth: List[dict], loss_fn: Any,
                 tune_threshold: bool) -> Dict[str, Any]:
        """Score dev; for a loss with a global threshold (BCE), pick it on these documents first."""
        device = next(model.parameters()).device
        logits = predict_logits(model, features, self.collate, self.args.test_batch_size, device,
                                utils.amp_dtype(device, self.args.amp), "dev", not self.args.no_progress)
        if logits is None:  # not rank 0
            return {"scores": {}, "preds": []}
        if tune_threshold and getattr(loss_fn, "tunes_threshold", False):
            trials = {t: self.score(logits, features, truth, loss_fn, t)
                      for t in np.round(np.arange(0.1, 0.95, 0.1), 1).tolist()}
            best = max(trials, key=lambda t: trials[t]["scores"][self.args.select_metric])
            loss_fn.threshold = best
            result = trials[best]
        else:
            result = self.score(logits, features, truth, loss_fn)
        result["scores"] = {**result["scores"], **({"threshold": loss_fn.threshold}
                                                   if getattr(loss_fn, "tunes_threshold", False) else {})}
        return result


def build_loss_from_args(args: argparse.Namespace) -> Any:
    """The loss chosen by --loss and its options."""
    import losses

    name = args.loss.lower()
    options: Dict[str, Any] = {}
    if name == "ncrl":
        options = {"shift": args.shift, "margin_reg": not args.no_margin_reg}
    elif name == "bce":
        options = {"prob_shift": args.prob_shift}
    ignored = [flag for flag, used in (("--shift", args.shift and name != "ncrl"),
                                       ("--no_margin_reg", args.no_margin_reg and name != "ncrl"),
                                       ("--prob_shift", args.prob_shift and name != "bce")) if used]
    if ignored:
        logger.warning("%s do(es) not apply to --loss %s and is ignored", ", ".join(ignored), name)
    return losses.build_loss(name, **options)


def load_encoder_and_tokenizer(args: argparse.Namespace):
    """The tokenizer and encoder of --model_name_or_path, with a clear error when neither folder nor hub works."""
    from transformers import AutoConfig, AutoTokenizer

    from model import load_encoder, use_checkpointed_sdpa

    path = utils.resolve_model_path(args.model_name_or_path)
    if os.path.isdir(path) and not args.config_name and not os.path.exists(os.path.join(path, "config.json")):
        raise SystemExit(f"--model_name_or_path {args.model_name_or_path!r} is a folder without a model (no "
                         f"config.json in it): point it at a folder written by save_pretrained, or use "
                         f"--model_name_or_path minilm for the packaged offline encoder.")
    try:
        config = AutoConfig.from_pretrained(utils.resolve_model_path(args.config_name) if args.config_name else path)
        tokenizer = AutoTokenizer.from_pretrained(
            utils.resolve_model_path(args.tokenizer_name) if args.tokenizer_name else path)
        encoder = load_encoder(path, config=config)
        use_checkpointed_sdpa(encoder)
    except OSError as e:
        raise SystemExit(
            f"--model_name_or_path {args.model_name_or_path!r} is neither a local folder nor reachable on the "
            f"model hub (offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Use "
            f"--model_name_or_path minilm for the packaged offline encoder, or download the model first. ({e})")
    return tokenizer, encoder


def check_checkpoint(ckpt: Dict[str, Any], path: str, args: argparse.Namespace, rel2id: Dict[str, int]) -> None:
    """Refuse a checkpoint trained with another encoder or label map, naming both."""
    saved = ckpt.get("args", {})
    saved_model = saved.get("model_name_or_path")
    if saved_model is not None and utils.resolve_model_path(saved_model) != utils.resolve_model_path(
            args.model_name_or_path):
        raise SystemExit(f"--load_path {path} was trained with encoder {saved_model!r}, but this run uses "
                         f"--model_name_or_path {args.model_name_or_path!r}; pass the same encoder.")
    if ckpt.get("rel2id") is not None and ckpt["rel2id"] != rel2id:
        diff = sorted(set(ckpt["rel2id"].items()) ^ set(rel2id.items()))[:5]
        raise SystemExit(f"--load_path {path} was trained with a label map of {len(ckpt['rel2id'])} classes, but "
                         f"this run's map has {len(rel2id)} (first differences: {diff}); pass its --rel2id.")


def write_predictions(task: DocREDTask, model: nn.Module, loss_fn: Any, run: RunDirectory,
                      dev: Optional[tuple], test: Optional[tuple]) -> Dict[str, Any]:
    """Dev predictions and scores, test predictions (result.json, result.zip) and test scores if labelled."""
    import evaluation

    out: Dict[str, Any] = {}
    if dev is not None:
        res = task.evaluate(model, dev[0], dev[1], loss_fn, tune_threshold=False)
        if not run.is_main:
            res["scores"] = {}
        run.write_json("dev_pred.json", res["preds"])
        run.write_json("dev_scores.json", res["scores"])
        out["dev"] = res["scores"]
        logger.info("checkpoint on dev: %s", fmt_scores(res["scores"]))
    if test is not None:
        features, docs = test
        device = next(model.parameters()).device
        logits = predict_logits(model, features, task.collate, task.args.test_batch_size, device,
                                utils.amp_dtype(device, task.args.amp), "test", not task.args.no_progress)
        if logits is None:  # not rank 0
            return out
        preds = evaluation.to_official(task.decode(logits, loss_fn), features, task.id2rel)
        evaluation.check_submission(preds, docs, set(task.rel2id) - {"Na"})
        run.write_json("result.json", preds)
        if run.is_main:
            evaluation.write_codalab_zip(run.file("result.json"), run.file("result.zip"))
        if any(d.get("labels") for d in docs):
            out["test"] = task.score(logits, features, docs, loss_fn)["scores"]
            run.write_json("test_scores.json", out["test"])
            logger.info("test: %s", fmt_scores(out["test"]))
    return out


def fmt_scores(scores: Dict[str, Any]) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in scores.items() if isinstance(v, float))


def train_and_restore_best(trainer: "Trainer", model: nn.Module, loss_fn: Any, args: argparse.Namespace,
                           run: RunDirectory, device: torch.device) -> Dict[str, Any]:
    """Run the training loop, then load the best checkpoint (weights, BCE threshold) into `model`."""
    start = time.time()
    trainer.train()
    logger.info("training took %.1f s", time.time() - start)
    barrier()
    best = torch.load(run.file("best.pt"), map_location=device, weights_only=False)
    model.load_state_dict(best["model"])
    if best.get("threshold") is not None:
        loss_fn.threshold = best["threshold"]
    if args.save_path and run.is_main:
        utils.atomic_torch_save(best, args.save_path)
    run.plot_curves(args.select_metric)
    return best


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_docred_args(add_training_args(parser))
    args = parser.parse_args(argv)
    if args.output_dir is None:
        args.output_dir = default_output_dir(args)
    return args


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def start_run(args: argparse.Namespace) -> Tuple[RunDirectory, int, int, torch.device]:
    """Join the process group (under torchrun), open the run directory, logging and wandb, seed everything."""
    rank, world, device = init_distributed(args.device)
    if world > 1:
        args.output_dir = broadcast_object(args.output_dir)  # one run directory, named by rank 0
    run = RunDirectory(args.output_dir, is_main=rank == 0)
    setup_logging(run)
    if args.wandb:
        run.enable_wandb(args)
    utils.set_seed(args.seed)
    return run, rank, world, device


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    import prepro
    from model import DocREModel

    args = parse_args(argv)
    run, rank, world, device = start_run(args)
    do_train = args.do_train or not args.load_path
    rel2id = prepro.load_rel2id(args.data_dir, rel2id_file=args.rel2id, rel_info_file=args.rel_info)
    if args.num_class is not None:
        prepro.check_num_class(rel2id, args.num_class)
    tokenizer, encoder = load_encoder_and_tokenizer(args)
    task = DocREDTask(args, tokenizer, rel2id)
    run.write_json("args.json", {**vars(args), "num_class": task.num_class, "device": str(device),
                                 "world_size": world, "effective_batch_size":
                                 args.train_batch_size * world * args.gradient_accumulation_steps})
    model = DocREModel(encoder, task.num_class, emb_size=args.emb_size, block_size=args.block_size,
                       tokenizer=tokenizer, max_seq_length=args.max_seq_length,
                       transformer_type=args.transformer_type,
                       gradient_checkpointing=args.gradient_checkpointing).to(device)
    loss_fn = build_loss_from_args(args)
    if args.load_path:
        ckpt = torch.load(args.load_path, map_location=device, weights_only=False)
        check_checkpoint(ckpt, args.load_path, args, rel2id)
        model.load_state_dict(ckpt["model"])
        if ckpt.get("threshold") is not None and not args.do_train:
            loss_fn.threshold = ckpt["threshold"]
        logger.info("loaded weights from %s", args.load_path)

    dev_path, test_path = task.path(args.dev_file), task.path(args.test_file)
    dev = (task.read(dev_path), load_json_file(dev_path)) if dev_path else None
    test = (task.read(test_path), load_json_file(test_path)) if test_path else None
    if do_train:
        train_path = task.path(args.train_file)
        if dev_path and os.path.abspath(train_path) == os.path.abspath(dev_path):
            logger.warning("--train_file and --dev_file are the same file (%s): dev scores will be optimistic",
                           train_path)
        train_features = task.read(train_path)
        if dev is None:
            raise SystemExit("training needs --dev_file for evaluation and checkpoint selection")
        evaluate = lambda m: task.evaluate(m, dev[0], dev[1], loss_fn, tune_threshold=True)["scores"]  # noqa: E731
        trainer = Trainer(args, model, loss_fn, train_features, task.collate, evaluate, run,
                          extra_state={"rel2id": rel2id})
        logger.info("training on %d documents: %d optimizer steps, effective batch %d (%d x %d processes x %d "
                    "accumulation), amp %s, device %s", len(train_features), trainer.total_steps,
                    args.train_batch_size * world * args.gradient_accumulation_steps, args.train_batch_size,
                    world, args.gradient_accumulation_steps, trainer.dtype, device)
        train_and_restore_best(trainer, model, loss_fn, args, run, device)
    result = write_predictions(task, model, loss_fn, run, dev, test)
    barrier()
    if world > 1:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
