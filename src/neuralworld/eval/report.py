"""The evaluation report: every part of the suite on one world (and its baselines), as
markdown a person reads, plots a person looks at, and metrics.json a program reads.

``neuralworld eval RUN --report DIR [--baseline OTHER ...]`` runs:

``fidelity``   fidelity.evaluate: teacher-forced and open-loop PSNR/SSIM vs copy-last
``control``    the IDM (idm.py) on generated vs real pairs, and visual odometry on
               scripted and recorded turns (control.py)
``stability``  long rollouts, per-frame statistics inside the real band (stability.py)
``memory``     turn 360° / walk there and back (memory.py)
``speed``      a short bench run (bench.py), or the figures of a bench JSON given

Baselines are any other worlds (run folders or bundles) that fit the same dataset;
each runs through the same ``WorldSession`` and the same measurements, on the
same held-out split (the evaluated run's), and gets a column in every table.

Output::

    DIR/
      report.md                 tables, verdicts, links to everything below
      metrics.json              every figure (the markdown's numbers come from here)
      psnr_vs_horizon.png       open-loop PSNR per step: each world vs copy-last
      stability_<world>.png     traces over the long rollout, the real band shaded
      stability_frames_<world>.png  snapshots along the long rollout
      control_turn_<world>.png  commanded vs measured turn on the scripted turns
      memory_<world>.png        start | turned 180° | back at 360° (and the walk)
      stability_<world>.npz     full per-frame traces
      rollout.mp4               real | teacher-forced | open-loop (the evaluated world)
      fidelity/<world>/         fidelity.evaluate's own folder per world
      idm-<key>.safetensors/.json  the inverse-dynamics model, reused while the data is the same
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from neuralworld.eval import control as ctl
from neuralworld.eval import idm as idm_mod
from neuralworld.eval import memory as mem
from neuralworld.eval import stability as stab
from neuralworld.eval.fidelity import DEFAULT_HORIZONS, EvalError, _check_fits, evaluate
from neuralworld.eval.inputs import as_world, default_context, open_loop, real_windows, sample_real_frames, turn_axis
from neuralworld.state_io import atomic_write_bytes, atomic_write_json

PARTS = ("fidelity", "control", "stability", "memory", "speed")
IDM_BAR = 0.9  # generated / real IDM accuracy the shipped world must reach (DESIGN.md)


def _world_label(path: str | os.PathLike, taken: set[str]) -> str:
    p = Path(path)
    base = p.name if p.name not in ("world", "") else p.parent.name
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", base) or "world"
    n, out = 2, label
    while out in taken:
        out, n = f"{label}_{n}", n + 1
    taken.add(out)
    return out


def run_report(
    world_path: str | os.PathLike,
    data_path: str | os.PathLike | None = None,
    *,
    report_dir: str | os.PathLike,
    baselines: Sequence[str | os.PathLike] = (),
    skip: Sequence[str] = (),
    sampler: str = "quality",
    seed: int = 0,
    context: int | None = None,
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    episodes: int | None = None,
    stability_frames: int = 10_000,
    stability_window: int = 100,
    random_rollouts: int = 1,
    control_windows: int = 8,
    control_horizon: int = 32,
    memory_starts: int = 8,
    idm_steps: int = 1500,
    idm_seconds: float = 180.0,
    idm_max_pairs: int = 20000,
    bench_json: str | os.PathLike | None = None,
    bench_frames: int = 20,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the suite and write DIR/report.md + metrics.json + plots; returns the metrics."""
    from neuralworld.eval.inputs import open_inputs

    t0 = time.perf_counter()
    unknown = sorted(set(skip) - set(PARTS))
    if unknown:
        raise EvalError(f"--skip takes {', '.join(PARTS)}; got {', '.join(unknown)}")
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = open_inputs(world_path, data_path)
    ds = inputs.data
    taken: set[str] = set()
    worlds = [(_world_label(world_path, taken), inputs.world, str(world_path))]
    for b in baselines:
        try:
            w = as_world(b)
            _check_fits(w, ds)
        except EvalError as e:
            raise EvalError(f"baseline {b}: {e}") from None
        worlds.append((_world_label(b, taken), w, str(b)))
    ctx = default_context(inputs.world, context)
    metrics: dict[str, Any] = {
        "world": worlds[0][0],
        "worlds": {name: {"path": p, "resolution": list(w.resolution), "memory_frames": int(w.config.dynamics.memory_frames)}
                   for name, w, p in worlds},
        "baselines": [name for name, _, _ in worlds[1:]],
        "data": inputs.data_path,
        "held_out": {"fraction": inputs.held_out_fraction, "source": inputs.held_out_source,
                     "episodes": [ds.ids[e] for e in inputs.held_episodes]},
        "sampler": sampler, "seed": seed, "context_frames": ctx, "skipped": list(skip),
    }  # fmt: skip
    plots: dict[str, str] = {}

    if "fidelity" not in skip:
        metrics["fidelity"] = {}
        for i, (name, w, p) in enumerate(worlds):
            log(f"fidelity: {name}")
            r = evaluate(p, inputs.data_path, out=out / "fidelity" / name, horizons=horizons, episodes=episodes,
                         context=ctx, sampler=sampler, held_out=inputs.held_out_fraction, seed=seed, video=(i == 0))  # fmt: skip
            metrics["fidelity"][name] = r
            if i == 0 and r.get("video"):
                shutil.copyfile(r["video"], out / "rollout.mp4")
        plots["psnr_vs_horizon"] = _plot_psnr(metrics["fidelity"], out / "psnr_vs_horizon.png")

    if "control" not in skip:
        log("control: training the inverse-dynamics model on real pairs of the training episodes")
        idm = idm_mod.train_idm(ds, inputs.train_episodes, steps=idm_steps, seconds=idm_seconds, max_pairs=idm_max_pairs,
                                seed=seed, cache_dir=out, log=log)  # fmt: skip
        held_pairs = idm_mod.real_pairs(ds, inputs.held_episodes)
        win = real_windows(inputs, ctx, control_horizon, per_episode=2, max_windows=control_windows)
        real_future = win.frames[:, ctx:]  # (B, T, H, W, 3)
        actions = win.led_to[:, ctx:]  # (B, T, A)
        real_set = idm_mod.generated_pairs(win.frames[:, ctx - 1], real_future, actions)
        hfov = ctl.dataset_hfov(ds)
        axis = turn_axis(ds.spec)
        metrics["control"] = {"idm": {"model": idm.meta}, "hfov_deg": hfov, "windows": int(len(win.frames)),
                              "horizon": control_horizon, "worlds": {}}  # fmt: skip
        if axis is not None:
            metrics["control"]["turn_on_real_recorded"] = {
                measure: ctl.agreement(*ctl.measure_sequences(win.frames[:, ctx - 1], real_future, ctl.commanded_right(actions, axis),
                                                              hfov, measure)[:2])
                for measure in ctl.MEASURES
            }  # fmt: skip
        for name, w, _ in worlds:
            log(f"control: {name}")
            gen = open_loop(w, win, ctx, sampler=sampler, seed=seed)  # (B, T, H, W, 3)
            gen_set = idm_mod.generated_pairs(win.frames[:, ctx - 1], gen, actions)
            cmp = idm_mod.compare(idm, held_pairs, real_same_windows=real_set, generated=gen_set)
            g, r = cmp["generated"]["overall"], cmp["real_same_windows"]["overall"]
            cmp["ratio_generated_to_real"] = round(g / r, 4) if g is not None and r else None
            cmp["meets_bar"] = None if cmp["ratio_generated_to_real"] is None else cmp["ratio_generated_to_real"] >= IDM_BAR
            cmp["ratio_above_chance"] = _above_chance(g, r)
            entry: dict[str, Any] = {"idm": cmp}
            if axis is None:
                entry["turn"] = {"skipped": "the world has no turn or yaw axis"}
            else:
                rates = ctl.turn_rates(axis)
                acts, right = ctl.scripted_turn_actions(w.spec, axis, rates)
                starts = win.frames[: len(rates)] if len(win.frames) >= len(rates) else win.frames[np.arange(len(rates)) % len(win.frames)]
                led = win.led_to[: len(starts)] if len(win.frames) >= len(rates) else win.led_to[np.arange(len(rates)) % len(win.frames)]
                from neuralworld.eval.fidelity import Windows

                sw = Windows(starts, led, [], [])
                scripted = open_loop(w, sw, ctx, actions=acts, sampler=sampler, seed=seed)  # (R, T, H, W, 3)
                entry["turn_recorded"], entry["turn_scripted"], per_rate = {}, {"rates": rates}, {}
                for measure in ctl.MEASURES:
                    c, m, _ = ctl.measure_sequences(win.frames[:, ctx - 1], gen, ctl.commanded_right(actions, axis), hfov, measure)
                    entry["turn_recorded"][measure] = ctl.agreement(c, m)
                    c, m, _ = ctl.measure_sequences(starts[:, ctx - 1], scripted, right, hfov, measure)
                    per_rate[measure] = pr = m.reshape(len(rates), -1)
                    entry["turn_scripted"][measure] = {**ctl.agreement(c, m), "median_measured_per_rate": {
                        str(rt): {"right": round(float(np.median(pr[k][right[k] > 0])), 3),
                                  "left": round(float(np.median(pr[k][right[k] < 0])), 3)} for k, rt in enumerate(rates)
                    }}  # fmt: skip
                plots[f"control_turn_{name}"] = _plot_turn(right, per_rate, rates, out / f"control_turn_{name}.png", name)
            metrics["control"]["worlds"][name] = entry

    if "stability" not in skip:
        log("stability: the real band")
        project = stab.FeatureProjection()
        reference = sample_real_frames(ds, inputs.train_episodes, 2000, seed)
        held_seqs, held_acts = [], []
        for e in inputs.held_episodes:
            d = ds.episode(e).load(("frames", "actions"))
            held_seqs.append(d["frames"])
            held_acts.append(d["actions"])
        band = stab.real_band(reference, held_seqs, stability_window, project)
        real_judged = {}
        for e, seq, acts in zip(inputs.held_episodes, held_seqs, held_acts):
            st = stab.frame_stats(seq)
            change = stab.frame_change(seq[0], seq)
            moving = np.concatenate([[False], stab.controls_moving(ds.spec, acts[:-1])])  # actions[t-1] led to frame t
            fr = stab.frozen_flags(change, moving)
            j = stab.judge(st, fr, project(seq), band)
            real_judged[ds.ids[e]] = {k: j[k] for k in ("frames", "windows_out", "in_band_fraction", "collapse_frame", "frozen_fraction", "out_reasons")}
        metrics["stability"] = {"band": band.to_json(), "real_held_out": real_judged, "worlds": {}}
        for name, w, _ in worlds:
            log(f"stability: {name}, {stability_frames} frames")
            r = stab.run_stability(w, inputs, band, frames=stability_frames, random_rollouts=random_rollouts, context=ctx,
                                   sampler=sampler, seed=seed, log=log)  # fmt: skip
            traces, snaps, steps, names = r.pop("_traces"), r.pop("_snapshots"), r.pop("_snapshot_steps"), r.pop("_names")
            _save_npz(out / f"stability_{name}.npz", traces=traces, names=names)
            metrics["stability"]["worlds"][name] = r
            plots[f"stability_{name}"] = _plot_stability(traces, names, band, r, out / f"stability_{name}.png", name)
            plots[f"stability_frames_{name}"] = _save_strip(snaps, names, steps, out / f"stability_frames_{name}.png")

    if "memory" not in skip:
        refs = mem.memory_references(inputs, seed)
        metrics["memory"] = {"references": refs, "worlds": {}}
        for name, w, _ in worlds:
            log(f"memory: {name}")
            r = mem.run_memory(w, inputs, context=ctx, starts=memory_starts, sampler=sampler, seed=seed)
            left = r.pop("_left")
            turn_frames, walk_frames = r.pop("_turn_frames", None), r.pop("_walk_frames", None)
            metrics["memory"]["worlds"][name] = r
            plots[f"memory_{name}"] = _save_memory_strip(left, turn_frames, walk_frames, out / f"memory_{name}.png")

    if "speed" not in skip:
        metrics["speed"] = _speed(worlds, bench_json, sampler, bench_frames, log)

    metrics["plots"] = {k: Path(v).name for k, v in plots.items() if v}
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / "metrics.json", _jsonable(metrics))
    atomic_write_bytes(out / "report.md", render_markdown(metrics).encode())
    return metrics


