"""Read a DocRED JSON file one document at a time, with errors that name the file, document, title and field.

`read_text` decodes the file (a non-UTF-8 byte is located in its document and field); `iter_documents` parses the
top-level list element by element, so no more than one parsed document is held at a time by the reader itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Tuple

from validation import ValidationError

_WS = re.compile(r"[ \t\n\r]*")
_TITLE = re.compile(r'"title"\s*:\s*("(?:[^"\\]|\\.)*")')


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes, read in blocks (a cache hit never holds the file in memory)."""
    digest = hashlib.sha256()  # hashlib.file_digest would need Python 3.11
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file; a clear error for non-UTF-8 bytes, naming the document and field holding them."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        where = _locate_bad_bytes(path, data, e.start)
        raise ValidationError(path, [f"{where}not valid UTF-8: byte {data[e.start:e.start + 1]!r} at offset "
                                     f"{e.start} (line {line}): {e.reason}; re-save the file as UTF-8"]) from None


def iter_documents(path: str | os.PathLike, text: str) -> Iterator[Any]:
    """Yield the elements of the top-level JSON list in `text` one by one (never holding all parsed documents)."""
    for doc, _, _ in _iter_spans(path, text):
        yield doc


def _json_problem(path: str, err: json.JSONDecodeError, what: str) -> ValidationError:
    return ValidationError(path, [f"invalid JSON while reading {what}, at line {err.lineno} column {err.colno} "
                                  f"(char {err.pos}): {err.msg}; is the file truncated?"])


def _too_deep(path: str, what: str) -> ValidationError:
    return ValidationError(path, [f"{what}: JSON nested too deeply (more than about {sys.getrecursionlimit()} "
                                  f"levels of [ and {{); a DocRED document nests 4 levels"])


def _partial_title(text: str) -> str:
    """` (title '...')` from the JSON text of a document that does not parse, or ` (title unknown)`."""
    found = _TITLE.search(text)
    try:
        return f" (title {json.loads(found.group(1))!r})" if found else " (title unknown)"
    except json.JSONDecodeError:
        return " (title unknown)"


def _is_escaped_byte(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def _field_of(obj: Any, accept: Callable[[str], bool], field: str = "") -> Optional[str]:
    """The field (e.g. `sents[0][2]`, `vertexSet[1][0].name`) of the first string in `obj` that `accept` takes."""
    if isinstance(obj, str):
        return field if accept(obj) else None
    items = ([(f"{field}.{k}" if field else k, k, v) for k, v in obj.items()] if isinstance(obj, dict)
             else [(f"{field}[{i}]", "", v) for i, v in enumerate(obj)] if isinstance(obj, list) else [])
    for sub, key, value in items:
        found = sub if accept(key) else _field_of(value, accept, sub)
        if found is not None:
            return found
    return None


def _locate_bad_bytes(path: str | os.PathLike, data: bytes, offset: int) -> str:
    """`document i (title ...): field f: ` of the bytes at `offset`, or "" when the JSON around them is broken."""
    position = len(data[:offset].decode("utf-8-sig"))  # in characters; the bytes before `offset` are valid
    text = data.decode("utf-8-sig", errors="surrogateescape")  # each bad byte becomes one lone surrogate
    try:
        for i, (doc, start, end) in enumerate(_iter_spans(path, text)):
            if start <= position < end:
                title = doc.get("title") if isinstance(doc, dict) else None
                if isinstance(title, str):
                    title = title.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                field = _field_of(doc, _is_escaped_byte) or "<document>"
                return f"document {i} (title {title!r}): field {field}: "
    except ValidationError:
        pass
    return ""


def _iter_spans(path: str | os.PathLike, text: str) -> Iterator[Tuple[Any, int, int]]:
    """(document, start, end) of each element of the top-level JSON list in `text`, parsed one by one."""
    path = str(path)
    decoder = json.JSONDecoder()
    idx = _WS.match(text, 0).end()
    if idx == len(text):  # an empty file holds no documents (check_not_empty decides whether that is an error)
        return
    if text[idx:idx + 1] != "[":
        try:
            top = json.loads(text)
        except json.JSONDecodeError as e:
            raise _json_problem(path, e, "the top level") from None
        except RecursionError:
            raise _too_deep(path, "the top level") from None
        raise ValidationError(path, [f"the top level must be a JSON list of documents, got {type(top).__name__}"])
    idx = _WS.match(text, idx + 1).end()
    if text[idx:idx + 1] == "]":
        return
    i = 0
    while True:
        try:
            doc, end = decoder.raw_decode(text, idx)
        except json.JSONDecodeError as e:
            raise _json_problem(path, e, f"document {i}{_partial_title(text[idx:e.pos])}") from None
        except RecursionError:
            raise _too_deep(path, f"document {i}{_partial_title(text[idx:idx + 10000])}") from None
        yield doc, idx, end
        i += 1
        idx = _WS.match(text, end).end()
        sep = text[idx:idx + 1]
        if sep == "]":
            if _WS.match(text, idx + 1).end() != len(text):
                raise ValidationError(path, [f"extra data after the list of documents at char {idx + 1}"])
            return
        if sep != ",":
            err = json.JSONDecodeError("expected ',' or ']' after a document", text, idx)
            title = doc.get("title") if isinstance(doc, dict) else None
            raise _json_problem(path, err, f"document {i - 1} (title {title!r})")
        idx = _WS.match(text, idx + 1).end()
