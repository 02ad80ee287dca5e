"""vlsam-label: Ray actors label bags byte-identically to vlsam-replay-bag, survive a dead
worker, resume an interrupted run; the node never imports Ray.

Every test here shares ONE local Ray (session fixture: starting Ray costs seconds) and uses
the fixed-cost stand-in pipeline (vlsam_ros.testing.stand_in_pipeline), which Ray workers
can import; the tiny-model run is in bench/label.py and the slow test below.
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_replay import CFG, write_image_bag

from vlsam_ros.offline.labelling import label_bags as lb
from vlsam_ros.offline.labelling import label_tool
from vlsam_ros.offline.labelling.actor_pool import PoolSettings
from vlsam_ros.offline.labelling.checkpoint import iter_journal, read_journal
from vlsam_ros.offline.labelling.ray_session import RaySettings
from vlsam_ros.offline.replay import replay_bag as rb
from vlsam_ros.offline.replay.output_bag import OutputBag
from vlsam_ros.testing.stand_in_pipeline import StandInFactory, StandInPipeline

# One local Ray per test process: under pytest-xdist these tests all run on one worker.
pytestmark = pytest.mark.xdist_group("ray")

QUIET = rb.ReplayOptions(progress=False)
TWO_ACTORS = PoolSettings(actors=2, num_cpus=1, in_flight=2)
BAGS = (("front_sqlite", 7, "sqlite3", ()), ("long_mcap", 12, "mcap", (3,)),
        ("short_mcap", 5, "mcap", ()))
"""Three generated bags: one sqlite3, two mcap, different lengths; frame 4 of long_mcap
has an encoding nobody can decode (a recorded skip)."""


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray for every test here (2 CPUs, 200 MiB store, loopback)."""
    from vlsam_ros.offline.labelling.ray_session import start_ray, stop_ray

    started = start_ray(RaySettings(num_cpus=2, object_store_mb=200))
    yield
    stop_ray(started)


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """The three input bags and, for each, what vlsam-replay-bag writes from it."""
    root = tmp_path_factory.mktemp("bags")
    for name, n, storage, bad in BAGS:
        write_image_bag(root / "in" / name, n, storage, bad_encoding_at=bad)
        rb.replay_bag(root / "in" / name, root / "replayed" / name, StandInPipeline(), CFG,
                      QUIET)
    return root


def jobs(bags: Path) -> list[lb.LabelJob]:
    return [lb.LabelJob(bags / "in" / name, name) for name, *_ in BAGS]


def assert_same_as_replay(bags: Path, out_dir: Path) -> None:
    """Every output bag holds the same files with the same bytes as the replay's."""
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(n for n, *_ in BAGS)
    for name, *_ in BAGS:
        want, got = bags / "replayed" / name, out_dir / name
        names = sorted(p.name for p in want.iterdir())
        assert sorted(p.name for p in got.iterdir()) == names
        match, mismatch, errors = filecmp.cmpfiles(want, got, names, shallow=False)
        assert (mismatch, errors) == ([], []) and len(match) == 2


def test_three_bags_two_actors_equal_replay(bags, tmp_path, ray_session):
    summary = lb.label_bags(jobs(bags), tmp_path / "out", StandInFactory(), CFG, QUIET,
                            TWO_ACTORS)
    assert_same_as_replay(bags, tmp_path / "out")
    by_name = {Path(b.output).name: b for b in summary.bags}
    assert [(b.status, b.frames, len(b.skipped)) for b in by_name.values()] == \
        [("labelled", 7, 0), ("labelled", 12, 1), ("labelled", 5, 0)]
    assert "weird42" in by_name["long_mcap"].skipped[0]["reason"]
    assert by_name["long_mcap"].skipped[0]["frame"].startswith("/cam_front/image_raw frame 4 ")
    assert len(summary.actors) == 2 and summary.retries == []
    assert sum(a["frames"] for a in summary.actors) == 24
    assert all(a["frames"] > 0 for a in summary.actors)  # both actors worked


