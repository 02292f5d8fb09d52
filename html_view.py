"""The HTML view of predict.py's output objects: one self-contained page (inline CSS and script), every input
string escaped, written document by document (`html_writer`) so memory stays flat.
"""
from __future__ import annotations

import contextlib
import html
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import utils

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
.truncated { border-left: 4px solid #c00; padding: .3em .8em; background: #fff0f0; }
.unread { color: #999; } .cut { color: #c00; font-weight: bold; }
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


CUT = -1  # the entity index of the mark that shows where reading stopped (truncated_at)
CUT_HTML = '<span class="cut" title="--max_seq_length: the model read nothing after this">[not read past here]</span>'


def _sentence_html(text: str, span: Sequence[int], marks: Sequence[Tuple[int, int, int, str]]) -> str:
    """One sentence's text with its mentions (start, end, entity index, type) highlighted, and the cut (an empty
    mark of entity CUT); overlaps keep the first."""
    pieces, pos = [], span[0]
    for start, end, e_i, etype in sorted(marks):
        if start < pos:
            continue
        pieces.append(_esc(text[pos:start]))
        pieces.append(CUT_HTML if e_i == CUT else
                      f'<mark class="t-{_esc(etype)}" data-ent="{e_i}" title="{_esc(etype)}, entity {e_i}">'
                      f'{_esc(text[start:end])}</mark>')
        pos = end
    pieces.append(_esc(text[pos:span[1]]))
    return "".join(pieces)


def _text_html(out: Dict[str, Any]) -> str:
    """A document's text, each sentence a span with data-sent, each mention a mark with its type and entity; with a
    `truncated_at`, the cut is marked and the sentences after it are grey."""
    marks: Dict[int, List[Tuple[int, int, int, str]]] = {}
    for e_i, ent in enumerate(out["entities"]):
        for m in ent["mentions"]:
            marks.setdefault(m["sent_id"], []).append((m["char_start"], m["char_end"], e_i, ent["type"]))
    cut = out.get("truncated_at")
    text, pieces, pos = out["text"], [], 0
    for s_i, span in enumerate(out["sent_spans"]):
        unread = cut is not None and span[0] >= cut
        if cut is not None and (span[0] < cut < span[1] or unread and pos <= cut):
            marks.setdefault(s_i, []).append((max(cut, span[0]), max(cut, span[0]), CUT, ""))
        pieces.append(_esc(text[pos:span[0]]))
        pieces.append(f'<span class="sent{" unread" * unread}" data-sent="{s_i}">'
                      f'{_sentence_html(text, span, marks.get(s_i, []))}</span>')
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


def html_head(title: str = "DocRE predictions") -> str:
    """The page up to its first document: inline CSS, title, legend."""
    legend = "".join(f'<span class="t-{t}">{t}</span>' for t in TYPE_COLOURS)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f'<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>'
            f'<p class="legend">Entity types: {legend} &middot; click a relation to highlight its evidence '
            f'sentences and entities.</p>')


def html_section(i: int, out: Dict[str, Any]) -> str:
    """One document of the page: its title, text with marked mentions, and relation table."""
    cut = out.get("truncated_at")
    note = "" if cut is None else (f'<p class="truncated">Truncated: the model read only the first {cut} of '
                                   f'{len(out["text"])} characters (--max_seq_length); the grey text was not read.</p>')
    return (f'<section data-doc="{i}"><h2>{_esc(out["title"])}</h2>{note}<div class="text">{_text_html(out)}</div>'
            f'{_relations_html(out)}</section>')


HTML_TAIL = f"<script>{_SCRIPT}</script></body></html>\n"


def render_html(outputs: Sequence[Dict[str, Any]], title: str = "DocRE predictions") -> str:
    """One self-contained HTML page (inline CSS and script) showing the output objects."""
    return html_head(title) + "".join(html_section(i, out) for i, out in enumerate(outputs)) + HTML_TAIL


@contextlib.contextmanager
def html_writer(path: Optional[str]) -> Iterator[Callable[[Dict[str, Any]], None]]:
    """A function that appends one output object to the HTML page at `path` (nothing when None), streamed to a
    temporary file that replaces `path` only once the page is complete."""
    if path is None:
        yield lambda out: None
        return
    with utils.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(html_head())
        n = 0

        def write(out: Dict[str, Any]) -> None:
            nonlocal n
            f.write(html_section(n, out))
            n += 1

        yield write
        f.write(HTML_TAIL)
