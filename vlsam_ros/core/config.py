"""One configuration schema for the whole project.

Every tunable of vlsam_ros is a field of one of the frozen dataclasses below. The same
schema feeds:

* the YAML files in ``config/`` (ROS 2 parameter-file layout, nested dicts),
* the ROS parameters the node declares (dotted names such as ``vlm.model``, with the
  field's documentation as the parameter description and its range as the constraint),
* the ``--set key=value`` flags of every command-line tool.

Values are validated once, in ``__post_init__``; an invalid value raises ``ConfigError``
naming the field. Field metadata keys:

``doc``      one-line description (shown as ROS parameter description and ``--help``);
``range``    inclusive ``(low, high)`` for numbers;
``choices``  allowed values for strings;
``runtime``  True when a change applies from the next frame without reloading models.

Reading parameter files, profiles and ``--set`` flags is ``config_files.py``. This module
has no ROS import.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterator, Mapping

import yaml

from vlsam_ros.core.topic_names import topic_name_problem


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def _field(default: Any, doc: str, *, range: tuple[float, float] | None = None,
           choices: tuple[str, ...] | None = None, runtime: bool = False) -> Any:
    meta: dict[str, Any] = {"doc": doc, "runtime": runtime}
    if range is not None:
        meta["range"] = range
    if choices is not None:
        meta["choices"] = choices
    return dataclasses.field(default=default, metadata=meta)


class _Section:
    """Mixin: validates every field of a dataclass section against its metadata."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            expected = hints[f.name]
            if dataclasses.is_dataclass(expected):
                if not isinstance(value, expected):
                    raise ConfigError(f"{f.name}: expected a {expected.__name__} section")
                continue
            value = _coerce(f.name, value, expected)
            object.__setattr__(self, f.name, value)
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ConfigError(f"{f.name}={value!r}: must be one of {list(choices)}")
            bounds = f.metadata.get("range")
            if bounds is not None and not (bounds[0] <= value <= bounds[1]):
                raise ConfigError(f"{f.name}={value!r}: must lie in [{bounds[0]}, {bounds[1]}]")
        self._check()

    def _check(self) -> None:
        """Cross-field checks; overridden by sections that need them."""


def _coerce(name: str, value: Any, expected: Any) -> Any:
    """Converts YAML/CLI/ROS values to the field's declared type, or raises ConfigError."""
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{name}={value!r}: expected true or false")
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{name}={value!r}: expected an integer")
        try:
            return int(value)
        except ValueError as exc:
            raise ConfigError(f"{name}={value!r}: expected an integer") from exc
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{name}={value!r}: expected a number")
        try:
            return float(value)
        except ValueError as exc:
            raise ConfigError(f"{name}={value!r}: expected a number") from exc
    if expected is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r}: expected a string")
        return value
    if typing.get_origin(expected) is tuple:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip().startswith("[") else [value]
            except yaml.YAMLError as exc:
                problem = str(getattr(exc, "problem", "") or exc).splitlines()[0]
                raise ConfigError(f"{name}={value!r}: not a valid list ({problem}); write "
                                  "it as [a, b] (quote the whole --set argument in a shell)"
                                  ) from None
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name}={value!r}: expected a list of strings")
        return tuple(value)
    raise ConfigError(f"{name}: unsupported field type {expected!r}")


DEFAULT_QUESTION = (
    "Describe this driving scene and list every object you can see, including unusual "
    "objects on or near the road such as debris, animals, fallen cargo or traffic cones. "
    "Answer with a comma-separated list of object names."
)

# Words that are never object names in a driving answer: ground surfaces and road paint,
# terrain and sky, weather and light, traffic as a whole, and the camera's own vehicle. Canonical
# (lower-case, singular) forms; a name is background when it ends with one of them
# ("wet road", "bike lane"), so "road sign" or "traffic cone" are still objects.
DEFAULT_BACKGROUND_WORDS = (
    "road", "street", "highway", "freeway", "motorway", "roadway", "road surface",
    "street surface", "asphalt", "pavement", "lane", "lane marking", "road marking",
    "crosswalk", "intersection", "junction", "exit", "shoulder", "median", "curb", "sidewalk",
    "driveway", "parking lot", "ground", "grass", "field", "pasture", "meadow", "terrain",
    "hill", "hillside", "mountain", "vegetation", "sky", "cloud", "horizon", "weather", "rain",
    "fog", "snow", "daylight", "sunlight", "shadow", "shade", "traffic", "ego vehicle",
    "dashboard", "windshield",
)

