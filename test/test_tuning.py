"""vlsam-tune: the search space as data, the contrastive reward by hand, the seeded and
resumable random search finding a planted optimum, the CLIP scorer (tiny random CLIP saved
and loaded as a real checkpoint), and the command end to end: its parameter file loads in
the node through the node's own parameter path."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from oracle import OracleSegmenter, PlantedVlm, make_scene
from vlsam_ros.core.config import ConfigError, from_flat, schema, to_flat
from vlsam_ros.core.config_files import load_config
from vlsam_ros.core.errors import ModelNotFoundError
from vlsam_ros.core.pipeline import Pipeline
from vlsam_ros.offline.tuning.frames import Frame, frames_from_folder
from vlsam_ros.offline.tuning.reward import Masked, detection_rewards, frame_reward
from vlsam_ros.offline.tuning.search import CheckpointError, random_search, tune
from vlsam_ros.offline.tuning.search_space import (DEFAULT_SPACE, WHEN_AVAILABLE,
                                                   default_space, load_space, parse_space)

Q = "list the objects"


# ------------------------------------------------------------------------ search space

def test_default_space_is_valid_and_round_trips_through_yaml(tmp_path):
    space = default_space()
    known = {e.name for e in schema()}
    assert space.keys == tuple(d["key"] for d in DEFAULT_SPACE
                               if not d.get(WHEN_AVAILABLE) or d["key"] in known)
    assert {"prompts.threshold", "prompts.refinement_rounds", "attention.head_weighting",
            "attention.use_flow", "prompts.subpixel_peak", "prompts.positive_points"} \
        <= set(space.keys)
    file = tmp_path / "space.yaml"
    file.write_text(space.to_yaml())
    assert load_space(file) == space


def test_default_entries_of_options_not_yet_in_the_schema_wait_for_them(monkeypatch):
    import vlsam_ros.offline.tuning.search_space as ss

    monkeypatch.setattr(ss, "DEFAULT_SPACE", (
        {"key": "prompts.threshold", "uniform": [0.2, 0.8], WHEN_AVAILABLE: True},
        {"key": "prompts.not_yet_an_option", "choice": [1, 2], WHEN_AVAILABLE: True}))
    assert ss.default_space().keys == ("prompts.threshold",)


@pytest.mark.parametrize("entry,message", [
    ({"key": "prompts.nope", "uniform": [0, 1]}, "not a configuration key"),
    ({"key": "vlm.model", "choice": ["a", "b"]}, "not a run-time field"),
    ({"key": "prompts.threshold", "uniform": [0.5, 1.5]}, "must lie in"),
    ({"key": "prompts.threshold", "uniform": [0.6, 0.2]}, "must be below"),
    ({"key": "prompts.threshold", "integers": [0, 1]}, "field of type int"),
    ({"key": "attention.head_weighting", "choice": ["meanmax", "max"]}, "must be one of"),
    ({"key": "prompts.threshold", "uniform": [0.2, 0.8], "choice": [0.3]}, "exactly one"),
    ({"key": "prompts.threshold", "uniform": [0.2, 0.8], WHEN_AVAILABLE: True}, "exactly one"),
])
def test_invalid_space_entries_are_named(entry, message):
    with pytest.raises(ConfigError, match=message):
        parse_space([entry], "my space")


def test_trial_parameters_depend_only_on_seed_and_index():
    space = default_space()
    assert space.trial_params(3, 7) == space.trial_params(3, 7)
    assert space.trial_params(3, 7) != space.trial_params(4, 7)
    params = [space.trial_params(0, i) for i in range(50)]
    assert {p["prompts.subpixel_peak"] for p in params} == {"off", "quadratic", "gaussian"}
    assert all(0.2 <= p["prompts.threshold"] < 0.8 for p in params)
    assert {p["prompts.refinement_rounds"] for p in params} == {0, 1, 2, 3}
    for p in params[:5]:
        from_flat(p)                                   # every trial is a valid config


# ------------------------------------------------------------------ reward, by hand

class ColourFraction:
    """Synthetic scorer: s(image, text) = fraction of the image's pixels that are pure red
    (the text is ignored)."""

    name = "red-fraction"

    def similarity(self, images, texts):
        assert len(images) == len(texts)
        return np.array([np.all(im == (255, 0, 0), axis=-1).mean() for im in images])


def test_contrastive_reward_by_hand():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, :2] = (255, 0, 0)                         # left half red
    left = np.zeros((4, 4), bool)
    left[:, :2] = True
    first_col = np.zeros((4, 4), bool)
    first_col[:, 0] = True
    dets = [Masked("red", left), Masked("red", first_col), Masked("red", ~left)]
    # kept/removed red fractions: 8/16 - 0 ; 4/16 - 4/16 ; 0 - 8/16
    r = detection_rewards(image, dets, ColourFraction())
    np.testing.assert_allclose(r, [0.5, 0.0, -0.5])
    assert frame_reward(image, dets[:2], ColourFraction()) == pytest.approx(0.5)
    assert frame_reward(image, [], ColourFraction()) == 0.0


# ------------------------------------------------- random search: planted optimum, resume

SMALL_SPACE = [{"key": "prompts.threshold", "uniform": [0.0, 1.0]},
               {"key": "prompts.refinement_rounds", "integers": [0, 3]},
               {"key": "attention.head_weighting", "choice": ["meanmax", "mean"]}]


def planted(params):
    """Synthetic reward with its optimum planted at threshold 0.37, 2 rounds, 'mean'."""
    return (-(params["prompts.threshold"] - 0.37) ** 2
            - 0.1 * abs(params["prompts.refinement_rounds"] - 2)
            - 0.2 * (params["attention.head_weighting"] != "mean"))


def test_random_search_finds_the_planted_optimum():
    space = parse_space(SMALL_SPACE)
    result = random_search(space, planted, trials=150, seed=0, progress=False)
    best = result.best.params
    assert best["prompts.refinement_rounds"] == 2
    assert best["attention.head_weighting"] == "mean"
    assert best["prompts.threshold"] == pytest.approx(0.37, abs=0.03)
    assert result.best.reward == max(t.reward for t in result.trials)
    assert [t.index for t in result.trials] == list(range(150))


def test_an_interrupted_search_resumes_to_the_same_result(tmp_path):
    space = parse_space(SMALL_SPACE)
    whole = random_search(space, planted, trials=40, seed=5, progress=False)
    ckpt = tmp_path / "trials.jsonl"
    calls = []

    def interrupted(params):
        calls.append(params)
        if len(calls) == 13:
            raise KeyboardInterrupt
        return planted(params)

    with pytest.raises(KeyboardInterrupt):
        random_search(space, interrupted, trials=40, seed=5, checkpoint=ckpt, progress=False)
    assert len(ckpt.read_text().splitlines()) == 1 + 12
    with open(ckpt, "a") as f:                         # a crash mid-write: a cut last line
        f.write('{"index": 12, "par')
    seen = []
    resumed = random_search(space, lambda p: seen.append(p) or planted(p), trials=40, seed=5,
                            checkpoint=ckpt, progress=False)
    assert resumed.resumed == 12 and len(seen) == 28
    assert [(t.index, t.params, t.reward) for t in resumed.trials] == \
        [(t.index, t.params, t.reward) for t in whole.trials]
    assert resumed.best.index == whole.best.index
    again = random_search(space, lambda p: pytest.fail("all trials are done"), trials=40,
                          seed=5, checkpoint=ckpt, progress=False)
    assert again.resumed == 40 and again.best == resumed.best
    assert len(ckpt.read_text().splitlines()) == 1 + 40
    with pytest.raises(CheckpointError, match="seed"):
        random_search(space, planted, trials=40, seed=6, checkpoint=ckpt, progress=False)


# -------------------------------------------- the tuning loop with planted maps, an oracle

class GroundTruthScorer:
    """Synthetic scorer that knows the scene: s(image, "<name>") = fraction of the name's
    ground-truth pixels still visible (not blacked out) minus the fraction of the other
    pixels still visible. Then r_d = 2 s(I * M_d) (reward.py)."""

    name = "ground-truth"

    def __init__(self, scene):
        self.scene = scene

    def similarity(self, images, texts):
        out = []
        for image, text in zip(images, texts):
            gt = np.zeros(image.shape[:2], bool)
            for o in self.scene.objects:
                if o.name == text:
                    gt |= o.mask
            visible = np.any(image != 0, axis=-1)
            out.append(visible[gt].mean() - visible[~gt].mean())
        return np.array(out)


@pytest.fixture
def street():
    return make_scene(257, 321, [
        ("cone", (20, 30, 84, 94)), ("cone", (180, 140, 244, 204)), ("car", (120, 20, 200, 80))])


def _pipeline(scene, **values):
    base = {"device": "cpu", "vlm.question": Q, "prompts.refinement_rounds": 0,
            "ensemble.num_questions": 1, "ensemble.question_source": "config"}
    base.update(values)
    return Pipeline(from_flat(base), PlantedVlm(scene), OracleSegmenter())


def test_tune_finds_the_planted_optimum_of_rounds_and_threshold(street):
    """Round 2 (masked attention) finds the second cone: reward 2 (car) + 1 + 1 (each cone
    is half of the name's pixels) = 4, against 3 with fewer rounds. But under threshold 0.5
    round 2 also prompts the ramp the coarse car map leaves around the found car, i.e. the
    background, which the reward penalises. Optimum: 2 rounds and threshold >= 0.5."""
    pipe = _pipeline(street)
    base = pipe.cfg
    space = parse_space([{"key": "prompts.refinement_rounds", "integers": [0, 2]},
                         {"key": "prompts.threshold", "uniform": [0.3, 0.7]}])
    result, best = tune(pipe, [Frame("street", street.image)], GroundTruthScorer(street),
                        space, trials=10, seed=3, template="{}", progress=False)
    by_kind: dict[str, list[float]] = {"fewer rounds": [], "2, low": [], "2, high": []}
    for t in result.trials:
        thr, rounds = t.params["prompts.threshold"], t.params["prompts.refinement_rounds"]
        if rounds < 2:
            by_kind["fewer rounds"].append(t.reward)
        elif thr >= 0.5:
            by_kind["2, high"].append(t.reward)
        elif thr <= 0.4:
            by_kind["2, low"].append(t.reward)
    assert all(by_kind.values()), by_kind                  # every case was tried
    assert by_kind["fewer rounds"] == pytest.approx([3.0] * len(by_kind["fewer rounds"]))
    assert by_kind["2, high"] == pytest.approx([4.0] * len(by_kind["2, high"]))
    assert max(by_kind["2, low"]) < 3.0
    assert best.prompts.refinement_rounds == 2 and best.prompts.threshold >= 0.5
    assert result.best.reward == pytest.approx(4.0)
    assert pipe.cfg == base                           # the pipeline is left as it was


def test_frames_from_a_bag_and_a_folder(tmp_path, street):
    from test_replay import TOPIC, frame_rgb, write_image_bag

    from vlsam_ros.offline.tuning.frames import FramesError, frames_from_bag

    write_image_bag(tmp_path / "bag", 5)
    frames = frames_from_bag(tmp_path / "bag", [TOPIC], every=2)
    assert [f.source for f in frames] == [f"{TOPIC}#0", f"{TOPIC}#2", f"{TOPIC}#4"]
    np.testing.assert_array_equal(frames[1].image, frame_rgb(2))
    assert len(frames_from_bag(tmp_path / "bag", [TOPIC], max_frames=2)) == 2
    with pytest.raises(FramesError, match="not in the bag; its image topics"):
        frames_from_bag(tmp_path / "bag", ["/other/image_raw"])
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("b.png", "a.png", "c.jpg"):
        cv2.imwrite(str(folder / name), street.image)
    (folder / "notes.txt").write_text("not an image")
    assert [f.source for f in frames_from_folder(folder, every=2)] == ["a.png", "c.jpg"]
    (folder / "d.png").write_text("broken")
    with pytest.raises(FramesError, match="d.png: cannot be decoded"):
        frames_from_folder(folder)


def test_trials_with_the_same_vlm_settings_reuse_its_answers(street):
    """Same rewards with and without the cache; with it, the VLM runs once per distinct
    attention setting (2 here), not once per trial."""
    space = parse_space([{"key": "prompts.refinement_rounds", "integers": [0, 2]},
                         {"key": "attention.use_flow", "choice": [True, False]}])
    frames = [Frame("street", street.image)]
    runs = {}
    for cache in (0, 2**30):
        pipe = _pipeline(street)
        vlm = pipe.vlm
        result, _ = tune(pipe, frames, GroundTruthScorer(street), space, trials=6, seed=1,
                         template="{}", progress=False, vlm_cache_bytes=cache)
        runs[cache] = (len(vlm.describe_batches), [t.reward for t in result.trials])
        assert pipe.vlm is vlm
    assert runs[0][0] == 6 and runs[2**30][0] == 2
    assert runs[0][1] == runs[2**30][1]


def test_vlm_cache_evicts_the_least_recently_used_and_freezes_maps(street):
    from vlsam_ros.core.config import AttentionConfig, VlmConfig
    from vlsam_ros.offline.tuning.vlm_cache import CachedVlm

    vlm = PlantedVlm(street)
    one_answer = 3 * street.image.shape[0] * street.image.shape[1] * 4     # 3 float32 maps
    cache = CachedVlm(vlm, max_bytes=one_answer)
    a, b = AttentionConfig(), AttentionConfig(use_flow=False)
    first = cache.describe([street.image], [Q], VlmConfig(), a)
    with pytest.raises(ValueError, match="read-only"):
        first[0].attention_maps[0, 0, 0] = 1.0
    assert cache.describe([street.image], [Q], VlmConfig(), a)[0] is first[0]
    cache.describe([street.image], [Q], VlmConfig(), b)                   # evicts a
    cache.describe([street.image], [Q], VlmConfig(), a)
    assert (cache.hits, cache.misses, len(vlm.describe_batches)) == (1, 3, 3)
    assert cache.generate_text("x", VlmConfig()) == vlm.rephrasings       # passed through


# ------------------------------------------------------------------------- CLIP scorer

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from vlsam_ros.testing.tiny_clip import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=0)


def test_clip_scorer_is_the_cosine_of_clip_embeddings(tiny_clip):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from vlsam_ros.offline.tuning.clip_scorer import ClipScorer

    scorer = ClipScorer.load(tiny_clip, batch_size=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24 + 8 * i, 40, 3), dtype=np.uint8) for i in range(3)]
    texts = ["a photo of a cone.", "a photo of a car.", "a photo of a cone."]
    got = scorer.similarity(images, texts)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    proc = CLIPProcessor.from_pretrained(tiny_clip)
    with torch.inference_mode():
        out = model(**proc(text=texts, images=images, return_tensors="pt", padding=True))
    scale = model.logit_scale.detach().exp().double()
    expected = torch.diagonal(out.logits_per_image).double() / scale
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    assert got.shape == (3,) and np.all(np.abs(got) <= 1.0)


def test_clip_on_a_missing_cuda_device_is_the_projects_device_error(tiny_clip):
    import torch

    from vlsam_ros.core.errors import DeviceUnavailableError
    from vlsam_ros.offline.tuning.clip_scorer import ClipScorer

    device = f"cuda:{torch.cuda.device_count()}"  # one past the last device, if any
    with pytest.raises(DeviceUnavailableError):
        ClipScorer.load(tiny_clip, device=device)


def test_missing_clip_folder_says_what_to_get(tmp_path):
    from vlsam_ros.offline.tuning.clip_scorer import ClipScorer

    with pytest.raises(ModelNotFoundError, match="hf download openai/clip-vit-base-patch32"):
        ClipScorer.load(tmp_path / "no-clip")


# ------------------------------------------------------------------ the command, end to end

def _image_folder(scene, folder: Path) -> Path:
    folder.mkdir()
    cv2.imwrite(str(folder / "000.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    return folder


def _planted_factory(scene):
    return lambda cfg: Pipeline(cfg, PlantedVlm(scene), OracleSegmenter())


def _args(tmp_path, images, clip, *extra):
    """The command's arguments; the space (a file, as a user gives it) holds what the
    planted VLM double supports."""
    space = tmp_path / "space.yaml"
    if not space.exists():
        space.write_text(parse_space(SMALL_SPACE + [
            {"key": "prompts.subpixel_peak", "choice": ["off", "gaussian"]}]).to_yaml())
    return [str(tmp_path / "tuned.yaml"), "--images", str(images), "--clip", str(clip),
            "--space", str(space),
            "--set", "device=cpu", "--set", f"vlm.question={Q}", "--set",
            "ensemble.question_source=config", "--trials", "3", "--no-progress", *extra]


def test_vlsam_tune_writes_a_parameter_file_the_node_loads(street, tiny_clip, tmp_path,
                                                            capsys):
    from vlsam_ros.offline.tuning.tool import main

    images = _image_folder(street, tmp_path / "frames")
    assert frames_from_folder(images)[0].image.tobytes() == street.image.tobytes()
    assert main(_args(tmp_path, images, tiny_clip), pipeline_factory=_planted_factory(street)) == 0
    out = tmp_path / "tuned.yaml"
    assert "wrote" in capsys.readouterr().out
    lines = (tmp_path / "tuned.yaml.trials.jsonl").read_text().splitlines()
    trials = [json.loads(line) for line in lines[1:]]
    best = max(trials, key=lambda t: (t["reward"], -t["index"]))
    expected = from_flat(best["params"], load_config(None, {"device": "cpu",
                                                           "vlm.question": Q,
                                                           "ensemble.question_source":
                                                               "config"}))
    # vlsam-node-runner's path (params file -> from_flat) ...
    assert load_config(out) == expected
    # ... and ROS's own: rclpy parses the file into the node's declared parameters.
    pytest.importorskip("rclpy")
    import rclpy
    from rclpy.context import Context

    from vlsam_ros.ros.node import VlsamNode
    from vlsam_ros.ros.parameters import config_from_parameters

    context = Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(out)])
    try:
        node = VlsamNode("vlsam", context=context)
        assert to_flat(config_from_parameters(node)) == to_flat(expected)
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    # Run again: the output exists -> a one-line user error, nothing rerun.
    assert main(_args(tmp_path, images, tiny_clip),
                pipeline_factory=_planted_factory(street)) == 2
    assert "exists already" in capsys.readouterr().err


def test_vlsam_tune_interrupted_then_resumed(street, tmp_path, capsys):
    from vlsam_ros.offline.tuning.tool import main

    images = _image_folder(street, tmp_path / "frames")
    clip = tmp_path / "clip"
    clip.mkdir()
    runs = []

    def flaky_factory(cfg):
        pipe = Pipeline(cfg, PlantedVlm(street), OracleSegmenter())
        run = pipe.run

        def counting(image, cancel=None):
            runs.append(1)
            if len(runs) == 3:
                raise KeyboardInterrupt
            return run(image, cancel)

        pipe.run = counting
        return pipe

    scorer = lambda folder, device, batch: GroundTruthScorer(street)   # noqa: E731
    args = _args(tmp_path, images, clip, "--trials", "4", "--text-template", "{}")
    assert main(args, pipeline_factory=flaky_factory, scorer_factory=scorer) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "run the same command again to resume" in err
    assert not (tmp_path / "tuned.yaml").exists()
    assert main(args, pipeline_factory=flaky_factory, scorer_factory=scorer) == 0
    assert "2 resumed" in capsys.readouterr().out
    assert len(runs) == 3 + 2


@pytest.mark.parametrize("extra,message", [
    (["--clip", "{tmp}/nowhere"], "--clip {tmp}/nowhere: folder not found"),
    (["--images", "{tmp}/nowhere"], "--images {tmp}/nowhere: folder not found"),
    (["--set", "prompts.threshold=2"], "threshold=2.0: must lie in"),
    (["--space", "{tmp}/bad_space.yaml"], "not a run-time field"),
])
def test_vlsam_tune_user_errors_are_one_line(street, tmp_path, capsys, extra, message):
    from vlsam_ros.offline.tuning.tool import main

    images = _image_folder(street, tmp_path / "frames")
    clip = tmp_path / "clip"
    clip.mkdir()
    (tmp_path / "bad_space.yaml").write_text("- {key: vlm.model, choice: [a, b]}\n")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    code = main(_args(tmp_path, images, clip, *extra),
                pipeline_factory=lambda cfg: pytest.fail("models loaded before the checks"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("vlsam-tune: error: ") and message.replace("{tmp}", str(tmp_path)) in err


def test_vlsam_tune_prints_its_space(capsys):
    from vlsam_ros.offline.tuning.tool import main

    assert main(["--print-space"]) == 0
    import yaml

    assert parse_space(yaml.safe_load(capsys.readouterr().out)) == default_space()


def test_vlsam_tune_as_a_user_runs_it(tmp_path):
    """A subprocess, as from the shell: one line on stderr, exit 2, nothing written; and
    every option has help."""
    import subprocess
    import sys

    from vlsam_ros.offline.tuning.tool import build_parser
    from test_tool_errors import options_without_help

    out = tmp_path / "tuned.yaml"
    proc = subprocess.run([sys.executable, "-m", "vlsam_ros.offline.tuning.tool", str(out),
                           "--images", str(tmp_path), "--clip", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"vlsam-tune: error: --clip {tmp_path / 'none'}: folder not found\n"
    assert not out.exists()
    assert options_without_help(build_parser()) == []
