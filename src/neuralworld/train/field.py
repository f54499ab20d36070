"""The field world (model/field.py): fitted geometry, then one stage that trains the renderer.

Before any step, the recording gives what is not learned by gradient: the map area the grids
cover, the cells the player walked (walls) and their floor heights, the kinematics (least
squares) and the localisation bank. Then the renderer learns the recorded frames at their
recorded poses by L1 (Adam; the grids at ``grid_lr_scale`` x the rate), with a patch critic
beside it when ``adv_weight`` > 0 (start that from an L1 field: ``--init-world``).

One process (the field's grids are read sparsely; a run on this CPU is minutes to hours).
The same promises as ``loop.run_stage``: exact resume (each step's frames come from
(seed, stage, step)), EMA weights in the bundle, atomic checkpoints with both optimizers,
metrics and TensorBoard.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from neuralworld.bundle import build_networks, save_bundle
from neuralworld.data.store import Dataset
from neuralworld.model.field import (
    MODEL_KIND, THUMB, FieldConfig, FieldNet, body_move, count_parameters, field_preset, fit_bob, fit_kinematics, fit_stuck, rotation_axes,
    WEAPON_CYCLE, walk_speeds,
)  # fmt: skip
from neuralworld.model.autoencoder import tensor_to_frames
from neuralworld.model.unet import PixelCodec
from neuralworld.train.config import FIELD_OBJECTIVE, TrainConfig, TrainingError
from neuralworld.train.data import TrainData
from neuralworld.train.loop import EMA, _ema_copy, _rng, load_checkpoint, lr_at, mean_psnr, save_checkpoint, world_to_start_from
from neuralworld.train.run import training_run

STAGE = "field"
POSE_NAMES = ("x", "y", "z", "angle")
EYE_NAME = "eye"
"""The recording's pose column with the eye's height over the feet, where it has one."""
MARGIN = 32.0
"""Map units the grids reach beyond the recorded positions."""
FITTED = ("kinematics", "walls", "floor", "bank", "occupancy")
"""State fitted from the recording before the first step (a run's own, never taken from --init-world)."""
TEXTURE_READER = "pix.0.weight"
"""The ray renderer's first pixel layer: a run that adds a surface texture to a field without one
(``--init-world``) keeps its weights and gives the texture's input channels zeros."""


def _check_poses(ds: Dataset, data: Any) -> None:
    if tuple(ds.info.pose_names or ())[:4] != POSE_NAMES:
        raise TrainingError(f"the field world needs camera poses {list(POSE_NAMES)} in the recording; {data} has "
                            f"{list(ds.info.pose_names or []) or 'none'} (neuralworld record with ViZDoom stores them)")


def train_field(data: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig, *, resume: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Train the field world on the dataset; its bundle lands in ``out/world``."""
    def network_config(preset: str, **where: Any) -> FieldConfig:
        world = field_preset(preset, **where)
        for name, value in cfg.field_objective.items():
            if name not in FIELD_OBJECTIVE:
                raise TrainingError(f"--field-objective {name}: not a field setting; choose from {', '.join(FIELD_OBJECTIVE)}")
            setattr(world.dynamics, name, type(getattr(world.dynamics, name))(value))
        if cfg.field_renderer is not None:
            world.dynamics.renderer = cfg.field_renderer
        ds = Dataset(data)
        _check_poses(ds, data)
        xy = np.concatenate([ds.episode(e).load(("poses",))["poses"][:, :2] for e in range(ds.num_episodes)])
        xy = xy[np.isfinite(xy).all(1)]
        if not len(xy):
            raise TrainingError(f"{data}: no frame has a known pose")
        lo, hi = np.floor(xy.min(0) - MARGIN), np.ceil(xy.max(0) + MARGIN)
        world.dynamics.bounds = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
        if ds.info.camera is not None:
            world.dynamics.hfov = float(ds.info.camera.hfov_deg)
            world.dynamics.aspect = float(ds.info.camera.aspect)
            world.dynamics.depth_unit = float(ds.info.camera.depth_unit)
            world.dynamics.depth_offset = float(ds.info.camera.depth_offset)
        if cfg.init_world:  # going on from a field: its map area (its grids' cells must stay where they are)
            other = world_to_start_from(cfg.init_world, "--init-world")
            if getattr(other, "model", None) != MODEL_KIND:
                raise TrainingError(f"--init-world {cfg.init_world} is not a field world")
            world.dynamics.bounds = tuple(other.config.dynamics.bounds)
        return world

    with training_run(data, out, cfg, resume=resume, progress=progress, network_config=network_config,
                      model=MODEL_KIND) as r:
        if r.d.world_size > 1:
            raise TrainingError("the field world trains in one process: run it without torchrun")
        torch.manual_seed(cfg.seed + 1)
        _, net = build_networks(r.world)
        frames, poses, close, starts = _fit_geometry(net, r.data, r.world)
        r.summary["parameters"] = count_parameters(net)
        r.summary["kinematics_median_error"] = starts.pop("kinematics_error")
        r.summary["bob"] = starts.pop("bob")  # the walk's bob fitted from the recording's eye (share: of its variance)
        held = _held_out(r.data, net)
        net = _train_stage(net.to(r.d.device), cfg, r, frames, poses, close, held).cpu()
        if held is not None:
            r.summary["held_out_psnr"] = _score(net, *held)
        record = {"data": str(data), "model": MODEL_KIND, "preset": cfg.preset, "held_out": cfg.held_out,
                  "batch_size": cfg.field.batch_size, "steps": {STAGE: cfg.field.steps}, "init": cfg.init_world}
        save_bundle(r.path / "world", r.world, PixelCodec(), net, name=r.path.name, training=record, **starts)
        r.summary["bundle"] = str(r.path / "world")
    return r.summary


def _load(ds: Dataset, episodes: list[int], depth: bool = False) -> list[dict[str, np.ndarray]]:
    """The episodes' frames, poses and actions; with ``depth`` (and a recording that has it) each
    frame's column depth too (``column_depth``). Poses are x, y, z, angle and, where the recording
    stored it, the eye's height over the feet (the render's fifth column: the view's bob)."""
    names = tuple(ds.info.pose_names)
    cols = list(range(4)) + ([names.index(EYE_NAME)] if EYE_NAME in names else [])
    out = []
    for e in episodes:
        ep = ds.episode(e)
        d = ep.load(("frames", "poses", "actions"))
        d["poses"] = d["poses"][:, cols]
        if depth and ds.info.camera is not None:
            d["depth"] = column_depth(ep.load(("depth",))["depth"])
        out.append(d)
    return out


def column_depth(depth: np.ndarray) -> np.ndarray:
    """Depth buffers (T, H, W) uint8 -> each column's depth at the horizon (T, W) in buffer steps:
    the median of the middle four rows' nonzero values (0: the weapon covers them: unknown)."""
    H = depth.shape[1]
    mid = depth[:, H // 2 - 2 : H // 2 + 2].astype(np.float32)
    mid[mid == 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-weapon column: unknown
        out = np.nanmedian(mid, axis=1)
    return np.nan_to_num(out, nan=0.0)


def faces_a_wall(depth: np.ndarray, near: float) -> np.ndarray:
    """Column depths (N, W) in map units (0: unknown) -> (N,) bool: the frame's columns' median
    known depth is nearer than ``near`` (a frame with no known column is not)."""
    return np.median(np.where(depth > 0, depth, np.inf), 1) < near


def _fit_geometry(net: FieldNet, data: TrainData, world: FieldConfig) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, dict[str, Any]]:
    """Fill ``net``'s kinematics, walls, floor and bank (and the "ray" renderer's wall map) from
    the training episodes; returns their frames (N, H, W, 3) uint8 and poses (N, 4) with a known
    pose, the indices of those that face a wall nearer than ``close_depth`` (none without depth),
    and the bundle's start."""
    ds, cfg = data.ds, world.dynamics
    if cfg.renderer == "ray" and ds.info.camera is None:
        raise TrainingError(f"--field-renderer ray fits its walls from the recording's depth buffers; {ds.where} has none "
                            "(neuralworld record with ViZDoom stores them)")
    eps = _load(ds, data.train_episodes, depth=cfg.renderer == "ray")
    moves, acts, whole = [], [], []
    for d in eps:
        p = torch.from_numpy(d["poses"][:, :4]).double()
        mv = body_move(p[1:], p[:-1]).numpy()
        ok = np.isfinite(mv).all(1)
        if ok.all():  # an episode with an unknown pose in it adds no moves (they would straddle the gap)
            moves.append(mv)
            acts.append(ds.spec.normalize(d["actions"]))
            whole.append(d)
    if not moves:
        raise TrainingError("the field world's kinematics need episodes with every pose known")
    K = fit_kinematics(moves, acts, turns=rotation_axes(ds.spec))
    with torch.no_grad():
        net.kinematics.copy_(torch.from_numpy(K))
    # the walk's bob: the view's from the recorded eye, then the weapon's from the frames
    eyed = [i for i, d in enumerate(whole) if d["poses"].shape[1] > 4]  # the episodes with the eye (none: no bob)
    eyes = [whole[i]["poses"][:, 4] for i in eyed]
    bob = fit_bob(eyes, [walk_speeds(moves[i], acts[i], K) for i in eyed]) if eyed else {}
    for name in ("bob_period", "bob_phase", "bob_gain", "bob_max"):
        setattr(cfg, name, float(bob.get(name, 0.0)))
    if eyed:  # pressed into a wall: the walking speed a stuck move counts for
        bob.update(fit_stuck(eyes, [moves[i] for i in eyed], [acts[i] for i in eyed], K, bob))
    cfg.bob_stuck = float(bob.get("bob_stuck", 0.0))
    speeds = [walk_speeds(m, a, K, cfg.bob_stuck) for m, a in zip(moves, acts)]
    walked = [(whole[i], speeds[i]) for i in eyed]
    weapon = {}
    if cfg.bob_gain > 0:
        amps = [net.bob_amplitude(torch.from_numpy(v)).numpy() for _, v in walked]
        weapon = fit_weapon([d["frames"] for d, _ in walked], amps, [firing(ds.spec, d["actions"]) for d, _ in walked],
                            bob_period=cfg.bob_period, bob_phase=cfg.bob_phase)
    for name in ("weapon_x", "weapon_y", "weapon_phase"):
        setattr(cfg, name, float(weapon.get(name, 0.0)))
    if cfg.weapon_x or cfg.weapon_y:  # each frame's pose gets the weapon's bob there (columns 5, 6)
        walking = {id(d): v for d, v in zip(whole, speeds)}  # an episode with an unknown pose: its weapon at rest
        for d in eps:
            d["poses"] = np.concatenate([d["poses"], weapon_columns(net, walking.get(id(d)), len(d["poses"]))], 1)
    X = np.concatenate([np.concatenate([m[:-1, :2], a[1 : len(m)], np.ones((len(m) - 1, 1))], 1) for m, a in zip(moves, acts)])
    Y = np.concatenate([m[1:] for m in moves])
    error = np.median(np.abs(X @ K - Y), 0)
    frames = np.concatenate([d["frames"] for d in eps])
    poses = np.concatenate([d["poses"] for d in eps]).astype(np.float32)  # (N, 4 or 5: with the eye)
    keep = np.isfinite(poses).all(1)
    frames, poses = frames[keep], poses[keep]
    if cfg.renderer == "ray":
        depth = ds.info.camera.distance(np.concatenate([d["depth"] for d in eps])[keep])
        with torch.no_grad():
            net.occupancy.copy_(torch.from_numpy(fit_occupancy(net, poses, depth)))
        close = np.flatnonzero(faces_a_wall(depth, cfg.close_depth))
    else:
        close = np.zeros(0, np.int64)
    with torch.no_grad():
        ny, nx = net.walls.shape
        cell = np.floor((poses[:, :2] - net.lo.numpy()) / cfg.wall_cell).astype(np.int64)
        flat = np.clip(cell[:, 1], 0, ny - 1) * nx + np.clip(cell[:, 0], 0, nx - 1)
        walls = np.zeros(ny * nx, np.float32)
        walls[flat] = 1.0
        floor = np.zeros(ny * nx, np.float32)
        order = np.argsort(flat, kind="stable")
        cells, first = np.unique(flat[order], return_index=True)
        for c, chunk in zip(cells, np.split(poses[order, 2], first[1:])):
            floor[c] = float(np.median(chunk))
        net.walls.copy_(torch.from_numpy(walls.reshape(ny, nx)))
        net.floor.copy_(torch.from_numpy(floor.reshape(ny, nx)))
        pick = np.linspace(0, len(frames) - 1, cfg.bank_size).astype(np.int64)
        bank = torch.from_numpy(frames[pick]).permute(0, 3, 1, 2).float() / 127.5 - 1
        net.bank_thumbs.copy_(F.avg_pool2d(bank, THUMB))
        net.bank_poses.copy_(torch.from_numpy(poses[pick, :4]))
    first_ep = eps[0]
    n = 1 if np.isfinite(first_ep["poses"][0, :4]).all() else 0
    if n == 0:
        raise TrainingError("the first training episode's first frame has no pose (the field world starts there)")
    starts = {"start_frames": first_ep["frames"][:1], "start_actions": ds.spec.noop()[None],
              "start_poses": first_ep["poses"][:1, :4].astype(np.float32),
              "kinematics_error": {"forward": round(float(error[0]), 3), "left": round(float(error[1]), 3),
                                   "yaw": round(float(error[2]), 4)},
              "bob": {**{k: round(v, 4) for k, v in bob.items()}, **{f"weapon_{k}" if k == "share" else k: round(v, 4)
                                                                       for k, v in weapon.items()}}}
    return torch.from_numpy(frames), torch.from_numpy(poses), close, starts


def fit_occupancy(net: FieldNet, poses: np.ndarray, depth: np.ndarray, chunk: int = 256) -> np.ndarray:
    """The "ray" renderer's wall map (ny, nx) float32 (1: a wall) from recorded poses (N, 4) and
    column depths along the view (N, W) in map units (0: unknown): each column's ray votes
    "wall" in the cell where it met something and "free" in the cells it crossed before (up to
    a cell short of it: with the camera's offset, a reading is the distance within half a step
    either way, and a margin of a whole step left the walls a few units too near). A cell is a wall when
    at least two rays met it and a quarter of its votes are "wall" (a monster that walked
    through a room is outvoted by the rays that crossed it later)."""
    cfg = net.config
    cell, ny, nx = cfg.occupancy_cell, *net.occupancy.shape
    lo = net.hit_lo.numpy().astype(np.float64)
    col = net.col_angle.numpy().astype(np.float64)
    cos_col = np.cos(np.radians(col))
    steps = net.march_at.numpy().astype(np.float64)  # (S,)
    hits, passes = np.zeros(ny * nx), np.zeros(ny * nx)

    def cells(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ix, iy = np.floor((x - lo[0]) / cell).astype(np.int64), np.floor((y - lo[1]) / cell).astype(np.int64)
        ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        return (iy * nx + ix)[ok]

    for i in range(0, len(poses), chunk):
        p, d = poses[i : i + chunk].astype(np.float64), depth[i : i + chunk].astype(np.float64)
        ang = np.radians(p[:, 3:4] + col[None])  # (n, W)
        dist = d / cos_col  # along each column's own ray
        known = d > 0
        c, s = np.cos(ang), np.sin(ang)
        hits += np.bincount(cells((p[:, 0:1] + c * dist)[known], (p[:, 1:2] + s * dist)[known]), minlength=ny * nx)
        free = known[..., None] & (steps < dist[..., None] - cell)  # (n, W, S)
        x = p[:, 0, None, None] + c[..., None] * steps
        y = p[:, 1, None, None] + s[..., None] * steps
        passes += np.bincount(cells(x[free], y[free]), minlength=ny * nx)
    wall = (hits >= 2) & (hits >= 0.25 * (hits + passes))
    return wall.reshape(ny, nx).astype(np.float32)


def firing(spec: Any, actions: np.ndarray, near: int = 4) -> np.ndarray:
    """(T,) bool: the attack button was held within ``near`` frames (none without one)."""
    if "attack" not in spec.buttons:
        return np.zeros(len(actions), bool)
    held = (actions[:, spec.index("attack")] > 0.5).astype(np.float32)
    return np.convolve(held, np.ones(2 * near + 1), "same") > 0


def episode_speeds(net: FieldNet, spec: Any, episode: dict[str, np.ndarray]) -> np.ndarray | None:
    """An episode's ``walk_speeds`` (T,) by ``net``'s kinematics; None where a pose is unknown."""
    p = torch.from_numpy(episode["poses"][:, :4]).double()
    mv = body_move(p[1:], p[:-1]).numpy()
    if not np.isfinite(mv).all():
        return None
    return walk_speeds(mv, spec.normalize(episode["actions"]), net.kinematics.numpy(), net.config.bob_stuck)


def weapon_columns(net: FieldNet, speeds: np.ndarray | None, frames: int) -> np.ndarray:
    """An episode's frames' weapon bob (T, 2), pixels across and down, by the law play uses
    (``FieldNet.walk`` on the walk's speeds, ``episode_speeds``, and its clock from the episode's
    start); zeros (the weapon at rest) without speeds."""
    if speeds is None:
        return np.zeros((frames, 2), np.float32)
    zeros = np.zeros_like(speeds)
    move = torch.from_numpy(np.stack([zeros, zeros, speeds, np.arange(frames, dtype=np.float64)], 1)).float()
    with torch.no_grad():
        return net.walk(move)[:, 1:].numpy()


def fit_weapon(frames: list[np.ndarray], amplitudes: list[np.ndarray], firing: list[np.ndarray], *, bob_period: float,
               bob_phase: float, max_shift: int = 8, sample: int = 1500, min_share: float = 0.3,
               seed: int = 0) -> dict[str, float]:
    """The weapon's bob from recorded episodes: ``frames[e]`` (T, H, W, 3) uint8, ``amplitudes[e]``
    (T,) the view's bob amplitude at each frame (``fit_bob``'s law), ``firing[e]`` (T,) whether the
    weapon fired near that frame (its recoil is not the bob). The law is Doom's: the weapon moves
    ``weapon_x * A * cos(w)`` pixels across and ``weapon_y * A * |sin(w)|`` down, on a clock of
    ``WEAPON_CYCLE`` view periods, ``w = 2 pi t / (WEAPON_CYCLE * bob_period) + weapon_phase``.

    The weapon at rest is the median of the bottom middle of the frames that stand still, and its
    pixels are those that barely vary among them; each walking frame's shift is the whole-pixel
    one that matches it best; the law's phase (a grid of 128) and its two gains are least squares
    on those shifts. Returns ``FieldNetConfig``'s weapon_x, weapon_y, weapon_phase, and ``share``:
    the shifts' variance the law explains; zeros (a weapon that stays put) under ``min_share``."""
    none = {"weapon_x": 0.0, "weapon_y": 0.0, "weapon_phase": 0.0, "share": 0.0}
    if bob_period <= 0 or not frames:
        return none
    H, W = frames[0].shape[1:3]
    grey = [f.astype(np.float32).mean(-1) for f in frames]
    t = np.concatenate([np.arange(len(f)) for f in frames]).astype(np.float64)
    A = np.concatenate(amplitudes).astype(np.float64)
    calm = ~np.concatenate(firing)
    where = np.concatenate([np.stack([np.full(len(f), e), np.arange(len(f))], 1) for e, f in enumerate(frames)])
    rest = np.flatnonzero(calm & (A < 0.25))
    walking = np.flatnonzero(calm & (A > 2.0))
    if len(rest) < 20 or len(walking) < 50:
        return none
    rng = np.random.default_rng(seed)
    rest = rng.choice(rest, min(len(rest), sample), replace=False)
    walking = np.sort(rng.choice(walking, min(len(walking), sample), replace=False))
    box = (slice(H // 2, H), slice(W // 4, W - W // 4))
    stack = np.stack([grey[e][i][box] for e, i in where[rest]])
    template = np.median(stack, 0)
    spread = np.median(np.abs(stack - template), 0)
    ys, xs = np.nonzero(spread <= min(6.0, float(np.quantile(spread, 0.1))))
    if len(ys) < 12:
        return none
    ys, xs, ref = ys + H // 2, xs + W // 4, template[ys, xs]
    shifts = [(dx, dy) for dx in range(-max_shift, max_shift + 1) for dy in range(-max_shift // 2, max_shift + 1)]
    best = np.zeros((len(walking), 2))
    for n, (e, i) in enumerate(where[walking]):
        err = []
        for dx, dy in shifts:
            yy, xx = ys + dy, xs + dx
            ok = (yy < H) & (xx >= 0) & (xx < W)
            err.append(np.abs(grey[e][i][yy[ok], xx[ok]] - ref[ok]).mean() if ok.sum() >= len(ys) // 2 else np.inf)
        best[n] = shifts[int(np.argmin(err))]
    a, tt = A[walking], t[walking]
    total = float(((best - best.mean(0)) ** 2).sum())
    if total <= 0:
        return none
    fits = []
    for phase in np.linspace(0, 2 * np.pi, 128, endpoint=False):
        w = 2 * np.pi * tt / (WEAPON_CYCLE * bob_period) + phase
        cx, cy = a * np.cos(w), a * np.abs(np.sin(w))
        gx, gy = float(cx @ best[:, 0] / (cx @ cx)), float(cy @ best[:, 1] / (cy @ cy))
        r = float(((gx * cx - best[:, 0]) ** 2).sum() + ((gy * cy - best[:, 1]) ** 2).sum())
        if gx >= 0:  # (-gx, phase + pi) is the same law: across is to the right at the clock's start, as Doom's
            fits.append((r, gx, gy, float(phase)))
    r, gx, gy, phase = min(fits)
    share = 1.0 - r / total
    if share < min_share:
        return {**none, "share": share}
    return {"weapon_x": gx, "weapon_y": gy, "weapon_phase": phase, "share": share}


def _held_out(data: TrainData, net: FieldNet) -> tuple[np.ndarray, np.ndarray] | None:
    """Up to 512 frames of the held-out episodes with known poses (and the weapon's bob, where
    ``net`` has one), spread evenly."""
    if not data.held_episodes:
        return None
    eps = _load(data.ds, data.held_episodes)
    if net.config.weapon_x or net.config.weapon_y:
        for d in eps:
            d["poses"] = np.concatenate([d["poses"], weapon_columns(net, episode_speeds(net, data.ds.spec, d), len(d["poses"]))], 1)
    frames = np.concatenate([d["frames"] for d in eps])
    poses = np.concatenate([d["poses"] for d in eps]).astype(np.float32)
    keep = np.isfinite(poses).all(1)
    pick = np.linspace(0, int(keep.sum()) - 1, min(512, int(keep.sum()))).astype(np.int64)
    return (frames[keep][pick], poses[keep][pick]) if keep.any() else None


@torch.no_grad()
def _score(net: FieldNet, frames: np.ndarray, poses: np.ndarray) -> float:
    """Mean PSNR of the renders at the held-out poses against the recorded frames."""
    out, dev = [], next(net.parameters()).device
    for i in range(0, len(frames), 128):
        y = net.render(torch.from_numpy(poses[i : i + 128]).to(dev))
        out.append(tensor_to_frames(y))
    return round(mean_psnr(np.concatenate(out), frames), 2)


class Critic(nn.Module):
    """A patch critic (spectral norm) of a frame beside the real frame's 8x8 low-pass:
    (B, 6, H, W) -> (B, H/8, W/8) logits. It judges detail, not layout (a critic of the
    frame alone collapses the field to one frame: experiments, field C)."""

    def __init__(self, ch: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.convs = nn.ModuleList([sn(nn.Conv2d(6, ch[0], 4, 2, 1)), sn(nn.Conv2d(ch[0], ch[1], 4, 2, 1)),
                                    sn(nn.Conv2d(ch[1], ch[2], 4, 2, 1)), sn(nn.Conv2d(ch[2], ch[2], 3, padding=1))])
        self.logit = sn(nn.Conv2d(ch[2], 1, 1))

    def forward(self, frame: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        x = torch.cat([frame, lowpass(real)], 1)
        for c in self.convs:
            x = F.leaky_relu(c(x), 0.2)
        return self.logit(x)[:, 0]


def lowpass(x: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """The frame's layout and colour without its detail: averaged over factor x factor blocks, upsampled."""
    return F.interpolate(F.avg_pool2d(x, factor), scale_factor=factor, mode="bilinear", align_corners=False)


def grow_table(table: torch.Tensor, rows: int) -> torch.Tensor:
    """A texture level's hash table (N, F) grown to ``rows`` (a multiple of N, both powers of two)
    that reads exactly as it did: a key's entry is ``key % rows``, and ``(key % rows) % N`` is
    ``key % N``, so entry j starts as entry j % N. Training then tells apart the cells that shared one."""
    n = table.shape[0]
    if rows % n:
        raise TrainingError(f"a texture table of {n} entries cannot grow to {rows}: not a multiple")
    return table.repeat(rows // n, 1)


def _batch(rng: np.random.Generator, n: int, close: np.ndarray, size: int, share: float) -> torch.Tensor:
    """A batch's frame indices: ``share`` of them drawn from ``close`` (when it has any), the rest from all ``n``."""
    k = int(round(size * share)) if len(close) else 0
    return torch.from_numpy(np.concatenate([rng.integers(0, n, size - k), close[rng.integers(0, len(close), k)]]))


def _train_stage(net: FieldNet, cfg: TrainConfig, r: Any, frames: torch.Tensor, poses: torch.Tensor, close: np.ndarray,
                 held: tuple[np.ndarray, np.ndarray] | None) -> FieldNet:
    sc, fc, run = cfg.field, r.world.dynamics, r.folder
    if fc.close_share > 0 and not len(close):
        print(f"[{STAGE}] close_share {fc.close_share}: no recorded frame faces a wall nearer than {fc.close_depth} "
              "(or the recording has no depth): batches draw from all frames", flush=True)
    ckpt = run.path / f"{STAGE}.safetensors"
    if cfg.init_world and not ckpt.exists():  # a resume loads nothing from outside the run
        other = world_to_start_from(cfg.init_world, "--init-world").dynamics
        if not isinstance(other, FieldNet):
            raise TrainingError(f"--init-world {cfg.init_world} is not a field world")
        mine = net.state_dict()
        learned = {k: v for k, v in other.state_dict().items() if k in mine and not k.startswith(FITTED)}
        grown = {k: v for k, v in learned.items() if k == TEXTURE_READER and v.shape != mine[k].shape
                 and v.shape[:1] + v.shape[2:] == mine[k].shape[:1] + mine[k].shape[2:] and v.shape[1] < mine[k].shape[1]}
        for k, v in grown.items():  # the texture's inputs join with zero weights: the field draws what it drew
            learned[k] = torch.cat([v, v.new_zeros(v.shape[0], mine[k].shape[1] - v.shape[1], *v.shape[2:])], 1)
        for k, v in list(learned.items()):  # a larger texture table: the field draws what it drew
            if k.startswith("textures.") and v.shape != mine[k].shape and v.shape[1:] == mine[k].shape[1:]:
                learned[k] = grow_table(v, mine[k].shape[0])
        bad = [k for k, v in learned.items() if v.shape != mine[k].shape]
        fresh = [k for k in mine if not k.startswith(FITTED) and k not in learned]
        if bad or any(not k.startswith("textures.") for k in fresh):
            raise TrainingError(f"--init-world {cfg.init_world}: its field does not fit this run's (another preset or map area? "
                                f"{(bad + fresh)[:3]})")
        if fresh:
            print(f"[{STAGE}] --init-world: its field has no surface texture; the texture starts fresh", flush=True)
        net.load_state_dict({**mine, **learned})
    is_grid = lambda name: name.startswith(("grids.", "hit_grids.", "textures."))  # noqa: E731
    grids = [p for name, p in net.named_parameters() if is_grid(name)]
    rest = [p for name, p in net.named_parameters() if not is_grid(name) and p.requires_grad]
    opt = torch.optim.Adam([{"params": grids}, {"params": rest}])
    scale = (fc.grid_lr_scale, 1.0)
    ema = EMA(net, sc.ema_decay)
    dev = next(net.parameters()).device  # the frames stay in memory; each batch goes to the net's device
    critic = Critic().to(dev) if fc.adv_weight > 0 else None
    opt_d = torch.optim.Adam(critic.parameters(), lr=sc.lr * 0.5, betas=(0.0, 0.99)) if critic is not None else None
    companions = {"critic": (critic, opt_d)} if critic is not None else None
    step = 0
    if ckpt.exists():
        step = int(load_checkpoint(ckpt, net, ema, opt, companions)["step"])
        print(f"[{STAGE}] resuming at step {step}/{sc.steps}", flush=True)
    bar = None
    if run.progress:
        from tqdm import tqdm

        bar = tqdm(total=sc.steps, initial=step, desc=STAGE, unit="step", dynamic_ncols=True)
    t_last = time.perf_counter()
    net.train()
    while step < sc.steps:
        lr = lr_at(step, sc)
        for g, s in zip(opt.param_groups, scale):
            g["lr"] = lr * s
        idx = _batch(_rng(cfg.seed, STAGE, step), len(frames), close, sc.batch_size, fc.close_share)
        x = frames[idx].to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = net.render(poses[idx].to(dev))
        l1 = (y - x).abs().mean()
        loss, metrics = l1, {"l1": l1.item()}

        if critic is not None:
            d_loss = F.relu(1 - critic(x, x)).mean() + F.relu(1 + critic(y.detach(), x)).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            g_adv = -critic(y, x).mean()
            loss = loss + fc.adv_weight * g_adv
            metrics.update(critic=d_loss.item(), adv=g_adv.item())
        if not torch.isfinite(loss):
            raise TrainingError(f"[{STAGE}] the loss became NaN/inf at step {step}; stopped. "
                                + ("The last checkpoint is intact: lower the learning rate and --resume." if ckpt.exists() else ""))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(net, step)
        step += 1
        metrics["loss"] = loss.item()
        if step % cfg.log_every == 0 or step == sc.steps:
            dt = time.perf_counter() - t_last
            run.logger.scalars(STAGE, step, {**metrics, "lr": lr, "samples_per_s": sc.batch_size * cfg.log_every / max(dt, 1e-9)})
            t_last = time.perf_counter()
            if bar is not None:
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        if bar is not None:
            bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == sc.steps:
            save_checkpoint(ckpt, net, ema, opt, step, {"stage": STAGE}, companions)
        if held is not None and (step % cfg.validate_every == 0 or step == sc.steps):
            ev = _ema_copy(net, ema)
            psnr = _score(ev, *held)
            run.logger.scalars(STAGE, step, {"held_out_psnr": psnr}, kind="val")
            with torch.no_grad():
                shown = torch.from_numpy(held[1][:: max(1, len(held[1]) // 8)][:8]).to(dev)
                gen = tensor_to_frames(ev.render(shown))
            real = held[0][:: max(1, len(held[1]) // 8)][:8]
            run.logger.images(f"{STAGE}/held_out", step, [real, gen])
            net.train()
    if bar is not None:
        bar.close()
    ema.copy_to(net)
    return net.eval()
