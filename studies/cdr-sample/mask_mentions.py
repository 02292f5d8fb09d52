"""The CDR sample with every mention's text replaced by its type ("chemical", "disease"): names or context?

Relation models on little data may learn entity names rather than the words around them (Peng et al., EMNLP 2020,
"Learning from Context or Names?"). Masking every mention, in training and test alike, leaves the model the context
alone. `study.py` runs the `-masked` configurations on the files this writes; see the README, "Names masked".
"""
from __future__ import annotations

from typing import List


def mask_block(block: str) -> str:
    """One PubTator abstract with each mention's text replaced by its lower-cased type and every offset moved to
    match; a mention starting inside an earlier one (nested or composite) shares that mention's word."""
    lines = block.split("\n")
    pmid, _, title = lines[0].split("|", 2)
    text = f"{title} {lines[1].split('|', 2)[2]}"
    rows = [line.split("\t") for line in lines[2:]]
    mentions = sorted((r for r in rows if r[1] != "CID"), key=lambda r: (int(r[1]), -int(r[2])))
    pieces: List[str] = []
    masked = []  # (old start, old end, new start, word) of each masked span, in text order
    out, pos = [], 0
    for r in mentions:
        a, b = int(r[1]), int(r[2])
        if masked and a < masked[-1][1]:
            start, word = masked[-1][2], masked[-1][3]
        else:
            word = r[4].lower()
            pieces.append(text[pos:a])
            start = sum(map(len, pieces))
            pieces.append(word)
            pos = b
            masked.append((a, b, start, word))
        out.append("\t".join([r[0], str(start), str(start + len(word)), word, *r[4:]]))
    new_text = "".join(pieces) + text[pos:]
    title_end = len(title) + sum(len(w) - (b - a) for a, b, _, w in masked if b <= len(title))
    relations = ["\t".join(r) for r in rows if r[1] == "CID"]
    return "\n".join([f"{pmid}|t|{new_text[:title_end]}", f"{pmid}|a|{new_text[title_end + 1:]}", *out, *relations])
