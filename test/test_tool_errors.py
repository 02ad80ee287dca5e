"""Bad inputs to every console tool, run as a user runs them (a subprocess): each gives its
documented exit code (vlsam_ros/tools/cli.py: 2 user error, 1 the node could not start,
130 interrupted), a one-line message naming the cause, no traceback, and no partial output.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_replay import write_image_bag
from vlsam_ros.tools.cli import STAGING_PREFIX
from vlsam_ros.offline.datasets.make_demo_dataset import make_demo_dataset

TOOLS = {  # command -> module
    "vlsam-node-runner": "vlsam_ros.ros.run_node",
    "vlsam-replay-bag": "vlsam_ros.offline.replay.replay_bag",
    "vlsam-evaluate": "vlsam_ros.offline.evaluation.evaluate",
    "vlsam-dataset-to-bag": "vlsam_ros.offline.datasets.dataset_to_bag",
    "vlsam-make-tiny-models": "vlsam_ros.testing.make_tiny_models",
    "vlsam-write-params-yaml": "vlsam_ros.tools.write_params_yaml",
    "vlsam-make-demo-dataset": "vlsam_ros.offline.datasets.make_demo_dataset",
    "vlsam-demo": "vlsam_ros.offline.demo",
    "vlsam-label": "vlsam_ros.offline.labelling.label_tool",
}
UNWRITABLE = "/proc/vlsam_out"  # a file system where nothing can be created, even by root


def run(tool: str, args: list[str], cwd: Path, timeout: float = 180.0
        ) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", TOOLS[tool], *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def options_without_help(parser: argparse.ArgumentParser) -> list[str]:
    """The options and positionals of ``parser`` that have no help text (should be none)."""
    return [action.option_strings[0] if action.option_strings else action.dest
            for action in parser._actions
            if not isinstance(action, argparse._HelpAction) and not action.help]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir):
    """Read-only inputs shared by the cases: a 3-frame bag, a dataset, broken files."""
    root = tmp_path_factory.mktemp("inputs")
    write_image_bag(root / "bag", 3)
    make_demo_dataset(root / "dataset", num_frames=2, width=32, height=24, seed=1)
    broken = root / "broken_dataset"
    make_demo_dataset(broken, num_frames=2, width=32, height=24, seed=1)
    next((broken / "images").iterdir()).unlink()
    (root / "garbage_sam.pt").write_bytes(bytes(range(256)) * 40)
    (root / "bad.yaml").write_text("vlsam: {ros__parameters: [unclosed\n")
    (root / "not_json.json").write_text("{not json")
    (root / "a_file").write_text("x")
    (root / "not_a_bag").mkdir()
    (root / "not_a_bag" / "metadata.yaml").write_text("garbage: [")
    return root


def tiny_flags(tiny: Path, **extra: str) -> list[str]:
    values = {"device": "cpu", "vlm.model": str(tiny / "llava"), "vlm.dtype": "float32",
              "sam.checkpoint": str(tiny / "sam_vit_t.pt"), **extra}
    flags = []
    for key, value in values.items():
        flags += ["--set", f"{key}={value}"]
    return flags


# (tool, args, exit code, text the one-line message must contain). Placeholders: {in} the
# shared inputs folder, {out} this case's empty output folder, {tiny} the tiny models,
# {proc} an unwritable place.
CASES = [
    # --- vlsam-node-runner
    ("vlsam-node-runner", ["--set", "cameras=[/a,/b"], 2, "cameras='[/a,/b': not a valid list"),
    ("vlsam-node-runner", ["--set", "cameras=[not a topic!]"], 2,
     "'not a topic!' is not a valid ROS topic name"),
    ("vlsam-node-runner", ["--set", "no.such.key=1"], 2,
     "unknown configuration key(s): no.such.key"),
    ("vlsam-node-runner", ["--set", "prompts.threshold"], 2, "expected key=value"),
    ("vlsam-node-runner", ["--params-file", "{in}/missing.yaml"], 2,
     "missing.yaml: file not found"),
    ("vlsam-node-runner", ["--params-file", "{in}"], 2, "not a file"),
    ("vlsam-node-runner", ["--params-file", "{in}/bad.yaml"], 2, "bad.yaml: not valid YAML"),
    ("vlsam-node-runner", ["--bogus"], 2, "unrecognized arguments: --bogus"),
    ("vlsam-node-runner", ["--profile", "nope"], 2, "unknown profile 'nope'"),
    ("vlsam-node-runner", ["TINY", "sam.checkpoint={in}/garbage_sam.pt"], 1,
     "garbage_sam.pt' (sam.checkpoint) is not a PyTorch checkpoint"),
    ("vlsam-node-runner", ["TINY", "sam.type=vit_b"], 1,
     "holds vit_t weights (mobile_sam), but sam.type is vit_b"),
    ("vlsam-node-runner", ["TINY", "vlm.model={in}/no_model"], 1, "VLM weights not found"),
    ("vlsam-node-runner", ["TINY", "device=cuda:7"], 1, "device 'cuda:7'"),
    # --- vlsam-write-params-yaml
    ("vlsam-write-params-yaml", ["{out}/p.yaml", "--set", "nope=1"], 2,
     "unknown configuration key(s): nope"),
    ("vlsam-write-params-yaml", ["{out}/missing_dir/p.yaml"], 2, "missing_dir does not exist"),
    ("vlsam-write-params-yaml", ["/proc/p.yaml"], 2, "cannot write in /proc"),
    ("vlsam-write-params-yaml", ["{in}"], 2, "is a folder; give a file name"),
    # --- vlsam-make-tiny-models
    ("vlsam-make-tiny-models", ["{out}/models", "--families", "llava", "gpt"], 2,
     "unknown VLM family gpt"),
    ("vlsam-make-tiny-models", ["{out}/models", "--sam-types", "vit_x"], 2,
     "unknown SAM type(s) vit_x"),
    ("vlsam-make-tiny-models", ["{proc}"], 2, "cannot write in /proc"),
    ("vlsam-make-tiny-models", ["{in}/a_file/models"], 2, "a_file does not exist"),
    ("vlsam-make-tiny-models", ["{out}/models", "--seed", "x"], 2, "invalid int value: 'x'"),
    # --- vlsam-make-demo-dataset
    ("vlsam-make-demo-dataset", ["{out}/ds", "--frames", "0"], 2, "must be at least 1"),
    ("vlsam-make-demo-dataset", ["{out}/ds", "--width", "8"], 2, "at least 16x16 pixels"),
    ("vlsam-make-demo-dataset", ["{proc}"], 2, "cannot write in /proc"),
    ("vlsam-make-demo-dataset", [], 2, "required: out_dir"),
    # --- vlsam-dataset-to-bag
    ("vlsam-dataset-to-bag", ["{in}/nothing_here", "{out}/bag"], 2, "annotation file not found"),
    ("vlsam-dataset-to-bag", ["{in}/broken_dataset", "{out}/bag"], 2, "image file"),
    ("vlsam-dataset-to-bag", ["{in}/dataset", "{in}/bag"], 2, "bag exists already"),
    ("vlsam-dataset-to-bag", ["{in}/dataset", "{proc}"], 2, "cannot write in /proc"),
    ("vlsam-dataset-to-bag", ["{in}/dataset", "{out}/bag", "--rate", "0"], 2,
     "must be a finite number above 0"),
    ("vlsam-dataset-to-bag", ["{in}/dataset", "{out}/bag", "--topic", "/cam 1/image"], 2,
     "not a valid ROS topic name"),
    ("vlsam-dataset-to-bag", ["{in}/dataset", "{out}/bag", "--storage", "zip"], 2,
     "invalid choice: 'zip'"),
    # --- vlsam-replay-bag (vlm.model points nowhere: every case must fail before loading)
    ("vlsam-replay-bag", ["{in}/missing_bag", "{out}/o", "NOMODEL"], 2, "no such bag"),
    ("vlsam-replay-bag", ["{in}/bag", "{out}/o", "--topics", "/nope", "NOMODEL"], 2,
     "topic '/nope' is not in the bag"),
    ("vlsam-replay-bag", ["{in}/bag", "{in}/bag", "NOMODEL"], 2, "bag exists already"),
    ("vlsam-replay-bag", ["{in}/bag", "{proc}", "NOMODEL"], 2, "cannot write in /proc"),
    ("vlsam-replay-bag", ["{in}/bag", "{out}/o", "--stats", "/proc/s.json", "NOMODEL"], 2,
     "--stats file /proc/s.json: cannot write in /proc"),
    ("vlsam-replay-bag", ["{in}/not_a_bag", "{out}/o", "NOMODEL"], 2, "not_a_bag"),
    ("vlsam-replay-bag", ["{in}/bag", "{out}/o", "--set", "cameras=[/a,/b"], 2,
     "not a valid list"),
    ("vlsam-replay-bag", ["{in}/bag", "{out}/o", "--config", "{in}/missing.yaml"], 2,
     "missing.yaml: file not found"),
    ("vlsam-replay-bag", ["{in}/bag", "{out}/o", "--timing", "fast"], 2, "invalid choice"),
    ("vlsam-replay-bag", ["{in}/bag", "{out}/o", "--profile", "nope"], 2,
     "unknown profile 'nope'"),
    ("vlsam-replay-bag", ["{in}/bag", "{out}/o", "TINY", "sam.type=vit_b"], 2,
     "holds vit_t weights"),
    # --- vlsam-evaluate
    ("vlsam-evaluate", ["--gt", "{in}/none.json", "--detections", "{in}/not_json.json",
                        "--out", "{out}/e"], 2, "none.json: file not found"),
    ("vlsam-evaluate", ["--gt", "{in}/dataset/corner_case.json", "--detections",
                        "{in}/not_json.json", "--out", "{out}/e"], 2, "not valid JSON"),
    ("vlsam-evaluate", ["--gt", "{in}/dataset/corner_case.json", "--bag", "{in}/bag",
                        "--out", "{out}/e"], 2, "no DetectionArray topic"),
    ("vlsam-evaluate", ["--gt", "{in}/dataset/corner_case.json", "--detections",
                        "{in}/not_json.json", "--out", "/proc/e"], 2, "cannot write in /proc"),
    ("vlsam-evaluate", ["--gt", "{in}/dataset/corner_case.json", "--detections",
                        "{in}/not_json.json", "--out", "{out}/e", "--lvis", "--text-encoder",
                        "{in}/no_encoder"], 2, "--text-encoder"),
    ("vlsam-evaluate", ["--gt", "{in}/dataset/corner_case.json", "--out", "{out}/e"], 2,
     "one of the arguments --bag --detections is required"),
    # --- vlsam-demo
    ("vlsam-demo", ["--out", "{out}/demo", "--frames", "0"], 2, "must be at least 1"),
    ("vlsam-demo", ["--out", "/proc/demo", "--models", "{tiny}"], 2, "cannot write in /proc"),
    ("vlsam-demo", ["--out", "{out}/demo", "--timeout", "-1"], 2, "above 0"),
    # --- vlsam-label (checked before Ray starts)
    ("vlsam-label", ["{in}/bag", "{in}/no_such_bag", "--out", "{out}/labels"], 2,
     "no_such_bag: file or folder not found"),
]


def _expand(args: list[str], inputs: Path, out: Path, tiny: Path) -> list[str]:
    expanded: list[str] = []
    for i, arg in enumerate(args):
        if arg == "TINY":  # tiny models, then the next item overrides one key
            continue
        if i > 0 and args[i - 1] == "TINY":
            key, _, value = arg.partition("=")
            expanded += tiny_flags(tiny, **{key: value.format(**{"in": inputs})})
            continue
        if arg == "NOMODEL":
            expanded += tiny_flags(tiny, **{"vlm.model": str(inputs / "no_model")})
            continue
        expanded.append(arg.format(**{"in": inputs, "out": out, "tiny": tiny,
                                      "proc": UNWRITABLE}))
    return expanded


CASE_IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]
GROUP = "tool_error_cases"  # the cases' xdist group
CASE_PROCESSES = max(2, os.cpu_count() or 1)  # cases run at once (separate processes)


@pytest.fixture(scope="module")
def case_runs(request, inputs, tiny_model_dir, tmp_path_factory):
    """Runs the tool process of every selected case (all unless -k narrowed them),
    CASE_PROCESSES at a time: the cases are independent processes, each with its own
    working and output folder, so they need not wait for one another. Under pytest-xdist
    every worker collects every case, so the cases form one xdist group: with ``--dist
    loadgroup`` (make test) one worker runs them all, and the processes start once. Returns
    {case id: (CompletedProcess, working folder, output folder)} and the inputs' tree as it
    was before any case ran."""
    items = [item for item in request.session.items
             if item.originalname == "test_bad_input_gives_code_one_line_and_no_output"]
    if getattr(request.config.option, "loadgroup", False):  # an xdist worker, loadgroup
        ungrouped = [item.nodeid for item in items if not item.nodeid.endswith("@" + GROUP)]
        assert not ungrouped, ("pytest-xdist did not group the cases (each worker would run "
                               f"all of them; see requirements.txt on pytest): {ungrouped[:3]}")
    wanted = [item.callspec.id for item in items]
    before_inputs = tree(inputs)
    jobs = []
    for case_id in wanted:
        tool, args, _, _ = CASES[CASE_IDS.index(case_id)]
        work = tmp_path_factory.mktemp(f"case{case_id.rsplit('-', 1)[1]}")
        out = work / "out"
        out.mkdir()
        jobs.append((case_id, tool, _expand(args, inputs, out, tiny_model_dir), work, out))
    with concurrent.futures.ThreadPoolExecutor(CASE_PROCESSES) as pool:
        futures = {job[0]: pool.submit(run, job[1], job[2], job[3]) for job in jobs}
        runs = {case_id: (futures[case_id].result(), work, out)
                for case_id, _, _, work, out in jobs}
    return runs, before_inputs


@pytest.mark.xdist_group(GROUP)  # one worker runs them: case_runs runs each case once
@pytest.mark.parametrize("tool, args, code, message", CASES, ids=CASE_IDS)
def test_bad_input_gives_code_one_line_and_no_output(tool, args, code, message, inputs,
                                                     case_runs, request):
    runs, before_inputs = case_runs
    result, work, out = runs[request.node.callspec.id]
    log = result.stdout + result.stderr
    assert result.returncode == code, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert message in last, f"last line: {last!r}\n{log[-2000:]}"
    prefix = f"{tool}: error: " if code == 2 else ""
    assert last.startswith(prefix) or "exiting: " in last, last
    assert tree(out) == set(), f"output left behind: {tree(out)}"
    assert tree(inputs) == before_inputs, "an input folder was changed (by this or another case)"
    assert not any(p.name.startswith(STAGING_PREFIX) for p in work.rglob("*"))


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_option_of_every_tool_has_help(tool):
    import importlib

    module = importlib.import_module(TOOLS[tool])
    parser = module.build_parser()
    assert parser.prog == tool
    assert options_without_help(parser) == []
    assert parser.epilog and "Exit status" in parser.epilog or tool == "vlsam-node-runner"


def test_replay_reads_the_config_entry_of_its_node_name(tmp_path):
    """--node-name X reads X's entry of the --config file (after ``/**``), like the node."""
    from vlsam_ros.offline.replay.replay_bag import build_parser
    from vlsam_ros.tools.config_options import config_from_source_options

    params = tmp_path / "p.yaml"
    params.write_text("/**: {ros__parameters: {prompts: {threshold: 0.3}}}\n"
                      "vlsam: {ros__parameters: {prompts: {threshold: 0.4}}}\n"
                      "front: {ros__parameters: {prompts: {threshold: 0.6}}}\n")
    for name, threshold in (("vlsam", 0.4), ("front", 0.6), ("rear", 0.3)):
        args = build_parser().parse_args(["in", "out", "--config", str(params),
                                          "--node-name", name])
        assert config_from_source_options(args).prompts.threshold == threshold, name


