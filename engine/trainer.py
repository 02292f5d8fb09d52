"""The training loop: AdamW with linear warmup and decay, gradient accumulation, DDP, skipped non-finite steps,
evaluation on dev with the best checkpoint kept, and resume from last.pt.

    trainer = Trainer(args, model, encoder, loss_fn, train_features, collate, evaluate, run, metric, meta)
    trainer.train()   # epochs of micro-batches -> optimizer steps -> logs, dev evaluations, best.pt and last.pt
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

import losses
import utils
from collate import label_counts
from engine.checkpoints import STATE_VERSION, plain
from engine.distributed import barrier, gather_to_zero, rng_states, set_rng_states, world_info
from engine.rundir import RunDirectory
from engine.task import logits_loss
from losses import Decision

logger = logging.getLogger(__name__)

SAVE_SECONDS = 600  # without --save_steps, last.pt is written about every 10 minutes of training (and at evaluations)


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


def oom_message(args: argparse.Namespace, batch_shape: Optional[Sequence[int]] = None) -> str:
    """What to change when the GPU runs out of memory in training on a batch of `batch_shape` (documents, tokens)."""
    batch = f" on a batch of {batch_shape[0]} documents x {batch_shape[1]} tokens" if batch_shape else ""
    return (f"CUDA out of memory{batch} at --train_batch_size {args.train_batch_size} and --max_seq_length "
            f"{getattr(args, 'max_seq_length', '?')}. Lower memory with --gradient_checkpointing, a smaller "
            f"--train_batch_size with more --gradient_accumulation_steps (same effective batch), or a "
            f"smaller --max_seq_length.")


def numpy_rng(states: Dict[str, Any]) -> Dict[str, Any]:
    """RNG states read from a checkpoint, numpy's key back as the uint32 array numpy wants (`plain` made it a tensor)."""
    name, key, *rest = states["numpy"]
    return {**states, "numpy": (name, np.asarray(key, dtype=np.uint32), *rest)}


def set_prior_start(model: nn.Module, features: Sequence[dict], collate: Callable) -> int:
    """--init_none_prior: the classifier bias at the training set's smoothed relation rates (`losses.positive_rates`)
    of the collated labels; returns how many training instances (rows) they count."""
    counts, n = label_counts(features, collate)
    model.init_classifier_bias(losses.positive_rates(counts, n))
    return n


