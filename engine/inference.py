"""Batched prediction of a task's outputs over a list of features: length-sorted, under autocast, sharded over ranks."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import utils
from engine.distributed import gather_to_zero, world_info
from engine.task import Outputs, logits_forward

Forward = Callable[[nn.Module, Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]


def _oom(batch_size: int, n_docs: int, n_tokens: int) -> str:
    return (f"CUDA out of memory predicting a batch of {n_docs} documents x {n_tokens} tokens (--test_batch_size "
            f"{batch_size}). Lower memory with a smaller --test_batch_size or --max_seq_length.")


def _stack(blocks: List[Dict[str, torch.Tensor]]) -> Outputs:
    """One `Outputs` from per-feature blocks; a field of varying width (evidence over each batch's sentences) is
    zero-padded on the right to the widest."""
    if not blocks:
        return Outputs(torch.zeros(0, 0))
    fields = {}
    for name in blocks[0]:
        parts = [b[name] for b in blocks]
        width = max(p.shape[1] for p in parts)
        fields[name] = torch.cat([nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])
    return Outputs(**fields)


@torch.no_grad()
def predict_outputs(model: nn.Module, features: Sequence[dict], collate: Callable, rows: Callable[[dict], int],
                    batch_size: int, dtype: Optional[torch.dtype], desc: str = "predict", progress: bool = True,
                    forward: Forward = logits_forward) -> Optional[Outputs]:
    """The outputs of every feature, rows in feature order, fp32 on the CPU: `logits [sum of rows, C]`, ...

    Features are batched in order of length (fewer pad tokens; order does not change a feature's outputs).
    In a distributed run each rank predicts every world-th of them and rank 0 gets all outputs back in order;
    the other ranks get None.
    """
    rank, world = world_info()
    device = next(model.parameters()).device
    order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
    mine = order[rank::world].tolist()
    was_training = model.training
    model.eval()
    blocks: Dict[int, Dict[str, torch.Tensor]] = {}
    for i in tqdm(range(0, len(mine), batch_size), desc=desc, disable=not progress or rank != 0, leave=False,
                  dynamic_ncols=True):
        ids = mine[i:i + batch_size]
        docs = [features[j] for j in ids]
        batch = collate(docs)
        batch.pop("labels", None)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        try:
            with utils.autocast(device, dtype):
                out = {k: v.float().cpu() for k, v in forward(model, batch).items()}
        except torch.cuda.OutOfMemoryError as e:
            raise torch.cuda.OutOfMemoryError(_oom(batch_size, len(docs), batch["input_ids"].shape[1])) from e
        sizes = [rows(f) for f in docs]
        per_name = {k: v.split(sizes) for k, v in out.items()}
        for n, j in enumerate(ids):  # one block per feature
            blocks[j] = {k: parts[n] for k, parts in per_name.items()}
    model.train(was_training)
    shards = gather_to_zero(blocks)
    if shards is None:
        return None
    blocks = {j: b for shard in shards for j, b in shard.items()}
    return _stack([blocks[j] for j in range(len(features))])
