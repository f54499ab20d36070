"""Model configuration: the dataclasses a bundle's ``config.json`` holds.

A world is rebuilt from its config alone (nanoGPT's ``GPTConfig`` habit), so every
number that shapes a tensor lives here, together with the loss weights that made
it (so a run's config says how it was trained). ``WorldConfig.from_dict`` rejects
keys it does not know (a typo must not silently become a default) and fills keys
that are missing with defaults, so bundles written before a field existed still
load (nanochat's habit).

Named sizes live in ``PRESETS``; ``preset(name, spec=..., resolution=...)``
returns a fresh copy bound to a dataset's controls.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from neuralworld.actions import ActionSpec

CONFIG_VERSION = 1
SPATIAL_COMPRESSION = 8  # the autoencoder halves the resolution three times


class ConfigError(ValueError):
    """A config is inconsistent, or its JSON has keys this version does not know."""


@dataclass
class AutoencoderConfig:
    """Frames (3, H, W) in [-1, 1] <-> latents (latent_channels, H/8, W/8)."""

    latent_channels: int = 12
    """Channels of the latent grid; more keeps detail, fewer is easier for the dynamics."""
    encoder_channels: tuple[int, ...] = (32, 64, 128, 128)
    """Widths at 1/1, 1/2, 1/4, 1/8 of the resolution. The encoder runs once per dataset frame."""
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16)
    """Widths at 1/8, 1/4, 1/2, 1/1. The decoder runs every played frame: keep it narrow where it is wide."""
    encoder_blocks: int = 2
    """Residual blocks per encoder stage."""
    decoder_blocks: int = 1
    """Residual blocks per decoder stage."""
    # -- training objective (weight-free terms only) ---------------------------
    l1_weight: float = 1.0
    gradient_weight: float = 1.0
    """L1 between image gradients (finite differences): sharp edges."""
    frequency_weight: float = 0.5
    """L1 between FFT magnitudes: keeps high-frequency texture energy."""
    latent_weight: float = 1e-3
    """Penalty on mean(z^2). Together with ``latent_noise`` it is a KL with a fixed posterior
    variance: it keeps latents near unit scale instead of drifting."""
    latent_noise: float = 0.1
    """Std of Gaussian noise added to latents before decoding in training, so the decoder
    forgives the small latent errors the dynamics makes."""

    def validate(self) -> None:
        if self.latent_channels < 1:
            raise ConfigError(f"autoencoder.latent_channels must be >= 1, got {self.latent_channels}")
        if len(self.encoder_channels) != 4 or len(self.decoder_channels) != 4:
            raise ConfigError("autoencoder encoder_channels and decoder_channels need 4 widths (1/1, 1/2, 1/4, 1/8)")
        if min(self.encoder_channels + self.decoder_channels) < 1:
            raise ConfigError("autoencoder channel widths must be positive")
        if self.encoder_blocks < 0 or self.decoder_blocks < 0:
            raise ConfigError("autoencoder block counts must be >= 0")


@dataclass
class DynamicsConfig:
    """The action-conditioned frame-causal latent diffusion transformer."""

    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    mlp_ratio: float = 3.0
    cond_dim: int = 128
    """Width of the per-frame conditioning (noise level + action) that feeds adaLN."""
    patch_size: int = 2
    """Latent patch per token: a 16x16 latent with 2x2 patches gives 64 tokens per frame."""
    full_frames: int = 4
    """K: frames seen at full token resolution, the current frame included."""
    memory_frames: int = 32
    """M: frames seen at all, the current frame included; frames K..M-1 back are pooled."""
    memory_pool: int = 2
    """Older frames' keys/values are average-pooled over memory_pool x memory_pool tokens."""
    prev_frame: bool = False
    """Frame stacking: each token also sees the same patch of the previous frame's latent
    (see model/dynamics.py). Every preset turns it on; False is what bundles written
    before it existed hold (their config has no such key)."""
    # -- training objective (objective.dynamics_loss reads these) --------------
    noise_schedule: str = "logit_normal"
    """How per-frame noise levels t are drawn: "logit_normal" (SD3) or "uniform"."""
    logit_mean: float = 0.0
    logit_std: float = 1.0
    autoregressive_prob: float = 0.5
    """Fraction of clips trained in the playing regime: every frame but the last is
    context at a low noise level, the last is the target. The rest use independent
    per-frame levels (diffusion forcing)."""
    context_noise_max: float = 0.1
    """Context frames get noise levels in [0, context_noise_max] (GameNGen's augmentation)."""
    reward_weight: float = 0.1
    termination_weight: float = 0.1

    def validate(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"dynamics.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if min(self.d_model, self.n_layers, self.n_heads, self.cond_dim, self.patch_size, self.memory_pool) < 1:
            raise ConfigError("dynamics sizes must be positive")
        if not 1 <= self.full_frames <= self.memory_frames:
            raise ConfigError(
                f"dynamics needs 1 <= full_frames <= memory_frames, got {self.full_frames} and {self.memory_frames}"
            )
        if self.memory_frames < 2:
            raise ConfigError("dynamics.memory_frames must be >= 2 (the current frame and at least one past frame)")
        if self.noise_schedule not in ("logit_normal", "uniform"):
            raise ConfigError(f"dynamics.noise_schedule must be 'logit_normal' or 'uniform', got {self.noise_schedule!r}")
        if not 0.0 <= self.autoregressive_prob <= 1.0 or not 0.0 <= self.context_noise_max <= 1.0:
            raise ConfigError("dynamics.autoregressive_prob and context_noise_max must be in [0, 1]")


class JsonConfig:
    """``to_json`` of a config whose ``to_dict`` gives plain JSON values."""

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)  # type: ignore[attr-defined]


