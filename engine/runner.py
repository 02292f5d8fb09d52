"""`run(task, argv)`: one command-line run of a task, from flags to scores.json.

    flags -> checkpoint read and checked (--load_path) -> run directory claimed, --resume's last.pt read and checked
    (nothing written yet)
    -> tokenizer + encoder -> task.setup(args, mode, tokenizer, meta) -> task.build_model (+ the checkpoint's weights)
    -> dev, test (and train) read and validated -> run directory opened (args.json, train.log)
    -> Trainer: epochs of micro-batches, dev evaluations (tune the Decision, score, keep best.pt), last.pt
    -> best.pt reloaded -> dev and test predicted -> task.write -> model/ (the model folder) -> scores.json

Every input is read and validated before the run directory is written, so a failing run never touches the files
of another. The mode is "train" (from scratch, or fine-tuning with --load_path --do_train) or "test" (--load_path
alone: the model's settings come from the checkpoint). --load_path is a model folder, a run directory or a .pt file.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

import utils
from engine import checkpoints as ck
from engine.distributed import barrier, broadcast_object, init_distributed, rank_zero_first, shutdown, world_info
from engine.inference import predict_outputs
from engine.rundir import RunDirectory
from engine.task import (Outputs, Split, Task, add_training_args, build_loss_from_args, default_decision,
                         default_output_dir, parse_args)
from engine.trainer import Trainer, fmt_scores, set_prior_start
from losses import Decision
from utils import UserError

logger = logging.getLogger(__name__)


def configure_process(args: argparse.Namespace) -> None:
    """Process-wide settings, made here once at start-up: glibc's mmap threshold and a cap on oneDNN's kernel
    cache (both lower the training peak on CPU; BENCHMARKS.md)."""
    utils.set_mmap_threshold(args.mmap_threshold_mb)
    utils.cap_onednn_cache()


def start_run(args: argparse.Namespace) -> Tuple[RunDirectory, int, torch.device]:
    """Join the process group (under torchrun), claim the run directory (writing nothing), start logging, seed."""
    rank, world, device = init_distributed(args.device)
    if world > 1:
        args.output_dir = broadcast_object(args.output_dir)  # one run directory, named by rank 0
    run_dir = RunDirectory(args.output_dir, is_main=rank == 0)
    run_dir.start_logging()
    with rank_zero_first():  # a folder rank 0 refuses is refused on every rank
        if run_dir.is_main:  # --resume on an absent or empty folder: a fresh start (the prior start included)
            args.resume = run_dir.claim(args.resume, args.overwrite)
    if world > 1:
        args.resume = broadcast_object(args.resume)
    configure_process(args)
    utils.set_seed(args.seed)
    return run_dir, world, device


def read_checkpoint(task: Task, args: argparse.Namespace, defaults: Dict[str, Any], mode: str,
                    argv: Optional[Sequence[str]] = None) -> Tuple[Optional[Dict[str, Any]], Optional[Path], str]:
    """--load_path's model (a model folder, a run directory or a .pt file), checked against this run; in test mode
    the model's settings are taken from it. Returns (checkpoint, where it was read, the adopted settings)."""
    if not args.load_path:
        return None, None, ""
    ckpt, source = ck.read_model(args.load_path, "--load_path", args.trust_checkpoint)
    ck.check_task(ckpt, str(source), task.name)
    given = given_flags(task, argv)
    adopted = ck.adopt_settings(args, defaults, ckpt, task.model_settings, str(source), given,
                                fine_tuning=mode == "train")
    if ckpt.get("encoder") and "model_name_or_path" not in given:  # a model folder carries its encoder
        args.model_name_or_path = ckpt["args"].get("model_name_or_path", args.model_name_or_path)
    ck.check_checkpoint(ckpt, str(source), args, task.name)
    return ckpt, source, ", ".join(adopted)


def check_save_path(args: argparse.Namespace, mode: str) -> None:
    """Refuse a --save_path that could not be written after the training, or that would replace a file (another
    run's best.pt) without --overwrite; test mode trains no checkpoint to copy."""
    if not args.save_path:
        return
    if mode == "test":
        raise UserError("--save_path copies the best checkpoint of a training run; test mode trains none: leave it "
                        "out (the run directory holds the model)")
    utils.check_writable(args.save_path, "--save_path", example="best.pt")
    if Path(args.save_path).exists() and not (args.overwrite or args.resume):
        raise UserError(f"--save_path {args.save_path} already exists: pass --overwrite to replace it, or another path")


