"""A spaCy component for document-level relation extraction: importing this module registers the factory "docre".

    import spacy, spacy_docre
    nlp = spacy.load("en_core_web_sm")                        # tokenizer, sentences, NER
    nlp.add_pipe("docre", config={"model": "runs/roberta-ncrl/model"})
    doc = nlp("Marie Curie was born in Warsaw. She moved to Paris in 1891.")
    for rel in doc._.relations: print(rel["head"]["mentions"][0], rel["name"], rel["tail"]["mentions"][0], rel["score"])

The component goes after spaCy's sentence splitter and NER: the entities are spaCy's mentions grouped into clusters
(`text2doc.doc_from_spacy`, as `predict.py` does for raw text), and the relations come from `predict.py`'s path
(`DocREPipeline.predict_documents`), so both give the same facts on the same text. It writes

    doc._.entities   [{"name", "type", "mentions": [Span]}]            the entity clusters, in model order
    doc._.relations  [{"head", "tail", "relation", "name", "score", "evidence": [Span]}]
                     one dict per predicted fact, by descending score; head and tail are items of doc._.entities,
                     `relation` the id (e.g. "P17"), `name` its name, `score` the decision margin (> 0 predicted),
                     `evidence` the evidence sentences (empty unless the model was trained with evidence)

`nlp.pipe(texts)` sends `batch_size` documents through the model at a time; long documents are read in windows as
in `predict.py`.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, List, Optional

from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.util import minibatch

import predict
import text2doc

ENTITY_SOURCES = (None, "spacy", "model")  # spaCy's NER, or a --end_to_end model's heads (None: as predict.py)

for _name in ("relations", "entities"):
    if not Doc.has_extension(_name):
        Doc.set_extension(_name, default=None)


class DocREComponent:
    """Predicts the relations between the entity clusters of each Doc with a trained model folder."""

    def __init__(self, nlp: Language, name: str, model: str, entities: Optional[str] = None, batch_size: int = 4,
                 device: Optional[str] = None, rel_info: Optional[str] = None, trust_checkpoint: bool = False):
        if entities not in ENTITY_SOURCES:
            raise ValueError(f"docre: entities={entities!r}: \"spacy\" (spaCy's NER), \"model\" (the entity heads "
                             f"of a model trained with --end_to_end) or null (the heads where the model has them)")
        if not model:
            raise ValueError('docre: pass the model folder, nlp.add_pipe("docre", config={"model": DIR})')
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"docre: batch_size={batch_size!r}: documents through the model at a time, an integer "
                             f">= 1")  # 0 made nlp.pipe yield no Doc at all
        self.name, self.batch_size = name, batch_size
        self.pipeline = predict.DocREPipeline.from_pretrained(model, rel_info, device, trust=trust_checkpoint,
                                                              batch_size=batch_size, nlp=nlp, entities=entities)
        rule = predict.entity_rule(self.pipeline.model_bundle.settings, entities)
        if not rule.ner:
            raise ValueError(f"docre: {model} scores pairs of {', '.join(rule.types)} entities, and this component "
                             f"reads spaCy's NER through DocRED's types: run predict.py with the entities given "
                             f"(a .jsonl) instead")

    def __call__(self, doc: Doc) -> Doc:
        return next(iter(self.pipe([doc])))

    def pipe(self, docs: Iterable[Doc], batch_size: Optional[int] = None) -> Iterator[Doc]:
        """The docs, `batch_size` at a time through the model, each with doc._.entities and doc._.relations."""
        first = 0
        for batch in minibatch(docs, size=batch_size or self.batch_size):
            converted = [text2doc.doc_from_spacy(self._checked(doc), f"doc {first + i}") for i, doc in enumerate(batch)]
            for doc, out in zip(batch, self.pipeline.predict_documents(converted, first=first)):
                annotate(doc, out)
                yield doc
            first += len(batch)

    def _checked(self, doc: Doc) -> Doc:
        """`doc`, when the components before this one gave it sentences."""
        if not doc.has_annotation("SENT_START"):
            raise ValueError(f"{self.name}: the Doc has no sentence boundaries: add the component after a parser "
                             f"or senter (and NER), e.g. to spacy.load('en_core_web_sm')")
        return doc


def _span(doc: Doc, start: int, end: int) -> Span:
    """The tokens covering the characters [start, end) of `doc`."""
    return doc.char_span(start, end, alignment_mode="expand")


def annotate(doc: Doc, out: Dict[str, Any]) -> None:
    """doc._.entities and doc._.relations from predict.py's output object of the same text."""
    entities: List[Dict[str, Any]] = [
        {"name": e["name"], "type": e["type"],
         "mentions": [_span(doc, m["char_start"], m["char_end"]) for m in e["mentions"]]} for e in out["entities"]]
    sentences = [_span(doc, start, end) for start, end in out["sent_spans"]]
    doc._.entities = entities
    doc._.relations = [{"head": entities[r["h_idx"]], "tail": entities[r["t_idx"]], "relation": r["r"],
                        "name": r["relation"], "score": r["score"], "evidence": [sentences[s] for s in r["evidence"]]}
                       for r in out["relations"]]


@Language.factory("docre", default_config={"model": "", "entities": None, "batch_size": 4, "device": None,
                                           "rel_info": None, "trust_checkpoint": False})
def make_docre(nlp: Language, name: str, model: str, entities: Optional[str], batch_size: int, device: Optional[str],
               rel_info: Optional[str], trust_checkpoint: bool) -> DocREComponent:
    """spaCy's factory of the component (see the module docstring)."""
    return DocREComponent(nlp, name, model, entities, batch_size, device, rel_info, trust_checkpoint)
