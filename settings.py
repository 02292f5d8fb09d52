"""`DocRESettings`: everything a trained DocRED model fixes, as one value a checkpoint stores.

The same value builds the features (`prepro.features_from_documents`), the model (`DocREModel.from_settings`) and
turns logits into facts (`evaluation.predicted_facts`), so training, test mode, `predict.py` and the benchmark
cannot disagree on the label map, the window, the entity marker, the head or whether evidence is on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from losses import EVIDENCE_THRESHOLD

MODEL_FIELDS = ("emb_size", "block_size", "max_seq_length", "bilinear")  # DocREModel's arguments besides num_class


@dataclass(frozen=True)
class DocRESettings:
    """The label map, input window, entity marker, classifier shape and evidence switch of one DocRED model."""
    rel2id: Dict[str, int]
    max_seq_length: int = 1024
    entity_marker: Optional[str] = "*"  # put around every mention; None: no marker
    emb_size: int = 768
    block_size: int = 64
    bilinear: str = "atlop"  # "atlop" or the NCRL authors' "maxsym"
    evidence: bool = False  # the model was trained with evidence supervision and predicts evidence sentences
    evidence_threshold: float = EVIDENCE_THRESHOLD
    relation_names: Dict[str, str] = field(default_factory=dict)  # {relation id: name}, for output files
    end_to_end: bool = False  # the model has entity heads (mentions, coreference, types): entities.py
    entity_types: List[str] = field(default_factory=list)  # the training file's `type` labels, in id order
    max_span_width: int = 10  # longest mention (words) the span head proposes
    span_head: str = "endpoints"  # what the span head scores a span from (entities.SPAN_HEADS); a folder written
    # before the field existed has the first head, "endpoints"; --end_to_end training writes --span_head
    pair_types: List[List[str]] = field(default_factory=list)  # [[head type, tail type], ...]: the only candidate
    # pairs (a pair whose head has a mention of the first type and tail one of the second; CDR: [["Chemical",
    # "Disease"]]); empty: every ordered entity pair

    def __post_init__(self) -> None:
        """Refuse pair types that are not [head type, tail type] string pairs (they come from JSON files)."""
        if not (isinstance(self.pair_types, list) and all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in self.pair_types)):
            raise ValueError(f"settings.pair_types must be a list of [head type, tail type] string pairs, got "
                             f"{self.pair_types!r}")

    @property
    def num_class(self) -> int:
        """K + 1: the relations and Na (class 0)."""
        return len(self.rel2id)

    @property
    def id2rel(self) -> Dict[int, str]:
        return {i: r for r, i in self.rel2id.items()}

    def model_kwargs(self) -> Dict[str, Any]:
        """DocREModel's constructor arguments besides the encoder and tokenizer."""
        return {"num_class": self.num_class, **{k: getattr(self, k) for k in MODEL_FIELDS}}

    def replace(self, **changes: Any) -> "DocRESettings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON types, for checkpoints and config files."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> "DocRESettings":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})

    @classmethod
    def from_checkpoint(cls, meta: Mapping[str, Any], args: Mapping[str, Any]) -> "DocRESettings":
        """The settings of a checkpoint's `meta` (and `args`), including those written before this value existed:
        meta["model"] held the model's arguments, meta["entity_marker"] and meta["evidence"] the rest, and runs
        older still kept only the label map and their flags."""
        if "settings" in meta:
            return cls.from_dict(meta["settings"])
        if "rel2id" not in meta:
            raise ValueError("the checkpoint has no label map (meta['rel2id']): it cannot be rebuilt")
        model = dict(meta.get("model") or {})
        missing = [k for k in ("emb_size", "block_size") if k not in model and k not in args]
        if missing:
            raise ValueError(f"the checkpoint has neither meta['model'] nor the head flags of older runs "
                             f"(missing: {missing}); it cannot be rebuilt")
        pick = lambda k, default: model.get(k, args.get(k, default))  # noqa: E731
        marker = meta["entity_marker"] if "entity_marker" in meta else (None if args.get("no_entity_marker")
                                                                        else "*")
        return cls(rel2id=dict(meta["rel2id"]), max_seq_length=pick("max_seq_length", 1024), entity_marker=marker,
                   emb_size=pick("emb_size", 768), block_size=pick("block_size", 64),
                   bilinear=pick("bilinear", "atlop"), evidence=bool(meta.get("evidence", False)),
                   evidence_threshold=args.get("evidence_threshold", EVIDENCE_THRESHOLD),
                   relation_names=dict(meta.get("relation_names") or {}))
