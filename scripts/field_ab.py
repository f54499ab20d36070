"""A/B probe: can a network hold the level itself and render it from a camera pose, sharp?

    .venv/bin/python scripts/field_ab.py DATA OUT [--steps 3000] [--threads 2] [--adv 0.1] [--resume]

A feasibility experiment for docs/experiments.md, not part of the package. The network is a
feature field over (x, y, ray angle) (two trilinear grids, coarse and fine) read once per screen
column (Doom's view is 2.5-D: a column is what one horizontal ray meets) and a small
convolutional decoder that turns the row of 64 column features into the 64x64 picture, with a
learned overlay (the weapon). It is trained by L1 on recorded frames at their recorded poses;
held-out episodes (the last tenth) are rendered at their recorded poses and scored.

Writes OUT/metrics.json and OUT/strip.png (held-out real vs rendered; held turn each way and a
walk forward (14 map units a frame, the recorded median held-forward speed) from the first recorded pose, rendered at exact poses)."""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from neuralworld.data.store import Dataset
from neuralworld.eval.metrics import psnr, sharpness
from neuralworld.eval.probes import flows, horizontal_flow, radial_flow


class Field(nn.Module):
    def __init__(self, lo: np.ndarray, hi: np.ndarray, W: int = 64, H: int = 64, hfov: float = 90.0,
                 cells: tuple[float, float] = (16.0, 64.0), angles: tuple[int, int] = (180, 36), feats: int = 8):
        super().__init__()
        self.register_buffer("lo", torch.tensor(lo, dtype=torch.float32))
        self.register_buffer("hi", torch.tensor(hi, dtype=torch.float32))
        u = (torch.arange(W, dtype=torch.float32) + 0.5) / W * 2 - 1
        self.register_buffer("col_angle", -torch.rad2deg(torch.atan(u * math.tan(math.radians(hfov / 2)))))  # (W,) deg, left = +
        self.grids = nn.ParameterList()
        for cell, n_ang in zip(cells, angles):
            nx, ny = (int(math.ceil((hi[i] - lo[i]) / cell)) + 1 for i in range(2))
            self.grids.append(nn.Parameter(torch.randn(1, feats, n_ang, ny, nx) * 0.1))
        C = feats * len(cells) + 1
        self.W, self.H = W, H
        self.col = nn.Sequential(nn.Conv1d(C, 256, 3, padding=1), nn.GELU(), nn.Conv1d(256, 32 * 8, 3, padding=1))
        ch = 48
        self.up = nn.ModuleList([nn.Sequential(nn.Conv2d(32 if i == 0 else ch, ch, 3, padding=1), nn.GELU(),
                                               nn.Conv2d(ch, ch, 3, padding=1), nn.GELU()) for i in range(3)])
        self.out = nn.Conv2d(ch, 3, 3, padding=1)
        self.overlay = nn.Parameter(torch.zeros(1, 4, H, W))  # rgb + alpha logit (the weapon)
        with torch.no_grad():
            self.overlay[:, 3] = -4.0

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        """pose (B, 4): x, y, z, angle (deg) -> frames (B, 3, H, W) in [-1, 1]."""
        B = pose.shape[0]
        xy = (pose[:, :2] - self.lo) / (self.hi - self.lo) * 2 - 1  # (B, 2)
        ang = torch.remainder(pose[:, 3:4] + self.col_angle[None], 360.0)  # (B, W)
        feats = []
        for g in self.grids:
            n_ang = g.shape[2]
            gw = torch.cat([g, g[:, :, :1]], 2)  # wrap the angle
            a = (ang / 360.0 * n_ang) * (2.0 / n_ang) - 1  # slice index k -> k * 2 / n_ang - 1 over n_ang + 1 slices
            grid = torch.stack([xy[:, None, 0].expand(B, self.W), xy[:, None, 1].expand(B, self.W), a], -1)  # (B, W, 3)
            f = F.grid_sample(gw.expand(1, -1, -1, -1, -1), grid.reshape(1, B * self.W, 1, 1, 3), align_corners=True,
                              padding_mode="border")  # (1, C, B*W, 1, 1)
            feats.append(f.reshape(g.shape[1], B, self.W).permute(1, 0, 2))
        z = (pose[:, 2:3, None] / 128.0).expand(B, 1, self.W)
        x = self.col(torch.cat(feats + [z], 1)).reshape(B, 32, 8, self.W)
        for blk in self.up:
            x = F.interpolate(x, scale_factor=(2, 1), mode="nearest")
            x = blk(x)
        scene = torch.tanh(self.out(x))
        alpha = torch.sigmoid(self.overlay[:, 3:])
        return scene * (1 - alpha) + torch.tanh(self.overlay[:, :3]) * alpha


