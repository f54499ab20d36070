"""The A/B harness of the warp-and-paint world (docs/experiments.md, 2026-12-02): one change at a
time on a fixed subset (the first --episodes training episodes of data/ship64, held in memory),
the same budget in steps, the schedule read off the step fraction. What `neuralworld train
--model warp` (train/warp.py) runs is this recipe with the winner's settings; this script is
kept so the experiment's rows can be re-run as they were:

    .venv/bin/python scripts/warp_ab_train.py runs/exp/P_pre --steps 900 --episodes 20 --unroll 1 --threads 1
    cp -r runs/exp/P_pre runs/exp/C_lowpass   # every variant continues from the same 900 steps
    .venv/bin/python scripts/warp_ab_train.py runs/exp/C_lowpass --steps 2000 --episodes 20 --unroll 6 \
        --unroll-start 0.45 --adv 0.1 --lowpass 4 --resume
    .venv/bin/python scripts/warp_ab_eval.py runs/exp/C_lowpass
"""
import argparse, json, math, os, time, copy, sys
import numpy as np, torch, cv2
from neuralworld.data.store import Dataset
from neuralworld.model.warp import *

p = argparse.ArgumentParser()
p.add_argument("out"); p.add_argument("--minutes", type=float, default=20); p.add_argument("--episodes", type=int, default=20)
p.add_argument("--adv", type=float, default=0.02); p.add_argument("--unroll", type=int, default=1); p.add_argument("--flow", type=float, default=0.1)
p.add_argument("--batch", type=int, default=16); p.add_argument("--lr", type=float, default=5e-4); p.add_argument("--preset", default="mini")
p.add_argument("--adv-start", type=float, default=0.1, help="fraction of the budget before the GAN starts (ramp over the next 0.1)")
p.add_argument("--unroll-start", type=float, default=0.3); p.add_argument("--ctxnoise", type=float, default=0.05)
p.add_argument("--steps", type=int, default=0, help="budget in steps (schedules by step fraction) instead of minutes"); p.add_argument("--lowpass", type=int, default=1); p.add_argument("--resume", action="store_true"); p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
os.makedirs(a.out, exist_ok=True)
ds = Dataset("data/ship64"); train_eps, held = ds.split()
train_eps = train_eps[: a.episodes]
spec = ds.spec
cfg = warp_preset(a.preset, spec, (64, 64)); cfg.dynamics.adv_weight = a.adv; cfg.dynamics.flow_weight = a.flow; cfg.dynamics.context_noise_max = a.ctxnoise; cfg.dynamics.rollout_lowpass = a.lowpass
cfg.validate()
G = WarpNet.from_world(cfg); D = PatchDiscriminator(cfg.dynamics, spec.size); E = copy.deepcopy(G).eval()
for q in E.parameters(): q.requires_grad_(False)
optG = torch.optim.AdamW(G.parameters(), lr=a.lr, betas=(0.5, 0.99), weight_decay=0.0)
optD = torch.optim.AdamW(D.parameters(), lr=2e-4, betas=(0.5, 0.99), weight_decay=0.0)
t_used, step = 0.0, 0
ck = os.path.join(a.out, "ckpt.pt")
if a.resume and os.path.exists(ck):
    s = torch.load(ck, weights_only=False)
    G.load_state_dict(s["G"]); D.load_state_dict(s["D"]); E.load_state_dict(s["E"]); optG.load_state_dict(s["optG"]); optD.load_state_dict(s["optD"])
    t_used, step = s["t_used"], s["step"]
json.dump({"args": vars(a), "config": cfg.to_dict()}, open(os.path.join(a.out, "args.json"), "w"), indent=1)
t0 = time.time()
eps = [ds.episode(i).load(["frames", "actions", "rewards", "terminated"]) for i in train_eps]
print(f"loaded {sum(len(e['frames']) for e in eps)} frames in {time.time()-t0:.1f}s", flush=True)
frames_t = [torch.from_numpy(e["frames"]) for e in eps]
acts_t = [torch.from_numpy(spec.normalize(e["actions"]).astype(np.float32)) for e in eps]
M = cfg.dynamics.window
rng = np.random.default_rng(step + 1)
gen = torch.Generator().manual_seed(step + 7)

