"""ATLOP's group bilinear classifier, logits = sum_g (z_h,g outer z_t,g)^T W_g + b over blocks g of the pair
representations, computed without materialising the [P, emb x block] outer products (and the NCRL authors'
max-symmetric variant), plus the extractors' entity-then-context linear layer.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class GroupBilinearFunction(torch.autograd.Function):
    """sum_g F(x_g, y_g)^T W_cg one group at a time, in reused [rows, bs, bs] buffers; backward recomputes them.

    F(x, y) = x outer y (ATLOP), or with `max_sym` the NCRL authors' max(x outer y, (x outer y)^T), elementwise.
    The forward and the input gradients run over chunks of pairs whose buffer stays in cache (PAIR_CHUNK_BYTES):
    each row's result is the same computation, so the chunking changes no bit of it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, block_size: int,
                max_sym: bool = False) -> torch.Tensor:
        xs, ys, w = _group_views(x, y, weight, block_size)
        n = x.shape[0]
        out = torch.zeros(n, weight.shape[0], dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        chunk = pair_chunk(n, block_size, x)
        outer = x.new_empty(chunk, block_size, block_size)  # reused: fresh big tensors cost page faults on CPU
        sym = x.new_empty(chunk, block_size, block_size) if max_sym else outer
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            o, f = outer[:b - a], (sym[:b - a] if max_sym else outer[:b - a])
            for g in range(xs.shape[1]):
                _block_features(xs[a:b, g], ys[a:b, g], o, f if max_sym else o)
                out[a:b] += f.view(b - a, block_size * block_size) @ w[:, g].t()
        ctx.save_for_backward(x, y, weight)
        ctx.block_size, ctx.max_sym = block_size, max_sym
        return out  # [P, K+1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, y, weight = ctx.saved_tensors
        bs, max_sym = ctx.block_size, ctx.max_sym
        xs, ys, w = _group_views(x, y, weight, bs)
        n, groups = xs.shape[:2]
        grad = grad.to(x.dtype)
        gx, gy = torch.zeros_like(xs), torch.zeros_like(ys)
        gw = weight.new_zeros(groups, weight.shape[0], bs * bs)
        if ctx.needs_input_grad[2]:  # d W sums over all pairs: one product per group, in the unchunked order
            outer = x.new_empty(n, bs, bs)
            sym = x.new_empty(n, bs, bs) if max_sym else outer
            for g in range(groups):
                _block_features(xs[:, g], ys[:, g], outer, sym)
                torch.mm(grad.t(), sym.view(n, bs * bs), out=gw[g])
            del outer, sym
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            chunk = pair_chunk(n, bs, x)
            buf = x.new_empty(chunk, bs, bs)
            outer, sym = (x.new_empty(chunk, bs, bs), x.new_empty(chunk, bs, bs)) if max_sym else (buf, buf)
            for a in range(0, n, chunk):
                b = min(a + chunk, n)
                for g in range(groups):
                    g_out = buf[:b - a]
                    torch.mm(grad[a:b], w[:, g], out=g_out.view(b - a, bs * bs))  # G = d logits / d F
                    if max_sym:
                        o, f = outer[:b - a], sym[:b - a]
                        _block_features(xs[a:b, g], ys[a:b, g], o, f)
                        g_out = _max_sym_backward(o, g_out, out=f)
                    gx[a:b, g] = torch.bmm(g_out, ys[a:b, g, :, None]).squeeze(-1)
                    gy[a:b, g] = torch.bmm(xs[a:b, g, None, :], g_out).squeeze(1)
        return gx.view_as(x), gy.view_as(y), gw.transpose(0, 1).reshape_as(weight), None, None


# Bytes of one [rows, bs, bs] buffer of the group bilinear: small enough to stay in a core's cache between the
# product that writes it and the one that reads it (unchunked, it is [P, bs, bs]: tens of MB through memory).
PAIR_CHUNK_BYTES = 2 ** 21


def pair_chunk(n: int, block_size: int, x: torch.Tensor) -> int:
    """Pairs per chunk of the group bilinear (all of them on a GPU, where memory traffic is not the limit)."""
    if x.device.type != "cpu":
        return max(n, 1)
    return max(1, min(n, PAIR_CHUNK_BYTES // (block_size * block_size * x.element_size())))


def _block_features(x: torch.Tensor, y: torch.Tensor, outer: torch.Tensor, sym: torch.Tensor) -> None:
    """Write x outer y [P, bs, bs] into `outer` and, when `sym` is another buffer, its max-symmetrization."""
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:  # same bits; CPU's bf16 mul converts, bmm does not
        torch.bmm(x[:, :, None], y[:, None, :], out=outer)
    else:
        torch.mul(x[:, :, None], y[:, None, :], out=outer)
    if sym is not outer:
        torch.maximum(outer, outer.transpose(1, 2), out=sym)


def _max_sym_backward(outer: torch.Tensor, grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """d/d outer_ij of sum G * max(outer, outer^T) = s_ij (G_ij + G_ji), s_ij = 1 where outer_ij > outer_ji,
    1/2 on ties (torch.maximum's rule; the diagonal is always a tie), else 0. Written into `out`."""
    win = (outer > outer.transpose(1, 2)).to(outer.dtype).masked_fill_(outer == outer.transpose(1, 2), 0.5)
    return torch.add(grad, grad.transpose(1, 2), out=out).mul_(win)


def _group_views(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, block_size: int):
    """x, y as [P, G, bs] and the bilinear weight as [K+1, G, bs*bs]."""
    n, groups = x.shape[0], x.shape[1] // block_size
    return (x.view(n, groups, block_size), y.view(n, groups, block_size),
            weight.view(weight.shape[0], groups, block_size * block_size))


def group_bilinear(x: torch.Tensor, y: torch.Tensor, linear: nn.Linear, block_size: int,
                   max_sym: bool = False) -> torch.Tensor:
    """ATLOP's group bilinear `linear(flatten_g(x_g outer y_g))` without materialising the outer products;
    `max_sym` takes max(x_g outer y_g, its transpose) per block first (the NCRL authors' DocRED head)."""
    dtype = x.dtype
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    with torch.autocast(x.device.type, enabled=False):
        out = GroupBilinearFunction.apply(x.to(dtype), y.to(dtype), linear.weight.to(dtype), block_size, max_sym)
    return out + linear.bias  # [P, K+1]


def pair_linear(linear: nn.Linear, ent: torch.Tensor, idx: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """ATLOP's extractor `linear(cat([ent[idx], context]))` [P, emb], its entity half computed once per entity
    [E, emb] instead of once per pair (the same sum, added in another order)."""
    width = ent.shape[-1]
    per_entity = nn.functional.linear(ent, linear.weight[:, :width], linear.bias)  # [E, emb]
    return per_entity[idx] + nn.functional.linear(context, linear.weight[:, width:])  # [P, emb]