def given_flags(task: Task, argv: Optional[Sequence[str]]) -> set:
    """The destinations of the flags given on the command line (whatever their value, defaults included)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    add_training_args(parser)
    task.add_args(parser)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    parser._defaults.clear()  # the task's set_defaults
    given, _ = parser.parse_known_args(argv)
    return set(vars(given))


def read_splits(task: Task, mode: str) -> Dict[str, Optional[Split]]:
    """dev and test (and train when training), each read and validated; training needs labelled dev and train."""
    splits = {name: task.read(name) for name in ["dev", "test"] + (["train"] if mode == "train" else [])}
    if mode == "test" and splits["dev"] is None and splits["test"] is None:
        raise UserError("test mode scores the model on --dev_file or --test_file, and neither is given (or found)")
    if mode == "train" and splits["dev"] is None:
        raise UserError("training needs --dev_file for evaluation and checkpoint selection")
    if mode == "train" and not len(splits["train"].features):
        raise UserError(f"--train_file {splits['train'].source}: no documents to train on")
    return splits


def run(task: Task, argv: Optional[Sequence[str]] = None, description: str = "") -> Dict[str, Any]:
    """Train (unless only --load_path is given), then predict and score dev and test; returns the scores."""
    args, defaults = parse_args(task, argv, description)
    args.task = task.name  # in every checkpoint's args: --load_path and --resume check it
    mode = "train" if args.do_train or not args.load_path else "test"
    check_save_path(args, mode)
    if args.wandb and importlib.util.find_spec("wandb") is None:  # before the encoder and data are loaded
        raise UserError("--wandb needs the wandb package: pip install wandb (or drop --wandb)")
    ckpt, best, adopted = read_checkpoint(task, args, defaults, mode, argv)
    args.output_dir = args.output_dir or default_output_dir(task, args)
    run_dir, world, device = start_run(args)
    args.world_size = world  # a resumed run replays its epochs' batches only with as many processes
    run_dir.keep = Path(best) if best else None  # --overwrite never removes the --load_path being read
    checked = task.model_settings + task.loss_settings  # what a resumed run must keep
    resume = ck.read_resume(run_dir.file("last.pt"), args, task.name, checked) if args.resume else None
    loss_fn = build_loss_from_args(args)

    if mode == "train" and not (ckpt or {}).get("encoder"):
        tokenizer, encoder = ck.load_encoder_and_tokenizer(args)
    else:  # test mode, or fine-tuning a model folder: its encoder config and tokenizer (weights from the folder)
        tokenizer, encoder = ck.checkpoint_encoder(ckpt, best)
        if mode == "train" and args.gradient_checkpointing:
            from encoder_kernels import enable_activation_checkpointing

            enable_activation_checkpointing(encoder)
    task.setup(args, mode, tokenizer, ck.checkpoint_meta(ckpt) if ckpt else None, str(best or ""))
    model = task.build_model(encoder)
    if ckpt is not None:
        ck.load_weights(model, ckpt, best, new_modules=mode == "train")
    model.to(device)
    decision = default_decision(task, args, loss_fn) if mode == "train" else Decision.from_checkpoint(ckpt, args.top_k)
    splits = read_splits(task, mode)

    run_dir.open()
    if args.wandb:
        run_dir.enable_wandb(args)
    if ckpt is not None:
        logger.info("loaded weights from %s%s", best,
                    f" ({mode} mode; from the checkpoint: {adopted})" if adopted else "")
    run_dir.write_json("args.json", {**vars(args), "task": task.name, "device": str(device), "world_size": world,
                                     "effective_batch_size": args.train_batch_size * world *
                                     args.gradient_accumulation_steps, **task.summary()})

    def predict(split: Split, aux: bool = True) -> Optional[Outputs]:
        """The model's outputs on a split (and on its extra inputs); None on ranks other than 0."""
        go = lambda feats, desc: predict_outputs(  # noqa: E731
            model, feats, task.collate, task.rows, args.test_batch_size, utils.amp_dtype(device, args.amp), desc,
            not args.no_progress, forward=task.outputs)
        out = go(split.features, split.name)
        extra = {k: go(v, f"{split.name} {k}") for k, v in split.aux.items()} if aux else {}
        if out is not None:
            out.aux = extra
        return out

    finish = None
    if mode == "train":
        decision, best_ckpt = train_and_restore_best(task, args, model, encoder, tokenizer, loss_fn, splits, run_dir,
                                                     predict, decision, resume)
        finish = lambda scores: write_model_folder(run_dir, args, model, best_ckpt, tokenizer,  # noqa: E731
                                                   encoder.config, splits, scores, task.name)
    return write_outputs(task, run_dir, splits, predict, loss_fn, decision, finish)


def write_model_folder(run_dir: RunDirectory, args: argparse.Namespace, model: nn.Module, best: Dict[str, Any],
                       tokenizer: Any, encoder_config: Any, splits: Dict[str, Optional[Split]],
                       scores: Dict[str, Any], task: str) -> None:
    """RUN/model/: the best weights (safetensors), config.json with the data record, tokenizer files, model card."""
    def scored(name: str) -> Optional[Dict[str, Any]]:
        split = splits.get(name)
        prefix = f"{name}_"
        return ck.data_record(split.source if split else None,
                              {k[len(prefix):]: v for k, v in scores.items() if k.startswith(prefix)})

    training = {"data_name": Path(str(getattr(args, "data_dir", "") or "")).name or None,
                "train_file": Path(str(getattr(args, "train_file", "") or "")).name or None,
                "dev": scored("dev"), "test": scored("test")}
    folder = ck.save_model_folder(run_dir.file(ck.MODEL_DIR), {**best, "model": model.state_dict()}, tokenizer,
                                  encoder_config, training, task)
    logger.info("model folder %s (config.json, model.safetensors, tokenizer, README.md): %s", folder,
                ck.use_hint(task))


