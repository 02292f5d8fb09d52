"""Use a trained model on DocRED JSON, raw text or `.jsonl`: `python predict.py --model RUN --input FILE`.

    python predict.py --model runs/roberta-ncrl --input docs.txt --output pred.json --html pred.html
    python predict.py --model runs/roberta-ncrl/model --text "Marie Curie was born in Warsaw."
    python predict.py verify --model runs/roberta-ncrl/model --data dataset/docred/dev.json

--model is a model folder (a run's model/, or one written by save_pretrained: config.json, model.safetensors,
tokenizer files), a run directory (its model/, else its best.pt and encoder/) or a .pt checkpoint; a pickle
checkpoint of an older version loads only with --trust_checkpoint. `verify` re-predicts a labelled DocRED file and
compares its F1 with the one the folder's config.json records for that file (docs/model-folder.md).

Inputs and their conversion to DocRED documents are described in `text2doc.py`. The output is a JSON list, one object
per input document in input order:
    {"title", "text", "sent_spans": [[char_start, char_end]], "sents": [[tokens]],
     "entities": [{"name", "type", "mentions": [{"sent_id", "pos": [start, end], "text", "char_start", "char_end"}]}],
     "relations": [{"h_idx", "t_idx", "r", "relation", "score", "evidence": [sent ids]}], "truncated_at"}
`text` is the input text (for DocRED input: the tokens joined by single spaces, see `text2doc.join_sents`); every
mention's `text == text[char_start:char_end]`; `pos` is [start, end) in tokens of sentence `sent_id`. An entity's
`name` is its longest mention (the first on ties), its `type` its mentions' most frequent type. `r` is the relation
id (e.g. "P17"), `relation` its name from the model's relation names or `--rel_info`; relations are sorted by
descending score. Documents with fewer than two entities get no relations without running the model.
`truncated_at` is null when the whole document was read (the default: the encoder's windows cover any length), else
the character offset in `text` of the first word not wholly read under --max_seq_length; a warning names the file,
the document (index and title) and the entities left with no mention before it.

Every input document is checked before any is converted; then `--chunk_docs` documents at a time are converted,
predicted and appended to the output (and to the --html page), so memory stays flat on inputs of any size (DocRED's
101,873 distant documents included); the output files appear only once they are complete. Unwritable --output or
--html paths are refused before any work.

From Python:
    pipe = DocREPipeline.from_pretrained("runs/roberta-ncrl")
    pipe("Marie Curie was born in Warsaw.")                # one output object
    pipe(["text one", "text two"])                         # a list of them
    pipe.predict_documents(text2doc.read_inputs(...))      # converted documents

From spaCy (spacy_docre.py; the same facts as this module on the same text):
    import spacy_docre; nlp.add_pipe("docre", config={"model": "runs/roberta-ncrl/model"}); nlp(text)._.relations
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import entities
import text2doc
import utils
from evaluation import Relation, read_rel_info
from html_view import html_writer
from prepro import MAX_ENTITIES, add_max_entities_arg, entity_cap_problem
from text2doc import InputError

if TYPE_CHECKING:
    from settings import DocRESettings

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the model seam
# Two functions stand between converted documents and Relations; tests replace them with fakes:
# - load_model(path, device, progress, trust): a model folder, a run directory or a .pt checkpoint ->
#   (bundle: the model, its settings, tokenizer, collator, loss and tuned decision; {relation id: name}).
# - predict_docs(bundle, docs, batch_size): `docs` are converted documents (text2doc: DocRED `title`, `sents`,
#   `vertexSet`, plus extra keys to ignore), each with at least two entities; returns one list per document, in
#   order, of evaluation.Relation(h_idx, t_idx, r, score, evidence) (see evaluation.facts_of_outputs).


@dataclass
class ModelBundle:
    """A trained DocRED model ready to predict: the engine's Pretrained (model, tokenizer, checkpoint), the settings
    it was trained with and reads documents by (`reading_settings`), the batch collator, the loss whose rule turns
    logits into labels and the tuned decision."""
    pretrained: Any  # engine.checkpoints.Pretrained
    settings: DocRESettings
    collate: Any
    loss_fn: Any
    decision: Any  # losses.Decision
    tokenizer: Any  # prepro.WordTokenizer of pretrained.tokenizer, what featurizing takes; built once, as a build
    # copies the tokenizer's backend through JSON
    dtype: Any = None  # autocast dtype (None: fp32)
    progress: bool = False


WHOLE_DOCUMENT = sys.maxsize  # the settings' max_seq_length that reads every token
AS_TRAINED = "as trained"  # read documents at the length the model was trained with (verify: its recorded scores)
MaxLength = Union[int, str, None]  # a number of tokens, None (no cap) or AS_TRAINED


def reading_settings(settings: DocRESettings, max_seq_length: MaxLength) -> DocRESettings:
    """The settings with the length prediction reads: at most `max_seq_length` tokens, every token for None, the
    trained length for AS_TRAINED (that length is a training memory budget: the model reads longer inputs in
    windows)."""
    if max_seq_length == AS_TRAINED:
        return settings
    return settings.replace(max_seq_length=max_seq_length or WHOLE_DOCUMENT)


def load_model(path: str, device: Optional[str] = None, progress: bool = False, trust: bool = False,
               max_seq_length: MaxLength = None) -> Tuple[ModelBundle, Dict[str, str]]:
    """(model bundle, relation names {relation id: name}) of a model folder, a run directory or a .pt checkpoint;
    `trust` allows an old pickle checkpoint (--trust_checkpoint); `max_seq_length` caps the tokens read of each
    document (`reading_settings`; None: whole documents)."""
    from collate import DocRECollator
    from engine import checkpoints
    from engine.task import build_loss_from_args
    from model import DocREModel
    from settings import DocRESettings
    from word_tokenizer import WordTokenizer

    ckpt, best = checkpoints.read_model(path, "--model", trust)
    saved_args = ckpt.get("args", {})
    check_model_task(saved_args, str(best))
    try:
        settings = reading_settings(DocRESettings.from_checkpoint(checkpoints.checkpoint_meta(ckpt), saved_args),
                                    max_seq_length)
    except checkpoints.BUILD_ERRORS as e:  # an untrusted folder's settings: "256" for a size, a list for a name
        raise InputError(f"--model {best}: its settings cannot be read ({type(e).__name__}: {e})") from None
    dev = utils.select_device(device)
    pre = checkpoints.build_pretrained(
        ckpt, best, lambda tokenizer, encoder: DocREModel.from_settings(settings, encoder, tokenizer=tokenizer), dev)
    args = pre.args
    bundle = ModelBundle(pre, settings, DocRECollator(settings.num_class, pre.tokenizer.pad_token_id or 0),
                         build_loss_from_args(args), pre.decision(), WordTokenizer(pre.tokenizer),
                         utils.amp_dtype(dev, getattr(args, "amp", "auto")), progress)
    names = settings.relation_names
    missing = [r for r in settings.rel2id if r != "Na" and r not in names]
    if missing:
        logging.getLogger(__name__).warning("--model %s has no names for %d relation(s) (e.g. %s): they are named "
                                            "by their ids; pass --rel_info for names", best, len(missing), missing[0])
    return bundle, {**{r: r for r in missing}, **names}


def featurize(bundle: ModelBundle, docs: Sequence[Dict[str, Any]]) -> Any:
    """prepro's features of converted documents under the model's settings (labels dropped)."""
    return document_features(docs, bundle.tokenizer, bundle.settings)


def document_features(docs: Sequence[Dict[str, Any]], tokenizer: Any, settings: DocRESettings) -> Any:
    """prepro's features of converted documents (labels dropped); truncation is reported by `warn_truncated`,
    against the user's file."""
    import prepro

    plain = [{k: d[k] for k in ("title", "sents", "vertexSet")} for d in docs]
    try:
        return prepro.features_from_documents(plain, tokenizer, settings, source="the documents", report=False)
    except prepro.ValidationError as e:
        raise InputError(str(e)) from None