def test_runner_and_replay_print_config_and_list_keys(tmp_path):
    from vlsam_ros.core.config import schema
    from vlsam_ros.core.config_files import load_config

    keys = run("vlsam-node-runner", ["--list-keys"], tmp_path)
    assert keys.returncode == 0
    listed = [line.split()[0] for line in keys.stdout.splitlines() if not line.startswith(" ")]
    assert listed == [e.name for e in schema()]
    assert "prompts.threshold  (float; default 0.5; range [0.0, 1.0]; changes apply at run " \
           "time)" in keys.stdout
    assert run("vlsam-replay-bag", ["--list-keys"], tmp_path).stdout == keys.stdout
    for tool in ("vlsam-node-runner", "vlsam-replay-bag"):
        printed = run(tool, ["--print-config", "--set", "device=cpu", "--set",
                             "prompts.threshold=0.25"], tmp_path)
        assert printed.returncode == 0, printed.stderr
        (tmp_path / "printed.yaml").write_text(printed.stdout)
        cfg = load_config(tmp_path / "printed.yaml")  # the printout is a valid params file
        assert cfg.device == "cpu" and cfg.prompts.threshold == 0.25


# ---------------------------------------------------------------------------------------
# Interrupts: one line saying what was kept, exit 130, nothing half-written
# ---------------------------------------------------------------------------------------

