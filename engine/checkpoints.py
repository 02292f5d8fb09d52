"""Checkpoints and the model folder: loading the encoder, reading and checking checkpoints, exporting and loading a
trained model with nothing else needed (no network, no training code, no pickle).

A trained model is one folder, `RUN/model/` (written after training) or one exported by `save_pretrained`:
    config.json         task, label map, settings, decision, loss, encoder name and config, training record,
                        the toolkit's args, and the SHA-256 of model.safetensors (checked on every load)
    model.safetensors   all weights, encoder included
    tokenizer files     tokenizer.json, tokenizer_config.json, ...
    README.md           the model card (Hugging Face YAML header)
best.pt and last.pt stay in the run directory for training and --resume; they hold plain types and tensors only and
are read with `torch.load(weights_only=True)`. An older pickle checkpoint loads only with --trust_checkpoint.
Runs from before model folders (best.pt + encoder/) still load (test mode, predict.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

import utils
from losses import Decision
from utils import UserError

logger = logging.getLogger(__name__)
STATE_VERSION = 2  # 2: the decision is a value in the checkpoint; task metadata under "meta"
BEST, ENCODER_DIR = "best.pt", "encoder"
MODEL_DIR, CONFIG, WEIGHTS, CARD = "model", "config.json", "model.safetensors", "README.md"
PREDICT_TASKS = ("docred", "cdr", "gda")  # the tasks of DocREModel, whose folders predict.py runs
FOLDER_FORMAT, FOLDER_VERSION = "docre-ncrl-model", 1
MODEL_KEYS = ("version", "model", "args", "meta", "decision")  # what a model keeps of a training checkpoint
LOCAL_ARGS = ("output_dir", "save_path", "load_path", "cache_dir", "data_dir", "resume", "overwrite", "wandb",
              "wandb_project", "run_name", "device", "no_progress", "trust_checkpoint")  # not for a shared model
TRUST_HINT = "pass --trust_checkpoint only if you trust where the file comes from"


# ----------------------------------------------------------------------------- the encoder


def refuse_custom_code(folder: str | os.PathLike, what: str) -> None:
    """A UserError when a local encoder folder's config.json asks to run its own code (`auto_map`)."""
    config = Path(folder) / "config.json"
    try:
        asks = config.is_file() and "auto_map" in json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # unreadable: transformers names the problem
    if asks:
        raise UserError(f"{what} {folder}: its config.json has 'auto_map' (the model needs its own Python code); "
                        f"this toolkit never runs code from a model folder: use an encoder transformers ships")


def encoder_config(source: Any, what: str) -> Any:
    """The transformers config of a folder or hub name, or of a config dict (a model folder's), without custom code."""
    from transformers import AutoConfig

    if isinstance(source, dict):
        if "auto_map" in source:
            raise UserError(f"{what}: its encoder config has 'auto_map' (custom code), which this toolkit never runs")
        return AutoConfig.for_model(**source)
    if os.path.isdir(source):
        refuse_custom_code(source, what)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UserError(f"{what} {source}: the model needs its own Python code (trust_remote_code), which this "
                            f"toolkit never runs: use an encoder transformers ships") from None
        raise


def load_tokenizer(source: str | os.PathLike, config: Any = None) -> Any:
    """The tokenizer of a folder or hub name, without custom code."""
    from transformers import AutoTokenizer

    kwargs = {"config": config} if config is not None else {}
    return AutoTokenizer.from_pretrained(source, trust_remote_code=False, **kwargs)


def load_encoder_and_tokenizer(args: argparse.Namespace) -> Tuple[Any, nn.Module]:
    """The tokenizer and encoder of --model_name_or_path, with a clear error when neither folder nor hub works."""
    from encoder_kernels import enable_activation_checkpointing, load_encoder

    path = utils.resolve_model_path(args.model_name_or_path)
    if os.path.isdir(path) and not args.config_name and not os.path.exists(os.path.join(path, "config.json")):
        raise UserError(f"--model_name_or_path {args.model_name_or_path!r} is a folder without a model (no "
                        f"config.json in it): point it at a folder written by save_pretrained, or use "
                        f"--model_name_or_path minilm for the packaged offline encoder.")
    try:
        config = encoder_config(utils.resolve_model_path(args.config_name) if args.config_name else path,
                                "--model_name_or_path")
        tokenizer = load_tokenizer(utils.resolve_model_path(args.tokenizer_name) if args.tokenizer_name else path)
        encoder = load_encoder(path, config=config, trust_remote_code=False)  # the task's model picks its kernels
    except OSError as e:
        raise UserError(
            f"--model_name_or_path {args.model_name_or_path!r} is neither a local folder nor reachable on the "
            f"model hub (offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Use "
            f"--model_name_or_path minilm for the packaged offline encoder, or download the model first. ({e})")
    if args.gradient_checkpointing:
        enable_activation_checkpointing(encoder)
    return tokenizer, encoder


