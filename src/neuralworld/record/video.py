"""Import video: any footage becomes a dataset whose controls are the camera's motion.

    neuralworld import-video walk.mp4 [--motion walk.csv] --out data/walk

A phone walk, a drone flight, a game capture: there are no key presses to
learn from, so the action of each frame is what the camera did between it and
the next frame (translation right/up/forward, rotation yaw/pitch/roll; see
``neuralworld.record.motion`` for the axes, signs and the motion-log formats).

What happens, per video:

1. **decode** with PyAV (mp4, mov, webm, mkv, ...; any size and frame rate),
   frames in presentation order, turned upright when the file says it was shot
   rotated (phones), and **resampled by timestamp** to the dataset's frame rate:
   output frame ``k`` is the source frame whose timestamp is nearest ``k / fps``
   (so 60 fps keeps every other frame and jittery timestamps don't drop or
   repeat frames). Each kept frame is centre-cropped to the dataset's aspect and
   resized with ``cv2.INTER_AREA`` into a temporary file beside ``out``.
2. **motion**: from the motion log aligned by timestamp, or from visual odometry
   on the full, uncropped frames (their field of view is what ``hfov`` means).
3. **validate everything first**: unreadable, truncated or empty videos, a
   motion log with the wrong columns or times that don't cover the video all
   raise ``VideoError``/``MotionError`` (both ``DatasetError``) *before* anything
   is written, so a failed import leaves no dataset behind.
4. **write** episodes (long videos are split into episodes of at most
   ``max_episode_frames``) with ``camera_motion_spec`` as the ActionSpec. If a
   write fails midway the import is undone: the episode in progress and those
   written by this call are removed, and a dataset this call created is deleted.

What each episode stores:

* ``actions``: the six axes normalised into [-1, 1]: the per-frame motion
  divided by ``translation_scale / fps`` and ``rotation_scale / fps`` (scales
  are per second so they read the same at any frame rate) and clipped;
* ``poses``: ``x, y, z, yaw, pitch, roll`` of the camera (from the log, or
  integrated from the odometry in the first frame's axes; NaN where unknown);
* ``game_vars``: ``motion_reliable`` (1 or 0) per frame, so training can weigh
  or skip frames whose motion is suspect;
* attrs: the video, the segment, and under ``motion`` the source, units, the
  scales (``rotation_deg_per_unit``: one unit of a rotation action is that many
  degrees in that frame; likewise ``translation_per_unit``), how many values
  were clipped, and why frames were flagged unreliable.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import av
import cv2
import numpy as np

from neuralworld.actions import ActionSpec, camera_motion_spec
from neuralworld.data.store import Dataset, DatasetError, DatasetWriter
from neuralworld.record.motion import POSE_NAMES, CameraMotion, motion_from_log, read_motion_log
from neuralworld.record.odometry import VisualOdometry, motion_from_pairs

GAME_VARIABLES = ("motion_reliable",)
MAX_DEFAULT_FPS = 30.0
CROPS = ("center", "stretch")
# per-second ends of the action ranges, by translation unit; generous, because a
# clipped action loses information while a small one costs nothing (actions are floats)
DEFAULT_TRANSLATION_SCALE = {"m": 3.0, "parallax_rad": 2.0, "none": 1.0}
DEFAULT_ROTATION_SCALE = 360.0  # deg/s: a fast head turn or mouse flick


class VideoError(DatasetError):
    """A video can't be imported as asked; the message says why."""


@dataclass
class _Probe:
    """What opening a video tells us before decoding it."""

    path: str
    fps: float  # source frame rate (average), 0 when the file doesn't say
    width: int
    height: int
    duration: float | None  # seconds, when the file says