class Critic(nn.Module):
    """A patch critic (spectral norm): (B, inputs, 64, 64) -> (B, 8, 8) logits; 3 inputs: the frame
    alone, 6: the frame beside the real frame's low-pass (``lowpass``), so it judges detail, not layout."""

    def __init__(self, ch: tuple[int, int, int] = (32, 64, 128), inputs: int = 3):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.convs = nn.ModuleList([sn(nn.Conv2d(inputs, ch[0], 4, 2, 1)), sn(nn.Conv2d(ch[0], ch[1], 4, 2, 1)),
                                    sn(nn.Conv2d(ch[1], ch[2], 4, 2, 1)), sn(nn.Conv2d(ch[2], ch[2], 3, padding=1))])
        self.logit = sn(nn.Conv2d(ch[2], 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = F.leaky_relu(c(x), 0.2)
        return self.logit(x)[:, 0]


def lowpass(x: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """The frame's layout and colour without its detail: averaged over factor x factor blocks, upsampled."""
    return F.interpolate(F.avg_pool2d(x, factor), scale_factor=factor, mode="bilinear", align_corners=False)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data"), p.add_argument("out")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--adv", type=float, default=0.0, help="weight of the hinge loss against a patch critic (0: L1 alone)")
    p.add_argument("--critic", choices=("frame", "lowpass"), default="frame",
                   help="what the critic sees: the frame alone, or the frame beside the real frame's low-pass")
    p.add_argument("--init", default=None, help="a field.pt to start from (a converged L1 field)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (OUT/checkpoint.pt)")
    p.add_argument("--resume", action="store_true", help="go on from OUT/checkpoint.pt")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = Dataset(a.data)
    n = ds.num_episodes
    eps = list(range(n))
    held = eps[-max(1, n // 10):]
    train = eps[: -len(held)]
    load = lambda es: [ds.episode(e).load(("frames", "poses")) for e in es]  # noqa: E731
    tr, ho = load(train), load(held)
    F_ = np.concatenate([d["frames"] for d in tr])
    P_ = np.concatenate([d["poses"] for d in tr]).astype(np.float32)
    lo, hi = P_[:, :2].min(0) - 32, P_[:, :2].max(0) + 32
    net = Field(lo, hi)
    if a.init:
        net.load_state_dict(torch.load(a.init, weights_only=True))
    grid_params = list(net.grids.parameters())
    rest = [q for nme, q in net.named_parameters() if not nme.startswith("grids")]
    opt = torch.optim.Adam([{"params": grid_params, "lr": a.lr * 5}, {"params": rest, "lr": a.lr}])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[a.lr * 5, a.lr], total_steps=a.steps, pct_start=0.05)
    critic = Critic(inputs=6 if a.critic == "lowpass" else 3) if a.adv > 0 else None
    seen = (lambda f, real: torch.cat([f, lowpass(real)], 1)) if a.critic == "lowpass" else (lambda f, real: f)  # noqa: E731
    opt_d = torch.optim.Adam(critic.parameters(), lr=a.lr * 0.5, betas=(0.0, 0.99)) if critic is not None else None
    rng = np.random.default_rng(0)
    t0 = time.time()
    ckpt, first = out / "checkpoint.pt", 0
    parts = {"net": net, "opt": opt, "sched": sched, **({"critic": critic, "opt_d": opt_d} if critic is not None else {})}
    if a.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state.get("steps", a.steps) != a.steps or state.get("adv", a.adv) != a.adv:  # (the schedule's length is in it)
            raise SystemExit(f"{ckpt} is a run of --steps {state.get('steps')} --adv {state.get('adv')}: resume it with the same")
        for name, part in parts.items():
            part.load_state_dict(state[name])
        rng.bit_generator.state, first, t0 = state["rng"], state["step"], time.time() - state["seconds"]
        print(f"resumed at step {first}", flush=True)
    frames_t = torch.from_numpy(F_)
    poses_t = torch.from_numpy(P_)
    for step in range(first, a.steps):
        idx = torch.from_numpy(rng.integers(0, len(F_), a.batch))
        x = frames_t[idx].permute(0, 3, 1, 2).float() / 127.5 - 1
        y = net(poses_t[idx])
        loss = (y - x).abs().mean()
        if critic is not None:
            d_loss = F.relu(1 - critic(seen(x, x))).mean() + F.relu(1 + critic(seen(y.detach(), x))).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            loss = loss + a.adv * -critic(seen(y, x)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % a.checkpoint_every == 0 and step + 1 < a.steps:  # atomic: written aside, then renamed
            torch.save({**{name: part.state_dict() for name, part in parts.items()}, "rng": rng.bit_generator.state,
                        "step": step + 1, "seconds": time.time() - t0, "steps": a.steps, "adv": a.adv}, out / "checkpoint.tmp")
            (out / "checkpoint.tmp").replace(ckpt)
        if step % 250 == 0 or step == a.steps - 1:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    net.eval()
    res: dict = {"adv": a.adv, "critic": a.critic, "init": a.init, "steps": a.steps, "seconds": round(time.time() - t0, 1), "parameters": sum(q.numel() for q in net.parameters())}
    with torch.no_grad():
        real, gen, copy = [], [], []
        for d in ho:
            fr, po = d["frames"], torch.from_numpy(d["poses"].astype(np.float32))
            g = np.concatenate([to_uint8(net(po[i:i + 100])) for i in range(0, len(po), 100)])
            real.append(fr), gen.append(g)
        R, G = np.concatenate(real), np.concatenate(gen)
        res["heldout_psnr"] = round(float(np.mean(psnr(R, G))), 2)
        # copying the previous frame: one PSNR per episode, of its pooled error (the episode as one tall frame)
        res["heldout_copy_last_psnr"] = round(float(np.mean([psnr(r[1:].reshape(1, -1, *r.shape[2:]), r[:-1].reshape(1, -1, *r.shape[2:]))
                                                             for r in real])), 2)
        res["heldout_sharpness_ratio"] = round(float(np.median(sharpness(G)) / np.median(sharpness(R))), 3)
        # controls at exact poses from the first recorded pose
        p0 = torch.from_numpy(tr[0]["poses"][0].astype(np.float32))
        def walk(turn: float, fwd: float) -> np.ndarray:
            ps, cur = [], p0.clone()
            for _ in range(25):
                ps.append(cur.clone())
                cur[3] += turn
                r = math.radians(float(cur[3]))
                cur[0] += fwd * math.cos(r)
                cur[1] += fwd * math.sin(r)
            return to_uint8(net(torch.stack(ps)))
        rows = {"turn left": walk(8.0, 0.0), "turn right": walk(-8.0, 0.0), "forward": walk(0.0, 14.0)}
        for name, fr in rows.items():
            if name == "forward":
                res["forward median radial flow (real +1.05 px/frame)"] = round(float(np.median(flows(fr, radial_flow))), 2)
            dx = flows(fr, horizontal_flow)  # (24,)
            res[f"{name} median dx 1-12 / 13-24"] = [round(float(np.median(dx[:12])), 2), round(float(np.median(dx[12:])), 2)]
        res["real turn slide px/frame at 8 deg"] = 3.84
        big = lambda f: cv2.resize(f, (128, 128), interpolation=cv2.INTER_NEAREST)  # noqa: E731
        k = np.linspace(0, len(real[0]) - 1, 8).astype(int)
        strip = [np.concatenate([big(f) for f in real[0][k]], 1), np.concatenate([big(f) for f in gen[0][k]], 1)]
        strip += [np.concatenate([big(f) for f in fr[::4][:7]] + [big(fr[-1])], 1) for fr in rows.values()]
        Image.fromarray(np.concatenate(strip, 0)).save(out / "strip.png")
    torch.save(net.state_dict(), out / "field.pt")
    (out / "metrics.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
