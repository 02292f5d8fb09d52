"""Dialogue relation extraction on DialogRE (Yu et al., ACL 2020) with BCE, ATL or NCRL.

Data: a JSON list of `[turns, instances]`; each instance `{"x", "y", "x_type", "y_type", "r", "rid", "t"}`
with relation ids 1..37, 37 = "unanswerable". The model sees the BERT_s input of Yu et al.

    [CLS] dialogue [SEP] x x_type [SEP] y y_type [SEP]

where every speaker that is argument x (y) becomes the token [S1] ([S2]): BERT's `[unused1]`/`[unused2]`,
or tokens added to other vocabularies. A linear layer on the [CLS] vector gives 37 logits; column 0 is
"unanswerable" (the none class of losses.py) and column c is relation id c for c = 1..36.

Scores follow the dataset's reference scorer (bert/evaluate.py of the DialogRE repository):
F1 over instances with "unanswerable" left out of predictions and gold, and F1c, which runs the model on
every prefix of the dialogue and counts a relation at a prefix only once both arguments and, for a gold
relation, its trigger have appeared (everything counts at the last turn).
"""
from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

import losses
import utils
from collate import PaddingCollator
from engine.rundir import RunDirectory
from engine.runner import run
from engine.task import Outputs, Split, Task, add_split_args
from losses import Decision
from model import ClsClassifier
from utils import UserError

logger = logging.getLogger(__name__)

UNANSWERABLE = 37  # the dataset's id of the none class
NUM_CLASS = 37  # logit columns: 0 = unanswerable, 1..36 = relation ids 1..36
RID2COL = {rid: (0 if rid == UNANSWERABLE else rid) for rid in range(1, UNANSWERABLE + 1)}
COL2RID = {col: rid for rid, col in RID2COL.items()}
T2_GRID = tuple(np.round(np.arange(0.0, 0.51, 0.01), 2).tolist())  # the reference scorer's grid for T2
_SPEAKER = re.compile(r"\bspeaker\s+(\d+)\b", re.IGNORECASE)
_BERT_MARKERS = ("[unused1]", "[unused2]")
_ADDED_MARKERS = ("[S1]", "[S2]")

Piece = Union[List[int], int]  # token ids of a text span, or the number N of a "Speaker N"


# ----------------------------------------------------------------------------- reading
def _where(path: str, i: int, turns: Any, j: Optional[int] = None) -> str:
    """`file: dialogue i ("first turn...")[, instance j]` for error messages."""
    head = turns[0][:40] if isinstance(turns, list) and turns and isinstance(turns[0], str) else ""
    return f"{path}: dialogue {i} ({head!r})" + (f", instance {j}" if j is not None else "")


def _field_error(where: str, key: str, want: str, value: Any, item: Optional[int] = None) -> UserError:
    """`<where>: field 'key' must be <want>, got <type> <value>`, naming the list item at fault if any."""
    text = repr(value)
    found = "nothing" if value is None else f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"
    at = f" (item {item})" if item is not None else ""
    return UserError(f"{where}: field {key!r} must be {want}, got {found}{at}")


def _check_list(inst: dict, key: str, kind: type, want: str, where: str) -> list:
    """`inst[key]`, refused unless it is a list whose items are all exactly of type `kind`."""
    value = inst.get(key)
    if not isinstance(value, list):
        raise _field_error(where, key, want, value)
    for k, item in enumerate(value):
        if type(item) is not kind:  # exact type: JSON true/false are bools, which isinstance counts as ints
            raise _field_error(where, key, want, item, k)
    return value


