"""The ``memory`` follower: a SAM 2-family video tracker (transformers' Sam2VideoModel,
EdgeTamVideoModel or Sam3TrackerVideoModel) fed one frame at a time.

Per follow step, with the model's own inference session of the camera:

1. the frame is resized to the model's square input and normalised (the family's mean and
   std) and added to the session; the image encoder runs ONCE
   (``_prepare_vision_features``, cached for the step);
2. tracks that are new (started, revived or re-anchored) enter as mask prompts: their
   mask, moved from the previous frame by Lucas-Kanade flow (``motion.carry_mask``),
   becomes a conditioning frame (``_use_mask_as_output``; one call per new track, as the
   model's code takes one object there; only on frames where discovery added tracks); a
   re-anchored track keeps its memory;
3. every other track's image features are conditioned on its own memory bank (memory
   attention over its recent frames and object pointers, ``_prepare_memory_conditioned_
   features``, one call per track: the banks differ), then ONE batched mask-decoder call
   (``_single_frame_forward``) segments all of them;
4. the new masks are encoded into memory (``_encode_new_memory``: one batched call for
   the followed tracks with SAM 2 / SAM 3, one per track with EdgeTAM, whose perceiver
   resampler takes one object per call) and stored in the session;
5. the bank is bounded: per track the newest ``tracking.memory_conditioning_frames``
   conditioning frames and the frames the model can still attend to (``num_maskmem`` - 1
   recent frames, ``max_object_pointers_in_encoder`` object pointers); older outputs and
   every processed frame but the current one are dropped.

The session's private helpers are those of transformers 5.23 (pinned in requirements.txt).
Output masks: the low-resolution logits bilinearly resized to the image, threshold 0;
predicted IoU and object-presence logit from the decoder; no point prompts (P = 0).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vlsam_ros.core.config import ConfigError, TrackingConfig, VlsamConfig
from vlsam_ros.core.device import TORCH_DTYPES, resolve_device
from vlsam_ros.core.errors import ModelNotFoundError
from vlsam_ros.core.tracking.followers import FollowInput, FollowOutput, empty_output
from vlsam_ros.core.tracking.motion import FlowSettings, carry_mask

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF_MEAN, HALF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class VideoFamily:
    """One SAM 2-family video tracker in transformers.

    memory_batch_dim: the object axis of its stored memory features ((HW, B, C) for SAM 2
    and SAM 3, (B, N, C) after EdgeTAM's perceiver). mean/std: input normalisation of its
    processor. checkpoint: a published checkpoint, for error messages.
    batched_memory_encoder: whether its memory encoder takes several objects per call
    (transformers' EdgeTAM perceiver resampler takes one).
    """

    module: str
    model_class: str
    session_class: str
    memory_batch_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    checkpoint: str
    batched_memory_encoder: bool = True

    def classes(self) -> tuple[type, type]:
        module = importlib.import_module(self.module)
        return getattr(module, self.model_class), getattr(module, self.session_class)


_SAM2 = VideoFamily("transformers.models.sam2_video.modeling_sam2_video", "Sam2VideoModel",
                    "Sam2VideoInferenceSession", 1, IMAGENET_MEAN, IMAGENET_STD,
                    "facebook/sam2.1-hiera-tiny")
_EDGETAM = VideoFamily("transformers.models.edgetam_video.modeling_edgetam_video",
                       "EdgeTamVideoModel", "EdgeTamVideoInferenceSession", 0, IMAGENET_MEAN,
                       IMAGENET_STD, "yonigozlan/EdgeTAM-hf", batched_memory_encoder=False)
_SAM3 = VideoFamily("transformers.models.sam3_tracker_video.modeling_sam3_tracker_video",
                    "Sam3TrackerVideoModel", "Sam3TrackerVideoInferenceSession", 1, HALF_MEAN,
                    HALF_STD, "facebook/sam3")

VIDEO_FAMILIES: dict[str, VideoFamily] = {
    "sam2_video": _SAM2, "sam2": _SAM2,
    "edgetam_video": _EDGETAM, "edgetam": _EDGETAM,
    "sam3_tracker_video": _SAM3, "sam3_tracker": _SAM3, "sam3": _SAM3,
}
"""config.json ``model_type`` -> family (image checkpoints load into the video model)."""


@dataclasses.dataclass
class VideoTracker:
    """A loaded video tracker, shared by every camera's MemoryFollower."""

    model: torch.nn.Module
    family: VideoFamily
    device: torch.device
    dtype: torch.dtype

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)


def load_video_tracker(cfg: VlsamConfig) -> VideoTracker:
    """Loads ``tracking.memory_model`` (a local save_pretrained folder) on ``device`` in
    ``tracking.memory_dtype``. Raises ModelNotFoundError for a missing folder and
    ConfigError for a model that is not a SAM 2-family video tracker."""
    path = Path(cfg.tracking.memory_model).expanduser()
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"video tracker for tracking.mode=memory not found at '{path}' (no config.json). "
            f"Download a SAM 2-family checkpoint, e.g. `huggingface-cli download "
            f"{_SAM2.checkpoint} --local-dir models/sam2.1-hiera-tiny` (SAM 2), "
            f"{_EDGETAM.checkpoint} (EdgeTAM) or {_SAM3.checkpoint} (SAM 3), and set "
            "tracking.memory_model to its folder.")
    model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    family = VIDEO_FAMILIES.get(model_type)
    if family is None:
        raise ConfigError(f"tracking.memory_model={str(path)!r}: model_type {model_type!r} is "
                          f"not a SAM 2-family video tracker ({sorted(VIDEO_FAMILIES)})")
    device = resolve_device(cfg.device)
    dtype = TORCH_DTYPES[cfg.tracking.memory_dtype]
    model_class, _ = family.classes()
    model = model_class.from_pretrained(path, local_files_only=True, dtype=dtype)
    return VideoTracker(model.to(device).eval(), family, device, dtype)


