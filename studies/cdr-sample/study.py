"""Issue #38's learning goal on the CDR sample set: does MiniLM beat the text-blind baselines on held-out abstracts?

The 50 abstracts of `CDR_sample.PubTator.txt` in file order: the first 32 train, the next 8 are the dev fold that
picks BCE's threshold and the best checkpoint (abstracts the model never trains on), the last 10 are the test set,
scored once at the end and never used to choose anything. Each configuration runs `train_bio.py` once per seed, on
one thread; results.json holds the text-blind baselines of dev and test and every run's dev and test scores.

    OMP_NUM_THREADS=1 python studies/cdr-sample/study.py --work /tmp/cdr-sample --configs bce-prior --seeds 66 62
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import biomed  # noqa: E402
import text2doc  # noqa: E402
from mask_mentions import mask_block  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "cdr" / "CDR_sample.PubTator.txt"
SPLITS = {"train.txt": (0, 32), "dev.txt": (32, 40), "test.txt": (40, 50), "train40.txt": (0, 40)}
COMMON = ["--train_file", "train.txt", "--dev_file", "dev.txt", "--test_file", "test.txt",
          "--drop_unmatched_relations", "--model_name_or_path", "minilm", "--device", "cpu", "--no_progress",
          "--max_seq_length", "512", "--init_none_prior", "--classifier_lr", "1e-3"]
CONFIGS = {  # name -> train_bio.py flags besides COMMON and the seed
    "bce": ["--loss", "bce", "--learning_rate", "1e-4", "--num_train_epochs", "8"],
    "bce-batch1": ["--loss", "bce", "--learning_rate", "1e-4", "--num_train_epochs", "6", "--train_batch_size", "1"],
    "bce-batch1-10ep": ["--loss", "bce", "--learning_rate", "1e-4", "--num_train_epochs", "10",
                        "--train_batch_size", "1"],
    "atl": ["--loss", "atl", "--learning_rate", "1e-4", "--num_train_epochs", "10"],
    "ncrl": ["--loss", "ncrl", "--shift", "0.05", "--learning_rate", "1e-4", "--num_train_epochs", "10"],
    "atl-lr5e-5": ["--loss", "atl", "--learning_rate", "5e-5", "--num_train_epochs", "10"],
    # all 40 abstracts, ATL (no threshold to tune), 5 epochs (where the held-out fold peaked for atl); the checkpoint
    # is picked on the training abstracts themselves (there is no other labelled text left)
    "atl-train40-5ep": ["--loss", "atl", "--learning_rate", "1e-4", "--num_train_epochs", "5", "--train_file",
                        "train40.txt", "--dev_file", "train40.txt"],
    # the same two with every abstract read whole (the last --max_seq_length wins; 2 of the 10 test abstracts, 1 of
    # the dev fold and 6 of the training ones are longer than 512 tokens)
    "atl-whole": ["--loss", "atl", "--learning_rate", "1e-4", "--num_train_epochs", "10", "--max_seq_length", "1024"],
    "atl-train40-5ep-whole": ["--loss", "atl", "--learning_rate", "1e-4", "--num_train_epochs", "5", "--train_file",
                              "train40.txt", "--dev_file", "train40.txt", "--max_seq_length", "1024"],
    # ATL started from the encoder of a MiniLM model trained on Re-DocRED (the 400/100 split of studies/end-to-end,
    # 10 epochs, without --end_to_end), written into --work by docred_encoder.py: see the README, "From DocRED"
    "atl-docred": ["--loss", "atl", "--learning_rate", "1e-4", "--num_train_epochs", "10", "--model_name_or_path",
                   "{work}/docred-encoder"],
    # ATL on the sample with every mention's text replaced by its type, in training and test (mask_mentions.py)
    "atl-masked": ["--loss", "atl", "--learning_rate", "1e-4", "--num_train_epochs", "10"],
}
MASKED = {"atl-masked"}  # configurations that read the masked sample


def split_sample(work: Path, masked: bool = False) -> Path:
    """The sample's train, dev and test files (PubTator blocks in file order) under `work`/data, or with every
    mention masked under `work`/data-masked."""
    blocks = SAMPLE.read_text(encoding="utf-8").strip().split("\n\n")
    if masked:
        blocks = [mask_block(b) for b in blocks]
    data = work / ("data-masked" if masked else "data")
    data.mkdir(parents=True, exist_ok=True)
    for name, (a, b) in SPLITS.items():
        (data / name).write_text("\n\n".join(blocks[a:b]) + "\n\n", encoding="utf-8")
    return data


def baselines(data: Path) -> Dict[str, Dict[str, Dict[str, float]]]:
    """The text-blind scores of the dev and test files."""
    nlp = text2doc.load_spacy()
    cdr = biomed.DATASETS["cdr"]
    scores = {split: biomed.text_blind_scores(biomed.read_pubtator(str(data / f"{split}.txt"), nlp, log=False)[0],
                                              cdr) for split in ("dev", "test")}
    return {split: {rule: {k: round(v, 2) for k, v in s.items()} for rule, s in rules.items()}
            for split, rules in scores.items()}


def run_one(data: Path, out: Path, flags: Sequence[str], seed: int) -> Dict[str, Any]:
    """One train_bio.py run (kept if already finished); its scores.json."""
    scores = out / "scores.json"
    if not scores.exists():
        flags = [f.replace("{work}", str(data.parent)) for f in flags]
        cmd = [sys.executable, str(ROOT / "train_bio.py"), "--data_dir", str(data), *COMMON, *flags, "--seed",
               str(seed), "--output_dir", str(out), "--overwrite"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        with open(out.parent / f"{out.name}.log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads(scores.read_text())


def table(results: Dict[str, Any]) -> str:
    """The markdown table of every run, and each configuration's mean test F1."""
    rows = ["| configuration | seed | dev F1 | test F1 (P / R) | test intra F1 | test inter F1 |",
            "|---|---|---|---|---|---|"]
    for name, entry in results["runs"].items():
        seeds = entry["seeds"]
        for seed, r in seeds.items():
            rows.append(f"| {name} | {seed} | {r['dev_f1']:.1f} | {r['test_f1']:.1f} ({r['test_precision']:.1f} / "
                        f"{r['test_recall']:.1f}) | {r['test_intra_f1']:.1f} | {r['test_inter_f1']:.1f} |")
        mean = sum(r["test_f1"] for r in seeds.values()) / len(seeds)
        rows.append(f"| {name} | mean of {len(seeds)} | | **{mean:.1f}** | | |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the configurations x seeds; write (and return) the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/cdr-sample", help="data splits and run directories")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[66, 62])
    p.add_argument("--results", default=str(Path(__file__).with_name("results.json")))
    a = p.parse_args(argv)
    work = Path(a.work)
    data = split_sample(work)
    path = Path(a.results)
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    results["baselines"] = baselines(data)
    keep = ("f1", "precision", "recall", "intra_f1", "inter_f1")
    for name in a.configs:
        for seed in a.seeds:
            files = split_sample(work, masked=True) if name in MASKED else data
            scores = run_one(files, work / f"{name}-seed{seed}", CONFIGS[name], seed)
            results["runs"].setdefault(name, {"flags": CONFIGS[name], "seeds": {}})["seeds"][str(seed)] = {
                f"{split}_{k}": round(scores[f"{split}_{k}"], 2) for split in ("dev", "test") for k in keep}
            path.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
