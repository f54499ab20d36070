"""The dataset store: episodes of frames, actions, rewards and poses in one Zarr group.

Layout (Zarr v3; a local folder, or any fsspec URL such as ``s3://bucket/doom``)::

    DATA/
      zarr.json                      root group; attributes["neuralworld"]:
                                       format "neuralworld-dataset", version,
                                       action_spec (ActionSpec JSON), resolution [H, W],
                                       fps, source, pose_names, game_variables, created
      episodes/
        zarr.json                    group
        000000/                      one group per episode, ids sortable and unique
          zarr.json                  attributes: complete (written last: the commit),
                                       length, plus what the recorder adds (seed, map, ...)
          frames      (T, H, W, 3)   uint8, RGB; chunks of 32 frames, zstd
          actions     (T, A)         float32, laid out as the ActionSpec
          rewards     (T,)           float32
          terminated  (T,)           bool
          poses       (T, P)         float32, pose_names (x, y, z, angle for Doom); NaN unknown
          game_vars   (T, G)         float32, game_variables (health, ammo, ...)
          depth       (T, H, W)      uint8, the engine's depth buffer (only where the root's
                                       attributes hold a ``camera``: data/flow.py reads both)

Timing: ``frames[t]`` is what the player saw before ``actions[t]`` was applied;
``rewards[t]`` and ``terminated[t]`` are the results of ``actions[t]``;
``poses[t]``, ``game_vars[t]`` and ``depth[t]`` belong to ``frames[t]``.

Crash safety: an episode is written chunk by chunk (every Zarr write is atomic on
a local disk and a whole object on an object store) and marked ``complete`` in its
attributes only at the end. Readers list complete episodes alone, so a killed
recording loses at most the episodes in progress; a new writer removes their
remains and appends. Episodes come from many processes at once without locks:
the process that starts a recording hands out the ids.

Writer API: ``DatasetWriter.create(..., exist_ok=...)`` or ``DatasetWriter.open(...)`` →
``writer.episode(id)`` → ``ep.add_frame(...)`` ... → ``ep.save()``.
Reader API: ``Dataset(path)`` → ``.episode(i)``, ``.split()``, ``WindowSampler``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from neuralworld.actions import ActionError, ActionSpec
from neuralworld.data.flow import Camera

FORMAT = "neuralworld-dataset"
VERSION = 1
CHUNK_FRAMES = 32
DEFAULT_POSE_NAMES = ("x", "y", "z", "angle")
_ARRAYS = ("frames", "actions", "rewards", "terminated", "poses", "game_vars")


class DatasetError(Exception):
    """The store can't be opened, written or read as asked; the message says why."""


def _is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def _compressor(level: int = 3) -> ZstdCodec:
    # Zstandard level 3: on Doom frames, Blosc shuffles and higher levels saved little
    # for much more time (docs/experiments.md)
    return ZstdCodec(level=level)


def _quiet_keys(group: zarr.Group) -> list[str]:
    # a folder without zarr.json (an episode killed before its first write) is
    # not a member: zarr warns and skips it, which is what we want
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sorted(group.group_keys())


@dataclass(frozen=True)
class DatasetInfo:
    """What the root attributes say about a store."""

    spec: ActionSpec
    resolution: tuple[int, int]
    source: str
    pose_names: tuple[str, ...]
    game_variables: tuple[str, ...]
    created: str
    version: int
    camera: Camera | None = None
    """The engine's camera, where episodes hold a depth buffer (``data.flow.Camera``)."""

    @property
    def fps(self) -> float:
        return self.spec.fps

    def to_attrs(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "action_spec": self.spec.to_json_dict(),
            "resolution": list(self.resolution),
            "fps": self.spec.fps,
            "source": self.source,
            "pose_names": list(self.pose_names),
            "game_variables": list(self.game_variables),
            "created": self.created,
            **({"camera": self.camera.to_attrs()} if self.camera is not None else {}),
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], where: str) -> "DatasetInfo":
        meta = attrs.get("neuralworld")
        if not isinstance(meta, Mapping) or meta.get("format") != FORMAT:
            raise DatasetError(f"{where} is a Zarr store but not a neuralworld dataset (no 'neuralworld' attributes)")
        version = int(meta.get("version", 0))
        if version > VERSION:
            raise DatasetError(f"{where} is dataset format v{version}; this neuralworld reads up to v{VERSION}: upgrade")
        try:
            h, w = (int(v) for v in meta["resolution"])
            return cls(
                spec=ActionSpec.from_json_dict(meta["action_spec"]),
                resolution=(h, w),
                source=str(meta.get("source", "")),
                pose_names=tuple(meta.get("pose_names", DEFAULT_POSE_NAMES)),
                game_variables=tuple(meta.get("game_variables", ())),
                created=str(meta.get("created", "")),
                version=version,
                camera=Camera.from_attrs(meta["camera"]) if meta.get("camera") else None,
            )
        except (KeyError, ValueError, TypeError) as e:
            raise DatasetError(f"{where}: dataset attributes are damaged ({e})") from None


