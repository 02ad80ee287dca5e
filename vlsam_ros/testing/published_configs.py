"""Published configuration values of the VLM checkpoints vlsam_ros supports.

``data/published_vlm_configs.json`` holds, per hub checkpoint, the values of its
``preprocessor_config.json`` / ``processor_config.json`` (the ``processor`` section) and of its
``config.json`` (the ``model`` section, dotted keys for nested fields). Every value records
the hub file it comes from and the stored public copies that confirm it; values with no
confirmation are listed by ``PublishedCheckpoint.unconfirmed``. Nothing is downloaded.

Uses: tests build the real transformers processors from it (``build_published_processor``)
to check image preparation and token layouts at the published sizes; the architectures can
be built with random weights from ``PublishedCheckpoint.model_config``;
``measure_image_tokens`` / ``image_token_table_markdown`` measure the image-token counts the
README documents.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Mapping

DATA_FILE = Path(__file__).resolve().parent / "data" / "published_vlm_configs.json"

# Keys of the processor section that describe the files, not constructor arguments.
_DESCRIPTIVE_KEYS = ("image_processor_type", "processor_class", "aspect_ratio_setting")
# Keys that belong to processor_config.json (the processor), not to the image processor.
_PROCESSOR_FILE = "/processor_config.json"


@dataclasses.dataclass(frozen=True)
class PublishedValue:
    """One published value: ``source`` is '<hub repo>/<file>'; ``confirmed_by`` lists ids of
    ``sources()`` entries (empty: not confirmed from a stored source); ``written`` is False when
    the file leaves the value to the transformers class default."""

    value: Any
    source: str
    confirmed_by: tuple[str, ...]
    written: bool = True
    note: str = ""


@dataclasses.dataclass(frozen=True)
class PublishedCheckpoint:
    """The published processor and model values of one hub checkpoint."""

    repo: str
    family: str          # vlm.family
    model_type: str      # config.json model_type
    processor: Mapping[str, PublishedValue]
    model: Mapping[str, PublishedValue]

    def value(self, key: str) -> Any:
        """A processor value (e.g. 'size'), or a model value (e.g. 'vision_config.image_size')."""
        entry = self.processor.get(key) or self.model.get(key)
        if entry is None:
            raise KeyError(f"{self.repo}: no published value {key!r}")
        return entry.value

    def model_config(self) -> dict[str, Any]:
        """config.json values as nested dicts (dotted keys expanded)."""
        return _nest({k: v.value for k, v in self.model.items()})

    def unconfirmed(self) -> list[str]:
        """'processor:<key>' / 'model:<key>' of every value no stored source confirms."""
        return [f"{section}:{k}" for section, values in (("processor", self.processor),
                                                         ("model", self.model))
                for k, v in values.items() if not v.confirmed_by]


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def _values(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, PublishedValue]:
    return {k: PublishedValue(value=e["value"], source=e["source"],
                              confirmed_by=tuple(e["confirmed_by"]),
                              written=e.get("written", True), note=e.get("note", ""))
            for k, e in raw.items()}


@functools.lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    return json.loads(DATA_FILE.read_text())


def sources() -> dict[str, str]:
    """Id -> description of every stored source cited by ``confirmed_by``."""
    return dict(_document()["sources"])


@functools.lru_cache(maxsize=1)
def published_checkpoints() -> dict[str, PublishedCheckpoint]:
    """Hub repo id -> its published values, in the file's order."""
    return {repo: PublishedCheckpoint(repo=repo, family=c["family"], model_type=c["model_type"],
                                      processor=_values(c["processor"]),
                                      model=_values(c["model"]))
            for repo, c in _document()["checkpoints"].items()}


def published_checkpoint(repo: str) -> PublishedCheckpoint:
    """The published values of ``repo``; ValueError naming the known repos otherwise."""
    known = published_checkpoints()
    if repo not in known:
        raise ValueError(f"no published configuration for {repo!r}; known: {sorted(known)}")
    return known[repo]


def _image_processor_kwargs(ckpt: PublishedCheckpoint) -> dict[str, Any]:
    return {k: v.value for k, v in ckpt.processor.items()
            if v.written and k not in _DESCRIPTIVE_KEYS
            and not v.source.endswith(_PROCESSOR_FILE)}


def _processor_kwargs(ckpt: PublishedCheckpoint) -> dict[str, Any]:
    return {k: v.value for k, v in ckpt.processor.items()
            if v.written and k not in _DESCRIPTIVE_KEYS and v.source.endswith(_PROCESSOR_FILE)}


def build_published_image_processor(repo: str):
    """The transformers image processor ``repo`` publishes (its ``image_processor_type``,
    constructed with the published preprocessor values; torchvision backend)."""
    import transformers

    ckpt = published_checkpoint(repo)
    cls = getattr(transformers, ckpt.value("image_processor_type"))
    return cls(**_image_processor_kwargs(ckpt))