def predict_docs(model_bundle: ModelBundle, docs: Sequence[Dict[str, Any]], batch_size: int) -> List[List[Relation]]:
    """Per document (converted, >= 2 entities, in order), its predicted relations under the bundle's decision."""
    import evaluation
    from engine.inference import predict_outputs

    b, s = model_bundle, model_bundle.settings
    features = featurize(b, docs)
    outputs = predict_outputs(b.pretrained.model, features, b.collate, lambda f: len(f["hts"]), batch_size, b.dtype,
                              "predict", b.progress,
                              forward=lambda model, batch: model.named_outputs(batch, evidence=s.evidence))
    return evaluation.facts_of_outputs(outputs.logits, features, b.decision, b.loss_fn, s.id2rel, outputs.evidence,
                                       s.evidence_threshold if s.evidence else None)


# ----------------------------------------------------------------------------- reading length


def truncation_points(docs: Sequence[Dict[str, Any]], tokenizer: Any,
                      settings: DocRESettings) -> List[Optional[Tuple[int, int]]]:
    """Per converted document: None when it fits settings.max_seq_length, else (its length in tokens, the character
    offset in its text of the first word prepro did not read whole): a mention is read exactly when it ends at or
    before that offset."""
    if settings.max_seq_length == WHOLE_DOCUMENT or not docs:
        return [None] * len(docs)
    features = document_features(docs, tokenizer, settings)
    lengths = features.cols["doc_length"]
    points: List[Optional[Tuple[int, int]]] = []
    for doc, length, feat in zip(docs, lengths, features):
        if length <= settings.max_seq_length:
            points.append(None)
            continue
        starts = [a for row in entities.token_offsets(doc) for a, _ in row]
        word = feat["n_read_words"]
        points.append((int(length), starts[word] if word < len(starts) else len(doc["text"])))
    return points


