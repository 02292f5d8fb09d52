"""Tables of a seed sweep: mean ± standard deviation over seeds per configuration, as in the NCRL paper.

    python scripts/make_tables.py SWEEP_DIR [--paper] [--latex] [--plot]

Reads every run directory under SWEEP_DIR (any depth; a folder with an `args.json`), groups the runs by
configuration (task, encoder, training regime, loss and its options; the seed is what varies) and writes
`tables.md` (and `tables.tex` with --latex, `sweep_curves.png` with --plot, `summary.json` always) into
SWEEP_DIR. Standard deviations are sample standard deviations (ddof=1, numpy's `std(ddof=1)`); a row
with one seed shows its value alone.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import configs  # noqa: E402
import sweep  # noqa: E402
import utils  # noqa: E402

PAPER_FILE = Path(__file__).resolve().parent / "paper_results.json"
ABLATION_ORDER = [configs.CONFIGS[n].label for n in configs.ABLATION]
TRAINING_ORDER = ["annotated", "+ distant", "distant (stage 1)"]


@dataclass(frozen=True)
class TaskSpec:
    """How one task's runs are scored and shown."""
    name: str
    title: str
    columns: Tuple[Tuple[str, str], ...]  # (score key, column header)
    select: str  # dev score that names the best run of a row
    curve: str  # metrics.jsonl key drawn by --plot


TASKS: Dict[str, TaskSpec] = {
    "docred": TaskSpec("docred", "DocRED (Table 1 of the NCRL paper)",
                       (("dev_ign_f1", "Dev Ign F1"), ("dev_f1", "Dev F1"), ("test_ign_f1", "Test Ign F1"),
                        ("test_f1", "Test F1")), "dev_ign_f1", "dev_f1"),
    "dialogre": TaskSpec("dialogre", "DialogRE (Table 2 of the NCRL paper)",
                         (("dev_f1", "Dev F1"), ("dev_f1c", "Dev F1c"), ("test_f1", "Test F1"),
                          ("test_f1c", "Test F1c")), "dev_f1", "dev_f1"),
    "goemotions": TaskSpec("goemotions", "GoEmotions (Table 3 of the NCRL paper)",
                           (("dev_map", "Dev mAP"), ("test_map", "Test mAP"), ("test_lrap", "Test LRAP"),
                            ("test_macro_f1", "Test macro-F1")), "dev_map", "dev_map"),
    **{name: TaskSpec(name, f"{title} (ATLOP's biomedical experiment, train_bio.py)",
                      (("dev_f1", "Dev F1"), ("test_f1", "Test F1"), ("test_intra_f1", "Test intra F1"),
                       ("test_inter_f1", "Test inter F1")), "dev_f1", "dev_f1")
       for name, title in (("cdr", "CDR"), ("gda", "GDA"))},
}


@dataclass(frozen=True, order=True)
class Config:
    """One row of a table: everything that identifies a run except its seed."""
    task: str
    encoder: str
    training: str  # "annotated", "+ distant" (fine-tuned from a checkpoint) or "distant (stage 1)"
    loss: str  # e.g. "NCRL", "NCRL -margin reg", "BCE + P-shift", "ATL"
    detail: str = ""  # the loss option's value, e.g. "γ=0.05"
    setup: str = ""  # options besides the loss that set runs apart (setup_of), e.g. "maxsym head, prior start"

    @property
    def loss_label(self) -> str:
        label = f"{self.loss} ({self.detail})" if self.detail else self.loss
        return f"{label} [{self.setup}]" if self.setup else label


@dataclass
class Run:
    """One run directory and what it scored."""
    path: Path
    name: str  # path relative to the sweep folder
    args: Dict[str, Any]
    config: Config
    scores: Dict[str, float]  # flat: dev_f1, dev_ign_f1, test_f1, ... (empty while unfinished)
    finished: bool

    @property
    def seed(self) -> Any:
        return self.args.get("seed")


@dataclass
class Row:
    """The finished runs of one configuration."""
    config: Config
    runs: List[Run] = field(default_factory=list)

    def values(self, key: str) -> List[float]:
        return [r.scores[key] for r in self.runs if key in r.scores]

    def stats(self, key: str) -> Tuple[Optional[float], Optional[float], int]:
        """(mean, sample std or None for fewer than two values, number of values) of one score."""
        return mean_std(self.values(key))

    def select_key(self) -> str:
        """The dev score that ranks the row's runs: its task's, or dev F1 where no run has that (Ign F1 is null
        without the annotated training file)."""
        key = TASKS[self.config.task].select
        return key if self.values(key) or not self.values("dev_f1") else "dev_f1"

    def best(self) -> Optional[Run]:
        """The run with the highest dev score of its task (the one to submit)."""
        key = self.select_key()
        scored = [r for r in self.runs if key in r.scores]
        return max(scored, key=lambda r: r.scores[key]) if scored else None


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float], int]:
    """Mean and sample standard deviation (ddof=1) of `values`; std is None below two values."""
    if not values:
        return None, None, 0
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std, len(values)


