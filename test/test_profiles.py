"""Named profiles (config/profiles/*.yaml): loading, layering order, lookup and errors, and
their plumbing through every tool that takes a configuration and the launch file.

Layering everywhere: schema defaults -> params file -> profile overlay -> --set overrides.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from vlsam_ros.core.config import ConfigError, VlsamConfig, to_flat
from vlsam_ros.core.config_files import (available_profiles, layered_parameters, load_config,
                                         parameters_from_yaml, resolve_profile)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = REPO_ROOT / "config" / "vlsam.yaml"
PROFILE_DIR = REPO_ROOT / "config" / "profiles"

# What each profile is (the definition): dotted key -> value after layering over
# config/vlsam.yaml.
EXPECTED = {
    "paper": {"ensemble.tiles": True, "ensemble.num_questions": 10, "vlm.do_sample": True,
              "vlm.temperature": 0.8, "vlm.top_p": 0.1, "prompts.refinement_rounds": 2,
              "vlm.family": "llava", "vlm.model": "llava-hf/llava-1.5-7b-hf",
              "sam.type": "vit_h", "device": "cuda"},
    "edge": {"vlm.family": "idefics3", "vlm.model": "HuggingFaceTB/SmolVLM-256M-Instruct",
             "sam.type": "vit_t", "sam.checkpoint": "models/mobile_sam.pt",
             "ensemble.tiles": False, "ensemble.num_questions": 1, "vlm.do_sample": False,
             "device": "cuda"},
    "concept": {"concept.enabled": True, "concept.model": "models/sam3",
                "sam.backend": "sam2", "sam.model": "models/sam2.1-hiera-tiny",
                "concept.min_coverage": 0.2, "device": "cuda"},
    "cpu": {"vlm.family": "idefics3", "vlm.model": "HuggingFaceTB/SmolVLM-256M-Instruct",
            "sam.type": "vit_t", "device": "cpu", "vlm.dtype": "float32",
            "ensemble.tiles": False, "ensemble.num_questions": 1},
}


def _write_params(path: Path, body: str, key: str = "vlsam") -> Path:
    lines = [f"{key}:", "  ros__parameters:"] + ["    " + line for line in body.splitlines()]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- the profiles themselves

def test_the_shipped_profiles_are_the_named_ones():
    assert set(available_profiles()) == set(EXPECTED)
    assert {p.name for p in PROFILE_DIR.glob("*.yaml")} == {f"{n}.yaml" for n in EXPECTED}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_profile_loads_validates_and_is_what_it_says(name):
    cfg = load_config(DEFAULT_PARAMS, profile=name)
    assert isinstance(cfg, VlsamConfig)
    flat = to_flat(cfg)
    for key, value in EXPECTED[name].items():
        assert flat[key] == value, key
    # Over the schema defaults alone (no params file) the profile gives the same config:
    # config/vlsam.yaml holds the defaults.
    assert load_config(None, profile=name) == cfg


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profiles_are_small_overlays_of_schema_keys(name):
    """Only keys that define the profile, each one a schema key, none of them the node's
    ROS plumbing (cameras, node.*): a profile never changes which topics are served."""
    overlay = parameters_from_yaml(PROFILE_DIR / f"{name}.yaml")
    assert 0 < len(overlay) <= 12
    assert not any(k == "cameras" or k.startswith("node.") for k in overlay)
    load_config(None, overlay)  # every key is known and valid


def test_the_fast_default_differs_from_paper_in_the_ensembles():
    fast, paper = load_config(DEFAULT_PARAMS), load_config(DEFAULT_PARAMS, profile="paper")
    assert (fast.ensemble.tiles, fast.ensemble.num_questions) == (False, 1)
    assert (paper.ensemble.tiles, paper.ensemble.num_questions) == (True, 10)
    assert fast.prompts.refinement_rounds == paper.prompts.refinement_rounds == 2


# ---------------------------------------------------------------- layering order

def test_layering_order_defaults_params_profile_set(tmp_path):
    params = _write_params(tmp_path / "params.yaml", "\n".join([
        "prompts:", "  threshold: 0.3",          # only in the params file: survives
        "ensemble:", "  num_questions: 4",       # profile overrides it
        "  nms_iou: 0.6",                        # --set overrides it
    ]))
    overlay = _write_params(tmp_path / "overlay.yaml", "\n".join([
        "ensemble:", "  num_questions: 6", "  nms_iou: 0.7", "  tiles: true",
    ]), key="/**")
    cfg = load_config(params, {"ensemble.nms_iou": "0.8"}, profile=overlay)
    assert cfg.prompts.threshold == 0.3                       # params file over defaults
    assert cfg.ensemble.num_questions == 6                    # profile over params file
    assert cfg.ensemble.tiles is True
    assert cfg.ensemble.nms_iou == 0.8                        # --set over profile
    assert cfg.ensemble.max_detections == 100                 # schema default
    assert load_config(params, profile=overlay).ensemble.nms_iou == 0.7
    assert load_config(params).ensemble.num_questions == 4
    # The unvalidated layered view is the same order.
    flat = layered_parameters(params, overlay, {"ensemble.nms_iou": "0.8"})
    assert (flat["ensemble.num_questions"], flat["ensemble.nms_iou"]) == (6, "0.8")


def test_a_profile_written_for_the_node_name_applies_too(tmp_path):
    overlay = _write_params(tmp_path / "mine.yaml", "ensemble:\n  tiles: true", key="vlsam")
    assert load_config(None, profile=str(overlay)).ensemble.tiles is True


# ---------------------------------------------------------------- lookup and errors

def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT_PARAMS, profile="papr")
    message = str(err.value)
    assert "unknown profile 'papr'" in message
    assert "concept, cpu, edge, paper" in message


def test_profile_by_path_and_missing_path(tmp_path):
    assert resolve_profile(str(PROFILE_DIR / "edge.yaml")) == PROFILE_DIR / "edge.yaml"
    assert resolve_profile(PROFILE_DIR / "edge.yaml") == PROFILE_DIR / "edge.yaml"
    with pytest.raises(ConfigError, match="profile file not found"):
        resolve_profile(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="empty"):
        resolve_profile(" ")


def test_a_bad_profile_value_names_the_field(tmp_path):
    overlay = _write_params(tmp_path / "bad.yaml", "ensemble:\n  num_questions: 99", key="/**")
    with pytest.raises(ConfigError, match="num_questions"):
        load_config(None, profile=overlay)
    unknown = _write_params(tmp_path / "typo.yaml", "ensemble:\n  tile: true", key="/**")
    with pytest.raises(ConfigError, match="ensemble.tile"):
        load_config(None, profile=unknown)


def test_profiles_are_found_in_an_installed_package_share(tmp_path, monkeypatch):
    """A sourced ROS workspace: <prefix>/share/vlsam_ros/config/profiles via
    AMENT_PREFIX_PATH. The source tree's profiles come first for the same name."""
    share = tmp_path / "install" / "share" / "vlsam_ros" / "config" / "profiles"
    share.mkdir(parents=True)
    _write_params(share / "site.yaml", "prompts:\n  threshold: 0.25", key="/**")
    _write_params(share / "paper.yaml", "prompts:\n  threshold: 0.9", key="/**")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "install"))
    assert resolve_profile("site") == share / "site.yaml"
    assert load_config(None, profile="site").prompts.threshold == 0.25
    assert resolve_profile("paper") == PROFILE_DIR / "paper.yaml"
    assert "site" in available_profiles()