# what a truncation warning advises: predict.py reads whole documents unless capped; verify reads them as trained
READ_WHOLE = "leave out --max_seq_length to read the whole document"
READ_AS_TRAINED = "verify reads documents at the training length, as the recorded scores were made"


def warn_truncated(where: str, out: Dict[str, Any], n_tokens: int, max_seq_length: int,
                   advice: str = READ_WHOLE) -> None:
    """One warning for a document read only up to its `truncated_at`, naming it and the entities lost."""
    cut = out["truncated_at"]
    lost = sum(all(m["char_end"] > cut for m in e["mentions"]) for e in out["entities"])
    logger.warning("%s: field text: %d tokens, more than --max_seq_length %d: read up to character %d of %d "
                   "(truncated_at); %d of %d entities have no mention before it and are scored from a zero "
                   "embedding; %s", where, n_tokens, max_seq_length, cut, len(out["text"]), lost,
                   len(out["entities"]), advice)


# ----------------------------------------------------------------------------- output assembly


def _entity_name(mentions: Sequence[Dict[str, Any]]) -> str:
    """An entity's name: its longest mention, the first on ties."""
    return max((m["name"] for m in mentions), key=len)


def _output_entity(mentions: Sequence[Dict[str, Any]], text: str) -> Dict[str, Any]:
    """One entity of the output object from its vertexSet mentions; a mention's `text` is the text it covers (a
    DocRED `name` can differ from its tokens: Re-DocRED's "Ko Joo-yeon" covers "Ko Joo - yeon")."""
    return {"name": _entity_name(mentions), "type": text2doc.majority_type(mentions),
            "mentions": [{"sent_id": m["sent_id"], "pos": list(m["pos"]), "text": text[m["char_start"]:m["char_end"]],
                          "char_start": m["char_start"], "char_end": m["char_end"]} for m in mentions]}


def _output_relation(rel: Relation, doc: Dict[str, Any], rel_names: Dict[str, str]) -> Dict[str, Any]:
    """One relation of the output object; a ValueError for indices or ids the document or names do not have."""
    h, t, r, score, evidence = rel
    n_ent, n_sent = len(doc["vertexSet"]), len(doc["sents"])
    if not (0 <= h < n_ent and 0 <= t < n_ent) or r not in rel_names:
        raise ValueError(f"document {doc['title']!r}: prediction {tuple(rel)!r} does not fit its {n_ent} entities "
                         f"or the {len(rel_names)} relation names")
    if any(not 0 <= s < n_sent for s in evidence):
        raise ValueError(f"document {doc['title']!r}: evidence {evidence} outside its {n_sent} sentences")
    return {"h_idx": int(h), "t_idx": int(t), "r": r, "relation": rel_names[r], "score": float(score),
            "evidence": sorted(int(s) for s in evidence)}


def assemble_output(doc: Dict[str, Any], relations: Sequence[Relation], rel_names: Dict[str, str]) -> Dict[str, Any]:
    """The output object of one converted document and its predicted relations."""
    rels = [_output_relation(Relation(*rel), doc, rel_names) for rel in relations]
    rels.sort(key=lambda x: (-x["score"], x["h_idx"], x["t_idx"], x["r"]))
    return {"title": doc["title"], "text": doc["text"], "sent_spans": doc["sent_spans"], "sents": doc["sents"],
            "entities": [_output_entity(ent, doc["text"]) for ent in doc["vertexSet"]], "relations": rels}


# ----------------------------------------------------------------------------- pipeline


ENTITY_SOURCES = ("model", "spacy", "given")


def entity_source(choice: Optional[str], settings: Any) -> Optional[str]:
    """The user's `--entities` (None: each document's own entities where it gives them, else the model's heads where
    it has them, else spaCy's NER), refused when it asks for heads the model lacks."""
    if choice == "model" and not has_heads(settings):
        raise InputError("--entities model needs a model trained with --end_to_end (this one has no entity heads)")
    return choice


def has_heads(settings: Any) -> bool:
    """Whether the model has entity heads (trained with --end_to_end)."""
    return bool(getattr(settings, "end_to_end", False))


def finds_with_ner(choice: Optional[str], heads: bool) -> bool:
    """Whether spaCy's NER finds the entities of a document that gives none (else the model's heads do)."""
    return choice == "spacy" or (choice is None and not heads)