def build_published_processor(repo: str, tokenizer, chat_template: str | None = None):
    """The processor of ``repo`` built from its published values around ``tokenizer``.

    ``tokenizer`` must know the family's special tokens (a tiny tokenizer from
    ``tiny_vlm.build_tiny_tokenizer`` does); only image preparation and the image-token
    layout follow the checkpoint, the text vocabulary does not.
    """
    import transformers

    ckpt = published_checkpoint(repo)
    image_processor = build_published_image_processor(repo)
    processor_cls = getattr(transformers, ckpt.value("processor_class"))
    kwargs = _processor_kwargs(ckpt)
    if ckpt.family == "qwen2_vl":    # the processor also wants a video processor
        kwargs["video_processor"] = transformers.Qwen2VLVideoProcessor(
            patch_size=ckpt.value("patch_size"), merge_size=ckpt.value("merge_size"),
            temporal_patch_size=ckpt.value("temporal_patch_size"))
    return processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                         chat_template=chat_template, **kwargs)


# --- image-token counts at driving-frame sizes (README table) ----------------------------

# A prompt holding one image placeholder, per family (the processor expands it).
_IMAGE_PROMPTS = {
    "llava": "USER: <image>\nDescribe. ASSISTANT:",
    "llava_next": "USER: <image>\nDescribe. ASSISTANT:",
    "qwen2_vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe."
                "<|im_end|>\n<|im_start|>assistant\n",
    "idefics3": "<|begin_of_text|>User:<image> Describe.<end_of_utterance>\nAssistant:",
}
# Frame sizes (height, width) of the README table: nuScenes, KITTI, full-HD cameras.
DRIVING_FRAMES = ((900, 1600), (375, 1242), (1080, 1920))


def measure_image_tokens(repo: str, image_hw: tuple[int, int], vlm_cfg=None
                         ) -> tuple[int, tuple[int, int], float]:
    """Runs ``repo``'s published processor, fitted by ``vlm_cfg`` (default ``VlmConfig()``)
    as the backend does, on a black frame of ``image_hw``. Returns (image tokens in the
    prompt, the map's patch grid (rows, cols), fraction of the frame the grid covers)."""
    import numpy as np
    from PIL import Image

    from vlsam_ros.core.config import VlmConfig
    from vlsam_ros.core.vlm import layouts
    from vlsam_ros.core.vlm.image_fit import ImageFit, fit_processor, visible_fraction
    from vlsam_ros.testing.tiny_vlm import build_tiny_tokenizer

    ckpt = published_checkpoint(repo)
    fit = ImageFit.from_config(vlm_cfg if vlm_cfg is not None else VlmConfig())
    processor = fit_processor(build_published_processor(repo, build_tiny_tokenizer(ckpt.family)),
                              ckpt.family, fit)
    frame = Image.fromarray(np.zeros((*image_hw, 3), np.uint8))
    inputs = processor(text=[_IMAGE_PROMPTS[ckpt.family]], images=[frame], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    layout = layouts.family_layout(ckpt.family, ids, processor.image_token_id, image_hw,
                                   processor, inputs, 0)
    count = sum(1 for t in ids if t == processor.image_token_id)
    return count, layout.grid_shape, visible_fraction(layout.box_xyxy, image_hw)


def image_token_table_markdown() -> str:
    """The README's table: image tokens (map grid) and the fraction of the frame the VLM
    sees, with the default configuration and with ``vlm.image_fit=processor``, for every
    published checkpoint (checkpoints with identical results share a row)."""
    from vlsam_ros.core.config import VlmConfig

    def cells(cfg) -> list[str]:
        out = [measure_image_tokens(repo, hw, cfg) for hw in DRIVING_FRAMES]
        return ([f"{n} ({g[0]}x{g[1]})" for n, g, _ in out]
                + [" / ".join(f"{f:.2f}" for _, _, f in out)])

    rows: dict[tuple[str, ...], list[str]] = {}
    for repo in published_checkpoints():
        key = tuple(cells(VlmConfig()) + cells(VlmConfig(image_fit="processor")))
        rows.setdefault(key, []).append(repo)
    frames = ", ".join(f"{w}x{h}" for h, w in DRIVING_FRAMES)
    lines = [f"| checkpoints | whole: {frames} | seen | processor: {frames} | seen |",
             "|---|---|---|---|---|"]
    for key, repos in rows.items():
        whole, processor = key[:4], key[4:]
        lines.append(f"| {'<br>'.join(repos)} | {' · '.join(whole[:3])} | {whole[3]} | "
                     f"{' · '.join(processor[:3])} | {processor[3]} |")
    return "\n".join(lines)
