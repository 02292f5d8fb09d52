"""Use a trained model on DocRED JSON, raw text or `.jsonl`: `python predict.py --model RUN --input FILE`.

    python predict.py --model runs/roberta-ncrl --input docs.txt --output pred.json --html pred.html
    python predict.py --model runs/roberta-ncrl/best.pt --text "Marie Curie was born in Warsaw."

Inputs and their conversion to DocRED documents are described in `text2doc.py`. The output is a JSON list, one object
per input document in input order:
    {"title", "text", "sent_spans": [[char_start, char_end]], "sents": [[tokens]],
     "entities": [{"name", "type", "mentions": [{"sent_id", "pos": [start, end], "text", "char_start", "char_end"}]}],
     "relations": [{"h_idx", "t_idx", "r", "relation", "score", "evidence": [sent ids]}]}
`text` is the input text (for DocRED input: the tokens joined by single spaces, see `text2doc.join_sents`); every
mention's `text == text[char_start:char_end]`; `pos` is [start, end) in tokens of sentence `sent_id`. An entity's
`name` is its longest mention (the first on ties), its `type` its mentions' most frequent type. `r` is the relation
id (e.g. "P17"), `relation` its name from the model's relation names or `--rel_info`; relations are sorted by
descending score. Documents with fewer than two entities get no relations without running the model.

Every input document is checked before any is converted; then `--chunk_docs` documents at a time are converted,
predicted and appended to the output, so memory stays flat on inputs of any size (DocRED's 101,873 distant documents
included); the output file appears only once it is complete.

From Python:
    pipe = DocREPipeline.from_pretrained("runs/roberta-ncrl")
    pipe("Marie Curie was born in Warsaw.")                # one output object
    pipe(["text one", "text two"])                         # a list of them
    pipe.predict_documents(text2doc.read_inputs(...))      # converted documents
"""
from __future__ import annotations

import argparse
import contextlib
import html
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import text2doc
import utils
from evaluation import Relation
from text2doc import InputError

if TYPE_CHECKING:
    from settings import DocRESettings


# ----------------------------------------------------------------------------- the model seam
# Two functions stand between converted documents and Relations; tests replace them with fakes:
# - load_model(path, device): a run directory (its best.pt), an exported model folder, or a best.pt file ->
#   (bundle: the model, its settings, tokenizer, collator, loss and tuned decision; {relation id: name}).
# - predict_docs(bundle, docs, batch_size): `docs` are converted documents (text2doc: DocRED `title`, `sents`,
#   `vertexSet`, plus extra keys to ignore), each with at least two entities; returns one list per document, in
#   order, of evaluation.Relation(h_idx, t_idx, r, score, evidence) (see evaluation.facts_of_outputs).


@dataclass
class ModelBundle:
    """A trained DocRED model ready to predict: the engine's Pretrained (model, tokenizer, checkpoint), the settings
    it was trained with, the batch collator, the loss whose rule turns logits into labels and the tuned decision."""
    pretrained: Any  # engine.checkpoints.Pretrained
    settings: DocRESettings
    collate: Any
    loss_fn: Any
    decision: Any  # losses.Decision
    dtype: Any = None  # autocast dtype (None: fp32)
    progress: bool = False


def load_model(path: str, device: Optional[str] = None, progress: bool = False) -> Tuple[ModelBundle, Dict[str, str]]:
    """(model bundle, relation names {relation id: name}) of a run directory, exported model folder or best.pt."""
    from collate import DocRECollator
    from engine import checkpoints
    from engine.task import build_loss_from_args
    from model import DocREModel
    from settings import DocRESettings

    best, _ = checkpoints.model_files(path, "--model")
    ckpt = checkpoints.load_checkpoint(best, "cpu", "--model")
    saved_args = ckpt.get("args", {})
    if saved_args.get("task", "docred") != "docred":
        raise InputError(f"--model {best} is a {saved_args['task']} model; predict.py runs DocRED models")
    try:
        settings = DocRESettings.from_checkpoint(checkpoints.checkpoint_meta(ckpt), saved_args)
    except ValueError as e:
        raise InputError(f"--model {best}: {e}") from None
    dev = utils.select_device(device)
    pre = checkpoints.build_pretrained(
        ckpt, best, lambda tokenizer, encoder: DocREModel.from_settings(settings, encoder, tokenizer=tokenizer), dev)
    args = pre.args
    bundle = ModelBundle(pre, settings, DocRECollator(settings.num_class, pre.tokenizer.pad_token_id or 0),
                         build_loss_from_args(args), pre.decision(), utils.amp_dtype(dev, getattr(args, "amp", "auto")),
                         progress)
    names = settings.relation_names
    missing = [r for r in settings.rel2id if r != "Na" and r not in names]
    if missing:
        logging.getLogger(__name__).warning("--model %s has no names for %d relation(s) (e.g. %s): they are named "
                                            "by their ids; pass --rel_info for names", best, len(missing), missing[0])
    return bundle, {**{r: r for r in missing}, **names}