# Hand-written rephrasings of the listing question (question ensemble, method.md section 5).
DEFAULT_ENSEMBLE_QUESTIONS = (
    "List all the objects you can see in this image, separated by commas.",
    "What objects are present in this picture? Name each of them, separated by commas.",
    "Name every object visible in this road scene, as a comma-separated list.",
    "Which things can be seen in this image? Give a comma-separated list of their names.",
    "Enumerate all objects in the scene, including small or unusual ones, separated by commas.",
    "Identify each object in this photo and list their names, separated by commas.",
    "What is on or near the road in this image? List every object, separated by commas.",
    "Give the names of all the objects in this image as a comma-separated list.",
    "Look carefully at the whole image and list each object you find, separated by commas.",
)

DEFAULT_REPHRASE_PROMPT = (
    "Write {n} different questions that all ask to list every object in an image, with the "
    "same meaning as this question: \"{question}\" Write exactly one question per line, "
    "without numbering or any other text."
)


def parse_grid_pinpoints(text: str) -> tuple[tuple[int, int], ...]:
    """'336x672,672x336' -> ((336, 672), (672, 336)): (height, width) pixel pairs, the order of
    LLaVA-NeXT's image_grid_pinpoints. Empty text -> (). Raises ConfigError."""
    pairs = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        parts = item.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise ConfigError(f"llava_next_grid_pinpoints={text!r}: expected comma-separated "
                              f"HEIGHTxWIDTH pixel sizes such as '336x672,672x336', got {item!r}")
        pairs.append((int(parts[0]), int(parts[1])))
    return tuple(pairs)


@dataclasses.dataclass(frozen=True)
class VlmConfig(_Section):
    """The vision-language model that names the objects and provides the attention."""

    family: str = _field("llava", "Backend registry key of the VLM architecture.",
                         choices=("llava", "llava_next", "qwen2_vl", "idefics3"))
    model: str = _field("llava-hf/llava-1.5-7b-hf",
                        "Local folder or Hugging Face hub id of the VLM weights. Hub ids "
                        "must already be in the local cache unless local_files_only is false.")
    dtype: str = _field("float16", "Torch dtype of the VLM weights.",
                        choices=("float32", "float16", "bfloat16"))
    max_new_tokens: int = _field(64, "Maximum number of generated tokens per question.",
                                 range=(1, 1024), runtime=True)
    do_sample: bool = _field(False, "Sample instead of greedy decoding (paper: sampling).",
                             runtime=True)
    temperature: float = _field(0.8, "Sampling temperature when do_sample (paper: 0.8).",
                                range=(0.01, 5.0), runtime=True)
    top_p: float = _field(0.1, "Nucleus sampling mass when do_sample (paper: 0.1).",
                          range=(0.0, 1.0), runtime=True)
    seed: int = _field(0, "Seed for sampling; generation is reseeded per frame.",
                       range=(0, 2**31 - 1), runtime=True)
    question: str = _field(DEFAULT_QUESTION, "The question that makes the VLM list objects.",
                           runtime=True)
    max_object_words: int = _field(4, "Longest object name kept by the parser, in words.",
                                   range=(1, 16), runtime=True)
    max_objects: int = _field(16, "Most object names kept per answer (first ones win).",
                              range=(1, 256), runtime=True)
    background_words: tuple[str, ...] = _field(DEFAULT_BACKGROUND_WORDS,
                                               "Never object names: a name ending with one of "
                                               "these lower-case singular words is dropped "
                                               "(ground, road paint, sky, weather, traffic, the "
                                               "ego vehicle).", runtime=True)
    share_image_prefix: bool = _field(True, "Encode each distinct image once per batch and "
                                      "prefill its prompt prefix (up to and including the "
                                      "image tokens) once, shared by all questions on it; "
                                      "same text and maps as False (every image-question "
                                      "pair run in full) up to float rounding.", runtime=True)
    local_files_only: bool = _field(True, "Never reach the Hugging Face hub (no network "
                                    "access at all); load from disk or the local cache only.")
    hub_timeout_s: float = _field(10.0, "With local_files_only false: how long the hub gets "
                                  "to answer about a hub id that is not cached, and the "
                                  "timeout of each download request.", range=(0.1, 600.0))
    image_fit: str = _field(
        "whole", "What the VLM sees of the frame. 'whole': the whole frame whatever its aspect "
        "ratio (llava: pad to a square with the image-mean colour as LLaVA-1.5 was trained, no "
        "centre crop; llava_next: anyres; qwen2_vl: dynamic resolution within the pixel range "
        "below; idefics3: tiles plus a global image, up to the longest edge below). "
        "'processor': the checkpoint's image processor unchanged, budgets ignored (llava-1.5 "
        "then centre-crops: 56% of a 1600x900 frame's width, 30% of a 1242x375 one).",
        choices=("whole", "processor"), runtime=True)
    qwen_min_pixels: int = _field(
        0, "qwen2_vl: least pixels of the resized frame (floor over the checkpoint's "
        "min_pixels); 0 = the checkpoint's (3136 published).", range=(0, 2**31 - 1),
        runtime=True)
    qwen_max_pixels: int = _field(
        1280 * 28 * 28, "qwen2_vl: most pixels of the resized frame, a cap on the checkpoint's "
        "max_pixels; 0 = the checkpoint's (12845056 published: 1824 image tokens at 1600x900, "
        "2691 at 1920x1080). Default 1280*28*28 (the model card's upper bound): 1222 tokens "
        "(26x47) at 1600x900 and 1920x1080, 572 (13x44) at 1242x375.",
        range=(0, 2**31 - 1), runtime=True)
    idefics3_longest_edge: int = _field(
        0, "idefics3/SmolVLM: longest edge the frame is resized to before splitting into "
        "tiles, a cap on the checkpoint's size.longest_edge; 0 = the checkpoint's (4 tiles: "
        "1456 Idefics3-8B, 1536 SmolVLM 2.2B, 2048 SmolVLM-256M/500M), i.e. 3x4 tiles + global "
        "at 1600x900 and 1920x1080 (2197 / 1053 / 832 image tokens), 2x4 + global at 1242x375 "
        "(1521 / 729 / 576).", range=(0, 4096), runtime=True)
    llava_next_grid_pinpoints: str = _field(
        "", "llava_next: anyres grid resolutions 'HxW,HxW,...' in pixels (multiples of the "
        "336 px tile); empty = the checkpoint's (336x672,672x336,672x672,1008x336,336x1008: "
        "672x672 at 1600x900 and 1920x1080, 1948 image tokens; 336x1008 at 1242x375, 2182).",
        runtime=True)

    def _check(self) -> None:
        parse_grid_pinpoints(self.llava_next_grid_pinpoints)
        if self.qwen_min_pixels and self.qwen_max_pixels \
                and self.qwen_min_pixels > self.qwen_max_pixels:
            raise ConfigError(f"qwen_min_pixels={self.qwen_min_pixels} exceeds "
                              f"qwen_max_pixels={self.qwen_max_pixels}")