@dataclass
class WorldConfig(JsonConfig):
    """Everything needed to rebuild a world's networks: resolution, controls, both halves."""

    resolution: tuple[int, int] = (128, 128)
    """(H, W) of frames; both divisible by 8 * patch_size * memory_pool."""
    action_size: int = 0
    """Length of a normalised action vector; 0 in a preset until bound to an ActionSpec."""
    action_spec: dict[str, Any] | None = None
    """The ActionSpec as JSON (``ActionSpec.to_json_dict``), so a bundle carries its controls."""
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    version: int = CONFIG_VERSION

    # -- derived shapes ------------------------------------------------------------
    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of the latent grid."""
        return (self.resolution[0] // SPATIAL_COMPRESSION, self.resolution[1] // SPATIAL_COMPRESSION)

    @property
    def latent_channels(self) -> int:
        return self.autoencoder.latent_channels

    @property
    def tokens_per_frame(self) -> int:
        p = self.dynamics.patch_size
        return (self.latent_size[0] // p) * (self.latent_size[1] // p)

    @property
    def spec(self) -> ActionSpec | None:
        return None if self.action_spec is None else ActionSpec.from_json_dict(self.action_spec)

    def for_spec(self, spec: ActionSpec) -> "WorldConfig":
        """A copy bound to ``spec`` (sets action_spec and action_size)."""
        return dataclasses.replace(copy.deepcopy(self), action_spec=spec.to_json_dict(), action_size=spec.size)

    def validate(self) -> "WorldConfig":
        self.autoencoder.validate()
        self.dynamics.validate()
        h, w = self.resolution
        unit = SPATIAL_COMPRESSION * self.dynamics.patch_size * self.dynamics.memory_pool
        if h < unit or w < unit or h % unit or w % unit:
            raise ConfigError(
                f"resolution {h}x{w} must be a multiple of {unit} (8x autoencoder x patch_size "
                f"{self.dynamics.patch_size} x memory_pool {self.dynamics.memory_pool})"
            )
        if self.action_size < 1:
            raise ConfigError("action_size is 0: bind the config to a dataset's controls with .for_spec(spec)")
        if self.action_spec is not None:
            spec = ActionSpec.from_json_dict(self.action_spec)
            if spec.size != self.action_size:
                raise ConfigError(f"action_size {self.action_size} disagrees with action_spec ({spec.size} controls)")
        return self

    # -- JSON ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return config_dict(self, ("autoencoder", "dynamics"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WorldConfig":
        if not isinstance(d, Mapping):
            raise ConfigError(f"a world config must be a JSON object, got {type(d).__name__}")
        version = int(d.get("version", CONFIG_VERSION))
        if version > CONFIG_VERSION:
            raise ConfigError(f"config version {version} is newer than this neuralworld reads ({CONFIG_VERSION}): upgrade")
        top = dict(d)
        ae = _dataclass_from(AutoencoderConfig, top.pop("autoencoder", {}), "autoencoder")
        dyn = _dataclass_from(DynamicsConfig, top.pop("dynamics", {}), "dynamics")
        cfg = _dataclass_from(cls, top, "world", skip=("autoencoder", "dynamics"))
        cfg.autoencoder, cfg.dynamics = ae, dyn
        cfg.resolution = tuple(int(x) for x in cfg.resolution)  # type: ignore[assignment]
        cfg.version = CONFIG_VERSION
        return cfg

    @classmethod
    def from_json(cls, text: str) -> "WorldConfig":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"world config is not valid JSON: {e}") from None


def config_dict(cfg: Any, parts: tuple[str, ...]) -> dict[str, Any]:
    """A world config as plain JSON values: tuples become lists, in its ``parts`` too."""
    d = dataclasses.asdict(cfg)
    d["resolution"] = list(cfg.resolution)
    for sub in parts:
        d[sub] = {k: list(v) if isinstance(v, tuple) else v for k, v in d[sub].items()}
    return d


def _dataclass_from(cls: type, values: Mapping[str, Any], where: str, skip: tuple[str, ...] = ()) -> Any:
    """Build ``cls`` from ``values``: unknown keys are an error, missing keys take defaults,
    every value must be of its field's annotated type (an int where a float is annotated
    is fine), lists become tuples where the default is a tuple."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} config must be a JSON object, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {where} config keys {unknown}; known keys are {sorted(fields)}")
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation this module cannot resolve: no type checks
        hints = {}
    kwargs = {}
    defaults = cls()
    for name, value in values.items():
        if name in hints and not _is_of_type(value, hints[name]):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:59] + "…"
            raise ConfigError(f"{where} config key {name!r} must be {fields[name].type}, got {shown}")
        if isinstance(getattr(defaults, name), tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _is_of_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's annotation (bool is not a number here; a list
    fits a tuple). Annotations of other kinds are not checked."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_is_of_type(value, a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_is_of_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(_is_of_type(v, a) for v, a in zip(value, args))
    if origin is list:
        return isinstance(value, list) and (not args or all(_is_of_type(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict) and (len(args) != 2 or all(_is_of_type(v, args[1]) for v in value.values()))
    return True


# ---------------------------------------------------------------------------
# named sizes: the same code with other numbers
# ---------------------------------------------------------------------------
TINY_AUTOENCODER = AutoencoderConfig(
    latent_channels=8, encoder_channels=(16, 32, 64, 64), decoder_channels=(64, 32, 16, 8), encoder_blocks=1, decoder_blocks=1
)
"""tiny's and mini's: 64x64 frames <-> 8x8x8 latents (``preset`` hands out deep copies)."""

PRESETS: dict[str, WorldConfig] = {
    # CI and a first world in minutes on 2 CPU cores: 64x64, 8x8x8 latents, 16 tokens/frame;
    # mini, a world trained in hours on 2 CPU cores: tiny's autoencoder at 64x64 (16 tokens/frame),
    # a ~2M-parameter dynamics with 4 full-resolution frames and 16 frames of memory
    **{name: WorldConfig(resolution=(64, 64), autoencoder=TINY_AUTOENCODER, dynamics=DynamicsConfig(
        d_model=d, n_layers=layers, n_heads=4, mlp_ratio=3.0, cond_dim=cond, full_frames=full, memory_frames=memory,
        prev_frame=True))
       for name, d, layers, cond, full, memory in (("tiny", 128, 3, 64, 2, 8), ("mini", 192, 4, 96, 4, 16))},
    # the shipped world on a GPU: 128x128, 16x16x12 latents, 64 tokens/frame, ~5M-parameter dynamics
    "small": WorldConfig(
        resolution=(128, 128),
        autoencoder=AutoencoderConfig(),
        dynamics=DynamicsConfig(prev_frame=True),
    ),
    # a single GPU: wider, deeper, more latent channels, longer full-resolution memory
    "base": WorldConfig(
        resolution=(128, 128),
        autoencoder=AutoencoderConfig(
            latent_channels=16,
            encoder_channels=(64, 128, 256, 256),
            decoder_channels=(192, 96, 48, 24),
            encoder_blocks=2,
            decoder_blocks=2,
        ),
        dynamics=DynamicsConfig(
            d_model=512, n_layers=12, n_heads=8, mlp_ratio=4.0, cond_dim=256, full_frames=8, memory_frames=32,
            prev_frame=True,
        ),
    ),
}


def preset(name: str, spec: ActionSpec | None = None, resolution: tuple[int, int] | None = None) -> WorldConfig:
    """A fresh copy of a named preset, optionally bound to ``spec`` and a resolution."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[name])
    if resolution is not None:
        cfg.resolution = (int(resolution[0]), int(resolution[1]))
    if spec is not None:
        cfg = cfg.for_spec(spec)
    return cfg
