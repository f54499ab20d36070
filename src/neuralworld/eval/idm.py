"""Control, read back: an inverse-dynamics model (IDM) recovers the action between two frames.

If a world obeys its controls, a model that learned on *real* frame pairs which
action led from one frame to the next should read the same actions off the
world's *generated* pairs (Matrix-Game's keyboard/mouse accuracy). The IDM here:

* a small CNN on (frame t, frame t+1, their difference) at the world's resolution;
  one logit per button (multi-label BCE, positives up-weighted since most
  buttons are rarely held) and one regression output per axis (in units of half
  its range);
* trained on real pairs of the run's *training* episodes (CPU, a step and time
  budget), saved as ``idm-<key>.safetensors`` + ``idm-<key>.json`` (no pickle) in
  the evaluation folder and reused while the dataset and settings are the same;
* scored on held-out real pairs, and on generated pairs: open-loop rollouts from
  real context driven by the recorded actions. The same windows' real pairs are
  the like-for-like reference for the ratio generated / real.

Per control: buttons get accuracy *and* balanced accuracy (mean of the hit rates
on pressed and released pairs: a button held 3% of the time scores 0.97 accuracy
by never predicting it, 0.5 balanced); axes get mean absolute error, correlation
and the sign accuracy where ``|value| > sign_threshold`` of its range.

**Overall** = the mean, over the *readable* controls, of balanced accuracy
(buttons) and sign accuracy (axes). A control is readable when the IDM reads it
on held-out real pairs clearly better than chance (score >= ``READABLE``): in
ViZDoom ``use`` and often ``attack`` change almost nothing on screen, and
averaging in a control nobody can see would only dilute the figure with noise.
Which controls were readable is reported beside the number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from neuralworld.actions import ActionSpec
from neuralworld.data.store import Dataset
from neuralworld.eval.inputs import EvalError
from neuralworld.state_io import StateError, atomic_write_json, load_tensors, save_tensors

READABLE = 0.6
"""Balanced / sign accuracy on held-out real pairs above which a control counts in "overall"."""
IDM_VERSION = 1
IDM_BAR = 0.9
"""Generated / real IDM overall the shipped world must reach (DESIGN.md)."""


class InverseDynamics(nn.Module):
    """(frame t, frame t+1) -> button logits (B, nb) and axis values (B, na) in half-ranges."""

    def __init__(self, buttons: int, axes: int, width: int = 32):
        super().__init__()
        w = width
        self.trunk = nn.Sequential(
            nn.Conv2d(9, w, 4, 2, 1), nn.SiLU(),  # (B, w, H/2, W/2)
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.SiLU(),  # (B, 2w, H/4, W/4)
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.SiLU(),  # (B, 4w, H/8, W/8)
            nn.Conv2d(4 * w, 4 * w, 3, 1, 1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(2),  # (B, 4w, 2, 2): keeps left/right, which turning needs
            nn.Flatten(),  # (B, 16w)
            nn.Linear(16 * w, 128), nn.SiLU(),
        )  # fmt: skip
        self.buttons = nn.Linear(128, buttons)
        self.axes = nn.Linear(128, axes)

    @staticmethod
    def prepare(f0: np.ndarray | torch.Tensor, f1: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 frames (B, H, W, 3) x2 -> (B, 9, H, W) float in [-1, 1] (the difference in [-2, 2])."""
        a = torch.as_tensor(np.asarray(f0)).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W)
        b = torch.as_tensor(np.asarray(f1)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return torch.cat([a, b, b - a], 1)  # (B, 9, H, W)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)  # (B, 128)
        return self.buttons(h), self.axes(h)  # (B, nb), (B, na)


class IDM:
    """A trained inverse-dynamics model with the ActionSpec it reads."""

    def __init__(self, net: InverseDynamics, spec: ActionSpec, meta: dict[str, Any]):
        self.net, self.spec, self.meta = net.eval(), spec, meta

    @torch.inference_mode()
    def predict(self, f0: np.ndarray, f1: np.ndarray, chunk: int = 256) -> np.ndarray:
        """Frame pairs (N, H, W, 3) x2 -> actions (N, A) in the spec's units (buttons 0/1)."""
        nb = len(self.spec.buttons)
        half = np.array([(ax.high - ax.low) / 2 for ax in self.spec.axes], np.float32)
        mid = np.array([(ax.high + ax.low) / 2 for ax in self.spec.axes], np.float32)
        out = []
        for i in range(0, len(f0), chunk):
            logits, axes = self.net(InverseDynamics.prepare(f0[i : i + chunk], f1[i : i + chunk]))
            b = (logits > 0).float().numpy()  # (n, nb)
            a = axes.numpy() * half + mid  # (n, na)
            out.append(np.concatenate([b, a], 1))
        return np.concatenate(out) if out else np.zeros((0, nb + len(half)), np.float32)


def dataset_key(ds: Dataset, episodes: list[int], settings: dict[str, Any]) -> str:
    """Names a trained IDM: the dataset's episodes (ids + lengths), resolution, controls
    and the training settings. Another dataset or budget trains another IDM."""
    ident = {
        "episodes": [[ds.ids[e], ds.lengths[e]] for e in episodes],
        "resolution": list(ds.resolution),
        "controls": list(ds.spec.names),
        "settings": settings,
        "version": IDM_VERSION,
    }
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


def _training_pairs(ds: Dataset, episodes: list[int], max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames (N, H, W, 3), pair starts (P,), actions (P, A)): pair p is frames[s], frames[s+1]
    with the action taken between them (the dataset's actions[t] leads to frames[t+1])."""
    frames, starts, actions = [], [], []
    offset = 0
    for e in episodes:
        d = ds.episode(e).load(("frames", "actions"))
        n = len(d["frames"])
        if n >= 2:
            frames.append(d["frames"])
            starts.append(offset + np.arange(n - 1))
            actions.append(d["actions"][: n - 1])
        offset += n
    if not starts:
        raise EvalError("no training episode has two frames: nothing to train an inverse-dynamics model on")
    all_frames, s, a = np.concatenate(frames), np.concatenate(starts), np.concatenate(actions).astype(np.float32)
    if len(s) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(s), max_pairs, replace=False))
        s, a = s[keep], a[keep]
    return all_frames, s, a