# ----------------------------------------------------------------------------- checkpoints (best.pt, last.pt)


def plain(obj: Any) -> Any:
    """`obj` with numpy arrays as tensors and numpy scalars as Python numbers, so weights_only loading reads it."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu", what: str = "--load_path",
                    trust: bool = False) -> Dict[str, Any]:
    """A checkpoint written by this toolkit, read without unpickling code; an old pickle one only with `trust`."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path}: no such file" + (" (it is a folder: pass its best.pt)"
                                                          if os.path.isdir(path) else ""))
    if not looks_like_torch_file(path):
        raise UserError(f"{what} {path} is not a checkpoint (neither a PyTorch zip archive nor a pickle): pass a "
                        f"best.pt, a run directory or a model folder")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise UserError(f"{what} {path} is not a readable checkpoint (truncated or another format?): "
                            f"{type(e).__name__}: {str(e)[:200]}") from e
        if not trust:
            raise UserError(f"{what} {path} is a pickle checkpoint (an older format, or not this toolkit's): loading "
                            f"it can run code hidden in the file, so it is refused; {TRUST_HINT}") from None
        logger.warning("%s %s: loading a pickle checkpoint (--trust_checkpoint): it can run code; re-export it as a "
                       "model folder (save_pretrained) to share it", what, path)
        ckpt = _unpickle(path, device, what)
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise UserError(f"{what} {path} is not a readable checkpoint (truncated or another format?): "
                        f"{type(e).__name__}: {str(e)[:200]}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{what} {path} is not a checkpoint of this toolkit (no model weights in it)")
    return ckpt


def looks_like_torch_file(path: str | os.PathLike) -> bool:
    """Whether `path` starts as torch.save writes: a zip archive, or (before PyTorch 1.6) a pickle's protocol byte."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _unpickle(path: str | os.PathLike, device: torch.device | str, what: str) -> Any:
    """torch.load with pickle (the user passed --trust_checkpoint)."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        raise UserError(f"{what} {path} is not a readable checkpoint: {type(e).__name__}: {str(e)[:200]}") from e


def check_task(ckpt: Dict[str, Any], path: str, task_name: str, what: str = "--load_path") -> None:
    """Refuse a checkpoint of another task, naming both."""
    saved_task = ckpt.get("args", {}).get("task", task_name)
    if saved_task != task_name:
        raise UserError(f"{what} {path} is a {saved_task} checkpoint, not one of {task_name}")


def check_checkpoint(ckpt: Dict[str, Any], path: str, args: argparse.Namespace, task_name: str) -> None:
    """Refuse a checkpoint of another task or encoder, naming both (the task checks its own metadata in setup)."""
    check_task(ckpt, path, task_name)
    saved = ckpt.get("args", {})
    saved_model = saved.get("model_name_or_path")
    if saved_model is not None and utils.resolve_model_path(saved_model) != utils.resolve_model_path(
            args.model_name_or_path):
        raise UserError(f"--load_path {path} was trained with encoder {saved_model!r}, but this run uses "
                        f"--model_name_or_path {args.model_name_or_path!r}; pass the same encoder.")


