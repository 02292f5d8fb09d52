"""Multi-label losses for relation extraction with a none class, and their decision rules.

Every loss takes logits `[N, K+1]` (column 0 is the none class "Na", scores f_0..f_K) and multi-hot
labels `[N, K+1]` (float or bool; column 0 = 1 exactly when no relation holds) and returns the mean over
instances of the per-instance sum over classes, computed in fp32 (fp64 inputs stay fp64) with autocast
off. Inputs are never modified. Each loss is an `nn.Module` without parameters:

    loss_fn = build_loss("ncrl", shift=0.05)
    loss = loss_fn(logits, labels)            # scalar; `loss_fn.loss(...)` is the same
    preds = loss_fn.get_label(logits, num_labels=4)   # multi-hot [N, K+1], float32

All losses except BCE predict relation i when f_i > f_0 (class 0 is a learned, per-instance threshold).
BCE predicts sigmoid(f_i) > a global threshold that `train.py` tunes on dev over `THRESHOLD_GRID`
(`loss_fn.tunes_threshold` is True only for BCE).

`Decision` is how logits become predictions in a run: the loss's rule with its top-k and, for BCE, the threshold
tuned on dev (`tune_threshold`); it travels as a value (stored with the model), never written into the loss.

Also here: `positive_rates` (the training prior for `DocREModel.init_classifier_bias`) and DREEAM's evidence
supervision: `evidence_target`, `evidence_loss` (on `DocREModel`'s sentence attention), `evidence_term` (the two for a
batch) and `evidence_sentences`.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

THRESHOLD_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the paper's dev grid for BCE's threshold
_LOG_EPS = 1e-12  # floor inside the clamped log of the shifted negative terms


def _positive_nll(x: Tensor) -> Tensor:
    """-log σ(x)."""
    return -F.logsigmoid(x)


def _negative_nll(x: Tensor, shift: float) -> Tensor:
    """-log min(σ(-x) + shift, 1); exactly zero (with zero gradient) where σ(-x) + shift >= 1."""
    if shift == 0:
        return -F.logsigmoid(-x)
    q = torch.sigmoid(-x) + shift
    return -torch.log(torch.where(q < 1.0, q, torch.ones_like(q)).clamp(min=_LOG_EPS))


def _binary_nll(x: Tensor, y: Tensor, shift: float) -> Tensor:
    """Elementwise -[y log σ(x) + (1 - y) log min(σ(-x) + shift, 1)]."""
    return y * _positive_nll(x) + (1.0 - y) * _negative_nll(x, shift)


def _masked_logsumexp(x: Tensor, mask: Tensor) -> Tensor:
    """Row-wise log Σ_{j: mask} exp(x_j) of `[N, C]`; -inf with zero gradient where a row's mask is empty."""
    # an all -inf row has NaN gradients inside logsumexp; masked_fill's backward zeroes them again
    return torch.logsumexp(x.masked_fill(~mask, float("-inf")), dim=1)  # [N]


def _multi_hot(scores: Tensor, above: Tensor, num_labels: int) -> Tensor:
    """Multi-hot `[N, K+1]` from relation scores `[N, K]` and a mask of those above threshold.

    `num_labels > 0` keeps at most that many of the highest-scoring classes above threshold; among
    equal scores the lower class id wins. Column 0 is set where no relation is kept.
    """
    if num_labels == 0 or num_labels < -1:
        raise ValueError(f"num_labels must be -1 (no limit) or a positive int, got {num_labels}")
    keep = above  # [N, K]
    if 0 < num_labels < scores.shape[1]:  # a k-th largest score and the ties at it, instead of a full sort
        kth = scores.topk(num_labels, dim=1).values[:, -1:]  # [N, 1]
        greater, tie = scores > kth, scores == kth  # [N, K]
        room = num_labels - greater.sum(dim=1, keepdim=True)  # [N, 1] places left for the tied classes
        keep = keep & (greater | (tie & (tie.cumsum(dim=1) <= room)))
    return torch.cat([~keep.any(dim=1, keepdim=True), keep], dim=1).float()  # [N, K+1]


