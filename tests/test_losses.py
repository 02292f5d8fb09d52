"""Tests for losses.py: hand-computed values, gradients, Bayes consistency, shifting, regularization, decisions."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from losses import (
    EVIDENCE_THRESHOLD,
    LOSSES,
    AFLoss,
    THRESHOLD_GRID,
    BCELoss,
    NCRLoss,
    available_losses,
    build_loss,
    evidence_loss,
    evidence_sentences,
    evidence_target,
    loss_options,
    positive_rates,
)

# every loss and option combination the CLI can produce
CONFIGS = [
    ("bce", {}),
    ("bce", {"prob_shift": 0.2}),
    ("atl", {}),
    ("ncrl", {}),
    ("ncrl", {"margin_reg": False}),
    ("ncrl", {"shift": 0.2}),
    ("ncrl", {"shift": 0.2, "margin_reg": False}),
    ("pairwise", {}),
    ("lsep", {}),
    ("afl", {}),
    ("afl", {"gamma_pos": 2.0}),
]
CONFIG_IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts in CONFIGS]

# K = 3. Row 0: one positive (class 1). Row 1: all-none. Row 2: two positives (classes 1 and 2).
LOGITS = [[0.5, 2.0, -1.0, 0.0], [1.0, 0.0, -2.0, 1.0], [0.0, 0.5, 3.0, -1.0]]
LABELS = [[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0]]

# Per-row losses worked out by hand; sp(x) = log(1 + e^x), so -log σ(x) = sp(-x) and -log σ(-x) = sp(x).
EXPECTED = {
    # sp(-2) + sp(-1) + sp(0) | sp(0) + sp(-2) + sp(1) | sp(-0.5) + sp(-3) + sp(-1)
    "bce": [1.133337, 2.133337, 0.835926],
    # negatives -log min(σ(-f) + 0.2, 1): row 1 = -log(σ(-0) + .2) - 0 (σ(2) + .2 > 1) - log(σ(-1) + .2)
    "bce-prob_shift=0.2": [0.555036, 1.113952, 0.594097],
    # row 0: -log(e^2 / (e^2 + e^.5)) - log(e^.5 / (e^.5 + e^-1 + e^0)); row 1: log(1 + e^-1 + e^-3 + e^0)
    # row 2: -log(e^.5 / (e^0 + e^.5 + e^3)) - log(e^3 / (e^0 + e^.5 + e^3)) + log(1 + e^-1)
    "atl": [0.805544, 0.882803, 3.061008],
    # "ncrl-margin_reg=False" plus the class-0 term on m_0 = f_0 - mean f_{1..3}:
    # row 0: + sp(0.5 - 1/3) (y_0 = 0); row 1: + sp(-(1 - (-1/3))) (y_0 = 1); row 2: + sp(0 - 2.5/3)
    "ncrl": [1.656852, 1.288959, 1.196811],
    # margins m = f_i - f_0. row 0: sp(-1.5) + sp(-1.5) + sp(-0.5); row 1: sp(-1) + sp(-3) + sp(0)
    # row 2: sp(-0.5) + sp(-3) + sp(-1)
    "ncrl-margin_reg=False": [0.876904, 1.054996, 0.835926],
    # shifted negatives -log min(σ(-m) + 0.2, 1), class 0's included
    "ncrl-shift=0.2": [0.814767, 0.662071, 0.702731],
    # row 0: sp(-1.5) + 0 (σ(1.5) + .2 > 1) - log(σ(0.5) + .2); row 1: -log(σ(1) + .2) - 0 - log(σ(0) + .2)
    "ncrl-shift=0.2-margin_reg=False": [0.396870, 0.428108, 0.594097],
    # order P ≻ 0 ≻ N with margin 1. row 0: pair (0, 3) gives 1 - 0.5 + 0; row 1: pair (0, 3) gives 1 - 1 + 1;
    # row 2: pair (1, 0) gives 1 - 0.5 + 0; every other pair is satisfied by at least the margin
    "pairwise": [0.5, 1.0, 0.5],
    # row 0: log(1 + e^(.5-2) + e^(-1-2) + e^(0-2) + e^(-1-.5) + e^(0-.5)) (equals ATL for a single positive)
    # row 2: log(1 + e^(-1-0) + e^(0-.5) + e^(-1-.5) + e^(0-3) + e^(-1-3))
    "lsep": [0.805544, 0.882803, 0.817859],
    # γ = 1. row 0: (1 + σ(-1.5)) sp(-1.5) + log(e^.5 + e^-1 + e^0) - .5; row 1 (no positive): ATL's row 1;
    # row 2: (1 + σ(-.5)) sp(-.5) + (1 + σ(-3)) sp(-3) + log(e^0 + e^-1) (negatives {0, 3})
    "afl": [0.842287, 0.882803, 1.017214],
    # γ = 2: the focal weights become 1 + σ(.)^2
    "afl-gamma_pos=2.0": [0.812247, 0.882803, 0.903609],
}


def _case(dtype=torch.float32):
    return torch.tensor(LOGITS, dtype=dtype), torch.tensor(LABELS, dtype=torch.float32)


@pytest.mark.parametrize("name,opts", CONFIGS, ids=CONFIG_IDS)
def test_hand_computed_values(name, opts):
    key = CONFIG_IDS[CONFIGS.index((name, opts))]
    loss_fn = build_loss(name, **opts)
    logits, labels = _case()
    per = loss_fn.per_instance(logits, labels)
    torch.testing.assert_close(per, torch.tensor(EXPECTED[key]), atol=1e-5, rtol=0)
    torch.testing.assert_close(loss_fn(logits, labels), torch.tensor(sum(EXPECTED[key]) / 3), atol=1e-5, rtol=0)
    assert loss_fn.loss(logits, labels).item() == loss_fn(logits, labels).item()


def _gradcheck_inputs():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 6, generator=gen, dtype=torch.float64) * 2
    labels = torch.zeros(5, 6, dtype=torch.float64)
    labels[0, 2] = 1  # one positive
    labels[1, [1, 3, 4]] = 1  # several
    labels[3, 1:] = 1  # every relation
    labels[:, 0] = (labels[:, 1:].sum(1) == 0).double()  # rows 2 and 4 all-none
    return logits.requires_grad_(), labels


@pytest.mark.parametrize("name,opts", CONFIGS, ids=CONFIG_IDS)
def test_gradcheck_float64(name, opts):
    loss_fn = build_loss(name, **opts)
    logits, labels = _gradcheck_inputs()
    assert loss_fn(logits, labels).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, labels), (logits,))


def _minimise_expected_loss(loss_fn, delta: torch.Tensor, steps: int = 150) -> torch.Tensor:
    """Free scores f [K+1] minimising E_y[loss(f, y)] when relation i holds independently with probability Δ_i."""
    k = len(delta)
    draws = torch.tensor(list(itertools.product([0.0, 1.0], repeat=k)), dtype=torch.float64)  # [2^K, K]
    probs = torch.where(draws.bool(), delta, 1 - delta).prod(dim=1)  # [2^K] probability of each label set
    labels = torch.cat([(draws.sum(1, keepdim=True) == 0).double(), draws], dim=1)  # [2^K, K+1]
    f = torch.zeros(k + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([f], lr=1.0)  # the Hessian's largest eigenvalue is at most (K + 1) / 4
    for _ in range(steps):
        opt.zero_grad()
        (probs * loss_fn.per_instance(f.expand(len(draws), -1), labels)).sum().backward()
        opt.step()
    return f.detach()


def test_ncrl_bayes_consistency():
    """Theorem 1: minimising the expected NCRL gives σ(f_i - f_0) = Δ_i, hence predictions {i : Δ_i > 0.5}."""
    delta = torch.tensor([0.9, 0.6, 0.4, 0.1, 0.55], dtype=torch.float64)
    loss_fn = NCRLoss(shift=0.0, margin_reg=False)
    f = _minimise_expected_loss(loss_fn, delta)
    torch.testing.assert_close(torch.sigmoid(f[1:] - f[0]), delta, atol=0.01, rtol=0)
    assert loss_fn.get_label(f[None])[0].tolist() == [0, 1, 1, 0, 0, 1]  # {i : Δ_i > 0.5} = {1, 2, 5}


def test_bayes_check_detects_a_shifted_minimiser():
    """With shift γ the minimiser moves off Δ_i to σ(m_i) = Δ_i (1 + γ), so the check above is able to fail."""
    # d/dσ [-Δ log σ - (1 - Δ) log(1 - σ + γ)] = 0  <=>  Δ (1 - σ + γ) = (1 - Δ) σ  <=>  σ = Δ (1 + γ)
    delta = torch.tensor([0.6, 0.3], dtype=torch.float64)
    f = _minimise_expected_loss(NCRLoss(shift=0.3, margin_reg=False), delta)
    torch.testing.assert_close(torch.sigmoid(f[1:] - f[0]), torch.tensor([0.78, 0.39], dtype=torch.float64),
                               atol=0.01, rtol=0)


def test_margin_shift_zeroes_easy_negatives():
    # γ = 0.1: σ(3) = 0.953 and σ(4) = 0.982 both exceed 1 - γ, so both negatives cost nothing
    logits = torch.tensor([[0.0, -3.0, -4.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    loss = NCRLoss(shift=0.1, margin_reg=False)(logits, labels)
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad.abs().max().item() == 0.0
    # without the shift the same instance has loss sp(-3) + sp(-4) = 0.048587 + 0.018150
    assert NCRLoss(shift=0.0, margin_reg=False)(logits, labels).item() == pytest.approx(0.066737, abs=1e-5)
    # the boundary σ(-m) = 1 - γ counts as easy too: m = 0, γ = 0.5
    logits = torch.tensor([[0.0, 0.0]], requires_grad=True)
    loss = NCRLoss(shift=0.5, margin_reg=False)(logits, torch.tensor([[1.0, 0.0]]))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().max().item() == 0.0


def test_margin_shift_applies_to_class_zero_term():
    # y_0 = 0 and m_0 = -5 - 5 = -10: σ(10) > 1 - γ, so the regularizer adds exactly nothing
    logits, labels = torch.tensor([[-5.0, 5.0, 5.0]]), torch.tensor([[0.0, 1.0, 1.0]])
    with_reg = NCRLoss(shift=0.1, margin_reg=True)(logits, labels)
    assert with_reg.item() == NCRLoss(shift=0.1, margin_reg=False)(logits, labels).item()
    assert with_reg.item() != NCRLoss(shift=0.0, margin_reg=True)(logits, labels).item()


def test_margin_shift_shrinks_hard_negative_gradient():
    # hard negative m = 2: d/dm -log(σ(-m) + γ) = σ(m)σ(-m) / (σ(-m) + γ); γ = 0 gives σ(2) = 0.880797
    grads = []
    for shift in (0.0, 0.05, 0.1, 0.3, 0.5):
        logits = torch.tensor([[0.0, 2.0]], requires_grad=True)
        NCRLoss(shift=shift, margin_reg=False)(logits, torch.tensor([[1.0, 0.0]])).backward()
        grads.append(logits.grad[0, 1].item())
    assert grads[0] == pytest.approx(0.880797, abs=1e-5)
    assert grads[2] == pytest.approx(0.880797 * 0.119203 / (0.119203 + 0.1), abs=1e-5)
    assert all(a > b > 0 for a, b in zip(grads, grads[1:]))


def test_bce_prob_shift_zeroes_easy_negatives():
    # p = σ(-3) = 0.047 <= m = 0.05, so p_m = 0 and the negative costs nothing; σ(0) = 0.5 still does
    logits = torch.tensor([[0.0, -3.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    BCELoss(prob_shift=0.05).per_instance(logits, labels).sum().backward()
    assert logits.grad[0, 1].item() == 0.0
    assert logits.grad[0, 2].item() == pytest.approx(0.5 * 0.5 / 0.55, abs=1e-6)  # σσ / (σ(-0) + m)


@pytest.mark.parametrize("y0,sign", [(1.0, -1.0), (0.0, 1.0)])
def test_margin_reg_gradient_sign(y0, sign):
    """All-none (y_0 = 1): the regularizer pushes f_0 up and the other scores down; with a positive, the reverse."""
    labels = torch.tensor([[y0, 1.0 - y0, 0.0, 0.0]])
    grads = {}
    for reg in (True, False):
        logits = torch.zeros(1, 4, requires_grad=True)
        NCRLoss(margin_reg=reg)(logits, labels).backward()
        grads[reg] = logits.grad[0]
    reg_grad = grads[True] - grads[False]  # gradient of the class-0 term alone
    # at f = 0: d/df_0 -log σ(±m_0) = ∓0.5 and each of the K = 3 others gets ±0.5 / 3
    torch.testing.assert_close(reg_grad, sign * torch.tensor([0.5, -0.5 / 3, -0.5 / 3, -0.5 / 3]))


def test_margin_reg_lifts_f0_above_mean_by_descent():
    # an all-none instance whose scores start with f_0 at the mean: a few descent steps on the regularizer
    # alone (margin terms' gradient removed) raise f_0 - mean(f_i) above 0
    logits = torch.tensor([[0.0, 1.0, -1.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():
        start = (logits[0, 0] - logits[0, 1:].mean()).item()
    for _ in range(5):
        reg = NCRLoss(margin_reg=True)(logits, labels) - NCRLoss(margin_reg=False)(logits, labels)
        (grad,) = torch.autograd.grad(reg, logits)
        with torch.no_grad():
            logits -= 0.5 * grad
    assert start == 0.0
    assert (logits[0, 0] - logits[0, 1:].mean()).item() > 0.5


def test_get_label_threshold_rule_ties_and_na():
    loss_fn = build_loss("ncrl")
    logits = torch.tensor(
        [
            [0.0, 1.0, -1.0, 2.0],  # classes 1 and 3 above f_0
            [1.0, 1.0, 0.5, 0.0],  # f_1 = f_0 is a tie: not predicted -> Na
            [0.0, -1.0, -2.0, -3.0],  # nothing above -> Na
        ]
    )
    expected = [[0, 1, 0, 1], [1, 0, 0, 0], [1, 0, 0, 0]]
    assert loss_fn.get_label(logits).tolist() == expected
    out = loss_fn.get_label(logits)
    assert out.dtype == torch.float32 and out.shape == (3, 4)
    # the same rule for every f_0-threshold loss
    for name in ("atl", "pairwise", "lsep"):
        assert build_loss(name).get_label(logits).tolist() == expected


def test_get_label_top_k():
    loss_fn = build_loss("atl")
    logits = torch.tensor(
        [
            [0.0, 1.0, 3.0, 2.0, -1.0],  # three above f_0; top 2 = classes 2 and 3
            [0.0, 2.0, 2.0, 2.0, 5.0],  # ties at the 2nd place: the lower class id (1) wins
            [0.0, 1.0, -1.0, -2.0, -3.0],  # only one above f_0: k = 2 keeps just that one
        ]
    )
    assert loss_fn.get_label(logits, num_labels=2).tolist() == [
        [0, 0, 1, 1, 0],
        [0, 1, 0, 0, 1],
        [0, 1, 0, 0, 0],
    ]
    assert loss_fn.get_label(logits, num_labels=1).tolist() == [
        [0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1],
        [0, 1, 0, 0, 0],
    ]
    assert loss_fn.get_label(logits).sum(1).tolist() == [3, 4, 1]
    with pytest.raises(ValueError, match="num_labels"):
        loss_fn.get_label(logits, num_labels=0)


def _sorted_top_k(logits: torch.Tensor, k: int) -> list:
    """Reference top-k rule: rank classes by a stable descending sort, keep rank < k among f_i > f_0."""
    margins = logits[:, 1:] - logits[:, :1]
    order = torch.sort(margins, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(margins.shape[1]).expand_as(order))
    keep = (margins > 0) & (rank < k)
    return torch.cat([~keep.any(1, keepdim=True), keep], 1).float().tolist()


@pytest.mark.parametrize("k", [1, 2, 4, 6, 9])
def test_get_label_top_k_equals_a_stable_sort_with_many_ties(k):
    torch.manual_seed(k)
    logits = torch.randint(-2, 3, (300, 7)).float()  # scores in {-2..2}: ties at the k-th place are common
    assert build_loss("ncrl").get_label(logits, num_labels=k).tolist() == _sorted_top_k(logits, k)


def test_bce_threshold_rule():
    loss_fn = build_loss("bce", threshold=0.3)
    assert loss_fn.tunes_threshold and not any(build_loss(n).tunes_threshold for n in ("atl", "ncrl", "lsep"))
    # σ(-1) = 0.269, σ(-0.5) = 0.378, σ(1) = 0.731; column 0 is ignored by BCE (f_0 = 9 is not a threshold)
    logits = torch.tensor([[9.0, -1.0, -0.5, 1.0], [9.0, -1.0, -2.0, -3.0]])
    assert loss_fn.get_label(logits).tolist() == [[0, 0, 1, 1], [1, 0, 0, 0]]
    assert loss_fn.get_label(logits, threshold=0.5).tolist() == [[0, 0, 0, 1], [1, 0, 0, 0]]
    assert loss_fn.get_label(logits, threshold=0.2).tolist() == [[0, 1, 1, 1], [0, 1, 0, 0]]
    # strictly above: σ(0) = 0.5 is not above 0.5
    assert loss_fn.get_label(torch.zeros(1, 3), threshold=0.5).tolist() == [[1, 0, 0]]
    assert loss_fn.get_label(logits, num_labels=1).tolist() == [[0, 0, 0, 1], [1, 0, 0, 0]]
    loss_fn.threshold = 0.7  # train.py sets the tuned value on the object
    assert loss_fn.get_label(logits).tolist() == [[0, 0, 0, 1], [1, 0, 0, 0]]
    assert THRESHOLD_GRID == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    with pytest.raises(ValueError, match="bce only"):
        build_loss("ncrl").get_label(logits, threshold=0.5)
    with pytest.raises(ValueError, match="threshold"):
        loss_fn.get_label(logits, threshold=1.5)


@pytest.mark.parametrize("name,opts", CONFIGS, ids=CONFIG_IDS)
def test_inputs_left_unchanged_and_bool_labels(name, opts):
    loss_fn = build_loss(name, **opts)
    logits, labels = _case()
    logits.requires_grad_()
    bool_labels = labels.bool()
    before = (logits.detach().clone(), labels.clone(), bool_labels.clone())
    value = loss_fn(logits, labels)
    value.backward()
    assert loss_fn(logits, bool_labels).item() == value.item()
    loss_fn.get_label(logits)
    loss_fn.get_label(logits, num_labels=1)
    assert torch.equal(logits.detach(), before[0])
    assert torch.equal(labels, before[1]) and torch.equal(bool_labels, before[2])
    assert bool_labels.dtype == torch.bool and labels.dtype == torch.float32


@pytest.mark.parametrize("name,opts", CONFIGS, ids=CONFIG_IDS)
def test_empty_batch(name, opts):
    loss_fn = build_loss(name, **opts)
    logits = torch.zeros(0, 4, requires_grad=True)
    value = loss_fn(logits, torch.zeros(0, 4))
    assert value.item() == 0.0 and value.grad_fn is not None
    value.backward()
    assert logits.grad.shape == (0, 4)
    assert loss_fn.get_label(logits.detach()).shape == (0, 4)
    assert loss_fn.get_label(logits.detach(), num_labels=2).shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,opts", CONFIGS, ids=CONFIG_IDS)
def test_extreme_logits_stay_finite(name, opts, dtype):
    loss_fn = build_loss(name, **opts)
    logits = torch.tensor(
        [[1e4, -1e4, 1e4, -1e4], [-1e4, 1e4, -1e4, 1e4], [0.0, 1e4, 1e4, -1e4], [1e4, 1e4, 1e4, 1e4]], dtype=dtype
    ).requires_grad_()
    labels = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.float32)
    value = loss_fn(logits, labels)
    value.backward()
    assert value.dtype == torch.float32
    assert torch.isfinite(value) and torch.isfinite(logits.grad.float()).all()
    # the wrongly ranked instances cost on the order of the logits' scale
    assert value.item() > 1e3


def test_autocast_computes_in_fp32():
    loss_fn = build_loss("ncrl")
    logits, labels = _case()
    reference = loss_fn(logits, labels)
    weight = torch.eye(4, requires_grad=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        scores = logits @ weight  # bf16 under autocast
        assert scores.dtype == torch.bfloat16
        value = loss_fn(scores, labels)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, reference, atol=0.02, rtol=0)


def test_registry_and_factory():
    assert available_losses() == ["bce", "atl", "ncrl", "pairwise", "lsep", "afl"] == list(LOSSES)
    assert loss_options("afl") == ["gamma_pos"] and build_loss("afl").gamma_pos == 1.0  # the authors' default
    assert loss_options("ncrl") == ["shift", "margin_reg"]
    assert loss_options("bce") == ["threshold", "prob_shift"]
    ncrl = build_loss("ncrl", shift=0.05, margin_reg=False)
    assert (ncrl.shift, ncrl.margin_reg) == (0.05, False)
    # None means "not set on the command line": the loss's default applies
    assert build_loss("ncrl", shift=None, margin_reg=None).margin_reg is True
    assert build_loss("bce", threshold=0.3, prob_shift=0.05).threshold == 0.3
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        build_loss("focal")
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['shift'\]"):
        build_loss("atl", shift=0.1)
    with pytest.raises(ValueError, match="shift must lie in"):
        build_loss("ncrl", shift=1.0)
    with pytest.raises(ValueError, match="labels"):
        build_loss("atl")(torch.zeros(2, 4), torch.zeros(2, 3))
    assert math.isfinite(build_loss("pairwise", margin=0.5)(*_case()).item())


# ----------------------------------------------------------------------------- adaptive focal loss
def _kd_docre_afl(logits: torch.Tensor, labels: torch.Tensor, gamma_pos: float) -> torch.Tensor:
    """KD-DocRE's AFLoss computation step by step: each class against the threshold class in a 2-way softmax,
    positives weighted by 1 + P(threshold)^γ, then the threshold ranked over the negatives with -1e30 masks."""
    labels = labels.clone()
    th_label = torch.zeros_like(labels)
    th_label[:, 0] = 1.0
    labels[:, 0] = 0.0
    pair = torch.stack([logits, logits[:, :1].expand_as(logits)], dim=1)  # [N, 2, C]: (class, threshold)
    log_probs = torch.log_softmax(pair, dim=1)
    loss1 = -(log_probs[:, 0] * (1 + log_probs[:, 1].exp() ** gamma_pos) * labels)
    rank2 = torch.log_softmax(logits - labels * 1e30, dim=-1)  # masks out the positives
    loss2 = -(rank2 * th_label).sum(1)
    return loss1.sum(1).mean() + loss2.mean()


@pytest.mark.parametrize("gamma_pos", [0.0, 1.0, 2.5])
@pytest.mark.parametrize("n,k", [(1, 1), (7, 4), (64, 96)])
def test_afl_equals_authors_computation(n, k, gamma_pos):
    gen = torch.Generator().manual_seed(n * 100 + k)
    logits = torch.randn(n, k + 1, generator=gen, dtype=torch.float64) * 3
    labels = (torch.rand(n, k + 1, generator=gen) < 0.3).double()
    labels[: max(n // 3, 1), 1:] = 0  # instances without a positive
    if n > 2:
        labels[-1, 1:] = 1  # and one where every relation holds (no negative but the none class)
    labels[:, 0] = (labels[:, 1:].sum(1) == 0).double()
    ours = AFLoss(gamma_pos=gamma_pos)(logits, labels)
    torch.testing.assert_close(ours, _kd_docre_afl(logits, labels, gamma_pos), atol=1e-12, rtol=1e-12)
    # in fp32 too, against the fp64 value
    torch.testing.assert_close(AFLoss(gamma_pos)(logits.float(), labels.float()).double(), ours, atol=1e-5, rtol=1e-5)


def _afl_single_relation_optimum(delta: float, gamma: float) -> float:
    """σ(m*) minimising Δ (1 + (1 - u)^γ)(-log u) - (1 - Δ) log(1 - u) over u = σ(m) (bisection on the slope)."""
    def slope(u: float) -> float:
        return (delta * gamma * (1 - u) ** (gamma - 1) * math.log(u) if gamma else 0.0) \
            - delta * (1 + (1 - u) ** gamma) / u + (1 - delta) / (1 - u)
    lo, hi = 1e-9, 1 - 1e-9  # slope < 0 at lo, > 0 at hi
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_afl_expected_loss_minimiser(gamma):
    """One relation holding with probability Δ: the minimiser of the expected AFL is the stationary point worked out
    by hand (γ = 0: σ(m) = 2Δ / (1 + Δ)), so AFL predicts a relation from Δ ≈ 1/3 (γ = 0) or 0.351 (γ = 1) up,
    not from Δ = 1/2 as a calibrated loss does: the extra weight on positives buys recall."""
    loss_fn = AFLoss(gamma_pos=gamma)
    for delta in (0.2, 0.33, 0.37, 0.6, 0.9):
        f = _minimise_expected_loss(loss_fn, torch.tensor([delta], dtype=torch.float64), steps=400)
        expected = _afl_single_relation_optimum(delta, gamma)
        if gamma == 0:
            assert expected == pytest.approx(2 * delta / (1 + delta), abs=1e-6)
        assert torch.sigmoid(f[1] - f[0]).item() == pytest.approx(expected, abs=0.01)
        threshold = 1 / 3 if gamma == 0 else 0.3513
        assert loss_fn.get_label(f[None])[0].tolist() == ([0, 1] if delta > threshold else [1, 0])


def test_positive_rates_are_smoothed_frequencies():
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=torch.float32)
    # (count + 1/2) / (N + 1): a relation never seen (class 2) gets 0.5 / 5 = 0.1, not 0
    torch.testing.assert_close(positive_rates(labels.sum(0), len(labels)),
                               torch.tensor([0.5, 0.5, 0.1], dtype=torch.float64))
    torch.testing.assert_close(positive_rates(labels.sum(0), 4, smoothing=1e-9)[2].item(), 0.0, atol=1e-9, rtol=0)
    with pytest.raises(ValueError):
        positive_rates(labels.sum(0), 4, smoothing=0)


# ----------------------------------------------------------------------------- evidence (DREEAM)
def test_evidence_target_counts_citing_relations():
    # pair 0: two relations cite sentence 1, one of them also sentence 2; pair 2 cites sentence 0
    index = torch.tensor([[0, 1], [0, 1], [0, 2], [2, 0]])
    assert evidence_target(index, 3, 3).tolist() == [[0, 2, 1], [0, 0, 0], [1, 0, 0]]
    assert evidence_target(torch.zeros(0, 2, dtype=torch.long), 2, 4).shape == (2, 4)
    with pytest.raises(ValueError, match=r"\(1, 3\) outside 3 pairs x 3 sentences"):
        evidence_target(torch.tensor([[1, 3]]), 3, 3)


def _dreeam_evidence_loss(s_attn: torch.Tensor, sent_labels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """DREEAM's computation: positive pairs, labels normalised with a 1e-30 floor, KLDivLoss(batchmean)."""
    used = torch.nonzero(labels[:, 1:].sum(dim=-1)).view(-1)
    s_attn, sent_labels = s_attn[used].clone(), sent_labels[used]
    target = sent_labels / (sent_labels.sum(dim=-1, keepdim=True) + 1e-30)
    target[target == 0] = 1e-30
    s_attn[s_attn == 0] = 1e-30
    return torch.nn.KLDivLoss(reduction="batchmean")(s_attn.log(), target)


