"""What the pixel-space worlds share (the U-Net baseline, model/unet.py; the warp-and-paint
world, model/warp.py): frames in [-1, 1] are their latents, their config has the latent
world's outer shape, and their memory is a shift register of the last frames.

So ``WorldSession``, eval, play and bench drive them unchanged: ``PixelCodec`` stands in for
the autoencoder, and each network's cache rolls its rings with ``shift_in``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
import torch.nn as nn

from neuralworld.actions import ActionSpec
from neuralworld.model.config import ConfigError, JsonConfig, _dataclass_from, config_dict


class PixelCodec(nn.Module):
    """Identity stand-in for the autoencoder: frames in [-1, 1] are the latents.

    Holds one empty parameter so ``next(codec.parameters()).device`` (how eval finds
    the autoencoder's device) works; ``encoder`` / ``decoder`` are identities with
    no parameters (bench counts them)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Identity()
        self.decoder = nn.Identity()
        self.device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return frames  # (B, 3, H, W)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1.0, 1.0)  # (B, 3, H, W)

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames  # the reconstruction is exact: eval's "autoencoder" ceiling is infinite PSNR


@dataclass
class PixelWorldConfig(JsonConfig):
    """What a pixel-space bundle's config.json holds under "world": the outer shape of
    ``WorldConfig`` (resolution, controls) so eval, play and bench read it alike. A
    subclass names its network's config (``dynamics``) and how many halvings it makes."""

    resolution: tuple[int, int] = (64, 64)
    action_size: int = 0
    action_spec: dict[str, Any] | None = None
    dynamics: Any = None
    """The network's config; named ``dynamics`` because it plays the dynamics' role."""

    NAME: ClassVar[str] = "pixel world"

    def levels(self) -> int:
        """Halvings of H and W the network makes (its config's ``levels()``): the resolution
        must divide by 2 ** levels."""
        return int(self.dynamics.levels())

    @property
    def spec(self) -> ActionSpec | None:
        return None if self.action_spec is None else ActionSpec.from_json_dict(self.action_spec)

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.resolution  # pixels are the latents

    @property
    def latent_channels(self) -> int:
        return 3

    def for_spec(self, spec: ActionSpec) -> "PixelWorldConfig":
        return dataclasses.replace(copy.deepcopy(self), action_spec=spec.to_json_dict(), action_size=spec.size)

    def validate(self) -> "PixelWorldConfig":
        self.dynamics.validate()
        h, w = self.resolution
        unit = 2 ** self.levels()
        if h < unit or w < unit or h % unit or w % unit:
            raise ConfigError(f"resolution {h}x{w} must be a multiple of {unit} ({self.NAME}: {self.levels()} halvings)")
        if self.action_size < 1:
            raise ConfigError("action_size is 0: bind the config to a dataset's controls with .for_spec(spec)")
        if self.action_spec is not None and ActionSpec.from_json_dict(self.action_spec).size != self.action_size:
            raise ConfigError(f"action_size {self.action_size} disagrees with action_spec")
        return self

    def to_dict(self) -> dict[str, Any]:
        return config_dict(self, ("dynamics",))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PixelWorldConfig":
        if not isinstance(d, Mapping):
            raise ConfigError(f"a {cls.NAME} config must be a JSON object, got {type(d).__name__}")
        top = dict(d)
        net_cls = cls.__dataclass_fields__["dynamics"].default_factory  # type: ignore[misc]
        net = _dataclass_from(net_cls, top.pop("dynamics", {}), cls.NAME)
        cfg = _dataclass_from(cls, top, cls.NAME, skip=("dynamics",))
        cfg.dynamics = net
        cfg.resolution = tuple(int(x) for x in cfg.resolution)  # type: ignore[assignment]
        return cfg


def pixel_preset(cls: type, presets: Mapping[str, Any], name: str, spec: ActionSpec | None,
                 resolution: tuple[int, int]) -> Any:
    """``cls`` (a ``PixelWorldConfig``) with a deep copy of ``presets[name]`` as its network, at
    ``resolution``, bound to ``spec`` when given."""
    if name not in presets:
        raise ConfigError(f"unknown {cls.NAME} preset {name!r}; choose from {sorted(presets)}")
    cfg = cls(resolution=(int(resolution[0]), int(resolution[1])), dynamics=copy.deepcopy(presets[name]))
    return cfg.for_spec(spec) if spec is not None else cfg


def shift_in(ring: torch.Tensor, new: torch.Tensor, empty: torch.Tensor) -> None:
    """Roll a cache ring (B, n, ...) one slot towards the past and write ``new`` (B, ...) last;
    elements that held nothing (``empty``, (B,) bool) get ``new`` in every slot (a world that
    stood still before its first frame)."""
    ring[:, :-1] = ring[:, 1:].clone()
    ring[:, -1] = new.to(ring.dtype)
    ring[empty] = new[empty].unsqueeze(1).to(ring.dtype)