@dataclasses.dataclass(frozen=True)
class _Decoded:
    """Decoder outputs of K tracks: pred_masks (K, 1, h, w) low-resolution logits,
    high_res_masks (K, 1, S, S), object_pointer (K, C), object_score_logits (K, 1),
    iou (K,) of the chosen mask."""

    pred_masks: torch.Tensor
    high_res_masks: torch.Tensor
    object_pointer: torch.Tensor
    object_score_logits: torch.Tensor
    iou: torch.Tensor


class MemoryFollower:
    """Follower over a VideoTracker (module docstring); one per camera (one session)."""

    def __init__(self, tracker: VideoTracker) -> None:
        self.video = tracker
        self._session: Any = None
        self._shape: tuple[int, int] | None = None
        self._active: set[int] = set()          # track ids with memory in the session
        self._next_frame = 0                    # session frame index of the next step
        self.last_logits: np.ndarray | None = None  # (K, 1, h, w) low-res logits, last step
        size = tracker.image_size
        self._mean = torch.tensor(tracker.family.mean, device=tracker.device).view(1, 3, 1, 1)
        self._std = torch.tensor(tracker.family.std, device=tracker.device).view(1, 3, 1, 1)
        self._size = size

    # ------------------------------------------------------------------ session

    def _new_session(self, height: int, width: int) -> None:
        _, session_class = self.video.family.classes()
        device = self.video.device
        self._session = session_class(video_height=height, video_width=width,
                                      inference_device=device, inference_state_device=device,
                                      video_storage_device=device, dtype=self.video.dtype,
                                      max_vision_features_cache_size=1)
        self._shape = (height, width)
        self._active.clear()
        self._next_frame = 0

    def forget(self, track_ids: Sequence[int]) -> None:
        """Drops the memory of ended tracks (their session slots stay, empty)."""
        if self._session is None:
            return
        for track_id in track_ids:
            if track_id in self._session._obj_id_to_idx:
                self._clear(self._session.obj_id_to_idx(track_id))
            self._active.discard(track_id)

    def _clear(self, obj_idx: int) -> None:
        session = self._session
        session.output_dict_per_obj[obj_idx] = {"cond_frame_outputs": {},
                                                "non_cond_frame_outputs": {}}
        session.frames_tracked_per_obj[obj_idx] = {}
        session.point_inputs_per_obj[obj_idx] = {}
        session.mask_inputs_per_obj[obj_idx] = {}

    def memory_frames(self) -> int:
        """Outputs held in the session over all tracks (for tests of the bound)."""
        if self._session is None:
            return 0
        return sum(len(d["cond_frame_outputs"]) + len(d["non_cond_frame_outputs"])
                   for d in self._session.output_dict_per_obj.values())

    # ------------------------------------------------------------------ step

    def _pixels(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> normalised float (1, 3, S, S) on the model's device."""
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.video.device)
        x = x.permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, size=(self._size, self._size), mode="bilinear",
                          align_corners=False, antialias=True)
        return ((x - self._mean) / self._std).to(self.video.dtype)

    def _mask_input(self, mask: np.ndarray) -> torch.Tensor:
        """bool (H, W) -> float (1, 1, S, S) binary, as the processor prepares mask inputs."""
        m = torch.from_numpy(mask.astype(np.float32)).to(self.video.device)[None, None]
        m = F.interpolate(m, size=(self._size, self._size), mode="bilinear",
                          align_corners=False, antialias=True)
        return (m >= 0.5).to(self.video.dtype)

    @torch.inference_mode()
    def follow(self, image: np.ndarray, grey: np.ndarray, prev_grey: np.ndarray | None,
               tracks: Sequence[FollowInput], cfg: TrackingConfig) -> FollowOutput:
        """See ``followers.Follower`` and the module docstring."""
        height, width = grey.shape
        if self._session is None or self._shape != (height, width):
            self._new_session(height, width)
        if not tracks:
            return empty_output(height, width)
        model, session = self.video.model, self._session
        frame_idx = session.add_new_frame(self._pixels(image), self._next_frame)
        self._next_frame += 1
        feats, pos = model._prepare_vision_features(session, frame_idx, 1)       # encoder
        sizes = model.backbone_feature_sizes
        high_res = [x.permute(1, 2, 0).view(x.size(1), x.size(2), *s)
                    for x, s in zip(feats[:-1], sizes[:-1])]
        settings = FlowSettings.from_config(cfg)
        fresh = [k for k, t in enumerate(tracks) if t.new or t.track_id not in self._active]
        tracked = [k for k in range(len(tracks)) if k not in fresh]
        low = [None] * len(tracks)
        iou = np.ones(len(tracks), np.float32)
        presence = np.zeros(len(tracks), np.float32)
        decoder_calls = 0
        if fresh:
            pix = feats[-1].permute(1, 2, 0).view(1, model.hidden_dim, *sizes[-1])
            for k in fresh:  # (transformers' mask-as-output path takes one object at a time)
                track = tracks[k]
                moved = (track.mask if prev_grey is None
                         else carry_mask(track.mask, [prev_grey, grey], settings))
                obj_idx = session.obj_id_to_idx(track.track_id)
                if track.track_id not in self._active:   # started or revived: no memory yet
                    self._clear(obj_idx)
                    self._active.add(track.track_id)
                else:                                    # re-anchored: one more prompt frame
                    session.output_dict_per_obj[obj_idx]["non_cond_frame_outputs"].pop(
                        frame_idx, None)
                out = model._use_mask_as_output(pix, high_res, self._mask_input(moved))
                decoder_calls += 1
                self._store([k], tracks, _Decoded(out.pred_masks[:, :1], out.high_res_masks[:, :1],
                                                  out.object_pointer.reshape(1, -1),
                                                  out.object_score_logits.reshape(1, 1),
                                                  out.iou_scores.reshape(1, -1)[:, 0]),
                            frame_idx, feats, conditioning=True)
                low[k] = out.pred_masks[0, :1]
                presence[k] = float(out.object_score_logits.reshape(-1)[0])
        if tracked:
            conditioned = [model._prepare_memory_conditioned_features(
                inference_session=session, frame_idx=frame_idx,
                obj_idx=session.obj_id_to_idx(tracks[k].track_id),
                is_initial_conditioning_frame=False, current_vision_features=feats[-1],
                current_vision_positional_embeddings=pos[-1],
                num_total_frames=session.num_frames, track_in_reverse_time=False,
                streaming=True) for k in tracked]                               # (1, C, h, w)
            count = len(tracked)
            decoded = self._decode(torch.cat(conditioned), high_res, count)       # decoder
            decoder_calls += 1
            self._store(tracked, tracks, decoded, frame_idx, feats, conditioning=False)
            for row, k in enumerate(tracked):
                low[k] = decoded.pred_masks[row]
                iou[k] = float(decoded.iou[row])
                presence[k] = float(decoded.object_score_logits[row, 0])
                session.frames_tracked_per_obj[session.obj_id_to_idx(
                    tracks[k].track_id)][frame_idx] = {"reverse": False}
        self._prune(frame_idx, cfg)
        logits = torch.stack([m.float() for m in low])                          # (K, 1, h, w)
        self.last_logits = logits.cpu().numpy()
        full = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        masks = (full[:, 0] > 0.0).cpu().numpy()
        flat = logits.reshape(len(tracks), -1)
        high = (flat > cfg.stability_offset).sum(dim=1)
        low_area = (flat > -cfg.stability_offset).sum(dim=1)
        stability = torch.where(low_area > 0, high / low_area.clamp(min=1), 0.0)
        empty = [np.zeros((0, 2), np.float32) for _ in tracks]
        return FollowOutput(masks, iou, stability.cpu().numpy().astype(np.float32), presence,
                            empty, [np.zeros(0, np.int8) for _ in tracks], 1, decoder_calls)

    def _decode(self, conditioned: torch.Tensor, high_res: Sequence[torch.Tensor],
                count: int) -> "_Decoded":
        """ONE mask-decoder call for ``count`` tracks whose memory-conditioned features are
        ``conditioned`` (count, C, h, w): the steps of the model's ``_single_frame_forward``
        without prompts, with the best-mask choice and the object pointer done per track
        (the model's own code there assumes one track per call)."""
        model = self.video.model
        multimask = model._use_multimask(False, None)
        dtype = conditioned.dtype
        points = torch.zeros(count, 1, 1, 2, dtype=dtype, device=conditioned.device)
        labels = -torch.ones(count, 1, 1, dtype=torch.int32, device=conditioned.device)
        sparse, dense = model.prompt_encoder(input_points=points, input_labels=labels,
                                             input_boxes=None, input_masks=None)
        image_pe = model.get_image_wide_positional_embeddings().repeat(count, 1, 1, 1)
        low_res, iou, tokens, object_scores = model.mask_decoder(
            image_embeddings=conditioned, image_positional_embeddings=image_pe,
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=multimask,
            high_resolution_features=[h.expand(count, -1, -1, -1) for h in high_res])
        # low_res (K, 1, M, h, w), iou (K, 1, M), tokens (K, 1, M, C), scores (K, 1)
        object_scores = object_scores.reshape(count, 1)
        appearing = object_scores > 0
        no_object = importlib.import_module(self.video.family.module).NO_OBJ_SCORE
        low_res = torch.where(appearing[:, :, None, None, None], low_res, no_object)
        rows = torch.arange(count, device=low_res.device)
        best = iou[:, 0].argmax(dim=-1) if multimask else torch.zeros_like(rows)
        chosen = low_res[rows, 0, best][:, None]                                  # (K, 1, h, w)
        size = (self._size, self._size)
        high = F.interpolate(chosen.float(), size=size, mode="bilinear",
                             align_corners=False).to(chosen.dtype)                # (K, 1, S, S)
        token = tokens[rows, 0, best] if tokens.size(2) > 1 else tokens[:, 0, 0]  # (K, C)
        pointer = model.object_pointer_proj(token)
        weight = appearing.to(pointer.dtype)
        pointer = weight * pointer + (1 - weight) * model.no_object_pointer
        return _Decoded(chosen, high, pointer, object_scores, iou[rows, 0, best])

    def _store(self, rows: Sequence[int], tracks: Sequence[FollowInput], out: "_Decoded",
               frame_idx: int, feats: Sequence[torch.Tensor], conditioning: bool) -> None:
        """Encodes the new masks into memory (one batched call) and stores each track's
        output in the session, as the model's own forward would."""
        model, session = self.video.model, self._session
        count = len(rows)
        axis = self.video.family.memory_batch_dim
        groups = ([slice(0, count)] if self.video.family.batched_memory_encoder
                  else [slice(r, r + 1) for r in range(count)])
        encoded = [model._encode_new_memory(
            current_vision_feats=feats[-1].expand(-1, g.stop - g.start, -1),
            pred_masks_high_res=out.high_res_masks[g],
            object_score_logits=out.object_score_logits[g].reshape(-1, 1, 1),
            is_mask_from_pts=conditioning) for g in groups]
        memory = torch.cat([m for m, _ in encoded], dim=axis)
        memory_pos = torch.cat([p for _, p in encoded], dim=axis)
        for row, k in enumerate(rows):
            obj_idx = session.obj_id_to_idx(tracks[k].track_id)
            session.store_output(obj_idx, frame_idx, output_value={
                "pred_masks": out.pred_masks[row:row + 1],
                "object_pointer": out.object_pointer[row:row + 1],
                "object_score_logits": out.object_score_logits[row:row + 1].reshape(1, 1, 1),
                "maskmem_features": memory.narrow(axis, row, 1),
                "maskmem_pos_enc": memory_pos.narrow(axis, row, 1),
            }, is_conditioning_frame=conditioning)

    def _prune(self, frame_idx: int, cfg: TrackingConfig) -> None:
        """Bounds the memory bank (module docstring, 5)."""
        session, config = self._session, self.video.model.config
        keep_from = frame_idx - max(self.video.model.num_maskmem - 1,
                                    config.max_object_pointers_in_encoder - 1)
        for obj_idx, outputs in session.output_dict_per_obj.items():
            cond = outputs["cond_frame_outputs"]
            for stamp in sorted(cond)[:-cfg.memory_conditioning_frames]:
                del cond[stamp]
            recent = outputs["non_cond_frame_outputs"]
            for stamp in [s for s in recent if s < keep_from]:
                del recent[stamp]
            tracked = session.frames_tracked_per_obj.get(obj_idx, {})
            for stamp in [s for s in tracked if s < keep_from]:
                del tracked[stamp]
        for stamp in [s for s in session.processed_frames if s != frame_idx]:
            del session.processed_frames[stamp]
