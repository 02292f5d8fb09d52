"""Speed and memory of preprocessing, training and evaluation, each phase in a fresh process.

    # the packaged MiniLM encoder on real documents (BENCHMARKS.md, first table)
    python scripts/benchmark.py --data ../shared/data/redocred/dev_revised.json --model minilm --docs 48 --json
    # a random roberta-base-shaped encoder on synthetic 1024-token documents, our path vs ATLOP's
    python scripts/benchmark.py --encoder_config roberta-base --synthetic_tokens 1024 --docs 2 --batch_size 2
    python scripts/benchmark.py --encoder_config roberta-base --synthetic_tokens 1024 --docs 2 --batch_size 2 \
        --attention eager-all-layers
    # time and memory against document length and entity count, with scaling.png
    python scripts/benchmark.py --model minilm --scaling --plot scaling.png
    # where a training step and an evaluation batch spend their time (torch.profiler, labelled regions)
    python scripts/benchmark.py --data ../shared/data/redocred/dev_revised.json --model minilm --docs 48 \
        --threads 1 --profile 4

Each phase (prepro, train, eval) runs in its own Python process, so one phase's peak memory never hides
another's; every phase first runs a warm-up that is not timed. Peak memory is the process's high-water
resident set (VmHWM; `ru_maxrss` would include the parent's peak) and, on a GPU,
`torch.cuda.max_memory_allocated`. Times are wall-clock; CPU seconds are reported beside them because a
shared machine slows wall-clock time more than the CPU time a phase needs; `--repeat R` times every batch
R times and keeps each batch's fastest run, which drops most stalls caused by other processes. Train and
eval also time the bare encoder on the same batches (the ceiling; `--no_ceiling` skips it).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import losses  # noqa: E402
import utils  # noqa: E402
from random_encoders import ENCODER_SHAPES  # noqa: E402

logger = logging.getLogger("benchmark")

PHASES = ("prepro", "train", "eval")
ATTENTION_PATHS = ("ours", "eager-all-layers")
# vocabulary sizes of the published checkpoints, so embedding and optimizer memory match the real models
PUBLISHED_VOCAB = {"bert": 30522, "roberta": 50265, "deberta": 128100}
REQUIRED_KEYS = ("prepro_docs_per_s", "train_docs_per_s", "train_s_per_step", "eval_docs_per_s",
                 "prepro_peak_rss_mb", "train_peak_rss_mb", "eval_peak_rss_mb")


# ----------------------------------------------------------------------------- flags
def int_list(text: str) -> List[int]:
    """'256,512' -> [256, 512]."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and encoder")
    g.add_argument("--data", default=None, help="a DocRED JSON file (needed for the prepro phase)")
    g.add_argument("--rel2id", default=None, help="label map (default: <data dir>/rel_info.json, else meta/)")
    g.add_argument("--model", default=None, help="encoder name or folder; `minilm` is the packaged one (default)")
    g.add_argument("--encoder_config", default=None, choices=sorted(ENCODER_SHAPES),
                   help="a randomly initialised encoder of this published shape, with a tokenizer trained on "
                        "the data's text (no download)")
    g.add_argument("--tokenizer_vocab", type=utils.COUNT, default=8000, help="vocabulary of that synthetic tokenizer")
    g.add_argument("--docs", type=utils.COUNT, default=48, help="documents trained and evaluated on (the file's first)")
    g.add_argument("--prepro_docs", type=utils.number_flag(int, 1, off=0, off_means="the whole file"), default=0,
                   help="documents preprocessed (0: the whole file)")
    g.add_argument("--synthetic_tokens", type=utils.COUNT, default=None,
                   help="train and evaluate on synthetic documents of this many tokens instead of --data's")
    g.add_argument("--synthetic_entities", type=int, default=20, help="entities per synthetic document")
    g = p.add_argument_group("run")
    g.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of prepro,train,eval")
    g.add_argument("--batch_size", type=utils.COUNT, default=4, help="documents per training step")
    g.add_argument("--eval_batch_size", type=utils.COUNT, default=None,
                   help="documents per forward in eval (default --batch_size)")
    g.add_argument("--max_seq_length", type=utils.SEQ_LENGTH, default=1024)
    g.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    g.add_argument("--threads", type=utils.COUNT, default=2, help="torch (and tokenizer) threads")
    g.add_argument("--loss", default="ncrl", choices=losses.available_losses(),
                   help="the loss trained with (see losses.py)")
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    g.add_argument("--attention", default="ours", choices=ATTENTION_PATHS,
                   help="ours: SDPA encoder, attention rows of the mentions only; eager-all-layers: ATLOP's path, "
                        "eager attention returning every layer's weights")
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument("--mmap_threshold_mb", type=utils.NON_NEGATIVE, default=None,
                   help="train.py's flag of that name (default: train.py's default; 0: glibc's dynamic threshold)")
    g.add_argument("--no_ceiling", dest="ceiling", action="store_false",
                   help="skip timing the bare encoder (forward and backward in train, forward in eval, no head "
                        "and no loss) on the same batches; our path only")
    g.add_argument("--warmup_steps", type=utils.COUNT_OR_ZERO, default=1,
                   help="untimed batches before each timed phase")
    g.add_argument("--repeat", type=utils.COUNT, default=1,
                   help="time every batch this many times and keep the fastest (steadier on a shared machine)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--profile", type=utils.COUNT_OR_ZERO, default=0, metavar="N",
                   help="instead of timing, profile N training steps and N evaluation batches with torch.profiler "
                        "and print where their time goes (encoder, attention, pooling, bilinear, loss, ...)")
    g = p.add_argument_group("scaling")
    g.add_argument("--scaling", action="store_true",
                   help="time train and eval on synthetic documents of growing length and entity count")
    g.add_argument("--scaling_lengths", type=int_list, default=[256, 512, 1024, 2048])
    g.add_argument("--scaling_entities", type=int_list, default=[10, 20, 40, 80])
    g.add_argument("--scaling_base_tokens", type=utils.COUNT, default=512, help="document length of the entity sweep")
    g.add_argument("--scaling_base_entities", type=int, default=20, help="entity count of the length sweep")
    g.add_argument("--scaling_docs", type=utils.COUNT, default=4, help="documents per scaling point")
    g.add_argument("--plot", default="scaling.png", help="where --scaling draws its figure")
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    g.add_argument("--output", default=None, help="also write the JSON object to this file")
    p.add_argument("--_phase_spec", default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args._phase_spec:
        return args
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown or not phases:
        parser.error(f"--phases takes a comma-separated subset of {','.join(PHASES)}, got {args.phases!r}")
    args.phases = [x for x in PHASES if x in phases]
    if args.model and args.encoder_config:
        parser.error("pass either --model or --encoder_config, not both")
    if args.model is None and args.encoder_config is None:
        args.model = "minilm"
    if args.scaling:
        args.phases = [x for x in args.phases if x != "prepro"]
    elif args.synthetic_tokens is None and args.data is None:
        parser.error("--data is required unless --synthetic_tokens or --scaling is given")
    elif "prepro" in args.phases and args.data is None:
        args.phases.remove("prepro")  # synthetic documents have no text to preprocess
    if not args.phases:
        parser.error("no phase left to run")
    if args.profile:
        args.phases = [x for x in args.phases if x != "prepro"]
        if args.scaling or not args.phases:
            parser.error("--profile profiles the train and eval phases of one setting (not --scaling)")
    if min(args.synthetic_entities, args.scaling_base_entities, *args.scaling_entities) < 2:
        parser.error("synthetic documents need at least 2 entities (one pair)")
    for tokens, entities in synthetic_shapes(args):
        if tokens < entities + 3:
            parser.error(f"synthetic documents of {tokens} tokens leave no room for {entities} entities (they need "
                         f"at least entities + 3 tokens)")
    if args.eval_batch_size is None:
        args.eval_batch_size = args.batch_size
    try:
        args.device = utils.select_device(args.device).type
    except utils.UserError as e:
        parser.error(str(e))
    return args


def synthetic_shapes(args: argparse.Namespace) -> List[Tuple[int, int]]:
    """(tokens, entities) of every synthetic document this run makes."""
    if args.scaling:
        return scaling_points(args)
    return [(args.synthetic_tokens, args.synthetic_entities)] if args.synthetic_tokens else []


# ----------------------------------------------------------------------------- measuring
def peak_rss_mb() -> float:
    """This process's peak resident set in MiB (the high-water mark of its own address space)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def current_rss_mb() -> float:
    """This process's resident set now, in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def fastest(run: Callable[[int], Any], n_items: int, repeat: int, device) -> Tuple[float, float]:
    """(wall, CPU) seconds of `run(0) ... run(n_items - 1)`, each item's time the fastest of `repeat` runs.

    GPU work is finished before each clock reading. Taking each item's minimum drops the stalls that other
    processes cause on a shared machine without hiding a consistently slow item.
    """
    return fastest_alternating([run], n_items, repeat, device)[0]


def fastest_alternating(runs: Sequence[Callable[[int], Any]], n_items: int, repeat: int, device,
                        after_first: Optional[Callable[[], None]] = None) -> List[Tuple[float, float]]:
    """`fastest` of each of `runs` over the same items, their rounds alternating (A, B, A, B, ...) so a change
    of load on a shared machine slows all of them alike; `after_first()` is called once the first round of
    `runs[0]` is done (e.g. to read its peak memory before the others run)."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    wall = np.full((len(runs), repeat, n_items), np.inf)
    cpu = np.full((len(runs), repeat, n_items), np.inf)
    for r in range(repeat):
        for k, run in enumerate(runs):
            for i in range(n_items):
                sync()
                w0, c0 = time.perf_counter(), time.process_time()
                run(i)
                sync()
                wall[k, r, i], cpu[k, r, i] = time.perf_counter() - w0, time.process_time() - c0
            if r == 0 and k == 0 and after_first is not None:
                after_first()
    return [(float(w.min(0).sum()), float(c.min(0).sum())) for w, c in zip(wall, cpu)]


def machine_info() -> Dict[str, Any]:
    """CPU, memory, GPU and library versions of this machine."""
    import tokenizers
    import torch
    import transformers

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "cpu_amx_bf16": utils.cpu_multiplies_bf16()}
    with contextlib.suppress(ValueError, OSError, AttributeError):
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    return info


def load_average() -> Optional[float]:
    """The 1-minute load average, or None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


# ----------------------------------------------------------------------------- synthetic documents
def synthetic_features(n_docs: int, n_tokens: int, n_entities: int, tokenizer: Any, num_class: int,
                       seed: int = 0) -> List[Dict[str, Any]]:
    """Features (see ARCHITECTURE.md) of random documents of exactly `n_tokens` tokens and `n_entities`
    entities of 1-3 mentions each, with about one positive relation per entity."""
    from feature_store import pair_index

    specials = np.asarray(tokenizer.all_special_ids, dtype=np.int64)
    words = np.setdiff1d(np.arange(len(tokenizer), dtype=np.int64), specials)
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    slots = np.arange(1, n_tokens - 2)  # a mention covers [s, s + 2) inside the special tokens
    if n_tokens < 4 or len(slots) < n_entities:
        raise ValueError(f"{n_tokens} tokens leave no room for {n_entities} entities")
    rng = np.random.default_rng(seed)
    hts = pair_index(n_entities)  # [n_pairs, 2]
    features = []
    for d in range(n_docs):
        counts = rng.integers(1, 4, n_entities)
        counts = np.minimum(counts, max(1, len(slots) // n_entities))
        starts = rng.choice(slots, int(counts.sum()), replace=False)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        n_pos = min(n_entities, len(hts))
        labels = np.stack([rng.choice(len(hts), n_pos, replace=False),
                           rng.integers(1, num_class, n_pos) if num_class > 1 else np.ones(n_pos, np.int64)], 1)
        features.append({
            "title": f"synthetic-{d}",
            "input_ids": np.concatenate([[start], rng.choice(words, n_tokens - 2), [end]]).astype(np.int64),
            "entity_pos": [[(int(s), int(s) + 2) for s in starts[a:b]] for a, b in zip(bounds[:-1], bounds[1:])],
            "mention_sent_ids": [[0] * int(c) for c in counts],
            "hts": hts.copy(),
            "labels": labels.astype(np.int64),  # [n_pos, 2]
        })
    return features


def scaling_points(args: argparse.Namespace) -> List[Tuple[int, int]]:
    """(tokens, entities) of the length sweep, then of the entity sweep, without repeats."""
    points = [(n, args.scaling_base_entities) for n in args.scaling_lengths]
    points += [(args.scaling_base_tokens, e) for e in args.scaling_entities]
    return list(dict.fromkeys(points))


# ----------------------------------------------------------------------------- encoder and model
def load_tokenizer(spec: Dict[str, Any]):
    """The tokenizer of --model, or the synthetic one the parent trained for --encoder_config."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec["tokenizer_dir"] or utils.resolve_model_path(spec["args"]["model"]))


def build_encoder(args: Dict[str, Any], tokenizer):
    """The encoder: loaded from --model, or random of --encoder_config's shape; eager for ATLOP's path."""
    import torch

    eager = args["attention"] == "eager-all-layers"
    if args["encoder_config"]:
        from random_encoders import build_random_encoder

        family = ENCODER_SHAPES[args["encoder_config"]][0]
        vocab = len(tokenizer)
        if not args["encoder_config"].startswith("tiny"):
            vocab = max(vocab, PUBLISHED_VOCAB[family])
        torch.manual_seed(args["seed"])
        # the published checkpoints' dropout: it decides which attention kernel training runs
        dropout = 0.0 if args["encoder_config"].startswith("tiny") else 0.1
        encoder = build_random_encoder(args["encoder_config"], vocab, pad_token_id=tokenizer.pad_token_id,
                                       dropout=dropout)
        if eager:
            encoder.set_attn_implementation("eager")
    elif eager:
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(utils.resolve_model_path(args["model"]), attn_implementation="eager")
    else:
        from encoder_kernels import load_encoder

        encoder = load_encoder(utils.resolve_model_path(args["model"]))
    if eager:
        encoder.config.output_attentions = True  # every layer returns its weights, as in ATLOP
    return encoder


def build_model(args: Dict[str, Any], tokenizer, num_class: int, max_seq_length: int):
    """DocREModel over the encoder; ATLOP's path reads the last layer's eager weights of a padded batch."""
    import torch

    from model import DocREModel
    from settings import DocRESettings

    encoder = build_encoder(args, tokenizer)
    torch.manual_seed(args["seed"])
    settings = DocRESettings({"Na": 0, **{f"P{i}": i for i in range(1, num_class)}}, max_seq_length=max_seq_length)
    extra = ({"attention_rows": "eager", "unpad": False, "mask_dropout": False}
             if args["attention"] == "eager-all-layers" else {})
    return DocREModel.from_settings(settings, encoder, tokenizer,
                                    gradient_checkpointing=args["gradient_checkpointing"], **extra)


def training_defaults(args: Dict[str, Any]) -> argparse.Namespace:
    """train.py's optimisation and loss defaults, with this run's loss, batch size and amp."""
    from engine.task import add_training_args

    hp = add_training_args(argparse.ArgumentParser(allow_abbrev=False)).parse_args([])
    hp.loss, hp.train_batch_size, hp.amp = args["loss"], args["batch_size"], args["amp"]
    if args["mmap_threshold_mb"] is not None:
        hp.mmap_threshold_mb = args["mmap_threshold_mb"]
    return hp


def engine_trainer(hp: argparse.Namespace, model, features: Sequence[dict], collate):
    """The engine's Trainer over `features` with the settings `hp` and the start-up settings of a run, without
    evaluation or a run folder."""
    from engine.runner import configure_process
    from engine.task import build_loss_from_args
    from engine.trainer import Trainer

    configure_process(hp)
    return Trainer(hp, model, model.encoder, build_loss_from_args(hp), features, collate,
                   evaluate=None, run=None, metric="f1", checkpoint_meta={})


def official_records(logits, features: Sequence[dict], loss_fn, top_k: int, id2rel: Dict[int, str]) -> List[dict]:
    """The official records of `logits` [P, K+1] under the untuned decision, through the library's one path."""
    import evaluation
    from losses import Decision

    facts = evaluation.facts_of_outputs(logits, features, Decision(top_k=top_k), loss_fn, id2rel)
    return evaluation.official_records(facts, features)


def index_batches(n: int, size: int) -> List[List[int]]:
    """0 .. n-1 in consecutive batches of `size` (the last one shorter)."""
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


# ----------------------------------------------------------------------------- phases (child process)
def read_features(path: str, tokenizer, rel2id: Dict[str, int], max_seq_length: int):
    """Features of a DocRED file, without the cache."""
    import prepro
    from settings import DocRESettings

    settings = DocRESettings(rel2id, max_seq_length=max_seq_length)
    return prepro.read_docred(path, tokenizer, settings, cache_dir=None, show_progress=False)


def phase_prepro(spec: Dict[str, Any], tokenizer, rel2id: Dict[str, int], device) -> Dict[str, Any]:
    """Documents per second of read_docred (tokenizing, validating, building features; cache off)."""
    max_len = spec["args"]["max_seq_length"]
    read_features(spec["warmup_file"], tokenizer, rel2id, max_len)
    out: List[Any] = [None]
    wall, cpu = fastest(lambda i: out.__setitem__(0, read_features(spec["prepro_file"], tokenizer, rel2id, max_len)),
                        1, spec["args"]["repeat"], device)
    n = len(out[0])
    return {"prepro_docs": n, "prepro_docs_per_s": n / wall, "prepro_wall_s": wall, "prepro_cpu_s": cpu,
            "prepro_tokens_mean": float(out[0].stats["token_length_mean"])}


def phase_features(spec: Dict[str, Any], tokenizer, rel2id: Dict[str, int]) -> List[Dict[str, Any]]:
    """The documents trained and evaluated on: synthetic ones, or the first --docs of --data."""
    if spec.get("tokens"):
        return synthetic_features(spec["n_docs"], spec["tokens"], spec["entities"], tokenizer, len(rel2id),
                                  spec["args"]["seed"])
    return list(read_features(spec["docs_file"], tokenizer, rel2id, spec["args"]["max_seq_length"]))


def bare_inputs(model, features: Sequence[dict], batches: Sequence[Sequence[int]], collate, device
                ) -> List[List[Tuple[Any, Any]]]:
    """Per batch, the (ids, mask) pairs our model runs its encoder on (its windows, unpadded on CPU)."""
    out = []
    for batch in batches:
        b = collate([features[i] for i in batch])
        # on the device first: the model unpads CPU tensors only, so CPU tensors would give a GPU run one call per
        # sequence where our forward makes one call per batch
        out.append(model.encoder_inputs(b["input_ids"].to(device), b["attention_mask"].to(device)))
    return out


def bare_encoder_run(model, pieces: Sequence[Tuple[Any, Any]], device, dtype, backward: bool) -> None:
    """The encoder alone on one batch's inputs, as Hugging Face loads it (plain SDPA, nn.Dropout, no head, no loss):
    forward, and with `backward` the backward of the sum of its last hidden states (the gradients are
    dropped afterwards so the next training step does not see them)."""
    import torch

    from encoder_kernels import configure_encoder

    encoder = model.encoder
    if backward:  # evaluation drops nothing either way
        configure_encoder(encoder, checkpoint_attention=False, mask_dropout=False)
    try:
        with torch.set_grad_enabled(backward), utils.autocast(device, dtype):
            total = sum(encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float().sum()
                        for ids, mask in pieces)
        if backward:
            total.backward()
            encoder.zero_grad(set_to_none=True)
    finally:
        if backward:  # back to the kernels of our path (--attention ours: the model's defaults)
            configure_encoder(encoder, attention_weights=model.attention_rows == "eager")


def with_ceiling(args: Dict[str, Any]) -> bool:
    """Whether train and eval also time the bare encoder (our attention path only)."""
    return args["ceiling"] and args["attention"] == "ours"


def ceiling_figures(phase: str, n_docs: int, ours: Tuple[float, float], bare: Tuple[float, float]
                    ) -> Dict[str, Any]:
    """The bare encoder's figures and our share of its speed (ours docs/s over its docs/s)."""
    return {f"{phase}_bare_docs_per_s": n_docs / bare[0], f"{phase}_bare_wall_s": bare[0],
            f"{phase}_bare_cpu_s": bare[1], f"{phase}_fraction_of_bare": bare[0] / ours[0]}


def phase_train(spec: Dict[str, Any], model, features: Sequence[dict], collate, device, dtype) -> Dict[str, Any]:
    """Documents per second and seconds per optimizer step of the engine's own training step
    (collate, forward, loss, backward, clipping, AdamW), one micro-batch per step; with the ceiling, the
    bare encoder's forward and backward on the same batches, alternating with ours."""
    args = spec["args"]
    trainer = engine_trainer(training_defaults(args), model, features, collate)
    batches = index_batches(len(features), args["batch_size"])
    model.train()
    rss_start = current_rss_mb()
    for batch in batches[:args["warmup_steps"]]:
        trainer.step([batch])
    losses = [0.0] * len(batches)
    peak: Dict[str, float] = {}

    def step(i: int) -> None:
        losses[i] = trainer.step([batches[i]])["loss"]

    runs: List[Callable[[int], Any]] = [step]
    if with_ceiling(args):
        pieces = bare_inputs(model, features, batches, collate, device)
        for p in pieces[:args["warmup_steps"]]:
            bare_encoder_run(model, p, device, dtype, backward=True)
        runs.append(lambda i: bare_encoder_run(model, pieces[i], device, dtype, backward=True))
    timed = fastest_alternating(runs, len(batches), args["repeat"], device,
                                after_first=lambda: peak.update(train_peak_rss_mb=peak_rss_mb()))
    wall, cpu = timed[0]
    out = {"train_docs": len(features), "train_steps": len(batches), "train_docs_per_s": len(features) / wall,
           "train_s_per_step": wall / len(batches), "train_wall_s": wall, "train_cpu_s": cpu,
           "train_rss_at_start_mb": rss_start, "train_final_loss": losses[-1], **peak}
    if len(timed) > 1:
        out.update(ceiling_figures("train", len(features), timed[0], timed[1]))
    return out


def phase_eval(spec: Dict[str, Any], model, features: Sequence[dict], collate, device, dtype,
               rel2id: Dict[str, int]) -> Dict[str, Any]:
    """Documents per second of prediction: forward passes, decoding and official records; with the
    ceiling, the bare encoder's forward on the same batches, alternating with ours."""
    import torch

    from engine.inference import predict_outputs
    from engine.task import build_loss_from_args

    args = spec["args"]
    hp = training_defaults(args)
    loss_fn = build_loss_from_args(hp)
    id2rel = {v: k for k, v in rel2id.items()}
    bs = args["eval_batch_size"]
    chunks = [features[i:i + bs] for i in range(0, len(features), bs)]
    predict = lambda docs: predict_outputs(model, docs, collate, lambda f: len(f["hts"]), bs, dtype,  # noqa: E731
                                           progress=False).logits
    rss_start = current_rss_mb()
    for docs in chunks[:args["warmup_steps"]]:
        predict(docs)
    logits: List[Optional[torch.Tensor]] = [None] * len(chunks)
    records: List[Any] = []
    peak: Dict[str, float] = {}

    def item(i: int) -> None:
        if i < len(chunks):
            logits[i] = predict(chunks[i])  # [P_i, K+1]
        else:  # decoding the whole set into official records
            records[:] = official_records(torch.cat(logits), features, loss_fn, hp.top_k, id2rel)

    runs: List[Callable[[int], Any]] = [item]
    if with_ceiling(args):
        model.eval()
        pieces = bare_inputs(model, features, index_batches(len(features), bs), collate, device) + [[]]  # nothing to decode
        for p in pieces[:args["warmup_steps"]]:
            bare_encoder_run(model, p, device, dtype, backward=False)
        runs.append(lambda i: bare_encoder_run(model, pieces[i], device, dtype, backward=False))
    timed = fastest_alternating(runs, len(chunks) + 1, args["repeat"], device,
                                after_first=lambda: peak.update(eval_peak_rss_mb=peak_rss_mb()))
    wall, cpu = timed[0]
    out = {"eval_docs": len(features), "eval_docs_per_s": len(features) / wall, "eval_wall_s": wall,
           "eval_cpu_s": cpu, "eval_rss_at_start_mb": rss_start, "eval_predictions": len(records), **peak}
    if len(timed) > 1:
        out.update(ceiling_figures("eval", len(features), timed[0], timed[1]))
    return out


# ----------------------------------------------------------------------------- profile (child process)
# (label, parent label) of the regions `instrument` marks, in the order of the table; a backward event is
# counted under "backward" (its recomputed attention and the bilinear's backward have rows of their own)
PROFILE_ROWS = (("step", None), ("collate", "step"), ("model forward", "step"), ("encoder forward", "model forward"),
                ("attention core", "encoder forward"), ("attention rows recompute", "model forward"),
                ("entity pooling", "model forward"), ("context pooling", "model forward"),
                ("extractors + group bilinear", "model forward"), ("group bilinear", "extractors + group bilinear"),
                ("loss", "step"), ("backward", "step"), ("attention core backward", "backward"),
                ("group bilinear backward", "backward"), ("clip + AdamW + schedule", "step"),
                ("decode + official records", "step"))


def labelled(label: str, fn: Callable) -> Callable:
    """`fn` inside a torch.profiler record_function range named `label`."""
    import functools

    import torch

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        with torch.profiler.record_function(label):
            return fn(*a, **kw)
    return wrapper


def instrument(model, trainer=None) -> None:
    """Mark the regions of PROFILE_ROWS on this process's model, trainer and libraries (profile mode only)."""
    import torch
    import transformers.integrations.sdpa_attention as sdpa

    import encoder_kernels
    import model as model_module

    for attr, label in (("_run_encoder", "encoder forward"), ("_attention_rows", "attention rows recompute"),
                        ("pool_entities", "entity pooling"), ("pool_context", "context pooling"),
                        ("classify", "extractors + group bilinear"), ("forward", "model forward")):
        setattr(model, attr, labelled(label, getattr(model, attr)))
    model_module.group_bilinear = labelled("group bilinear", model_module.group_bilinear)
    sdpa.sdpa_attention_forward = labelled("attention core", sdpa.sdpa_attention_forward)  # eval, GPU
    encoder_kernels.DropoutAttentionFunction.apply = labelled("attention core",  # CPU training
                                                              encoder_kernels.DropoutAttentionFunction.apply)
    torch.Tensor.backward = labelled("backward", torch.Tensor.backward)
    if trainer is not None:
        trainer.loss_fn = labelled("loss", trainer.loss_fn)
        trainer.collate = labelled("collate", trainer.collate)
        trainer.optimizer_step = labelled("clip + AdamW + schedule", trainer.optimizer_step)


def profile_table(prof, n_steps: int) -> List[Dict[str, Any]]:
    """Milliseconds per step of each PROFILE_ROWS region (inclusive) and its share of the step."""
    names = {label for label, _ in PROFILE_ROWS}
    total = dict.fromkeys(names, 0.0)
    for e in prof.events():
        name = e.name
        if name.startswith("autograd::engine::evaluate_function: GroupBilinearFunctionBackward"):
            name = "group bilinear backward"
        elif name.startswith("autograd::engine::evaluate_function: DropoutAttentionFunctionBackward"):
            name = "attention core backward"
        if name not in names:
            continue
        total[name] += e.time_range.elapsed_us() / 1e3
    parents = dict(PROFILE_ROWS)

    def ancestors(label: str) -> List[str]:
        chain = []
        while parents.get(label) is not None:
            label = parents[label]
            chain.append(label)
        return chain

    step = total["step"] / n_steps
    row = lambda label, ms, depth: {"region": label, "depth": depth, "ms_per_step": ms,  # noqa: E731
                                    "share": ms / step if step else 0.0}
    rows = [row(label, total[label] / n_steps, len(ancestors(label))) for label, _ in PROFILE_ROWS
            if label == "step" or total[label] > 0]
    for parent, rest in (("model forward", "rest of the forward (gathers, windows, Python)"),
                         ("backward", "rest of the backward (encoder, head)")):
        if not total[parent]:
            continue
        children = sum(total[label] for label, up in PROFILE_ROWS if up == parent) / n_steps
        last = max(i for i, r in enumerate(rows) if r["region"] == parent or parent in ancestors(r["region"]))
        rows.insert(last + 1, row(rest, total[parent] / n_steps - children, len(ancestors(parent)) + 1))
    top = sum(r["ms_per_step"] for r in rows if r["depth"] == 1)
    rows.append(row("other (Python, .item(), to(device))", step - top, 1))
    return rows


def profile_phase(phase: str, spec: Dict[str, Any], model, features: Sequence[dict], collate, device, dtype,
                  rel2id: Dict[str, int]) -> Dict[str, Any]:
    """Profile --profile training steps or evaluation batches (after the warm-up) and tabulate them."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from engine.inference import predict_outputs
    from engine.task import build_loss_from_args

    args = spec["args"]
    hp = training_defaults(args)
    n, bs = args["profile"], args["batch_size"] if phase == "train" else args["eval_batch_size"]
    batches = index_batches(len(features), bs)
    batches = (batches[args["warmup_steps"]:] or batches)[:n]  # the steps after the warm-up ones
    loss_fn = build_loss_from_args(hp)
    if phase == "train":
        trainer = engine_trainer(hp, model, features, collate)
        instrument(model, trainer)
        model.train()
        run = lambda b: trainer.step([b])  # noqa: E731
    else:
        instrument(model)
        collate = labelled("collate", collate)
        id2rel = {v: k for k, v in rel2id.items()}

        def run(b: List[int]) -> None:
            docs = [features[i] for i in b]
            logits = predict_outputs(model, docs, collate, lambda f: len(f["hts"]), bs, dtype, progress=False).logits
            with record_function("decode + official records"):
                official_records(logits, docs, loss_fn, hp.top_k, id2rel)
    for b in batches[:args["warmup_steps"]]:
        run(b)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for b in batches:
            with record_function("step"):
                run(b)
    rows = profile_table(prof, len(batches))
    top_ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return {f"{phase}_profile": rows, f"{phase}_profile_steps": len(batches), f"{phase}_profile_top_ops": top_ops}


def profile_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """A profile table as Markdown, nested regions indented."""
    lines = ["| region | ms per step | share |", "|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {'&nbsp;&nbsp;' * max(r['depth'] - 1, 0)}{r['region']} | {r['ms_per_step']:.1f} | "
                     f"{100 * r['share']:.1f}% |")
    return "\n".join(lines)


def run_phase(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Run one phase in this (fresh) process and return its figures, peak memory included."""
    import torch

    import prepro
    from collate import DocRECollator

    args = spec["args"]
    torch.set_num_threads(args["threads"])
    device = utils.select_device(args["device"])
    dtype = utils.amp_dtype(device, args["amp"])
    utils.set_seed(args["seed"])
    rel2id = prepro.load_rel2id(str(Path(args["data"]).parent) if args["data"] else None, args["rel2id"])
    tokenizer = load_tokenizer(spec)
    phase = spec["phase"]
    if phase == "prepro":
        out = phase_prepro(spec, tokenizer, rel2id, device)
    else:
        features = phase_features(spec, tokenizer, rel2id)
        max_len = max(args["max_seq_length"], max(len(f["input_ids"]) for f in features))
        model = build_model(args, tokenizer, len(rel2id), max_len).to(device)
        collate = DocRECollator(len(rel2id), tokenizer.pad_token_id or 0)
        if args["profile"]:
            out = profile_phase(phase, spec, model, features, collate, device, dtype, rel2id)
        elif phase == "train":
            out = phase_train(spec, model, features, collate, device, dtype)
        else:
            out = phase_eval(spec, model, features, collate, device, dtype, rel2id)
        lengths = [len(f["input_ids"]) for f in features]
        out[f"{phase}_tokens_mean"] = float(np.mean(lengths))
        out[f"{phase}_pairs_per_doc"] = float(np.mean([len(f["hts"]) for f in features]))
        if device.type == "cuda":
            out[f"{phase}_peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    out.setdefault(f"{phase}_peak_rss_mb", peak_rss_mb())  # train and eval read theirs before the bare encoder
    return out


# ----------------------------------------------------------------------------- driver (parent process)
def child_env(threads: int) -> Dict[str, str]:
    """The environment of a phase process: this one's, with every thread pool held to --threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               RAYON_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), env.get("PYTHONPATH")) if x)
    return env


def spawn_phase(spec: Dict[str, Any], workdir: Path) -> Dict[str, Any]:
    """Run one phase in a fresh Python process and return its figures."""
    tag = f"{spec['phase']}-{spec.get('tokens') or 'data'}-{spec.get('entities') or 'data'}"
    spec = dict(spec, out=str(workdir / f"result-{tag}.json"))
    spec_file = workdir / f"spec-{tag}.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    logger.info("phase %s%s ...", spec["phase"],
                f" ({spec['tokens']} tokens, {spec['entities']} entities)" if spec.get("tokens") else "")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_phase_spec", str(spec_file)],
                            env=child_env(spec["args"]["threads"]), stdout=sys.stderr)
    try:
        proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: a phase left running would skew whatever is measured next
            proc.kill()
            proc.wait()
    if proc.returncode == 2:  # bad input: the phase said so in one `error:` line
        raise SystemExit(2)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark phase {spec['phase']!r} failed with exit status {proc.returncode} "
                         f"(its messages are above)")
    return json.loads(Path(spec["out"]).read_text(encoding="utf-8"))


def load_documents(path: str) -> List[Any]:
    """The documents of a DocRED JSON file, checked here by the validator's rules (a phase would name its own copy
    of them, after the phases before it ran); a UserError naming the file when it holds none."""
    import evaluation_e2e

    docs = evaluation_e2e.read_gold(path, "--data")
    if not docs:
        raise utils.UserError(f"--data {path}: expected a non-empty JSON list of DocRED documents")
    return docs


def document_texts(docs: Sequence[Any]) -> Iterator[str]:
    """One line of text per sentence, to train a synthetic tokenizer on."""
    for doc in docs:
        for sent in doc.get("sents", []) if isinstance(doc, dict) else []:
            yield " ".join(str(w) for w in sent)


def prepare(args: argparse.Namespace, workdir: Path) -> Dict[str, Any]:
    """Files every phase reads: the document subsets and, for --encoder_config, the synthetic tokenizer."""
    spec: Dict[str, Any] = {"args": vars(args), "tokenizer_dir": None}
    docs = load_documents(args.data) if args.data else None
    if docs is not None:
        for name, subset in (("docs_file", docs[:args.docs]), ("warmup_file", docs[:2]),
                             ("prepro_file", docs[:args.prepro_docs] if args.prepro_docs else None)):
            if subset is None:
                spec[name] = str(Path(args.data).resolve())
                continue
            spec[name] = str(workdir / f"{name}.json")
            Path(spec[name]).write_text(json.dumps(subset), encoding="utf-8")
    if args.encoder_config:
        from random_encoders import train_tokenizer

        texts = list(document_texts(docs)) if docs else None
        tokenizer = train_tokenizer(ENCODER_SHAPES[args.encoder_config][0], texts or None, args.tokenizer_vocab)
        tokenizer.model_max_length = max(args.max_seq_length, max(args.scaling_lengths), args.synthetic_tokens or 0)
        spec["tokenizer_dir"] = str(workdir / "tokenizer")
        tokenizer.save_pretrained(spec["tokenizer_dir"])
    return spec


def settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The settings a reader needs to reproduce the figures."""
    keys = ("data", "model", "encoder_config", "docs", "prepro_docs", "synthetic_tokens", "synthetic_entities",
            "phases", "batch_size", "eval_batch_size", "max_seq_length", "device", "loss", "amp", "attention",
            "gradient_checkpointing", "mmap_threshold_mb", "ceiling", "warmup_steps", "repeat", "seed", "profile")
    out = {k: getattr(args, k) for k in keys}
    out["model"] = utils.resolve_model_path(args.model) if args.model else None
    if not args.synthetic_tokens:
        out.pop("synthetic_entities")
    if args.encoder_config:
        out["tokenizer_vocab"] = args.tokenizer_vocab
    if args.scaling:
        out.update({k: getattr(args, k) for k in ("scaling_lengths", "scaling_entities", "scaling_base_tokens",
                                                   "scaling_base_entities", "scaling_docs")})
    return out


def benchmark(args: argparse.Namespace, workdir: Path) -> Dict[str, Any]:
    """Figures of each phase of --phases on --data (or synthetic documents)."""
    spec = prepare(args, workdir)
    figures: Dict[str, Any] = {}
    for phase in args.phases:
        extra = ({"tokens": args.synthetic_tokens, "entities": args.synthetic_entities, "n_docs": args.docs}
                 if args.synthetic_tokens and phase != "prepro" else {})
        figures.update(spawn_phase({**spec, **extra, "phase": phase}, workdir))
    return figures


def scaling(args: argparse.Namespace, workdir: Path) -> List[Dict[str, Any]]:
    """Per (tokens, entities) point: seconds per document and peak memory of train and eval."""
    spec = prepare(args, workdir)
    rows = []
    for tokens, entities in scaling_points(args):
        row: Dict[str, Any] = {"tokens": tokens, "entities": entities, "pairs_per_doc": entities * (entities - 1)}
        for phase in args.phases:
            out = spawn_phase({**spec, "phase": phase, "tokens": tokens, "entities": entities,
                               "n_docs": args.scaling_docs}, workdir)
            row[f"{phase}_s_per_doc"] = 1.0 / out[f"{phase}_docs_per_s"]
            row[f"{phase}_cpu_s_per_doc"] = out[f"{phase}_cpu_s"] / out[f"{phase}_docs"]
            for key in (f"{phase}_peak_rss_mb", f"{phase}_peak_cuda_mb"):
                if key in out:
                    row[key] = out[key]
        rows.append(row)
    return rows


def scaling_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The scaling rows as a Markdown table."""
    columns = [k for k in rows[0] if k not in ("tokens", "entities", "pairs_per_doc")]
    head = ["tokens", "entities", "pairs/doc"] + [c.replace("_", " ") for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["tokens"]), str(r["entities"]), str(r["pairs_per_doc"])]
        cells += [f"{r[c]:.3f}" if c.endswith("per_doc") else f"{r[c]:.0f}" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_scaling(rows: Sequence[Dict[str, Any]], args: argparse.Namespace, path: str) -> None:
    """Seconds per document and peak memory against tokens (left) and entities (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = [("tokens", "entities", args.scaling_base_entities, "tokens per document"),
              ("entities", "tokens", args.scaling_base_tokens, "entities per document")]
    memory = "peak_cuda_mb" if any("train_peak_cuda_mb" in r or "eval_peak_cuda_mb" in r for r in rows) \
        else "peak_rss_mb"
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), squeeze=False)
    for col, (x_key, fixed_key, fixed, label) in enumerate(sweeps):
        sweep = sorted((r for r in rows if r[fixed_key] == fixed), key=lambda r: r[x_key])
        xs = [r[x_key] for r in sweep]
        for phase in args.phases:
            axes[0][col].plot(xs, [r[f"{phase}_s_per_doc"] for r in sweep], "o-", label=phase)
            axes[1][col].plot(xs, [r[f"{phase}_{memory}"] for r in sweep], "o-", label=phase)
        axes[0][col].set_title(f"{fixed} {fixed_key}")
        axes[0][col].set_ylabel("seconds per document")
        axes[1][col].set_ylabel("peak GPU MiB" if memory == "peak_cuda_mb" else "peak RSS MiB")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
            ax.legend()
    encoder = args.encoder_config or Path(str(args.model)).name
    fig.suptitle(f"{encoder}, batch {args.batch_size}, {args.threads} threads, {args.device}")
    fig.tight_layout()
    with utils.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def summary(result: Dict[str, Any]) -> str:
    """The figures as aligned lines for a person to read."""
    lines = [f"{k:<28} {v:.3f}" if isinstance(v, float) else f"{k:<28} {v}" for k, v in result.items()
             if not isinstance(v, (dict, list))]
    return "\n".join(lines)


def check_outputs(args: argparse.Namespace) -> None:
    """A UserError, before any phase runs, for an output that could not be written after them."""
    outputs = {"--output": args.output, "--plot": args.plot if args.scaling else None}
    for flag, path, example in (("--output", args.output, "benchmark.json"), ("--plot", outputs["--plot"], "scaling.png")):
        if path:
            utils.check_writable(path, flag, example=example)
    utils.check_distinct({"--data": args.data, **outputs})


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the benchmark (or, with --_phase_spec, one phase of it); return and print its figures."""
    args = parse_args(argv)
    if args._phase_spec:
        spec = json.loads(Path(args._phase_spec).read_text(encoding="utf-8"))
        out = run_phase(spec)
        utils.atomic_write_json(spec["out"], out)
        return out
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    check_outputs(args)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # clean up the phase process
    result: Dict[str, Any] = {"machine": machine_info(), "threads": args.threads}
    result["torch"], result["transformers"] = result["machine"]["torch"], result["machine"]["transformers"]
    result["settings"] = settings(args)
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="docre-benchmark-") as tmp:
        if args.scaling:
            rows = scaling(args, Path(tmp))
            result["scaling"] = rows
            plot_scaling(rows, args, args.plot)
            result["plot"] = str(args.plot)
        else:
            result.update(benchmark(args, Path(tmp)))
    result["machine"]["load_avg_1min"] = [load_start, load_average()]
    if args.output:
        utils.atomic_write_json(args.output, result, indent=1)
    if args.json:
        print(json.dumps(result, indent=1))
    elif args.profile:
        for phase in args.phases:
            print(f"\n{phase}: {result[f'{phase}_profile_steps']} profiled steps\n"
                  f"{profile_markdown(result[f'{phase}_profile'])}\n\n{result[f'{phase}_profile_top_ops']}")
    else:
        print(scaling_table(result["scaling"]) if args.scaling else summary(result))
    if args.scaling:
        logger.info("scaling plot written to %s", args.plot)
    return result


if __name__ == "__main__":
    utils.cli(main)