def test_actor_killed_mid_bag_is_retried(bags, tmp_path, ray_session):
    """The first actor to reach its 2nd frame dies (os._exit, like a killed process): frame
    2 or 5 of the first bag (frames go 3 per call: frames 1-3 to one actor, 4-6 to the
    other); its calls go to another actor, the outputs are still the replay's."""
    marker = tmp_path / "crashed"
    summary = lb.label_bags(jobs(bags), tmp_path / "out", StandInFactory(
        crash_on_call=2, crash_marker=str(marker)), CFG, QUIET,
        dataclasses.replace(TWO_ACTORS, batch=3))
    assert marker.exists()  # the crash happened
    assert_same_as_replay(bags, tmp_path / "out")
    died = [a for a in summary.actors if a["died"]]
    assert len(died) == 1 and "ActorDiedError" in died[0]["died"]
    retried = {(Path(r["bag"]).name, r["frame"]) for r in summary.retries}
    died_on = {("front_sqlite", f"/cam_front/image_raw frame {n}") for n in (2, 5)}
    assert retried & died_on  # each actor's 2nd frame: whichever actor got there first
    assert all(r["actor"] == died[0]["actor"] for r in summary.retries)
    assert len(summary.actors) == 3  # the dead one was replaced
    assert "retried /cam_front/image_raw frame" in "\n".join(summary.lines())
    assert summary.failed == []


def test_interrupted_run_resumes_with_the_rest(bags, tmp_path, ray_session, monkeypatch):
    """Ctrl-C after the first bag and 3 frames of the second: the first bag is complete,
    the second is not there (only its .partial checkpoint); the re-run labels only the
    remaining frames and every output equals the replay's."""
    out = tmp_path / "out"
    real_write, writes = OutputBag.write, []

    def write_then_interrupt(self, frame_output):
        if len(writes) == 7 + 3:
            raise KeyboardInterrupt
        writes.append(frame_output.index)
        real_write(self, frame_output)

    monkeypatch.setattr(OutputBag, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt, match="1 bag.s. finished"):
        lb.label_bags(jobs(bags), out, StandInFactory(), CFG, QUIET, TWO_ACTORS)
    monkeypatch.setattr(OutputBag, "write", real_write)
    assert (out / "front_sqlite").is_dir() and not (out / "front_sqlite.partial").exists()
    assert not (out / "long_mcap").exists() and (out / "long_mcap.partial").is_dir()
    assert read_journal(out / "long_mcap.partial" / "journal.bin")[0].__len__() == 3
    assert not (out / "short_mcap").exists()

    summary = lb.label_bags(jobs(bags), out, StandInFactory(), CFG, QUIET, TWO_ACTORS)
    assert [(b.status, b.resumed_from, b.labelled_now) for b in summary.bags] == \
        [("already_done", 0, 0), ("labelled", 3, 9), ("labelled", 0, 5)]
    assert sum(a["frames"] for a in summary.actors) == 9 + 5  # only the rest was labelled
    assert_same_as_replay(bags, out)


@pytest.mark.slow
def test_resume_refuses_other_settings(bags, tmp_path, ray_session, monkeypatch):
    """A checkpoint left with one configuration is not continued with another."""
    out = tmp_path / "out"
    one = [lb.LabelJob(bags / "in" / "short_mcap", "short_mcap")]
    real_write = OutputBag.write

    def interrupt_at_3(self, frame_output):
        if frame_output.index == 3:
            raise KeyboardInterrupt
        real_write(self, frame_output)

    monkeypatch.setattr(OutputBag, "write", interrupt_at_3)
    with pytest.raises(KeyboardInterrupt):
        lb.label_bags(one, out, StandInFactory(), CFG, QUIET, TWO_ACTORS)
    monkeypatch.setattr(OutputBag, "write", real_write)
    summary = lb.label_bags(one, out, StandInFactory(), CFG,
                            rb.ReplayOptions(progress=False, overlay=True), TWO_ACTORS)
    assert summary.bags[0].status == "failed"
    assert "left by a run with other inputs or settings" in summary.bags[0].error
    assert not (out / "short_mcap").exists()


