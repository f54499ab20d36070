"""The one evaluation of every warp A/B run (scripts/warp_ab_train.py): the run's EMA generator as a
bundle (RUN/world), then through WorldSession: open-loop PSNR at t = 1 / 8 / 32 on 64 held-out
windows of data/ship64 beside copy-last, sharpness (variance of the Laplacian) of the first and
32nd played frame against the real next frame's, 2,000 frames under random held controls from the
start frames (sharpness of the first and last 200 against the start frames'), and pictures.

    .venv/bin/python scripts/warp_ab_eval.py RUN      -> RUN/world, RUN/eval.json, RUN/openloop.png, RUN/long_*.png

RUN is a run of scripts/warp_ab_train.py (its ema.pt becomes RUN/world) or of `neuralworld train
--model warp` (RUN/world is its bundle).
"""
import json, os, sys, time
import numpy as np, torch, cv2
from neuralworld.data.store import Dataset
from neuralworld.model.warp import WarpConfig, WarpNet, quantize
from neuralworld.model.unet import PixelCodec
from neuralworld.bundle import save_bundle, load_bundle

torch.set_num_threads(int(os.environ.get("THREADS", "2")))  # 1 beside a training run
run = sys.argv[1]
ds = Dataset("data/ship64"); tr, held = ds.split(); spec = ds.spec
if os.path.exists(os.path.join(run, "ema.pt")):  # a run of scripts/warp_ab_train.py
    s = torch.load(os.path.join(run, "ema.pt"), weights_only=False)
    cfg = WarpConfig.from_dict(s["config"]).validate()
    net = WarpNet.from_world(cfg); net.load_state_dict(s["E"]); net.eval()
    ep0 = ds.episode(tr[0]).load(["frames", "actions"], 0, 16)
    led = np.concatenate([spec.noop()[None], ep0["actions"][:15]])
    save_bundle(os.path.join(run, "world"), cfg, PixelCodec(), net, name="warp-exp", start_frames=ep0["frames"], start_actions=led)
w = load_bundle(os.path.join(run, "world"))  # else a run of neuralworld train --model warp: its bundle
cfg = w.config
M = cfg.dynamics.window

def sharp(f): return float(cv2.Laplacian(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())
def psnr(a, b): return float(10 * np.log10(255.0 ** 2 / max(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2), 1e-10)))

rng = np.random.default_rng(0)
heldeps = [ds.episode(i).load(["frames", "actions"]) for i in held]
# windows: (episode, start) with room for M context + 32 future
wins = []
for _ in range(64):
    i = rng.integers(len(heldeps)); T = len(heldeps[i]["frames"]); s0 = int(rng.integers(1, T - M - 33)); wins.append((i, s0))
def ctx(i, s0):
    e = heldeps[i]; f = e["frames"][s0:s0 + M]; a = e["actions"][s0 - 1:s0 + M - 1]; return f, a
out = {}
# teacher-forced + open loop through the product session, batched
B = len(wins)
F0 = np.stack([ctx(i, s)[0] for i, s in wins]); A0 = np.stack([ctx(i, s)[1] for i, s in wins])
sess = w.start(F0, actions=A0, batch_size=B, seed=0)
fut_f = np.stack([heldeps[i]["frames"][s + M:s + M + 32] for i, s in wins])  # (B, 32, H, W, 3)
fut_a = np.stack([heldeps[i]["actions"][s + M - 1:s + M + 31] for i, s in wins])  # action leading to each future frame
t0 = time.time()
gen = sess.rollout(fut_a)  # (B, 32, H, W, 3)
el = time.time() - t0
last = F0[:, -1]
for t in (1, 8, 32):
    out[f"ol_psnr_{t}"] = float(np.mean([psnr(gen[b, t - 1], fut_f[b, t - 1]) for b in range(B)]))
    out[f"copy_psnr_{t}"] = float(np.mean([psnr(last[b], fut_f[b, t - 1]) for b in range(B)]))
realsharp = np.median([sharp(f) for f in fut_f[:, 0]])
out["tf_sharp_ratio"] = float(np.median([sharp(f) for f in gen[:, 0]]) / realsharp)
out["ol32_sharp_ratio"] = float(np.median([sharp(f) for f in gen[:, 31]]) / realsharp)
out["rollout_fps_b64"] = B * 32 / el
# long run: 2000 frames under random held controls from the start frames
s1 = w.start(seed=1); shs, means = [], []
a = spec.make()
for t in range(2000):
    if t % 8 == 0:
        a = spec.make(forward=float(rng.random() < 0.6), turn=float(rng.uniform(-8, 8)))
    f = s1.step(a)
    if t % 10 == 0: shs.append(sharp(f)); means.append(float(f.mean()))
    if t in (0, 49, 199, 999, 1999): cv2.imwrite(os.path.join(run, f"long_{t+1}.png"), cv2.cvtColor(cv2.resize(f, (128, 128), interpolation=cv2.INTER_NEAREST), cv2.COLOR_RGB2BGR))
ref = np.median([sharp(f) for f in w.start_frames])
out["long_sharp_first200"] = float(np.median(shs[:20]) / ref); out["long_sharp_last200"] = float(np.median(shs[-20:]) / ref)
out["long_mean_last"] = means[-1]
# picture: 4 windows: context last | gen t1 | real t1 | gen t8 | real t8 | gen t32 | real t32
rows = []
for b in range(6):
    rows.append(np.concatenate([last[b], gen[b, 0], fut_f[b, 0], gen[b, 7], fut_f[b, 7], gen[b, 31], fut_f[b, 31]], 1))
img = np.concatenate(rows, 0)
cv2.imwrite(os.path.join(run, "openloop.png"), cv2.cvtColor(cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST), cv2.COLOR_RGB2BGR))
json.dump(out, open(os.path.join(run, "eval.json"), "w"), indent=1)
print(json.dumps({k: round(v, 3) for k, v in out.items()}))