def entity_rule(settings: Optional["DocRESettings"], choice: Optional[str] = None) -> text2doc.EntityRule:
    """What a user's entities may be for this model and `--entities` choice: a model of typed candidate pairs
    (biomedical: Chemical -> Disease) takes entities of those types, given, since spaCy's NER finds only DocRED's;
    any other model DocRED's types, given or found."""
    if settings is None or not settings.pair_types:
        return text2doc.EntityRule(choice=choice)
    types = tuple(sorted({t for pair in settings.pair_types for t in pair}))
    return text2doc.EntityRule(types, ner=False, choice=choice)


def check_model_task(args: Dict[str, Any], where: str) -> None:
    """An InputError for a model of a task predict.py does not run (DialogRE, GoEmotions: their scripts' test mode)."""
    from engine.checkpoints import PREDICT_TASKS

    task = args.get("task", "docred") if isinstance(args, dict) else "docred"
    if task not in PREDICT_TASKS:
        raise InputError(f"--model {where} is a {task} model; predict.py runs DocRED-style models "
                         f"({', '.join(PREDICT_TASKS)}): score data with it by {task}.py --load_path {where} "
                         f"--data_dir DIR")


def peek(path: str) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """(meta, training args) of the model at `path`, read without its weights; None where they cannot be read this
    way (`load_model` then says why, or reads an old pickle with --trust_checkpoint)."""
    from engine import checkpoints

    try:
        return checkpoints.peek_meta(path, "--model")
    except utils.UserError:  # no model there: load_model says so after the input's checks
        return None


def settings_of(found: Optional[Tuple[Dict[str, Any], Dict[str, Any]]]) -> Optional["DocRESettings"]:
    """The settings of a model `peek` read; None where there are none or they cannot be read (load_model says why)."""
    from engine import checkpoints
    from settings import DocRESettings

    try:
        return DocRESettings.from_checkpoint(*found) if found is not None else None
    except checkpoints.BUILD_ERRORS:
        return None


def peek_settings(path: str) -> Optional["DocRESettings"]:
    """The settings of the model at `path`, read without its weights (`peek`, `settings_of`)."""
    return settings_of(peek(path))


def check_mention_threshold(threshold: Optional[float], choice: Optional[str], settings: Any) -> None:
    """Refuse --mention_threshold where no entity comes from the model's heads (it was ignored without a word)."""
    if threshold is None or settings is None:  # no model there: load_model says so
        return
    heads = has_heads(settings)
    if not heads or choice in ("given", "spacy"):
        why = f"--entities {choice}" if heads else "this model has no entity heads"
        raise InputError(f"--mention_threshold applies to the entities the model's heads find ({why}): drop it")


def check_entity_source(entities: Optional[str], kind: str) -> None:
    """Refuse --entities given on plain text (no spans to give) and spacy on DocRED JSON or PubTator (they carry
    entities); `kind` is `text2doc.input_kind`'s."""
    if entities == "given" and kind == ".txt":
        raise InputError("--entities given needs entity spans: a .jsonl with \"entities\", DocRED JSON or PubTator")
    if entities == "spacy" and kind in (".json", ".pubtator"):
        carrier = "DocRED JSON" if kind == ".json" else "PubTator"
        raise InputError(f"--entities spacy reads text (.txt, .jsonl, --text); {carrier} carries its entities "
                         f"(--entities given, or model)")


def spacy_for(name: str, ner: bool) -> Any:
    """The spaCy pipeline; where its NER is not needed (the model finds the entities, or they are given), only its
    tokenizer and the rule-based sentencizer (0.4 ms a document against 8.6 for the small model's sentence
    recognizer, and the same sentence splits on 79 of the 100 held-out Re-DocRED documents; the recognizer also
    got 79)."""
    nlp = text2doc.load_spacy(name)
    if not ner:
        for pipe in list(nlp.pipe_names):
            nlp.disable_pipe(pipe)
        nlp.add_pipe("sentencizer")
    return nlp