def _open_root(path: str | os.PathLike, mode: str) -> zarr.Group:
    where = str(path)
    if not _is_url(path):
        p = Path(path)
        if not p.exists():
            raise DatasetError(f"{where}: no such dataset")
        if not p.is_dir():
            raise DatasetError(f"{where} is a file, not a dataset folder")
        if not (p / "zarr.json").is_file():
            raise DatasetError(f"{where} is not a neuralworld dataset (no zarr.json inside)")
    try:
        return zarr.open_group(where, mode=mode)
    except Exception as e:  # zarr raises many kinds for damaged metadata
        raise DatasetError(f"{where}: cannot open dataset ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------
class DatasetWriter:
    """Appends episodes to a store. Safe to use from several processes at once
    as long as each writes different episode ids."""

    def __init__(self, root: zarr.Group, info: DatasetInfo, where: str):
        self.root = root
        self.info = info
        self.where = where
        self.episodes_group = root["episodes"]

    # -- opening ----------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        spec: ActionSpec,
        resolution: tuple[int, int],
        *,
        source: str,
        pose_names: Sequence[str] = DEFAULT_POSE_NAMES,
        game_variables: Sequence[str] = (),
        camera: Camera | None = None,
        exist_ok: bool = False,
    ) -> "DatasetWriter":
        """Create a new store at ``path`` (which must not hold anything). ``exist_ok``: append
        to the store already at ``path`` instead (refusing a different ActionSpec, resolution,
        pose or game-variable layout, or camera), as a recording into an existing ``--out`` does.
        ``camera``: episodes store the engine's depth buffer too (``EpisodeWriter.add_frame``)."""
        if exist_ok and ((Path(path) / "zarr.json").exists() if not _is_url(path) else _url_exists(path)):
            writer = cls.open(path)
            writer.check_compatible(spec, resolution, pose_names=pose_names, game_variables=game_variables, camera=camera)
            return writer
        where = str(path)
        h, w = (int(v) for v in resolution)
        if h <= 0 or w <= 0:
            raise DatasetError(f"resolution must be positive, got {resolution}")
        if not _is_url(path):
            p = Path(path)
            if p.exists() and (not p.is_dir() or any(p.iterdir())):
                raise DatasetError(f"{where} already exists and is not an empty folder; choose another --out")
            try:
                p.mkdir(parents=True, exist_ok=True)
                probe = p / ".write-probe"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as e:
                raise DatasetError(f"cannot write to {where}: {e.strerror or e}") from None
        info = DatasetInfo(
            spec=spec,
            resolution=(h, w),
            source=source,
            pose_names=tuple(pose_names),
            game_variables=tuple(game_variables),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            version=VERSION,
            camera=camera,
        )
        try:
            root = zarr.open_group(where, mode="w-")
            root.create_group("episodes")
            root.attrs["neuralworld"] = info.to_attrs()  # last: a store without it is refused
        except OSError as e:
            raise DatasetError(f"cannot write to {where}: {e.strerror or e}") from None
        return cls(root, info, where)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "DatasetWriter":
        root = _open_root(path, "r+")
        info = DatasetInfo.from_attrs(root.attrs, str(path))
        if "episodes" not in root:
            raise DatasetError(f"{path}: dataset has no episodes group (damaged)")
        return cls(root, info, str(path))

    def check_compatible(
        self,
        spec: ActionSpec,
        resolution: tuple[int, int],
        *,
        pose_names: Sequence[str] | None = None,
        game_variables: Sequence[str] | None = None,
        camera: Camera | None = None,
    ) -> None:
        problems = []
        if camera != self.info.camera:
            has = "no depth" if self.info.camera is None else f"depth from {self.info.camera}"
            problems.append(f"it holds {has}, this recording {'none' if camera is None else camera}")
        if spec != self.info.spec:
            problems.append(f"its ActionSpec differs ({self.info.spec.diff(spec)})")
        if tuple(resolution) != self.info.resolution:
            problems.append(f"its resolution is {self.info.resolution[0]}x{self.info.resolution[1]}, not {resolution[0]}x{resolution[1]}")
        if pose_names is not None and tuple(pose_names) != self.info.pose_names:
            problems.append(f"its poses are {list(self.info.pose_names)}, not {list(pose_names)}")
        if game_variables is not None and tuple(game_variables) != self.info.game_variables:
            problems.append(f"its game variables are {list(self.info.game_variables)}, not {list(game_variables)}")
        if problems:
            raise DatasetError(
                f"refusing to append to {self.where}: " + "; ".join(problems) + ". Record into a new --out instead."
            )

    # -- episodes -----------------------------------------------------------------
    def existing_ids(self) -> list[str]:
        return _quiet_keys(self.episodes_group)

    def next_ids(self, n: int) -> list[str]:
        """``n`` fresh episode ids after every id present, complete or not."""
        used = [int(k) for k in self.existing_ids() if k.isdigit()]
        if not _is_url(self.where):
            # folders an episode left before its first zarr.json count too
            used += [int(p.name) for p in (Path(self.where) / "episodes").iterdir() if p.name.isdigit()]
        start = max(used, default=-1) + 1
        return [f"{i:06d}" for i in range(start, start + n)]

    def remove_incomplete(self) -> list[str]:
        """Delete what killed writers left behind; returns the ids removed."""
        removed = []
        for key in self.existing_ids():
            if not _episode_complete(self.episodes_group, key):
                del self.episodes_group[key]
                removed.append(key)
        if not _is_url(self.where):
            for p in (Path(self.where) / "episodes").iterdir():
                if p.is_dir() and not (p / "zarr.json").exists():
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
        return removed

    def episode(self, episode_id: str | int, **attrs: Any) -> "EpisodeWriter":
        key = episode_id if isinstance(episode_id, str) else f"{episode_id:06d}"
        if key in self.existing_ids():
            if _episode_complete(self.episodes_group, key):
                raise DatasetError(f"{self.where}: episode {key} already exists")
            del self.episodes_group[key]
        return EpisodeWriter(self, key, attrs)