def batch(U):
    L = M + U
    fr, ac, rw, te, fl = [], [], [], [], []
    for _ in range(a.batch):
        i = rng.integers(len(eps)); T = len(eps[i]["frames"])
        s = rng.integers(0, T - L)
        f = frames_t[i][s:s + L]  # frames s..s+L-1
        # action that led to frame j is actions[j-1]; for j = s: actions[s-1] (noop at episode start)
        ai = acts_t[i][max(s - 1, 0): s + L - 1]
        if s == 0: ai = torch.cat([torch.from_numpy(spec.normalize(spec.noop()[None]).astype(np.float32)), ai], 0)
        fr.append(f); ac.append(ai)
        rw.append(torch.from_numpy(eps[i]["rewards"][s + M - 1: s + L - 1].astype(np.float32)))
        te.append(torch.from_numpy(eps[i]["terminated"][s + M - 1: s + L - 1].astype(np.float32)))
        g0 = cv2.cvtColor(f[M - 1].numpy(), cv2.COLOR_RGB2GRAY); g1 = cv2.cvtColor(f[M].numpy(), cv2.COLOR_RGB2GRAY)
        fl.append(torch.from_numpy(cv2.calcOpticalFlowFarneback(g1, g0, None, 0.5, 3, 9, 3, 5, 1.1, 0)).permute(2, 0, 1))
    frames = torch.stack(fr).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    return WarpBatch(frames, torch.stack(ac), torch.stack(rw), torch.stack(te), torch.stack(fl) if a.flow > 0 else None)

budget = a.minutes * 60
log = open(os.path.join(a.out, "log.jsonl"), "a")
last_save = time.time(); t_start = time.time() - t_used
while True:
    el = time.time() - t_start
    if (a.steps and step >= a.steps) or (not a.steps and el >= budget): break
    frac = step / a.steps if a.steps else el / budget
    U = 1 if a.unroll <= 1 or frac < a.unroll_start else min(a.unroll, 1 + int((frac - a.unroll_start) / (1 - a.unroll_start) * a.unroll))
    adv = a.adv * min(1.0, max(0.0, (frac - a.adv_start) / 0.1))
    lr = a.lr * min(1.0, (step + 1) / 200)
    for g_ in optG.param_groups: g_["lr"] = lr
    b = batch(U)
    G.train()
    loss, fakes, logs, _ = warp_generator_loss(G, D if adv > 0 else None, b, unroll=U, adv_weight=adv, generator=gen)
    optG.zero_grad(set_to_none=True); loss.backward(); torch.nn.utils.clip_grad_norm_(G.parameters(), 1.0); optG.step()
    if adv > 0:
        dl, dlogs = warp_discriminator_loss(D, fakes)
        optD.zero_grad(set_to_none=True); dl.backward(); optD.step(); logs.update(dlogs)
    with torch.no_grad():
        d = min(0.999, (1 + step) / (10 + step))
        for pe, pg in zip(E.parameters(), G.parameters()): pe.lerp_(pg, 1 - d)
    step += 1
    if step % 50 == 0:
        logs.update(step=step, t=round(el), U=U, adv=adv, loss=float(loss))
        log.write(json.dumps(logs) + "\n"); log.flush()
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in logs.items()}), flush=True)
    if time.time() - last_save > 300:
        torch.save({"G": G.state_dict(), "D": D.state_dict(), "E": E.state_dict(), "optG": optG.state_dict(), "optD": optD.state_dict(), "t_used": time.time() - t_start, "step": step}, ck + ".tmp"); os.replace(ck + ".tmp", ck)
        last_save = time.time()
torch.save({"G": G.state_dict(), "D": D.state_dict(), "E": E.state_dict(), "optG": optG.state_dict(), "optD": optD.state_dict(), "t_used": time.time() - t_start, "step": step}, ck + ".tmp"); os.replace(ck + ".tmp", ck)
torch.save({"config": cfg.to_dict(), "E": E.state_dict()}, os.path.join(a.out, "ema.pt"))
print("done", step, "steps", flush=True)
