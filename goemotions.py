"""GoEmotions with Neutral as the none class: data, ranking metrics and the CLI (the head: model.ClsClassifier).

The NCRL paper's Table 3 setting (Zhou & Lee, IJCAI 2022) on GoEmotions (Demszky et al., ACL 2020):
Reddit comments labeled with 27 emotions or Neutral. Neutral becomes the none class (model column 0),
the 27 emotions the classes 1..27; comments labeled Neutral *and* an emotion are dropped from every
split. The headline metric is the class-wise mean average precision (mAP) over the 27 emotions;
the per-instance label ranking average precision (LRAP), macro-F1 and Neutral accuracy come beside it.

    python goemotions.py --data_dir dataset/goemotions --loss ncrl --output_dir runs/goemotions-ncrl

Training, prediction and the run directory are the engine's (engine/); this file holds only what is specific
to the task.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

import losses
import utils
from collate import PaddingCollator
from engine.rundir import RunDirectory
from engine.runner import run
from engine.task import Outputs, Split, Task
from losses import Decision
from model import ClsClassifier
from utils import UserError

logger = logging.getLogger(__name__)

NEUTRAL = "neutral"
HF_DATASET, HF_CONFIG = "go_emotions", "simplified"
SPLIT_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
HF_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Comment:
    """One comment; `labels` are ids into labels.txt (file order, not model columns)."""

    text: str
    labels: Tuple[int, ...]
    id: str


def read_label_names(path: str | os.PathLike) -> List[str]:
    """The label names of labels.txt, one a line; one of them must be `neutral`."""
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the label names: {e}") from e
    if NEUTRAL not in names:
        raise UserError(f"{path}: no label named {NEUTRAL!r} among {len(names)} names (it is the none class)")
    if len(set(names)) != len(names):
        raise UserError(f"{path}: repeated label names")
    return names


def check_labels(labels: Sequence[int], num_names: int, where: str) -> Tuple[int, ...]:
    """The label ids of one comment, or an error naming the comment when they are invalid."""
    if len(labels) == 0:
        raise UserError(f"{where}: field 'labels' is empty")
    if any(not 0 <= i < num_names for i in labels):
        raise UserError(f"{where}: field 'labels' {list(labels)} has ids outside 0..{num_names - 1}")
    if len(set(labels)) != len(labels):
        raise UserError(f"{where}: field 'labels' {list(labels)} repeats a label")
    return tuple(int(i) for i in labels)


def read_tsv(path: str | os.PathLike, num_names: int) -> List[Comment]:
    """Comments of a GoEmotions TSV file: text, comma-separated label ids, comment id."""
    comments = []
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                comments.append(tsv_comment(path, line_no, line, num_names))
    except UnicodeDecodeError:
        raise UserError(utils.utf8_problem(path)) from None
    except OSError as e:  # missing, a folder, unreadable
        raise UserError(f"{path}: cannot read the comments ({e.strerror}); --data_dir needs train.tsv, dev.tsv, "
                        f"test.tsv and labels.txt") from None
    return comments


def tsv_comment(path: str | os.PathLike, line_no: int, line: str, num_names: int) -> Comment:
    """One comment of a GoEmotions TSV line, or an error naming the file, line and field."""
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) != 3:
        raise UserError(f"{path} line {line_no}: expected 3 tab-separated fields (text, labels, id), "
                        f"got {len(fields)}")
    text, label_field, comment_id = fields
    where = f"{path} line {line_no} (comment {comment_id!r})"
    try:  # "1,,2" and "1,2," are refused, not read as 1,2
        ids = [int(x) for x in label_field.split(",")] if label_field.strip() else []
    except ValueError:
        raise UserError(f"{where}: field 'labels' {label_field!r} is not comma-separated ints") from None
    return Comment(text, check_labels(ids, num_names, where), comment_id)


def comments_from_hf(split, name: str) -> List[Comment]:
    """Comments of one split of the Hugging Face `go_emotions` (simplified) dataset."""
    num_names = split.features["labels"].feature.num_classes
    return [Comment(ex["text"], check_labels(ex["labels"], num_names, f"{name} row {i} (comment {ex['id']!r})"),
                    ex["id"]) for i, ex in enumerate(split)]


def is_ambiguous(labels: Sequence[int], neutral_id: int) -> bool:
    """Labeled Neutral together with an emotion."""
    return neutral_id in labels and len(labels) > 1


def drop_ambiguous(comments: Sequence[Comment], neutral_id: int) -> Tuple[List[Comment], int]:
    """The comments that are not ambiguous, and how many were dropped."""
    kept = [c for c in comments if not is_ambiguous(c.labels, neutral_id)]
    return kept, len(comments) - len(kept)


class LabelOrder:
    """Maps labels.txt ids to model columns: Neutral first (the none class), then the emotions in file order."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.neutral_id = self.names.index(NEUTRAL)
        emotions = [i for i in range(len(names)) if i != self.neutral_id]
        self.file_ids = np.array([self.neutral_id] + emotions)  # [C] labels.txt id of each model column
        self.column = np.argsort(self.file_ids)  # [C] model column of each labels.txt id

    @property
    def num_class(self) -> int:
        return len(self.names)

    def multi_hot(self, comments: Sequence[Comment]) -> np.ndarray:
        """Gold labels `[N, C]` in model columns."""
        out = np.zeros((len(comments), self.num_class), dtype=np.float32)
        rows = np.repeat(np.arange(len(comments)), [len(c.labels) for c in comments])
        ids = np.array([i for c in comments for i in c.labels], dtype=np.int64)
        out[rows, self.column[ids]] = 1.0
        return out

    def to_file_order(self, matrix: np.ndarray) -> np.ndarray:
        """Columns of a `[N, C]` model-order matrix rearranged into labels.txt order."""
        return matrix[:, self.column]


