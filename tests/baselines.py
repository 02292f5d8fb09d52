"""Text-blind baselines for the learning tests: relations guessed from entity types (and roles) alone.

A model that never reads the words between the entities can still score well when the entity types
predict the relation. The learning tests fit these baselines on the same training data the model sees
and score them with the task's own scorer, so a bar above them means the model read the text.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Callable, Dict, Hashable, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

import dialogre
from evaluation import official_evaluate

PairKey = Callable[[Mapping, int, int], Hashable]  # (document, head, tail) -> what the baseline sees


class Prior:
    """Relation frequencies among training pairs that share a key (e.g. (head type, tail type))."""

    def __init__(self, examples: Iterable[Tuple[Hashable, Iterable]]):
        self.n_pairs: Counter = Counter()
        self.counts: Dict[Hashable, Counter] = defaultdict(Counter)
        for key, relations in examples:
            self.n_pairs[key] += 1
            self.counts[key].update(relations)
        self.overall = sum(self.counts.values(), Counter())

    def frequency(self, key: Hashable) -> Dict:
        """P(relation | key) in the training pairs; empty for a key never seen."""
        n = self.n_pairs[key]
        return {r: c / n for r, c in self.counts[key].items()} if n else {}

    def above(self, key: Hashable, threshold: float) -> List:
        """Relations whose frequency under `key` reaches `threshold`."""
        return sorted(r for r, p in self.frequency(key).items() if p >= threshold)

    def majority(self, key: Hashable) -> List:
        """The key's most frequent relation (the overall one for an unseen key)."""
        counts = self.counts[key] or self.overall
        return [max(sorted(counts), key=counts.__getitem__)] if counts else []

    def thresholds(self) -> List[float]:
        """Every frequency the prior holds: the grid on which a threshold rule can change."""
        return sorted({p for key in self.n_pairs for p in self.frequency(key).values()})


# ----------------------------------------------------------------------------- DocRED-format corpora
def type_pair(doc: Mapping, h: int, t: int) -> Hashable:
    """(head type, tail type)."""
    return doc["vertexSet"][h][0]["type"], doc["vertexSet"][t][0]["type"]


def type_pair_and_topic(doc: Mapping, h: int, t: int) -> Hashable:
    """Types plus whether head or tail is the document's topic (its first entity, named in the first words)."""
    return (*type_pair(doc, h, t), h == 0, t == 0)


def type_pair_topic_and_cooccurrence(doc: Mapping, h: int, t: int) -> Hashable:
    """Types, topic roles and whether some sentence mentions both entities (positions only, no words)."""
    sents = [{m["sent_id"] for m in doc["vertexSet"][e]} for e in (h, t)]
    return (*type_pair_and_topic(doc, h, t), bool(sents[0] & sents[1]))


def docred_pairs(docs: Sequence[Mapping], key: PairKey) -> Iterable[Tuple[Mapping, int, int, Hashable, List[str]]]:
    """(document, head, tail, key, gold relations) for every ordered entity pair of every document."""
    for doc in docs:
        gold = defaultdict(list)
        for label in doc.get("labels", []):
            gold[label["h"], label["t"]].append(label["r"])
        n = len(doc["vertexSet"])
        for h in range(n):
            for t in range(n):
                if h != t:
                    yield doc, h, t, key(doc, h, t), gold[h, t]


def docred_prior(train: Sequence[Mapping], key: PairKey) -> Prior:
    """The relation prior of `key` over every entity pair of the training documents."""
    return Prior((k, rels) for _, _, _, k, rels in docred_pairs(train, key))


def docred_f1(docs: Sequence[Mapping], key: PairKey, guess: Callable[[Hashable], List[str]]) -> float:
    """Official F1 of predicting guess(key) for each pair of `docs`."""
    pred = [{"title": doc["title"], "h_idx": h, "t_idx": t, "r": r}
            for doc, h, t, k, _ in docred_pairs(docs, key) for r in guess(k)]
    return official_evaluate(pred, docs)["f1"]


def docred_baselines(train: Sequence[Mapping], dev: Sequence[Mapping]) -> Dict[str, float]:
    """Dev F1 of each text-blind baseline; threshold rules use their best threshold on dev (an upper bound)."""
    scores = {}
    for name, key in (("type_prior", type_pair), ("type_topic_prior", type_pair_and_topic),
                      ("type_topic_cooccurrence_prior", type_pair_topic_and_cooccurrence)):
        prior = docred_prior(train, key)
        scores[name] = max(docred_f1(dev, key, lambda k: prior.above(k, th)) for th in prior.thresholds())
    positive = Prior((k, rels) for _, _, _, k, rels in docred_pairs(train, type_pair) if rels)
    scores["type_majority"] = docred_f1(dev, type_pair, positive.majority)  # among related pairs of the types
    return scores


# ----------------------------------------------------------------------------- DialogRE
def dialogre_instances(data: Sequence[list]) -> Iterable[dict]:
    """Instances of DialogRE dialogues in file order (the row order of dialogre.gold_matrix)."""
    return (inst for _, instances in data for inst in instances)


def dialogre_no_key(inst: Mapping) -> Hashable:
    """One key for every instance: the global relation frequencies."""
    return None


def dialogre_type_key(inst: Mapping) -> Hashable:
    """(x type, y type): part of the model's input."""
    return inst["x_type"], inst["y_type"]


def dialogre_type_and_speakers_key(inst: Mapping) -> Hashable:
    """Types plus whether x and y are speakers: the input's speaker markers show this without any word."""
    return (*dialogre_type_key(inst), dialogre.speaker_number(inst["x"]) is not None,
            dialogre.speaker_number(inst["y"]) is not None)


def dialogre_f1(held_out: Sequence[list], key: Callable[[Mapping], Hashable],
                guess: Callable[[Hashable], List[int]]) -> float:
    """The reference F1 of predicting the relation ids guess(key) for each held-out instance."""
    instances = list(dialogre_instances(held_out))
    pred = np.zeros((len(instances), dialogre.NUM_CLASS), dtype=bool)  # [N, 37]
    for row, inst in enumerate(instances):
        pred[row, [dialogre.RID2COL[r] for r in guess(key(inst))]] = True
    return dialogre.f1_score(pred, dialogre.gold_matrix(held_out))["f1"]


def dialogre_baselines(train: Sequence[list], held_out: Sequence[list]) -> Dict[str, float]:
    """Held-out F1 of each key's majority relation and of its prior at the threshold best on `held_out`."""
    scores = {}
    for name, key in (("global", dialogre_no_key), ("type_pair", dialogre_type_key),
                      ("type_pair_speakers", dialogre_type_and_speakers_key)):
        prior = Prior((key(i), [r for r in i["rid"] if r != dialogre.UNANSWERABLE]) for i in dialogre_instances(train))
        scores[f"{name}_majority"] = dialogre_f1(held_out, key, prior.majority)
        scores[f"{name}_prior"] = max(dialogre_f1(held_out, key, lambda k: prior.above(k, th))
                                      for th in prior.thresholds())
    return scores