class DocREPipeline:
    """Raw text or converted documents in, output objects (see the module docstring) out."""

    def __init__(self, model_bundle: Any, rel_names: Dict[str, str], spacy_model: str = text2doc.DEFAULT_SPACY_MODEL,
                 batch_size: int = 4, nlp: Any = None, entities: Optional[str] = None,
                 max_entities: Optional[int] = MAX_ENTITIES):
        self.model_bundle, self.rel_names = model_bundle, rel_names
        self.spacy_model, self.batch_size, self._nlp = spacy_model, batch_size, nlp
        self.entities = entity_source(entities, getattr(model_bundle, "settings", None))  # --entities
        self.max_entities = max_entities  # a document's E x (E - 1) pairs cost memory: more is refused (None: no cap)

    @property
    def has_heads(self) -> bool:
        """Whether the model finds entities itself (trained with --end_to_end)."""
        return has_heads(getattr(self.model_bundle, "settings", None))

    def reads_heads(self, doc: Dict[str, Any]) -> bool:
        """Whether the model's heads find `doc`'s entities: always with --entities model; by default where the
        document gives none of its own (text; DocRED documents give theirs); never in a document without words."""
        if not doc["sents"]:
            return False
        return self.entities == "model" or (self.entities is None and self.has_heads
                                            and doc.get("entities_given") is False)

    @classmethod
    def from_pretrained(cls, path: str, rel_info: Optional[str] = None, device: Optional[str] = None,
                        progress: bool = False, trust: bool = False, max_seq_length: MaxLength = None,
                        **kwargs: Any) -> "DocREPipeline":
        """A pipeline over the trained model at `path` (model folder, run directory or .pt checkpoint), reading
        whole documents or at most `max_seq_length` tokens of each (`reading_settings`)."""
        bundle, rel_names = load_model(path, device, progress, trust, max_seq_length)
        return cls(bundle, read_rel_info(rel_info) if rel_info else rel_names, **kwargs)

    @property
    def nlp(self) -> Any:
        """The spaCy pipeline, loaded on first use."""
        if self._nlp is None:
            self._nlp = spacy_for(self.spacy_model, finds_with_ner(self.entities, self.has_heads))
        return self._nlp

    def predict_documents(self, docs: Sequence[Dict[str, Any]], source: str = "the documents",
                          first: int = 0, advice: str = READ_WHOLE) -> List[Dict[str, Any]]:
        """Output objects of converted documents, in order, each with its `truncated_at`; a document read only in
        part is named in a warning (ending in `advice`) as document `first + i` of `source`. A document with more
        entities than `max_entities` is refused before the model reads it (found by the model: its pairs are not
        scored, with a warning)."""
        self.check_entity_counts(docs, source, first)
        outputs = self._outputs(docs)
        b = self.model_bundle
        points = truncation_points(docs, b.tokenizer, b.settings)
        outputs = [dict(out, truncated_at=point and point[1]) for out, point in zip(outputs, points)]
        for i, (out, point) in enumerate(zip(outputs, points)):
            if point is not None:
                warn_truncated(f"{source}: document {first + i} (title {out['title']!r})", out, point[0],
                               b.settings.max_seq_length, advice)
        return outputs

    def check_entity_counts(self, docs: Sequence[Dict[str, Any]], source: str, first: int) -> None:
        """InputError naming each document of more than `max_entities` entities (given, or spaCy's; the model's own
        are counted once found: `entities.output_objects`)."""
        problems = [(first + i, d, entity_cap_problem(len(d["vertexSet"]), self.max_entities))
                    for i, d in enumerate(docs) if not self.reads_heads(d)]
        problems = [(i, d, p) for i, d, p in problems if p]
        if problems:
            raise InputError("; ".join(
                f"{source}: document {i} (title {d['title']!r}): field entities: {p}; split the document, or raise "
                f"--max_entities (0: no cap)" for i, d, p in problems[:5]))

    def _outputs(self, docs: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Output objects of converted documents, in order (without `truncated_at`): entities and relations from
        the model's own heads where it finds them (issue #36), relations between the documents' entities elsewhere."""
        heads = [i for i, doc in enumerate(docs) if self.reads_heads(doc)]
        found = entities.output_objects(self.model_bundle, [docs[i] for i in heads], self.rel_names, self.batch_size,
                                        self.max_entities) if heads else []
        outputs: Dict[int, Dict[str, Any]] = dict(zip(heads, found))
        runnable = [i for i, doc in enumerate(docs) if i not in outputs and len(doc["vertexSet"]) >= 2]
        predicted = predict_docs(self.model_bundle, [docs[i] for i in runnable], self.batch_size) if runnable else []
        if len(predicted) != len(runnable):
            raise RuntimeError(f"predict_docs returned {len(predicted)} relation lists for {len(runnable)} documents")
        relations: Dict[int, List[Relation]] = dict(zip(runnable, predicted))
        return [outputs.get(i) or assemble_output(doc, relations.get(i, []), self.rel_names)
                for i, doc in enumerate(docs)]

    def __call__(self, inputs: Union[str, Dict[str, Any], Sequence[Union[str, Dict[str, Any]]]],
                 titles: Optional[Sequence[str]] = None) -> Any:
        """Output object of one text or DocRED document, or the list of output objects of a list of them
        (texts go through spaCy, their entities found as `reads_heads` says; DocRED documents keep their entities
        unless the pipeline's entities are "model")."""
        single = isinstance(inputs, (str, dict))
        batch = [inputs] if single else list(inputs)
        if batch and all(isinstance(x, dict) for x in batch):
            if titles is not None:
                raise InputError("titles are for texts; DocRED documents carry their own")
            outputs = self.predict_documents(text2doc.docred_documents(batch, "the documents"))
            return outputs[0] if single else outputs
        if not all(isinstance(x, str) for x in batch):
            raise InputError("pass a text, a DocRED document (dict), or a list of either kind (not mixed)")
        titles = list(titles) if titles is not None else [f"text {i}" for i in range(len(batch))]
        if len(titles) != len(batch):
            raise InputError(f"{len(titles)} titles for {len(batch)} texts")
        items = [(title, text, None, f"text {i} (title {title!r})")
                 for i, (title, text) in enumerate(zip(titles, batch))]
        text2doc.check_ner_allowed(items, entity_rule(getattr(self.model_bundle, "settings", None), self.entities))
        outputs = self.predict_documents(text2doc.convert_texts(self.nlp, items))
        return outputs[0] if single else outputs

    def save_pretrained(self, folder: str) -> None:
        """Export the model as a model folder (config.json, model.safetensors, tokenizer files, README.md)."""
        self.model_bundle.pretrained.save(folder)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False,
                                     description="Predict relations with a trained model on DocRED JSON, raw "
                                     "text (.txt, one document a line), .jsonl ({\"title\", \"text\"} a line) or "
                                     "PubTator.")
    parser.add_argument("--model", required=True,
                        help="model folder (RUN/model or one written by save_pretrained), run directory, or .pt")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="a .json (DocRED), .txt, .jsonl or PubTator (.pubtator, or .txt) file")
    source.add_argument("--text", help="one document's text")
    parser.add_argument("--output", default="-", help="predictions JSON file, or - for stdout (default)")
    parser.add_argument("--html", default=None, help="also write a self-contained HTML page of the predictions")
    parser.add_argument("--batch_size", type=utils.COUNT, default=4)
    add_max_entities_arg(parser)
    parser.add_argument("--max_seq_length", type=utils.SEQ_LENGTH, default=None,
                        help="read at most this many tokens of each document, at least 16 (default: whole documents, "
                             "in the encoder's windows; the training length is not a limit)")
    parser.add_argument("--chunk_docs", type=utils.COUNT, default=1000,
                        help="documents converted and predicted at a time: memory stays flat over inputs of any size")
    parser.add_argument("--spacy_model", default=text2doc.DEFAULT_SPACY_MODEL,
                        help=f"spaCy pipeline for raw text (default {text2doc.DEFAULT_SPACY_MODEL}, else "
                             f"{text2doc.FALLBACK_SPACY_MODEL})")
    parser.add_argument("--rel_info", default=None, help="relation names (default: the model's)")
    parser.add_argument("--entities", default=None, choices=ENTITY_SOURCES,
                        help="where a document's entities come from; default: its own where it gives them (DocRED "
                             "JSON's vertexSet, PubTator, a .jsonl line's entities), else the model's entity heads "
                             "(models trained with --end_to_end), else spaCy's NER. model: the heads on every "
                             "document; spacy: spaCy's NER (documents may not give their own); given: every "
                             "document's own")
    parser.add_argument("--mention_threshold", type=utils.FRACTION, default=None,
                        help="--entities model: a span is a mention above this probability (default: the value "
                             "tuned on dev and stored with the model; 0.5 for models trained before that)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="allow an old pickle checkpoint (it can run code: only files you trust)")
    return parser.parse_args(argv)


def read_source(args: argparse.Namespace, nlp_loader: Callable[[], Any],
                rule: text2doc.EntityRule = text2doc.EntityRule()) -> Tuple[int, Iterator[List[Dict[str, Any]]]]:
    """(number of documents, chunks of converted documents) of --input or --text, every document checked first
    (given entities against `rule`)."""
    if args.text is not None:
        items = [("text", args.text, None, "--text")]
        text2doc.check_ner_allowed(items, rule)
        return 1, iter([text2doc.convert_texts(nlp_loader(), items)])
    return text2doc.input_chunks(args.input, nlp_loader, args.chunk_docs, progress=not args.no_progress, rule=rule)


@contextlib.contextmanager
def json_list_writer(path: str) -> Iterator[Callable[[Dict[str, Any]], None]]:
    """A function that appends one object to a JSON list, written as `json.dumps(list, indent=1)` would write it,
    to stdout for - or else to `path`, which appears only once the list is complete."""
    with contextlib.ExitStack() as stack:
        if path == "-":
            f = sys.stdout
        else:
            from utils import atomic_path

            f = stack.enter_context(open(stack.enter_context(atomic_path(path)), "w", encoding="utf-8"))
        n = 0

        def write(obj: Dict[str, Any]) -> None:
            nonlocal n
            body = json.dumps(obj, ensure_ascii=False, indent=1).replace("\n", "\n ")  # one level deeper
            f.write(("[\n " if n == 0 else ",\n ") + body)
            n += 1

        yield write
        f.write("\n]\n" if n else "[]\n")
        f.flush()


def run(args: argparse.Namespace) -> int:
    """Read and check the input, then convert, predict and write it chunk by chunk; returns the documents written."""
    check_args(args)
    found = peek(args.model)  # config.json read once for both checks
    if found is not None:  # the model's task first: another task's folder makes every input check moot
        check_model_task(found[1], args.model)
    check_entity_source(args.entities, ".txt" if args.text is not None else text2doc.input_kind(args.input))
    settings = settings_of(found)
    check_mention_threshold(args.mention_threshold, args.entities, settings)
    rule = entity_rule(settings, args.entities)
    ner = finds_with_ner(args.entities, has_heads(settings))
    n_docs, chunks = read_source(args, lambda: spacy_for(args.spacy_model, ner), rule)
    pipe = DocREPipeline.from_pretrained(args.model, args.rel_info, args.device, not args.no_progress and
                                         n_docs <= args.chunk_docs, args.trust_checkpoint, args.max_seq_length,
                                         batch_size=args.batch_size, entities=args.entities,
                                         max_entities=args.max_entities or None)
    pipe.model_bundle = entities.at_mention_threshold(pipe.model_bundle, args.mention_threshold)
    bar = None
    if n_docs > args.chunk_docs and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=n_docs, desc="predict", unit="doc")
    source, first = args.input or "--text", 0
    with json_list_writer(args.output) as write, html_writer(args.html) as write_html:
        for chunk in chunks:
            for out in pipe.predict_documents(chunk, source, first):
                write(out)
                write_html(out)
            first += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return n_docs