def load_comments(args: argparse.Namespace) -> Tuple[List[str], Dict[str, List[Comment]]]:
    """Label names and the three splits, from the TSV files in --data_dir or, with --hf_dataset, the hub."""
    if not args.hf_dataset:
        names = read_label_names(Path(args.data_dir) / "labels.txt")
        return names, {s: read_tsv(Path(args.data_dir) / f, len(names)) for s, f in SPLIT_FILES.items()}
    import datasets

    try:
        ds = datasets.load_dataset(HF_DATASET, HF_CONFIG)
    except Exception as e:  # the hub raises many types; all mean the same to the user
        raise UserError(f"--hf_dataset: cannot load {HF_DATASET}/{HF_CONFIG} from the Hugging Face hub "
                         f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): {e}. Without network, put "
                         f"train.tsv, dev.tsv, test.tsv and labels.txt in --data_dir instead.")
    names = list(ds["train"].features["labels"].feature.names)
    return names, {s: comments_from_hf(ds[hf], f"{HF_DATASET}/{hf}") for s, hf in HF_SPLITS.items()}


def build_features(comments: Sequence[Comment], tokenizer, order: LabelOrder,
                   max_seq_length: int) -> List[Dict[str, Any]]:
    """One feature per comment: token ids with the tokenizer's special tokens, gold model columns."""
    ids = tokenizer([c.text for c in comments], truncation=True, max_length=max_seq_length)["input_ids"]
    return [{"id": c.id, "input_ids": x, "labels": order.column[list(c.labels)]} for c, x in zip(comments, ids)]


# ----------------------------------------------------------------------------- metrics
def ranking_average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Average precision of each row's ranking of its columns `[R]`; NaN for rows without a positive.

    A positive scoring s counts precision |positives scoring >= s| / |items scoring >= s|, so tied
    items are ranked together (as scikit-learn does); the AP is the mean over the row's positives.
    """
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(labels) > 0.5
    if scores.ndim != 2 or scores.shape != positive.shape:
        raise UserError(f"scores {scores.shape} and labels {positive.shape} must be matrices of one shape")
    if np.isnan(scores).any():
        raise UserError("scores contain NaN")
    rows, n = scores.shape
    if n == 0:
        return np.full(rows, np.nan)
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, axis=1)  # [R, n] descending
    y = np.take_along_axis(positive, order, axis=1)  # [R, n]
    last_of_tie = np.ones_like(y)
    last_of_tie[:, :-1] = s[:, :-1] != s[:, 1:]
    # the position of the last item of each item's tie group: a reversed running minimum
    marks = np.where(last_of_tie, np.arange(n), n)
    group_end = np.minimum.accumulate(marks[:, ::-1], axis=1)[:, ::-1]  # [R, n]
    hits = np.take_along_axis(np.cumsum(y, axis=1), group_end, axis=1)  # positives scoring >= s
    precision = hits / (group_end + 1.0)
    n_pos = y.sum(axis=1)
    total = np.where(y, precision, 0.0).sum(axis=1)
    return np.divide(total, n_pos, out=np.full(rows, np.nan), where=n_pos > 0)


def class_wise_map(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes (columns with a positive) of the AP of ranking all instances by that class (%)."""
    return 100.0 * float(np.nanmean(ranking_average_precision(np.asarray(scores).T, np.asarray(labels).T)))


