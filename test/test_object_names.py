"""Object-name parsing and token bookkeeping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vlsam_ros.core.vlm.object_names import (name_char_spans, parse_object_names,
                                             token_char_spans)
from vlsam_ros.core.vlm.tiny import build_tiny_tokenizer


def _names(text, max_words=4, max_objects=16):
    spans = [(i, i + 1) for i in range(len(text))]   # one "token" per character
    return [o.name for o in parse_object_names(text, spans, max_object_words=max_words,
                                               max_objects=max_objects)]


@pytest.mark.parametrize("text, expected", [
    ("a car, two traffic cones and a dog.", ["car", "traffic cones", "dog"]),
    ("1. Car\n2. Traffic cone\n3. Fallen tire", ["car", "traffic cone", "fallen tire"]),
    ("The image shows a truck parked near a fallen tire.", ["truck parked", "fallen tire"]),
    ("There is a pedestrian on the road with a stroller", ["pedestrian", "road", "stroller"]),
    ("Objects: car; car; CAR, bus", ["car", "bus"]),
    ("- cone\n- barrier\n* debris", ["cone", "barrier", "debris"]),
    ("", []),
    (",,, ... !!", []),
    ("the the the and of", []),
    ("in the background, a scene", []),
])
def test_parses_noun_phrases(text, expected):
    assert _names(text) == expected


def test_long_phrases_keep_their_last_words_and_limits_apply():
    assert _names("big old rusty abandoned white van", max_words=2) == ["white van"]
    assert _names("car, bus, van, dog", max_objects=2) == ["car", "bus"]


def test_token_spans_cover_the_name_with_the_tiny_word_tokenizer():
    tok = build_tiny_tokenizer("llava")
    ids = tok.encode("a red car , a traffic cone and a dog", add_special_tokens=False)
    text, spans = token_char_spans(tok, ids)
    objects = parse_object_names(text, spans, max_object_words=4, max_objects=16)
    assert [o.name for o in objects] == ["red car", "traffic cone", "dog"]
    for o in objects:
        s, e = o.token_span
        assert tok.decode(ids[s:e]).replace(" ", "") == o.name.replace(" ", "")


def _bpe_tokenizer(kind):
    """A small BPE tokenizer trained on the spot: byte-level (GPT-2/Qwen style) or
    metaspace (sentencepiece/Llama style); merges split words into sub-word pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["a car and a truck near the traffic cones", "debris, a dog and a fallen tire",
              "the pedestrian with a stroller crosses the road"] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if kind == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=90, special_tokens=["<unk>", "</s>"],
                                  initial_alphabet=alphabet)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
def test_token_spans_survive_subword_merges(kind):
    tok = _bpe_tokenizer(kind)
    text_in = "a truck, two stroller pedestrians and fallen debris"
    ids = tok.encode(text_in, add_special_tokens=False)
    assert len(ids) > len(text_in.split())          # words really are split into pieces
    text, spans = token_char_spans(tok, ids)
    assert text.strip() == text_in
    objects = parse_object_names(text, spans, max_object_words=4, max_objects=16)
    assert [o.name for o in objects] == ["truck", "stroller pedestrians", "fallen debris"]
    for o in objects:
        s, e = o.token_span
        assert tok.decode(ids[s:e]).strip() == o.name


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab cd,.\n-:;'!?1")), max_size=60),
       st.integers(1, 4), st.integers(1, 5))
def test_any_text_parses_without_error(text, max_words, max_objects):
    spans = [(i, i + 1) for i in range(len(text))]
    objects = parse_object_names(text, spans, max_object_words=max_words, max_objects=max_objects)
    assert len(objects) <= max_objects
    assert len({o.name for o in objects}) == len(objects)
    for o in objects:
        assert 1 <= len(o.name.split()) <= max_words
        assert 0 <= o.token_span[0] < o.token_span[1] <= len(text)


def test_name_char_spans_point_into_the_text():
    text = "A Traffic Cone, and a DOG"
    for name, c0, c1 in name_char_spans(text, 4):
        assert text[c0:c1].lower() == name