def _url_exists(path: str | os.PathLike) -> bool:
    try:
        zarr.open_group(str(path), mode="r")
        return True
    except Exception:
        return False


def _episode_complete(episodes: zarr.Group, key: str) -> bool:
    try:
        return bool(episodes[key].attrs.get("complete", False))
    except Exception:
        return False


class EpisodeWriter:
    """Streams one episode into the store, ``CHUNK_FRAMES`` frames at a time."""

    def __init__(self, writer: DatasetWriter, key: str, attrs: Mapping[str, Any]):
        self.writer = writer
        self.key = key
        info = writer.info
        h, w = info.resolution
        self.spec = info.spec
        self._shape = (h, w, 3)
        self._n_pose = len(info.pose_names)
        self._n_vars = len(info.game_variables)
        self.group = writer.episodes_group.create_group(key, attributes={"complete": False, **dict(attrs)})
        shapes = {
            "frames": ((h, w, 3), "uint8"),
            "actions": ((self.spec.size,), "float32"),
            "rewards": ((), "float32"),
            "terminated": ((), "bool"),
            "poses": ((self._n_pose,), "float32"),
            "game_vars": ((self._n_vars,), "float32"),
        }
        self._depth = info.camera is not None
        if self._depth:
            shapes["depth"] = ((h, w), "uint8")
        self.arrays = {
            name: self.group.create_array(
                name, shape=(0, *tail), chunks=(CHUNK_FRAMES, *tail), dtype=dtype, compressors=_compressor()
            )
            for name, (tail, dtype) in shapes.items()
        }
        self._buf: dict[str, list[np.ndarray]] = {k: [] for k in shapes}
        self.length = 0
        self._closed = False

    def add_frame(
        self,
        frame: np.ndarray,
        action: np.ndarray,
        reward: float = 0.0,
        terminated: bool = False,
        pose: Sequence[float] | None = None,
        game_vars: Sequence[float] | None = None,
        depth: np.ndarray | None = None,
    ) -> None:
        """One frame and what belongs to it; ``depth`` (H, W) uint8 is required where the
        dataset has a camera, and refused where it has none."""
        if self._closed:
            raise DatasetError(f"episode {self.key} is already saved")
        frame = np.asarray(frame)
        if frame.shape != self._shape or frame.dtype != np.uint8:
            raise DatasetError(f"frame must be uint8 {self._shape}, got {frame.dtype} {frame.shape}")
        try:
            action = self.spec.validate(action)
        except ActionError as e:
            raise DatasetError(f"episode {self.key}, frame {self.length}: {e}") from None
        if action.shape != (self.spec.size,):
            raise DatasetError(f"one action of shape ({self.spec.size},) per frame, got {action.shape}")
        pose_arr = np.full(self._n_pose, np.nan, np.float32) if pose is None else np.asarray(pose, np.float32)
        vars_arr = np.full(self._n_vars, np.nan, np.float32) if game_vars is None else np.asarray(game_vars, np.float32)
        if pose_arr.shape != (self._n_pose,) or vars_arr.shape != (self._n_vars,):
            raise DatasetError(
                f"pose needs {self._n_pose} values and game_vars {self._n_vars}, got {pose_arr.shape} and {vars_arr.shape}"
            )
        if self._depth:
            depth = np.asarray(depth) if depth is not None else None
            if depth is None or depth.shape != self._shape[:2] or depth.dtype != np.uint8:
                got = "none" if depth is None else f"{depth.dtype} {depth.shape}"
                raise DatasetError(f"this dataset records depth: uint8 {self._shape[:2]} per frame, got {got}")
        elif depth is not None:
            raise DatasetError("this dataset has no camera in its attributes: it stores no depth")
        for name, v in zip(
            _ARRAYS, (frame, action, np.float32(reward), np.bool_(terminated), pose_arr, vars_arr)
        ):
            self._buf[name].append(v)
        if self._depth:
            self._buf["depth"].append(depth)
        self.length += 1
        if len(self._buf["frames"]) >= CHUNK_FRAMES:
            self._flush()

    def _flush(self) -> None:
        k = len(self._buf["frames"])
        if not k:
            return
        for name, arr in self.arrays.items():
            data = np.stack(self._buf[name])
            n = arr.shape[0]
            arr.resize((n + k, *arr.shape[1:]))
            arr[n : n + k] = data
            self._buf[name] = []

    def save(self, **attrs: Any) -> str:
        """Write what is buffered, then mark the episode complete (the commit)."""
        if self._closed:
            raise DatasetError(f"episode {self.key} is already saved")
        if self.length == 0:
            raise DatasetError(f"episode {self.key} has no frames")
        self._flush()
        self.group.attrs.update({**attrs, "length": self.length, "complete": True})
        self._closed = True
        return self.key

    def discard(self) -> None:
        self._closed = True
        try:
            del self.writer.episodes_group[self.key]
        except Exception:
            pass


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
@dataclass
class Episode:
    """Lazy view of one episode: index the arrays, or ``load()`` all of it."""

    id: str
    group: zarr.Group
    length: int

    def __getitem__(self, name: str) -> zarr.Array:
        return self.group[name]

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def load(self, names: Iterable[str] | None = None, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """The arrays ``names`` (default: all, with ``depth`` where it was recorded) over [start, stop)."""
        if names is None:
            names = _ARRAYS + (("depth",) if "depth" in self.group else ())
        stop = self.length if stop is None else stop
        return {n: self.group[n][start:stop] for n in names}


class Dataset:
    """A store opened for reading: complete episodes only, in id order."""

    def __init__(self, path: str | os.PathLike):
        self.where = str(path)
        self.root = _open_root(path, "r")
        self.info = DatasetInfo.from_attrs(self.root.attrs, self.where)
        try:
            self._episodes_group = self.root["episodes"]
        except KeyError:
            raise DatasetError(f"{self.where}: dataset has no episodes group (damaged)") from None
        self.ids: list[str] = []
        self.lengths: list[int] = []
        self.incomplete: list[str] = []
        for key in _quiet_keys(self._episodes_group):
            try:
                g = self._episodes_group[key]
                ok = bool(g.attrs.get("complete", False))
                length = int(g.attrs.get("length", 0))
                if ok and g["frames"].shape[0] < length:
                    raise DatasetError("fewer frames than recorded")
            except Exception:
                ok = False
            if ok and length > 0:
                self.ids.append(key)
                self.lengths.append(length)
            else:
                self.incomplete.append(key)
        self._cache: dict[str, zarr.Group] = {}

    # -- metadata --------------------------------------------------------------
    @property
    def spec(self) -> ActionSpec:
        return self.info.spec

    @property
    def resolution(self) -> tuple[int, int]:
        return self.info.resolution

    @property
    def fps(self) -> float:
        return self.info.spec.fps

    @property
    def num_episodes(self) -> int:
        return len(self.ids)

    @property
    def num_frames(self) -> int:
        return int(sum(self.lengths))

    def __len__(self) -> int:
        return self.num_episodes

    def nbytes_stored(self) -> int | None:
        """Bytes on disk (local stores only)."""
        if _is_url(self.where):
            return None
        return sum(f.stat().st_size for f in Path(self.where).rglob("*") if f.is_file())

    # -- episodes --------------------------------------------------------------
    def _index(self, episode: int | str) -> int:
        if isinstance(episode, str):
            try:
                return self.ids.index(episode)
            except ValueError:
                raise DatasetError(f"{self.where}: no complete episode with id {episode!r}") from None
        if not -self.num_episodes <= episode < self.num_episodes:
            raise DatasetError(f"{self.where}: episode index {episode} out of range (0..{self.num_episodes - 1})")
        return episode % self.num_episodes

    def episode(self, episode: int | str) -> Episode:
        i = self._index(episode)
        key = self.ids[i]
        if key not in self._cache:
            self._cache[key] = self._episodes_group[key]
        return Episode(key, self._cache[key], self.lengths[i])

    def split(self, held_out: float = 0.1, *, salt: str = "neuralworld") -> tuple[list[int], list[int]]:
        """Train/held-out episode indices, decided by a hash of each episode id,
        so adding episodes never moves an existing one across the split.
        With two or more episodes both sides get at least one."""
        if not 0.0 <= held_out < 1.0:
            raise ValueError(f"held_out must be in [0, 1), got {held_out}")
        score = [int(hashlib.sha1(f"{salt}:{k}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF for k in self.ids]
        held = [i for i, s in enumerate(score) if s < held_out]
        if held_out > 0 and self.num_episodes >= 2 and not held:
            held = [int(np.argmin(score))]
        if len(held) == self.num_episodes and self.num_episodes >= 2:
            held.remove(int(np.argmax(score)))
        train = [i for i in range(self.num_episodes) if i not in set(held)]
        return train, held


@dataclass
class WindowBatch:
    """``length`` consecutive steps from several episodes (B = batch)."""

    frames: np.ndarray  # (B, T, H, W, 3) uint8
    actions: np.ndarray  # (B, T, A) float32 — actions[:, t] is applied after frames[:, t]
    rewards: np.ndarray  # (B, T) float32
    terminated: np.ndarray  # (B, T) bool
    poses: np.ndarray  # (B, T, P) float32
    episode: np.ndarray  # (B,) episode index
    start: np.ndarray  # (B,) first frame index within the episode


class WindowSampler:
    """Random training windows: ``context`` frames then ``target`` frames.

    Windows are drawn uniformly over all valid start positions of the chosen
    episodes (longer episodes give more windows); episodes shorter than the
    window are skipped."""

    def __init__(self, dataset: Dataset, length: int, episodes: Sequence[int] | None = None, seed: int = 0):
        if length < 1:
            raise ValueError("window length must be >= 1")
        self.dataset = dataset
        self.length = length
        eps = list(range(dataset.num_episodes)) if episodes is None else list(episodes)
        self.episodes = [e for e in eps if dataset.lengths[e] >= length]
        if not self.episodes:
            raise DatasetError(
                f"{dataset.where}: no episode has {length} frames (longest: {max(dataset.lengths, default=0)})"
            )
        counts = np.array([dataset.lengths[e] - length + 1 for e in self.episodes], np.int64)
        self._cum = np.cumsum(counts)
        self.rng = np.random.default_rng(seed)

    @property
    def num_windows(self) -> int:
        return int(self._cum[-1])

    def window(self, flat_index: int) -> tuple[int, int]:
        """(episode index, start frame) of the ``flat_index``-th window."""
        j = int(np.searchsorted(self._cum, flat_index, side="right"))
        before = int(self._cum[j - 1]) if j else 0
        return self.episodes[j], flat_index - before

    def sample(self, batch_size: int) -> WindowBatch:
        picks = self.rng.integers(0, self.num_windows, size=batch_size)
        return self.read([self.window(int(i)) for i in picks])

    def read(self, windows: Sequence[tuple[int, int]]) -> WindowBatch:
        parts = []
        for ep_i, start in windows:
            parts.append(self.dataset.episode(ep_i).load(("frames", "actions", "rewards", "terminated", "poses"), start, start + self.length))
        return WindowBatch(
            frames=np.stack([p["frames"] for p in parts]),
            actions=np.stack([p["actions"] for p in parts]),
            rewards=np.stack([p["rewards"] for p in parts]),
            terminated=np.stack([p["terminated"] for p in parts]),
            poses=np.stack([p["poses"] for p in parts]),
            episode=np.array([w[0] for w in windows], np.int64),
            start=np.array([w[1] for w in windows], np.int64),
        )