# ---------------------------------------------------------------------------
# speed
def _speed(worlds: list, bench_json: str | os.PathLike | None, sampler: str, frames: int, log: Callable) -> dict[str, Any]:
    if bench_json is not None:
        lines = [ln for ln in Path(bench_json).read_text().splitlines() if ln.strip().startswith("{")]
        if not lines:
            raise EvalError(f"{bench_json} holds no bench JSON line (neuralworld bench prints it last)")
        b = json.loads(lines[-1])
        return {"source": str(bench_json), "worlds": {worlds[0][0]: _bench_summary(b)}}
    from neuralworld.bench import run_bench

    res = {"source": f"neuralworld.bench.run_bench: eager, batch 1, {frames} steps, 2 threads (a short run; use neuralworld bench for the full table)", "worlds": {}}
    for name, w, _ in worlds:
        log(f"speed: {name}")
        try:
            b = run_bench(w, threads=2, batches=(1,), frames=frames, warmup=3, sampler=sampler, paths=("eager",), log=lambda s: None)
        except Exception as e:  # a world the bench can't time is reported, not fatal
            res["worlds"][name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        res["worlds"][name] = _bench_summary(b)
    return res


def _bench_summary(b: dict[str, Any]) -> dict[str, Any]:
    r1 = [r for r in b.get("results", []) if r.get("batch") == 1]
    best = max(r1, key=lambda r: r["fps"]) if r1 else {}
    return {
        "path": best.get("path"), "fps_batch1": best.get("fps"),
        "latency_ms_mean": best.get("latency_ms", {}).get("mean"), "latency_ms_p95": best.get("latency_ms", {}).get("p95"),
        "flops_per_frame": best.get("flops_per_frame"), "params": b.get("params"), "sampler": b.get("sampler"),
        "load_average": b.get("load_average"),
    }  # fmt: skip


# ---------------------------------------------------------------------------
# plots (matplotlib, Agg: no display needed)
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _savefig(fig: Any, path: Path) -> str:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)