@dataclasses.dataclass(frozen=True)
class SamConfig(_Section):
    """The promptable segmenter (Segment Anything, MobileSAM, SAM 2.1, EdgeTAM, SAM-HQ)."""

    backend: str = _field("sam", "Segmenter family: 'sam' (segment_anything / mobile_sam, "
                          "sam.type + sam.checkpoint), or through transformers from the folder "
                          "sam.model: 'sam2' (SAM 2.1 tiny/small/base-plus/large), 'edgetam', "
                          "'sam_hq'.", choices=("sam", "sam2", "edgetam", "sam_hq"))
    model: str = _field("models/sam2.1-hiera-tiny", "sam2/edgetam/sam_hq: local folder of the "
                        "checkpoint in transformers save_pretrained layout (config.json, "
                        "weights, processor_config.json); which size it is comes from its "
                        "config.json.")
    dtype: str = _field("float32", "sam2/edgetam/sam_hq: torch dtype of the segmenter weights.",
                        choices=("float32", "float16", "bfloat16"))
    hq_token_only: bool = _field(False, "sam_hq: masks from the HQ output token only (else "
                                 "SAM's mask plus the HQ correction, the SAM-HQ default).",
                                 runtime=True)
    type: str = _field("vit_t", "SAM variant: vit_h/vit_l/vit_b (segment_anything) or vit_t "
                       "(mobile_sam).", choices=("vit_h", "vit_l", "vit_b", "vit_t"))
    checkpoint: str = _field("models/mobile_sam.pt",
                             "Path of the SAM/MobileSAM state-dict checkpoint (.pt/.pth).")
    multimask: bool = _field(True, "Ask SAM for 3 candidate masks and keep the best by "
                             "predicted IoU (recommended for a single point).", runtime=True)
    mask_threshold: float = _field(0.0, "Logit threshold that binarises SAM's masks.",
                                   range=(-20.0, 20.0), runtime=True)
    overlap_encoder: bool = _field(True, "Run the SAM image encoder in a worker thread while "
                                   "the VLM generates (both only need the image).",
                                   runtime=True)
    decoder: str = _field("factored", "Mask decoder evaluation: 'factored' shares the "
                          "prompt-independent image work across prompts and folds projections "
                          "onto the few prompt tokens (same outputs up to float rounding); "
                          "'stock' calls the package's MaskDecoder.", choices=("factored", "stock"),
                          runtime=True)
    decoder_chunk: int = _field(0, "Prompts the factored decoder processes together; 0 picks "
                                "by device: 2 on CPU (keeps each prompt's 4 MB image state in "
                                "cache), 64 on CUDA (bounds the decoder's transient memory to "
                                "about 2 GB).", range=(0, 4096),
                                runtime=True)