# ----------------------------------------------------------------------------- reading runs
read_json = utils.read_json  # UserError (a ValueError) naming the file


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The records of a run's metrics.jsonl (none when absent); a line that is no JSON object (a torn line of a
    run still writing it, a damaged file) is skipped: the log only draws curves and notes, the tables come from
    scores.json."""
    file = path / "metrics.jsonl"
    if not file.exists():
        return []
    records = []
    for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def numeric(record: Dict[str, Any], key: str) -> bool:
    """Whether a metrics record holds a number (not null, not a flag) under `key`."""
    value = record.get(key)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def encoder_name(model: str) -> str:
    """A short encoder name: the folder or hub name, `minilm` for the packaged encoder."""
    model = str(model or "")
    if model.lower() in utils.DEFAULT_ENCODER_ALIASES:
        return "minilm"
    try:
        if Path(model).resolve() == Path(utils.default_encoder_path()).resolve():
            return "minilm"
    except ImportError:
        pass
    return Path(model.rstrip("/")).name or model


def training_regime(args: Dict[str, Any]) -> str:
    """annotated, + distant (fine-tuned from a loaded checkpoint) or distant (stage 1)."""
    if args.get("load_path") and args.get("do_train"):
        return "+ distant"
    if "distant" in Path(str(args.get("train_file") or "")).name:
        return "distant (stage 1)"
    return "annotated"


def loss_config(args: Dict[str, Any]) -> Tuple[str, str]:
    """The loss's row label (scripts/configs.py, the ablation names of Table 4) and its option value."""
    name = configs.name_of(args)
    if name in ("ncrl", "ncrl-noreg"):
        return configs.label_of(args), f"γ={float(args['shift']):g}"
    if name == "bce-pshift":
        return configs.label_of(args), f"m={float(args['prob_shift']):g}"
    return configs.label_of(args), ""


def setup_of(args: Dict[str, Any]) -> str:
    """The head, start and extra losses of a run where they differ from ATLOP's, e.g. "maxsym head, head wd 0.01"."""
    parts = []
    if args.get("bilinear", "atlop") != "atlop":
        parts.append(f"{args['bilinear']} head")
    if float(args.get("classifier_weight_decay") or 0):
        parts.append(f"head wd {float(args['classifier_weight_decay']):g}")
    if args.get("init_none_prior"):
        parts.append("prior start")
    if float(args.get("evidence_lambda") or 0):
        parts.append(f"evidence λ={float(args['evidence_lambda']):g}")
    return ", ".join(parts)


def detect_task(args: Dict[str, Any]) -> Optional[str]:
    """The task a run's args.json names."""
    task = str(args.get("task") or "").lower()
    return task if task in TASKS else None


def read_scores(path: Path) -> Tuple[Dict[str, float], bool]:
    """Flat numeric scores of a run (its scores.json, which every task writes last) and whether it finished."""
    if not (path / "scores.json").exists():
        return {}, False
    scores = read_json(path / "scores.json")
    if not isinstance(scores, dict):
        raise utils.UserError(f"{path / 'scores.json'}: expected a JSON object of scores, got "
                              f"{type(scores).__name__}")
    return {k: float(v) for k, v in scores.items() if numeric(scores, k)}, True


