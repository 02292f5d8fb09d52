"""End to end on dev (issue #36): at each evaluation of `--end_to_end` training, the entity heads decode the dev
documents at every mention threshold of a grid from one encoder pass per document (`entities.decode_features`),
each threshold's entities and relations are scored in JEREX's senses (evaluation_e2e), and the mention threshold is
tuned there. It travels in the decision (`losses.Decision` params, `entities.MENTION_KEY`), so the best checkpoint's
value is stored with the model and predict.py's `--entities model` uses it.

The threshold maximises mention F1 (ties: the value nearest 0.5): it decides which spans are mentions, so it is tuned
on the measure of that decision alone. Entity and relation F1 add the errors of the coreference, typing and relation
heads, which the threshold does not control (with a weak coreference head, entity F1 is near 0 at every threshold and
would decide nothing). In the 400/100 study (studies/end-to-end) the mention-F1 maximum was also that of entity and
relation F1.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

from torch import nn

import entities
import evaluation_e2e
import losses

MENTION_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# a document predicted with more entities than this at a threshold gets no relations there: an unsure mention head
# at a low threshold keeps hundreds of spans, whose pairs would cost far more than the encoder pass (gold DocRED and
# Re-DocRED documents have at most 42 entities)
MAX_ENTITIES = 80
TUNED_LEVEL = "mention"
LOGGED = {"mention": ("precision", "recall", "f1"), "coref": ("f1",), "entity": ("f1",),
          "relation_strict": ("f1",), "relation_relaxed": ("f1",)}  # the flat scores (`flat_scores`) of each level

Scores = Dict[str, Dict[str, float]]  # evaluation_e2e.end_to_end_scores: {level: {precision, recall, f1, ...}}


def predicted_document(doc: Dict[str, Any], pred: Dict[str, Any], facts: Sequence[Any],
                       type_names: Sequence[str]) -> Dict[str, Any]:
    """A DocRED document with the predicted entities (`entities.decode_batch`'s) and relations as its own."""
    return {"title": doc["title"], "sents": doc["sents"], "vertexSet": entities.vertex_set(doc, pred, type_names),
            "labels": [{"h": r.h_idx, "t": r.t_idx, "r": r.r} for r in facts]}


def grid_scores(model: nn.Module, split: Any, collate: Any, settings: Any, decision: losses.Decision, loss_fn: Any,
                batch_size: int, dtype: Any = None, grid: Sequence[float] = MENTION_GRID) -> Dict[float, Scores]:
    """{mention threshold: end-to-end scores} of the model's own entities and relations on a labelled split
    (features with the entity fields, `gold` its documents in order); relations of at most MAX_ENTITIES entities."""
    decoded = entities.decode_features(model, split.features, collate, settings, decision, loss_fn, grid,
                                       batch_size, dtype, MAX_ENTITIES)
    gold = evaluation_e2e.gold_outputs(split.gold)
    return {t: evaluation_e2e.end_to_end_scores(gold, evaluation_e2e.gold_outputs(
        [predicted_document(doc, p, r, settings.entity_types) for doc, (p, r) in zip(split.gold, decoded[t])]))
        for t in grid}


def best_threshold(scores: Dict[float, Scores], level: str = TUNED_LEVEL) -> float:
    """The threshold of highest `level` F1; on ties the one nearest the untuned entities.MENTION_THRESHOLD."""
    order = sorted(scores, key=lambda t: (abs(t - entities.MENTION_THRESHOLD), t))
    return losses.best_of(order, lambda t: scores[t][level]["f1"])


def flat_scores(scores: Scores) -> Dict[str, float]:
    """`e2e_<level>_<measure>` of the levels and measures of LOGGED, e.g. e2e_relation_strict_f1."""
    return {f"e2e_{level}_{m}": scores[level][m] for level, measures in LOGGED.items() for m in measures}


def tune(model: nn.Module, split: Any, collate: Any, settings: Any, decision: losses.Decision, loss_fn: Any,
         batch_size: int, dtype: Any = None) -> Tuple[losses.Decision, Dict[str, float]]:
    """`decision` with the mention threshold tuned on `split`, and the flat end-to-end scores at that threshold."""
    scores = grid_scores(model, split, collate, settings, decision, loss_fn, batch_size, dtype)
    threshold = best_threshold(scores)
    return entities.with_mention_threshold(decision, threshold), flat_scores(scores[threshold])

