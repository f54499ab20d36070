"""What the stages train on: frames, pixel windows and latent clips of a dataset, and
the dataset encoded once (the latent cache).

Every reader draws its windows the same way: flat indices from the step's RNG (see
``loop``), each looked up by ``data.store.WindowSampler.window`` (``draw``). Every
reader aligns a window the same way too (``steps_into``): a dataset's ``actions[t]``
is applied after ``frames[t]``, so the action (and reward, termination) that led to
frame t is step t-1's.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neuralworld.data.store import Dataset, DatasetError, WindowSampler
from neuralworld.model.autoencoder import Autoencoder, frames_to_tensor
from neuralworld.model.objective import LatentClip
from neuralworld.state_io import StateError, load_tensors, save_tensors
from neuralworld.train.config import TrainingError
from neuralworld.train.loop import Dist

HELD_OUT_SEED = 4321
"""Seeds the draw of the held-out clips (and the baseline's windows) every validation sees."""


def open_training_data(data: str | os.PathLike) -> Dataset:
    """The dataset a run trains on, or a TrainingError that says why it can't."""
    try:
        ds = Dataset(data)
    except DatasetError as e:
        raise TrainingError(str(e)) from None
    if ds.num_episodes == 0:
        raise TrainingError(f"{data} has no complete episodes to train on")
    return ds


@dataclass
class TrainData:
    """A run's dataset, its split, and (once encoded) its latents: what every stage reads."""

    ds: Dataset
    train_episodes: list[int]
    held_episodes: list[int]
    latents: "LatentEpisodes | None" = None

    @property
    def check_episodes(self) -> list[int]:
        """Where validation looks: the held-out episodes, or the training ones when none are held out."""
        return self.held_episodes or self.train_episodes


def steps_into(first: int, n: int) -> slice:
    """The dataset steps whose actions (and rewards, terminations) led to frames
    ``first .. first + n - 1`` of an episode: each frame's previous step."""
    if first < 1:
        raise ValueError("an episode's first frame was led to by no recorded step (a no-op stands in for it)")
    return slice(first - 1, first - 1 + n)


def windows(ds: Dataset, episodes: list[int], length: int, what: str) -> WindowSampler:
    """Every window of ``length`` steps in ``episodes``; a TrainingError when none is that long."""
    if not episodes:  # a dataset of one episode that the split holds out
        raise TrainingError(f"{ds.where}: no episodes to train on beside the held-out ones: record more episodes")
    try:
        return WindowSampler(ds, length, episodes)
    except DatasetError:
        raise TrainingError(f"no episode has the {length} frames {what} needs: record longer episodes") from None


def draw(sampler: WindowSampler, rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """``n`` windows (episode, first step), uniform over all of ``sampler``'s, drawn with ``rng``."""
    return [sampler.window(int(i)) for i in rng.integers(0, sampler.num_windows, size=n)]


def start_context(data: TrainData, memory: int) -> tuple[np.ndarray, np.ndarray]:
    """The first frames of a training episode (where the recorded player spawned) with
    the actions that led to them: what a session shows when it is given nothing."""
    ds = data.ds
    episode = ds.episode(data.train_episodes[0] if data.train_episodes else 0)
    n = max(1, min(memory - 1, 16, episode.length))
    loaded = episode.load(("frames", "actions"), 0, n)
    led_to = np.concatenate([ds.spec.noop()[None], loaded["actions"][steps_into(1, n - 1)]])  # the first: a no-op
    return loaded["frames"], led_to


class FrameSource:
    """Random frames of the training episodes, held in memory when they fit."""

    def __init__(self, ds: Dataset, episodes: list[int], memory_limit: int | None = None):
        if memory_limit is None:  # a third of this machine's memory
            memory_limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 3
        self.ds = ds
        self.windows = windows(ds, episodes, 1, "a frame")
        h, w = ds.resolution
        self.in_memory = self.windows.num_windows * h * w * 3 <= memory_limit
        self._frames: dict[int, np.ndarray] = {}

    def frame(self, e: int, t: int) -> np.ndarray:
        if not self.in_memory:
            return self.ds.episode(e)["frames"][t]  # one chunk read per frame: slower, bounded memory
        if e not in self._frames:
            self._frames[e] = self.ds.episode(e)["frames"][:]
        return self._frames[e][t]

    def batch(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.stack([self.frame(e, t) for e, t in draw(self.windows, rng, n)])  # (n, H, W, 3) uint8


class PixelWindows:
    """Windows of k consecutive frames of some episodes with the actions that led to them
    (``actions[:, i]`` led to ``frames[:, i]``): the U-Net baseline's. Frames come through
    ``FrameSource`` (in memory when they fit); actions are small and always loaded."""

    def __init__(self, ds: Dataset, episodes: list[int], frames: int):
        self.k = frames
        self.windows = windows(ds, episodes, frames + 1, "a baseline window")  # the step before leads in
        self.source = FrameSource(ds, self.windows.episodes)
        self.actions = {e: torch.from_numpy(ds.spec.normalize(ds.episode(e)["actions"][:])) for e in self.windows.episodes}  # (T, A)

    def batch(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames (n, k, 3, H, W) in [-1, 1], actions (n, k, A) normalised)."""
        frames, actions = [], []
        for e, s in draw(self.windows, rng, n):
            frames.append(np.stack([self.source.frame(e, t) for t in range(s + 1, s + 1 + self.k)]))
            actions.append(self.actions[e][steps_into(s + 1, self.k)])
        return frames_to_tensor(np.stack(frames)), torch.stack(actions)


# ---------------------------------------------------------------------------
# latents: the dataset encoded once
# ---------------------------------------------------------------------------
@dataclass
class LatentEpisodes:
    """The dataset encoded once: per episode, normalised latents and the step data."""

    latents: list[torch.Tensor]  # (T, C, h, w) fp16
    actions: list[torch.Tensor]  # (T, A) normalised
    rewards: list[torch.Tensor]  # (T,)
    terminated: list[torch.Tensor]  # (T,)


class LatentClips:
    """Clips of ``frames`` latents of some episodes, aligned as ``LatentClip`` says: a
    window of frames + 1 steps, whose first step leads into the clip."""

    def __init__(self, data: TrainData, episodes: list[int], frames: int):
        assert data.latents is not None, "the latents are encoded before a stage reads clips"
        self.lat = data.latents
        self.frames = frames
        self.windows = windows(data.ds, episodes, frames + 1, f"a clip of {frames} latents")

    def batch(self, rng: np.random.Generator, n: int) -> LatentClip:
        lat, act, rew, term = [], [], [], []
        for e, s in draw(self.windows, rng, n):
            led = steps_into(s + 1, self.frames)
            lat.append(self.lat.latents[e][s + 1 : s + 1 + self.frames].float())
            act.append(self.lat.actions[e][led])
            rew.append(self.lat.rewards[e][led])
            term.append(self.lat.terminated[e][led])
        return LatentClip(torch.stack(lat).contiguous(), torch.stack(act), torch.stack(rew), torch.stack(term).float())


def encode_dataset(ae: Autoencoder, ds: Dataset, device: torch.device, batch: int = 64) -> LatentEpisodes:
    lat, act, rew, term = [], [], [], []
    spec = ds.spec
    with torch.no_grad():
        for e in range(ds.num_episodes):
            data = ds.episode(e).load(("frames", "actions", "rewards", "terminated"))
            frames = data["frames"]
            z = [ae.normalize_latents(ae.encode(frames_to_tensor(frames[i : i + batch]).to(device))).half().cpu().contiguous()
                 for i in range(0, len(frames), batch)]
            lat.append(torch.cat(z))
            act.append(torch.from_numpy(spec.normalize(data["actions"])))
            rew.append(torch.from_numpy(data["rewards"].astype(np.float32)))
            term.append(torch.from_numpy(data["terminated"].astype(np.float32)))
    return LatentEpisodes(lat, act, rew, term)


def _latents_path(run: Path) -> Path:
    return run / "latents.safetensors"


def weights_sha256(module: torch.nn.Module) -> str:
    """A digest of a module's parameters and buffers: what the cached latents are keyed by."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_latents(run: Path, lat: LatentEpisodes, ae_sha: str, ids: list[str]) -> None:
    tensors = {}
    for i, key in enumerate(ids):
        tensors[f"{key}.latents"] = lat.latents[i]
        tensors[f"{key}.actions"] = lat.actions[i]
        tensors[f"{key}.rewards"] = lat.rewards[i]
        tensors[f"{key}.terminated"] = lat.terminated[i]
    save_tensors(_latents_path(run), tensors, {"autoencoder_sha256": ae_sha, "episodes": ids})


def load_latents(run: Path, ae_sha: str, ids: list[str]) -> LatentEpisodes | None:
    path = _latents_path(run)
    if not path.exists():
        return None
    try:
        tensors, meta = load_tensors(path, what="encoded latents")
    except StateError:
        return None  # damaged: encode again
    if meta.get("autoencoder_sha256") != ae_sha or meta.get("episodes") != ids:
        return None
    return LatentEpisodes(*[[tensors[f"{k}.{n}"] for k in ids] for n in ("latents", "actions", "rewards", "terminated")])


def encoded(ae: Autoencoder, ds: Dataset, run: Path, d: Dist) -> tuple[LatentEpisodes, float | None]:
    """The dataset's latents under ``ae``'s weights: rank 0 reuses the run's cache when
    those weights made it, or encodes and writes it; every rank waits at the same barrier,
    then reads it. Returns (latents, seconds spent encoding, or None when none was)."""
    ae_sha = weights_sha256(ae)  # the weights that encode (from a checkpoint, --init-autoencoder, or none)
    lat = load_latents(run, ae_sha, ds.ids) if d.main else None
    seconds = None
    if d.main and lat is None:
        t0 = time.perf_counter()
        lat = encode_dataset(ae, ds, d.device)
        save_latents(run, lat, ae_sha, ds.ids)
        seconds = round(time.perf_counter() - t0, 1)
    d.barrier()
    if not d.main:
        lat = load_latents(run, ae_sha, ds.ids)
        if lat is None:
            raise TrainingError(f"process {d.rank} cannot read the latents process 0 wrote to {run}")
    assert lat is not None
    return lat, seconds