def check_args(args: argparse.Namespace) -> None:
    """Refuse what would fail after the prediction work: a missing model, unwritable outputs (flag ranges are
    argparse's: `utils.number_flag`)."""
    if not Path(args.model).exists():
        raise InputError(f"--model {args.model}: no such file or directory")
    if args.output != "-":
        utils.check_writable(args.output, "--output")
    if args.html:
        utils.check_writable(args.html, "--html", example="predictions.html")
    utils.check_distinct({"--input": args.input, "--output": None if args.output == "-" else args.output, "--html": args.html})
    if args.text is not None and "\n" not in args.text and os.path.isfile(args.text):  # False on any OSError
        logging.getLogger(__name__).warning("--text %r names an existing file, but --text predicts on the string "
                                            "itself; pass --input %s to read the file", args.text, args.text)


# ----------------------------------------------------------------------------- verify


def parse_verify_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="predict.py verify",
                                     description="Re-predict a labelled file (DocRED JSON; PubTator or .data for a "
                                                 "biomedical model) and compare with the scores the model folder "
                                                 "records for it.")
    parser.add_argument("--model", required=True, help="model folder (RUN/model), run directory, or .pt")
    parser.add_argument("--data", required=True, help="a labelled DocRED .json file (e.g. the dev file); for a "
                                                      "biomedical model, PubTator or .data")
    parser.add_argument("--tolerance", type=utils.NON_NEGATIVE, default=0.01,
                        help="largest F1 difference (points) accepted")
    parser.add_argument("--batch_size", type=utils.COUNT, default=4)
    parser.add_argument("--chunk_docs", type=utils.COUNT, default=1000)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="allow an old pickle checkpoint (it can run code: only files you trust)")
    return parser.parse_args(argv)