def test_colcon_and_pip_install_the_profiles():
    """CMakeLists.txt installs config/ (profiles/ included) into share/vlsam_ros; setup.py
    lists every profile as data files for the same place."""
    import runpy

    import setuptools

    cmake = (REPO_ROOT / "CMakeLists.txt").read_text()
    assert "install(DIRECTORY launch config DESTINATION share/${PROJECT_NAME})" in cmake
    captured = {}
    original = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)
    try:
        runpy.run_path(str(REPO_ROOT / "setup.py"))
    finally:
        setuptools.setup = original
    data = dict(captured["data_files"])
    assert sorted(data["share/vlsam_ros/config/profiles"]) == sorted(
        f"config/profiles/{n}.yaml" for n in EXPECTED)


# ---------------------------------------------------------------- tools

def test_write_params_yaml_with_a_profile(tmp_path):
    from vlsam_ros.tools.write_params_yaml import main

    out = tmp_path / "paper_full.yaml"
    assert main([str(out), "--profile", "paper", "--set", "ensemble.num_questions=3"]) == 0
    written = load_config(out)
    expected = load_config(None, {"ensemble.num_questions": 3}, profile="paper")
    assert written == expected
    assert written.ensemble.tiles is True and written.ensemble.num_questions == 3


def test_runner_rejects_an_unknown_profile_before_starting_ros(capsys):
    from vlsam_ros.ros.run_node import main

    assert main(["--profile", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown profile 'nope'" in err and "concept, cpu, edge, paper" in err


def test_runner_layers_params_file_profile_and_set(tmp_path, monkeypatch):
    """The node the runner starts gets params file -> profile -> --set (models are never
    loaded: the node class and the spin loop are replaced)."""
    pytest.importorskip("rclpy")
    import rclpy

    import vlsam_ros.ros.node
    import vlsam_ros.ros.spin
    from vlsam_ros.ros.run_node import main

    started = {}

    class FakeNode:
        def __init__(self, name, parameter_overrides):
            started["name"] = name
            started["params"] = {p.name: p.value for p in parameter_overrides}

        def get_logger(self):
            return types.SimpleNamespace(info=lambda *_: None)

    def fake_spin(node, *, activate):
        rclpy.try_shutdown()
        return 0

    monkeypatch.setattr(vlsam_ros.ros.node, "VlsamNode", FakeNode)
    monkeypatch.setattr(vlsam_ros.ros.spin, "spin_until_shutdown", fake_spin)
    params = _write_params(tmp_path / "params.yaml",
                           "prompts:\n  threshold: 0.3\nensemble:\n  num_questions: 4")
    assert main(["--params-file", str(params), "--profile", "paper", "--set",
                 "vlm.top_p=0.2", "--use-sim-time"]) == 0
    got = started["params"]
    assert got["prompts.threshold"] == 0.3            # params file
    assert got["ensemble.num_questions"] == 10        # profile over params file
    assert got["ensemble.tiles"] is True
    assert got["vlm.top_p"] == 0.2                    # --set over profile
    assert got["use_sim_time"] is True


def test_replay_bag_takes_the_profile(tmp_path, monkeypatch, capsys):
    import vlsam_ros.core.pipeline as pipeline
    from vlsam_ros.core.errors import VlsamError
    from vlsam_ros.offline.replay import replay_bag as rb

    seen = {}

    def fake_build(cfg):
        seen["cfg"] = cfg
        raise VlsamError("stop here: models are not needed for this test")

    monkeypatch.setattr(pipeline, "build_pipeline", fake_build)
    # A real input bag: replay checks bag, topics and output before it loads any model.
    from test_replay import write_image_bag

    write_image_bag(tmp_path / "in", 1)
    args = [str(tmp_path / "in"), str(tmp_path / "out"), "--config", str(DEFAULT_PARAMS),
            "--profile", "edge", "--set", "ensemble.num_questions=2"]
    assert rb.main(args) == rb.EXIT_ERROR
    assert seen["cfg"].vlm.family == "idefics3"
    assert seen["cfg"].ensemble.num_questions == 2
    assert rb.main([str(tmp_path / "in"), str(tmp_path / "out"), "--profile", "nope"]) \
        == rb.EXIT_ERROR
    assert "unknown profile 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------- launch file

class _Recorder:
    """Stands in for any launch / launch_ros class: keeps its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorder):
    def perform(self, context):
        return context[self.args[0]]


def _stub_module(name: str, **names) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(names)
    module.__getattr__ = lambda attr: _Recorder  # every other imported name
    return module


@pytest.fixture
def launch_module(monkeypatch):
    """launch/vlsam.launch.py imported with launch, launch_ros and lifecycle_msgs stubbed
    (they are not installable in this venv); its own logic runs for real."""
    import importlib.util

    stubs = {
        "launch": {}, "launch.actions": {}, "launch.conditions": {},
        "launch.events": {"matches_action": lambda action: action},
        "launch.substitutions": {"LaunchConfiguration": _LaunchConfiguration},
        "launch_ros": {}, "launch_ros.actions": {}, "launch_ros.event_handlers": {},
        "launch_ros.events": {}, "launch_ros.events.lifecycle": {},
        "launch_ros.substitutions": {},
        "lifecycle_msgs": {}, "lifecycle_msgs.msg": {"Transition": types.SimpleNamespace(
            TRANSITION_CONFIGURE=1, TRANSITION_ACTIVATE=3)},
    }
    for name, names in stubs.items():
        monkeypatch.setitem(sys.modules, name, _stub_module(name, **names))
    spec = importlib.util.spec_from_file_location("vlsam_launch",
                                                  REPO_ROOT / "launch" / "vlsam.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch_context(**values):
    context = {"params_file": "/share/vlsam_ros/config/vlsam.yaml", "profile": "",
               "use_sim_time": "false", "cameras": "", "autostart": "false",
               "namespace": "", "log_level": "info"}
    context.update(values)
    return context


def test_launch_declares_the_profile_argument(launch_module):
    description = launch_module.generate_launch_description()
    declared = {a.args[0]: a.kwargs for a in description.args[0]
                if isinstance(a, _Recorder) and a.args and isinstance(a.args[0], str)}
    assert declared["profile"]["default_value"] == ""
    assert "paper" in declared["profile"]["description"]


def test_launch_passes_the_profile_as_a_second_parameter_file(launch_module):
    actions = launch_module._node_and_activation(_launch_context(
        profile="paper", use_sim_time="true", cameras="[/a/image_raw]"))
    node = actions[0]
    assert node.kwargs["parameters"] == [
        "/share/vlsam_ros/config/vlsam.yaml", str(PROFILE_DIR / "paper.yaml"),
        {"use_sim_time": True}, {"cameras": ["/a/image_raw"]}]
    # No profile: params file only; a path is taken as is.
    plain = launch_module._node_and_activation(_launch_context())[0]
    assert plain.kwargs["parameters"] == ["/share/vlsam_ros/config/vlsam.yaml",
                                          {"use_sim_time": False}]
    path = str(PROFILE_DIR / "cpu.yaml")
    by_path = launch_module._node_and_activation(_launch_context(profile=path))[0]
    assert by_path.kwargs["parameters"][1] == path
    with pytest.raises(ConfigError, match="concept, cpu, edge, paper"):
        launch_module._node_and_activation(_launch_context(profile="nope"))


def test_ros_applies_the_later_parameter_file_over_the_earlier(tmp_path):
    """What the launch file relies on: with two --params-file, rclpy takes the later file's
    value, even when the profile uses the '/**' wildcard and the params file the node name."""
    pytest.importorskip("rclpy")
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node

    params = _write_params(tmp_path / "params.yaml",
                           "ensemble:\n  num_questions: 4\nprompts:\n  threshold: 0.3")
    context = Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(params),
                                      "--params-file", str(PROFILE_DIR / "paper.yaml")])
    try:
        node = Node("vlsam", context=context,
                    automatically_declare_parameters_from_overrides=True)
        assert node.get_parameter("ensemble.num_questions").value == 10
        assert node.get_parameter("ensemble.tiles").value is True
        assert node.get_parameter("prompts.threshold").value == 0.3
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


# ---------------------------------------------------------------- end to end, tiny models

def _tiny_profile_config(profile: str, model_dir: Path, family: str):
    from vlsam_ros.testing.make_tiny_models import tiny_model_overrides

    tiny = tiny_model_overrides(model_dir, family=family, sam_type="vit_t")
    return load_config(DEFAULT_PARAMS, tiny, profile=profile)


def _run_one_frame(cfg):
    from vlsam_ros.core.pipeline import build_pipeline

    pipe = build_pipeline(cfg)
    batches = []
    describe = pipe.vlm.describe

    def counting_describe(images, questions, *args):
        batches.append(len(images))
        return describe(images, questions, *args)

    pipe.vlm.describe = counting_describe
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    return pipe, pipe.run(image), batches


@pytest.mark.usefixtures("one_torch_thread")
def test_the_paper_profile_runs_end_to_end_with_tiny_models(tiny_model_dir):
    """One frame of the full paper recipe (5 views x 10 questions in one VLM batch,
    sampling, 2 refinement rounds, one NMS) through the production loaders; only the
    models are tiny (LLaVA architecture, MobileSAM instead of ViT-H: a random ViT-H is
    2.5 GB) and vlm.max_new_tokens is 16."""
    cfg = _tiny_profile_config("paper", tiny_model_dir, "llava")
    assert (cfg.ensemble.tiles, cfg.ensemble.num_questions, cfg.vlm.do_sample) == (True, 10,
                                                                                    True)
    pipe, result, batches = _run_one_frame(cfg)
    assert len(pipe.questions()) == 10
    assert batches == [50]                               # 5 views x 10 questions, one batch
    stages = result.stage_ms
    assert 0 < stages["decoder_calls"] <= 5 * (cfg.prompts.refinement_rounds + 1)
    assert result.description
    for det in result.detections:
        assert det.mask.shape == (96, 128) and det.mask.any()


@pytest.mark.usefixtures("one_torch_thread")
def test_the_cpu_profile_runs_end_to_end_with_tiny_models(tiny_model_dir, tmp_path):
    """The newcomer's profile: SmolVLM's architecture (idefics3) + MobileSAM on the CPU."""
    from vlsam_ros.testing.make_tiny_models import make_tiny_models

    make_tiny_models(tmp_path, families=("idefics3",), sam_types=())
    (tmp_path / "sam_vit_t.pt").symlink_to(tiny_model_dir / "sam_vit_t.pt")
    cfg = _tiny_profile_config("cpu", tmp_path, "idefics3")
    assert cfg.device == "cpu" and cfg.vlm.family == "idefics3"
    pipe, result, batches = _run_one_frame(cfg)
    assert batches == [1]
    assert result.stage_ms["decoder_calls"] >= 1
    assert result.description
