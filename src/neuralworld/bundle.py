"""Inference bundles: a trained world in two files, loaded from a path alone.

    WORLD/
      config.json          {"format": "neuralworld-bundle", "version", "name",
                            "model": the network kind (absent: "world", our transformer world;
                                     "unet-baseline": the frame-stacking U-Net, model/unet.py;
                                     "warp": model/warp.py; "field": model/field.py;
                                     "rnn": model/rnn.py),
                            "world": WorldConfig (resolution, ActionSpec, both networks)
                                     or, for the baseline, BaselineConfig,
                            "weights_sha256", "created", "training": {...}}
      model.safetensors    autoencoder.* and dynamics.* weights (EMA), latent normalisation,
                           start.frames (T, H, W, 3) uint8 + start.actions (T, A): real frames
                           a session begins from when given none (optional), start.poses
                           (T, 4): the camera poses they were seen at (optional; a field
                           world starts there),
                           distilled.*: the few-step student of the dynamics (optional; same
                           architecture; config.json "distilled": {"sampler_steps": n})

No pickle anywhere: the config is JSON, the weights are safetensors, and the
weights' SHA-256 is checked before they are used, so a truncated or edited file
is refused with a message that names it. Training state (optimizer, step, RNG)
never goes in a bundle; see train.py.
"""

from __future__ import annotations

import datetime as _dt
import os
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from neuralworld.actions import ActionSpec
from neuralworld.model.autoencoder import Autoencoder
from neuralworld.model.config import ConfigError, WorldConfig
from neuralworld.model.dynamics import Dynamics
from neuralworld.model.field import MODEL_KIND as FIELD_KIND, FieldConfig, FieldNet
from neuralworld.model.unet import MODEL_KIND as BASELINE_KIND, BaselineConfig, FrameStackUNet, PixelCodec
from neuralworld.model.rnn import MODEL_KIND as RNN_KIND, VAE, MemoryRNN, RNNConfig
from neuralworld.model.warp import MODEL_KIND as WARP_KIND, WarpConfig, WarpNet
from neuralworld.state_io import StateError, atomic_write_json, load_tensors, read_json, save_tensors

FORMAT = "neuralworld-bundle"
VERSION = 1
MODEL_KINDS = ("world", BASELINE_KIND, WARP_KIND, FIELD_KIND, RNN_KIND)
"""Values of config.json's "model": which networks a bundle holds."""
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class BundleError(Exception):
    """A bundle is missing, damaged, or does not fit what it is used with."""


@dataclass
class World:
    """A loaded world: its config, controls and networks (in eval mode)."""

    config: WorldConfig | BaselineConfig | WarpConfig | FieldConfig
    autoencoder: Autoencoder | PixelCodec  # PixelCodec: pixel-space worlds' frames are their latents
    dynamics: Dynamics | FrameStackUNet
    name: str = ""
    path: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    start_frames: np.ndarray | None = None  # (T, H, W, 3) uint8: where a session begins by default
    start_actions: np.ndarray | None = None  # (T, A): the actions that led to them (ActionSpec units)
    start_poses: np.ndarray | None = None  # (T, 4): the camera poses they were seen at (x, y, z, angle), if known
    distilled: Dynamics | None = None  # the few-step student (the ``fast`` sampler's network), if trained
    distilled_steps: int = 0  # Euler steps the student was distilled for

    def network(self, which: str) -> "World":
        """This world with ``which`` ("dynamics" or "distilled") as its dynamics: a view that
        shares every module, so sessions, backends and exports drive the student unchanged."""
        if which == "dynamics":
            return self
        if which != "distilled":
            raise ValueError(f"unknown network {which!r}: 'dynamics' or 'distilled'")
        if self.distilled is None:
            raise BundleError(f"{self.name or 'this world'} has no distilled network (train the distill stage)")
        return dataclasses.replace(self, dynamics=self.distilled)

    @property
    def spec(self) -> ActionSpec:
        spec = self.config.spec
        assert spec is not None, "a bundle always carries its ActionSpec"
        return spec

    @property
    def resolution(self) -> tuple[int, int]:
        return self.config.resolution

    @property
    def model(self) -> str:
        """The network kind (``MODEL_KINDS``): "world" or "unet-baseline"."""
        return _kind_of(self.config)

    def start(self, frames: Any = None, *, sampler: Any = "fast", backend: Any = "auto", **kw: Any) -> Any:
        """A new ``WorldSession`` (session.py) from dataset frames, one image or None, playing
        what the player plays: the ``fast`` preset (the distilled student; ``euler2`` on a
        world without one) on the fastest exact backend (``backends.fastest_exact``: ONNX
        Runtime where it is installed and the world exports to ONNX, else eager PyTorch;
        ONNX exports the graphs once per session, in seconds). The slow, sharper sampler is
        ``start(sampler="quality")``; the reference path ``backend="eager"``. Other
        arguments (``actions``, ``batch_size``, ``seed``, ``device``) as ``WorldSession``'s."""
        from neuralworld.session import WorldSession  # the session sits below: it never loads bundles

        return WorldSession(self, frames, sampler=sampler, backend=backend, **kw)