@dataclasses.dataclass(frozen=True)
class AttentionConfig(_Section):
    """How the VLM attention becomes one map per object (method.md section 2)."""

    head_weighting: str = _field("meanmax", "Head aggregation: 'meanmax' (paper) or plain "
                                 "'mean' over heads.", choices=("meanmax", "mean"), runtime=True)
    meanmax_image_keys_only: bool = _field(False, "Take the MeanMax max over image-token keys "
                                           "only (guards against attention sinks).", runtime=True)
    regularize: bool = _field(True, "Column regularisation 1-(L0-1)/N against top-left "
                              "collapse (paper ablation: 0.1 -> 8.5 mAR).", runtime=True)
    row_normalize: bool = _field(True, "Row-normalise (I + S') in the attention flow, as in "
                                 "standard rollout.", runtime=True)
    use_flow: bool = _field(True, "Attention flow over all layers; False uses the last layer's "
                            "head-aggregated attention only.", runtime=True)
    capture: str = _field("fast", "'fast' captures queries/keys under SDPA; 'reference' uses "
                          "eager attention weights (slow, for tests).",
                          choices=("fast", "reference"))
    query_block: int = _field(128, "Query rows processed at once when recomputing attention "
                              "probabilities (memory/speed trade-off).", range=(1, 65536))
    reference_max_gib: float = _field(4.0, "Largest attention the 'reference' capture may "
                                      "hold, in GiB: batch x layers x heads x T^2 float32 "
                                      "probabilities plus one row's full flow (T = prompt + "
                                      "generated tokens). Bigger requests are refused before "
                                      "generating (LLaVA-NeXT-7B at T=2030 needs about 34 GB "
                                      "per prompt).", range=(1e-6, 4096.0))
    gradcam: bool = _field(False, "GradCAM weighting (PnP-OVSS): the last layer's attention "
                           "of each object's rows is weighted by its gradient with respect to "
                           "the log-probability of the generated name, negatives clamped to 0 "
                           "(core/gradcam.py). Costs one teacher-forced forward per prompt and "
                           "one backward per frame.", runtime=True)


@dataclasses.dataclass(frozen=True)
class PromptConfig(_Section):
    """Attention map to SAM point prompts (method.md sections 3 and 4)."""

    threshold: float = _field(0.5, "Threshold on the min-max normalised map; weaker "
                              "activations are dropped.", range=(0.0, 1.0), runtime=True)
    refinement_rounds: int = _field(2, "Refinement rounds after the first prompt: round 1 "
                                    "cascades mask logits, later rounds mask out found areas "
                                    "and sample again (paper: 2).", range=(0, 8), runtime=True)
    dropout_iterations: int = _field(0, "Salience DropOut (PnP-OVSS) before prompting: "
                                     "iterations k; each blacks out the most attended patches "
                                     "of the image, re-runs the VLM teacher-forced on the same "
                                     "text and adds the maps (core/salience_dropout.py). 0 = off.",
                                     range=(0, 16), runtime=True)
    dropout_patches: int = _field(4, "Salience DropOut: patches N blacked out per iteration (the "
                                  "N not yet dropped with the highest summed attention of all "
                                  "objects of the prompt).", range=(1, 65536), runtime=True)
    negative_point: bool = _field(True, "Add the negative point at the map minimum outside "
                                  "the positive area.", runtime=True)
    min_mask_area_px: int = _field(16, "Masks smaller than this many pixels are discarded.",
                                   range=(0, 10**8), runtime=True)
    connectivity: int = _field(8, "Pixel connectivity (4 or 8) of the connected components "
                               "that pick the positive area.", range=(4, 8), runtime=True)
    subpixel_peak: str = _field("off", "LENS keypoints: locate each positive point below "
                                "patch resolution by a fit through the peak and its "
                                "neighbours one patch away: 'quadratic' (parabola through the "
                                "values) or 'gaussian' (through their logarithms); 'off': the "
                                "peak pixel (paper).", choices=("off", "quadratic", "gaussian"),
                                runtime=True)
    positive_points: int = _field(1, "LENS keypoints: most positive points per prompt, at "
                                  "separated local maxima of the map inside the positive "
                                  "area (1: the paper's single point).", range=(1, 16),
                                  runtime=True)
    positive_separation_cells: float = _field(2.0, "Least distance between two positive "
                                              "points of one prompt, in patch cells "
                                              "(with positive_points > 1).",
                                              range=(0.0, 64.0), runtime=True)

    def _check(self) -> None:
        if self.connectivity not in (4, 8):
            raise ConfigError(f"connectivity={self.connectivity}: must be 4 or 8")


