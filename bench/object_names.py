"""Benchmark: object names read from VLM answers, spaCy extractor vs the old heuristic parser.

Usage: ``.venv/bin/python bench/object_names.py [--corpus PATH] [--misses] [--repeats N]``

Both parsers read every answer of the hand-labelled corpus (test/data/object_name_corpus.yaml,
answers in the styles of LLaVA-1.5, LLaVA-NeXT, Qwen2-VL and SmolVLM) with the default
``VlmConfig``. Scores are pooled over all answers, over the development answers (the
extractor was refined on them) and over the held-out ones (written afterwards, never used to
change it): recall = found expected names / expected names, precision = found expected names
/ returned names (names compared as strings, so the old parser's plurals such as "traffic
cones" count as wrong). ``--misses`` prints, per
answer, the expected names a parser missed and the names it returned that were not expected.

The old parser is the hand-written heuristic this project used before the spaCy extractor;
its source is read from git history (``git show OLD_COMMIT:vlsam_ros/core/vlm/object_names.py``)
and loaded as a module. Time: per answer, the minimum over ``--repeats`` runs of the call
(spaCy model loaded before timing); median and max over answers are reported. The last
printed line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vlsam_ros.core.config import VlmConfig  # noqa: E402
from vlsam_ros.core.vlm import object_names  # noqa: E402

# Last commit whose object_names.py holds the old heuristic parser.
OLD_COMMIT = "63beafed84dff62d93e51ffe2615d70653342953"
OLD_PATH = "vlsam_ros/core/vlm/object_names.py"


def load_old_parser() -> types.ModuleType:
    """The old heuristic parser, loaded from git history."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD_COMMIT}:{OLD_PATH}"],
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("old_object_names")
    exec(compile(source, f"{OLD_COMMIT[:7]}:{OLD_PATH}", "exec"), module.__dict__)
    return module


def score(corpus: list[dict], extract) -> dict:
    """Pooled recall/precision of ``extract(text) -> list[str]`` over the corpus, and the
    per-answer misses / unexpected names."""
    found = expected = returned = 0
    errors = []
    for entry in corpus:
        want, got = set(entry["expected"]), set(extract(entry["answer"]))
        found += len(want & got)
        expected += len(want)
        returned += len(got)
        if want != got:
            errors.append(dict(answer=entry["answer"], style=entry["style"],
                               missed=sorted(want - got), unexpected=sorted(got - want)))
    return dict(recall=found / max(expected, 1), precision=found / max(returned, 1),
                expected=expected, returned=returned, found=found,
                missed=sum(len(e["missed"]) for e in errors),
                unexpected=sum(len(e["unexpected"]) for e in errors), errors=errors)


def time_per_answer(corpus: list[dict], extract, repeats: int) -> dict:
    times = []
    for entry in corpus:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            extract(entry["answer"])
            best = min(best, time.perf_counter() - t0)
        times.append(best * 1e3)
    return dict(median_ms=statistics.median(times), max_ms=max(times),
                mean_ms=statistics.fmean(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(REPO / "test/data/object_name_corpus.yaml"))
    ap.add_argument("--misses", action="store_true", help="print each answer's errors")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    corpus = yaml.safe_load(Path(args.corpus).read_text())["answers"]
    cfg = VlmConfig()
    old = load_old_parser()

    def old_extract(text: str) -> list[str]:
        spans = [(i, i + 1) for i in range(len(text))]
        return [o.name for o in old.parse_object_names(
            text, spans, max_object_words=cfg.max_object_words, max_objects=cfg.max_objects)]

    def new_extract(text: str) -> list[str]:
        return object_names.extract_object_names(text, cfg=cfg)

    t0 = time.perf_counter()
    object_names.load_spacy_pipeline()
    load_s = time.perf_counter() - t0
    subsets = {"all": corpus, "dev": [e for e in corpus if e.get("set", "dev") == "dev"],
               "heldout": [e for e in corpus if e.get("set") == "heldout"]}
    results = {}
    for label, extract in (("new", new_extract), ("old", old_extract)):
        res = {name: score(entries, extract) for name, entries in subsets.items()}
        res["time"] = time_per_answer(corpus, extract, args.repeats)
        results[label] = res
        for name in subsets:
            r = res[name]
            print(f"{label} {name:7s}: recall {r['recall']:.3f} precision {r['precision']:.3f} "
                  f"(answers {len(subsets[name])}, expected {r['expected']}, returned "
                  f"{r['returned']}, found {r['found']}, missed {r['missed']}, unexpected "
                  f"{r['unexpected']})")
        print(f"{label} per answer: median {res['time']['median_ms']:.2f} ms, mean "
              f"{res['time']['mean_ms']:.2f} ms, max {res['time']['max_ms']:.2f} ms")
        if args.misses:
            for e in res["all"]["errors"]:
                print(f"  [{e['style']}] {e['answer'][:90]!r}\n      missed {e['missed']} "
                      f"unexpected {e['unexpected']}")
    styles = sorted({e["style"] for e in corpus})
    per_style = {s: sum(e["style"] == s for e in corpus) for s in styles}
    def summary(r: dict) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                if k != "errors"}

    print(json.dumps(dict(
        answers={name: len(entries) for name, entries in subsets.items()},
        per_style=per_style, spacy_load_s=round(load_s, 2),
        **{label: {**{name: summary(res[name]) for name in subsets},
                   "time_ms": {k: round(v, 3) for k, v in res["time"].items()}}
           for label, res in results.items()})))


if __name__ == "__main__":
    main()