def collect_runs(sweep_dir: str | Path) -> Tuple[List[Run], List[str]]:
    """Every run under `sweep_dir` (hidden folders excluded) and notes on the folders left out."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise utils.UserError(f"{sweep_dir}: no such sweep folder")
    runs, notes = [], []
    for args_file in sorted(sweep_dir.rglob("args.json")):
        path = args_file.parent
        rel = path.relative_to(sweep_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        args = read_json(args_file)
        if not isinstance(args, dict):
            raise utils.UserError(f"{args_file}: expected a JSON object of flags, got {type(args).__name__}")
        task = detect_task(args)
        name = str(rel) if str(rel) != "." else path.name
        if task is None:
            notes.append(f"{name}: unknown task (no `task` in args.json), left out")
            continue
        if args.get("load_path") and not args.get("do_train"):  # every task's test mode only scores a model
            notes.append(f"{name}: a test-mode run (--load_path without --do_train), left out")
            continue
        scores, finished = read_scores(path)
        try:
            config = Config(task, encoder_name(args.get("model_name_or_path")), training_regime(args),
                            *loss_config(args), setup_of(args))
        except (TypeError, ValueError, KeyError) as e:  # e.g. "shift": "abc"
            raise utils.UserError(f"{args_file}: a flag's value is not what train.py writes ({e})") from e
        runs.append(Run(path, name, args, config, scores, finished))
    if not runs and not notes and not (sweep_dir / "sweep_status.json").exists():
        raise utils.UserError(f"{sweep_dir}: no runs in it (no args.json below it); pass a sweep folder or a run "
                              f"directory")
    return runs, notes


def group_runs(runs: Sequence[Run]) -> List[Row]:
    """One row per configuration, of the finished runs, in a stable order (task, encoder, training, loss)."""
    rows: Dict[Config, Row] = {}
    for run in runs:
        if run.finished:
            rows.setdefault(run.config, Row(run.config)).runs.append(run)
    for row in rows.values():
        row.runs.sort(key=lambda r: (str(r.seed), r.name))

    def order(c: Config):
        tr = TRAINING_ORDER.index(c.training) if c.training in TRAINING_ORDER else len(TRAINING_ORDER)
        ab = ABLATION_ORDER.index(c.loss) if c.loss in ABLATION_ORDER else -1
        return list(TASKS).index(c.task), c.encoder, tr, ab, c.loss, c.detail, c.setup

    return [rows[c] for c in sorted(rows, key=order)]


IGNORED_FLAGS = {"seed", "output_dir", "run_name", "device", "save_path", "resume", "no_progress", "wandb",
                 "wandb_project", "cache_dir", "test_batch_size", "load_path", "data_dir",
                 "mmap_threshold_mb"}  # memory only: runs before the flag existed have no such key


def differing_flags(row: Row) -> List[str]:
    """Flags (other than the seed and bookkeeping) whose values differ between the runs of a row."""
    keys = set().union(*(r.args for r in row.runs)) - IGNORED_FLAGS
    return sorted(k for k in keys if len({json.dumps(r.args.get(k), sort_keys=True) for r in row.runs}) > 1)


# ----------------------------------------------------------------------------- the paper's numbers
def load_paper(path: str | Path) -> List[Dict[str, Any]]:
    """The published rows of the NCRL paper (and its baselines) with their sources."""
    data = read_json(Path(path))
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise utils.UserError(f"{path}: expected an object with a `rows` list")
    for i, row in enumerate(data["rows"]):
        if not isinstance(row, dict):
            raise utils.UserError(f"{path}: rows[{i}] is a {type(row).__name__}, not an object of a published row")
    return data["rows"]


def paper_row(config: Config, paper: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The published row of the same task, training regime and loss whose encoder our encoder's name starts with
    (`bert-base` is bert-base-cased's, `roberta-large` is not xlm-roberta-large's)."""
    for p in paper:
        if (p.get("task") == config.task and p.get("training", "annotated") == config.training
                and str(p.get("loss", "")).lower() == config.loss.lower()
                and config.encoder.lower().startswith(str(p.get("encoder", "")).lower())):
            return p
    return None


# ----------------------------------------------------------------------------- tables
def fmt(mean: Optional[float], std: Optional[float], n: int, n_row: int) -> str:
    """`61.23 ± 0.15`; a lone value without ±; `(n=k)` when only k of the row's runs have the score."""
    if mean is None:
        return "–"
    text = f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
    return text if n == n_row else f"{text} (n={n})"


def best_cell(row: Row) -> str:
    best = row.best()
    if best is None:
        return "–"
    key = row.select_key()
    zip_note = f", {best.name}/result.zip" if (best.path / "result.zip").exists() else ""
    return f"{best.name} ({best.scores[key]:.2f}{zip_note})"


def score_cells(row: Row, columns: Sequence[Tuple[str, str]]) -> List[str]:
    return [fmt(*row.stats(key), len(row.runs)) for key, _ in columns]


def filled_columns(rows: Sequence[Row], spec: TaskSpec,
                   paper: Optional[Sequence[Dict[str, Any]]] = None) -> List[Tuple[str, str]]:
    """The task's score columns that some run or shown published row has (no test columns when the test
    file has no labels, unless the paper's test scores are shown)."""
    published = [p for p in (paper_row(r.config, paper) for r in rows) if p] if paper is not None else []
    return [(k, h) for k, h in spec.columns if any(row.values(k) for row in rows) or any(k in p for p in published)]


def seeds_cell(row: Row) -> str:
    seeds = [r.seed for r in row.runs]
    dup = " (repeated seeds!)" if len(set(map(str, seeds))) < len(seeds) else ""
    return f"{len(row.runs)}{dup}"