def train_and_restore_best(task: Task, args: argparse.Namespace, model: nn.Module, encoder: nn.Module, tokenizer: Any,
                           loss_fn: Any, splits: Dict[str, Optional[Split]], run_dir: RunDirectory, predict: Any,
                           decision: Decision, resume: Optional[Dict[str, Any]] = None
                           ) -> Tuple[Decision, Dict[str, Any]]:
    """Run the training loop (from `resume`, --resume's last.pt, when given), then load best.pt into `model`;
    returns its decision and checkpoint.

    encoder/ is written before the loop, so the run directory is a model folder from its first best.pt on.
    """
    dev, train = splits["dev"], splits["train"]

    def evaluate(m: nn.Module) -> Tuple[Dict[str, Any], Decision]:
        outputs = predict(dev, aux=False)
        if outputs is None:  # not rank 0: rank 0 scores
            return {}, decision
        tuned, extra = task.tune_with_model(m, dev, loss_fn, task.tune(outputs, dev, loss_fn, decision))
        return {**task.score(outputs, dev, loss_fn, tuned), **extra, **tuned.report()}, tuned

    if args.init_none_prior and not args.load_path and resume is None:
        n = set_prior_start(model, train.features, task.collate)
        logger.info("classifier bias set to the relation priors of %d training instances", n)
    elif args.init_none_prior and args.load_path:
        logger.warning("--init_none_prior left out: fine-tuning starts from the classifier of --load_path %s",
                       args.load_path)
    trainer = Trainer(args, model, encoder, loss_fn, train.features, task.collate, evaluate, run_dir,
                      task.metric, task.meta(), task.training_loss, task.clip_groups(model))
    logger.info("%s: training on %d %s, %d optimizer steps, effective batch %d (%d x %d processes x %d "
                "accumulation), loss %s, amp %s, device %s, best checkpoint by dev %s", task.name,
                len(train.features), task.unit, trainer.total_steps, trainer.global_batch *
                args.gradient_accumulation_steps, args.train_batch_size, world_info()[1],
                args.gradient_accumulation_steps, loss_fn, trainer.dtype, trainer.device, task.metric)
    if trainer.dtype is None and trainer.device.type == "cpu" and args.amp == "auto" and utils.cpu_multiplies_bf16():
        logger.info("this CPU has bf16 matrix units (AMX): --amp bf16 trains and predicts faster (BENCHMARKS.md); "
                    "fp32 stays the default")
    if run_dir.is_main:
        ck.write_encoder_folder(run_dir.file(ck.ENCODER_DIR), tokenizer, encoder.config)
    start = time.time()
    trainer.train(resume)
    logger.info("training took %.1f s", time.time() - start)
    barrier()
    best = ck.load_checkpoint(str(run_dir.file(ck.BEST)), trainer.device)
    model.load_state_dict(best["model"])
    if args.save_path and run_dir.is_main:
        ck.copy_best(best, Path(args.save_path), tokenizer, encoder.config)
    run_dir.plot_curves(task.metric)
    return Decision.from_checkpoint(best, args.top_k), {k: v for k, v in best.items() if k in ck.MODEL_KEYS}


def write_outputs(task: Task, run_dir: RunDirectory, splits: Dict[str, Optional[Split]], predict: Any,
                  loss_fn: Any, decision: Decision, finish: Optional[Callable[[Dict[str, Any]], None]] = None
                  ) -> Dict[str, Any]:
    """Predict dev and test with the final model; the task writes its files; `finish(scores)` runs on the main
    process (after training: the model folder); then scores.json, every score, last: a run with one is complete."""
    scores: Dict[str, Any] = {}
    for name in ("dev", "test"):
        split = splits.get(name)
        if split is None:
            continue
        outputs = predict(split)
        if outputs is None:  # not rank 0
            continue
        out = task.write(run_dir, split, outputs, loss_fn, decision)
        scores.update({f"{name}_{k}": v for k, v in out.items()})
        if out:
            logger.info("%s: %s", name, fmt_scores(out))
    scores.update(decision.report(), **task.summary())
    if finish is not None and run_dir.is_main:
        finish(scores)
    run_dir.write_json("scores.json", scores)
    if run_dir.is_main:
        logger.info("run directory %s: %s", run_dir.path, " ".join(sorted(p.name for p in run_dir.path.iterdir()
                                                                          if not p.name.startswith("."))))
    barrier()
    shutdown()
    return scores