class Trainer:
    """Runs the optimisation loop; the task supplies the model, loss, data and an evaluate function.

    `evaluate(model) -> (scores, decision)` scores dev (percent, including `metric`) with the decision tuned
    there; the decision of the best evaluation is stored in best.pt.
    """

    def __init__(self, args: argparse.Namespace, model: nn.Module, encoder: nn.Module, loss_fn: Any,
                 train_features: Sequence[dict], collate: Callable,
                 evaluate: Optional[Callable[[nn.Module], Tuple[Dict[str, Any], Decision]]],
                 run: Optional[RunDirectory], metric: str, checkpoint_meta: Dict[str, Any],
                 training_loss: Optional[Callable] = None, clip_groups: Optional[List[List[nn.Parameter]]] = None):
        self.args, self.loss_fn, self.features = args, loss_fn, train_features
        self.clip_groups = clip_groups or [list(model.parameters())]
        self.training_loss = training_loss or logits_loss
        self.collate, self.evaluate, self.run, self.metric = collate, evaluate, run, metric
        self.meta = checkpoint_meta
        self.decision: Optional[Decision] = None
        self.device = next(model.parameters()).device
        self.dtype = utils.amp_dtype(self.device, args.amp)
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
        self.stop_signal: Optional[str] = None  # the name of a SIGINT/SIGTERM received while training
        self.last_save = time.monotonic()
        self.state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_score": -1.0, "best_step": -1,
                      "bad_steps": 0, "skipped_steps": 0, "last_eval_step": -1}

    # -- checkpoints
    def checkpoint(self, full: bool) -> Dict[str, Any]:
        """best.pt (full=False) or last.pt: plain types and tensors only, so `torch.load(weights_only=True)` reads it."""
        ckpt = {"version": STATE_VERSION, "model": self.module.state_dict(), "args": plain(vars(self.args)),
                "meta": plain(self.meta), "decision": plain(self.decision.to_dict()) if self.decision else None,
                "state": plain(dict(self.state))}
        if full:
            ckpt.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                        scaler=self.scaler.state_dict(), rng=plain(gather_to_zero(rng_states())))
        return ckpt

    def resume_from(self, ckpt: Dict[str, Any]) -> None:
        """Restore everything saved in last.pt (read and checked by checkpoints.read_resume)."""
        self.module.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.decision = Decision.from_checkpoint(ckpt, self.args.top_k) if ckpt.get("decision") else None
        self.state.update(ckpt["state"])
        rng = ckpt["rng"]
        set_rng_states(numpy_rng(rng[self.rank] if len(rng) == self.world else rng[0]))
        self.run.truncate_metrics(self.state["step"])
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", self.run.file("last.pt"), self.state["step"],
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

    def clip(self) -> float:
        """Clip each group's gradient to --max_grad_norm on its own; the norm of them all, before clipping."""
        norms = [torch.nn.utils.clip_grad_norm_(g, self.args.max_grad_norm) for g in self.clip_groups]
        return (torch.stack(norms).square().sum().sqrt() if len(norms) > 1 else norms[0]).item()

    def optimizer_step(self, losses: List[float]) -> Dict[str, float]:
        """Clip, step, schedule; skip the step when the loss or gradient is not finite."""
        self.scaler.unscale_(self.optimizer)
        grad_norm = self.clip()
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
        self.last_save = time.monotonic()

    # -- interrupts and periodic saves
    @contextlib.contextmanager
    def catching_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM only note the request (`self.stop_signal`); the loop saves last.pt at the next step
        boundary and stops. A second signal acts as usual (e.g. Ctrl-C twice quits at once). A signal the process
        ignores (`nohup`, a shell's background job) stays ignored."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def note(signum, frame):
            self.stop_signal = signal.Signals(signum).name
            for sig, old in previous.items():
                signal.signal(sig, old)

        previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)
                    if signal.getsignal(sig) is not signal.SIG_IGN}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def should(self) -> Tuple[bool, bool]:
        """(stop: a signal came, save: --save_steps or the time-based default is due), the same on every rank."""
        every = self.args.save_steps
        due = (every is None and time.monotonic() - self.last_save >= SAVE_SECONDS) or \
            (every is not None and every > 0 and self.state["step"] % every == 0)
        flags = [self.stop_signal is not None, due]
        if self.world > 1:
            t = torch.tensor(flags, dtype=torch.int32, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flags = t.bool().tolist()
        return flags[0], flags[1]

    def stop(self) -> None:
        """Save last.pt and leave with one line saying how to continue."""
        self.save_last()
        barrier()
        raise utils.Interrupted(f"training stopped by {self.stop_signal or 'a signal'} at step {self.state['step']}: "
                                f"last.pt saved in {self.run.path}; to continue, run the same command with --resume "
                                f"--output_dir {self.run.path}")

    # -- the loop
    def train(self, resume: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Train until the epochs or --max_steps run out (or SIGINT/SIGTERM: last.pt, then utils.Interrupted), from
        `resume` (a last.pt) when given; returns the final state."""
        with self.catching_signals():
            return self.loop(resume)

    def loop(self, resume: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """The epochs of optimizer steps, from last.pt's state when resuming."""
        args, state = self.args, self.state
        if resume is not None:
            self.resume_from(resume)
            if state.pop("evaluation_due", False):
                self.evaluate_and_save()
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
            raise utils.UserError(  # the run's own failure, said in one line (exit 2) and into train.log
                f"{state['bad_steps']} optimizer steps in a row had a non-finite loss or gradient "
                f"(last loss {out['loss']}, grad norm {out['grad_norm']}); try a lower --learning_rate or --amp off")
        if state["batch_in_epoch"] >= self.batches_per_epoch:
            if self.should()[0]:
                self.stop()
            return  # the epoch's last step: train() evaluates and saves at the epoch end, once
        stop, save = self.should()
        due = args.evaluation_steps > 0 and step % args.evaluation_steps == 0
        if stop:
            state["evaluation_due"] = due  # made first on --resume: the run then keeps the same best.pt
            self.stop()
        if due:
            self.evaluate_and_save()
        elif save:
            self.save_last()


def fmt_scores(scores: Dict[str, Any]) -> str:
    """`f1 61.20 ign_f1 60.05 ...`: the float scores of a dict, for the log (None shown as n/a)."""
    return " ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in scores.items()
                    if isinstance(v, float) or (v is None and not k.startswith("_")))