def main_table(rows: Sequence[Row], columns: Sequence[Tuple[str, str]],
               paper: Optional[Sequence[Dict[str, Any]]]) -> Tuple[List[str], List[List[str]]]:
    """Table-1 style: one row per configuration, a row of published numbers beneath where they exist."""
    header = ["Encoder", "Training", "Loss", "Seeds", *[h for _, h in columns], "Best run (dev score)"]
    body = []
    for row in rows:
        c = row.config
        body.append([c.encoder, c.training, c.loss_label, seeds_cell(row), *score_cells(row, columns),
                     best_cell(row)])
        published = paper_row(c, paper) if paper is not None else None
        if published is not None:
            values = [f"{published[k]:.2f}" if isinstance(published.get(k), (int, float)) else "–"
                      for k, _ in columns]
            body.append(["", "", f"↳ paper: {published.get('cite', 'published')}", "", *values, ""])
    return header, body


def ablation_tables(rows: Sequence[Row], spec: TaskSpec, columns: Sequence[Tuple[str, str]]
                    ) -> List[Tuple[str, List[str], List[List[str]]]]:
    """Table-4 style, per encoder and training regime holding at least two of the ablation rows."""
    groups: Dict[Tuple[str, str], List[Row]] = {}
    for row in rows:
        if row.config.loss in ABLATION_ORDER:
            groups.setdefault((row.config.encoder, row.config.training), []).append(row)
    tables = []
    for (encoder, training), members in groups.items():
        if len({r.config.loss for r in members}) < 2:
            continue
        members.sort(key=lambda r: (ABLATION_ORDER.index(r.config.loss), r.config.detail))
        ref = next((r for r in members if r.config.loss == "NCRL"), None)
        ref_mean = ref.stats(spec.select)[0] if ref is not None else None
        select = dict(spec.columns)[spec.select]
        header = ["Variant", "Seeds", *[h for _, h in columns], f"Δ {select} vs NCRL"]
        body = []
        for r in members:
            mean = r.stats(spec.select)[0]
            delta = f"{mean - ref_mean:+.2f}" if mean is not None and ref_mean is not None else "–"
            body.append([r.config.loss_label, seeds_cell(r), *score_cells(r, columns), delta])
        tables.append((f"Ablation ({encoder}, {training})", header, body))
    return tables


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


LATEX_SUBS = [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"),
              ("±", r"$\pm$"), ("γ", r"$\gamma$"), ("Δ", r"$\Delta$"), ("↳", r"$\hookrightarrow$"), ("–", "--")]


def latex_escape(text: str) -> str:
    for old, new in LATEX_SUBS:
        text = text.replace(old, new)
    return text