def _plot_psnr(fidelity: dict[str, Any], path: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    copy = None
    for name, r in fidelity.items():
        curve = r["rollout"]["psnr_curve"]
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
        copy = copy or r["rollout"]["copy_last_psnr_curve"]
    if copy:
        ax.plot(np.arange(1, len(copy) + 1), copy, "k--", label="copy last frame")
    ax.set_xscale("log")
    ax.set_xlabel("open-loop step (recorded actions)")
    ax.set_ylabel("PSNR vs real (dB)")
    ax.set_title("open-loop PSNR vs horizon (held-out episodes)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _savefig(fig, path)


def _plot_stability(traces: dict[str, np.ndarray], names: list[str], band: stab.RealBand, r: dict[str, Any], path: Path, title: str) -> str:
    plt = _plt()
    rows = [("sharpness", "sharpness (var. of Laplacian)"), ("mean_g", "mean green"), ("std_g", "std green"), ("change", "change per frame (grey levels)")]
    fig, axes = plt.subplots(len(rows) + 1, 1, figsize=(9, 2.0 * (len(rows) + 1)), sharex=True)
    N = traces["sharpness"].shape[1]
    smooth = max(1, N // 400)
    x = np.arange(N)
    for ax, (key, label) in zip(axes, rows):
        if key in band.low:
            ax.axhspan(band.low[key], band.high[key], color="tab:green", alpha=0.15, label="real 1-99%")
        for b, n in enumerate(names):
            y = traces[key][b]
            if smooth > 1:
                y = np.convolve(y, np.ones(smooth) / smooth, mode="same")
            ax.plot(x, y, lw=0.8, label=n)
        if key == "sharpness":
            ax.set_yscale("log")  # blur sits orders of magnitude below real frames
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper right")
    ax = axes[-1]
    w = band.window
    for n in names:
        fd = r["drives"][n]["window_frechet"]
        ax.plot(np.arange(len(fd)) * w + w / 2, fd, lw=0.8, label=n)
    ax.axhspan(0, band.frechet_high, color="tab:green", alpha=0.15)
    ax.set_ylabel(f"feature Fréchet\n(per {w} frames)", fontsize=8)
    ax.set_xlabel("frame")
    ax.grid(alpha=0.3)
    for n in names:
        c = r["drives"][n]["collapse_frame"]
        if c is not None:
            for a in axes:
                a.axvline(c, color="red", lw=0.8, ls=":")
    fig.suptitle(f"stability of {title}: {N} frames (green: the real data's band; red: collapse)", fontsize=10)
    return _savefig(fig, path)


def _plot_turn(right: np.ndarray, measured: dict[str, np.ndarray], rates: list[float], path: Path, title: str) -> str:
    """One panel per measure (control.MEASURES): commanded (dashed) and measured turn per rate."""
    plt = _plt()
    fig, axes = plt.subplots(len(measured), 1, figsize=(8, 3.2 * len(measured)), sharex=True, squeeze=False)
    for ax, (measure, per_rate) in zip(axes[:, 0], measured.items()):
        for k, rt in enumerate(rates):
            line = ax.plot(right[k], "--", lw=1)[0]
            ax.plot(per_rate[k], color=line.get_color(), lw=1.2, label=f"rate {rt:g}: measured")
        lim = 2.5 * max(rates)
        ax.set_ylim(-lim, lim)  # odometry's rare wild jumps would hide the rest
        ax.set_ylabel("deg/frame to the right")
        ax.set_title(f"{title}: commanded (dashed) vs measured by {measure.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("step (still, then right, then left)")
    return _savefig(fig, path)


def _upscale(frames: np.ndarray, target: int = 128) -> np.ndarray:
    import cv2

    s = max(1, target // frames.shape[-2])
    return np.stack([cv2.resize(f, (f.shape[1] * s, f.shape[0] * s), interpolation=cv2.INTER_NEAREST) for f in frames])


def _grid(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """rows: list of (n, h, w, 3) -> one image, rows stacked, frames side by side."""
    lines = []
    for row in rows:
        n, h, w = row.shape[:3]
        line = np.full((h, n * w + (n - 1) * gap, 3), 255, np.uint8)
        for i in range(n):
            line[:, i * (w + gap) : i * (w + gap) + w] = row[i]
        lines.append(line)
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, gap), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines]
    return np.concatenate(lines)


def _write_png(img: np.ndarray, path: Path) -> str:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise EvalError(f"could not encode {path}")
    atomic_write_bytes(path, buf.tobytes())
    return str(path)


def _save_strip(snaps: np.ndarray, names: list[str], steps: list[int], path: Path) -> str:
    """Snapshots (B, S, H, W, 3): one row per drive."""
    return _write_png(_grid([_upscale(s) for s in snaps]), path)


def _save_memory_strip(left: np.ndarray, turn: np.ndarray | None, walk: np.ndarray | None, path: Path, rows: int = 4) -> str:
    """Per start: left | turned 180 | back at 360 || farthest | back from the walk."""
    out = []
    for b in range(min(rows, len(left))):
        cells = [left[b]]
        if turn is not None:
            cells += [turn[b, turn.shape[1] // 2 - 1], turn[b, -1]]
        if walk is not None:
            cells += [walk[b, walk.shape[1] // 2 - 1], walk[b, -1]]
        out.append(_upscale(np.stack(cells)))
    return _write_png(_grid(out), path)


def _save_npz(path: Path, traces: dict[str, np.ndarray], names: list[str]) -> None:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, names=np.array(names), **{k: v.astype(np.float32) for k, v in traces.items()})
    atomic_write_bytes(path, buf.getvalue())


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


# ---------------------------------------------------------------------------
# markdown
def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(m: dict[str, Any]) -> str:
    """report.md from the metrics alone (so it can be re-rendered from metrics.json)."""
    names = list(m["worlds"])
    main = m["world"]
    plots = m.get("plots", {})
    L = [f"# Evaluation of `{main}`", ""]
    L.append(f"Data `{m['data']}`, held-out episodes {len(m['held_out']['episodes'])} (fraction {m['held_out']['fraction']}, "
             f"from {m['held_out']['source']}); sampler `{m['sampler']}`, {m['context_frames']} real context frames, seed {m['seed']}.")
    if m["baselines"]:
        L.append(f"Baselines: {', '.join(f'`{b}`' for b in m['baselines'])} (same data, split, sampler and measurements).")
    L.append("")
    L += _verdicts(m)

    if "fidelity" in m:
        fid = m["fidelity"]
        L += ["## Fidelity", "", "Teacher-forced: memory holds only real frames; open-loop: the recorded actions drive the world from real context and it never sees a real frame again.", ""]
        hs = list(next(iter(fid.values()))["rollout"]["horizons"])
        head = ["", *names, "copy last frame", "autoencoder (ceiling)"]
        tf = [r["teacher_forced"] for r in fid.values()]
        t0 = tf[0]
        rows = [["teacher-forced PSNR (dB)", *[t["psnr"] for t in tf], t0["copy_last_psnr"], t0["autoencoder_psnr"]],
                ["teacher-forced SSIM", *[t["ssim"] for t in tf], t0["copy_last_ssim"], t0["autoencoder_ssim"]]]
        for h in hs:
            rows.append([f"open-loop PSNR at t={h}", *[r["rollout"]["horizons"][h]["psnr"] for r in fid.values()],
                         next(iter(fid.values()))["rollout"]["horizons"][h]["copy_last_psnr"], "—"])
        L += [_table(head, rows), ""]
        if "psnr_vs_horizon" in plots:
            L += [f"![PSNR vs horizon]({plots['psnr_vs_horizon']})", ""]
        if m["fidelity"][main].get("video"):
            L += ["Side by side (real | teacher-forced | open-loop): [rollout.mp4](rollout.mp4)", ""]

    if "control" in m:
        c = m["control"]
        model = c["idm"]["model"]
        L += ["## Control", "",
              f"An inverse-dynamics model (IDM) trained on {model['pairs']} real pairs of the training episodes "
              f"({model['steps_done']} steps, {model['seconds']} s) reads the action between consecutive frames. "
              f"Open-loop rollouts of {c['horizon']} frames from {c['windows']} held-out windows, driven by the recorded actions; "
              "the same windows' real frames are the like-for-like reference. Buttons: balanced accuracy (mean of the hit "
              "rates on pressed and released pairs; 0.5 = chance); axes: sign accuracy where the turn is large.", ""]
        first = c["worlds"][names[0]]["idm"]
        readable = first["readable_controls"]
        L.append(f"**Overall** = mean over the controls the IDM reads on held-out real pairs (score ≥ {first['readable_threshold']}): "
                 f"{', '.join(readable) or 'none'}. Bar for the shipped world: generated ≥ {IDM_BAR} × real.")
        L.append("")
        head = ["control", "held-out real", "real (same windows)", *[f"generated: {n}" for n in names]]
        rows = []
        for ctrl in first["held_out_real"]["controls"]:
            row = [ctrl + ("" if ctrl in readable else " (not readable)"), first["held_out_real"]["controls"][ctrl]["score"],
                   first["real_same_windows"]["controls"][ctrl]["score"]]
            row += [c["worlds"][n]["idm"]["generated"]["controls"][ctrl]["score"] for n in names]
            rows.append(row)
        rows.append(["**overall**", first["held_out_real"]["overall"], first["real_same_windows"]["overall"],
                     *[c["worlds"][n]["idm"]["generated"]["overall"] for n in names]])
        rows.append(["**generated / real**", "", "", *[c["worlds"][n]["idm"]["ratio_generated_to_real"] for n in names]])
        rows.append(["**above chance: (generated − 0.5) / (real − 0.5)**", "", "",
                     *[_above_chance(c["worlds"][n]["idm"]["generated"]["overall"], first["real_same_windows"]["overall"]) for n in names]])
        L += [_table(head, rows), ""]
        if any("turn_scripted" in c["worlds"][n] for n in names):
            L += [f"Turning, in degrees to the right per frame (horizontal FOV {c['hfov_deg']}°), measured two ways (eval/control.py): "
                  "**odometry** tracks features and fits a rotation (exact on sharp frames, reads ~0 on blurry ones); "
                  "**image shift** finds how far the whole picture slides sideways (coarser, but it reads a soft picture). "
                  "Slope = measured / commanded (1 = right size, 0 = the view does not turn). "
                  "Each measure's row on real frames is its own ceiling: what a perfect world would score.", ""]
            head = ["", "measure", "corr", "sign agreement", "slope", "median ratio", "pairs"]
            rows = []
            sets = [("real frames, recorded actions", c.get("turn_on_real_recorded") or {})]
            sets += [(f"{n}: {label}", c["worlds"][n].get(key) or {}) for n in names
                     for key, label in (("turn_recorded", "recorded actions"), ("turn_scripted", "scripted turns"))]  # fmt: skip
            for label, by_measure in sets:
                for measure in ctl.MEASURES:
                    a = by_measure.get(measure)
                    if a:
                        rows.append([label, measure.replace("_", " "), a["corr"], a["sign_agreement"], a["slope"], a.get("median_ratio"), a["pairs"]])
            L += [_table(head, rows), ""]
            for n in names:
                if f"control_turn_{n}" in plots:
                    L += [f"![turn {n}]({plots[f'control_turn_{n}']})", ""]

    if "stability" in m:
        s = m["stability"]
        b = s["band"]
        L += ["## Stability", "",
              f"Long open-loop rollouts from held-out context: one scripted tour and random held actions. A window of {b['window']} frames is out "
              "of the real band when the median of a statistic (sharpness, colour mean/std per channel) leaves the real frames' 1st–99th "
              "percentile, its feature Fréchet distance exceeds the largest of real held-out windows "
              f"({_f(b['frechet_high'])}), or most of its frames are black, white or frozen. Collapse = the first of "
              "consecutive out windows.", ""]
        head = ["world / drive", "frames", "windows in band", "in band at start", "collapse at frame", "black", "frozen", "why out (windows)"]
        rows = []
        for ep, r in s["real_held_out"].items():
            rows.append([f"real held-out episode {ep}", r["frames"], r["in_band_fraction"], "—", r["collapse_frame"] if r["collapse_frame"] is not None else "none", "—", r["frozen_fraction"], _reasons(r["out_reasons"])])
        for n in names:
            for d, r in s["worlds"][n]["drives"].items():
                rows.append([f"{n}: {d}", r["frames"], r["in_band_fraction"], r["in_band_at_start"],
                             r["collapse_frame"] if r["collapse_frame"] is not None else "none", r["black_fraction"], r["frozen_fraction"], _reasons(r["out_reasons"])])
        L += [_table(head, rows), ""]
        for n in names:
            for key, label in ((f"stability_{n}", "traces"), (f"stability_frames_{n}", "frames along the rollout (rows: drives)")):
                if key in plots:
                    L += [f"{n}, {label}:", "", f"![{key}]({plots[key]})", ""]

    if "memory" in m:
        mm = m["memory"]
        refs = mm["references"]
        L += ["## Memory", "", "The view on returning vs the view left (the last real context frame), beside real returns "
              "(real frames at the same pose, later) and two random real frames (no memory at all).", ""]
        head = ["", "PSNR (dB)", "SSIM", "pairs"]
        rows = [["real return (same pose)", refs["real_return"]["psnr"], refs["real_return"]["ssim"], refs["real_return"]["pairs"]],
                ["random real pairs", refs["random_pairs"]["psnr"], refs["random_pairs"]["ssim"], refs["random_pairs"]["pairs"]]]
        for n in names:
            w = mm["worlds"][n]
            t = w.get("turn", {})
            if "return" in t:
                rows.append([f"{n}: back after {t['degrees']:g}° turn ({t['frames']} frames; memory {w['memory_frames']})", t["return"]["psnr"], t["return"]["ssim"], t["return"]["pairs"]])
                rows.append([f"{n}: turned away (180°)", t["turned_away"]["psnr"], t["turned_away"]["ssim"], t["turned_away"]["pairs"]])
            elif "skipped" in t:
                rows.append([f"{n}: turn skipped ({t['skipped']})", None, None, None])
            wk = w.get("walk", {})
            if "return" in wk:
                rows.append([f"{n}: back after {wk['frames_each_way']} forward + {wk['frames_each_way']} back", wk["return"]["psnr"], wk["return"]["ssim"], wk["return"]["pairs"]])
        L += [_table(head, rows), ""]
        for n in names:
            if f"memory_{n}" in plots:
                L += [f"{n} (per row: left | turned 180° | back at 360° | farthest walked | walked back):", "", f"![memory {n}]({plots[f'memory_{n}']})", ""]

    if "speed" in m:
        sp = m["speed"]
        L += ["## Speed", "", f"Source: {sp['source']}.", ""]
        head = ["world", "path", "frames/s (batch 1)", "latency mean ms", "latency p95 ms", "GFLOP/frame", "load average"]
        rows = []
        for n, r in sp["worlds"].items():
            if "error" in r:
                rows.append([n, r["error"], None, None, None, None, None])
            else:
                rows.append([n, r["path"], r["fps_batch1"], r["latency_ms_mean"], r["latency_ms_p95"],
                             None if r["flops_per_frame"] is None else r["flops_per_frame"] / 1e9, str(r["load_average"])])
        L += [_table(head, rows), ""]
    L += [f"All figures: [metrics.json](metrics.json). Took {m.get('seconds', 0)} s.", ""]
    return "\n".join(L)


def _above_chance(generated: float | None, real: float | None) -> float | None:
    """(generated - 0.5) / (real - 0.5): every score here is 0.5 at chance, so with a weak IDM
    (real 0.65) a world that ignores its controls (0.53) still scores a plain ratio of 0.8;
    this ratio says how much of the IDM's reading above chance survives (0.2 there)."""
    if generated is None or real is None or real <= 0.5:
        return None
    return round((generated - 0.5) / (real - 0.5), 4)


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:4]) or "—"


def _verdicts(m: dict[str, Any]) -> list[str]:
    """The few sentences a reader needs first, stated plainly (good or bad)."""
    main = m["world"]
    out = ["## Verdict", ""]
    if "fidelity" in m:
        r = m["fidelity"][main]
        tf = r["teacher_forced"]
        beats = tf["psnr"] > tf["copy_last_psnr"]
        out.append(f"- Fidelity: teacher-forced {tf['psnr']:.2f} dB vs copy-last {tf['copy_last_psnr']:.2f} dB "
                   f"({'beats' if beats else 'does NOT beat'} copying the last frame); the autoencoder alone reaches {tf['autoencoder_psnr']:.2f} dB "
                   f"(target ≥ 30 dB).")
        hs = r["rollout"]["horizons"]
        worse = [h for h, v in hs.items() if v["psnr"] < v["copy_last_psnr"]]
        if worse:
            out.append(f"- Open loop: below copy-last at t = {', '.join(worse)}.")
    if "control" in m:
        c = m["control"]["worlds"][main]["idm"]
        ratio = c["ratio_generated_to_real"]
        out.append(f"- Control: IDM overall {_f(c['generated']['overall'])} on generated vs {_f(c['real_same_windows']['overall'])} on real "
                   f"→ ratio {_f(ratio)} ({'meets' if c['meets_bar'] else 'misses'} the ≥ {IDM_BAR} bar); of the IDM's reading above "
                   f"chance, {_f(_above_chance(c['generated']['overall'], c['real_same_windows']['overall']))} survives on generated frames.")
        if c["real_same_windows"]["overall"] is not None and c["real_same_windows"]["overall"] < 0.75:
            out.append(f"- The IDM itself reads real frames weakly (overall {_f(c['real_same_windows']['overall'])}): train it longer "
                       "(--idm-seconds) before trusting the ratio.")
        ts = m["control"]["worlds"][main].get("turn_scripted")
        real = m["control"].get("turn_on_real_recorded") or {}
        for measure in ctl.MEASURES if ts else ():
            a = ts[measure]
            ceiling = f"; on real frames this measure's slope is {_f(real[measure]['slope'])}" if measure in real else ""
            out.append(f"- Turning ({measure.replace('_', ' ')}): scripted turns measured with slope {_f(a['slope'])}, median ratio "
                       f"{_f(a.get('median_ratio'))} and sign agreement {_f(a['sign_agreement'])} (1, 1, 1 = turns as told){ceiling}.")
    if "stability" in m:
        s = m["stability"]["worlds"][main]
        n = m["stability"]["worlds"][main]["frames"]
        starts = [d["in_band_at_start"] for d in s["drives"].values()]
        if s["collapsed"]:
            msg = f"leaves the real band for good at frame {s['no_collapse_frames']} of {n}"
            if not all(starts):
                msg += " — it is outside the band from the start (a quality problem, e.g. blur, more than a drift)"
        else:
            msg = f"no collapse in {n} frames"
        out.append(f"- Stability: {msg}.")
    if "memory" in m:
        w = m["memory"]["worlds"][main]
        refs = m["memory"]["references"]
        t = w.get("turn", {})
        if "return" in t and t["return"]["psnr"] is not None:
            rr, rp = refs["real_return"]["psnr"], refs["random_pairs"]["psnr"]
            out.append(f"- Memory: back after a 360° turn {t['return']['psnr']:.2f} dB vs the view left; real returns {_f(rr)} dB, "
                       f"random real pairs {_f(rp)} dB, turned away {t['turned_away']['psnr']:.2f} dB.")
    out.append("")
    return out