@dataclasses.dataclass(frozen=True)
class EnsembleConfig(_Section):
    """Multi-scale tiles, question ensemble and merging (method.md section 5)."""

    tiles: bool = _field(False, "Also run the four H/2 x W/2 corner tiles (paper: on).",
                         runtime=True)
    drop_cut_tile_masks: bool = _field(True, "Drop tile masks that touch a tile edge lying "
                                       "inside the image: they are objects cut by the tile, "
                                       "which the full view segments whole.", runtime=True)
    num_questions: int = _field(1, "Questions per frame: 1 uses vlm.question only; N > 1 adds "
                                "N-1 VLM-written rephrasings (paper: 10).",
                                range=(1, 32), runtime=True)
    nms_iou: float = _field(0.5, "Mask-IoU above which two detections are merged.",
                            range=(0.0, 1.0), runtime=True)
    max_detections: int = _field(100, "Most detections published per frame (by score).",
                                 range=(1, 10000), runtime=True)
    min_score: float = _field(0.0, "Detections scoring below this are dropped.",
                              range=(0.0, 1.0), runtime=True)
    question_source: str = _field("generated", "Where the N-1 extra questions come from: "
                                  "'generated' asks the VLM once (rephrase_prompt) and tops up "
                                  "from ensemble.questions when its answer has too few usable "
                                  "lines; 'config' uses ensemble.questions only.",
                                  choices=("generated", "config"), runtime=True)
    questions: tuple[str, ...] = _field(DEFAULT_ENSEMBLE_QUESTIONS,
                                        "Hand-written listing questions, used in order for "
                                        "question_source=config and as the fallback for "
                                        "rejected generated rephrasings.", runtime=True)
    rephrase_prompt: str = _field(DEFAULT_REPHRASE_PROMPT,
                                  "Text-only prompt that makes the VLM write the rephrasings; "
                                  "{n} and {question} are filled in.", runtime=True)
    rephrase_max_new_tokens: int = _field(512, "Token budget of the one-off generation of "
                                          "the rephrasings (replaces vlm.max_new_tokens there).",
                                          range=(1, 8192), runtime=True)
    question_min_words: int = _field(3, "Generated rephrasings with fewer words are rejected.",
                                     range=(1, 100), runtime=True)
    question_max_words: int = _field(60, "Generated rephrasings with more words are rejected.",
                                     range=(1, 1000), runtime=True)

    def _check(self) -> None:
        if self.question_min_words > self.question_max_words:
            raise ConfigError("question_min_words must not exceed question_max_words")
        for placeholder in ("{n}", "{question}"):
            if placeholder not in self.rephrase_prompt:
                raise ConfigError(f"rephrase_prompt: must contain the placeholder {placeholder}")
        if self.question_source == "config" and len(self.questions) < self.num_questions - 1:
            raise ConfigError(f"question_source=config with num_questions={self.num_questions} "
                              f"needs {self.num_questions - 1} entries in questions, found "
                              f"{len(self.questions)}")
        if any(not q.strip() for q in self.questions):
            raise ConfigError("questions: entries must not be empty")