def rescore(pipe: DocREPipeline, path: str, chunk_docs: int) -> Dict[str, Any]:
    """Official scores (percent; no Ign F1) of the model's predictions on a labelled DocRED file."""
    import evaluation

    gold = utils.read_json(path, "--data")
    if not isinstance(gold, list) or not any(isinstance(d, dict) and d.get("labels") for d in gold):
        raise InputError(f"--data {path} has no labels: verify needs a labelled DocRED file (e.g. the dev file)")
    with_evidence = pipe.model_bundle.settings.evidence
    preds = [{"title": out["title"], "h_idx": r["h_idx"], "t_idx": r["t_idx"], "r": r["r"],
              **({"evidence": r["evidence"]} if with_evidence else {})}
             for k, chunk in enumerate(text2doc.input_chunks(path, lambda: None, chunk_docs)[1])
             for out in pipe.predict_documents(chunk, path, k * chunk_docs, READ_AS_TRAINED) for r in out["relations"]]
    return evaluation.official_evaluate(preds, gold)


def rescore_pairs(pipe: DocREPipeline, path: str, chunk_docs: int) -> Dict[str, Any]:
    """ATLOP's pair scores (percent, with intra- and inter-sentence F1) of a biomedical model's predictions on a
    labelled PubTator or .data file, read as train_bio.py reads it (its spaCy model; only entities of candidates)."""
    import numpy as np

    import biomed

    dataset = biomed.dataset_of(pipe.model_bundle.settings.pair_types)
    spacy_model = getattr(pipe.model_bundle.pretrained.args, "spacy_model", text2doc.DEFAULT_SPACY_MODEL)
    docs, _ = biomed.read_corpus(path, lambda: text2doc.load_spacy(spacy_model), log=False, drop_unmatched=True)
    docs = [biomed.keep_paired(d, dataset) for d in docs]
    if not any(d["labels"] for d in docs):
        raise InputError(f"--data {path} has no {dataset.relation} relation: verify needs a labelled file (e.g. the "
                         f"dev file)")
    predicted = []  # per document, its predicted (head, tail) pairs
    for first in range(0, len(docs), chunk_docs):
        chunk = [text2doc.with_char_offsets(d) for d in docs[first:first + chunk_docs]]
        outs = pipe.predict_documents(chunk, path, first, READ_AS_TRAINED)
        predicted += [{(r["h_idx"], r["t_idx"]) for r in out["relations"]} for out in outs]
    pairs, gold, intra = biomed.candidate_table(docs, dataset)  # [P] each
    pred = np.array([(h, t) in predicted[i] for i, h, t in pairs], dtype=bool)
    return biomed.pair_scores(pred, gold, intra)