def label_ranking_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over instances (rows with a positive) of the AP of ranking that instance's classes (%)."""
    return 100.0 * float(np.nanmean(ranking_average_precision(scores, labels)))


def macro_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    """Mean over columns of the F1 of multi-hot predictions (%); 0 for a column never gold nor predicted."""
    pred, gold = np.asarray(pred) > 0.5, np.asarray(gold) > 0.5
    tp = (pred & gold).sum(axis=0)
    wrong = (pred ^ gold).sum(axis=0)  # false positives + false negatives
    denom = 2 * tp + wrong
    return 100.0 * float(np.mean(np.divide(2 * tp, denom, out=np.zeros(len(tp)), where=denom > 0)))


def decision_margins(logits: torch.Tensor, decision: Decision) -> torch.Tensor:
    """Scores `[N, C]` in model columns, positive where the loss's decision rule predicts the class.

    Emotions: f_i - f_0 for losses that threshold on the none class, f_i - logit(threshold) for BCE;
    Neutral: minus the largest emotion margin. Ranking by these equals ranking by the loss's own scores.
    """
    emotions = decision.margins(logits)  # [N, K]
    return torch.cat([-emotions.max(dim=1, keepdim=True).values, emotions], dim=1)  # [N, K+1]


def score(logits: torch.Tensor, gold: np.ndarray, loss_fn: Any, decision: Decision) -> Dict[str, float]:
    """mAP, LRAP, macro-F1 over the emotion columns and Neutral accuracy (%), for model-order `gold`."""
    margins = decision_margins(logits, decision).numpy()
    pred = decision.labels(loss_fn, logits).numpy()
    return {"map": class_wise_map(margins[:, 1:], gold[:, 1:]), "lrap": label_ranking_ap(margins[:, 1:], gold[:, 1:]),
            "macro_f1": macro_f1(pred[:, 1:], gold[:, 1:]),
            "neutral_acc": 100.0 * float(np.mean((pred[:, 0] > 0.5) == (gold[:, 0] > 0.5)))}


def limited(comments: List[Comment], limit: int) -> List[Comment]:
    return comments if limit < 0 else comments[:limit]


