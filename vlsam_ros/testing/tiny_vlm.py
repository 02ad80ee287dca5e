"""Tiny, seeded, randomly initialised VLMs saved exactly like real Hugging Face checkpoints.

``save_tiny_vlm(family, out_dir)`` writes weights, config, tokenizer, image processor,
processor and chat template with ``save_pretrained``; ``load_vlm`` then loads the folder
through the same code path as a real checkpoint (e.g. ``llava-hf/llava-1.5-7b-hf``).

The tokenizer is built locally (``tokenizers`` word-level model) from a small vocabulary
of driving-scene words, object names, commas and ``and``, so random generations still
parse into object-like names. Labels produced by these models are meaningless.

Sizes are chosen so one 16-token generation takes well under a second on one CPU core:
text hidden 64, 2 layers, 4 query heads over 2 key/value heads (grouped-query attention
is exercised on purpose), vision hidden 32, 2 layers, a few dozen image tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

# Words a random model can emit. Object names dominate so random text parses into names.
OBJECT_WORDS = (
    "car", "truck", "bus", "van", "bicycle", "motorcycle", "pedestrian", "person", "dog",
    "cat", "deer", "horse", "cone", "barrier", "debris", "tire", "box", "bag", "cart",
    "stroller", "wheelchair", "sign", "pole", "tree", "rock", "trash", "bin", "ladder",
    "mattress", "cargo", "pallet", "bollard", "scooter", "tractor", "trailer", "crane",
)
MODIFIER_WORDS = ("red", "white", "black", "small", "large", "traffic", "fallen", "parked",
                  "construction", "plastic", "wooden", "orange", "stop", "street")
FUNCTION_WORDS = (",", ".", "and", "a", "an", "the", "of", "on", "near", "with", "is", "are",
                  "there", "i", "see", "in", "image", "road", "scene", "this", ":")
PROMPT_WORDS = ("describe", "driving", "list", "every", "object", "objects", "you", "can",
                "including", "unusual", "or", "such", "as", "animals", "cones", "answer",
                "comma", "-", "separated", "names", "user", "assistant", "system",
                "write", "question", "questions", "different", "that", "means", "all",
                "one", "per", "line", "what", "do", "<", ">", "|", "_", "/")

FAMILIES = ("llava", "llava_next", "qwen2_vl", "idefics3")

# Family-specific special tokens (the real checkpoints' spellings).
_SPECIALS: dict[str, tuple[str, ...]] = {
    "llava": ("<s>", "</s>", "<unk>", "<pad>", "<image>"),
    "llava_next": ("<s>", "</s>", "<unk>", "<pad>", "<image>"),
    "qwen2_vl": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", "<|vision_start|>",
                 "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
    "idefics3": ("<|begin_of_text|>", "<|end_of_text|>", "<unk>", "<|pad|>",
                 "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                 *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))),
}

# Chat templates in the style of the real checkpoints (role prefix, image placeholder).
_LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
_QWEN2_VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}{{ m['role'] | capitalize }}:"
    "{% if m['content'] is string %} {{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def tiny_vocabulary(family: str) -> list[str]:
    """The word-level vocabulary of ``family``'s tiny tokenizer: specials first."""
    if family not in _SPECIALS:
        raise ValueError(f"unknown VLM family {family!r}; expected one of {list(FAMILIES)}")
    words: list[str] = []
    for w in (*_SPECIALS[family], *OBJECT_WORDS, *MODIFIER_WORDS, *FUNCTION_WORDS,
              *PROMPT_WORDS):
        if w not in words:
            words.append(w)
    return words