@dataclasses.dataclass(frozen=True)
class NodeConfig(_Section):
    """ROS-side behaviour of the node (ignored by the core)."""

    qos_reliability: str = _field("best_effort", "Input QoS reliability ('best_effort' is "
                                  "the sensor-data profile).", choices=("best_effort", "reliable"))
    qos_depth: int = _field(1, "Input QoS history depth (1: only the newest frame).",
                            range=(1, 100))
    publish_overlay: bool = _field(True, "Publish ~/overlay when someone subscribes.",
                                   runtime=True)
    publish_markers: bool = _field(True, "Publish ~/markers when someone subscribes.",
                                   runtime=True)
    diagnostics_period_s: float = _field(1.0, "Period of /diagnostics messages.",
                                         range=(0.05, 60.0))
    log_throttle_s: float = _field(5.0, "Minimum interval between repeated warnings.",
                                   range=(0.0, 3600.0))
    rate_log_period_s: float = _field(60.0, "Period of the log line with each camera's "
                                      "input and processed rates and drop counts; 0 turns "
                                      "it off.", range=(0.0, 86400.0))
    malloc_arena_max: int = _field(2, "Linux/glibc: most malloc arenas of the node's process, "
                                   "set on configure (0 keeps glibc's 8 per core). Few arenas "
                                   "keep resident memory flat while frames arrive on several "
                                   "threads (measured, 4 cameras at 30 Hz: 1.4 GB flat vs "
                                   "1.8-1.9 GB).", range=(0, 1024))
    malloc_trim_each_frame: bool = _field(True, "Linux/glibc: hand the heap memory freed by a "
                                          "frame back to the system after it (malloc_trim), "
                                          "so resident memory stays at the live set instead "
                                          "of swinging with the frames' large transients "
                                          "(measured on CPU: 3-19 ms per frame).",
                                          runtime=True)
    max_image_pixels: int = _field(50_000_000, "Largest input image accepted, in pixels "
                                   "(height x width); bigger frames are rejected as malformed "
                                   "before any decoding (8K is 33 Mpx).", range=(1, 2**31 - 1))
    uint16_scaling: str = _field("shift", "How 16-bit images (mono16, 16UC*, rgb16, bayer*16) "
                                 "become 8-bit: 'shift' keeps the top byte (value >> 8, stable "
                                 "across frames); 'minmax' stretches each frame's own range to "
                                 "0..255 (for 12-bit or depth-like data). Float images always use "
                                 "min-max.", choices=("shift", "minmax"), runtime=True)
    overlay_alpha: float = _field(0.5, "Opacity of the mask colour in ~/overlay.",
                                  range=(0.0, 1.0), runtime=True)
    overlay_line_px: int = _field(2, "Box line width in ~/overlay, in pixels.", range=(1, 64),
                                  runtime=True)
    overlay_font_px: int = _field(14, "Label text height in ~/overlay, in pixels.",
                                  range=(4, 256), runtime=True)
    marker_plane_distance_m: float = _field(1.0, "~/markers are drawn on the plane this far in "
                                            "front of the camera (z of the optical frame).",
                                            range=(0.01, 1000.0), runtime=True)
    marker_horizontal_fov_deg: float = _field(90.0, "Horizontal field of view assumed when "
                                              "placing ~/markers (no camera intrinsics are used): "
                                              "the image width spans this angle.",
                                              range=(1.0, 179.0), runtime=True)
    vision_msgs: str = _field("auto", "Publish ~/detections_2d (vision_msgs/Detection2DArray): "
                              "'auto' when vision_msgs is importable, 'on' requires it (error if "
                              "missing), 'off' never.", choices=("auto", "on", "off"))
    stop_timeout_s: float = _field(1.0, "On deactivate/shutdown, how long the frame in "
                                   "progress gets to reach its next safe point (between "
                                   "generated tokens, encoder blocks or decoder calls) and "
                                   "stop; at shutdown a frame still running after that is "
                                   "abandoned so the process exits in time.",
                                   range=(0.0, 3600.0))


