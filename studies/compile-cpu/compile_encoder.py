"""Bare MiniLM encoder, forward + backward in training mode: eager against torch.compile (inductor), on CPU.

    PYTHONPATH=. python studies/compile-cpu/compile_encoder.py {fp32,bf16} {eager,compile}

One fixed batch of 4 documents x 320 random tokens (no padding, so one compiled graph serves every step), two
threads; prints the compile time and the fastest and median of 6 timed steps after 2 warm-up steps.
"""
import sys
import time
from typing import Optional

import torch

import encoder_kernels
import utils


def train_step(encoder: torch.nn.Module, ids: torch.Tensor, dtype: Optional[torch.dtype]) -> None:
    """Forward under autocast `dtype` (None: fp32), backward of the sum of the last hidden states."""
    with utils.autocast(torch.device("cpu"), dtype):
        hidden = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state  # [4, 320, 384]
    hidden.float().sum().backward()


def main(precision: str, mode: str) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    encoder = encoder_kernels.load_encoder(utils.resolve_model_path("minilm")).train()
    ids = torch.randint(1000, 20000, (4, 320))
    if mode == "compile":
        start = time.perf_counter()
        encoder = torch.compile(encoder, dynamic=False)
        train_step(encoder, ids, dtype)
        print(f"compile and first step: {time.perf_counter() - start:.1f} s", flush=True)
    for _ in range(2):
        train_step(encoder, ids, dtype)
    times = []
    for _ in range(6):
        start = time.perf_counter()
        train_step(encoder, ids, dtype)
        times.append(time.perf_counter() - start)
    times.sort()
    print(f"{precision} {mode}: fastest {times[0]:.3f} s, median {times[3]:.3f} s per step", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
