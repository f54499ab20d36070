"""Evaluation: how good a world is, measured, always beside baselines.

``metrics``  PSNR and SSIM on uint8 frames (no downloaded networks)
``inputs``   a world beside its dataset and the run's split; windows of real frames,
             rollouts from real context (every part below builds on it)
``fidelity`` ``evaluate(world, data)``: teacher-forced next frame and open-loop
             rollouts on held-out episodes -> metrics.json + side-by-side video
``idm``      an inverse-dynamics model trained on real pairs, scored on generated ones
``control``  the turn measured by visual odometry vs the commanded turn
``stability`` long rollouts inside the real frames' band; collapse detection
``memory``   turn 360° / walk there and back, beside real returns and random pairs
``probes``   the world played as the player plays it from its start frames: held turn,
             held forward and sharpness, beside the recorded engine's own figures
``bars``     issue 15's bars read off the report's metrics: each measure with ✓ / ✗
``report``   ``run_report``: all of it (and baselines) -> report.md + plots + metrics.json,
             drawn by ``plots`` and rendered by ``markdown`` (from metrics.json alone)

Everything here drives worlds through ``WorldSession`` only.
"""

from neuralworld.eval.fidelity import EvalError, evaluate, summarize
from neuralworld.eval.metrics import psnr, ssim

__all__ = ["EvalError", "evaluate", "psnr", "ssim", "summarize"]