def latex_table(title: str, header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A booktabs table."""
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{" + "l" * len(header) + "}",
             r"\toprule", " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in cells) + r" \\" for cells in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + latex_escape(title) + "}", r"\end{table}"]
    return "\n".join(lines)


def incomplete_lines(runs: Sequence[Run]) -> List[str]:
    """Unfinished runs with their last dev score: still running, killed or failed."""
    lines = []
    for run in runs:
        if run.finished:
            continue
        key = TASKS[run.config.task].curve
        evals = [r for r in read_metrics(run.path) if numeric(r, key)]
        last = f"last {key} {evals[-1][key]:.2f} at step {evals[-1].get('step')}" if evals else "no evaluation yet"
        lines.append(f"- {run.name} ({run.config.loss_label}, seed {run.seed}): unfinished, {last}")
    return lines


def failed_lines(sweep_dir: Path) -> List[str]:
    """Runs the sweep runner recorded as failed (sweep_status.json), with their logs."""
    status = sweep.read_status(sweep_dir)
    return [f"- {name}: failed with exit status {s.get('rc')} (log: {s.get('log', '?')})"
            for name, s in sorted(status.items()) if s.get("rc") != 0]


@dataclass
class Report:
    """Everything make_tables writes."""
    markdown: str
    latex: str
    summary: Dict[str, Any]


def build_report(sweep_dir: str | Path, paper_file: Optional[str | Path] = None) -> Report:
    """Tables of the sweep in Markdown and LaTeX, and a JSON summary; `paper_file` adds published rows."""
    sweep_dir = Path(sweep_dir)
    runs, notes = collect_runs(sweep_dir)
    rows = group_runs(runs)
    paper = load_paper(paper_file) if paper_file else None
    md = [f"# Sweep {sweep_dir.name}", "",
          f"{sum(r.finished for r in runs)} finished runs in {len(rows)} configurations. Cells are mean ± "
          "sample standard deviation (ddof=1) over seeds (DocRED in percent); `(n=k)`: only k runs have that score."]
    tex, summary_rows = [], []
    for task, spec in TASKS.items():
        task_rows = [r for r in rows if r.config.task == task]
        if not task_rows:
            continue
        columns = filled_columns(task_rows, spec, paper)
        header, body = main_table(task_rows, columns, paper)
        md += ["", f"## {spec.title}", "", markdown_table(header, body)]
        tex.append(latex_table(spec.title, header, body))
        for title, a_header, a_body in ablation_tables(task_rows, spec, columns):
            md += ["", f"### {title}", "", markdown_table(a_header, a_body)]
            tex.append(latex_table(title, a_header, a_body))
        for row in task_rows:
            diff = differing_flags(row)
            if diff:
                notes.append(f"{row.config.loss_label} ({row.config.encoder}): its runs differ in {', '.join(diff)}")
            summary_rows.append({**vars(row.config), "runs": [r.name for r in row.runs],
                                 "seeds": [r.seed for r in row.runs],
                                 "best_run": getattr(row.best(), "name", None),
                                 **{k: dict(zip(("mean", "std", "n"), row.stats(k))) for k, _ in spec.columns}})
    if paper is not None:
        md += ["", f"Published numbers: {paper_file} (sources in that file)."]
    extra = incomplete_lines(runs) + failed_lines(sweep_dir) + [f"- {n}" for n in notes]
    if extra:
        md += ["", "## Not in the tables", "", *extra]
    summary = {"sweep_dir": str(sweep_dir), "std": "sample (ddof=1)", "rows": summary_rows}
    return Report("\n".join(md) + "\n", "\n\n".join(tex) + "\n", summary)


# ----------------------------------------------------------------------------- curves
def curve(run: Run, key: str) -> Tuple[List[int], List[float]]:
    records = [r for r in read_metrics(run.path) if numeric(r, key) and numeric(r, "step")]
    return [r["step"] for r in records], [r[key] for r in records]


def plot_curves(sweep_dir: str | Path, out: str | Path) -> Optional[Path]:
    """sweep_curves.png: the dev curve of every finished run (thin) and each configuration's mean (thick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = group_runs(collect_runs(sweep_dir)[0])
    tasks = [t for t in TASKS if any(r.config.task == t for r in rows)]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_rows = [r for r in rows if r.config.task == task]
        key = TASKS[task].curve
        vary = [f for f in ("encoder", "training") if len({getattr(r.config, f) for r in task_rows}) > 1]
        for i, row in enumerate(task_rows):
            color = plt.cm.tab10(i % 10)
            by_step: Dict[int, List[float]] = {}
            for run in row.runs:
                steps, values = curve(run, key)
                ax.plot(steps, values, color=color, lw=0.8, alpha=0.35)
                for s, v in zip(steps, values):
                    by_step.setdefault(s, []).append(v)
            steps = sorted(by_step)
            label = ", ".join([getattr(row.config, f) for f in vary] + [row.config.loss_label])
            ax.plot(steps, [statistics.fmean(by_step[s]) for s in steps], "o-", color=color, lw=2.2, ms=3,
                    label=f"{label} (mean of {len(row.runs)})")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{key} (%)")
        ax.set_title(TASKS[task].title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    with utils.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="folder holding the run directories (e.g. runs/sweep-<time>)")
    parser.add_argument("--paper", action="store_true", help="add the paper's published numbers beneath our rows")
    parser.add_argument("--paper_file", default=str(PAPER_FILE), help="published numbers (JSON, with sources)")
    parser.add_argument("--latex", action="store_true", help="also print and write tables.tex")
    parser.add_argument("--plot", action="store_true", help="also draw sweep_curves.png")
    parser.add_argument("--out_dir", default=None, help="where to write the outputs (default: the sweep folder)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Report:
    args = parse_args(argv)
    out_dir = Path(args.out_dir or args.sweep_dir)
    report = build_report(args.sweep_dir, args.paper_file if args.paper else None)
    utils.atomic_write_text(out_dir / "tables.md", report.markdown)
    utils.atomic_write_json(out_dir / "summary.json", report.summary, indent=2)
    print(report.markdown)
    if args.latex:
        utils.atomic_write_text(out_dir / "tables.tex", report.latex)
        print(report.latex)
    if args.plot:
        png = plot_curves(args.sweep_dir, out_dir / "sweep_curves.png")
        print(f"curves: {png}" if png else "no finished runs to plot")
    return report


if __name__ == "__main__":
    utils.cli(main)
