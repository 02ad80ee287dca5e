"""Object names from a VLM's generated text, with their token spans.

The VLM is asked for a list of objects; answers come as comma lists ("a car, two traffic
cones and a dog"), numbered lists ("1. Car\\n2. Cone") or sentences ("The image shows a
truck parked near a fallen tire."). The parser is a light noun-phrase heuristic, no NLP
model:

1. split the text into segments at list punctuation (, ; . : ! ? newlines, list markers)
   and at conjunctions / prepositions that separate objects ("and", "or", "with", "near",
   "on", ...);
2. in each segment keep the last run of content words (words that are not determiners,
   pronouns, auxiliaries, quantifiers or filler verbs such as "shows" or "see"), which is
   where an English noun phrase ends;
3. keep at most ``max_object_words`` trailing words; drop scene words ("image", "scene",
   "background", ...); deduplicate case-insensitively (first occurrence wins); keep at most
   ``max_objects``.

Token spans: each generated token's character range in the decoded text is found by
decoding growing prefixes of the generated ids, which stays correct across BPE, byte-level
and sentencepiece merges (a token that decodes to nothing gets an empty range). A name's
span is the half-open range of tokens whose characters overlap the name.
"""

from __future__ import annotations

import re
from typing import Sequence

from vlsam_ros.core.results import ObjectName

# Words that separate two objects inside one segment.
_SEPARATORS = frozenset("""and or with near on in at of beside behind next to under over
above below along across from by into onto including includes include plus as well than
while where which who that""".split())
# Words that never belong to an object name (dropped wherever they occur at the edges).
_STOPWORDS = frozenset("""a an the this that these those there here it its they them their
i we you he she is are was were be been being has have had do does can could may might will
would shall should must see seen saw shows show showing depicts depict depicting features
feature featuring contains contain containing appears appear appearing visible some several
many few multiple various one two three four five six seven eight nine ten also other another
each every any all no not just only both such like lot lots number group also very""".split())
# Words that name the picture or a region, not an object.
_NON_OBJECTS = frozenset("""image picture photo photograph scene view frame background
foreground left right side top bottom middle center centre front distance area part parts
objects object things thing items item answer list""".split())

_SEGMENT_BREAK = re.compile(r"[,;.:!?\n()\[\]\"]|\s-\s|\*")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


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


def name_char_spans(text: str, max_object_words: int) -> list[tuple[str, int, int]]:
    """Candidate object names in ``text`` as (name, char_start, char_end), in text order,
    not yet deduplicated. Names are lower-cased, single-spaced."""
    out: list[tuple[str, int, int]] = []
    seg_start = 0
    for brk in [*_SEGMENT_BREAK.finditer(text), None]:
        seg_end = brk.start() if brk is not None else len(text)
        out.extend(_segment_names(text, seg_start, seg_end, max_object_words))
        if brk is not None:
            seg_start = brk.end()
    return out


def _segment_names(text: str, start: int, end: int, max_words: int) -> list[tuple[str, int, int]]:
    words = [(m.group(0).lower().strip("'-"), start + m.start(), start + m.end())
             for m in _WORD.finditer(text[start:end])]
    names = []
    run: list[tuple[str, int, int]] = []
    for word in [*words, None]:
        if word is None or word[0] in _SEPARATORS:
            name = _phrase_tail(run, max_words)
            if name is not None:
                names.append(name)
            run = []
        else:
            run.append(word)
    return names


def _phrase_tail(words: list[tuple[str, int, int]], max_words: int) -> tuple[str, int, int] | None:
    """The last run of content words, at most ``max_words`` long, unless it is a scene word."""
    tail: list[tuple[str, int, int]] = []
    for w in reversed(words):
        if w[0] in _STOPWORDS or not w[0]:
            if tail:
                break
            continue
        tail.insert(0, w)
    tail = tail[-max_words:]
    while tail and tail[0][0] in _NON_OBJECTS:
        tail = tail[1:]
    if not tail or tail[-1][0] in _NON_OBJECTS:
        return None
    return " ".join(w[0] for w in tail), tail[0][1], tail[-1][2]


def parse_object_names(text: str, char_spans: Sequence[tuple[int, int]], *,
                       max_object_words: int, max_objects: int) -> list[ObjectName]:
    """Deduplicated object names of ``text`` with token spans.

    char_spans: per generated token, its [start, end) range in ``text`` (see
    ``token_char_spans``). Names whose characters no token covers are dropped. Never raises
    on odd text: garbage yields an empty list.
    """
    seen: set[str] = set()
    names: list[ObjectName] = []
    for name, c0, c1 in name_char_spans(text, max_object_words):
        if name in seen:
            continue
        toks = [i for i, (s, e) in enumerate(char_spans) if s < c1 and e > c0]
        if not toks:
            continue
        seen.add(name)
        names.append(ObjectName(name=name, token_span=(toks[0], toks[-1] + 1)))
        if len(names) >= max_objects:
            break
    return names
