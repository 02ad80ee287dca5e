"""A tiny random CLIP model saved exactly as a real checkpoint (``save_pretrained``: weights,
config, tokenizer, image processor), for tests of the tuner's scorer. Built offline: the
tokenizer is a byte-level BPE with the 256 byte symbols and no merges (every word is
spelled letter by letter), so no vocabulary is downloaded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return [chr(c) for c in chars]


def save_tiny_clip(out_dir: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Writes a seeded random CLIPModel (2 layers, width 32) and its processor to
    ``out_dir`` and returns it."""
    import torch
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              CLIPTokenizer)

    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab[bos], vocab[eos] = len(vocab), len(vocab) + 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file))
    size = {"shortest_edge": image_size}
    crop = {"height": image_size, "width": image_size}
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size=size, crop_size=crop),
                              tokenizer=tokenizer)
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 77, "bos_token_id": vocab[bos],
                     "eos_token_id": vocab[eos], "pad_token_id": vocab[eos]},
        vision_config={"image_size": image_size, "patch_size": 8, "hidden_size": 32,
                       "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2},
        projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out
