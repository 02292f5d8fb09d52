"""Helpers for runs under torchrun: the process group, ranks, barriers, gathering, and the RNG states a resume needs.

Every helper is a no-op (or the trivial answer) in a single process, so the rest of the engine calls them freely.
"""
from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

import utils


def init_distributed(device: Optional[str] = None) -> Tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, utils.select_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device:
        utils.select_device(device)  # an unknown name or a missing GPU is an error, not a quiet fall back to gloo
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), world, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def world_info() -> Tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if world_info()[1] > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group at the end of a run."""
    if world_info()[1] > 1:
        dist.destroy_process_group()


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a cache), then the other ranks; when it refuses its input (a
    UserError), every rank raises the same error line instead of waiting for it."""
    rank, world = world_info()
    if world == 1:
        yield
        return
    if rank != 0:
        refused = broadcast_object(None)  # rank 0's outcome
        if refused is not None:
            raise utils.UserError(refused)
        yield
        return
    try:
        yield
    except utils.UserError as e:
        broadcast_object(str(e))
        raise
    broadcast_object(None)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_zero(obj: Any) -> Optional[List[Any]]:
    """`obj` of every rank in rank order on rank 0, None on the others; `[obj]` in a single process."""
    rank, world = world_info()
    if world == 1:
        return [obj]
    out = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def rng_states() -> Dict[str, Any]:
    """Every RNG state a run depends on."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
