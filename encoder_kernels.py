"""The encoder's CPU training kernels, and `configure_encoder`, the one place deciding which an encoder gets.

`keep_mask` draws dropout masks a fourth as costly as `bernoulli_`; `MaskDropout` is nn.Dropout with those
masks; `checkpointed_sdpa` is transformers' SDPA attention except in CPU training with dropout, where
`DropoutAttentionFunction` keeps q, k, v and a one-byte mask instead of every layer's probabilities. In
evaluation and on a GPU they compute what the plain modules compute. The models call `configure_encoder` once.
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- loading and configuring
def load_encoder(model_name_or_path: Optional[str], config=None, **kwargs) -> PreTrainedModel:
    """AutoModel with SDPA attention where the architecture has it, else eager (e.g. DeBERTa); with
    `model_name_or_path` None, the untrained architecture of `config` (a checkpoint supplies the weights)."""
    from transformers import AutoModel

    def build(attn: str) -> PreTrainedModel:
        if model_name_or_path is None:
            return AutoModel.from_config(config, attn_implementation=attn, **kwargs)
        return AutoModel.from_pretrained(model_name_or_path, config=config, attn_implementation=attn, **kwargs)

    try:
        return build("sdpa")
    except (ValueError, ImportError) as e:
        logger.info("SDPA attention unavailable for %s (%s); using eager attention",
                    model_name_or_path or config.model_type, e)
        return build("eager")


def configure_encoder(encoder: PreTrainedModel, *, attention_weights: bool = False,
                      checkpoint_attention: bool = True, mask_dropout: bool = True) -> None:
    """Give `encoder` its kernels: eager attention when the caller reads its attention weights, else
    `checkpointed_sdpa` where it runs SDPA (or plain SDPA without `checkpoint_attention`); `MaskDropout` for
    its nn.Dropout (or back, without `mask_dropout`)."""
    config = encoder.config
    if attention_weights and getattr(config, "_attn_implementation", "eager") not in (None, "eager"):
        logger.info("%s: switching the encoder to eager attention to read its attention weights",
                    config.model_type)
        encoder.set_attn_implementation("eager")
    else:  # an eager encoder stays eager
        use_checkpointed_sdpa(encoder, checkpoint_attention)
    use_mask_dropout(encoder, mask_dropout)


def enable_activation_checkpointing(encoder: PreTrainedModel) -> None:
    """Recompute each layer's activations in backward (non-reentrant torch checkpointing), through
    `activation_checkpointing_enable` where transformers has it (5.25 on) and its older name elsewhere."""
    kwargs = {"use_reentrant": False}
    enable = getattr(encoder, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers before 5.25; the name is deprecated there and goes in v6
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


# ----------------------------------------------------------------------------- kernels
# Name under which `checkpointed_sdpa` is registered with transformers' attention and mask interfaces.
CHECKPOINTED_SDPA = "sdpa_checkpointed_dropout"


def keep_mask(shape: Sequence[int], p: float, device) -> Tuple[torch.Tensor, float]:
    """A boolean keep mask of `shape`, each entry kept with probability 1 - p (p rounded to 1/65536), and 1 / P(keep).

    Drawn as 16-bit integers, four to each 64-bit draw of torch's generator (so seeded like every other draw),
    against the threshold of p: on CPU a fourth of `bernoulli_`'s time (7.9 against 30 ms for MiniLM's
    [4, 12, 320, 320] attention mask), whose draws were 30% of a bf16 training step of the bare encoder.
    """
    n = math.prod(shape)
    drop = min(round(p * 65536), 65535)  # how many of the 65,536 values drop an entry
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, 2 ** 63 - 1)
    keep = bits.view(torch.int16)[:n].view(shape) >= drop - 32768  # [*shape]
    return keep, 65536 / (65536 - drop)


class MaskDropout(nn.Dropout):
    """nn.Dropout whose CPU training mask comes from `keep_mask` and is kept as one byte an entry; elsewhere the
    same as nn.Dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and 0 < self.p < 1 and x.device.type == "cpu"):
            return super().forward(x)
        keep, scale = keep_mask(x.shape, self.p, x.device)
        return x.mul_(keep).mul_(scale) if self.inplace else torch.mul(x, keep).mul_(scale)


