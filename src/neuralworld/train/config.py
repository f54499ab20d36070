"""What a training run is asked to do: presets, stages and the other choices, as config.

No torch here: the CLI takes its ``--preset``, ``--stage``, ``--model``, ``--precision``
and ``--sampler`` choices from this module and starts in a fraction of a second
(``python -X importtime -c "import neuralworld.cli"`` shows it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

STAGES = ("autoencoder", "dynamics", "distill", "rollout")
"""A world's training stages, in the order they run (``neuralworld train --stage``)."""
MODELS = ("world", "warp", "field", "rnn", "unet-baseline")
"""What ``neuralworld train --model`` trains: our latent world, the warp-and-paint world
(model/warp.py), the field world (model/field.py), the recurrent world (model/rnn.py: World
Models' VAE and MDN-LSTM), or the DIAMOND-style baseline (model/unet.py)."""
PRECISIONS = ("auto", "fp32", "bf16")
"""Autocast while training: auto (bf16 where the hardware has it), fp32 or bf16."""
STUDENT_STEPS = (1, 2)
"""Euler steps (network calls) per frame a ``fast`` student can be distilled for."""
SAMPLER_NAMES = ("quality", "fast", "euler2")
"""The sampler presets by name: the keys of ``model.sampler.SAMPLERS`` (a test keeps them
equal), here without torch for the CLI's ``--sampler`` choices."""


class TrainingError(Exception):
    """Training cannot start or go on; the message says why and what is intact."""


@dataclass
class StageConfig:
    steps: int
    """Optimizer steps for this stage."""
    batch_size: int
    """Global batch (all processes and accumulation steps together)."""
    lr: float
    """Peak learning rate (AdamW), after a linear warm-up; cosine decay to 10% at the end."""
    warmup: int = 100
    weight_decay: float = 0.01
    ema_decay: float = 0.999


