"""The loss configurations of the paper's tables, defined once for the run scripts, sweep.py and make_tables.py.

    python scripts/configs.py ncrl-noreg --shift 0.05     # prints: --loss ncrl --shift 0.05 --no_margin_reg

A configuration is a loss and its options; `ncrl` uses the script's margin shift (SHIFT, 0.05 in the paper
scripts) with margin regularization, and the ablations (Table 4 of the NCRL paper) remove one part or both.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, NamedTuple, Optional, Sequence


class Config(NamedTuple):
    loss: str
    flags: List[str]  # after --loss; {shift} and {pshift} are filled in by flags()
    label: str  # the row label of the tables


CONFIGS: Dict[str, Config] = {
    "ncrl": Config("ncrl", ["--shift", "{shift}"], "NCRL"),
    "ncrl-noreg": Config("ncrl", ["--shift", "{shift}", "--no_margin_reg"], "NCRL -margin reg"),
    "ncrl-noshift": Config("ncrl", ["--shift", "0"], "NCRL -margin shift"),
    "ncrl-noboth": Config("ncrl", ["--shift", "0", "--no_margin_reg"], "NCRL -both"),
    "bce": Config("bce", [], "BCE"),
    "bce-pshift": Config("bce", ["--prob_shift", "{pshift}"], "BCE + P-shift"),
    "atl": Config("atl", [], "ATL"),
}
ABLATION = ["ncrl", "ncrl-noreg", "ncrl-noshift", "ncrl-noboth", "bce", "bce-pshift"]  # Table 4's rows
ALIASES = {"ncrl_no_mr": "ncrl-noreg", "ncrl_no_ms": "ncrl-noshift", "ncrl_no_both": "ncrl-noboth",
           "bce_pshift": "bce-pshift"}  # the names run_dialogre.sh used before


def resolve(name: str) -> str:
    return ALIASES.get(name, name)


def loss_of(name: str) -> str:
    """The --loss of a configuration; any other name is a loss of its own."""
    return CONFIGS[resolve(name)].loss if resolve(name) in CONFIGS else name


def flags(name: str, shift: Optional[float] = None, pshift: float = 0.05) -> List[str]:
    """The loss-option flags of a configuration (besides --loss). Without `shift` the configuration leaves
    the script's own --shift in place."""
    config = CONFIGS.get(resolve(name), Config(name, [], name.upper()))
    out: List[str] = []
    for f in config.flags:
        if f == "{shift}" and shift is None:
            out.pop()  # drop the "--shift" just added: the script keeps its own
            continue
        out.append(f.format(shift=shift, pshift=pshift))
    return out


def name_of(args: Dict[str, Any]) -> str:
    """The configuration a run's args.json describes."""
    loss = str(args.get("loss", "")).lower()
    if loss == "ncrl":
        shift = float(args.get("shift") or 0.0) > 0
        reg = args.get("margin_reg", not args.get("no_margin_reg", False))  # no_margin_reg: runs before 2026-12
        return {(True, True): "ncrl", (True, False): "ncrl-noreg", (False, True): "ncrl-noshift",
                (False, False): "ncrl-noboth"}[(shift, bool(reg))]
    if loss == "bce":
        return "bce-pshift" if float(args.get("prob_shift") or 0.0) > 0 else "bce"
    return loss


def label_of(args: Dict[str, Any]) -> str:
    name = name_of(args)
    return CONFIGS[name].label if name in CONFIGS else (name.upper() or "?")


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description="print the train.py flags of a configuration")
    p.add_argument("config", help=f"one of {', '.join(CONFIGS)} (or any --loss name)")
    p.add_argument("--shift", type=float, default=None, help="NCRL's margin shift of the configurations that keep it")
    p.add_argument("--pshift", type=float, default=0.05, help="BCE's probability shift of bce-pshift")
    args = p.parse_args(argv)
    print(" ".join(["--loss", loss_of(args.config), *flags(args.config, args.shift, args.pshift)]))


if __name__ == "__main__":
    main(sys.argv[1:])
