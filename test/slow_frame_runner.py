"""Test helper: ``vlsam-node-runner`` whose pipeline has one stage slowed down on purpose.

    python test/slow_frame_runner.py STAGE DELAY_S [run_node arguments...]

STAGE is ``vlm`` (every decoder step of generation sleeps), ``encoder`` (every block of
the SAM image encoder sleeps) or ``decoder`` (every SAM decoder call sleeps). The real
models load through the production loaders; only the sleeps are added, so a frame takes as
long as a big model on a slow machine would. Prints ``SLOW STEP <n> <stage>`` (flushed) each
time a slowed step starts (n = 1, 2, ...), then behaves exactly like the runner: SIGINT or
SIGTERM stops it.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    stage, delay = sys.argv[1], float(sys.argv[2])
    from vlsam_ros.ros import node as node_module
    from vlsam_ros.core.pipeline import build_pipeline
    from vlsam_ros.ros.run_node import main as run_node_main

    entered: list[int] = []

    def slow_down(*_args, **_kwargs) -> None:
        entered.append(1)
        print(f"SLOW STEP {len(entered)} {stage}", flush=True)
        time.sleep(delay)

    def slow_factory(cfg):
        pipe = build_pipeline(cfg)
        if stage == "vlm":
            pipe.vlm.language_model().register_forward_pre_hook(slow_down, with_kwargs=True)
        elif stage == "encoder":
            for block in pipe.segmenter.model.image_encoder.layers:
                block.register_forward_pre_hook(slow_down)
        elif stage == "decoder":
            real_segment = pipe.segmenter.segment

            def segment(*args, **kwargs):
                slow_down()
                return real_segment(*args, **kwargs)

            pipe.segmenter.segment = segment
        else:
            raise SystemExit(f"unknown stage {stage!r}")
        return pipe

    node_module.default_pipeline_factory = slow_factory
    return run_node_main(sys.argv[3:])


if __name__ == "__main__":
    from vlsam_ros.ros.spin import exit_process

    exit_process(main())  # as the vlsam-node-runner command does (console_main)