_CONFIGS = {BASELINE_KIND: BaselineConfig, WARP_KIND: WarpConfig, FIELD_KIND: FieldConfig, RNN_KIND: RNNConfig}
"""The config class of each model kind but the latent world's (``WorldConfig``)."""


def _kind_of(config: Any) -> str:
    return next((kind for kind, cls in _CONFIGS.items() if isinstance(config, cls)), "world")


def build_networks(config: WorldConfig | BaselineConfig | WarpConfig | FieldConfig | RNNConfig) -> tuple[Any, Any]:
    """(autoencoder, dynamics) for a config: ``Autoencoder`` + ``Dynamics`` for a world,
    ``VAE`` + ``MemoryRNN`` for a recurrent world, ``PixelCodec`` + the pixel network for the others."""
    config.validate()
    if isinstance(config, RNNConfig):
        return VAE(config.dynamics, config.resolution), MemoryRNN.from_world(config)
    if isinstance(config, BaselineConfig):
        return PixelCodec(), FrameStackUNet.from_world(config)
    if isinstance(config, WarpConfig):
        return PixelCodec(), WarpNet.from_world(config)
    if isinstance(config, FieldConfig):
        return PixelCodec(), FieldNet.from_world(config)
    return Autoencoder(config.autoencoder), Dynamics.from_world(config)