def recorded_scores(config: Dict[str, Any], sha: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(split, scores) that a model folder's config.json records for the data file of SHA-256 `sha`, if any."""
    for split, record in (config.get("training") or {}).items():
        if isinstance(record, dict) and record.get("sha256") == sha and record.get("scores"):
            return split, record["scores"]
    return None


def verify(args: argparse.Namespace) -> int:
    """0 when the F1 on --data equals the recorded one within --tolerance (or nothing is recorded), else 1."""
    from engine.checkpoints import CONFIG, file_sha256

    biomedical = bool(getattr(peek_settings(args.model), "pair_types", None))
    if not Path(args.data).is_file():
        raise InputError(f"--data {args.data}: no such file")
    if not biomedical and Path(args.data).suffix.lower() != ".json":
        raise InputError(f"--data {args.data}: not a DocRED .json file")
    # as the recorded scores were made: at the training length, on the file's own entities (an --end_to_end model's
    # recorded scores are its relation scores on gold entities)
    pipe = DocREPipeline.from_pretrained(args.model, None, args.device, not args.no_progress, args.trust_checkpoint,
                                         AS_TRAINED, batch_size=args.batch_size, entities="given", max_entities=None)
    scores = (rescore_pairs if biomedical else rescore)(pipe, args.data, args.chunk_docs)
    print(f"{args.data}: F1 {scores['f1']:.4f}, precision {scores['precision']:.4f}, recall {scores['recall']:.4f} "
          f"({scores['n_correct']} of {scores['n_pred']} predicted facts correct, {scores['n_gold']} gold)")
    pre = pipe.model_bundle.pretrained
    found = recorded_scores(pre.config, file_sha256(args.data))
    if found is None or not isinstance(found[1].get("f1"), (int, float)) or not math.isfinite(found[1]["f1"]):
        print(f"note: {pre.path} records no scores for this file (not the data it was scored on, by SHA-256): "
              f"nothing to compare")
        return 0
    split, recorded = found
    where = pre.path / CONFIG
    if abs(scores["f1"] - recorded["f1"]) > args.tolerance:
        print(f"verify FAILED: F1 on {args.data} is {scores['f1']:.4f}, but {where} records {recorded['f1']:.4f} "
              f"for this {split} file (tolerance {args.tolerance}): the weights, tokenizer or recorded scores do not "
              f"belong together", file=sys.stderr)
        return 1
    print(f"verified: F1 {scores['f1']:.4f} equals the {recorded['f1']:.4f} that {where} records for this {split} "
          f"file (tolerance {args.tolerance})")
    return 0


def verify_main(argv: List[str]) -> int:
    """`predict.py verify ...`: exit 0 (verified, or nothing recorded), 1 (scores differ), 2 (bad input)."""
    args = parse_verify_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    status: Dict[str, int] = {}
    code = utils.guarded(lambda: status.setdefault("code", verify(args)))
    return code or status.get("code", 0)


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; bad input prints one error line and exits with status 2 (utils.guarded)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "verify":
        return verify_main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return utils.guarded(lambda: run(args))  # text2doc's InputError is a UserError too


if __name__ == "__main__":
    sys.exit(main())