def _check_instance(inst: Any, where: str) -> None:
    """Refuse an instance with a field missing, of the wrong type, or out of range."""
    if not isinstance(inst, dict):
        raise UserError(f"{where}: an instance must be an object, got {type(inst).__name__}")
    for key in ("x", "y"):
        if type(inst.get(key)) is not str or not inst[key].strip():
            raise _field_error(where, key, "a non-empty string", inst.get(key))
    for key in ("x_type", "y_type"):
        if key in inst and type(inst[key]) is not str:
            raise _field_error(where, key, "a string", inst[key])
    for key in ("r", "t"):
        if key in inst:
            _check_list(inst, key, str, "a list of strings", where)
    want = f"a non-empty list of ids 1..{UNANSWERABLE}"
    rids = _check_list(inst, "rid", int, want, where)
    if not rids or not all(r in RID2COL for r in rids):
        raise _field_error(where, "rid", want, rids)
    if UNANSWERABLE in rids and len(rids) > 1:
        raise UserError(f"{where}: field 'rid' mixes {UNANSWERABLE} (unanswerable) with relations: {rids}")
    if "t" in inst and len(inst["t"]) != len(rids):
        raise UserError(f"{where}: field 't' must be a list of one trigger per id in 'rid', got {inst['t']!r}")


def load_dialogre(path: str, limit: Optional[int] = None) -> List[list]:
    """The dialogues of a DialogRE file (the first `limit` ones), checked field by field."""
    data = utils.read_json(path)
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of [turns, instances], got {type(data).__name__}")
    data = data[:limit] if limit is not None and limit >= 0 else data
    for i, item in enumerate(data):
        if not (isinstance(item, list) and len(item) == 2):
            raise UserError(f"{_where(path, i, None)}: expected a pair [turns, instances]")
        turns, instances = item
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise UserError(f"{_where(path, i, turns)}: field 'turns' must be a non-empty list of strings")
        if not isinstance(instances, list):
            raise UserError(f"{_where(path, i, turns)}: field 'instances' must be a list")
        for j, inst in enumerate(instances):
            _check_instance(inst, _where(path, i, turns, j))
    return data


def gold_matrix(data: Sequence[list]) -> np.ndarray:
    """Multi-hot gold `[n_instances, 37]` (column 0 = unanswerable) in file order."""
    rows = [[RID2COL[r] for r in inst["rid"]] for _, instances in data for inst in instances]
    gold = np.zeros((len(rows), NUM_CLASS), dtype=bool)
    for i, cols in enumerate(rows):
        gold[i, cols] = True
    return gold


# ----------------------------------------------------------------------------- BERT_s inputs
def speaker_number(arg: str) -> Optional[int]:
    """N when the argument is exactly "Speaker N" (any case), else None."""
    m = _SPEAKER.fullmatch(arg.strip())
    return int(m.group(1)) if m else None


def speaker_roles(x: str, y: str) -> Dict[int, int]:
    """{speaker number: marker (1 for x, 2 for y)} for the arguments that are speakers."""
    roles = {}
    nx, ny = speaker_number(x), speaker_number(y)
    if nx is not None:
        roles[nx] = 1
    if ny is not None and ny != nx:
        roles[ny] = 2
    return roles


def split_speakers(text: str) -> List[Union[str, int]]:
    """`text` cut into strings and speaker numbers, e.g. "Speaker 1: hi" -> [1, ": hi"]."""
    pieces: List[Union[str, int]] = []
    last = 0
    for m in _SPEAKER.finditer(text):
        if m.start() > last:
            pieces.append(text[last:m.start()])
        pieces.append(int(m.group(1)))
        last = m.end()
    if last < len(text):
        pieces.append(text[last:])
    return pieces