def featurize(bundle: ModelBundle, docs: Sequence[Dict[str, Any]]) -> Any:
    """prepro's features of converted documents under the model's settings (labels dropped)."""
    import prepro

    plain = [{k: d[k] for k in ("title", "sents", "vertexSet")} for d in docs]
    try:
        return prepro.features_from_documents(plain, bundle.pretrained.tokenizer, bundle.settings,
                                              source="the documents")
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


# ----------------------------------------------------------------------------- output assembly


def _entity_name(mentions: Sequence[Dict[str, Any]]) -> str:
    """An entity's name: its longest mention, the first on ties."""
    return max((m["name"] for m in mentions), key=len)


def _output_entity(mentions: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One entity of the output object from its vertexSet mentions."""
    return {"name": _entity_name(mentions), "type": text2doc.majority_type(mentions),
            "mentions": [{"sent_id": m["sent_id"], "pos": list(m["pos"]), "text": m["name"],
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
            "entities": [_output_entity(ent) for ent in doc["vertexSet"]], "relations": rels}


# ----------------------------------------------------------------------------- HTML

TYPE_COLOURS = {"PER": "#ffd6a5", "ORG": "#bde0fe", "LOC": "#caffbf", "TIME": "#fdffb6", "NUM": "#e4c1f9",
                "MISC": "#ffc6c6"}
_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.legend span, mark { padding: 0 .2em; border-radius: 3px; }
.legend span { margin-right: .6em; }
.text { white-space: pre-wrap; background: #fafafa; border: 1px solid #ddd; padding: .8em; }
mark { color: inherit; cursor: default; }
mark.on { outline: 2px solid #333; }
.sent.evi { background: #fff3b0; box-shadow: 0 0 0 2px #fff3b0; }
table { border-collapse: collapse; margin-top: .8em; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: left; }
td.score { text-align: right; font-variant-numeric: tabular-nums; }
tr.rel { cursor: pointer; } tr.rel:hover { background: #f0f0f0; } tr.rel.on { background: #dde8ff; }
"""
_CSS += "".join(f"mark.t-{t}, .legend .t-{t} {{ background: {c}; }}\n" for t, c in TYPE_COLOURS.items())
_SCRIPT = """
document.querySelectorAll('tr.rel').forEach(function (row) {
  row.addEventListener('click', function () {
    var doc = row.closest('section');
    doc.querySelectorAll('.on, .evi').forEach(function (el) { el.classList.remove('on', 'evi'); });
    row.classList.add('on');
    row.dataset.evidence.split(' ').filter(Boolean).forEach(function (s) {
      doc.querySelector('.sent[data-sent="' + s + '"]').classList.add('evi');
    });
    [row.dataset.h, row.dataset.t].forEach(function (e) {
      doc.querySelectorAll('mark[data-ent="' + e + '"]').forEach(function (m) { m.classList.add('on'); });
    });
  });
});
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _sentence_html(text: str, span: Sequence[int], marks: Sequence[Tuple[int, int, int, str]]) -> str:
    """One sentence's text with its mentions (start, end, entity index, type) highlighted; overlaps keep the first."""
    pieces, pos = [], span[0]
    for start, end, e_i, etype in sorted(marks):
        if start < pos:
            continue
        pieces.append(_esc(text[pos:start]))
        pieces.append(f'<mark class="t-{_esc(etype)}" data-ent="{e_i}" title="{_esc(etype)}, entity {e_i}">'
                      f'{_esc(text[start:end])}</mark>')
        pos = end
    pieces.append(_esc(text[pos:span[1]]))
    return "".join(pieces)


def _text_html(out: Dict[str, Any]) -> str:
    """A document's text, each sentence a span with data-sent, each mention a mark with its type and entity."""
    marks: Dict[int, List[Tuple[int, int, int, str]]] = {}
    for e_i, ent in enumerate(out["entities"]):
        for m in ent["mentions"]:
            marks.setdefault(m["sent_id"], []).append((m["char_start"], m["char_end"], e_i, ent["type"]))
    text, pieces, pos = out["text"], [], 0
    for s_i, span in enumerate(out["sent_spans"]):
        pieces.append(_esc(text[pos:span[0]]))
        pieces.append(f'<span class="sent" data-sent="{s_i}">{_sentence_html(text, span, marks.get(s_i, []))}</span>')
        pos = span[1]
    pieces.append(_esc(text[pos:]))
    return "".join(pieces)


def _relations_html(out: Dict[str, Any]) -> str:
    """The relation table of one document; a row's data attributes name its entities and evidence sentences."""
    names = [e["name"] for e in out["entities"]]
    rows = [f'<tr class="rel" data-h="{r["h_idx"]}" data-t="{r["t_idx"]}" '
            f'data-evidence="{" ".join(map(str, r["evidence"]))}"><td>{_esc(names[r["h_idx"]])}</td>'
            f'<td>{_esc(r["relation"])} <small>({_esc(r["r"])})</small></td><td>{_esc(names[r["t_idx"]])}</td>'
            f'<td class="score">{r["score"]:.3f}</td></tr>' for r in out["relations"]]
    if not rows:
        rows = ['<tr><td colspan="4">no relation predicted</td></tr>']
    return ("<table><thead><tr><th>head</th><th>relation</th><th>tail</th><th>score</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def render_html(outputs: Sequence[Dict[str, Any]], title: str = "DocRE predictions") -> str:
    """One self-contained HTML page (inline CSS and script) showing the output objects."""
    legend = "".join(f'<span class="t-{t}">{t}</span>' for t in TYPE_COLOURS)
    sections = [f'<section data-doc="{i}"><h2>{_esc(out["title"])}</h2><div class="text">{_text_html(out)}</div>'
                f'{_relations_html(out)}</section>' for i, out in enumerate(outputs)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f'<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>'
            f'<p class="legend">Entity types: {legend} &middot; click a relation to highlight its evidence '
            f'sentences and entities.</p>{"".join(sections)}<script>{_SCRIPT}</script></body></html>\n')


# ----------------------------------------------------------------------------- pipeline


def read_rel_info(path: str) -> Dict[str, str]:
    """Relation names {id: name} of a rel_info.json; InputError when it is not such an object."""
    try:
        with open(path, encoding="utf-8") as f:
            names = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read relation names: {e}") from None
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise InputError(f"{path}: must be a JSON object {{relation id: name}}")
    return names


ENTITY_SOURCES = ("model", "spacy", "given")


def entity_source(choice: Optional[str], settings: Any) -> Optional[str]:
    """"model" where asked for, or by default for a model with entity heads; else `choice` (None: as before, spaCy
    for text and the given entities of DocRED JSON and .jsonl)."""
    has_heads = bool(getattr(settings, "end_to_end", False))
    if choice == "model" and not has_heads:
        raise InputError("--entities model needs a model trained with --end_to_end (this one has no entity heads)")
    return "model" if choice is None and has_heads else choice


def check_entity_source(entities: Optional[str], suffix: str) -> None:
    """Refuse --entities given on plain text (no spans to give) and spacy on DocRED JSON (it carries entities)."""
    if entities == "given" and suffix == ".txt":
        raise InputError("--entities given needs entity spans: a .jsonl with \"entities\" or DocRED JSON")
    if entities == "spacy" and suffix == ".json":
        raise InputError("--entities spacy reads text (.txt, .jsonl, --text); DocRED JSON carries its entities "
                         "(--entities given, or model)")


def spacy_for(name: str, entities: Optional[str]) -> Any:
    """The spaCy pipeline; without its NER when the model finds the entities (sentences and tokens only)."""
    nlp = text2doc.load_spacy(name)
    if entities == "model" and "ner" in nlp.pipe_names:
        nlp.disable_pipe("ner")
    return nlp


class DocREPipeline:
    """Raw text or converted documents in, output objects (see the module docstring) out."""

    def __init__(self, model_bundle: Any, rel_names: Dict[str, str], spacy_model: str = text2doc.DEFAULT_SPACY_MODEL,
                 batch_size: int = 4, nlp: Any = None, entities: Optional[str] = None):
        self.model_bundle, self.rel_names = model_bundle, rel_names
        self.spacy_model, self.batch_size, self._nlp = spacy_model, batch_size, nlp
        self.entities = entity_source(entities, model_bundle.settings)

    @classmethod
    def from_pretrained(cls, path: str, rel_info: Optional[str] = None, device: Optional[str] = None,
                        progress: bool = False, **kwargs: Any) -> "DocREPipeline":
        """A pipeline over the trained model at `path` (run directory, model folder or best.pt)."""
        bundle, rel_names = load_model(path, device, progress)
        return cls(bundle, read_rel_info(rel_info) if rel_info else rel_names, **kwargs)

    @property
    def nlp(self) -> Any:
        """The spaCy pipeline, loaded on first use."""
        if self._nlp is None:
            self._nlp = spacy_for(self.spacy_model, self.entities)
        return self._nlp

    def predict_documents(self, docs: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Output objects of converted documents, in order."""
        if self.entities == "model":  # entities and relations from the model's own heads (issue #36)
            import entities

            return entities.output_objects(self.model_bundle, docs, self.rel_names, self.batch_size)
        runnable = [i for i, doc in enumerate(docs) if len(doc["vertexSet"]) >= 2]
        predicted = predict_docs(self.model_bundle, [docs[i] for i in runnable], self.batch_size) if runnable else []
        if len(predicted) != len(runnable):
            raise RuntimeError(f"predict_docs returned {len(predicted)} relation lists for {len(runnable)} documents")
        relations: Dict[int, List[Relation]] = dict(zip(runnable, predicted))
        return [assemble_output(doc, relations.get(i, []), self.rel_names) for i, doc in enumerate(docs)]

    def __call__(self, inputs: Union[str, Dict[str, Any], Sequence[Union[str, Dict[str, Any]]]],
                 titles: Optional[Sequence[str]] = None) -> Any:
        """Output object of one text or DocRED document, or the list of output objects of a list of them
        (texts go through spaCy; DocRED documents keep their gold entities)."""
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
        outputs = self.predict_documents(text2doc.convert_texts(self.nlp, items))
        return outputs[0] if single else outputs

    def save_pretrained(self, folder: str) -> None:
        """Export the model as a folder (best.pt without optimizer states, encoder/ config and tokenizer)."""
        self.model_bundle.pretrained.save(folder)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Predict relations with a trained model on DocRED JSON, raw "
                                                 "text (.txt, one document a line) or .jsonl ({\"title\", \"text\"} "
                                                 "a line).")
    parser.add_argument("--model", required=True, help="run directory, exported model folder, or best.pt")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="a .json (DocRED), .txt or .jsonl file")
    source.add_argument("--text", help="one document's text")
    parser.add_argument("--output", default="-", help="predictions JSON file, or - for stdout (default)")
    parser.add_argument("--html", default=None, help="also write a self-contained HTML page of the predictions")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--chunk_docs", type=int, default=1000,
                        help="documents converted and predicted at a time: memory stays flat over inputs of any size")
    parser.add_argument("--spacy_model", default=text2doc.DEFAULT_SPACY_MODEL,
                        help=f"spaCy pipeline for raw text (default {text2doc.DEFAULT_SPACY_MODEL}, else "
                             f"{text2doc.FALLBACK_SPACY_MODEL})")
    parser.add_argument("--rel_info", default=None, help="relation names (default: the model's)")
    parser.add_argument("--entities", default=None, choices=ENTITY_SOURCES,
                        help="model: the model's entity heads (default for models trained with --end_to_end); "
                             "spacy: spaCy's NER on text; given: the .jsonl spans or DocRED JSON's vertexSet")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def read_source(args: argparse.Namespace, nlp_loader: Callable[[], Any]) -> Tuple[int, Iterator[List[Dict[str, Any]]]]:
    """(number of documents, chunks of converted documents) of --input or --text, every document checked first."""
    if args.text is not None:
        return 1, iter([text2doc.convert_texts(nlp_loader(), [("text", args.text, None, "--text")])])
    return text2doc.input_chunks(args.input, nlp_loader, args.chunk_docs, progress=not args.no_progress)


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
    if not Path(args.model).exists():
        raise InputError(f"--model {args.model}: no such file or directory")
    for flag in ("batch_size", "chunk_docs"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    check_entity_source(args.entities, ".txt" if args.text is not None else Path(args.input).suffix.lower())
    n_docs, chunks = read_source(args, lambda: spacy_for(args.spacy_model, args.entities))
    pipe = DocREPipeline.from_pretrained(args.model, args.rel_info, args.device, not args.no_progress and
                                         n_docs <= args.chunk_docs, batch_size=args.batch_size,
                                         entities=args.entities)
    kept: List[Dict[str, Any]] = []  # for the HTML page only
    bar = None
    if n_docs > args.chunk_docs and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=n_docs, desc="predict", unit="doc")
    with json_list_writer(args.output) as write:
        for chunk in chunks:
            for out in pipe.predict_documents(chunk):
                write(out)
                if args.html:
                    kept.append(out)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if args.html:
        from utils import atomic_write_text

        atomic_write_text(args.html, render_html(kept))
    return n_docs


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; bad input prints one error line and exits with status 2 (utils.guarded)."""
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return utils.guarded(lambda: run(args))  # text2doc's InputError is a UserError too


if __name__ == "__main__":
    sys.exit(main())
