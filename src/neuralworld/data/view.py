"""Render an episode to a video (mp4 or gif) with its actions drawn under each frame.

The panel under the picture shows every button of the ActionSpec as a box that
lights up while held, every axis as a bar from its low to its high end, and the
step, reward and termination. Drawing works from the ActionSpec alone, so any
dataset (Doom, imported video) renders the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from neuralworld.actions import ActionSpec
from neuralworld.data.store import Dataset, DatasetError

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_ON = (80, 220, 120)
_OFF = (60, 60, 60)
_TEXT = (235, 235, 235)


def _panel_height(spec: ActionSpec, width: int) -> int:
    rows_buttons = -(-len(spec.buttons) * 70 // max(width, 70)) if spec.buttons else 0
    return 22 * (rows_buttons + len(spec.axes) + 1) + 8


def draw_action_panel(spec: ActionSpec, action: np.ndarray, width: int, *, step: int, reward: float, terminated: bool) -> np.ndarray:
    """An RGB strip (H, width, 3) showing one action."""
    h = _panel_height(spec, width)
    panel = np.full((h, width, 3), 18, np.uint8)
    y = 6
    x = 6
    nb = len(spec.buttons)
    for i, name in enumerate(spec.buttons):
        label = name.replace("strafe_", "str_")[:8]
        bw = 66
        if x + bw > width - 4:
            x, y = 6, y + 22
        on = action[i] > 0.5
        cv2.rectangle(panel, (x, y), (x + bw - 4, y + 18), _ON if on else _OFF, -1)
        cv2.putText(panel, label, (x + 3, y + 13), _FONT, 0.38, (10, 10, 10) if on else _TEXT, 1, cv2.LINE_AA)
        x += bw
    if nb:
        y += 22
    for j, ax in enumerate(spec.axes):
        v = float(action[nb + j])
        cv2.putText(panel, f"{ax.name} {v:+.2f}", (6, y + 13), _FONT, 0.38, _TEXT, 1, cv2.LINE_AA)
        x0, x1 = 110, width - 8
        cv2.rectangle(panel, (x0, y + 4), (x1, y + 14), _OFF, -1)
        zero = x0 + (x1 - x0) * (0 - ax.low) / (ax.high - ax.low)
        pos = x0 + (x1 - x0) * (v - ax.low) / (ax.high - ax.low)
        a, b = sorted((int(zero), int(pos)))
        cv2.rectangle(panel, (a, y + 4), (max(b, a + 1), y + 14), _ON, -1)
        cv2.line(panel, (int(zero), y + 2), (int(zero), y + 16), _TEXT, 1)
        y += 22
    status = f"step {step}  reward {reward:+.2f}" + ("  TERMINATED" if terminated else "")
    cv2.putText(panel, status, (6, y + 13), _FONT, 0.38, _TEXT, 1, cv2.LINE_AA)
    return panel


def annotated_frames(ds: Dataset, episode: int, scale: int = 3, max_frames: int | None = None) -> Iterator[np.ndarray]:
    ep = ds.episode(episode)
    n = ep.length if max_frames is None else min(ep.length, max_frames)
    h, w = ds.resolution
    chunk = 64
    for start in range(0, n, chunk):
        part = ep.load(("frames", "actions", "rewards", "terminated"), start, min(start + chunk, n))
        for k in range(len(part["frames"])):
            img = cv2.resize(part["frames"][k], (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
            panel = draw_action_panel(
                ds.spec, part["actions"][k], w * scale,
                step=start + k, reward=float(part["rewards"][k]), terminated=bool(part["terminated"][k]),
            )
            yield np.concatenate([img, panel], axis=0)


def write_video(frames: Iterator[np.ndarray], out: str | os.PathLike, fps: float) -> Path:
    """Write RGB frames to .mp4 (H.264) or .gif, atomically (temp file, then rename).

    Without PyAV (a bare GPU box, say) an mp4 is still written, through OpenCV's
    MPEG-4 Part 2 encoder: larger files, but every player opens them."""
    from fractions import Fraction

    out = Path(out)
    ext = out.suffix.lower()
    if ext not in (".mp4", ".gif"):
        raise DatasetError(f"output must end in .mp4 or .gif, got {out.name!r}")
    if not out.parent.exists():
        raise DatasetError(f"folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.partial{ext}")
    try:
        import av
    except ImportError:
        if ext == ".gif":
            raise DatasetError("writing a .gif needs PyAV (pip install av); write an .mp4 instead") from None
        return _write_video_opencv(frames, out, tmp, fps)
    rate = Fraction(fps).limit_denominator(1000)
    container = av.open(str(tmp), mode="w")
    try:
        stream = None
        for img in frames:
            if stream is None:
                h, w = img.shape[:2]
                if ext == ".mp4":
                    stream = container.add_stream("libx264", rate=rate)
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": "20", "preset": "veryfast"}
                    w, h = w - w % 2, h - h % 2
                else:
                    stream = container.add_stream("gif", rate=rate)
                    stream.pix_fmt = "rgb8"
                stream.width, stream.height = w, h
            img = img[: stream.height, : stream.width]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        if stream is None:
            raise DatasetError("nothing to write: the episode has no frames")
        for packet in stream.encode():
            container.mux(packet)
        container.close()
        os.replace(tmp, out)
    except BaseException:
        container.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def _write_video_opencv(frames: Iterator[np.ndarray], out: Path, tmp: Path, fps: float) -> Path:
    writer = None
    try:
        for img in frames:
            if writer is None:
                h, w = img.shape[:2]
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
                if not writer.isOpened():
                    raise DatasetError(f"OpenCV cannot write {out}")
            writer.write(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
        if writer is None:
            raise DatasetError("nothing to write: the episode has no frames")
        writer.release()
        os.replace(tmp, out)
    except BaseException:
        if writer is not None:
            writer.release()
        tmp.unlink(missing_ok=True)
        raise
    return out


def render_episode(path: str | os.PathLike, episode: int, out: str | os.PathLike, *, scale: int = 3, max_frames: int | None = None) -> Path:
    ds = Dataset(path)
    if ds.num_episodes == 0:
        raise DatasetError(f"{path} has no complete episodes to show")
    return write_video(annotated_frames(ds, episode, scale, max_frames), out, ds.fps)
