"""Checkpoints and the model folder: loading the encoder, reading and checking checkpoints, exporting and loading a
trained model with nothing else needed (no network, no training code).

A trained model is one folder: the run directory, or one exported by `save_pretrained`. What loading needs:
    best.pt    weights, args, the task's meta() and the decision (an exported one: no optimizer or RNG states)
    encoder/   the encoder's config.json and the tokenizer files (no encoder weights: they are in best.pt)
Runs from before model folders have no encoder/: their encoder is rebuilt from args' model_name_or_path.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import nn

import utils
from losses import Decision
from utils import UserError

logger = logging.getLogger(__name__)
STATE_VERSION = 2  # 2: the decision is a value in the checkpoint; task metadata under "meta"
BEST, ENCODER_DIR = "best.pt", "encoder"
MODEL_KEYS = ("version", "model", "args", "meta", "decision")  # what an exported best.pt keeps


def load_encoder_and_tokenizer(args: argparse.Namespace) -> Tuple[Any, nn.Module]:
    """The tokenizer and encoder of --model_name_or_path, with a clear error when neither folder nor hub works."""
    from transformers import AutoConfig, AutoTokenizer

    from encoder_kernels import load_encoder

    path = utils.resolve_model_path(args.model_name_or_path)
    if os.path.isdir(path) and not args.config_name and not os.path.exists(os.path.join(path, "config.json")):
        raise UserError(f"--model_name_or_path {args.model_name_or_path!r} is a folder without a model (no "
                        f"config.json in it): point it at a folder written by save_pretrained, or use "
                        f"--model_name_or_path minilm for the packaged offline encoder.")
    try:
        config = AutoConfig.from_pretrained(utils.resolve_model_path(args.config_name) if args.config_name else path)
        tokenizer = AutoTokenizer.from_pretrained(
            utils.resolve_model_path(args.tokenizer_name) if args.tokenizer_name else path)
        encoder = load_encoder(path, config=config)  # the task's model chooses its kernels (encoder_kernels)
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


def check_checkpoint(ckpt: Dict[str, Any], path: str, args: argparse.Namespace, task_name: str) -> None:
    """Refuse a checkpoint of another task or encoder, naming both (the task checks its own metadata in setup)."""
    saved = ckpt.get("args", {})
    saved_task = saved.get("task", task_name)
    if saved_task != task_name:
        raise UserError(f"--load_path {path} is a {saved_task} checkpoint, not one of {task_name}")
    saved_model = saved.get("model_name_or_path")
    if saved_model is not None and utils.resolve_model_path(saved_model) != utils.resolve_model_path(
            args.model_name_or_path):
        raise UserError(f"--load_path {path} was trained with encoder {saved_model!r}, but this run uses "
                        f"--model_name_or_path {args.model_name_or_path!r}; pass the same encoder.")


def checkpoint_meta(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """The task metadata of a checkpoint; version 1 kept it at the top level."""
    return ckpt.get("meta") or {k: ckpt[k] for k in ("rel2id", "rid2col", "label_names") if k in ckpt}


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
    from encoder_kernels import load_encoder

    return tokenizer, load_encoder(None, config=config)


def load_weights(model: nn.Module, ckpt: Dict[str, Any], path: Path) -> None:
    """The checkpoint's weights into `model`, with an error naming the file when they do not fit."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{path}: its weights do not fit the model its settings describe (a checkpoint of "
                        f"another version of the head?): {str(e)[:400]}") from e


Build = Callable[[Any, nn.Module], nn.Module]  # (tokenizer, untrained encoder) -> the task's model


def build_pretrained(ckpt: Dict[str, Any], best: Path, build: Build, device: torch.device | str = "cpu") -> Pretrained:
    """`build(tokenizer, encoder)` on the folder's encoder, with the checkpoint's weights, on `device`."""
    tokenizer, encoder = checkpoint_encoder(ckpt, best.parent, best)
    model = build(tokenizer, encoder)
    load_weights(model, ckpt, best)
    model.to(device).eval()
    return Pretrained(model, tokenizer, {k: v for k, v in ckpt.items() if k != "model"}, best)


def load_pretrained(path: str | os.PathLike, build: Build, device: torch.device | str = "cpu",
                    what: str = "--model") -> Pretrained:
    """The trained model of a run directory, exported model folder or best.pt: nothing else and no network needed.

    `build(tokenizer, encoder)` makes the task's model on the untrained encoder (the engine knows no task).
    """
    best, _ = model_files(path, what)
    return build_pretrained(load_checkpoint(best, "cpu", what), best, build, device)


ENGINE_SETTINGS = ("model_name_or_path", "loss", "shift", "margin_reg", "prob_shift", "top_k")


def adopt_settings(args: argparse.Namespace, defaults: Dict[str, Any], ckpt: Dict[str, Any],
                   model_settings: Tuple[str, ...], path: str) -> List[str]:
    """Test mode: the model's settings (encoder, loss and rule, the task's `model_settings`) from the checkpoint's
    args; a flag given explicitly (not at its default) with another value is an error naming both. Returns the
    adopted `name=value`s that differ from this run's defaults, for the log."""
    saved, adopted = ckpt.get("args", {}), []
    for name in ENGINE_SETTINGS + tuple(model_settings):
        if name not in saved:
            continue  # an older checkpoint without it: keep the flag
        value, default = getattr(args, name), defaults.get(name)
        if value != default and name == "model_name_or_path":
            continue  # check_checkpoint names both encoders
        if value != default and value != saved[name]:
            raise UserError(f"--load_path {path} was trained with --{name} {saved[name]!r}, but this run passes "
                            f"--{name} {value!r}: drop the flag (test mode takes it from the checkpoint)")
        setattr(args, name, saved[name])
        if saved[name] != default:
            adopted.append(f"{name}={saved[name]}")
    return adopted