@dataclass
class TrainConfig:
    preset: str = "tiny"
    stages: tuple[str, ...] = STAGES
    autoencoder: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(300, 16, 1e-3))
    dynamics: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(300, 8, 5e-4))
    distill: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(0, 8, 1e-4))
    """The ``fast`` sampler's student (0 steps: no student; ``fast`` then plays as ``euler2``)."""
    distill_student_steps: int = 1
    """Euler steps (network calls) per frame the student is distilled for: ``STUDENT_STEPS``."""
    distill_teacher: str = "quality"
    """The teacher's sampler preset (``model.sampler.SAMPLERS``): what the student imitates."""
    rollout: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(0, 8, 3e-5))
    """The student fine-tuned on its own rollouts (0 steps: the distilled student as it is)."""
    rollout_frames: int = 8
    """Most frames the student plays itself before the frame it is taught; its clips are
    ``clip_frames + rollout_frames`` long."""
    rollout_real_weight: float = 1.0
    """Weight of the pull towards the recorded frame (``objective.rollout_loss``)."""
    rollout_teacher_weight: float = 1.0
    """Weight of the pull towards the teacher's frame from the same memory (0: no teacher calls)."""
    init_autoencoder: str | None = None
    """A trained world (bundle or run folder) whose autoencoder this run starts from: the
    autoencoder stage fine-tunes it for its steps (0: use it as it is). The autoencoder
    only knows how frames look, not the controls, so a world of the same look (another
    map, footage of the same game) skips the slowest stage on a CPU."""
    init_world: str | None = None
    """A trained world (bundle or run folder) of the same preset and controls that this run
    starts from: its autoencoder, dynamics and fast student begin each stage, which then
    trains for its steps (0: keep that network as it is). Continues a world, fine-tunes it
    on new data, or runs a later stage (``rollout``) on a shipped world."""
    clip_frames: int = 6
    """Frames per dynamics training clip (the window read is one step longer)."""
    grad_accum: int = 1
    """Micro-batches per process per step: global batch = world_size x grad_accum x micro."""
    held_out: float = 0.1
    """Fraction of episodes kept out of training for validation."""
    seed: int = 0
    checkpoint_every: int = 200
    validate_every: int = 200
    log_every: int = 10
    precision: str = "auto"
    """``PRECISIONS``: auto (bf16 where the hardware has it), fp32 or bf16."""
    device: str = "auto"
    model: str = "world"
    """``MODELS``: "unet-baseline" trains the frame-stacking U-Net with the dynamics stage's
    steps, batch and learning rate (the same budget) instead of autoencoder + dynamics;
    "warp" trains the warp-and-paint world's one stage (``warp``)."""
    warp: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(300, 8, 5e-4))
    """The warp-and-paint world's generator (and critic, at ``warp_critic_lr`` x its rate)."""
    warp_unroll: int = 6
    """Most frames the warp generator plays itself in one training sample (1: teacher forcing only)."""
    warp_unroll_start: float = 0.1
    """Fraction of the warp stage trained on the next frame alone before the unroll grows."""
    warp_adv_start: float = 0.02
    """Fraction of the warp stage before the critic ramps in (over a further tenth)."""
    warp_critic_lr: float = 0.4
    """The critic's learning rate as a fraction of the generator's."""
    warp_objective: dict[str, float] = dataclasses.field(default_factory=dict)
    """Overrides of the warp network's objective (``WARP_OBJECTIVE``: its loss weights,
    context noise, low-pass), e.g. {"mask_weight": 0.02}; the rest is the preset's."""
    field: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(300, 16, 2e-3, weight_decay=0.0))
    """The field world's renderer (and its critic at half its rate, with ``adv_weight`` > 0)."""
    field_objective: dict[str, float] = dataclasses.field(default_factory=dict)
    """Overrides of the field network's objective (``FIELD_OBJECTIVE``), e.g. {"adv_weight": 0.02}."""
    field_renderer: str | None = None
    """The field network's renderer ("column" or "ray", ``FieldNetConfig.renderer``); None: the preset's."""
    vae: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(300, 32, 1e-3, weight_decay=0.0))
    """The recurrent world's VAE (its first stage)."""
    rnn: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(300, 32, 1e-3, weight_decay=0.0))
    """The recurrent world's MDN-LSTM (its second stage), on the VAE's codes of whole stretches of episodes."""
    rnn_sequence: int = 200
    """Most steps in one of the MDN-LSTM's training sequences (an episode, or a stretch of a longer one)."""
    rnn_hidden: int | None = None
    """The recurrent world's LSTM memory (``RNNNetConfig.hidden``); None: the preset's."""
    rnn_death_horizon: int | None = None
    """The recurrent world's termination head learns "the episode ends within this many steps"
    (``RNNNetConfig.death_horizon``); None: the preset's (1)."""
    warp_chain: int = 48
    """Most frames a warp training sample's rollout stream plays itself before it starts again
    from recorded memory: each step goes on from where the stream's last step ended (its own
    frames as memory), each stream's length drawn in [0, warp_chain]. 0: every sample starts
    from recorded memory."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = list(self.stages)
        return d

    def without_steps(self, stage: str) -> "TrainConfig":
        """This config with 0 steps for ``stage``: running it then only loads that stage's
        network (from the run's checkpoint, or what ``init_world`` gives)."""
        return dataclasses.replace(self, **{stage: dataclasses.replace(getattr(self, stage), steps=0)})


def _preset(clip_frames: int, *stages: tuple[int, int, float, int]) -> dict[str, Any]:
    """A preset's training half: (steps, batch, lr, warm-up) of each stage in ``STAGES`` order,
    and the dynamics' clip length."""
    return {**{stage: StageConfig(steps, batch, lr, warmup=warmup) for stage, (steps, batch, lr, warmup) in zip(STAGES, stages)},
            "clip_frames": clip_frames}


# the training half of each preset (the network half is model/config.PRESETS; docs/experiments.md
# has what the tiny preset's steps were chosen by)
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    #          clip  autoencoder              dynamics                   distill                 rollout
    "tiny": _preset(6, (4000, 16, 1e-3, 50), (3000, 8, 5e-4, 50), (600, 8, 1e-4, 20), (0, 8, 5e-5, 20)),
    "mini": _preset(8, (4000, 16, 1e-3, 50), (20_000, 16, 4e-4, 200), (1500, 16, 1e-4, 50), (0, 16, 5e-5, 20)),
    "small": _preset(16, (20_000, 32, 5e-4, 500), (60_000, 32, 3e-4, 1000), (4000, 32, 5e-5, 100), (0, 32, 3e-5, 50)),
    "base": _preset(32, (50_000, 64, 4e-4, 1000), (200_000, 64, 2e-4, 2000), (10_000, 64, 5e-5, 200), (0, 64, 3e-5, 100)),
}
WARP_PRESETS: dict[str, StageConfig] = {
    # the warp world's one stage: (steps, batch, lr, warm-up)
    "tiny": StageConfig(1500, 8, 5e-4, warmup=50, weight_decay=0.0),
    "mini": StageConfig(20_000, 16, 5e-4, warmup=200, weight_decay=0.0),
    "small": StageConfig(60_000, 32, 4e-4, warmup=500, weight_decay=0.0),
    "base": StageConfig(200_000, 64, 3e-4, warmup=1000, weight_decay=0.0),
}
FIELD_PRESETS: dict[str, StageConfig] = {
    # the field world's one stage: (steps, batch, lr, warm-up)
    "tiny": StageConfig(300, 16, 2e-3, warmup=20, weight_decay=0.0),
    "mini": StageConfig(5000, 32, 2e-3, warmup=250, weight_decay=0.0),
    "small": StageConfig(10_000, 32, 2e-3, warmup=500, weight_decay=0.0),
    "base": StageConfig(40_000, 64, 2e-3, warmup=1000, weight_decay=0.0),
}
RNN_PRESETS: dict[str, tuple[StageConfig, StageConfig]] = {
    # the recurrent world's two stages: VAE, MDN-LSTM (steps, batch, lr, warm-up)
    "tiny": (StageConfig(300, 32, 1e-3, warmup=20, weight_decay=0.0), StageConfig(300, 16, 1e-3, warmup=20, weight_decay=0.0)),
    "mini": (StageConfig(6000, 64, 1e-3, warmup=100, weight_decay=0.0), StageConfig(3000, 32, 1e-3, warmup=100, weight_decay=0.0)),
    "small": (StageConfig(10_000, 100, 1e-3, warmup=200, weight_decay=0.0), StageConfig(6000, 64, 1e-3, warmup=200, weight_decay=0.0)),
    "base": (StageConfig(40_000, 128, 5e-4, warmup=1000, weight_decay=0.0), StageConfig(20_000, 64, 5e-4, warmup=500, weight_decay=0.0)),
}
FIELD_OBJECTIVE = ("adv_weight", "grid_lr_scale", "close_share", "close_depth", "player_radius", "locate_steps",
                   "locate_candidates", "bank_size", "exact_hit", "texture_cell", "texture_features", "texture_table",
                   "texture_snap", "texture_footprint")
