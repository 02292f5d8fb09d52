"""CPU training step with dropout masks from `bernoulli_` (torch's) against `encoder_kernels.keep_mask`, in one process.

    PYTHONPATH=. python studies/dropout-rng/ab_dropout.py {fp32,bf16} [repeat]

The benchmark's train phase (packaged MiniLM, the first 48 documents of Re-DocRED dev, batch 4, NCRL, the
engine's own step, 2 threads) with the two mask sources alternating round by round over the same batches
(A, B, A, B, ...), so a change of load slows both alike; prints each one's wall and CPU seconds (the fastest
run of each batch) and its last loss.
"""
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import benchmark  # noqa: E402
import collate  # noqa: E402
import encoder_kernels  # noqa: E402
import prepro  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "redocred" / "dev_revised.json"
OURS = encoder_kernels.keep_mask


def bernoulli_keep_mask(shape, p, device):
    """torch's own draw, as nn.Dropout and SDPA's math kernel make it."""
    return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1 - p), 1 / (1 - p)


def use(source: str) -> None:
    """Every dropout of the encoder draws its masks from `source` ("bernoulli" or "keep_mask")."""
    encoder_kernels.keep_mask = bernoulli_keep_mask if source == "bernoulli" else OURS


def main(precision: str, repeat: int) -> None:
    args = benchmark.parse_args(["--data", str(DATA), "--model", "minilm", "--docs", "48", "--phases", "train",
                                 "--amp", "bf16" if precision == "bf16" else "off", "--repeat", str(repeat)])
    spec = benchmark.prepare(args, Path(tempfile.mkdtemp()))
    a = spec["args"]
    torch.set_num_threads(a["threads"])
    device = torch.device("cpu")
    rel2id = prepro.load_rel2id(str(DATA.parent), a["rel2id"])  # as the benchmark reads it
    tokenizer = benchmark.load_tokenizer(spec)
    features = benchmark.phase_features(spec, tokenizer, rel2id)
    net = benchmark.build_model(a, tokenizer, len(rel2id), 1024)
    trainer = benchmark.engine_trainer(benchmark.training_defaults(a), net, features,
                                       collate.DocRECollator(len(rel2id), tokenizer.pad_token_id or 0))
    batches = benchmark.index_batches(len(features), a["batch_size"])
    net.train()
    losses = {}

    def run(source):
        def step(i):
            use(source)
            losses[source] = trainer.step([batches[i]])["loss"]
        return step

    for source in ("bernoulli", "keep_mask"):
        run(source)(0)  # warm-up
    timed = benchmark.fastest_alternating([run("bernoulli"), run("keep_mask")], len(batches), repeat, device)
    for source, (wall, cpu) in zip(("bernoulli", "keep_mask"), timed):
        print(f"{precision} {source}: {len(features) / wall:.2f} documents/s, {wall:.1f} s wall, {cpu:.1f} s CPU, "
              f"last loss {losses[source]:.3f}", flush=True)
    print(f"keep_mask / bernoulli: {timed[0][0] / timed[1][0]:.3f}x by wall, {timed[0][1] / timed[1][1]:.3f}x by CPU")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