def _wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_interrupted_demo_dataset_leaves_nothing(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "vlsam_ros.offline.datasets.make_demo_dataset",
                             str(tmp_path / "ds"), "--frames", "100000"], cwd=tmp_path,
                            env=os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: any(tmp_path.rglob("*.jpg")), 60.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["vlsam-make-demo-dataset: interrupted; nothing was kept"]
    assert tree(tmp_path) == set()


def test_interrupted_replay_keeps_a_labelled_partial_bag(tmp_path, tiny_model_dir):
    write_image_bag(tmp_path / "in", 40)
    proc = subprocess.Popen([sys.executable, "-m", "vlsam_ros.offline.replay.replay_bag",
                             str(tmp_path / "in"), str(tmp_path / "out"), "--no-progress",
                             *tiny_flags(tiny_model_dir)], cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: (tmp_path / "out").exists(), 120.0)  # models loaded
        time.sleep(3.0)  # a few frames in
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vlsam-replay-bag: interrupted; ") and "of 40 frame(s) read" in last
    assert f"are in {tmp_path / 'out.partial'}" in last
    assert not (tmp_path / "out").exists() and (tmp_path / "out.partial").is_dir()
    info = json.dumps(sorted(tree(tmp_path)))
    assert STAGING_PREFIX not in info