"""``FieldNetConfig`` fields a run may override (``--field-objective NAME=VALUE``)."""
WARP_OBJECTIVE = ("l1_weight", "adv_weight", "flow_weight", "mask_weight", "context_noise_max", "rollout_lowpass", "action_flow",
                  "flow_resolution", "integer_warp", "reveal_paint", "geometry_flow", "residual_flow", "depth_weight", "pose_weight",
                  "overlay")
"""``WarpNetConfig`` fields a run may override (``--warp-objective NAME=VALUE``): how it is
trained, and how its flow is made and applied; not the network's widths."""
PRESET_NAMES = tuple(TRAIN_PRESETS)
"""``neuralworld train --preset`` choices: the names of ``model.config.PRESETS`` too (tested)."""


def train_config(preset_name: str, **overrides: Any) -> TrainConfig:
    """A preset's TrainConfig with ``overrides`` (None leaves a field as the preset has it;
    ``"dynamics.steps"`` reaches into a stage)."""
    if preset_name not in TRAIN_PRESETS:
        raise TrainingError(f"unknown preset {preset_name!r}; choose from {sorted(TRAIN_PRESETS)}")
    base = dict(TRAIN_PRESETS[preset_name])
    for stage in STAGES:
        if stage in base:
            base[stage] = dataclasses.replace(base[stage])
    cfg = TrainConfig(preset=preset_name, warp=dataclasses.replace(WARP_PRESETS[preset_name]),
                      field=dataclasses.replace(FIELD_PRESETS[preset_name]), vae=dataclasses.replace(RNN_PRESETS[preset_name][0]),
                      rnn=dataclasses.replace(RNN_PRESETS[preset_name][1]), **base)
    for key, value in overrides.items():
        if value is None:
            continue
        if "." in key:  # "autoencoder.steps"
            stage, field = key.split(".", 1)
            setattr(getattr(cfg, stage), field, value)
        else:
            setattr(cfg, key, value)
    return cfg