def speaker_marker_ids(tokenizer) -> Tuple[Tuple[int, int], bool]:
    """Ids of [S1] and [S2]: BERT's [unused1]/[unused2] when in the vocabulary, else added special tokens.

    Returns the ids and whether tokens were added (then the encoder's embeddings must be resized).
    """
    vocab = tokenizer.get_vocab()
    if all(m in vocab for m in _BERT_MARKERS):
        return (vocab[_BERT_MARKERS[0]], vocab[_BERT_MARKERS[1]]), False
    added = tokenizer.add_tokens(list(_ADDED_MARKERS), special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(list(_ADDED_MARKERS))
    return (ids[0], ids[1]), added > 0


@dataclass
class PrefixSet:
    """The inputs of every dialogue prefix, for F1c.

    Row m of `source`/`instance`/`visible` is prefix k of some instance (instances in file order, k = 1..n);
    `features[source[m]]` is its input (prefixes whose truncated input repeats the previous one share it).
    """
    features: List[dict]
    source: np.ndarray  # [M] index into features
    instance: np.ndarray  # [M] instance index
    visible: np.ndarray  # [M, 37] bool: relation columns that count at this prefix


@dataclass
class DialogRESplit:
    """One DialogRE file: its dialogues, one feature per instance, gold labels, optional prefix inputs."""
    path: str
    data: List[list]
    features: List[dict]
    gold: np.ndarray  # [N, 37] bool
    prefixes: Optional[PrefixSet] = None


class DialogREEncoder:
    """Turns DialogRE instances into token ids: the BERT_s input with optional argument types."""

    def __init__(self, tokenizer, markers: Tuple[int, int], max_seq_length: int = 512, entity_types: bool = True):
        self.tokenizer, self.markers = tokenizer, markers
        self.max_seq_length, self.entity_types = max_seq_length, entity_types
        cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if cls is None or sep is None:
            raise UserError(f"tokenizer {type(tokenizer).__name__} has no [CLS]/[SEP] (or <s>/</s>) token")
        self.cls, self.sep = cls, sep
        self._speaker_ids: Dict[int, List[int]] = {}

    def tokenize(self, texts: Sequence[str]) -> List[List[int]]:
        if not texts:
            return []
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def speaker_ids(self, n: int) -> List[int]:
        """Token ids of the words "Speaker n" (cached)."""
        if n not in self._speaker_ids:
            self._speaker_ids[n] = self.tokenize([f"Speaker {n}"])[0]
        return self._speaker_ids[n]

    def dialogue_pieces(self, turns: Sequence[str]) -> List[List[Piece]]:
        """Per turn, its text tokenized once, with speaker names kept apart for substitution."""
        split = [split_speakers(t) for t in turns]
        texts = [p for pieces in split for p in pieces if isinstance(p, str)]
        ids = iter(self.tokenize(texts))
        return [[next(ids) if isinstance(p, str) else p for p in pieces] for pieces in split]

    def turn_ids(self, pieces: Sequence[List[Piece]], roles: Dict[int, int]) -> List[np.ndarray]:
        """Token ids of each turn with the speakers in `roles` replaced by [S1]/[S2]."""
        out = []
        for turn in pieces:
            ids: List[int] = []
            for p in turn:
                if isinstance(p, list):
                    ids += p
                elif p in roles:
                    ids.append(self.markers[roles[p] - 1])
                else:
                    ids += self.speaker_ids(p)
            out.append(np.asarray(ids, dtype=np.int64))
        return out

    def argument_ids(self, inst: dict, roles: Dict[int, int]) -> Tuple[List[int], List[int]]:
        """Token ids of x and y: a speaker argument becomes its marker; types follow when enabled."""
        out = []
        for key in ("x", "y"):
            n = speaker_number(inst[key])
            ids = [self.markers[roles[n] - 1]] if n in roles else self.tokenize([inst[key].strip()])[0]
            if self.entity_types and inst.get(f"{key}_type"):
                ids = ids + self.tokenize([inst[f"{key}_type"]])[0]
            out.append(ids)
        return out[0], out[1]

    def assemble(self, dialogue: np.ndarray, x: List[int], y: List[int], where: str) -> dict:
        """`[CLS] dialogue [SEP] x [SEP] y [SEP]`, the dialogue cut from the end to fit max_seq_length."""
        budget = self.max_seq_length - 4 - len(x) - len(y)
        if budget < 0:
            raise UserError(f"{where}: the arguments alone ({len(x)} + {len(y)} tokens) do not fit in "
                             f"--max_seq_length {self.max_seq_length}")
        kept = dialogue[:budget]
        ids = np.concatenate([[self.cls], kept, [self.sep], x, [self.sep], y, [self.sep]]).astype(np.int64)
        return {"input_ids": ids, "n_first": len(kept) + 2, "n_truncated": len(dialogue) - len(kept)}


# ----------------------------------------------------------------------------- F1c visibility
def _seen(needle: str, turns_lower: Sequence[str]) -> np.ndarray:
    """[n_turns] bool: `needle` occurred in some turn up to and including this one."""
    return np.logical_or.accumulate(np.array([needle in t for t in turns_lower], dtype=bool))


def visibility(turns: Sequence[str], inst: dict) -> np.ndarray:
    """`[n_turns, 37]` bool: which relation columns count at prefix k (the reference scorer's rule).

    A column counts once x and y have appeared (case-insensitive substrings of the turns so far); a gold
    relation also needs its trigger, and one without a trigger counts only at the last turn, as in the
    reference scorer. Everything counts at the last turn. Column 0 (unanswerable) never counts.
    """
    lower = [t.lower() for t in turns]
    n = len(turns)
    args = _seen(inst["x"].lower().strip(), lower) & _seen(inst["y"].lower().strip(), lower)  # [n]
    rel_ok = np.ones((n, NUM_CLASS), dtype=bool)
    for rid, trigger in zip(inst["rid"], inst.get("t", [""] * len(inst["rid"]))):
        if rid != UNANSWERABLE:
            trigger = trigger.lower().strip()
            rel_ok[:, RID2COL[rid]] = _seen(trigger, lower) if trigger else np.zeros(n, dtype=bool)
    vis = args[:, None] & rel_ok
    vis[-1] = True
    vis[:, 0] = False
    return vis


# ----------------------------------------------------------------------------- features
def build_split(path: str, encoder: DialogREEncoder, limit: Optional[int] = None,
                with_prefixes: bool = False) -> DialogRESplit:
    """Read a DialogRE file into instance features (and, for F1c, the prefix inputs)."""
    data = load_dialogre(path, limit)
    features: List[dict] = []
    pre_feats: List[dict] = []
    source, instance, visible = [], [], []
    for i, (turns, instances) in enumerate(data):
        pieces = encoder.dialogue_pieces(turns)
        for j, inst in enumerate(instances):
            where = _where(path, i, turns, j)
            roles = speaker_roles(inst["x"], inst["y"])
            per_turn = encoder.turn_ids(pieces, roles)
            dialogue = np.concatenate(per_turn)
            x, y = encoder.argument_ids(inst, roles)
            feat = encoder.assemble(dialogue, x, y, where)
            feat.update(labels=np.array([RID2COL[r] for r in inst["rid"] if r != UNANSWERABLE], dtype=np.int64),
                        dialogue=i, instance=j)
            features.append(feat)
            if with_prefixes:
                ends = np.cumsum([len(t) for t in per_turn])  # [n_turns] dialogue length of each prefix
                budget = len(dialogue) - feat["n_truncated"]  # tokens of dialogue that fit
                n_unique = int(np.searchsorted(ends, budget, side="left")) + 1  # later prefixes repeat it
                n_unique = min(n_unique, len(turns))
                base = len(pre_feats)
                pre_feats += [dict(encoder.assemble(dialogue[:ends[k]], x, y, where), labels=feat["labels"])
                              for k in range(n_unique)]
                source.append(base + np.minimum(np.arange(len(turns)), n_unique - 1))
                instance.append(np.full(len(turns), len(features) - 1))
                visible.append(visibility(turns, inst))
    prefixes = None
    if with_prefixes:
        cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape, dtype=np.int64)  # noqa: E731
        prefixes = PrefixSet(pre_feats, cat(source, (0,)), cat(instance, (0,)),
                             np.concatenate(visible) if visible else np.zeros((0, NUM_CLASS), dtype=bool))
    truncated = sum(f["n_truncated"] > 0 for f in features)
    logger.info("%s: %d dialogues, %d instances (%d with the dialogue truncated)%s", path, len(data),
                len(features), truncated, f", {len(pre_feats)} prefix inputs" if with_prefixes else "")
    return DialogRESplit(path, data, features, gold_matrix(data), prefixes)