@dataclasses.dataclass(frozen=True)
class TrackingConfig(_Section):
    """Camera-rate masks with persistent track ids (design.md section 7, two-rate mode):
    discovery (the VL-SAM pipeline) names objects at its own pace; a promptable segmenter
    follows every known object on every frame (vlsam_ros/core/tracking/)."""

    mode: str = _field("off", "'off': every processed frame runs the full pipeline (no track "
                       "ids). 'flow': Lucas-Kanade optical flow moves each track's prompt, "
                       "then SAM re-decodes all tracks in one batch. 'memory': a SAM 2-family "
                       "video tracker (tracking.memory_model) follows them with its memory "
                       "bank.", choices=("off", "flow", "memory"))
    discovery_period_s: float = _field(0.0, "Node: least time between the starts of two "
                                       "discovery runs of one camera (stamp seconds); 0 "
                                       "starts one whenever the VLM is free.",
                                       range=(0.0, 3600.0), runtime=True)
    replay_discovery_every: int = _field(10, "Offline replay: discovery runs on the first "
                                         "frame of each camera and then on every this-many-th "
                                         "frame (a frame count: reproducible output).",
                                         range=(1, 1_000_000), runtime=True)
    association_iou: float = _field(0.3, "Least mask IoU, at the discovered frame's time, "
                                    "for a discovered object to confirm a track.",
                                    range=(0.0, 1.0), runtime=True)
    min_discovery_score: float = _field(0.1, "Discovered objects scoring below this neither "
                                        "start, confirm nor revive tracks.",
                                        range=(0.0, 1.0), runtime=True)
    reanchor_on_discovery: bool = _field(True, "When discovery answers for the newest "
                                         "followed frame, a confirmed track takes the "
                                         "discovered mask (removes drift).", runtime=True)
    max_tracks: int = _field(64, "Most live tracks per camera; extra discoveries (lowest "
                             "score first) start none.", range=(1, 4096), runtime=True)
    max_age_s: float = _field(30.0, "A track that discovery has not confirmed for this long "
                              "(stamp seconds) is retired.", range=(0.01, 1e6), runtime=True)
    max_missed_discoveries: int = _field(3, "A track is retired after this many consecutive "
                                         "discovery answers that did not confirm it.",
                                         range=(1, 1000), runtime=True)
    history_frames: int = _field(64, "Frames of history kept per camera (track masks, grey "
                                 "images) to associate late discovery answers and carry new "
                                 "objects to the newest frame; older answers use the oldest "
                                 "kept frame.", range=(1, 100_000), runtime=True)
    min_iou_prediction: float = _field(0.5, "A followed mask whose predicted IoU is below "
                                       "this loses its track.", range=(0.0, 1.0), runtime=True)
    min_stability: float = _field(0.75, "A followed mask whose stability score is below this "
                                  "loses its track.", range=(0.0, 1.0), runtime=True)
    stability_offset: float = _field(1.0, "Stability score = area(logits > t + offset) / "
                                     "area(logits > t - offset), t = sam.mask_threshold.",
                                     range=(0.0, 20.0), runtime=True)
    max_area_change: float = _field(3.0, "A track is lost when its mask area grows or shrinks "
                                    "by more than this factor from one frame to the next.",
                                    range=(1.0, 1e6), runtime=True)
    min_area_px: int = _field(16, "A followed mask smaller than this many pixels loses its "
                              "track (left the image or hidden).", range=(0, 10**8),
                              runtime=True)
    max_overlap_iou: float = _field(0.6, "When two tracks' masks overlap with more IoU than "
                                    "this, the one whose area changed more is lost (its "
                                    "prompt jumped onto the other object).", range=(0.0, 1.0),
                                    runtime=True)
    min_object_score: float = _field(0.0, "memory: object-presence logit of the video "
                                     "tracker below which the object is gone.",
                                     range=(-100.0, 100.0), runtime=True)
    lost_memory_s: float = _field(10.0, "Lost tracks are remembered this long (stamp "
                                  "seconds): a later discovery with the same label near the "
                                  "last position revives the track with its id.",
                                  range=(0.0, 1e6), runtime=True)
    revive_distance: float = _field(0.3, "Largest distance between a discovered mask's "
                                     "centre and a lost track's last centre that revives it, "
                                     "as a fraction of the image diagonal.",
                                     range=(0.0, 2.0), runtime=True)
    flow_points: int = _field(24, "flow: feature points tracked per object (Shi-Tomasi "
                              "corners inside the mask, grid points where there are too "
                              "few).", range=(1, 1000), runtime=True)
    flow_window_px: int = _field(21, "flow: Lucas-Kanade window side, pixels.",
                                 range=(3, 255), runtime=True)
    flow_pyramid_levels: int = _field(3, "flow: Lucas-Kanade pyramid levels above the image.",
                                      range=(0, 10), runtime=True)
    flow_max_fb_error_px: float = _field(1.0, "flow: a point whose forward-backward tracking "
                                         "error exceeds this (pixels) is dropped.",
                                         range=(0.0, 1000.0), runtime=True)
    flow_prompt_points: int = _field(3, "flow: positive points given to SAM per track (the "
                                     "most interior tracked point first).", range=(1, 64),
                                     runtime=True)
    flow_box_prompt: bool = _field(True, "flow: also give SAM the box of the moved mask.",
                                   runtime=True)
    flow_mask_prompt: bool = _field(True, "flow: also give SAM the moved mask as its mask "
                                    "prompt (low-resolution logits).", runtime=True)
    flow_mask_prompt_logit: float = _field(10.0, "flow: logit magnitude of the mask prompt "
                                           "(+inside, -outside the moved mask).",
                                           range=(0.0, 100.0), runtime=True)
    memory_model: str = _field("models/sam2.1-hiera-tiny", "memory: local folder of a SAM "
                               "2-family video tracker in save_pretrained layout "
                               "(Sam2VideoModel, EdgeTamVideoModel or Sam3TrackerVideoModel, "
                               "read from its config.json).")
    memory_dtype: str = _field("float32", "memory: torch dtype of the video tracker.",
                               choices=("float32", "float16", "bfloat16"))
    memory_conditioning_frames: int = _field(2, "memory: prompted (conditioning) frames kept "
                                             "per object in the memory bank; with the "
                                             "model's num_maskmem - 1 most recent frames this "
                                             "bounds the bank.", range=(1, 64), runtime=True)


