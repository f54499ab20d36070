"""The one training loop: autoencoder, then latents, then dynamics; one CPU or torchrun.

    neuralworld train DATA --preset tiny --out RUN            # one process
    torchrun --nproc_per_node=N -m neuralworld.cli train ...  # N processes (gloo on CPU, NCCL on GPU)

A run folder::

    RUN/
      run.json                    dataset, TrainConfig and WorldConfig of the run (checked on --resume)
      autoencoder.safetensors     training state: weights, EMA, optimizer, step (state_io: no pickle)
      latents.safetensors         the dataset encoded once by the EMA encoder, normalised, fp16
      dynamics.safetensors        training state of the dynamics
      distill.safetensors         training state of the fast sampler's few-step student
      rollout.safetensors         training state of that student on its own rollouts (objective.rollout_loss)
      metrics.jsonl               one JSON line per logged step and per validation
      tb/                         TensorBoard scalars and sample grids (real | generated)
      world/                      the inference bundle (config.json + model.safetensors), EMA weights
      summary.json                what ``train`` returns: time, processes, the bundle
      baseline.safetensors        with --model unet-baseline: the U-Net's training state (no autoencoder,
                                  no latents: it trains on pixel windows; see train_baseline)
      warp.safetensors            with --model warp: the warp-and-paint generator, its critic, EMA and
                                  both optimizers (pixel windows; see train_warp)

The package, top to bottom (each module imports only those below it):

    stages.py    the world's stages and ``train``
    warp.py      the warp-and-paint world's stage and ``train_warp``
    field.py     the field world's fitted geometry, its stage and ``train_field``
    rnn.py       the recurrent world's two stages (VAE, MDN-LSTM) and ``train_rnn``
    baseline.py  the U-Net baseline and ``train_baseline``
    run.py       a run from start to finish: processes, dataset, run.json, summary, bundle
    data.py      frames, windows and latent clips of a dataset; the latent cache
    loop.py      processes, precision, EMA, checkpoints, the logger, ``run_stage``
    config.py    presets, stages and choices (no torch: the CLI imports it)

Names are imported on first use (PEP 562), so ``neuralworld.train.config`` costs no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy __getattr__ below returns, for type checkers
    from neuralworld.train.baseline import train_baseline
    from neuralworld.train.warp import train_warp
    from neuralworld.train.field import train_field
    from neuralworld.train.rnn import train_rnn
    from neuralworld.train.config import (
        MODELS, PRESET_NAMES, STAGES, TRAIN_PRESETS, StageConfig, TrainConfig, TrainingError, train_config,
    )
    from neuralworld.train.data import encode_dataset, load_latents, open_training_data, save_latents, weights_sha256
    from neuralworld.train.loop import Dist, setup_distributed
    from neuralworld.train.stages import (
        play_open_loop, train, train_autoencoder, train_distill, train_dynamics, train_rollout,
    )

_WHERE = {
    "config": ("MODELS", "PRESET_NAMES", "STAGES", "TRAIN_PRESETS", "StageConfig", "TrainConfig", "TrainingError",
               "train_config"),
    "loop": ("Dist", "setup_distributed"),
    "data": ("encode_dataset", "load_latents", "open_training_data", "save_latents", "weights_sha256"),
    "stages": ("play_open_loop", "train", "train_autoencoder", "train_distill", "train_dynamics", "train_rollout"),
    "baseline": ("train_baseline",),
    "warp": ("train_warp",),
    "field": ("train_field",),
    "rnn": ("train_rnn",),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'neuralworld.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"neuralworld.train.{module}"), name)