def _evidence_case():
    sent_attn = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.6, 0.4, 0.0], [0.0, 1.0, 0.0]])
    evidence = torch.tensor([[0.0, 2, 1], [0, 0, 0], [1, 0, 0], [0, 0, 1]])
    # pairs 0-2 hold a relation (pair 1 without evidence); pair 3 holds none, so its evidence is not used
    labels = torch.tensor([[0.0, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0]])
    return sent_attn, evidence, labels


def test_evidence_loss_hand_value_and_dreeam():
    sent_attn, evidence, labels = _evidence_case()
    # pair 0: t = (0, 2/3, 1/3): 2/3 log((2/3) / .5) + 1/3 log((1/3) / .3); pair 1: 0; pair 2: log(1 / .6)
    hand = (2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.3) + math.log(1 / 0.6)) / 3
    value = evidence_loss(sent_attn, evidence, labels)
    assert value.dtype == torch.float32 and value.item() == pytest.approx(hand, abs=1e-6)
    torch.testing.assert_close(value, _dreeam_evidence_loss(sent_attn, evidence, labels), atol=1e-6, rtol=1e-6)
    # a cited sentence with zero attention costs t (log t - log 1e-30), DREEAM's floor
    zero = torch.tensor([[0.0, 1.0]])
    assert evidence_loss(zero, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(
        -math.log(1e-30), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert evidence_loss(sent_attn.bfloat16(), evidence, labels).dtype == torch.float32


def test_evidence_loss_gradients_and_empty():
    sent_attn, evidence, labels = _evidence_case()
    a = (sent_attn.double() + 0.05).requires_grad_()  # gradcheck away from the 1e-30 floor
    assert torch.autograd.gradcheck(lambda x: evidence_loss(x, evidence.double(), labels), (a,))
    a = sent_attn.clone().requires_grad_()
    value = evidence_loss(a, evidence, torch.zeros(4, 3).index_fill_(1, torch.tensor([0]), 1.0))  # no positive
    value.backward()
    assert value.item() == 0.0 and a.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="disagree"):
        evidence_loss(sent_attn, evidence[:, :2], labels)


def test_evidence_sentences_strictly_above_threshold():
    sent_attn = torch.tensor([[0.2, 0.21, 0.59], [0.0, 0.2, 0.8]])
    assert EVIDENCE_THRESHOLD == 0.2
    assert evidence_sentences(sent_attn).tolist() == [[False, True, True], [False, False, True]]
    assert evidence_sentences(sent_attn, 0.5).tolist() == [[False, False, True], [False, False, True]]