class DocRELoss(nn.Module):
    """Base class: a loss over none-class logits `[N, K+1]` and its decision rule."""

    name: str = ""
    tunes_threshold: bool = False  # True when prediction needs a global threshold tuned on dev

    def per_instance(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Loss of each instance `[N]` (summed over classes), in fp32 or fp64."""
        if logits.dim() != 2 or logits.shape[1] < 2:
            raise ValueError(f"{self.name} loss: logits must be [N, K+1] with K >= 1, got {tuple(logits.shape)}")
        if labels.shape != logits.shape:
            raise ValueError(
                f"{self.name} loss: labels {tuple(labels.shape)} and logits {tuple(logits.shape)} differ in shape"
            )
        dtype = torch.promote_types(logits.dtype, torch.float32)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._per_instance(logits.to(dtype), labels.to(dtype))  # new tensors where a cast is needed

    def _per_instance(self, f: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean over instances of the per-instance loss; 0 (still attached to `logits`) when N = 0."""
        per = self.per_instance(logits, labels)  # [N]
        return per.sum() / max(per.shape[0], 1)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Same as calling the module."""
        return self(logits, labels)

    @torch.no_grad()
    def get_label(self, logits: Tensor, num_labels: int = -1, threshold: Optional[float] = None) -> Tensor:
        """Multi-hot predictions `[N, K+1]`: relations with f_i > f_0 (ties not predicted), Na where none."""
        if threshold is not None:
            raise ValueError(f"{self.name} loss predicts with f_i > f_0; a global threshold applies to bce only")
        margins = logits[:, 1:] - logits[:, :1]  # [N, K]
        return _multi_hot(margins, margins > 0, num_labels)


def _check_unit_interval(name: str, value: float, low_open: bool = False) -> float:
    ok = 0.0 < value < 1.0 if low_open else 0.0 <= value < 1.0
    if not ok:
        raise ValueError(f"{name} must lie in {'(0' if low_open else '[0'}, 1), got {value}")
    return float(value)


class BCELoss(DocRELoss):
    """Independent sigmoids over classes 1..K (column 0 unused); predicts σ(f_i) > threshold.

    loss = -Σ_{i≥1} [y_i log p_i + (1 - y_i) log(1 - p_i^m)],  p_i = σ(f_i),  p_i^m = max(p_i - m, 0)
    with m = `prob_shift` (probability shifting of the asymmetric loss; 0 = plain BCE). Linear in y, so
    soft labels are allowed. `threshold` is a plain attribute: `train.py` sets it after tuning on dev.
    """

    name = "bce"
    tunes_threshold = True

    def __init__(self, threshold: float = 0.5, prob_shift: float = 0.0):
        super().__init__()
        self.threshold = _check_unit_interval("threshold", threshold, low_open=True)
        self.prob_shift = _check_unit_interval("prob_shift", prob_shift)

    def _per_instance(self, f: Tensor, y: Tensor) -> Tensor:
        # 1 - max(p - m, 0) = min(σ(-f) + m, 1): the same shifted negative term as NCRL's
        return _binary_nll(f[:, 1:], y[:, 1:], self.prob_shift).sum(dim=1)

    @torch.no_grad()
    def get_label(self, logits: Tensor, num_labels: int = -1, threshold: Optional[float] = None) -> Tensor:
        """Multi-hot predictions `[N, K+1]`: relations with σ(f_i) > threshold (default `self.threshold`)."""
        threshold = self.threshold if threshold is None else _check_unit_interval("threshold", threshold, True)
        probs = torch.sigmoid(logits[:, 1:].float())  # [N, K]
        return _multi_hot(probs, probs > threshold, num_labels)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, prob_shift={self.prob_shift}"


class ATLoss(DocRELoss):
    """ATLOP's adaptive thresholding loss; predicts f_i > f_0.

    loss = -Σ_{p∈P} log softmax_{P∪{0}}(f)_p - log softmax_{{0}∪N}(f)_0, with P / N the positive / negative
    relations (labels > 0.5 in columns 1..K; column 0 is implied by P being empty).
    """

    name = "atl"

    def _per_instance(self, f: Tensor, y: Tensor) -> Tensor:
        pos = y[:, 1:] > 0.5  # [N, K]
        with_na = torch.ones_like(pos[:, :1])  # [N, 1]
        lse_pos = _masked_logsumexp(f, torch.cat([with_na, pos], dim=1))  # [N] over {0} ∪ P
        rank_pos = torch.where(pos, lse_pos[:, None] - f[:, 1:], torch.zeros_like(f[:, 1:])).sum(dim=1)
        return rank_pos + _na_over_negatives(f, pos)


def _na_over_negatives(f: Tensor, pos: Tensor) -> Tensor:
    """-log softmax_{{0} ∪ N}(f)_0 `[N]`: the none class ranked above the negatives (ATL's second term)."""
    with_na = torch.ones_like(pos[:, :1])  # [N, 1]
    return _masked_logsumexp(f, torch.cat([with_na, ~pos], dim=1)) - f[:, 0]


class AFLoss(DocRELoss):
    """KD-DocRE's adaptive focal loss (Tan et al., 2022), as in the authors' code; predicts f_i > f_0.

    loss = Σ_{p∈P} (1 + σ(f_0 - f_p)^γ) (-log σ(f_p - f_0)) - log softmax_{{0}∪N}(f)_0
    with γ = `gamma_pos`: each positive is ranked against the none class alone, its term weighted up to 2x
    the less likely it is; the weight is not detached. The second term is ATL's. P / N as in `ATLoss`.
    Formula read from the authors' losses.py (AFLoss), not from the paper; their `gamma_neg` (default 1) is
    computed into a weight that no term uses, so it is no option here. Their default γ is 1.
    """

    name = "afl"

    def __init__(self, gamma_pos: float = 1.0):
        super().__init__()
        if not gamma_pos >= 0:
            raise ValueError(f"gamma_pos must be >= 0, got {gamma_pos}")
        self.gamma_pos = float(gamma_pos)

    def _per_instance(self, f: Tensor, y: Tensor) -> Tensor:
        pos = y[:, 1:] > 0.5  # [N, K]
        margins = f[:, 1:] - f[:, :1]  # [N, K]
        focal = 1.0 + torch.exp(self.gamma_pos * F.logsigmoid(-margins))  # 1 + σ(f_0 - f_p)^γ
        rank_pos = torch.where(pos, focal * _positive_nll(margins), torch.zeros_like(margins)).sum(dim=1)
        return rank_pos + _na_over_negatives(f, pos)

    def extra_repr(self) -> str:
        return f"gamma_pos={self.gamma_pos}"


class NCRLoss(DocRELoss):
    """None class ranking loss (Zhou & Lee, IJCAI 2022); predicts f_i > f_0.

    loss = -Σ_{i≥1} [y_i log σ(m_i) + (1 - y_i) log p_i⁻],  m_i = f_i - f_0,  p⁻ = min(σ(-m) + γ, 1)
    with γ = `shift` (margin shifting; the paper prints max, min is the intent). `margin_reg` adds the same
    term for class 0 on m_0 = f_0 - mean_{i≥1} f_i with target y_0. Linear in y, so soft labels are allowed.
    """

    name = "ncrl"

    def __init__(self, shift: float = 0.0, margin_reg: bool = True):
        super().__init__()
        self.shift = _check_unit_interval("shift", shift)
        self.margin_reg = bool(margin_reg)

    def _per_instance(self, f: Tensor, y: Tensor) -> Tensor:
        margins = f[:, 1:] - f[:, :1]  # [N, K]
        per = _binary_nll(margins, y[:, 1:], self.shift).sum(dim=1)  # [N]
        if self.margin_reg:
            na_margin = f[:, 0] - f[:, 1:].mean(dim=1)  # [N]
            per = per + _binary_nll(na_margin, y[:, 0], self.shift)
        return per

    def extra_repr(self) -> str:
        return f"shift={self.shift}, margin_reg={self.margin_reg}"


def _rank_levels(y: Tensor) -> Tensor:
    """Rank level of each class `[N, K+1]`: 2 for positives, 1 for the none class, 0 for negatives."""
    pos = (y[:, 1:] > 0.5).long()  # [N, K]
    return torch.cat([torch.ones_like(pos[:, :1]), 2 * pos], dim=1)


class PairwiseRankingLoss(DocRELoss):
    """Pairwise ranking (hinge) loss with the none class as threshold; predicts f_i > f_0.

    Labels define the order P ≻ {0} ≻ N (positives, none class, negatives), so class 0 acts as a negative
    for positives and as the positive of an all-none instance:
    loss = Σ_{a≻b} max(0, margin - f_a + f_b). Memory is O(N (K+1)^2).
    """

    name = "pairwise"

    def __init__(self, margin: float = 1.0):
        super().__init__()
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = float(margin)

    def _per_instance(self, f: Tensor, y: Tensor) -> Tensor:
        levels = _rank_levels(y)  # [N, K+1]
        above = levels[:, :, None] > levels[:, None, :]  # [N, K+1, K+1], a ranked above b
        hinge = F.relu(self.margin - f[:, :, None] + f[:, None, :])  # [N, K+1, K+1]
        return torch.where(above, hinge, torch.zeros_like(hinge)).sum(dim=(1, 2))

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


class LSEPLoss(DocRELoss):
    """Log-sum-exp pairwise loss (Li et al., CVPR 2017) with the none class as threshold; predicts f_i > f_0.

    With the order P ≻ {0} ≻ N of `PairwiseRankingLoss`: loss = log(1 + Σ_{a≻b} exp(f_b - f_a)),
    evaluated in O(N K) as softplus(logaddexp(LSE_P(-f) + LSE_{{0}∪N}(f), LSE_N(f) - f_0)).
    """

    name = "lsep"

    def _per_instance(self, f: Tensor, y: Tensor) -> Tensor:
        pos = y[:, 1:] > 0.5  # [N, K]
        with_na = torch.ones_like(pos[:, :1])  # [N, 1]
        pos_over_rest = _masked_logsumexp(-f[:, 1:], pos) + _masked_logsumexp(f, torch.cat([with_na, ~pos], dim=1))
        na_over_neg = _masked_logsumexp(f[:, 1:], ~pos) - f[:, 0]
        return F.softplus(torch.logaddexp(pos_over_rest, na_over_neg))


# ----------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class Decision:
    """How logits become predictions, tuned on dev and stored with the model: passed as a value, never written into
    the loss. `threshold` is BCE's global threshold; `params` holds task rules such as DialogRE's (t1, t2)."""
    top_k: int = -1
    threshold: Optional[float] = None
    params: Dict[str, float] = field(default_factory=dict)

    def labels(self, loss_fn: DocRELoss, logits: Tensor, threshold: Optional[float] = None) -> Tensor:
        """Multi-hot predictions `[N, K+1]` of the loss's own rule under this decision."""
        t = self.threshold if threshold is None else threshold
        return loss_fn.get_label(logits, num_labels=self.top_k, **({"threshold": t} if t is not None else {}))

    def margins(self, logits: Tensor) -> Tensor:
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
    """The value of `grid` with the highest `metric` (the first one on ties): one rule for every tuned value."""
    return grid[int(np.argmax([metric(v) for v in grid]))]


def tune_threshold(decision: Decision, metric: Callable[[Decision], float],
                   grid: Sequence[float] = THRESHOLD_GRID) -> Decision:
    """`decision` with the global threshold of `grid` that maximises `metric(decision)` on dev (BCE)."""
    return decision.replace(threshold=best_of(grid, lambda t: metric(decision.replace(threshold=t))))


def positive_rates(positive_counts: Tensor, n_instances: int, smoothing: float = 0.5) -> Tensor:
    """Smoothed rate of each class `[K+1]`, (count + s) / (N + 2s): a class never seen still gets a finite logit."""
    if n_instances < 0 or smoothing <= 0:
        raise ValueError(f"need n_instances >= 0 and smoothing > 0, got {n_instances} and {smoothing}")
    return (positive_counts.double() + smoothing) / (n_instances + 2 * smoothing)


# ----------------------------------------------------------------------------- evidence (DREEAM)
EVIDENCE_THRESHOLD = 0.2  # DREEAM's --evi_thresh
_KL_FLOOR = 1e-30  # DREEAM's floor for a zero sentence attention inside the log


def evidence_target(evidence_index: Tensor, n_pairs: int, n_sents: int) -> Tensor:
    """Dense evidence counts `[P, S]` from sparse citations `[n, 2]` of (pair, sentence), one row per sentence
    of one relation's evidence: entry (p, s) counts the relations of pair p that cite sentence s."""
    index = evidence_index.long().reshape(-1, 2)
    if len(index) and (index.min() < 0 or (index[:, 0] >= n_pairs).any() or (index[:, 1] >= n_sents).any()):
        bad = index[(index < 0).any(1) | (index[:, 0] >= n_pairs) | (index[:, 1] >= n_sents)][0].tolist()
        raise ValueError(f"evidence (pair, sentence) {tuple(bad)} outside {n_pairs} pairs x {n_sents} sentences")
    target = torch.zeros(n_pairs, n_sents, dtype=torch.float32, device=index.device)
    return target.index_put_((index[:, 0], index[:, 1]), torch.ones(len(index), device=index.device), accumulate=True)


def evidence_loss(sent_attn: Tensor, evidence: Tensor, labels: Tensor) -> Tensor:
    """DREEAM's evidence loss: mean over positive pairs of KL(t || a), in fp32 (fp64 stays fp64).

    t = a pair's evidence counts `[P, S]` (`evidence_target`) normalised over sentences, a = its sentence
    attention `[P, S]` (`DocREModel.sentence_attention`): KL = Σ_{s: t_s > 0} t_s (log t_s - log max(a_s, 1e-30)).
    As in DREEAM (KLDivLoss "batchmean" over the pairs with a relation), a positive pair without evidence adds 0
    but counts in the mean; relation-less pairs are left out. 0 (still attached to `sent_attn`) with no positive.
    """
    if sent_attn.shape != evidence.shape or labels.shape[0] != sent_attn.shape[0]:
        raise ValueError(f"evidence loss: sent_attn {tuple(sent_attn.shape)}, evidence {tuple(evidence.shape)} and "
                         f"labels {tuple(labels.shape)} disagree")
    dtype = torch.promote_types(sent_attn.dtype, torch.float32)  # fp64 stays fp64
    with torch.autocast(device_type=sent_attn.device.type, enabled=False):
        a, t = sent_attn.to(dtype), evidence.to(dtype)
        t = t / torch.where(t.sum(-1, keepdim=True) > 0, t.sum(-1, keepdim=True), torch.ones_like(t[:, :1]))
        log_ratio = torch.log(torch.where(t > 0, t, torch.ones_like(t))) - torch.log(a.clamp(min=_KL_FLOOR))
        kl = torch.where(t > 0, t * log_ratio, torch.zeros_like(t)).sum(-1)  # [P]
        positive = positive_pairs(labels)  # [P]
        return kl[positive].sum() / max(int(positive.sum()), 1)


def evidence_term(sent_attn: Tensor, evidence_index: Tensor, labels: Tensor) -> Tuple[Tensor, int]:
    """A batch's evidence loss and the count it averages over (its positive pairs): `evidence_loss` of the
    sentence attention `[P, S]` against the `evidence_target` of its citations `[n, 2]`."""
    target = evidence_target(evidence_index, len(sent_attn), sent_attn.shape[1])  # [P, S]
    return evidence_loss(sent_attn.float(), target, labels), int(positive_pairs(labels).sum())


def positive_pairs(labels: Tensor) -> Tensor:
    """The pairs with at least one relation `[P]` (bool), over which the evidence loss averages."""
    return (labels[:, 1:] > 0.5).any(-1)


def evidence_sentences(sent_attn: Tensor, threshold: float = EVIDENCE_THRESHOLD) -> Tensor:
    """Evidence sentences of each pair `[P, S]` (bool): attention strictly above `threshold`, as DREEAM predicts."""
    return sent_attn > threshold


LOSSES: Dict[str, Type[DocRELoss]] = {
    cls.name: cls for cls in (BCELoss, ATLoss, NCRLoss, PairwiseRankingLoss, LSEPLoss, AFLoss)
}


def available_losses() -> List[str]:
    """Names accepted by `build_loss` (the values of `--loss`)."""
    return list(LOSSES)


def loss_options(name: str) -> List[str]:
    """Keyword options that `build_loss(name, ...)` accepts."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {available_losses()}")
    return [p for p in inspect.signature(LOSSES[name].__init__).parameters if p != "self"]


def build_loss(name: str, **options) -> DocRELoss:
    """The loss called `name` with `options`; options set to None are dropped (the loss's default applies)."""
    accepted = loss_options(name)
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"loss {name!r} takes no option(s) {unknown}; its options are {accepted or 'none'}")
    return LOSSES[name](**options)