def test_journal_drops_a_cut_record(tmp_path):
    """A crash in the middle of a journal record: the record and anything after it are
    dropped on resume; the complete ones are read back unchanged."""
    from vlsam_ros.offline.labelling.checkpoint import BagCheckpoint
    from vlsam_ros.offline.replay.frame_outputs import FrameOutput

    ckpt = BagCheckpoint(tmp_path, "x", {"a": 1}, 3, sync_every_s=0.0)
    ckpt.open()
    outs = [FrameOutput(i, "/c/image_raw", 10 + i, (("/c/vlsam/detections", bytes([i]) * 9),),
                        1, None, f"frame {i + 1}", 0.0) for i in range(3)]
    for out in outs:
        ckpt.append(out)
    ckpt.close()
    journal = tmp_path / "x.partial" / "journal.bin"
    journal.write_bytes(journal.read_bytes()[:-5])
    again = BagCheckpoint(tmp_path, "x", {"a": 1}, 3, sync_every_s=0.0)
    again.open()
    assert again.done == again.resumed_from == 2
    assert list(again.journalled()) == outs[:2]
    assert list(iter_journal(journal, 2)) == outs[:2]
    again.close()


@pytest.mark.slow
def test_truncated_bag_fails_alone(bags, tmp_path, ray_session):
    """A truncated sqlite3 bag is an error naming it; the other bags still finish."""
    broken = tmp_path / "broken"
    write_image_bag(broken, 20, "sqlite3")
    db = next(broken.glob("*.db3"))
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    job_list = [lb.LabelJob(broken, "broken")] + jobs(bags)[2:]
    summary = lb.label_bags(job_list, tmp_path / "out", StandInFactory(), CFG, QUIET,
                            TWO_ACTORS)
    assert [b.status for b in summary.bags] == ["failed", "labelled"]
    assert "broken" in summary.bags[0].error and "truncated or corrupt" in summary.bags[0].error
    assert not (tmp_path / "out" / "broken").exists()
    assert (tmp_path / "out" / "short_mcap").is_dir()


@pytest.mark.slow
def test_pipeline_error_fails_its_bag_only(bags, tmp_path, ray_session):
    """A pipeline error (not a bad image) on one bag's frames fails that bag, named with the
    frame; the bags before and after it finish, byte-identical to the replay."""
    from vlsam_ros.offline.datasets.coda_dataset import load_coda_dataset
    from vlsam_ros.offline.datasets.dataset_to_bag import dataset_to_bag
    from vlsam_ros.offline.datasets.make_demo_dataset import make_demo_dataset

    make_demo_dataset(tmp_path / "coda", num_frames=3, width=96, height=48, seed=1)
    odd = dataset_to_bag(load_coda_dataset(tmp_path / "coda"), tmp_path / "odd")
    job_list = [jobs(bags)[2], lb.LabelJob(odd, "odd"), jobs(bags)[0]]
    summary = lb.label_bags(job_list, tmp_path / "out", StandInFactory(fail_on_width=96),
                            CFG, QUIET, TWO_ACTORS)  # the other bags are 64 px wide
    assert [b.status for b in summary.bags] == ["labelled", "failed", "labelled"]
    assert "odd: /cam_front/image_raw frame 1: the pipeline failed: RuntimeError: " \
        "stand-in failure" in summary.bags[1].error
    assert not (tmp_path / "out" / "odd").exists()
    for name in ("short_mcap", "front_sqlite"):
        want, got = bags / "replayed" / name, tmp_path / "out" / name
        names = sorted(p.name for p in want.iterdir())
        assert filecmp.cmpfiles(want, got, names, shallow=False)[1:] == ([], [])


SIGINT_DRIVER = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job ignores it
sys.path.insert(0, {test!r})
from pathlib import Path
from test_replay import CFG
from vlsam_ros.offline.labelling import label_bags as lb
from vlsam_ros.offline.labelling.actor_pool import PoolSettings
from vlsam_ros.offline.labelling.ray_session import RaySettings
from vlsam_ros.offline.replay.replay_options import ReplayOptions
from vlsam_ros.testing.stand_in_pipeline import StandInFactory
from vlsam_ros.tools.cli import run_tool
root = Path({root!r})
def body():
    lb.label_bags([lb.LabelJob(root / "in" / n, n) for n in ("a", "b")], root / "out",
                  StandInFactory(cost_s=0.2), CFG, ReplayOptions(progress=False),
                  PoolSettings(actors=2), RaySettings(num_cpus=2))
    return 0