class DialogRECollator(PaddingCollator):
    """Pad instance features into `input_ids`, `attention_mask`, `token_type_ids` `[B, L]` (1 on the arguments'
    segment, from `n_first` on) and `labels` `[B, 37]` (column 0: unanswerable)."""

    def __init__(self, num_class: int = NUM_CLASS, pad_token_id: int = 0):
        super().__init__(num_class, pad_token_id, none_column=True, segments=True)


# ----------------------------------------------------------------------------- metrics
def _prf(correct: np.ndarray, n_pred: np.ndarray, n_gold: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Precision, recall, F1 as fractions with the reference's conventions (P = 1 without predictions)."""
    correct, n_pred, n_gold = (np.asarray(a, dtype=np.float64) for a in (correct, n_pred, n_gold))
    p = np.where(n_pred > 0, correct / np.maximum(n_pred, 1), 1.0)
    r = np.where(n_gold > 0, correct / np.maximum(n_gold, 1), 0.0)
    f = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    return p, r, f


def _percent(p: float, r: float, f: float) -> Dict[str, float]:
    return {"precision": 100 * float(p), "recall": 100 * float(r), "f1": 100 * float(f)}


def f1_score(pred: np.ndarray, gold: np.ndarray) -> Dict[str, float]:
    """DialogRE F1 (percent) of multi-hot predictions `[N, 37]` against gold `[N, 37]`, column 0 left out."""
    pred, gold = np.asarray(pred, dtype=bool)[:, 1:], np.asarray(gold, dtype=bool)[:, 1:]
    return _percent(*_prf((pred & gold).sum(), pred.sum(), gold.sum()))


def f1c_score(pred: np.ndarray, gold: np.ndarray, instance: np.ndarray, visible: np.ndarray) -> Dict[str, float]:
    """DialogRE F1c (percent): per-instance precision and recall over its prefixes, averaged over instances.

    pred `[M, 37]` and visible `[M, 37]` are per prefix, instance `[M]` maps a prefix to its row of gold `[N, 37]`.
    """
    pred = np.asarray(pred, dtype=bool)[:, 1:]
    vis = np.asarray(visible, dtype=bool)[:, 1:]
    gold_rows = np.asarray(gold, dtype=bool)[instance][:, 1:]  # [M, 36]
    n = len(gold)
    per = lambda m: np.bincount(instance, weights=m.sum(1), minlength=n)  # noqa: E731  [N] sums over prefixes
    p, r, _ = _prf(per(pred & gold_rows & vis), per(pred & vis), per(gold_rows & vis))
    p, r = (float(p.mean()), float(r.mean())) if n else (1.0, 0.0)
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return _percent(p, r, f)


def dialogre_rule(probs: torch.Tensor, t1: float, t2: float) -> torch.Tensor:
    """The reference rule for independent sigmoids `[N, 36]`: p > t1, else the arg-max if > t2; multi-hot `[N, 37]`."""
    above = probs > t1  # [N, 36]
    top, arg = probs.max(dim=1)  # [N]
    fallback = ~above.any(dim=1) & (top > t2)  # [N]
    above[fallback, arg[fallback]] = True
    return torch.cat([~above.any(dim=1, keepdim=True), above], dim=1).float()


def tune_dialogre_rule(probs: torch.Tensor, gold: np.ndarray, t1_grid: Sequence[float],
                       t2_grid: Sequence[float] = T2_GRID) -> Tuple[float, float, float]:
    """(t1, t2, F1 percent) maximising F1 of `dialogre_rule`; the first best in grid order wins."""
    probs = probs.numpy()
    g = np.asarray(gold, dtype=bool)[:, 1:]  # [N, 36]
    t2s = np.asarray(t2_grid)
    top, arg = probs.max(1), probs.argmax(1)  # [N]
    hit = g[np.arange(len(g)), arg]  # [N] the arg-max is gold
    best = (t1_grid[0], t2_grid[0], -1.0)
    for t1 in t1_grid:
        above = probs > t1  # [N, 36]
        fallback = ~above.any(1)[None, :] & (top[None, :] > t2s[:, None])  # [T2, N]
        _, _, f = _prf((above & g).sum() + (fallback & hit).sum(1), above.sum() + fallback.sum(1), g.sum())
        k = int(np.argmax(f))
        if 100 * f[k] > best[2]:
            best = (float(t1), float(t2s[k]), 100 * float(f[k]))
    return best


def rids_of(pred: torch.Tensor) -> List[List[int]]:
    """Dataset relation ids of multi-hot predictions `[N, 37]`; an empty row becomes [37]."""
    rows = [np.flatnonzero(row).tolist() for row in np.asarray(pred[:, 1:]) > 0.5]
    return [[COL2RID[c + 1] for c in cols] or [UNANSWERABLE] for cols in rows]


# ----------------------------------------------------------------------------- the task
class DialogRE(Task):
    """DialogRE on the shared engine: BERT_s inputs, a [CLS] classifier, F1 and F1c, BCE's (t1, t2) rule."""
    name = "dialogre"
    unit = "instances"
    model_settings = ("max_seq_length", "no_entity_type")  # test mode reads as training read (its folder's)
    decision_params = {"t1": 0.5, "t2": 0.4}  # the reference scorer's (t1, t2) until tuned on dev

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("dialogre")
        add_split_args(g, "./dataset/dialogre", "train.json", "dev.json", "test.json")
        g.add_argument("--max_seq_length", type=utils.SEQ_LENGTH, default=512)
        g.add_argument("--no_entity_type", action="store_true", help="do not add x_type/y_type after the arguments")
        g.add_argument("--dropout", type=utils.BELOW_ONE, default=0.1, help="dropout before the classifier")
        g.add_argument("--bce_rule", default="dialogre", choices=["dialogre", "global"],
                       help="BCE decisions: the dataset's (T1, T2) rule or one global threshold (both tuned on dev)")
        g.add_argument("--no_f1c", action="store_true", help="skip F1c (the model on every dialogue prefix)")
        g.add_argument("--train_limit", type=utils.COUNT, default=None, help="use only the first N training dialogues")
        g.add_argument("--dev_limit", type=utils.COUNT, default=None, help="use only the first N dev dialogues")
        g.add_argument("--test_limit", type=utils.COUNT, default=None, help="use only the first N test dialogues")
        g.add_argument("--select_metric", default="f1", choices=["f1"])
        # BERT_s settings of Yu et al. (2020); the shared defaults are DocRED's
        parser.set_defaults(learning_rate=3e-5, classifier_lr=3e-5, train_batch_size=24, test_batch_size=32,
                            num_train_epochs=20.0, warmup_ratio=0.1, top_k=-1)

    def setup(self, args: argparse.Namespace, mode: str, tokenizer: Any, meta: Optional[Dict[str, Any]] = None,
              source: str = "") -> None:
        """Refuse a checkpoint of another relation map; add the speaker markers to the tokenizer (when missing)."""
        super().setup(args, mode, tokenizer, meta, source)
        if meta is not None:
            saved = {int(k): v for k, v in meta.get("rid2col", {}).items()}
            if saved != RID2COL:
                raise UserError(f"--load_path {source} is not a DialogRE checkpoint of this version (its relation-id "
                                f"to column map is {saved or 'missing'})")
        markers, self.added_markers = speaker_marker_ids(tokenizer)
        self.encoder = DialogREEncoder(tokenizer, markers, args.max_seq_length, not args.no_entity_type)
        self.markers = tokenizer.convert_ids_to_tokens(list(markers))
        self._collate = DialogRECollator(NUM_CLASS, tokenizer.pad_token_id or 0)

    def build_model(self, encoder: nn.Module) -> nn.Module:
        if self.added_markers:
            encoder.resize_token_embeddings(len(self.tokenizer))
        return ClsClassifier(encoder, NUM_CLASS, self.args.dropout)  # logits [B, 37] from [CLS]

    def meta(self) -> Dict[str, Any]:
        return {"rid2col": RID2COL, "speaker_markers": self.markers}

    def summary(self) -> Dict[str, Any]:
        return {"num_class": NUM_CLASS, "speaker_markers": self.markers}

    def read(self, split: str) -> Optional[Split]:
        a = self.args
        name = {"train": a.train_file, "dev": a.dev_file, "test": a.test_file}[split]
        path = utils.data_path(a.data_dir, name)
        if path is None:
            return None
        limit = getattr(a, f"{split}_limit")
        data = build_split(path, self.encoder, limit, split != "train" and not a.no_f1c)
        if not data.features:  # F1 of nothing is undefined, and training on nothing leaves no best.pt
            within = f" in its first {limit} dialogues (--{split}_limit)" if limit is not None else ""
            purpose = "to train on" if split == "train" else "to score"
            raise UserError(f"--{split}_file {path}: no instances {purpose}{within}")
        aux = {"prefixes": data.prefixes.features} if data.prefixes is not None else {}
        return Split(split, data.features, data, aux, source=path)

    def collate(self, features: Sequence[dict]) -> Dict[str, torch.Tensor]:
        return self._collate(features)

    def uses_reference_rule(self, loss_fn: Any) -> bool:
        return loss_fn.tunes_threshold and self.args.bce_rule == "dialogre"

    def decode(self, logits: torch.Tensor, loss_fn: Any, decision: Decision) -> torch.Tensor:
        """Multi-hot predictions `[N, 37]`: the loss's own rule, or the reference rule for BCE."""
        if self.uses_reference_rule(loss_fn):
            return dialogre_rule(torch.sigmoid(logits[:, 1:]), decision.params["t1"], decision.params["t2"])
        return decision.labels(loss_fn, logits)

    def tune(self, outputs: Outputs, split: Split, loss_fn: Any, decision: Decision) -> Decision:
        """BCE: the global threshold by dev F1, and the reference rule's (t1, t2) by dev F1."""
        if not loss_fn.tunes_threshold:
            return decision
        logits, gold = outputs.logits, split.gold.gold
        tuned = losses.tune_threshold(decision, lambda d: f1_score(d.labels(loss_fn, logits), gold)["f1"])
        t1, t2, _ = tune_dialogre_rule(torch.sigmoid(logits[:, 1:]), gold, losses.THRESHOLD_GRID)
        return tuned.replace(params={"t1": t1, "t2": t2})

    def score(self, outputs: Outputs, split: Split, loss_fn: Any, decision: Decision) -> Dict[str, Any]:
        logits, gold = outputs.logits, split.gold.gold
        extra: Dict[str, float] = {}
        if loss_fn.tunes_threshold:  # both BCE rules, whichever decides
            extra = {"f1_global": f1_score(decision.labels(loss_fn, logits), gold)["f1"],
                     "f1_rule": f1_score(dialogre_rule(torch.sigmoid(logits[:, 1:]), decision.params["t1"],
                                                       decision.params["t2"]), gold)["f1"]}
        return {**f1_score(self.decode(logits, loss_fn, decision), gold), **extra}

    def write(self, run: RunDirectory, split: Split, outputs: Outputs, loss_fn: Any,
              decision: Decision) -> Dict[str, Any]:
        """<split>_pred.json and <split>_pred_f1c.json; returns F1 (and F1c) in percent."""
        data: DialogRESplit = split.gold
        pred = self.decode(outputs.logits, loss_fn, decision)
        run.write_json(f"{split.name}_pred.json", rids_of(pred))
        scores = f1_score(pred, data.gold)
        if "prefixes" in outputs.aux:
            pre = data.prefixes
            pred_c = self.decode(outputs.aux["prefixes"].logits, loss_fn, decision)[pre.source]
            per_prefix = rids_of(pred_c)
            ends = np.cumsum(np.bincount(pre.instance, minlength=len(data.features))).tolist()
            run.write_json(f"{split.name}_pred_f1c.json", [per_prefix[a:b] for a, b in zip([0] + ends[:-1], ends)])
            c = f1c_score(pred_c.numpy(), data.gold, pre.instance, pre.visible)
            scores.update({f"{k}_c" if k != "f1" else "f1c": v for k, v in c.items()})
        return scores


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train on DialogRE (unless only --load_path is given), then score dev and test (F1 and F1c)."""
    return run(DialogRE(), argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    utils.cli(main)
