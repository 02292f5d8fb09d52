"""Write a synthetic document-level relation extraction corpus in DocRED's JSON format.

Each document reads like the lead of a small encyclopedia article about one topic entity (a
person, an organization, a creative work or a city) in a made-up world: names of people,
places, companies and works are drawn from syllables and word lists, so nothing can be looked
up in an encoder's memory and every relation has to be read from the text.

What a document contains:
  * 4-10 sentences (``--min_sents``/``--max_sents``), about 150-350 words, 8-15 entities of
    DocRED's types PER, ORG, LOC, TIME, NUM and MISC; an entity has 1-4 mentions, each in a
    different sentence (a person's later mentions may be the surname only).
  * 20 relation types with real Wikidata property ids (``rel_info.json``), each stated by several
    templates whose words decide the relation (``was born in`` vs. ``died in`` vs. ``lives in`` vs.
    ``visited``, ``worked for`` vs. ``turned down an offer from``).
  * Entity types do not decide the relation: each type pair carries several relations and unrelated
    clauses (a person and a city: birth, death, residence or a visit; two places: part of, border or
    twin towns), and the topic entity is paired as often with entities it has no relation to, so a
    guess from the types, the topic and sentence co-occurrence stays near 33 dev F1
    (tests/baselines.py).
  * Relations that need more than one sentence: the topic entity is often the pronoun subject
    ("She studied at ..."), and composed facts are labelled with the evidence of both premises:
    born in city C + C lies in country K => citizen of K (P27); C lies in region R + R is in
    country K => C's country is K (P17); organization based/located in C + C in K => P17.
  * Multi-label pairs ("studied at U and later taught there" => P69 + P108; "written and
    directed by" => P57 + P58; "C is a city in K" => P17 + P131) and inverse pairs (spouse).
  * Distractor entities and sentences of the same types that state no relation, so most
    entity pairs are none-class pairs.

Outputs ``train_annotated.json``, ``dev.json``, ``test.json`` (without ``labels``, like DocRED's
test file) and ``rel_info.json``. ``--fn_noise p`` drops each positive label of the training file
with probability p (false negatives); dev and test keep every label. Output is byte-identical
for a seed; document i of a split does not depend on the split's size. Splits are written one
document at a time, so ``--n_train 100000 --only train`` runs in constant memory.

Example: python scripts/make_synthetic.py --out dataset/synthetic --seed 0
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from feature_cache import unwritable  # noqa: E402
from utils import UserError, atomic_path, atomic_write_json, cli  # noqa: E402

REL_INFO = {
    "P17": "country",
    "P19": "place of birth",
    "P20": "place of death",
    "P26": "spouse",
    "P27": "country of citizenship",
    "P40": "child",
    "P47": "shares border with",
    "P50": "author",
    "P57": "director",
    "P58": "screenwriter",
    "P69": "educated at",
    "P108": "employer",
    "P131": "located in the administrative territorial entity",
    "P159": "headquarters location",
    "P175": "performer",
    "P361": "part of",
    "P551": "residence",
    "P569": "date of birth",
    "P570": "date of death",
    "P577": "publication date",
}
SPLIT_FILES = {"train": "train_annotated.json", "dev": "dev.json", "test": "test.json"}
MAX_MENTIONS = 4

# Clause kinds: (facts as (head slot, tail slot, relation), templates). All templates of a kind
# state the same facts. "{a}" is a mention of slot a, "{a|attr}" a word agreeing with a's entity,
# "[x|y]" a random choice ("_" joins words).
CLAUSES: Dict[str, Tuple[List[Tuple[str, str, str]], List[str]]] = {
    # introductions (the topic entity first)
    "per_intro": ([("a", "d", "P569"), ("a", "c", "P19")], [
        "{a} ( born {d} in {c} ) is a {a|occ}",
        "{a} , born {d|on} {d} in {c} , is a [well-known|celebrated|prolific] {a|occ}",
        "{a} is a {a|occ} who was born in {c} {d|on} {d}"]),
    "per_intro_date": ([("a", "d", "P569")], [
        "{a} ( born {d} ) is a {a|occ}",
        "{a} is a [retired|renowned|controversial] {a|occ} born {d|on} {d}"]),
    "per_intro_died": ([("a", "d", "P570"), ("a", "c", "P20")], [
        "{a} ( died {d} in {c} ) was a {a|occ}",
        "{a} , who died {d|on} {d} in {c} , was a [well-known|celebrated|prolific] {a|occ}",
        "{a} was a {a|occ} who died in {c} {d|on} {d}"]),
    "per_intro_died_date": ([("a", "d", "P570")], [
        "{a} ( died {d} ) was a {a|occ}",
        "{a} was a [renowned|controversial] {a|occ} who died {d|on} {d}"]),
    "per_intro_lived": ([("a", "c", "P551")], [
        "{a} is a {a|occ} who lives in {c}",
        "{a} is a [well-known|celebrated|prolific] {a|occ} based in {c}"]),
    "company_intro": ([("a", "c", "P159")], [
        "{a} is a {a|kind} headquartered in {c}",
        "{a} is a [large|mid-sized|family-owned] {a|kind} based in {c}",
        "{a} is a {a|kind} with its headquarters in {c}"]),
    "univ_intro": ([("a", "c", "P131")], [
        "{a} is a [public|private] {a|kind} located in {c}",
        "{a} is a {a|kind} in {c}",
        "{a} is a [small|large] {a|kind} whose campus lies in {c}"]),
    "book_intro": ([("a", "b", "P50"), ("a", "d", "P577")], [
        "{a} is a {d} novel by {b}",
        "{a} is a novel written by {b} and published in {d}",
        "{a} is a [historical|crime|satirical] novel by {b} , first published in {d}"]),
    "film_intro": ([("a", "b", "P57"), ("a", "d", "P577")], [
        "{a} is a {d} [drama|comedy|thriller] film directed by {b}",
        "{a} is a film directed by {b} and released in {d}"]),
    "album_intro": ([("a", "b", "P175"), ("a", "d", "P577")], [
        "{a} is a {d} album by {b}",
        "{a} is the [debut|second|third] studio album by {b} , released in {d}"]),
    "city_intro": ([("a", "r", "P131"), ("r", "k", "P17"), ("r", "k", "P131"), ("a", "k", "P17"),
                    ("a", "k", "P131")], [
        "{a} is a {a|kind} in {r} , {k}",
        "{a} is a [small|historic|coastal] {a|kind} located in {r} , in {k}"]),
    # single facts
    "born_city": ([("a", "b", "P19")], [
        "{a} was born in {b}", "{a} was born and raised in {b}", "{a} is a native of {b}",
        "{b} is the birthplace of {a}"]),
    "born_date": ([("a", "b", "P569")], [
        "{a} was born {b|on} {b}", "{a} was born {b|on} {b} to a family of [teachers|farmers|merchants]"]),
    "born_city_date": ([("a", "b", "P19"), ("a", "c", "P569")], [
        "{a} was born in {b} {c|on} {c}", "{a} was born {c|on} {c} in {b}"]),
    "died_city": ([("a", "b", "P20")], [
        "{a} died in {b}", "{a} passed away in {b}", "{a} spent {a|his} last years in {b} , where {a|he} died"]),
    "died_date": ([("a", "b", "P570")], [
        "{a} died {b|on} {b}", "{a} passed away {b|on} {b} after a long illness"]),
    "died_city_date": ([("a", "b", "P20"), ("a", "c", "P570")], [
        "{a} died in {b} {c|on} {c}", "{a} died {c|on} {c} in {b}"]),
    "lived": ([("a", "b", "P551")], [
        "{a} lives in {b}", "{a} has lived in {b} for [many|several] years", "{a} resides in {b}",
        "{a} settled in {b}"]),
    "citizen": ([("a", "b", "P27")], [
        "{a} is a citizen of {b}", "{a} holds the citizenship of {b}",
        "{a} became a naturalized citizen of {b}", "{a} acquired the nationality of {b}"]),
    "studied": ([("a", "b", "P69")], [
        "{a} studied [law|physics|history|music|engineering] at {b}", "{a} graduated from {b}",
        "{a} attended {b}", "{a} received {a|his} degree from {b}", "{a} was educated at {b}"]),
    "studied_taught": ([("a", "b", "P69"), ("a", "b", "P108")], [
        "{a} studied at {b} and later taught there",
        "{a} graduated from {b} and then joined its faculty",
        "{a} was educated at {b} , where {a|he} later worked as a lecturer"]),
    "employer": ([("a", "b", "P108")], [
        "{a} worked for {b}", "{a} was employed by {b}", "{a} joined {b} as an [engineer|analyst|editor]",
        "{b} hired {a}", "{a} spent [ten|several|many] years working at {b}",
        "{a} was appointed [director|professor|manager] at {b}"]),
    "wrote_book": ([("a", "b", "P50")], [
        "{b} wrote the novel {a}", "{a} was written by {b}", "{b} is the author of {a}",
        "{b} published the novel {a}"]),
    "performed": ([("a", "b", "P175")], [
        "{b} recorded the album {a}", "{a} is an album by {b}", "{a} was performed by {b}",
        "{b} released the album {a}"]),
    "directed": ([("a", "b", "P57")], [
        "{a} was directed by {b}", "{b} directed the film {a}", "{b} directed {a}"]),
    "screenplay": ([("a", "b", "P58")], [
        "{b} wrote the screenplay for {a}", "the screenplay of {a} was written by {b}",
        "{b} wrote the script of {a}"]),
    "wrote_directed": ([("a", "b", "P57"), ("a", "b", "P58")], [
        "{a} was written and directed by {b}", "{b} wrote and directed {a}"]),
    "published": ([("a", "b", "P577")], [
        "{a} was first {a|release} in {b}", "{a} was {a|release} in {b}",
        "{a} [appeared|came_out] in {b}"]),
    "part_of_org": ([("a", "b", "P361")], [
        "{a} is a division of {b}", "{a} is part of {b}", "{a} operates as a unit of {b}",
        "{a} belongs to {b}"]),
    "part_of_series": ([("a", "b", "P361")], [
        "{a} is the [first|second|third|last] volume of {b}", "{a} forms part of {b}",
        "{a} is one of the books of {b}"]),
    "spouse": ([("a", "b", "P26"), ("b", "a", "P26")], [
        "{a} married {b}", "{a} is married to {b}", "{b} became the {b|wife} of {a}",
        "{a} and {b} married [in_a_small_ceremony|after_a_short_engagement]"]),
    "child": ([("a", "b", "P40")], [
        "{b} is the {b|son} of {a}", "{a} has a {b|son} , {b}", "{a} raised {a|his} {b|son} {b} alone",
        "{a} 's {b|son} {b} became a [lawyer|painter|physician]"]),
    "two_parents": ([("a", "c", "P40"), ("b", "c", "P40")], [
        "{a} and {b} have a {c|son} , {c}", "{c} is the {c|son} of {a} and {b}"]),
    "region_country": ([("a", "b", "P17"), ("a", "b", "P131")], [
        "{a} is a [province|region|district] of {b}", "{a} lies in the [north|south|east|west] of {b}",
        "{a} is one of the administrative regions of {b}"]),
    "city_region": ([("a", "b", "P131")], [
        "{a} is a [town|city] in {b}", "{a} lies in {b}", "{a} is located in {b}",
        "{a} is the [largest|oldest] town of {b}"]),
    "city_country": ([("a", "b", "P17"), ("a", "b", "P131")], [
        "{a} is a [city|town] in {b}", "{a} is located in {b}", "{a} lies in [northern|southern|central] {b}"]),
    "hq": ([("a", "b", "P159")], [
        "{a} is headquartered in {b}", "{a} has its headquarters in {b}", "{a} is based in {b}",
        "the headquarters of {a} are in {b}"]),
    "org_located": ([("a", "b", "P131")], [
        "{a} is located in {b}", "the campus of {a} lies in {b}"]),
    "borders": ([("a", "b", "P47"), ("b", "a", "P47")], [
        "{a} borders {b}", "{a} shares a border with {b}", "{a} and {b} share a [long|short] border"]),
    # distractors: the same entity types, no relation of REL_INFO
    "d_per_loc": ([], [
        "{a} [visited|toured|moved_to|gave_a_lecture_in|spent_several_years_in] {b}",
        "{a} later travelled to {b}"]),
    "d_per_org": ([], [
        "{a} [criticized|applied_to|turned_down_an_offer_from|gave_a_talk_at|sued|visited] {b}"]),
    "d_per_per": ([], [
        "{a} [met|collaborated_with|was_a_friend_of|was_influenced_by|corresponded_with] {b}"]),
    "d_per_work": ([], ["{a} [praised|reviewed|criticized|admired] {b}"]),
    "d_per_award": ([], ["{a} [received|won|was_nominated_for] the {b}"]),
    "d_per_time": ([], ["{a} [retired|moved_abroad|fell_ill|returned_home] in {b}",
                        "in {b} , {a} [retired|moved_abroad]"]),
    "d_work_per": ([], ["{a} was [praised|reviewed|criticized|translated] by {b}", "{a} is dedicated to {b}"]),
    "d_work_time": ([], ["{a} was [reissued|translated|adapted_for_radio] in {b}"]),
    "d_org_org": ([], ["{a} [competes_with|signed_a_partnership_with|sued|outbid] {b}"]),
    "d_loc_loc": ([], ["{a} is twinned with {b}", "{a} [trades_with|sent_a_delegation_to|signed_a_treaty_with] {b}"]),
    "d_org_loc": ([], ["{a} [opened_an_office_in|expanded_into|held_a_conference_in|ran_a_campaign_in] {b}"]),
    "d_org_num": ([], ["{a} [employs|has] {b} [employees|people|staff_members]", "{a} received {b} applications"]),
    "d_loc_num": ([], ["{a} has a population of {b}", "{a} has about {b} inhabitants"]),
    "d_work_num": ([], ["{a} sold {b} copies", "{a} reached an audience of {b} in its first year"]),
    "d_loc_time": ([], ["{a} [was_founded|received_its_charter|was_rebuilt] in {b}"]),
    "d_org_time": ([], ["{a} [was_founded|went_public|was_reorganized] in {b}"]),
}
# Distractor kinds and the entity kinds their slots accept.
DISTRACTORS = {
    "d_per_loc": ("person", "place"), "d_per_org": ("person", "org"), "d_per_per": ("person", "person"),
    "d_per_work": ("person", "work"), "d_per_award": ("person", "award"), "d_per_time": ("person", "year"),
    "d_org_loc": ("org", "place"), "d_org_num": ("org", "num"), "d_loc_num": ("city", "num"),
    "d_work_num": ("work", "num"), "d_loc_time": ("city", "year"), "d_org_time": ("org", "year"),
    "d_work_per": ("work", "person"), "d_work_time": ("work", "year"), "d_org_org": ("org", "org"),
    "d_loc_loc": ("place", "place"),
}
PREFIXES = ["later ,", "in the following years ,", "according to [local|contemporary] sources ,",
            "at that time ,", "meanwhile ,", "as [the_press|later_accounts] reported ,"]
SUFFIXES = [", which [attracted|received] [wide|considerable|little] attention",
            ", [a_decision|a_move] that surprised [many_observers|the_press]",
            "after a long period of [preparation|negotiation]", "despite [strong|some] opposition",
            ", as [local_newspapers|later_accounts] noted"]
TAILS = ["for many years", "according to [official|local|family] records", "with [great|modest|little] success",
         "during a [difficult|turbulent|productive] period", "as [critics|historians|biographers] later noted",
         "in [the_early|the_late] part of the century", "at a time of [rapid|slow] [change|growth]"]
JOINERS = [[",", "and"], [";"], [",", "while"]]

SYLLABLES = ("ka lo ver mi tan dor el sa ri bel nor vik ul mar zen tho pra gal wen os fen ru "
             "ast bri col dem har ist jor kel lan mon nev or pel quin ros sil tor val yar").split()
MALE = ("James John Peter Thomas Daniel Martin Oscar Victor Henry Lukas Marco Felix Adam Samuel "
        "Hugo Ivan Leon Paul Simon Erik Anton Bruno Carl David").split()
FEMALE = ("Anna Maria Laura Clara Elena Sofia Julia Nina Eva Helen Irene Lena Marta Rosa Vera "
          "Alice Diana Greta Hanna Ingrid Lucia Mira Petra Selma").split()
ADJECTIVES = ("Silent Broken Golden Hidden Last Northern Crimson Quiet Distant Bitter Hollow "
              "Burning Frozen Endless Pale Wandering").split()
NOUNS = ("Harbor River Garden Mirror Winter Empire Letter Voyage Orchard Lantern Tower Shadow "
         "Promise Island Kingdom Season").split()
MONTHS = ("January February March April May June July August September October November "
          "December").split()
NUMBER_WORDS = "two three four five six seven eight nine twelve twenty".split()
OCCUPATIONS = {"book": ["writer", "novelist", "poet"], "film": ["film director", "screenwriter"],
               "album": ["singer", "musician", "composer"],
               None: ["physicist", "banker", "politician", "diplomat", "journalist", "lawyer"]}
REGION_WORDS = ["Province", "County", "Region", "District"]


def _word(rng: random.Random, lo: int = 2, hi: int = 3) -> str:
    """A capitalized made-up word of lo..hi syllables."""
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(lo, hi))).capitalize()


class Document:
    """One document under construction: its entities, sentences, mentions and stated facts."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.entities: List[dict] = []
        self.names: Set[str] = set()
        self.sents: List[List[str]] = []
        self.mentions: Dict[int, List[dict]] = {}
        self.facts: Dict[Tuple[int, int, str], Set[int]] = {}
        self.related: Set[Tuple[int, int]] = set()  # entity pairs of a planned clause
        self.used_distractors: Set[Tuple[str, int]] = set()
        self.topic = 0

    # ---- entities -------------------------------------------------------------------------
    def new(self, category: str, etype: str, make, short=None, **attrs) -> int:
        """Add an entity whose name (a str from make()) is unique in the document."""
        while True:
            name = make()
            if name not in self.names:
                break
        self.names.add(name)
        words = name.split()
        attrs.setdefault("anaphor", ["it"])
        self.entities.append({"words": words, "short": short(words) if short else None,
                              "type": etype, "kind": category, "attrs": attrs})
        return len(self.entities) - 1

    def person(self, occ_for: Optional[str] = "any") -> int:
        """A person; occ_for picks the occupation (book/film/album writer, None for other)."""
        rng = self.rng
        female = rng.random() < 0.5
        first = rng.choice(FEMALE if female else MALE)
        suffix = rng.choice(["", "", "son", "ski", "ez", "ova" if female else "ov", "er", "ani"])
        occ = rng.choice(OCCUPATIONS[rng.choice(list(OCCUPATIONS)) if occ_for == "any" else occ_for])
        return self.new("person", "PER", lambda: f"{first} {_word(rng)}{suffix}", short=lambda w: w[-1:],
                        he="she" if female else "he", anaphor=["she" if female else "he"],
                        his="her" if female else "his", son="daughter" if female else "son",
                        wife="wife" if female else "husband", occ=occ)

    def country(self) -> int:
        """A country (LOC)."""
        rng = self.rng
        return self.new("country", "LOC", lambda: _word(rng) + rng.choice(["ia", "land", "istan", "ora", "ova"]))

    def region(self) -> int:
        """A region of a country (LOC), named "... Province" and the like."""
        rng = self.rng
        return self.new("region", "LOC", lambda: f"{_word(rng)} {rng.choice(REGION_WORDS)}")

    def city(self) -> int:
        """A town or city (LOC)."""
        rng = self.rng
        kind = rng.choice(["town", "city"])
        endings = ["", "", "burg", "ville", "port", "stad", "holm"]
        return self.new("city", "LOC", lambda: _word(rng) + rng.choice(endings), kind=kind,
                        anaphor=["it", f"the {kind}"])

    def company(self) -> int:
        """A company (ORG); later mentions may drop the legal form."""
        rng = self.rng
        forms = ["Corporation", "Group", "Industries", "Systems", "Media"]
        return self.new("company", "ORG", lambda: f"{_word(rng)} {rng.choice(forms)}", short=lambda w: w[:1],
                        kind=rng.choice(["company", "manufacturer", "publisher", "firm"]),
                        anaphor=["it", "the company"])

    def university(self) -> int:
        """A university (ORG)."""
        rng = self.rng
        make = lambda: rng.choice([f"University of {_word(rng)}", f"{_word(rng)} University",  # noqa: E731
                                   f"{_word(rng)} Institute of Technology"])
        return self.new("univ", "ORG", make, kind=rng.choice(["university", "research university", "college"]),
                        anaphor=["it", "the university"])

    def institute(self) -> int:
        """A laboratory or institute (ORG), to be part of a larger organization."""
        rng = self.rng
        forms = ["Laboratory", "Institute", "Research Center"]
        return self.new("institute", "ORG", lambda: f"{_word(rng)} {rng.choice(forms)}")

    def work(self, kind: str) -> int:
        """A book, film or album (MISC)."""
        rng = self.rng
        if kind == "album":
            make = lambda: f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}s"  # noqa: E731
        else:
            make = lambda: f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"  # noqa: E731
        noun = {"book": "novel"}.get(kind, kind)
        return self.new(kind, "MISC", make, release="published" if kind == "book" else "released",
                        anaphor=["it", f"the {noun}"])

    def series(self) -> int:
        """A book series (MISC)."""
        rng = self.rng
        return self.new("series", "MISC", lambda: rng.choice([f"The {rng.choice(NOUNS)} Trilogy",
                                                              f"Chronicles of {_word(rng)}"]))

    def award(self) -> int:
        """An award (MISC), only ever in distractor sentences."""
        rng = self.rng
        return self.new("award", "MISC", lambda: f"{_word(rng)} {rng.choice(['Prize', 'Medal', 'Award'])}")

    def date(self, full: bool) -> int:
        """A full date or a year (TIME)."""
        rng = self.rng
        year = lambda: str(rng.randint(1900, 2015))  # noqa: E731
        if not full:
            return self.new("year", "TIME", year, on="in")
        return self.new("date", "TIME", lambda: f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {year()}", on="on")

    def number(self) -> int:
        """A number (NUM), only ever in distractor sentences."""
        rng = self.rng
        return self.new("num", "NUM", lambda: rng.choice([f"{rng.randint(2, 95)},{rng.randint(0, 9)}00",
                                                          rng.choice(NUMBER_WORDS), str(rng.randint(120, 990))]))

    def plan(self, clauses: List[Tuple[str, Dict[str, int]]]) -> List[Tuple[str, Dict[str, int]]]:
        """Note which entities the clauses put together, so distractors avoid those pairs."""
        for _, slots in clauses:
            self.related.update((x, y) for x in slots.values() for y in slots.values())
        return clauses

    # ---- text -----------------------------------------------------------------------------
    def _expand(self, pattern: str) -> List[str]:
        """Words of a literal pattern with its [x|y] choices made."""
        out: List[str] = []
        for tok in pattern.split():
            if tok.startswith("["):
                tok = self.rng.choice(tok[1:-1].split("|"))
            out.extend(tok.split("_"))
        return out

    def realize(self, kind: str, slots: Dict[str, int], sent_id: int, words: List[str]) -> bool:
        """Append one clause to `words`, record its mentions and facts; False if it cannot be said."""
        facts, templates = CLAUSES[kind]
        order = self.rng.sample(templates, len(templates))
        for template in order:
            plan = self._plan(template, slots)
            if plan is not None:
                break
        else:
            return False
        antecedents = set()
        for tok, ent, form in plan:
            if ent is None:
                words.extend(self._expand(tok))
            elif form == "attr":
                words.extend(self.entities[ent]["attrs"][tok].split())
            elif form == "pronoun":
                words.extend(self.rng.choice(self.entities[ent]["attrs"]["anaphor"]).split())
                antecedents.add(self.mentions[ent][-1]["sent_id"])
            else:
                e = self.entities[ent]
                name = e["short"] if form == "short" else e["words"]
                self.mentions.setdefault(ent, []).append(
                    {"name": " ".join(name), "pos": [len(words), len(words) + len(name)], "sent_id": sent_id,
                     "type": e["type"]})
                words.extend(name)
        for h, t, r in facts:
            key = (slots[h], slots[t], r)
            self.facts.setdefault(key, set()).update({sent_id} | antecedents)
        return True

    def _plan(self, template: str, slots: Dict[str, int]) -> Optional[List[tuple]]:
        """(token, entity or None, form) per template token, or None if an entity is used up."""
        plan = []
        for i, tok in enumerate(template.split()):
            if not tok.startswith("{"):
                plan.append((tok, None, None))
                continue
            slot, _, attr = tok[1:-1].partition("|")
            ent = slots[slot]
            if attr:
                plan.append((attr, ent, "attr"))
                continue
            used = len(self.mentions.get(ent, []))
            can_pronoun = ent == self.topic and i == 0 and used > 0
            if can_pronoun and (used >= MAX_MENTIONS or self.rng.random() < 0.75):
                plan.append((tok, ent, "pronoun"))
            elif used >= MAX_MENTIONS:
                return None
            else:
                short = self.entities[ent]["short"] and used > 0 and self.rng.random() < 0.6
                plan.append((tok, ent, "short" if short else "full"))
        return plan

    def write_sentence(self, clauses: List[Tuple[str, Dict[str, int]]]) -> None:
        """Realize clauses (with joiners and fillers) as the next sentence, if any can be said."""
        rng, sent_id, words = self.rng, len(self.sents), []
        if sent_id and rng.random() < 0.5:
            words.extend(self._expand(rng.choice(PREFIXES)))
        said = 0
        for kind, slots in clauses:
            mark = len(words)
            if said:
                words.extend(rng.choice(JOINERS))
            if self.realize(kind, slots, sent_id, words):
                said += 1
                if rng.random() < 0.6:
                    words.extend(self._expand(rng.choice(TAILS)))
            else:
                del words[mark:]
        if not said:
            return
        if rng.random() < 0.5:
            words.extend(self._expand(rng.choice(SUFFIXES)))
        words[0] = words[0][:1].upper() + words[0][1:]
        self.sents.append(words + ["."])


def _distractor(doc: Document, rng: random.Random) -> Tuple[str, Dict[str, int]]:
    """A clause stating no relation, between existing entities not yet put together, or new ones."""
    kind = rng.choice(sorted(DISTRACTORS))
    makers = {"person": doc.person, "place": lambda: rng.choice([doc.city, doc.country])(),
              "org": lambda: rng.choice([doc.company, doc.university])(),
              "work": lambda: doc.work(rng.choice(["book", "film", "album"])),
              "award": doc.award, "year": lambda: doc.date(False), "num": doc.number, "city": doc.city}
    accept = {"person": {"person"}, "place": {"city", "country", "region"}, "org": {"company", "univ"},
              "work": {"book", "film", "album"}, "award": {"award"}, "year": set(), "num": set(), "city": {"city"}}
    slots: Dict[str, int] = {}
    for slot, want in zip("ab", DISTRACTORS[kind]):
        # the topic may open a distractor as a pronoun once its mentions are used up
        pool = [i for i, e in enumerate(doc.entities)
                if e["kind"] in accept[want] and i not in slots.values() and (kind, i) not in doc.used_distractors
                and (len(doc.mentions.get(i, [])) < MAX_MENTIONS or (i == doc.topic and slot == "a"))
                and not any((i, j) in doc.related for j in slots.values())]
        if doc.topic in pool and rng.random() < 0.5:  # the topic is in unrelated pairs as often as in related ones
            slots[slot] = doc.topic
        else:
            slots[slot] = rng.choice(pool) if pool and rng.random() < 0.95 else makers[want]()
    doc.used_distractors.add((kind, slots["a"]))
    return doc.plan([(kind, slots)])[0]


def _geography(doc: Document, rng: random.Random, city: int, country: int) -> List[Tuple[str, Dict[str, int]]]:
    """Clauses placing `city` in `country`, directly or through a region (or not at all)."""
    u = rng.random()
    if u < 0.5:
        region = doc.region()
        out = [("city_region", {"a": city, "b": region}), ("region_country", {"a": region, "b": country})]
    if u < 0.85:
        out = [("city_country", {"a": city, "b": country})]
    else:
        out = []
    if rng.random() < 0.3:
        out.append(("borders", {"a": country, "b": doc.country()}))
    return out


def _creator_facts(doc: Document, rng: random.Random, person: int, work_kind: Optional[str],
                   work: Optional[int] = None) -> List[Tuple[str, Dict[str, int]]]:
    """Clauses about a person's works (of work_kind), each with a publication year sometimes."""
    out: List[Tuple[str, Dict[str, int]]] = []
    if work_kind is None:
        return out
    works = [] if work is not None else [doc.work(work_kind) for _ in range(rng.randint(1, 2))]
    for w in works:
        if work_kind == "film":
            kind = rng.choice(["directed", "directed", "wrote_directed"])
            out.append((kind, {"a": w, "b": person}))
        else:
            out.append(("wrote_book" if work_kind == "book" else "performed", {"a": w, "b": person}))
        if rng.random() < 0.5:
            out.append(("published", {"a": w, "b": doc.date(False)}))
    for w in works + ([work] if work is not None else []):
        if work_kind == "film" and rng.random() < 0.3:
            out.append(("screenplay", {"a": w, "b": person}))
        if work_kind == "book" and rng.random() < 0.3:
            out.append(("part_of_series", {"a": w, "b": doc.series()}))
    return out


# A person's tie to a city: (clause, clause with a date). Birth, death and residence share the entity types,
# so only the wording tells them apart.
PLACE_EVENTS = {"born": ("born_city", "born_city_date"), "died": ("died_city", "died_city_date"),
                "lived": ("lived", None)}


def _place_event(doc: Document, rng: random.Random, p: int, event: str, city: int) -> Tuple[str, Dict[str, int]]:
    """The clause tying person p to city by `event`, with a date sometimes."""
    plain, dated = PLACE_EVENTS[event]
    if dated and rng.random() < 0.4:
        return dated, {"a": p, "b": city, "c": doc.date(rng.random() < 0.6)}
    return plain, {"a": p, "b": city}


def _person_facts(doc: Document, rng: random.Random, p: int, known: Set[str]) -> List[Tuple[str, Dict[str, int]]]:
    """Clauses about a person's birth, death, home, education, work and family (events in `known` are told)."""
    out: List[Tuple[str, Dict[str, int]]] = []
    for event in PLACE_EVENTS:
        if event in known or rng.random() >= 0.45:
            continue
        city, country = doc.city(), doc.country()
        out.append(_place_event(doc, rng, p, event, city))
        out += _geography(doc, rng, city, country)
        if event == "born" and rng.random() < 0.25:
            out.append(("citizen", {"a": p, "b": country}))
    if rng.random() < 0.3:
        out.append((rng.choice(["born_date", "died_date"]), {"a": p, "b": doc.date(rng.random() < 0.6)}))
    if rng.random() < 0.7:
        univ = doc.university()
        out.append((rng.choice(["studied", "studied", "studied_taught"]), {"a": p, "b": univ}))
    if rng.random() < 0.6:
        org = doc.company()
        out.append(("employer", {"a": p, "b": org}))
        if rng.random() < 0.5:
            city = doc.city()
            out.append(("hq", {"a": org, "b": city}))
            if rng.random() < 0.5:
                out += _geography(doc, rng, city, doc.country())
    return out


def _family(doc: Document, rng: random.Random, p: int) -> List[Tuple[str, Dict[str, int]]]:
    """A spouse and/or a child of person p, with the spouse's birthplace sometimes."""
    out: List[Tuple[str, Dict[str, int]]] = []
    spouse = None
    if rng.random() < 0.5:
        spouse = doc.person(None)
        out.append(("spouse", {"a": p, "b": spouse}))
        if rng.random() < 0.4:
            city = doc.city()
            out.append(("born_city", {"a": spouse, "b": city}))
            out += _geography(doc, rng, city, doc.country())
    if rng.random() < 0.4:
        child = doc.person(None)
        if spouse is not None and rng.random() < 0.5:
            out.append(("two_parents", {"a": p, "b": spouse, "c": child}))
        else:
            out.append(("child", {"a": p, "b": child}))
    return out


# (intro clause, the place event it tells, whether it tells a date, weight)
PERSON_INTROS = [("per_intro", "born", True, 0.3), ("per_intro_date", "", True, 0.15),
                 ("per_intro_died", "died", True, 0.25), ("per_intro_died_date", "", True, 0.1),
                 ("per_intro_lived", "lived", False, 0.2)]


def _plan_person(doc: Document, rng: random.Random) -> Tuple[List, List, str]:
    """Intro and fact clauses of a biography."""
    work_kind = rng.choice(["book", "film", "album", None])
    x = doc.person(work_kind)
    kind, event, dated = rng.choices(PERSON_INTROS, weights=[w for *_, w in PERSON_INTROS])[0][:3]
    slots, facts = {"a": x}, []
    if dated:
        slots["d"] = doc.date(rng.random() < 0.7)
    if event:
        slots["c"] = doc.city()
        facts = _geography(doc, rng, slots["c"], doc.country())
    facts += _person_facts(doc, rng, x, {event}) + _creator_facts(doc, rng, x, work_kind) + _family(doc, rng, x)
    # the topic with entities of the types of its facts, in no relation
    if rng.random() < 0.4:
        facts.append(("d_per_loc", {"a": x, "b": doc.city()}))
    if rng.random() < 0.5:
        facts.append(("d_per_org", {"a": x, "b": rng.choice([doc.company, doc.university])()}))
    if rng.random() < 0.3:
        facts.append(("d_per_per", {"a": x, "b": doc.person(None)}))
    intro = [(kind, slots)]
    return intro, facts, doc.entities[x]["attrs"]["occ"]


def _plan_org(doc: Document, rng: random.Random) -> Tuple[List, List, str]:
    """Intro and fact clauses about a company or a university."""
    is_univ = rng.random() < 0.5
    org = doc.university() if is_univ else doc.company()
    city = doc.city()
    intro = [("univ_intro" if is_univ else "company_intro", {"a": org, "c": city})]
    facts = _geography(doc, rng, city, doc.country())
    if rng.random() < 0.6:
        facts.append(("part_of_org", {"a": doc.institute(), "b": org}))
    for _ in range(rng.randint(1, 3)):
        p = doc.person()
        kind = rng.choice(["studied", "studied_taught", "employer"]) if is_univ else "employer"
        facts.append((kind, {"a": p, "b": org}))
        if rng.random() < 0.5:
            event = rng.choice(sorted(PLACE_EVENTS))
            facts.append(_place_event(doc, rng, p, event, city if rng.random() < 0.5 else doc.city()))
    if rng.random() < 0.5:
        facts.append(("d_per_org", {"a": doc.person(), "b": org}))
    if rng.random() < 0.5:
        facts.append(("d_org_loc", {"a": org, "b": doc.city()}))
    if rng.random() < 0.4:
        facts.append(("d_org_org", {"a": doc.company(), "b": org}))
    return intro, facts, doc.entities[org]["attrs"]["kind"]


def _plan_work(doc: Document, rng: random.Random) -> Tuple[List, List, str]:
    """Intro and fact clauses about a book, film or album."""
    kind = rng.choice(["book", "film", "album"])
    w, creator = doc.work(kind), doc.person(kind)
    intro = [(f"{kind}_intro", {"a": w, "b": creator, "d": doc.date(False)})]
    facts = _creator_facts(doc, rng, creator, kind, work=w) + _person_facts(doc, rng, creator, set())
    if rng.random() < 0.4:
        facts += _creator_facts(doc, rng, creator, kind)
    if rng.random() < 0.6:
        facts.append(("d_work_per", {"a": w, "b": doc.person(None)}))
    if rng.random() < 0.4:
        facts.append(("d_work_time", {"a": w, "b": doc.date(False)}))
    return intro, facts, kind


def _plan_city(doc: Document, rng: random.Random) -> Tuple[List, List, str]:
    """Intro and fact clauses about a city, its organizations and natives."""
    city, region, country = doc.city(), doc.region(), doc.country()
    intro = [("city_intro", {"a": city, "r": region, "k": country})]
    facts = []
    if rng.random() < 0.6:
        facts.append(("hq", {"a": doc.company(), "b": city}))
    if rng.random() < 0.5:
        facts.append(("org_located", {"a": doc.university(), "b": city}))
    for _ in range(rng.randint(1, 3)):
        p = doc.person()
        event = rng.choice(sorted(PLACE_EVENTS))
        facts.append(_place_event(doc, rng, p, event, city))
        facts += _person_facts(doc, rng, p, {event})[:1]
    if rng.random() < 0.5:
        facts.append(("d_per_loc", {"a": doc.person(), "b": city}))
    if rng.random() < 0.4:
        facts.append(("d_loc_loc", {"a": city, "b": doc.city()}))
    return intro, facts, doc.entities[city]["attrs"]["kind"]


PLANNERS = [(_plan_person, 0.45), (_plan_org, 0.2), (_plan_work, 0.2), (_plan_city, 0.15)]


def _pack(doc: Document, rng: random.Random, clauses: List, n_sents: int) -> List[List]:
    """Group clauses into n_sents sentences of 1-3 clauses whose entities do not repeat in a sentence."""
    while len(clauses) < n_sents:
        clauses.append(_distractor(doc, rng))
    clauses = clauses[: 3 * n_sents]
    sizes = [1] * n_sents
    for _ in range(len(clauses) - n_sents):
        i = rng.choice([j for j, s in enumerate(sizes) if s < 3])
        sizes[i] += 1
    queue, groups = list(clauses), []
    for size in sizes:
        group, ents = [], set()
        for c in list(queue):
            if len(group) == size:
                break
            if not ents & set(c[1].values()) and (group or c is queue[0]):
                group.append(c)
                ents |= set(c[1].values())
                queue.remove(c)
        groups.append(group)
    return groups + [[c] for c in queue]


COMPOSITION_RULES = [("P19", "P17", "P27"), ("P131", "P17", "P17"), ("P131", "P131", "P131"), ("P159", "P17", "P17")]


def _compose(facts: Dict[Tuple[int, int, str], Set[int]]) -> None:
    """Add r3(x, k) for every r1(x, c) and r2(c, k) of a rule (r1, r2, r3), to a fixed point."""
    changed = True
    while changed:
        changed = False
        by_head: Dict[int, List[Tuple[int, str]]] = {}
        for h, t, r in sorted(facts, key=_fact_key):
            by_head.setdefault(h, []).append((t, r))
        for x, c, r1 in sorted(facts, key=_fact_key):
            for first, second, out in COMPOSITION_RULES:
                if r1 != first:
                    continue
                for k, r2 in by_head.get(c, []):
                    if r2 == second and k != x and (x, k, out) not in facts:
                        facts[(x, k, out)] = facts[(x, c, r1)] | facts[(c, k, r2)]
                        changed = True


def _fact_key(fact: Tuple[int, int, str]) -> Tuple[int, int, int]:
    return fact[0], fact[1], int(fact[2][1:])


def make_document(seed: int, split: str, index: int, min_sents: int, max_sents: int) -> dict:
    """Document `index` of `split` for `seed`, as a DocRED dict with labels."""
    rng = random.Random(f"synthetic:{seed}:{split}:{index}")
    doc = Document(rng)
    planner = rng.choices([p for p, _ in PLANNERS], weights=[w for _, w in PLANNERS])[0]
    intro, facts, descriptor = planner(doc, rng)
    doc.plan(intro + facts)
    rng.shuffle(facts)
    n_sents = rng.randint(min_sents, max_sents)
    n_distractors = max(rng.randint(1, 3), round(2.0 * n_sents) - len(facts) - 1)
    clauses = intro + facts + [_distractor(doc, rng) for _ in range(n_distractors)]
    for group in _pack(doc, rng, clauses, n_sents):
        if len(doc.sents) < max_sents:
            doc.write_sentence(group)
    while len(doc.sents) < min_sents:
        doc.write_sentence([_distractor(doc, rng)])
    return _to_docred(doc, f"{' '.join(doc.entities[0]['words'])} ({descriptor}, {split} {index})")


def _to_docred(doc: Document, title: str) -> dict:
    """DocRED dict: entities ordered by first mention, labels sorted by (h, t, relation)."""
    _compose(doc.facts)
    order = sorted(doc.mentions, key=lambda e: (doc.mentions[e][0]["sent_id"], doc.mentions[e][0]["pos"][0]))
    index = {e: i for i, e in enumerate(order)}
    labels = [{"r": r, "h": index[h], "t": index[t], "evidence": sorted(ev)}
              for (h, t, r), ev in doc.facts.items()]
    labels.sort(key=lambda x: (x["h"], x["t"], int(x["r"][1:])))
    return {"title": title, "sents": doc.sents, "vertexSet": [doc.mentions[e] for e in order], "labels": labels}


def iter_split(seed: int, split: str, n_docs: int, min_sents: int, max_sents: int,
               fn_noise: float = 0.0) -> Iterator[dict]:
    """Documents of one split; train labels thinned by fn_noise, test labels removed."""
    for i in range(n_docs):
        doc = make_document(seed, split, i, min_sents, max_sents)
        if split == "train" and fn_noise > 0:
            noise = random.Random(f"synthetic-noise:{seed}:{i}")
            doc["labels"] = [x for x in doc["labels"] if noise.random() >= fn_noise]
        if split == "test":
            del doc["labels"]
        yield doc


def doc_stats(doc: dict) -> Counter:
    """Counts behind the corpus summary: words, entities, labels, multi-label and cross-sentence ones."""
    sents_of = [{m["sent_id"] for m in ent} for ent in doc["vertexSet"]]
    labels = doc.get("labels", [])
    per_pair = Counter((x["h"], x["t"]) for x in labels)
    return Counter(docs=1, words=sum(map(len, doc["sents"])), entities=len(doc["vertexSet"]), labels=len(labels),
                   pairs=len(per_pair), multi_pairs=sum(n > 1 for n in per_pair.values()),
                   cross=sum(not sents_of[x["h"]] & sents_of[x["t"]] for x in labels))


def format_stats(c: Counter) -> str:
    """One line summarizing doc_stats totals."""
    n = max(c["docs"], 1)
    head = f"{c['docs']} docs, {c['words'] / n:.0f} words, {c['entities'] / n:.1f} entities"
    if not c["labels"]:
        return head + " per doc (no labels)"
    multi, cross = 100 * c["multi_pairs"] / max(c["pairs"], 1), 100 * c["cross"] / max(c["labels"], 1)
    return (f"{head}, {c['labels'] / n:.1f} positive labels per doc; {multi:.1f}% of "
            f"positive pairs multi-label; {cross:.1f}% of labels cross-sentence "
            "(no sentence mentions both entities)")


def write_split(path: Path, docs: Iterator[dict]) -> Counter:
    """Stream docs to `path` as one JSON list (the bytes of json.dumps of the list); return their doc_stats."""
    stats: Counter = Counter()
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("[")
            for doc in docs:
                f.write((", " if stats["docs"] else "") + json.dumps(doc, ensure_ascii=False))
                stats += doc_stats(doc)
            f.write("]")
    return stats


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_train", type=int, default=200)
    parser.add_argument("--n_dev", type=int, default=50)
    parser.add_argument("--n_test", type=int, default=50)
    parser.add_argument("--fn_noise", type=float, default=0.0,
                        help="probability of dropping each positive label of the training file")
    parser.add_argument("--min_sents", type=int, default=4)
    parser.add_argument("--max_sents", type=int, default=10)
    parser.add_argument("--only", nargs="+", choices=sorted(SPLIT_FILES), default=sorted(SPLIT_FILES),
                        help="write only these splits (rel_info.json is always written)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.fn_noise < 1.0:
        parser.error(f"--fn_noise must be in [0, 1), got {args.fn_noise}")
    if not 1 <= args.min_sents <= args.max_sents:
        parser.error(f"need 1 <= --min_sents <= --max_sents, got {args.min_sents} and {args.max_sents}")
    for split in SPLIT_FILES:
        if getattr(args, f"n_{split}") < 0:
            parser.error(f"--n_{split} must be >= 0")
    return args


def check_out(out: Path) -> None:
    """A UserError, before any document is made, when `out` is a file or a folder that cannot be made or written."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: pass another --out")
    why = unwritable(out)  # makes the folder, as the first write would
    if why is not None:
        raise UserError(f"--out {out}: cannot write there ({why}); pass another --out")


def main(argv: Optional[List[str]] = None) -> None:
    """Write the splits of --only and rel_info.json into --out."""
    args = parse_args(argv)
    out = Path(args.out)
    check_out(out)
    atomic_write_json(out / "rel_info.json", REL_INFO, indent=4)
    for split in ("train", "dev", "test"):
        if split not in args.only:
            continue
        start = time.perf_counter()
        docs = iter_split(args.seed, split, getattr(args, f"n_{split}"), args.min_sents, args.max_sents,
                          args.fn_noise)
        stats = write_split(out / SPLIT_FILES[split], docs)
        print(f"{out / SPLIT_FILES[split]} ({time.perf_counter() - start:.1f}s): {format_stats(stats)}")


if __name__ == "__main__":
    cli(main)
