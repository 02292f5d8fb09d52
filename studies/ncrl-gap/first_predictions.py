"""For each run below a folder: dev F1 and Ign F1 at the end, and the first epoch at which it predicts anything.

    python studies/ncrl-gap/first_predictions.py studies/ncrl-gap            # one JSON line per run
    python studies/ncrl-gap/first_predictions.py studies/ncrl-gap --table    # a Markdown row per configuration
"""
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from make_tables import fmt, mean_std  # noqa: E402  (the sweep tables' own mean ± std cells)


def summary(run: Path) -> dict:
    """The final and best dev scores of one run and the first evaluated epoch with a prediction."""
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "dev_f1" in r]
    first = next((r["epoch"] for r in evals if r.get("dev_n_pred", 0) > 0), None)
    best = max(evals, key=lambda r: r["dev_f1"]) if evals else {}
    return {"run": str(run), "epochs": len(evals), "first_epoch_with_predictions": first,
            "best_dev_f1": best.get("dev_f1"), "best_dev_ign_f1": best.get("dev_ign_f1"),
            "dev_f1_by_epoch": [round(r["dev_f1"], 1) for r in evals]}


def cell(values) -> str:
    """mean ± sample std (ddof 1) of the values, or the one value, as make_tables writes them."""
    return fmt(*mean_std(values), len(values))


def table(folder: Path) -> str:
    """One row per configuration (sweep folder / run name without the seed): seeds, F1, Ign F1, first epochs."""
    groups = defaultdict(list)
    for metrics in sorted(folder.rglob("metrics.jsonl")):
        run = metrics.parent
        if (run / "scores.json").exists():
            config = re.sub(r"-seed\d+$", "", run.name)
            groups[f"{run.parent.name}/{config}"].append(summary(run))
    lines = ["| configuration | seeds | dev F1 | dev Ign F1 | first epoch predicting, by seed |",
             "|---|---:|---:|---:|---|"]
    for name, runs in groups.items():
        firsts = ", ".join(str(r["first_epoch_with_predictions"] or f"none in {r['epochs']}") for r in runs)
        lines.append(f"| `{name}` | {len(runs)} | {cell([r['best_dev_f1'] for r in runs])} | "
                     f"{cell([r['best_dev_ign_f1'] for r in runs])} | {firsts} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--table" in sys.argv[2:]:
        print(table(Path(sys.argv[1])))
    else:
        for metrics in sorted(Path(sys.argv[1]).rglob("metrics.jsonl")):
            print(json.dumps(summary(metrics.parent)))