sys.exit(run_tool("label", body))
"""


@pytest.mark.slow
def test_ctrl_c_in_a_real_process_then_resume(tmp_path):
    """SIGINT to a labelling process (its own local Ray) in the middle of the second bag:
    exit 130 with the summary, the first bag complete, the second only checkpointed; the
    re-run labels the rest, and both equal the replay."""
    import signal
    import time

    for name, n in (("a", 6), ("b", 30)):
        write_image_bag(tmp_path / "in" / name, n)
    code = SIGINT_DRIVER.format(test=str(Path(__file__).parent), root=str(tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "out" / "b.partial" / "journal.bin"
    deadline = time.monotonic() + 120
    while not (journal.is_file() and journal.stat().st_size > 3000):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "label: interrupted; 1 bag(s) finished" in err
    assert (tmp_path / "out" / "a").is_dir() and not (tmp_path / "out" / "b").exists()
    done = json.loads((tmp_path / "out" / "b.partial" / "progress.json").read_text())
    assert 0 < done["frames_done"] < 30
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("a", "b"):
        rb.replay_bag(tmp_path / "in" / name, tmp_path / "replayed" / name, StandInPipeline(),
                      CFG, QUIET)
        want, got = tmp_path / "replayed" / name, tmp_path / "out" / name
        names = sorted(p.name for p in want.iterdir())
        assert filecmp.cmpfiles(want, got, names, shallow=False)[1:] == ([], [])


@pytest.mark.slow
def test_cli_labels_a_folder(bags, tmp_path, ray_session, monkeypatch):
    """vlsam-label on a folder of bags: exit 3 (a frame skipped), the summary file, then a
    re-run that finds everything done and still reports the recorded skip."""
    monkeypatch.setattr("vlsam_ros.core.pipeline.build_pipeline", StandInFactory())
    args = [str(bags / "in"), "--out", str(tmp_path / "out"), "--set", "device=cpu",
            "--actors", "2", "--no-progress", "--summary", str(tmp_path / "s.json")]
    assert label_tool.main(args) == label_tool.EXIT_PARTIAL
    assert_same_as_replay(bags, tmp_path / "out")
    info = json.loads((tmp_path / "s.json").read_text())
    assert (info["frames"], info["skipped"], info["failed"]) == (24, 1, 0)
    assert label_tool.main(args) == label_tool.EXIT_PARTIAL  # the skip is in the bag
    again = json.loads((tmp_path / "s.json").read_text())
    assert [b["status"] for b in again["bags"]] == ["already_done"] * 3
    assert (again["frames"], again["skipped"], again["labelled_now"]) == (24, 1, 0)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_tiny_models_label_equals_replay(tmp_path, tiny_config, ray_session):
    """The production loaders (tiny LLaVA + MobileSAM) in 2 actors: the same bytes as a
    single-process replay of each bag (a mcap and a sqlite3 bag). The replay runs on one
    torch thread like the 1-CPU actors (Ray sets OMP_NUM_THREADS to an actor's CPUs): float
    sums split over other thread counts round differently."""
    from vlsam_ros.core.pipeline import build_pipeline

    cfg = tiny_config(cameras=["/cam_front/image_raw"], vlm__max_new_tokens=4,
                      prompts__refinement_rounds=0)
    pipeline = build_pipeline(cfg)
    job_list = []
    for name, n, storage in (("m", 3, "mcap"), ("s", 2, "sqlite3")):
        write_image_bag(tmp_path / "in" / name, n, storage)
        rb.replay_bag(tmp_path / "in" / name, tmp_path / "replayed" / name, pipeline, cfg, QUIET)
        job_list.append(lb.LabelJob(tmp_path / "in" / name, name))
    summary = lb.label_bags(job_list, tmp_path / "out", build_pipeline, cfg, QUIET, TWO_ACTORS)
    assert [b.status for b in summary.bags] == ["labelled", "labelled"]
    for name in ("m", "s"):
        want, got = tmp_path / "replayed" / name, tmp_path / "out" / name
        names = sorted(p.name for p in want.iterdir())
        assert filecmp.cmpfiles(want, got, names, shallow=False)[1:] == ([], [])


@pytest.mark.slow
def test_dataset_label_equals_convert_then_replay(tmp_path, ray_session):
    """A CODA-layout dataset is labelled like the bag vlsam-dataset-to-bag --compressed
    makes of it, replayed: the same bytes, without writing that bag."""
    from vlsam_ros.offline.datasets.coda_dataset import load_coda_dataset
    from vlsam_ros.offline.datasets.dataset_to_bag import dataset_to_bag
    from vlsam_ros.offline.datasets.make_demo_dataset import make_demo_dataset
    from vlsam_ros.offline.labelling.dataset_source import DATASET_TOPIC

    make_demo_dataset(tmp_path / "coda", num_frames=5, width=64, height=48, seed=3)
    bag = dataset_to_bag(load_coda_dataset(tmp_path / "coda"), tmp_path / "bag",
                         compressed=True)
    rb.replay_bag(bag, tmp_path / "replayed" / "coda", StandInPipeline(), CFG,
                  rb.ReplayOptions(topics=(DATASET_TOPIC,), progress=False))
    found = label_tool.find_bags([str(tmp_path / "coda")])
    job_list = label_tool.label_jobs(found, tmp_path / "out")
    assert [(j.name, j.dataset) for j in job_list] == [("coda", True)]
    summary = lb.label_bags(job_list, tmp_path / "out", StandInFactory(), CFG, QUIET,
                            TWO_ACTORS)
    assert [(b.status, b.frames) for b in summary.bags] == [("labelled", 5)]
    want, got = tmp_path / "replayed" / "coda", tmp_path / "out" / "coda"
    names = sorted(p.name for p in want.iterdir())
    assert sorted(p.name for p in got.iterdir()) == names
    assert filecmp.cmpfiles(want, got, names, shallow=False)[1:] == ([], [])


def test_cli_user_errors(bags, tmp_path, capsys):
    """User errors are one line, exit 2, before Ray or a model starts."""
    assert label_tool.main([str(tmp_path / "nope*"), "--out", str(tmp_path / "o")]) == 2
    assert "vlsam-label: error: input" in capsys.readouterr().err
    assert label_tool.main([str(bags / "in"), "--out", str(tmp_path / "o"),
                            "--set", "tracking.mode=flow"]) == 2
    assert "tracking.mode=flow" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert label_tool.main([str(bags / "in"), "--out", str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_find_bags_and_names(tmp_path):
    (tmp_path / "a").mkdir()
    write_image_bag(tmp_path / "a" / "one", 1)
    write_image_bag(tmp_path / "b", 1, "sqlite3")
    (tmp_path / "loose.mcap").write_bytes(b"")
    found = label_tool.find_bags([str(tmp_path / "a"), str(tmp_path / "b*"),
                                  str(tmp_path / "loose.mcap"), str(tmp_path / "a" / "one")])
    assert found == [tmp_path / "a" / "one", tmp_path / "b", tmp_path / "loose.mcap"]
    names = [j.name for j in label_tool.label_jobs(found, tmp_path / "out")]
    assert names == ["one", "b", "loose"]
    with pytest.raises(label_tool.ToolError, match="would both write"):
        label_tool.label_jobs([tmp_path / "b", tmp_path / "x" / "b"], tmp_path / "out")
    with pytest.raises(label_tool.ToolError, match="inside the output folder"):
        label_tool.label_jobs([tmp_path / "a" / "one"], tmp_path / "a")


def test_node_and_core_do_not_import_ray():
    """Ray belongs to the offline labelling only: the node, the core and replay run
    without it (checked in a fresh interpreter)."""
    code = ("import sys\n"
            "import vlsam_ros.ros.node, vlsam_ros.core.pipeline\n"
            "import vlsam_ros.offline.replay.replay_bag\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=os.environ, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_missing_ray_is_a_clear_error(monkeypatch):
    """Without Ray installed, vlsam-label says what to install (a one-line user error)."""
    from vlsam_ros.offline.labelling import ray_session
    from vlsam_ros.tools.cli import ToolError

    for key in (ray_session.LOCAL_ONLY_ENV, ray_session.WORKER_NICENESS_ENV, "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)  # restored after the test
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ToolError, match=r"needs Ray.*pip install ray==2\.60\.0"):
        ray_session.start_ray(RaySettings())


def test_local_ray_stays_on_loopback(ray_session):
    """The local Ray the tool starts announces and binds 127.0.0.1 only (its node address
    and the GCS address; its listening sockets were checked with `ss -ltn` when this was
    written)."""
    import ray

    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