def save_bundle(
    path: str | os.PathLike,
    config: WorldConfig | BaselineConfig,
    autoencoder: Autoencoder | PixelCodec,
    dynamics: Dynamics | FrameStackUNet,
    *,
    name: str = "",
    training: Mapping[str, Any] | None = None,
    start_frames: np.ndarray | None = None,
    start_actions: np.ndarray | None = None,
    start_poses: np.ndarray | None = None,
    distilled: Dynamics | None = None,
    distilled_steps: int = 0,
) -> Path:
    """Write a bundle; the weights first, then config.json (which names their hash).

    ``start_frames`` (T, H, W, 3) uint8 with ``start_actions`` (T, A), the actions
    that led to them, are where a session begins when it is given no frames: a
    player opens on a real place instead of a grey screen. ``distilled`` is the
    dynamics' few-step student, sampled with ``distilled_steps`` Euler steps."""
    path = Path(path)
    config.validate()
    spec = config.spec
    if spec is None:
        raise BundleError("a bundle needs its ActionSpec: build the config with .for_spec(spec)")
    tensors = {f"autoencoder.{k}": v for k, v in autoencoder.state_dict().items() if v.numel()}  # PixelCodec: none
    half = tuple(getattr(dynamics, "HALF_STORED", ()))  # big tables kept at half precision (loaded back to float32)
    tensors.update({f"dynamics.{k}": v.half() if k.startswith(half) and v.is_floating_point() else v
                    for k, v in dynamics.state_dict().items()})
    if distilled is not None:
        if distilled_steps < 1:
            raise BundleError("a distilled network needs the Euler steps it was distilled for (distilled_steps >= 1)")
        tensors.update({f"distilled.{k}": v for k, v in distilled.state_dict().items()})
    if start_frames is not None:
        frames = np.asarray(start_frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (*config.resolution, 3):
            raise BundleError(f"start frames must be uint8 (T, {config.resolution[0]}, {config.resolution[1]}, 3), got {frames.dtype} {frames.shape}")
        actions = spec.validate(np.zeros((len(frames), spec.size)) if start_actions is None else start_actions)
        if actions.shape != (len(frames), spec.size):
            raise BundleError(f"start actions must have shape ({len(frames)}, {spec.size}), got {actions.shape}")
        tensors["start.frames"] = torch.from_numpy(np.ascontiguousarray(frames))
        tensors["start.actions"] = torch.from_numpy(np.ascontiguousarray(actions))
        if start_poses is not None:
            poses = np.asarray(start_poses, np.float32)
            if poses.shape != (len(frames), 4):
                raise BundleError(f"start poses must have shape ({len(frames)}, 4) (x, y, z, angle), got {poses.shape}")
            tensors["start.poses"] = torch.from_numpy(np.ascontiguousarray(poses))
    try:
        sha = save_tensors(path / WEIGHTS_FILE, tensors, {"format": FORMAT})
        kind = {"model": _kind_of(config)} if _kind_of(config) != "world" else {}  # a world's config stays as it was
        atomic_write_json(path / CONFIG_FILE, {
            "format": FORMAT,
            "version": VERSION,
            "name": name or path.name,
            **kind,
            "world": config.to_dict(),
            "weights_sha256": sha,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "training": dict(training or {}),
            **({"distilled": {"sampler_steps": int(distilled_steps)}} if distilled is not None else {}),
        })
    except StateError as e:
        raise BundleError(str(e)) from None
    return path


def read_bundle_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such world")
    if not (path / CONFIG_FILE).is_file():
        raise BundleError(f"{path} is not a neuralworld world (no {CONFIG_FILE} inside)")
    try:
        meta = read_json(path / CONFIG_FILE, "world config")
    except StateError as e:
        raise BundleError(str(e)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{path / CONFIG_FILE} is not a neuralworld bundle config")
    if int(meta.get("version", 0)) > VERSION:
        raise BundleError(f"{path} is bundle format v{meta['version']}; this neuralworld reads up to v{VERSION}: upgrade")
    return meta


def load_bundle(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> World:
    """Open a world from its folder: config.json + model.safetensors, nothing else."""
    path = Path(path)
    meta = read_bundle_config(path)
    kind = meta.get("model", "world")
    if kind not in MODEL_KINDS:
        raise BundleError(f"{path / CONFIG_FILE}: unknown model {kind!r}; this neuralworld plays {list(MODEL_KINDS)}")
    try:
        config_cls = _CONFIGS.get(kind, WorldConfig)
        config = config_cls.from_dict(meta["world"]).validate()
    except (KeyError, ConfigError, ValueError, TypeError) as e:
        raise BundleError(f"{path / CONFIG_FILE}: bad world config ({e})") from None
    try:
        tensors, _ = load_tensors(path / WEIGHTS_FILE, sha256=meta.get("weights_sha256"), what="world weights")
    except StateError as e:
        raise BundleError(str(e)) from None
    autoencoder, dynamics = build_networks(config)
    networks: list[tuple[str, torch.nn.Module]] = [("autoencoder.", autoencoder), ("dynamics.", dynamics)]
    distilled = None
    if "distilled" in meta:
        distilled = Dynamics.from_world(config)
        networks.append(("distilled.", distilled))
    for prefix, module in networks:
        if isinstance(module, PixelCodec):
            continue  # no weights: frames are its latents
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        load_state_strict(module, part, f"{path / WEIGHTS_FILE} ({prefix.rstrip('.')})")
    for _, module in networks:
        module.to(device).eval()
    world = World(config, autoencoder, dynamics, name=str(meta.get("name", path.name)), path=str(path), meta=meta)
    if distilled is not None:
        world.distilled, world.distilled_steps = distilled, int(meta["distilled"].get("sampler_steps", 1))
    if "start.frames" in tensors:
        world.start_frames = tensors["start.frames"].numpy()
        world.start_actions = tensors["start.actions"].numpy() if "start.actions" in tensors else None
        world.start_poses = tensors["start.poses"].numpy() if "start.poses" in tensors else None
    return world


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """``load_state_dict`` with errors that say what does not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise BundleError(f"{where}: weights do not fit the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise BundleError(f"{where}: {k} has shape {tuple(v.shape)}, the config needs {tuple(own[k].shape)}")
    module.load_state_dict(dict(state))
