"""For each run below a folder: dev F1 and Ign F1 at the end, and the first epoch at which it predicts anything."""
import json
import sys
from pathlib import Path


def summary(run: Path) -> dict:
    """The final and best dev scores of one run and the first evaluated epoch with a prediction."""
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "dev_f1" in r]
    first = next((r["epoch"] for r in evals if r.get("dev_n_pred", 0) > 0), None)
    best = max(evals, key=lambda r: r["dev_f1"]) if evals else {}
    return {"run": str(run), "epochs": len(evals), "first_epoch_with_predictions": first,
            "best_dev_f1": best.get("dev_f1"), "best_dev_ign_f1": best.get("dev_ign_f1")}


if __name__ == "__main__":
    for metrics in sorted(Path(sys.argv[1]).rglob("metrics.jsonl")):
        print(json.dumps(summary(metrics.parent)))