def build_tiny_tokenizer(family: str):
    """A fast tokenizer (transformers ``TokenizersBackend``) over ``tiny_vocabulary(family)``.

    Word-level: lower-cased, split into words and punctuation; unknown words map to
    ``<unk>``; decoding joins tokens with single spaces. Special tokens are added tokens, so
    ``<image>`` etc. are never split.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_list = tiny_vocabulary(family)
    specials = _SPECIALS[family]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab_list)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens(list(specials))
    if family in ("llava", "llava_next"):
        names = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
        extra = {"image_token": "<image>"}
    elif family == "qwen2_vl":
        names = dict(eos_token="<|im_end|>", unk_token="<unk>", pad_token="<|endoftext|>")
        extra = {}
    else:
        names = dict(bos_token="<|begin_of_text|>", eos_token="<end_of_utterance>",
                     unk_token="<unk>", pad_token="<|pad|>")
        extra = {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **names, padding_side="left",
                                   extra_special_tokens=extra or None)
    fast.add_special_tokens({"additional_special_tokens": [s for s in specials
                                                           if s not in names.values()]})
    return fast


def _llama_text_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4,
                       kv_heads: int = 2, intermediate: int = 128, **ids):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, max_position_embeddings=8192,
                       tie_word_embeddings=False, **ids)


def _clip_vision_config(image_size: int, patch_size: int, hidden: int = 32, layers: int = 2,
                        heads: int = 4):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=layers, num_attention_heads=heads,
                            image_size=image_size, patch_size=patch_size, projection_dim=hidden)


def _build_llava(tokenizer, *, image_size: int = 48, patch: int = 8, vision_hidden: int = 32,
                 vision_layers: int = 2, text_hidden: int = 64, text_layers: int = 2,
                 heads: int = 4, kv_heads: int = 2, intermediate: int = 128):
    """LLaVA-1.5: CLIP tower + Llama. Tiny default: 48 px, 8 px patches -> 6x6 = 36 image
    tokens. The keyword sizes let benchmarks build mid-size random models of the same
    architecture (e.g. 336 px / 14 px patches -> 576 image tokens, hidden 1024)."""
    from transformers import (LlavaConfig, LlavaForConditionalGeneration, LlavaImageProcessor,
                              LlavaProcessor)

    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=_clip_vision_config(image_size, patch, vision_hidden, vision_layers),
        text_config=_llama_text_config(len(tokenizer), text_hidden, text_layers, heads,
                                       kv_heads, intermediate,
                                       bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id),
        image_token_index=image_token_id, image_seq_length=(image_size // patch) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-2)
    model = LlavaForConditionalGeneration(config)
    image_processor = LlavaImageProcessor(size={"shortest_edge": image_size},
                                          crop_size={"height": image_size, "width": image_size},
                                          do_center_crop=True, do_pad=False)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=patch, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=_LLAVA_TEMPLATE)
    return model, processor


def _build_llava_next(tokenizer):
    """LLaVA-NeXT: anyres tiles of 32 px (8 px patches -> 4x4 per tile) + base image."""
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessor, LlavaNextProcessor)

    image_size, patch = 32, 8
    grid_pinpoints = [[32, 64], [64, 32], [64, 64], [32, 96], [96, 32]]
    config = LlavaNextConfig(
        vision_config=_clip_vision_config(image_size, patch),
        text_config=_llama_text_config(len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=grid_pinpoints, vision_feature_select_strategy="default",
        vision_feature_layer=-2, image_seq_length=(image_size // patch) ** 2)
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=grid_pinpoints, do_center_crop=True)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   patch_size=patch, vision_feature_select_strategy="default",
                                   num_additional_image_tokens=1, chat_template=_LLAVA_TEMPLATE)
    return model, processor


def _build_qwen2_vl(tokenizer):
    """Qwen2-VL: dynamic resolution, 8 px patches merged 2x2 (16 px per image token)."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor)

    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    text_config = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=2048, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                        "mrope_section": [2, 3, 3]},
                       bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    vision_config = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2,
                         patch_size=8, spatial_merge_size=2, temporal_patch_size=2,
                         in_channels=3)
    config = Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **ids)
    model = Qwen2VLForConditionalGeneration(config)
    image_processor = Qwen2VLImageProcessor(
        patch_size=8, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": 16 * 16, "longest_edge": 16 * 16 * 48})
    video_processor = Qwen2VLVideoProcessor(patch_size=8, merge_size=2, temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=video_processor,
                                 chat_template=_QWEN2_VL_TEMPLATE)
    return model, processor


def _build_idefics3(tokenizer):
    """Idefics3/SmolVLM: 32 px tiles (8 px patches, pixel shuffle 2 -> 4 tokens per tile)
    plus a global image; images up to 96 px on the long side are split into <= 3x3 tiles."""
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration,
                              Idefics3ImageProcessor, Idefics3Processor)

    tile, patch, scale = 32, 8, 2
    text_config = _llama_text_config(len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                     eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id).to_dict()
    vision_config = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, image_size=tile, patch_size=patch)
    config = Idefics3Config(text_config=text_config, vision_config=vision_config,
                            scale_factor=scale,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = Idefics3ForConditionalGeneration(config)
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 3 * tile}, max_image_size={"longest_edge": tile},
        do_image_splitting=True)
    seq_len = (tile // patch) ** 2 // scale ** 2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=seq_len, chat_template=_IDEFICS3_TEMPLATE)
    return model, processor


# Output-head gain of the words a tiny model should emit: large enough that they dominate
# the random logits, so generations read like "car , cone and fallen tire".
_OUTPUT_WORD_GAIN = 30.0
# Extra gain of "," and "and" so that random lists break into several names more often.
_SEPARATOR_GAIN = 2.0


def _favour_object_words(model, tokenizer) -> None:
    """Rescales the LM head so random generations consist of object words, modifiers,
    commas and 'and'; every other token's logit (end of sequence included) is zeroed, so
    generations usually run to max_new_tokens."""
    head = model.get_output_embeddings().weight
    keep = [*OBJECT_WORDS, *MODIFIER_WORDS, ",", "and", "a"]
    keep_ids = torch.tensor(tokenizer.convert_tokens_to_ids(keep))
    gain = torch.zeros(head.shape[0], 1)
    gain[keep_ids] = _OUTPUT_WORD_GAIN
    gain[torch.tensor(tokenizer.convert_tokens_to_ids([",", "and"]))] *= _SEPARATOR_GAIN
    with torch.no_grad():
        head.mul_(gain.to(head.dtype))


_BUILDERS: dict[str, Callable] = {
    "llava": _build_llava,
    "llava_next": _build_llava_next,
    "qwen2_vl": _build_qwen2_vl,
    "idefics3": _build_idefics3,
}


def build_tiny_vlm(family: str, seed: int = 0, **sizes):
    """Returns ``(model, processor)`` of a tiny random VLM of ``family`` (float32, eval mode).

    Same seed, same weights. The model has a generation config with greedy decoding.
    ``sizes`` (llava only) override the tiny dimensions, see ``_build_llava``.
    """
    if family not in _BUILDERS:
        raise ValueError(f"unknown VLM family {family!r}; expected one of {list(FAMILIES)}")
    if sizes and family != "llava":
        raise ValueError("size overrides are only supported for the llava family")
    tokenizer = build_tiny_tokenizer(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = _BUILDERS[family](tokenizer, **sizes)
        _favour_object_words(model, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.do_sample = False
    return model.eval(), processor


def save_tiny_vlm(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Builds ``build_tiny_vlm(family, seed)`` and saves model and processor to ``out_dir``.

    Returns ``out_dir``. Loading it back with ``load_vlm`` (``vlm.model = out_dir``,
    ``vlm.family = family``) uses the production loader.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny_vlm(family, seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