@dataclass(frozen=True)
class IDMTraining:
    """How an IDM is trained; all of it is part of the cache key (another budget, another IDM).
    Training stops after ``steps`` or ``seconds``, whichever comes first: a time budget makes
    the result depend on the machine's speed, so the steps actually taken are in its JSON."""

    steps: int = 1500
    seconds: float = 180.0
    batch_size: int = 64
    max_pairs: int = 20000  # real pairs sampled from the episodes
    width: int = 32  # channels of the CNN's first layer
    lr: float = 2e-3
    seed: int = 0


def train_idm(
    ds: Dataset, episodes: list[int], training: IDMTraining = IDMTraining(), *, cache_dir: str | Path | None = None, log: Any = None
) -> IDM:
    """Train (or load from ``cache_dir``) an IDM on real pairs of ``episodes``."""
    spec = ds.spec
    settings = dataclasses.asdict(training)
    steps, seconds, batch_size, lr, seed = training.steps, training.seconds, training.batch_size, training.lr, training.seed
    key = dataset_key(ds, episodes, settings)
    if cache_dir is not None:
        path = Path(cache_dir) / f"idm-{key}.safetensors"
        if path.is_file():
            try:
                return load_idm(path, spec)
            except (StateError, EvalError):
                pass  # damaged or from another version: train again
    torch.manual_seed(seed)
    frames, starts, actions = _training_pairs(ds, episodes, training.max_pairs, seed)
    nb, na = len(spec.buttons), len(spec.axes)
    half = np.array([(ax.high - ax.low) / 2 for ax in spec.axes], np.float32)
    mid = np.array([(ax.high + ax.low) / 2 for ax in spec.axes], np.float32)
    targets_b = torch.from_numpy(actions[:, :nb])  # (P, nb)
    targets_a = torch.from_numpy((actions[:, nb:] - mid) / half)  # (P, na) in half-ranges
    pos = targets_b.mean(0)
    # balance pressed against released (balanced accuracy is what is scored): a rare button's
    # presses count more, a button held most of the time (forward) counts its presses less
    pos_weight = ((1 - pos) / pos.clamp_min(1e-3)).clamp(0.1, 10.0)
    net = InverseDynamics(nb, na, training.width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 2), pct_start=0.1)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    done, losses = 0, []
    net.train()
    for step in range(steps):
        idx = rng.integers(0, len(starts), batch_size)
        s = starts[idx]
        x = InverseDynamics.prepare(frames[s], frames[s + 1])  # (b, 9, H, W)
        if rng.random() < 0.5:  # mirror: left becomes right; only where it maps controls onto controls
            x, flip = _mirror(x), True
        else:
            flip = False
        tb, ta = targets_b[idx], targets_a[idx]
        if flip:
            tb, ta = _mirror_targets(spec, tb, ta)
        logits, axes = net(x)
        loss = F.binary_cross_entropy_with_logits(logits, tb, pos_weight=pos_weight) if nb else logits.sum() * 0
        if na:
            loss = loss + F.mse_loss(axes, ta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        done = step + 1
        if log is not None and done % 250 == 0:
            log(f"idm: step {done}/{steps} loss {np.mean(losses[-250:]):.4f}")
        if time.perf_counter() - t0 > seconds:
            break
    meta = {
        "key": key, "version": IDM_VERSION, "controls": list(spec.names), "buttons": nb, "axes": na,
        "resolution": list(ds.resolution), "data": ds.where, "episodes": [ds.ids[e] for e in episodes],
        "pairs": int(len(starts)), "steps_done": done, "seconds": round(time.perf_counter() - t0, 1),
        "final_loss": round(float(np.mean(losses[-100:])), 4), "settings": settings,
    }  # fmt: skip
    idm = IDM(net, spec, meta)
    if cache_dir is not None:
        save_idm(idm, Path(cache_dir) / f"idm-{key}.safetensors")
    return idm


_MIRROR = {"strafe_left": "strafe_right", "strafe_right": "strafe_left"}


def _mirror(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)  # (B, 9, H, W) left-right


def _mirror_targets(spec: ActionSpec, tb: torch.Tensor, ta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A mirrored pair turns and strafes the other way; other controls stay. (The HUD
    and weapon mirror too, which the IDM must learn to ignore: a mild augmentation.)"""
    order = [spec.buttons.index(_MIRROR.get(b, b)) if _MIRROR.get(b, b) in spec.buttons else i for i, b in enumerate(spec.buttons)]
    tb = tb[:, order]
    sign = torch.tensor([-1.0 if ax.name in ("turn", "yaw", "roll", "x", "right", "strafe") else 1.0 for ax in spec.axes])
    return tb, ta * sign


def save_idm(idm: IDM, path: Path) -> None:
    save_tensors(path, idm.net.state_dict(), {"idm": idm.meta, "width": _width(idm.net)})
    atomic_write_json(path.with_suffix(".json"), idm.meta)


def _width(net: InverseDynamics) -> int:
    return int(net.trunk[0].out_channels)


def load_idm(path: str | Path, spec: ActionSpec) -> IDM:
    """An IDM saved by ``save_idm``; refuses one made for other controls."""
    tensors, meta = load_tensors(path, what="inverse-dynamics model")
    info = meta.get("idm", {})
    if info.get("controls") != list(spec.names) or info.get("version") != IDM_VERSION:
        raise EvalError(f"{path} reads controls {info.get('controls')} (version {info.get('version')}), not {list(spec.names)}")
    net = InverseDynamics(info["buttons"], info["axes"], int(meta.get("width", 32)))
    net.load_state_dict(tensors)
    return IDM(net, spec, info)


def score(spec: ActionSpec, predicted: np.ndarray, true: np.ndarray, *, sign_threshold: float = 0.25) -> dict[str, Any]:
    """Per-control agreement of predicted and true actions (N, A), both in spec units."""
    nb = len(spec.buttons)
    out: dict[str, Any] = {"pairs": int(len(true))}
    per: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(spec.buttons):
        p, t = predicted[:, i] > 0.5, true[:, i] > 0.5
        on, off = t.sum(), (~t).sum()
        rec_on = float((p & t).sum() / on) if on else None
        rec_off = float((~p & ~t).sum() / off) if off else None
        parts = [r for r in (rec_on, rec_off) if r is not None]
        per[name] = {
            "kind": "button",
            "accuracy": round(float((p == t).mean()), 4) if len(t) else None,
            "balanced_accuracy": round(float(np.mean(parts)), 4) if on and off else None,  # needs both classes
            "pressed_fraction": round(float(t.mean()), 4) if len(t) else None,
            "score": round(float(np.mean(parts)), 4) if on and off else None,
        }
    for j, ax in enumerate(spec.axes):
        p, t = predicted[:, nb + j], true[:, nb + j]
        thr = sign_threshold * max(abs(ax.low), abs(ax.high))
        big = np.abs(t) > thr
        sign = float((np.sign(p[big]) == np.sign(t[big])).mean()) if big.any() else None
        corr = float(np.corrcoef(p, t)[0, 1]) if len(t) > 2 and p.std() > 0 and t.std() > 0 else None
        per[ax.name] = {
            "kind": "axis",
            "mae": round(float(np.abs(p - t).mean()), 4) if len(t) else None,
            "corr": None if corr is None else round(corr, 4),
            "sign_accuracy": None if sign is None else round(sign, 4),
            "sign_pairs": int(big.sum()),
            "sign_threshold": thr,
            "score": None if sign is None else round(sign, 4),
        }
    out["controls"] = per
    return out


def overall(scored: dict[str, Any], readable: list[str]) -> float | None:
    """Mean score over the readable controls (see the module docstring)."""
    vals = [scored["controls"][c]["score"] for c in readable if scored["controls"][c]["score"] is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def real_pairs(ds: Dataset, episodes: list[int], max_pairs: int = 4000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Consecutive real pairs of ``episodes``: (f0 (N, H, W, 3), f1, actions (N, A)), evenly thinned."""
    f0, f1, acts = [], [], []
    for e in episodes:
        d = ds.episode(e).load(("frames", "actions"))
        f0.append(d["frames"][:-1])
        f1.append(d["frames"][1:])
        acts.append(d["actions"][:-1])
    a0, a1, aa = np.concatenate(f0), np.concatenate(f1), np.concatenate(acts).astype(np.float32)
    if len(a0) > max_pairs:
        keep = np.linspace(0, len(a0) - 1, max_pairs).astype(int)
        a0, a1, aa = a0[keep], a1[keep], aa[keep]
    return a0, a1, aa


def generated_pairs(context_last: np.ndarray, generated: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open-loop rollouts -> IDM pairs. context_last (B, H, W, 3): the last real frame;
    generated (B, T, H, W, 3); actions (B, T, A): actions[:, k] led to generated[:, k].
    Returns (f0 (B*T, ...), f1, actions (B*T, A))."""
    prev = np.concatenate([context_last[:, None], generated[:, :-1]], 1)  # (B, T, H, W, 3)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    return flat(prev), flat(generated), flat(actions)


def above_chance(generated: float | None, real: float | None) -> float | None:
    """(generated - 0.5) / (real - 0.5): every score here is 0.5 at chance, so with a weak IDM
    (real 0.65) a world that ignores its controls (0.53) still scores a plain ratio of 0.8;
    this ratio says how much of the IDM's reading above chance survives (0.2 there)."""
    if generated is None or real is None or real <= 0.5:
        return None
    return round((generated - 0.5) / (real - 0.5), 4)


def compare(idm: IDM, real: tuple[np.ndarray, np.ndarray, np.ndarray], **sets: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Score the IDM on held-out ``real`` pairs (which decides the readable controls) and
    on each named set of pairs; ``ratio`` = a set's overall / the ``reference`` set's."""
    spec = idm.spec
    base = score(spec, idm.predict(real[0], real[1]), real[2])
    readable = [c for c, v in base["controls"].items() if v["score"] is not None and v["score"] >= READABLE]
    result: dict[str, Any] = {
        "readable_threshold": READABLE,
        "readable_controls": readable,
        "held_out_real": {**base, "overall": overall(base, readable)},
    }
    for name, (f0, f1, a) in sets.items():
        s = score(spec, idm.predict(f0, f1), a)
        result[name] = {**s, "overall": overall(s, readable)}
    return result