def use_mask_dropout(module: nn.Module, enable: bool = True) -> bool:
    """Swap every plain nn.Dropout inside `module` for a `MaskDropout` of the same p, or back; False if none."""
    old, new = (nn.Dropout, MaskDropout) if enable else (MaskDropout, nn.Dropout)
    swapped = False
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) is old:
                setattr(parent, name, new(child.p, child.inplace))
                swapped = True
    return swapped


def _attention_probs(q: torch.Tensor, k: torch.Tensor, bias: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) over the keys: [B, heads, Tq, Tk]."""
    scores = torch.matmul(q * scale, k.transpose(-1, -2))
    if bias is not None:
        scores.add_(bias)
    return torch.softmax(scores, -1)


class DropoutAttentionFunction(torch.autograd.Function):
    """softmax(q k^T * scale + bias) with dropout, times v, keeping only q, k, v and a boolean dropout mask.

    The math kernel keeps the probabilities and a float mask of every layer; checkpointing it draws the mask a
    second time in backward (the draw is the costliest part of CPU attention). Here the mask is drawn once, by
    `keep_mask`, kept as one byte per weight, and the probabilities are recomputed in backward from q and k
    (two small products).
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, p: float, scale: float):
        probs = _attention_probs(q, k, bias, scale)  # [B, heads, T, T]
        keep, c = keep_mask(probs.shape, p, probs.device)
        ctx.save_for_backward(q, k, v, bias, keep)
        ctx.c, ctx.scale = c, scale
        return torch.matmul(probs.mul_(keep), v).mul_(c)  # [B, heads, T, d]

    @staticmethod
    def backward(ctx, grad):
        q, k, v, bias, keep = ctx.saved_tensors
        c = ctx.c
        probs = _attention_probs(q, k, bias, ctx.scale)
        grad_v = torch.matmul((probs * keep).transpose(-1, -2), grad).mul_(c)
        grad_probs = torch.matmul(grad, v.transpose(-1, -2)).mul_(keep)  # x c, applied below
        grad_scores = grad_probs.sub_((grad_probs * probs).sum(-1, keepdim=True)).mul_(probs)  # softmax backward
        grad_q = torch.matmul(grad_scores, k).mul_(c * ctx.scale)
        grad_k = torch.matmul(grad_scores.transpose(-1, -2), q).mul_(c * ctx.scale)
        return grad_q, grad_k, grad_v, None, None, None


def checkpointed_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                      **kwargs):
    """transformers' SDPA attention, except in CPU training with dropout: `DropoutAttentionFunction`.

    PyTorch's fused CPU attention kernel has no dropout, so training on CPU runs the math path, which keeps
    the attention probabilities and the dropout mask of every layer for backward (most of the activation
    memory of a small encoder). The function keeps q, k, v and a one-byte mask instead, with the same
    outputs and gradients for the same dropped weights (its mask comes from `keep_mask`, not SDPA's own draw).
    Elsewhere (eval, GPU) nothing changes.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal  # transformers' own default
    plain = not causal and kwargs.get("position_bias") is None and getattr(module, "num_key_value_groups", 1) <= 1
    if dropout > 0 and plain and query.device.type == "cpu" and torch.is_grad_enabled() and query.requires_grad:
        bias = attention_mask
        if bias is not None and bias.dtype == torch.bool:  # True = attend
            bias = torch.zeros(bias.shape, dtype=query.dtype, device=query.device).masked_fill_(
                ~bias, torch.finfo(query.dtype).min)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        with torch.autocast("cpu", enabled=False):  # q, k, v arrive in the autocast dtype already
            out = DropoutAttentionFunction.apply(query, key, value, bias, dropout, scale)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def use_checkpointed_sdpa(encoder: PreTrainedModel, enable: bool = True) -> bool:
    """Switch an SDPA encoder to `checkpointed_sdpa` (same masks, same outputs), or back; False if not SDPA."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if getattr(encoder.config, "_attn_implementation", None) not in ("sdpa", CHECKPOINTED_SDPA):
        return False
    AttentionInterface.register(CHECKPOINTED_SDPA, checkpointed_sdpa)
    AttentionMaskInterface.register(CHECKPOINTED_SDPA, sdpa_mask)
    encoder.set_attn_implementation(CHECKPOINTED_SDPA if enable else "sdpa")
    return True