@dataclass
class _Decoded:
    """One video decoded, resampled and resized into a temporary file."""

    probe: _Probe
    frames_file: str
    times: np.ndarray  # (N,) source timestamps of the kept frames, seconds from the first frame
    corrupt: np.ndarray  # (N,) bool: the decoder concealed errors in this frame
    display_rotation: int  # degrees counter-clockwise applied to stand the frames upright
    size: tuple[int, int]  # (width, height) as displayed, before cropping
    motion: CameraMotion | None = None
    episodes: list[str] = field(default_factory=list)

    def frames(self, resolution: tuple[int, int]) -> np.ndarray:
        h, w = resolution
        return np.memmap(self.frames_file, np.uint8, "r", shape=(len(self.times), h, w, 3))


def import_video(
    videos: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    motion: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    motion_offset: float = 0.0,
    resolution: tuple[int, int] = (128, 128),
    fps: float | None = None,
    crop: str = "center",
    max_episode_frames: int = 1000,
    hfov: float = 90.0,
    translation_scale: float | None = None,
    rotation_scale: float = DEFAULT_ROTATION_SCALE,
    smooth_s: float | None = None,
) -> dict[str, Any]:
    """Import ``videos`` into the dataset at ``out`` (created, or appended to when it
    is a dataset with the same frame rate and resolution). Returns a summary.

    motion: one motion-log CSV per video (a single path when there is one video),
        or None to estimate the motion from the pixels (visual odometry).
    motion_offset: seconds added to the video's frame times (measured from its
        first frame) to find them on the log's clock.
    resolution: stored frame size (H, W).
    fps: dataset frame rate; default: the existing dataset's, else the source's,
        at most 30 (the lowest of the videos when they differ).
    crop: "center" crops to the target aspect before resizing; "stretch" doesn't.
    max_episode_frames: longer videos are split into near-equal episodes.
    hfov: horizontal field of view of the video as displayed, degrees (for
        visual odometry).
    translation_scale: translation per second at the end of the action range, in
        the motion's unit (default 3 m/s for logs, 2 rad/s of parallax for odometry).
    rotation_scale: rotation per second at the end of the action range, deg/s.
    smooth_s: Gaussian smoothing, seconds (default 0.05 for logs, none for
        odometry, whose estimates are per frame and whose turns may be abrupt).
    """
    paths = [str(v) for v in videos]
    if not paths:
        raise VideoError("no videos given")
    logs = _motion_paths(motion, len(paths))
    res = _check_options(resolution, fps, crop, max_episode_frames, hfov, translation_scale, rotation_scale)
    existing = _existing_dataset(out)
    probes = [_probe(p) for p in paths]
    # read (and so validate) every motion log before the slow part
    parsed_logs = [None if p is None else read_motion_log(p) for p in logs]
    if fps is None:
        if existing is not None:
            fps = existing.fps
        else:
            rates = [min(p.fps, MAX_DEFAULT_FPS) if p.fps > 0 else MAX_DEFAULT_FPS for p in probes]
            fps = round(min(rates), 3)
    spec = camera_motion_spec(float(fps))
    if existing is not None:
        _writer_for(out).check_compatible(spec, res, pose_names=POSE_NAMES, game_variables=GAME_VARIABLES)

    tmp_parent = _temp_parent(out)
    with tempfile.TemporaryDirectory(prefix=".neuralworld-import-", dir=tmp_parent) as tmp:
        decoded = []
        for i, (probe, log) in enumerate(zip(probes, parsed_logs)):
            vo = VisualOdometry(hfov) if log is None else None
            d, pairs = _decode(probe, float(fps), res, crop, vo, os.path.join(tmp, f"{i}.frames"))
            if log is None:
                d.motion = motion_from_pairs(
                    pairs, d.times, smooth_frames=(smooth_s or 0.0) * fps, details={"hfov_deg": float(hfov)}
                )
            else:
                d.motion = motion_from_log(
                    log, d.times, fps=float(fps), offset=motion_offset, smooth_s=0.05 if smooth_s is None else smooth_s
                )
            _mark_corrupt(d)
            decoded.append(d)
        written = _write(out, existing is None, spec, res, decoded, max_episode_frames, translation_scale, rotation_scale, crop)

    h, w = res
    return {
        "out": str(out),
        "created": existing is None,
        "episodes": sum(len(d.episodes) for d in decoded),
        "frames": int(sum(len(d.times) for d in decoded)),
        "fps": float(fps),
        "resolution": f"{h}x{w}",
        "actions": spec.describe(),
        "videos": written,
    }