@dataclasses.dataclass(frozen=True)
class ConceptConfig(_Section):
    """Concept mode: SAM 3 proposes every instance of each object name, the object's
    attention map chooses among them (``core/concept_selection.py``)."""

    enabled: bool = _field(False, "Segment each named object with SAM 3's concept "
                           "segmentation, chosen by its attention map; objects SAM 3 finds "
                           "nothing for take the point-prompted path.")
    model: str = _field("models/sam3", "Local folder of the SAM 3 checkpoint (Sam3Model, "
                        "transformers save_pretrained layout with its processor).")
    dtype: str = _field("float32", "Torch dtype of the SAM 3 weights.",
                        choices=("float32", "float16", "bfloat16"))
    score_threshold: float = _field(0.3, "Least SAM 3 instance score (presence x "
                                    "classification probability) for a proposal.",
                                    range=(0.0, 1.0), runtime=True)
    mask_threshold: float = _field(0.5, "Probability threshold that binarises SAM 3's "
                                   "instance masks.", range=(0.0, 1.0), runtime=True)
    attention_threshold: float = _field(0.5, "The attention map's positive area: pixels "
                                        "where the object's map (in [0, 1]) is at least "
                                        "this.", range=(0.0, 1.0), runtime=True)
    min_coverage: float = _field(0.2, "An instance is kept when its mask holds at least "
                                 "this fraction of the map's positive area (or see "
                                 "min_inside).", range=(0.0, 1.0), runtime=True)
    min_inside: float = _field(0.5, "An instance is also kept when at least this fraction "
                               "of its mask lies in the map's positive area (N instances "
                               "under one broad map each hold only about 1/N of it).",
                               range=(0.0, 1.0), runtime=True)
    max_instances: int = _field(8, "Most instances kept per object, best mean attention "
                                "inside the mask first.", range=(1, 256), runtime=True)


@dataclasses.dataclass(frozen=True)
class VlsamConfig(_Section):
    """Root of the configuration."""

    cameras: tuple[str, ...] = _field(("/cam_front/image_raw",),
                                      "Image topics to serve (sensor_msgs/Image, or "
                                      "CompressedImage when the topic ends in /compressed).")
    device: str = _field("cuda", "Torch device for both models ('cuda', 'cuda:1', 'cpu'). "
                         "An unavailable device is an error, never a silent CPU fallback.")
    vlm: VlmConfig = dataclasses.field(default_factory=VlmConfig)
    sam: SamConfig = dataclasses.field(default_factory=SamConfig)
    attention: AttentionConfig = dataclasses.field(default_factory=AttentionConfig)
    prompts: PromptConfig = dataclasses.field(default_factory=PromptConfig)
    ensemble: EnsembleConfig = dataclasses.field(default_factory=EnsembleConfig)
    node: NodeConfig = dataclasses.field(default_factory=NodeConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    concept: ConceptConfig = dataclasses.field(default_factory=ConceptConfig)

    def _check(self) -> None:
        if not self.cameras:
            raise ConfigError("cameras: at least one image topic is required")
        for topic in self.cameras:
            problem = topic_name_problem(topic)
            if problem is not None:
                raise ConfigError(f"cameras: {topic!r} is not a valid ROS topic name: {problem}")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"device={self.device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


# ----------------------------------------------------------------------------------------
# Flat (dotted) view: ROS parameters and --set flags
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SchemaEntry:
    """One leaf of the schema under its dotted name, e.g. ``prompts.threshold``."""

    name: str
    type: Any
    default: Any
    doc: str
    range: tuple[float, float] | None
    choices: tuple[str, ...] | None
    runtime: bool


def schema(cls: type = VlsamConfig, prefix: str = "") -> Iterator[SchemaEntry]:
    """Yields every leaf field of the schema, depth first, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            yield from schema(typ, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        yield SchemaEntry(prefix + f.name, typ, default, f.metadata.get("doc", ""),
                          f.metadata.get("range"), f.metadata.get("choices"),
                          bool(f.metadata.get("runtime", False)))


def to_flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Config -> ``{"vlm.model": ..., ...}`` (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(to_flat(value, prefix + f.name + "."))
        else:
            out[prefix + f.name] = list(value) if isinstance(value, tuple) else value
    return out


def from_flat(values: Mapping[str, Any], base: VlsamConfig | None = None) -> VlsamConfig:
    """Builds a validated config from dotted keys layered over ``base`` (or the defaults).

    Unknown keys raise ConfigError, so a typo never goes unnoticed.
    """
    known = {e.name for e in schema()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}")
    merged = to_flat(base or VlsamConfig())
    merged.update(values)
    return _build(VlsamConfig, merged, "")


def _build(cls: type, flat: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            kwargs[f.name] = _build(typ, flat, prefix + f.name + ".")
        else:
            kwargs[f.name] = flat[prefix + f.name]
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from None