def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save, atomically."""
    with utils.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


# ----------------------------------------------------------------------------- the task
class GoEmotions(Task):
    """GoEmotions on the shared engine: the ambiguity filter, a [CLS] classifier, class-wise mAP."""
    name = "goemotions"
    unit = "comments"
    model_settings = ("max_seq_length",)  # test mode reads as training read (its folder's)

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        """Flags of the task; NCRL defaults to the plain loss (no margin regularization, no shift), as in the paper."""
        g = parser.add_argument_group("goemotions")
        g.add_argument("--data_dir", default="./dataset/goemotions", help="train.tsv, dev.tsv, test.tsv, labels.txt")
        g.add_argument("--hf_dataset", action="store_true",
                       help=f"load {HF_DATASET} ({HF_CONFIG}) through Hugging Face datasets instead (needs network)")
        g.add_argument("--max_seq_length", type=utils.SEQ_LENGTH, default=128)
        for split in SPLIT_FILES:
            g.add_argument(f"--{split}_limit", type=utils.number_flag(int, 1, off=-1, off_means="all"), default=-1,
                           help=f"use only the first N {split} comments left after the ambiguity filter (-1: all)")
        g.add_argument("--select_metric", default="map", choices=["map"])
        parser.set_defaults(margin_reg=False, top_k=-1, train_batch_size=16, test_batch_size=64,
                            num_train_epochs=4.0)

    def setup(self, args: argparse.Namespace, mode: str, tokenizer: Any, meta: Optional[Dict[str, Any]] = None,
              source: str = "") -> None:
        """Load the label names and the comments (dropping the ambiguous ones); refuse a checkpoint of other labels."""
        super().setup(args, mode, tokenizer, meta, source)
        names, splits = load_comments(args)
        saved = (meta or {}).get("label_names")
        if saved is not None and not args.hf_dataset and saved != names:
            raise UserError(f"--load_path {source} was trained with the labels {saved}, but {args.data_dir} has "
                            f"{names}")
        self.order = LabelOrder(names)
        self.comments, self.dropped = {}, {}
        for split, rows in splits.items():
            kept, self.dropped[split] = drop_ambiguous(rows, self.order.neutral_id)
            self.comments[split] = limited(kept, getattr(args, f"{split}_limit"))
            logger.info("%s: %d comments, %d dropped as Neutral + emotion, %d used", split, len(rows),
                        self.dropped[split], len(self.comments[split]))
        self._collate = PaddingCollator(self.order.num_class, tokenizer.pad_token_id or 0)  # [B, L], labels [B, C]

    def build_model(self, encoder: nn.Module) -> nn.Module:
        return ClsClassifier(encoder, self.order.num_class)  # dropout: the encoder's hidden_dropout_prob

    def meta(self) -> Dict[str, Any]:
        return {"label_names": self.order.names}

    def summary(self) -> Dict[str, Any]:
        return {"label_names": self.order.names, "dropped_ambiguous": self.dropped,
                "n_comments": {s: len(c) for s, c in self.comments.items()}}

    def read(self, split: str) -> Optional[Split]:
        """A split's features and gold labels [N, C]; refused when it has no comment, or (dev and test) no emotion:
        class-wise mAP needs one."""
        comments, a = self.comments[split], self.args
        source = f"{HF_DATASET}/{HF_SPLITS[split]}" if a.hf_dataset else str(Path(a.data_dir) / SPLIT_FILES[split])
        if not comments:
            raise UserError(f"{source}: no comments left to {'train on' if split == 'train' else 'score'} (after "
                            f"dropping those labelled Neutral and an emotion, and --{split}_limit)")
        gold = self.order.multi_hot(comments)  # [N, C], column 0 Neutral
        if split != "train" and not gold[:, 1:].any():
            raise UserError(f"{source}: every comment is Neutral; class-wise mAP needs comments with an emotion")
        return Split(split, build_features(comments, self.tokenizer, self.order, a.max_seq_length), gold,
                     source=source)

    def collate(self, features: Sequence[dict]) -> Dict[str, torch.Tensor]:
        return self._collate(features)

    def tune(self, outputs: Outputs, split: Split, loss_fn: Any, decision: Decision) -> Decision:
        """BCE: the global threshold with the best dev macro-F1 (mAP does not depend on it)."""
        if not loss_fn.tunes_threshold:
            return decision
        return losses.tune_threshold(decision, lambda d: score(outputs.logits, split.gold, loss_fn, d)["macro_f1"])

    def score(self, outputs: Outputs, split: Split, loss_fn: Any, decision: Decision) -> Dict[str, Any]:
        return score(outputs.logits, split.gold, loss_fn, decision)

    def write(self, run: RunDirectory, split: Split, outputs: Outputs, loss_fn: Any,
              decision: Decision) -> Dict[str, Any]:
        """test_scores.npy (decision margins) and test_labels.npy, columns in labels.txt order."""
        logits = outputs.logits
        if split.name == "test" and run.is_main:
            save_npy(run.file("test_scores.npy"), self.order.to_file_order(decision_margins(logits, decision).numpy()))
            save_npy(run.file("test_labels.npy"), self.order.to_file_order(split.gold))
        return score(logits, split.gold, loss_fn, decision)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train (unless only --load_path is given), then score dev and test and write the run directory."""
    return run(GoEmotions(), argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    utils.cli(main)
