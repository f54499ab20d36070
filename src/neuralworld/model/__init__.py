"""Pure model modules: config, autoencoder, dynamics, objective, sampler.

Nothing here holds rollout state across calls except the explicit
``DynamicsCache`` a caller owns; the session lives above this package.
"""

from neuralworld.model.autoencoder import Autoencoder, autoencoder_loss, frames_to_tensor, tensor_to_frames
from neuralworld.model.config import (
    PRESETS,
    AutoencoderConfig,
    ConfigError,
    DynamicsConfig,
    WorldConfig,
    preset,
)
from neuralworld.model.dynamics import Dynamics, DynamicsCache, DynamicsOutput
from neuralworld.model.objective import LatentClip, dynamics_loss
from neuralworld.model.sampler import SAMPLERS, SamplerPreset, sample_euler, sample_heun

__all__ = [
    "PRESETS",
    "SAMPLERS",
    "Autoencoder",
    "AutoencoderConfig",
    "ConfigError",
    "Dynamics",
    "DynamicsCache",
    "DynamicsConfig",
    "DynamicsOutput",
    "LatentClip",
    "SamplerPreset",
    "WorldConfig",
    "autoencoder_loss",
    "dynamics_loss",
    "frames_to_tensor",
    "preset",
    "sample_euler",
    "sample_heun",
    "tensor_to_frames",
]
