"""Evaluation: how good a world is, measured, always beside baselines.

``metrics``  PSNR and SSIM on uint8 frames (no downloaded networks)
``fidelity`` ``evaluate(world, data)``: teacher-forced next frame and open-loop
             rollouts on held-out episodes -> metrics.json + side-by-side video

Everything here drives worlds through ``WorldSession`` only.
"""

from neuralworld.eval.fidelity import EvalError, evaluate, summarize
from neuralworld.eval.metrics import psnr, ssim

__all__ = ["EvalError", "evaluate", "psnr", "ssim", "summarize"]