def checkpoint_meta(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """The task metadata of a checkpoint; version 1 kept it at the top level."""
    return ckpt.get("meta") or {k: ckpt[k] for k in ("rel2id", "rid2col", "label_names") if k in ckpt}


# ----------------------------------------------------------------------------- the model folder: writing


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes."""
    from json_stream import file_sha256 as digest

    return digest(path)


def json_args(args: Dict[str, Any]) -> Dict[str, Any]:
    """The run's flags a shared model keeps: JSON types, without local paths and run-directory switches."""
    return json.loads(json.dumps({k: v for k, v in args.items() if k not in LOCAL_ARGS}, default=str))


def data_record(path: Optional[str], scores: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """{file name, SHA-256, scores} of a data file the model was scored on (None when there is no file)."""
    if not path or not os.path.isfile(path):
        return None
    record: Dict[str, Any] = {"file": os.path.basename(path), "sha256": file_sha256(path)}
    if scores is not None:
        record["scores"] = json.loads(json.dumps(plain(scores), default=str))
    return record


def distinct_tensors(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(each distinct tensor once, contiguous on the CPU; {alias: the name stored}) of a state dict whose modules
    share weights (the head reuses the encoder's last attention layer)."""
    first: Dict[Tuple[Any, ...], str] = {}
    weights, aliases = {}, {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in first:
            aliases[name] = first[key]
            continue
        first[key] = name
        weights[name] = t.detach().cpu().contiguous().clone()
    return weights, aliases


def folder_config(ckpt: Dict[str, Any], encoder_cfg: Any, training: Dict[str, Any], sha: str,
                  task: Optional[str] = None) -> Dict[str, Any]:
    """config.json of a model folder: what prediction needs, and what a reader wants to know, in JSON."""
    args, meta = json_args(ckpt.get("args", {})), json.loads(json.dumps(plain(checkpoint_meta(ckpt)), default=str))
    args["task"] = task or args.get("task", "docred")  # checked when the folder is loaded (check_checkpoint)
    loss_keys = ("loss", "shift", "margin_reg", "prob_shift", "afl_gamma_pos", "top_k")
    return {"format": FOLDER_FORMAT, "format_version": FOLDER_VERSION, "task": args["task"],
            "label_map": meta.get("rel2id"), "relation_names": meta.get("relation_names"),
            "settings": meta.get("settings"), "evidence": bool(meta.get("evidence", False)),
            "loss": {k: args[k] for k in loss_keys if k in args},
            "decision": json.loads(json.dumps(plain(ckpt.get("decision")), default=str)),
            "encoder": {"name": args.get("model_name_or_path"), "config": encoder_cfg.to_dict()},
            "training": training, "meta": meta, "args": args, "state_version": ckpt.get("version", STATE_VERSION),
            "weights": {"file": WEIGHTS, "sha256": sha}}


def save_model_folder(folder: str | os.PathLike, ckpt: Dict[str, Any], tokenizer: Any, encoder_cfg: Any,
                      training: Optional[Dict[str, Any]] = None, task: Optional[str] = None) -> Path:
    """Write a model folder: model.safetensors, the tokenizer files, config.json (last: it records the weights'
    SHA-256) and README.md. `training` is the record of the data the model was trained and scored on; `task` the
    task's name (default: the checkpoint's, else docred)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"cannot write a model folder to {folder}: it is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file on the way ("file/sub"), no permission
        raise UserError(f"cannot write a model folder to {folder}: {e.strerror}") from None
    saved = [Path(f).name for f in tokenizer.save_pretrained(folder) if Path(f).name != CONFIG]
    weights, aliases = distinct_tensors(ckpt["model"])
    with utils.atomic_path(folder / WEIGHTS) as tmp:
        save_file(weights, tmp, metadata={"format": "pt"})
        shutil.copymode(folder / "tokenizer_config.json", tmp)  # the mode the tokenizer files got from the umask
    config = folder_config(ckpt, encoder_cfg, training or {}, file_sha256(folder / WEIGHTS), task)
    config["weights"]["aliases"] = aliases
    config["tokenizer"] = {"files": {name: file_sha256(folder / name) for name in sorted(saved)
                                     if (folder / name).is_file()}}
    utils.atomic_write_json(folder / CONFIG, config, indent=1)
    utils.atomic_write_text(folder / CARD, model_card(config))
    return folder


def _card_metrics(config: Dict[str, Any]) -> List[Tuple[str, str, float]]:
    """(split, metric, value) of every recorded score, for the card."""
    out = []
    for split in ("dev", "test"):
        record = (config.get("training") or {}).get(split) or {}
        for name, value in (record.get("scores") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append((split, name, float(value)))
    return out


def use_hint(task: str) -> str:
    """How a model folder of `task` is used, for the log line that names it."""
    if task in PREDICT_TASKS:
        return "use it with predict.py --model, or check it with predict.py verify"
    return f"score data with it: {task}.py --load_path FOLDER --data_dir DIR (predict.py runs DocRED-style models)"


def _card_use(config: Dict[str, Any]) -> str:
    """The model card's commands: text for a DocRED model; PubTator, or entities given with their types, for a
    model of typed candidate pairs (biomedical), which spaCy's entities would never feed; test mode of its own
    task's script for the others (DialogRE, GoEmotions), which predict.py does not run."""
    task, dev = config.get("task", "docred"), ((config.get("training") or {}).get("dev") or {}).get("file")
    if task not in PREDICT_TASKS:
        return f"python {task}.py --load_path THIS_FOLDER --data_dir DIR  # scores DIR's dev and test files\n"
    verify = (f"python predict.py verify --model THIS_FOLDER --data {dev or 'dev.json'}  # re-scores the dev "
              f"file\n")
    pair_types = ((config.get("meta") or {}).get("settings") or {}).get("pair_types")
    if pair_types:
        head, tail = pair_types[0]
        return (f"python predict.py --model THIS_FOLDER --input abstracts.PubTator.txt --output pred.json\n"
                f"python predict.py --model THIS_FOLDER --input mine.jsonl  # entities given: {head}, {tail}\n"
                + verify)
    return ("python predict.py --model THIS_FOLDER --input docs.json --output pred.json\n"
            "python predict.py --model THIS_FOLDER --text \"Marie Curie was born in Warsaw.\"\n" + verify)


def model_card(config: Dict[str, Any]) -> str:
    """README.md of a model folder: Hugging Face's YAML header, then how it was trained, its scores and its use."""
    training, args = config.get("training") or {}, config.get("args") or {}
    dataset = training.get("data_name") or config["task"]
    metrics = _card_metrics(config)
    names = sorted({name for _, name, _ in metrics})
    results = "".join(f"      - {{name: {split} {name}, type: {name}, value: {value:.4f}}}\n"
                      for split, name, value in metrics)
    header = (f"---\nlibrary_name: docre-ncrl\nlicense: unknown  # set it: the encoder's and the data's terms apply\n"
              f"tags: [relation-extraction, {config['task']}]\ndatasets: [{dataset}]\nmetrics: [{', '.join(names)}]\n"
              f"model-index:\n- name: {config['task']}-{args.get('loss', 'model')}\n  results:\n"
              f"  - task: {{type: relation-extraction}}\n    dataset: {{name: {dataset}, type: {dataset}}}\n"
              f"    metrics:\n{results or '      []' + chr(10)}---\n")
    dev = training.get("dev") or {}
    rows = "".join(f"| {split} | {name} | {value:.2f} |\n" for split, name, value in metrics)
    loss = ", ".join(f"{k}={v}" for k, v in (config.get("loss") or {}).items())
    return (header + f"\n# {config['task']} model ({config['encoder']['name']}, {args.get('loss', '?')})\n\n"
            f"A document-level relation extraction model of the docre-ncrl toolkit (ATLOP + NCRL).\n\n"
            f"## Training\n\n- task: {config['task']}; encoder: `{config['encoder']['name']}`; loss: {loss}\n"
            f"- training data: `{training.get('train_file')}`; dev data: `{dev.get('file')}` "
            f"(SHA-256 `{dev.get('sha256')}`)\n- decision: `{json.dumps(config.get('decision'))}`; evidence: "
            f"{config.get('evidence')}\n- {_length(args)}, batch {args.get('train_batch_size')} "
            f"x {args.get('gradient_accumulation_steps')}, learning rate {args.get('learning_rate')}, seed "
            f"{args.get('seed')}\n\n## Scores (percent)\n\n| split | metric | value |\n|---|---|---|\n{rows}\n"
            f"## Use\n\n```bash\n{_card_use(config)}```\n\nLoading checks `model.safetensors` against the SHA-256 in `config.json`; nothing "
            f"in this folder is pickled. See docs/model-folder.md of the toolkit.\n")


def _length(args: Dict[str, Any]) -> str:
    """How long the run trained, as its flags say: --max_steps when set (it wins over the epochs), else the epochs."""
    steps = args.get("max_steps")
    return f"{steps} optimizer steps" if isinstance(steps, int) and steps > 0 else f"epochs {args.get('num_train_epochs')}"


# ----------------------------------------------------------------------------- the model folder: reading


def read_folder_config(folder: Path, what: str) -> Optional[Dict[str, Any]]:
    """config.json of a model folder of this toolkit; None when `folder` has no such file."""
    path = folder / CONFIG
    if not path.is_file():
        return None
    config = utils.read_json(path, what)
    if not isinstance(config, dict) or config.get("format") != FOLDER_FORMAT:
        return None  # e.g. a Hugging Face encoder's config.json
    check_folder_config(config, path, what)
    return config


# config.json's fields that loading reads, and their JSON types (None: may be null)
FOLDER_FIELDS = {"weights": (dict,), "args": (dict,), "meta": (dict,), "decision": (dict, type(None)),
                 "encoder": (dict,), "tokenizer": (dict,)}


def check_folder_config(config: Dict[str, Any], path: Path, what: str) -> None:
    """A UserError naming config.json and the field when a field loading reads has the wrong JSON type (a folder
    from elsewhere is untrusted: a string where an object belongs was an AttributeError)."""
    fields = [(name, config.get(name), types) for name, types in FOLDER_FIELDS.items() if name in config]
    weights, encoder = config.get("weights"), config.get("encoder")
    if isinstance(weights, dict):
        fields += [("weights.file", weights.get("file", WEIGHTS), (str,)), ("weights.sha256", weights.get("sha256"),
                   (str,)), ("weights.aliases", weights.get("aliases", {}), (dict,))]
    if isinstance(encoder, dict):
        fields.append(("encoder.config", encoder.get("config"), (dict,)))
    if isinstance(config.get("tokenizer"), dict):
        fields.append(("tokenizer.files", config["tokenizer"].get("files"), (dict,)))
    version = config.get("format_version", FOLDER_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > FOLDER_VERSION:
        raise UserError(f"{what} {path}: format_version {version!r}: written by a newer version of this toolkit "
                        f"(this one reads version {FOLDER_VERSION} and older): update the toolkit")
    for name, value, types in fields:
        if not isinstance(value, types):
            wanted = " or ".join({dict: "an object", str: "a string"}.get(t, "null") for t in types)
            raise UserError(f"{what} {path}: field {name} is {type(value).__name__}, not {wanted}: the file was "
                            f"changed; download the folder again")
    files = [("weights.file", weights.get("file", WEIGHTS))] if isinstance(weights, dict) else []
    files += [("tokenizer.files", name) for name in ((config.get("tokenizer") or {}).get("files") or {})]
    for name, file in files:
        if file in ("", ".", "..") or Path(file).name != file:
            raise UserError(f"{what} {path}: field {name} names {file!r}, not a file of the folder itself: the file "
                            f"was changed; download the folder again")


def locate_model(path: str | os.PathLike, what: str = "--load_path") -> Tuple[Path, Optional[Dict[str, Any]]]:
    """(model folder, its config) or (checkpoint file, None) of a run directory, a model folder or a .pt file."""
    path = Path(path)
    if path.is_file() and path.name in (CONFIG, WEIGHTS):
        path = path.parent
    if path.is_dir():
        for folder in (path, path / MODEL_DIR):
            config = read_folder_config(folder, what)
            if config is not None:
                return folder, config
        if (path / BEST).is_file():
            return path / BEST, None
        raise UserError(f"{what} {path} is not a model folder: it has neither {MODEL_DIR}/{CONFIG} nor {CONFIG} of "
                        f"this toolkit, nor {BEST} (a run directory has them once training has evaluated)")
    if not path.exists():
        raise UserError(f"{what} {path}: no such file or folder")
    return path, None


def load_model_folder(folder: Path, config: Dict[str, Any], what: str = "--model") -> Dict[str, Any]:
    """A model folder as a checkpoint dict (weights, args, meta, decision, encoder, config), its weights checked
    against the SHA-256 that config.json records before they are read."""
    from safetensors.torch import load_file

    weights = folder / (config.get("weights") or {}).get("file", WEIGHTS)
    expected = (config.get("weights") or {}).get("sha256")
    if not weights.is_file():
        raise UserError(f"{what} {folder}: {weights.name} is missing; download the whole folder again")
    actual = file_sha256(weights)
    if actual != expected:
        raise UserError(f"{what} {weights} does not match the SHA-256 its {CONFIG} records (changed or truncated "
                        f"file: {actual[:16]}... instead of {str(expected)[:16]}...); download the folder again")
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors raises its own error for damaged headers
        raise UserError(f"{what} {weights} is not a readable safetensors file: {str(e)[:200]}") from e
    check_tokenizer_files(folder, config, what)
    aliases = (config.get("weights") or {}).get("aliases") or {}
    state.update({alias: state[name] for alias, name in aliases.items() if name in state})
    return {"version": config.get("state_version", STATE_VERSION), "model": state, "args": config.get("args", {}),
            "meta": config.get("meta", {}), "decision": config.get("decision"), "encoder": config.get("encoder"),
            "folder": config}


def check_tokenizer_files(folder: Path, config: Dict[str, Any], what: str) -> None:
    """Each tokenizer file config.json records (folders from before the record have none) present, a regular file,
    and of its SHA-256: a missing tokenizer.json once loaded a 5-token vocabulary and predicted on [UNK]s."""
    for name, expected in ((config.get("tokenizer") or {}).get("files") or {}).items():
        path = folder / str(name)
        if not path.is_file():
            raise UserError(f"{what} {folder}: its tokenizer file {name} is missing (or not a regular file); "
                            f"download the whole folder again")
        if file_sha256(path) != expected:
            raise UserError(f"{what} {path} does not match the SHA-256 its {CONFIG} records (a changed tokenizer "
                            f"splits words into other ids than the model learned); download the folder again")


def peek_meta(path: str | os.PathLike, what: str = "--load_path") -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """(meta, args) of anything `locate_model` accepts, read without loading the weights (a .pt file is mapped, not
    read); None for a file that is not a readable checkpoint, such as an old pickle (`read_model` says why)."""
    found, config = locate_model(path, what)
    if config is not None:
        return config.get("meta") or {}, config.get("args") or {}
    try:
        ckpt = torch.load(found, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a pickle, a truncated or a foreign file: read_model refuses it with the reason
        return None
    return (checkpoint_meta(ckpt), ckpt.get("args") or {}) if isinstance(ckpt, dict) else None


def read_model(path: str | os.PathLike, what: str = "--load_path", trust: bool = False,
               device: torch.device | str = "cpu") -> Tuple[Dict[str, Any], Path]:
    """(checkpoint dict, where it was read: a model folder or a .pt file) of anything `locate_model` accepts."""
    found, config = locate_model(path, what)
    if config is not None:
        return load_model_folder(found, config, what), found
    return load_checkpoint(found, device, what, trust), found


def encoder_source(source: Path) -> Path:
    """The folder holding a model's tokenizer files: the model folder itself, or encoder/ beside a best.pt."""
    return source if source.is_dir() else source.parent / ENCODER_DIR


def checkpoint_encoder(ckpt: Dict[str, Any], source: Path) -> Tuple[Any, nn.Module]:
    """(tokenizer, untrained encoder) of a model read by `read_model` (`checkpoint_tokenizer`)."""
    from encoder_kernels import load_encoder

    tokenizer, config = checkpoint_tokenizer(ckpt, source)
    return tokenizer, load_encoder(None, config=config)


def checkpoint_tokenizer(ckpt: Dict[str, Any], source: Path) -> Tuple[Any, Any]:
    """(tokenizer, encoder config) of a model read by `read_model`: a model folder's config and tokenizer; a
    checkpoint's encoder/ beside it, else (runs from before model folders) its --model_name_or_path."""
    if ckpt.get("encoder"):  # a model folder
        config = encoder_config(ckpt["encoder"]["config"], f"{source / CONFIG}")
        return load_tokenizer(source, config), config
    folder = encoder_source(source)
    if not (folder / "config.json").is_file():
        name = ckpt.get("args", {}).get("model_name_or_path")
        if name is None:
            raise UserError(f"{source} has no {ENCODER_DIR}/ folder beside it and names no encoder in its args: "
                            f"it cannot be rebuilt")
        folder = utils.resolve_model_path(name)
    try:
        config = encoder_config(str(folder), f"{source}: encoder")
        return load_tokenizer(folder), config
    except OSError as e:
        raise UserError(f"{source} has no {ENCODER_DIR}/ folder beside it (a run from before model folders), and "
                        f"its encoder {str(folder)!r} (--model_name_or_path of its args) is not available here "
                        f"(offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): put the encoder's "
                        f"config.json and tokenizer files into {source.parent / ENCODER_DIR}. ({str(e)[:200]})") from e


def load_weights(model: nn.Module, ckpt: Dict[str, Any], path: Path, new_modules: bool = False) -> None:
    """The checkpoint's weights into `model`, with one line naming the file when they do not fit. With `new_modules`
    (fine-tuning), a top-level module the checkpoint holds nothing of (the entity heads added to a relation model) is
    left as initialized, and the log says so."""
    try:
        result = model.load_state_dict(ckpt["model"], strict=False)
    except RuntimeError as e:  # shapes that differ
        raise UserError(f"{path}: its weights do not fit the model its settings describe: "
                        f"{' '.join(str(e).split())[:400]}") from e
    held = {k.split(".")[0] for k in ckpt["model"]}
    new = sorted({k.split(".")[0] for k in result.missing_keys} - held) if new_modules else []
    missing = [k for k in result.missing_keys if k.split(".")[0] not in new]
    if missing or result.unexpected_keys:
        parts = [f"{len(keys)} {what}, e.g. {', '.join(keys[:3])}" for what, keys in
                 (("missing", missing), ("unexpected", result.unexpected_keys)) if keys]
        raise UserError(f"{path}: its weights do not fit the model its settings describe ({'; '.join(parts)})")
    if new:
        logger.info("%s holds no weights of %s: new layers, trained from their initial values", path, ", ".join(new))


# ----------------------------------------------------------------------------- a model ready to use


@dataclass
class Pretrained:
    """A trained model loaded from its folder, in eval mode: the model, its tokenizer, the checkpoint without
    weights (args, meta, decision; a model folder's config under "folder") and where it came from."""
    model: nn.Module
    tokenizer: Any
    checkpoint: Dict[str, Any]
    path: Path  # the model folder or the .pt file read

    @property
    def args(self) -> argparse.Namespace:
        return argparse.Namespace(**self.checkpoint.get("args", {}))

    @property
    def meta(self) -> Dict[str, Any]:
        return checkpoint_meta(self.checkpoint)

    @property
    def config(self) -> Dict[str, Any]:
        """config.json of a model folder; empty for a .pt checkpoint."""
        return self.checkpoint.get("folder") or {}

    def decision(self) -> Decision:
        return Decision.from_checkpoint(self.checkpoint, self.checkpoint.get("args", {}).get("top_k", -1))

    def save(self, folder: str | os.PathLike) -> Path:
        """Export this model as a model folder (see `save_model_folder`), keeping its training record."""
        return save_pretrained(folder, {**self.checkpoint, "model": self.model.state_dict()}, self.tokenizer,
                               self.model.encoder.config, self.config.get("training"))


def save_pretrained(folder: str | os.PathLike, ckpt: Dict[str, Any], tokenizer: Any, config: Any,
                    training: Optional[Dict[str, Any]] = None) -> Path:
    """Export a model folder (safetensors, config.json, tokenizer files, model card) from a checkpoint dict."""
    return save_model_folder(folder, {k: ckpt[k] for k in MODEL_KEYS if k in ckpt}, tokenizer, config, training)


def write_encoder_folder(folder: str | os.PathLike, tokenizer: Any, config: Any) -> None:
    """encoder/: the encoder's config.json and the tokenizer files, which make a run directory's best.pt loadable."""
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


Build = Callable[[Any, nn.Module], nn.Module]  # (tokenizer, untrained encoder) -> the task's model


# what building a model from an untrusted config raises (a size of "six", a block of 0, an unknown model type)
BUILD_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError, ZeroDivisionError, OverflowError,
                RuntimeError)


@contextlib.contextmanager
def buildable(source: Path) -> Iterator[None]:
    """What building from an untrusted config raises, as one line naming `source`."""
    try:
        yield
    except UserError:
        raise
    except BUILD_ERRORS as e:
        raise UserError(f"{source}: its settings do not describe a model this toolkit can build "
                        f"({type(e).__name__}: {str(e)[:200]})") from e


def check_shapes(ckpt: Dict[str, Any], source: Path, build: Build, tokenizer: Any, config: Any) -> None:
    """Build the model the checkpoint's settings describe on the meta device (no memory) and compare every tensor's
    shape with its weights: settings that cannot build a model, or that would allocate far more than the weights
    hold (a vocabulary of 1e9), are one line before anything is allocated."""
    from encoder_kernels import load_encoder

    with buildable(source), torch.device("meta"):
        model = build(tokenizer, load_encoder(None, config=config))
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    held = {k: tuple(v.shape) for k, v in ckpt["model"].items()}
    differ = [f"{k}: {held.get(k, 'missing')} in the weights, {wanted.get(k, 'unused')} in the model"
              for k in sorted(wanted.keys() | held.keys()) if wanted.get(k) != held.get(k)]
    if differ:
        raise UserError(f"{source}: its weights do not fit the model its settings describe ({len(differ)} tensors, "
                        f"e.g. {'; '.join(differ[:3])})")


def build_pretrained(ckpt: Dict[str, Any], source: Path, build: Build, device: torch.device | str = "cpu"
                     ) -> Pretrained:
    """`build(tokenizer, encoder)` on the model's encoder, with the checkpoint's weights, on `device` (its shapes
    checked first: `check_shapes`)."""
    from encoder_kernels import load_encoder

    with buildable(source):
        tokenizer, config = checkpoint_tokenizer(ckpt, source)
    check_shapes(ckpt, source, build, tokenizer, config)
    model = build(tokenizer, load_encoder(None, config=config))
    load_weights(model, ckpt, source)
    model.to(device).eval()
    return Pretrained(model, tokenizer, {k: v for k, v in ckpt.items() if k != "model"}, source)


def load_pretrained(path: str | os.PathLike, build: Build, device: torch.device | str = "cpu",
                    what: str = "--model", trust: bool = False) -> Pretrained:
    """The trained model of a run directory, model folder or .pt file: nothing else and no network needed.

    `build(tokenizer, encoder)` makes the task's model on the untrained encoder (the engine knows no task).
    """
    ckpt, source = read_model(path, what, trust)
    return build_pretrained(ckpt, source, build, device)


# ----------------------------------------------------------------------------- test mode


ENGINE_SETTINGS = ("model_name_or_path", "loss", "shift", "margin_reg", "prob_shift", "top_k")


RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "state", "rng")  # what Trainer.save_last writes
# the replay of the epochs' batches, and what last.pt's optimizer and schedule hold (a new value would be ignored)
RESUME_SETTINGS = ("train_batch_size", "gradient_accumulation_steps", "seed", "world_size", "learning_rate",
                   "classifier_lr", "weight_decay", "classifier_weight_decay", "adam_epsilon", "warmup_ratio")


def read_resume(path: Path, args: argparse.Namespace, task_name: str, model_settings: Tuple[str, ...]
                ) -> Dict[str, Any]:
    """--resume's last.pt, read and checked before the run directory is written: a checkpoint of training state
    (not a best.pt), of this task, saved by a run with this run's encoder, loss, model settings, batch and seed;
    otherwise one line naming the file and the flags that differ."""
    ckpt = load_checkpoint(str(path), "cpu", "--resume", getattr(args, "trust_checkpoint", False))
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"--resume: {path} holds no training state ({', '.join(missing)} missing: a best.pt or a "
                        f"model's weights, not a last.pt); pass --overwrite to start that run over")
    check_task(ckpt, str(path), task_name, "--resume:")
    saved, differ = ckpt.get("args") or {}, []
    for name in ENGINE_SETTINGS + tuple(model_settings) + RESUME_SETTINGS:
        if name not in saved:
            continue
        value = getattr(args, name, None)
        same = (utils.resolve_model_path(saved[name]) == utils.resolve_model_path(value)
                if name == "model_name_or_path" else json.dumps(saved[name]) == json.dumps(value))
        if not same:
            label = "processes (torchrun's --nproc_per_node)" if name == "world_size" else f"--{name}"
            differ.append(f"{label} {saved[name]!r} there, {value!r} here")
    if differ:
        raise UserError(f"--resume: {path} was saved by a run with other flags ({'; '.join(differ)}): resume with "
                        f"that run's flags (its args.json), or pass another --output_dir")
    return ckpt


def adopt_settings(args: argparse.Namespace, defaults: Dict[str, Any], ckpt: Dict[str, Any],
                   model_settings: Tuple[str, ...], path: str, given: Optional[set] = None,
                   fine_tuning: bool = False) -> List[str]:
    """Test mode: the model's settings (encoder, loss and rule, the task's `model_settings`) from the checkpoint's
    args; a flag given explicitly (in `given`, else: not at its default) with another value is an error naming both.
    Fine-tuning: the task's `model_settings` not given explicitly (the head sizes the weights were trained with).
    Returns the adopted `name=value`s that differ from this run's defaults, for the log."""
    saved, adopted = ckpt.get("args", {}), []
    for name in tuple(model_settings) if fine_tuning else ENGINE_SETTINGS + tuple(model_settings):
        if name not in saved:
            continue  # an older checkpoint without it: keep the flag
        value, default = getattr(args, name), defaults.get(name)
        explicit = name in given if given is not None else value != default
        if explicit and (name == "model_name_or_path" or fine_tuning):
            continue  # check_checkpoint names both encoders; a fine-tuning run may change a setting (load_weights
            # says when the weights cannot take it)
        if explicit and value != saved[name]:
            raise UserError(f"--load_path {path} was trained with --{name} {saved[name]!r}, but this run passes "
                            f"--{name} {value!r}: drop the flag (test mode takes it from the checkpoint)")
        setattr(args, name, saved[name])
        if saved[name] != default:
            adopted.append(f"{name}={saved[name]}")
    return adopted