# ---------------------------------------------------------------------------
# options and destination
# ---------------------------------------------------------------------------
def _motion_paths(motion: Any, n_videos: int) -> list[str | None]:
    if motion is None:
        return [None] * n_videos
    if isinstance(motion, (str, os.PathLike)):
        motion = [motion]
    logs = [str(m) for m in motion]
    if len(logs) != n_videos:
        raise VideoError(f"got {len(logs)} motion logs for {n_videos} videos: give one per video, in the same order")
    return logs


def _check_options(resolution, fps, crop, max_episode_frames, hfov, translation_scale, rotation_scale) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in resolution)
    except (TypeError, ValueError):
        raise VideoError(f"resolution must be (height, width), got {resolution!r}") from None
    if h < 8 or w < 8:
        raise VideoError(f"resolution must be at least 8x8, got {h}x{w}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise VideoError(f"fps must be a positive number, got {fps}")
    if crop not in CROPS:
        raise VideoError(f"crop must be one of {CROPS}, got {crop!r}")
    if int(max_episode_frames) < 2:
        raise VideoError(f"max_episode_frames must be at least 2, got {max_episode_frames}")
    if not 1.0 <= hfov < 179.0:
        raise VideoError(f"hfov must be between 1 and 179 degrees, got {hfov}")
    for name, v in (("translation_scale", translation_scale), ("rotation_scale", rotation_scale)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise VideoError(f"{name} must be a positive number, got {v}")
    return h, w


def _existing_dataset(out: str | os.PathLike) -> Dataset | None:
    p = Path(out)
    if "://" in str(out):
        try:
            return Dataset(out)
        except DatasetError:
            return None
    if (p / "zarr.json").is_file():
        return Dataset(out)  # raises if it isn't a neuralworld dataset
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise VideoError(f"{out} exists and is neither a dataset nor an empty folder; choose another --out")
    return None


def _writer_for(out: str | os.PathLike) -> DatasetWriter:
    return DatasetWriter.open(out)


def _temp_parent(out: str | os.PathLike) -> str | None:
    """Decoded frames wait beside the destination (same disk, which must hold them anyway)."""
    if "://" in str(out):
        return None
    parent = Path(out).resolve().parent
    return str(parent) if parent.is_dir() and os.access(parent, os.W_OK) else None


# ---------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------
def _open(path: str) -> av.container.InputContainer:
    if not os.path.exists(path):
        raise VideoError(f"{path}: no such file")
    if os.path.isdir(path):
        raise VideoError(f"{path} is a folder, not a video")
    try:
        return av.open(path)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{path}: cannot read it as a video (unreadable, not a video, or truncated): {e}") from None


def _probe(path: str) -> _Probe:
    with _open(path) as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoError(f"{path} has no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        return _Probe(path, float(rate) if rate else 0.0, stream.width, stream.height, duration)


def _crop_resize(img: np.ndarray, resolution: tuple[int, int], crop: str) -> np.ndarray:
    h, w = img.shape[:2]
    th, tw = resolution
    if crop == "center":
        if w * th > h * tw:  # too wide: trim the sides
            cw = max(1, round(h * tw / th))
            x0 = (w - cw) // 2
            img = img[:, x0 : x0 + cw]
        else:  # too tall: trim top and bottom
            ch = max(1, round(w * th / tw))
            y0 = (h - ch) // 2
            img = img[y0 : y0 + ch]
    return cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)


def _decode(
    probe: _Probe,
    fps: float,
    resolution: tuple[int, int],
    crop: str,
    vo: VisualOdometry | None,
    frames_file: str,
) -> tuple[_Decoded, list]:
    """Decode, resample to ``fps`` by timestamp, crop and resize into ``frames_file``;
    run visual odometry on the kept frames when ``vo`` is given."""
    path = probe.path
    src_fps = probe.fps if probe.fps > 0 else fps
    times: list[float] = []
    corrupt: list[bool] = []
    pairs: list = []
    rotation = 0
    size = (probe.width, probe.height)
    state = {"first": None, "pending": None, "rgb": None}  # pending = (frame, t, corrupt)

    def keep(frame: av.VideoFrame, t: float, bad: bool) -> None:
        nonlocal rotation, size
        if state["rgb"] is None:
            img = frame.to_ndarray(format="rgb24")
            quarter = int(round((frame.rotation or 0) / 90.0)) % 4
            if quarter:
                img = np.ascontiguousarray(np.rot90(img, quarter))  # counter-clockwise, as the display matrix says
            rotation, size = quarter * 90, (img.shape[1], img.shape[0])
            state["rgb"] = img
        img = state["rgb"]
        out.write(_crop_resize(img, resolution, crop).tobytes())
        times.append(t)
        corrupt.append(bad)
        if vo is not None:
            pm = vo.step(img)
            if len(times) > 1:
                pairs.append(pm)

    def emit_until(limit: float) -> None:
        """Write the pending frame for every output time before ``limit``."""
        frame, t, bad = state["pending"]
        while len(times) / fps < limit:
            keep(frame, t, bad)

    t = 0.0
    with _open(path) as container, open(frames_file, "wb") as out:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        decoded = 0
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else decoded / src_fps
                decoded += 1
                if state["first"] is None:
                    state["first"] = t
                t -= state["first"]
                if state["pending"] is not None:
                    prev_t = state["pending"][1]
                    if t <= prev_t:  # repeated or out-of-order timestamp: keep the first
                        continue
                    emit_until((prev_t + t) / 2)  # nearest source frame to each output time
                state["pending"] = (frame, t, bool(frame.is_corrupt))
                state["rgb"] = None
        except av.error.FFmpegError as e:
            raise VideoError(
                f"{path} is damaged or truncated: decoding failed after {decoded} frames ({t:.2f} s): {e}"
            ) from None
        if state["pending"] is None:
            raise VideoError(f"{path} has a video stream but no frames")
        last_t = state["pending"][1]
        emit_until(last_t + 0.5 / src_fps)
        if not times:  # a lone frame still makes one output frame
            keep(*state["pending"])

    span = last_t + 1.0 / src_fps
    if probe.duration is not None and probe.duration > 0:
        tolerance = max(0.5, 3.0 / src_fps, 0.05 * probe.duration)
        if span < probe.duration - tolerance:
            raise VideoError(
                f"{path} is truncated: its frames stop at {span:.2f} s but the file says it lasts {probe.duration:.2f} s"
            )
    if len(times) < 2:
        raise VideoError(f"{path} has {len(times)} frame at {fps:g} fps; at least 2 are needed for motion")
    d = _Decoded(
        probe=probe,
        frames_file=frames_file,
        times=np.asarray(times, np.float64),
        corrupt=np.asarray(corrupt, bool),
        display_rotation=rotation,
        size=size,
    )
    return d, pairs


def _mark_corrupt(d: _Decoded) -> None:
    """Frames the decoder had to patch up get no trust, nor do the motions into them."""
    bad = d.corrupt.copy()
    bad[:-1] |= d.corrupt[1:]
    if bad.any() and d.motion is not None:
        d.motion.reliable[bad] = False
        d.motion.reasons["corrupt_frame"] = int(bad.sum())


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------
def _normalised_actions(
    motion: CameraMotion, fps: float, translation_scale: float, rotation_scale: float
) -> tuple[np.ndarray, int]:
    """Per-frame motion → actions in [-1, 1] (spec order: move_x, move_y, move_z, yaw,
    pitch, roll) and the number of values that had to be clipped."""
    raw = np.concatenate(
        [motion.translation / (translation_scale / fps), motion.rotation / (rotation_scale / fps)], axis=1
    )
    clipped = int((np.abs(raw) > 1.0).sum())
    return np.clip(raw, -1.0, 1.0).astype(np.float32), clipped


def _episode_bounds(n: int, max_frames: int) -> list[tuple[int, int]]:
    parts = max(1, math.ceil(n / max_frames))
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _write(
    out: str | os.PathLike,
    create: bool,
    spec: ActionSpec,
    resolution: tuple[int, int],
    decoded: list[_Decoded],
    max_episode_frames: int,
    translation_scale: float | None,
    rotation_scale: float,
    crop: str,
) -> list[dict[str, Any]]:
    """Write every decoded video as episodes; on any failure undo this import."""
    pre_existing_folder = Path(out).is_dir() if "://" not in str(out) else False
    writer = DatasetWriter.create(
        out, spec, resolution, source="video", pose_names=POSE_NAMES, game_variables=GAME_VARIABLES, exist_ok=True
    )
    plans = [_episode_bounds(len(d.times), max_episode_frames) for d in decoded]
    ids = iter(writer.next_ids(sum(len(p) for p in plans)))
    saved: list[str] = []
    episode = None
    reports = []
    try:
        for d, bounds in zip(decoded, plans):
            m = d.motion
            assert m is not None
            t_scale = translation_scale or DEFAULT_TRANSLATION_SCALE[m.translation_unit]
            actions, clipped = _normalised_actions(m, spec.fps, t_scale, rotation_scale)
            frames = d.frames(resolution)
            motion_attrs = {
                **m.summary(),
                "translation_scale_per_s": t_scale,
                "rotation_scale_deg_per_s": rotation_scale,
                "translation_per_unit": t_scale / spec.fps,
                "rotation_deg_per_unit": rotation_scale / spec.fps,
                "clipped_values": clipped,
            }
            for j, (a, b) in enumerate(bounds):
                attrs = {
                    "video": os.path.basename(d.probe.path),
                    "video_path": os.path.abspath(d.probe.path),
                    "segment": j,
                    "segments": len(bounds),
                    "start_frame": a,
                    "start_time_s": round(float(d.times[a]), 6),
                    "source_fps": d.probe.fps,
                    "source_size": list(d.size),
                    "display_rotation": d.display_rotation,
                    "crop": crop,
                    "motion": {**motion_attrs, "episode_unreliable_fraction": round(float(1 - m.reliable[a:b].mean()), 4)},
                }
                episode = writer.episode(next(ids), **attrs)
                for i in range(a, b):
                    episode.add_frame(
                        np.asarray(frames[i]),
                        actions[i],
                        pose=m.pose[i],
                        game_vars=(float(m.reliable[i]),),
                    )
                saved.append(episode.save())
                d.episodes.append(saved[-1])
                episode = None
            reports.append(
                {
                    "video": d.probe.path,
                    "source_fps": d.probe.fps,
                    "source_size": f"{d.size[0]}x{d.size[1]}",
                    "duration_s": round(float(d.times[-1] + 1.0 / spec.fps), 3),
                    "frames": len(d.times),
                    "episodes": list(d.episodes),
                    **{k: motion_attrs[k] for k in ("source", "translation_unit", "unreliable_fraction", "unreliable_reasons")},
                    "clipped_values": clipped,
                }
            )
    except BaseException:
        if episode is not None:
            episode.discard()
        if create:
            _remove_dataset(out, keep_folder=pre_existing_folder)
        else:
            for key in saved:
                try:
                    del writer.episodes_group[key]
                except Exception:
                    pass
        raise
    return reports


def _remove_dataset(out: str | os.PathLike, *, keep_folder: bool) -> None:
    """Delete a dataset this import created (a local folder; its contents only when
    the user handed us an empty folder)."""
    if "://" in str(out):
        return
    p = Path(out)
    if not keep_folder:
        shutil.rmtree(p, ignore_errors=True)
        return
    for child in p.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
