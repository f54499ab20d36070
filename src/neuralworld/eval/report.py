"""The evaluation report: every part of the suite on one world (and its baselines), as
markdown a person reads, plots a person looks at, and metrics.json a program reads.

``neuralworld eval RUN --report DIR [--baseline OTHER ...]`` runs:

``fidelity``   fidelity.evaluate: teacher-forced and open-loop PSNR/SSIM vs copy-last
``control``    the IDM (idm.py) on generated vs real pairs, and visual odometry on
               scripted and recorded turns (control.py)
``stability``  long rollouts, per-frame statistics inside the real band (stability.py)
``memory``     turn 360° / walk there and back (memory.py)
``speed``      a short bench run (bench.py) on the fastest exact backend, or the
               figures of a bench JSON given
``probes``     the world played as the player plays it, from its start frames: held
               turn, held forward, sharpness, against the recorded engine (probes.py)

Then the bars of issue 15 (bars.py): each measure with ✓ / ✗, at the top of report.md
and under "bars" in metrics.json.

Baselines are any other worlds (run folders or bundles) that fit the same dataset;
each runs through the same ``WorldSession`` and the same measurements, on the
same held-out split (the evaluated run's), and gets a column in every table.

The pictures are drawn by ``plots.py``, report.md is rendered by ``markdown.py``
from the metrics alone; this module runs the parts and writes the files.

Output::

    DIR/
      report.md                 the bars, tables, verdicts, links to everything below
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

import io
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from neuralworld.bundle import World
from neuralworld.eval import control as ctl
from neuralworld.eval import heads as hd
from neuralworld.eval import idm as idm_mod
from neuralworld.eval import memory as mem
from neuralworld.eval import plots as plot
from neuralworld.eval import probes as prb
from neuralworld.eval import stability as stab
from neuralworld.eval.fidelity import DEFAULT_HORIZONS, evaluate
from neuralworld.eval.bars import bar_rows
from neuralworld.eval.inputs import (
    EvalError, EvalInputs, Rollouts, Windows, WorldLocation, as_world, check_fits, default_context, open_inputs,
    open_loop, real_windows, sample_real_frames, turn_axis,
)  # fmt: skip
from neuralworld.eval.markdown import render_markdown
from neuralworld.state_io import atomic_write_bytes, atomic_write_json

NO_HEADS = {"unet-baseline": "the U-Net baseline", "field": "the field world"}
"""World kinds with no reward or termination heads: the heads part skips them."""
PARTS = ("fidelity", "control", "stability", "memory", "speed", "probes", "heads")


def _world_label(path: str | os.PathLike, taken: set[str]) -> str:
    p = Path(path)
    base = p.name if p.name not in ("world", "") else p.parent.name
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", base) or "world"
    n, out = 2, label
    while out in taken:
        out, n = f"{label}_{n}", n + 1
    taken.add(out)
    return out


@dataclass
class _Suite:
    """What every part of the report reads: the inputs, the worlds side by side, the settings,
    and the plots drawn so far (name -> path)."""

    inputs: EvalInputs
    worlds: list[tuple[str, World, str]]  # (label, world, path as given); the evaluated one first
    out: Path
    rollouts: Rollouts  # context frames, sampler and seed: the same for every world and part
    log: Callable[[str], None]
    real: prb.RealMotion | None = None  # the recorded engine's motion and sharpness (probes, stability's bar)
    plots: dict[str, str] = field(default_factory=dict)


def run_report(
    world_path: str | os.PathLike,
    data_path: str | os.PathLike | None = None,
    *,
    report_dir: str | os.PathLike,
    baselines: Sequence[str | os.PathLike] = (),
    skip: Sequence[str] = (),
    sampler: str = "fast",
    seed: int = 0,
    context: int | None = None,
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    episodes: int | None = None,
    stability_frames: int = 10_000,
    stability_window: int = 100,
    random_rollouts: int = 3,
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
            check_fits(w, ds)
        except EvalError as e:
            raise EvalError(f"baseline {b}: {e}") from None
        worlds.append((_world_label(b, taken), w, str(b)))
    suite = _Suite(inputs, worlds, out, Rollouts(default_context(inputs.world, context), sampler, seed), log)
    metrics: dict[str, Any] = {
        "world": worlds[0][0],
        "worlds": {name: {"path": p, "model": w.model, "resolution": list(w.resolution),
                          "memory_frames": int(w.config.dynamics.memory_frames)} for name, w, p in worlds},
        "baselines": [name for name, _, _ in worlds[1:]],
        "data": inputs.data_path,
        "held_out": {"fraction": inputs.held_out_fraction, "source": inputs.held_out_source,
                     "episodes": [ds.ids[e] for e in inputs.held_episodes]},
        "sampler": sampler, "seed": seed, "context_frames": suite.rollouts.context, "skipped": list(skip),
    }  # fmt: skip
    metrics["training"] = _training_time(inputs.location, inputs.world)
    if not {"probes", "stability"} <= set(skip):
        log("real references: the recorded engine's slide, forward flow and sharpness")
        held = inputs.held_episodes
        suite.real = prb.real_motion(ds, held, sample_real_frames(ds, held, 2000, seed))
    if "fidelity" not in skip:
        metrics["fidelity"] = _fidelity(suite, horizons, episodes)
    if "control" not in skip:
        metrics["control"] = _control(suite, control_windows, control_horizon, idm_steps, idm_seconds, idm_max_pairs)
    if "stability" not in skip:
        metrics["stability"] = _stability(suite, stability_frames, stability_window, random_rollouts)
    if "memory" not in skip:
        metrics["memory"] = _memory(suite, memory_starts)
    if "speed" not in skip:
        metrics["speed"] = _speed(worlds, bench_json, sampler, bench_frames, log)
    if "probes" not in skip:
        metrics["probes"] = _probes(suite)
    if "heads" not in skip:
        metrics["heads"] = _heads(suite)

    metrics["plots"] = {k: Path(v).name for k, v in suite.plots.items() if v}
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    metrics["bars"] = bar_rows(_jsonable(metrics))
    atomic_write_json(out / "metrics.json", _jsonable(metrics))
    atomic_write_bytes(out / "report.md", render_markdown(metrics).encode())
    return metrics


# ---------------------------------------------------------------------------
# the parts: each returns its section of metrics.json and adds its plots to suite.plots
def _fidelity(s: _Suite, horizons: Sequence[int], episodes: int | None) -> dict[str, Any]:
    result = {}
    ro = s.rollouts
    for i, (name, _, path) in enumerate(s.worlds):
        s.log(f"fidelity: {name}")
        r = evaluate(path, s.inputs.data_path, out=s.out / "fidelity" / name, horizons=horizons, episodes=episodes,
                     context=ro.context, sampler=ro.sampler, held_out=s.inputs.held_out_fraction, seed=ro.seed, video=(i == 0))  # fmt: skip
        result[name] = r
        if i == 0 and r.get("video"):
            shutil.copyfile(r["video"], s.out / "rollout.mp4")
    s.plots["psnr_vs_horizon"] = plot.plot_psnr(result, s.out / "psnr_vs_horizon.png")
    return result


def _control(s: _Suite, windows: int, horizon: int, idm_steps: int, idm_seconds: float, idm_max_pairs: int) -> dict[str, Any]:
    inputs, ds, ctx = s.inputs, s.inputs.data, s.rollouts.context
    s.log("control: training the inverse-dynamics model on real pairs of the training episodes")
    training = idm_mod.IDMTraining(steps=idm_steps, seconds=idm_seconds, max_pairs=idm_max_pairs, seed=s.rollouts.seed)
    idm = idm_mod.train_idm(ds, inputs.train_episodes, training, cache_dir=s.out, log=s.log)
    held_pairs = idm_mod.real_pairs(ds, inputs.held_episodes)
    win = real_windows(inputs, ctx, horizon, per_episode=2, max_windows=windows)
    real_future = win.frames[:, ctx:]  # (B, T, H, W, 3)
    actions = win.led_to[:, ctx:]  # (B, T, A)
    real_set = idm_mod.generated_pairs(win.frames[:, ctx - 1], real_future, actions)
    hfov = ctl.dataset_hfov(ds)
    axis = turn_axis(ds.spec)
    result: dict[str, Any] = {"idm": {"model": idm.meta}, "hfov_deg": hfov, "windows": int(len(win.frames)),
                              "horizon": horizon, "worlds": {}}  # fmt: skip
    if axis is not None:
        result["turn_on_real_recorded"] = {
            measure: ctl.agreement(*ctl.measure_sequences(win.frames[:, ctx - 1], real_future, ctl.commanded_right(actions, axis),
                                                          hfov, measure)[:2])
            for measure in ctl.MEASURES
        }  # fmt: skip
    for name, w, _ in s.worlds:
        s.log(f"control: {name}")
        gen = open_loop(w, win, s.rollouts)  # (B, T, H, W, 3)
        gen_set = idm_mod.generated_pairs(win.frames[:, ctx - 1], gen, actions)
        cmp = idm_mod.compare(idm, held_pairs, real_same_windows=real_set, generated=gen_set)
        g, r = cmp["generated"]["overall"], cmp["real_same_windows"]["overall"]
        cmp["ratio_generated_to_real"] = round(g / r, 4) if g is not None and r else None
        cmp["meets_bar"] = None if cmp["ratio_generated_to_real"] is None else cmp["ratio_generated_to_real"] >= idm_mod.IDM_BAR
        cmp["ratio_above_chance"] = idm_mod.above_chance(g, r)
        entry: dict[str, Any] = {"idm": cmp}
        if axis is None:
            entry["turn"] = {"skipped": "the world has no turn or yaw axis"}
        else:
            entry.update(_turns(s, name, w, win, gen, axis, hfov))
        result["worlds"][name] = entry
    return result


def _turns(s: _Suite, name: str, w: World, win: Windows, gen: np.ndarray, axis: Any, hfov: float) -> dict[str, Any]:
    """The turn read off a world's frames: on its open-loop rollouts of the recorded actions,
    and on scripted turns (still, right, left) at each rate, from the same real starts."""
    ctx = s.rollouts.context
    actions = win.led_to[:, ctx:]  # (B, T, A)
    rates = ctl.turn_rates(axis)
    acts, right = ctl.scripted_turn_actions(w.spec, axis, rates)
    pick = np.arange(len(rates)) % len(win.frames)  # a start per rate, reused when the windows are fewer
    starts, led = win.frames[pick], win.led_to[pick]
    scripted = open_loop(w, Windows(starts, led, [], []), s.rollouts, actions=acts)  # (R, T, H, W, 3)
    recorded, scripted_turn, per_rate = {}, {"rates": rates}, {}
    for measure in ctl.MEASURES:
        c, m, _ = ctl.measure_sequences(win.frames[:, ctx - 1], gen, ctl.commanded_right(actions, axis), hfov, measure)
        recorded[measure] = ctl.agreement(c, m)
        c, m, _ = ctl.measure_sequences(starts[:, ctx - 1], scripted, right, hfov, measure)
        per_rate[measure] = pr = m.reshape(len(rates), -1)
        scripted_turn[measure] = {**ctl.agreement(c, m), "median_measured_per_rate": {
            str(rt): {"right": round(float(np.median(pr[k][right[k] > 0])), 3),
                      "left": round(float(np.median(pr[k][right[k] < 0])), 3)} for k, rt in enumerate(rates)
        }}  # fmt: skip
    s.plots[f"control_turn_{name}"] = plot.plot_turn(right, per_rate, rates, s.out / f"control_turn_{name}.png", name)
    return {"turn_recorded": recorded, "turn_scripted": scripted_turn}


def _stability(s: _Suite, frames: int, window: int, random_rollouts: int) -> dict[str, Any]:
    inputs, ds = s.inputs, s.inputs.data
    s.log("stability: the real band")
    project = stab.FeatureProjection()
    reference = sample_real_frames(ds, inputs.train_episodes, 2000, s.rollouts.seed)
    held_seqs, held_acts = [], []
    for e in inputs.held_episodes:
        d = ds.episode(e).load(("frames", "actions"))
        held_seqs.append(d["frames"])
        held_acts.append(d["actions"])
    band = stab.real_band(reference, held_seqs, window, project)
    real_judged = {}
    for e, seq, acts in zip(inputs.held_episodes, held_seqs, held_acts):
        st = stab.frame_stats(seq)
        change = stab.frame_change(seq[0], seq)
        moving = np.concatenate([[False], stab.controls_moving(ds.spec, acts[:-1])])  # actions[t-1] led to frame t
        fr = stab.frozen_flags(change, moving)
        j = stab.judge(st, fr, project(seq), band)
        real_judged[ds.ids[e]] = {k: j[k] for k in ("frames", "windows_out", "in_band_fraction", "collapse_frame", "frozen_fraction", "out_reasons")}
    result: dict[str, Any] = {"band": band.to_json(), "real_held_out": real_judged, "worlds": {}}
    for name, w, _ in s.worlds:
        s.log(f"stability: {name}, {frames} frames")
        r = stab.run_stability(w, inputs, band, s.rollouts, frames=frames, random_rollouts=random_rollouts, log=s.log)
        traces, snaps, steps, names = r.pop("_traces"), r.pop("_snapshots"), r.pop("_snapshot_steps"), r.pop("_names")
        if s.real is not None and (end := stab.end_of_drives(traces, names, s.real.sharpness)) is not None:
            r["end"] = end  # the long-rollout bar
        _save_npz(s.out / f"stability_{name}.npz", traces=traces, names=names)
        result["worlds"][name] = r
        s.plots[f"stability_{name}"] = plot.plot_stability(traces, names, band, r, s.out / f"stability_{name}.png", name)
        s.plots[f"stability_frames_{name}"] = plot.save_strip(snaps, names, steps, s.out / f"stability_frames_{name}.png")
    if s.real is not None and random_rollouts > 0:
        s.log(f"stability: the engine ({ds.info.source or 'unknown source'}), {frames} frames of the same random drives")
        result["engine"] = stab.run_engine_drives(ds.info.source, ds.info.resolution, ds.spec, s.real.sharpness, frames=frames,
                                                  random_rollouts=random_rollouts, seed=s.rollouts.seed)  # fmt: skip
    return result


def _memory(s: _Suite, starts: int) -> dict[str, Any]:
    result: dict[str, Any] = {"references": mem.memory_references(s.inputs, s.rollouts.seed), "worlds": {}}
    for name, w, _ in s.worlds:
        s.log(f"memory: {name}")
        r = mem.run_memory(w, s.inputs, s.rollouts, starts=starts)
        left = r.pop("_left")
        turn_frames, walk_frames = r.pop("_turn_frames", None), r.pop("_walk_frames", None)
        result["worlds"][name] = r
        s.plots[f"memory_{name}"] = plot.save_memory_strip(left, turn_frames, walk_frames, s.out / f"memory_{name}.png")
    return result


def _probes(s: _Suite) -> dict[str, Any]:
    """Each world played from its start frames as the player plays it (World.start), with the
    report's sampler; a world without start frames starts from a held-out real window."""
    assert s.real is not None
    result: dict[str, Any] = {"real": s.real.to_json(), "worlds": {}}
    for name, w, _ in s.worlds:
        s.log(f"probes: {name}")
        start = None
        if w.start_frames is None:
            win = real_windows(s.inputs, s.rollouts.context, 1, per_episode=1, max_windows=1)
            start = (win.frames[0, : s.rollouts.context], win.led_to[0, : s.rollouts.context])
        result["worlds"][name] = prb.run_probes(w, s.real, start=start, sampler=s.rollouts.sampler, seed=s.rollouts.seed)
    info = s.inputs.data.info
    s.log(f"probes: the engine ({info.source or 'unknown source'})")
    result["engine"] = prb.run_engine_probes(info.source, info.resolution, info.spec, s.real, seed=s.rollouts.seed)
    return result


def _heads(s: _Suite) -> dict[str, Any]:
    """Each world's termination head on the held-out episodes, teacher-forced (heads.py)."""
    result: dict[str, Any] = {"worlds": {}}
    for name, w, _ in s.worlds:
        if w.model in NO_HEADS:
            result["worlds"][name] = {"skipped": f"{NO_HEADS[w.model]} has no heads"}
            continue
        s.log(f"heads: {name}")
        result["worlds"][name] = hd.death_timing(w, s.inputs.data, list(s.inputs.held_episodes), context=s.rollouts.context,
                                                 sampler=s.rollouts.sampler, seed=s.rollouts.seed)
    return result


def _training_time(loc: WorldLocation, world: World) -> dict[str, Any]:
    """How long the world trained, where it is written down: the bundle's training record,
    else the run's summary.json (its last session where the run was resumed)."""
    training = world.meta.get("training", {})
    for key, scale in (("seconds", 1), ("minutes", 60), ("hours", 3600)):
        if isinstance(training.get(key), (int, float)):
            return {"seconds": float(training[key]) * scale, "source": f"the bundle's config.json training.{key}"}
    summary = loc.run / "summary.json" if loc.run is not None else None
    if summary is not None and summary.is_file():
        try:
            seconds = json.loads(summary.read_text()).get("seconds")
        except (OSError, ValueError):
            seconds = None
        if isinstance(seconds, (int, float)):
            return {"seconds": float(seconds), "source": f"{summary} (the run's last session, if it was resumed)"}
    return {"seconds": None, "source": "not recorded: neither the bundle's config.json nor a run's summary.json says"}


def _speed(worlds: list, bench_json: str | os.PathLike | None, sampler: str, frames: int, log: Callable) -> dict[str, Any]:
    if bench_json is not None:
        lines = [ln for ln in Path(bench_json).read_text().splitlines() if ln.strip().startswith("{")]
        if not lines:
            raise EvalError(f"{bench_json} holds no bench JSON line (neuralworld bench prints it last)")
        b = json.loads(lines[-1])
        return {"source": str(bench_json), "worlds": {worlds[0][0]: _bench_summary(b)}}
    from neuralworld.backends import fastest_exact
    from neuralworld.bench import run_bench

    res = {"source": f"neuralworld.bench.run_bench: the fastest exact backend, batch 1, {frames} steps, 2 threads "
                     "(a short run; use neuralworld bench for the full table)", "worlds": {}}  # fmt: skip
    for name, w, _ in worlds:
        log(f"speed: {name}")
        try:
            b = run_bench(w, threads=2, batches=(1,), frames=frames, warmup=3, sampler=sampler, paths=(fastest_exact(w),),
                          log=lambda s: None)  # fmt: skip
        except Exception as e:  # a world the bench can't time is reported, not fatal
            res["worlds"][name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        res["worlds"][name] = _bench_summary(b)
    return res


def _bench_summary(b: dict[str, Any]) -> dict[str, Any]:
    from neuralworld.backends import EXACT_PATHS

    r1 = [r for r in b.get("results", []) if r.get("batch") == 1 and r.get("path") in EXACT_PATHS]
    best = max(r1, key=lambda r: r["fps"]) if r1 else {}
    return {
        "path": best.get("path"), "fps_batch1": best.get("fps"),
        "latency_ms_mean": best.get("latency_ms", {}).get("mean"), "latency_ms_p95": best.get("latency_ms", {}).get("p95"),
        "flops_per_frame": best.get("flops_per_frame"), "params": b.get("params"), "sampler": b.get("sampler"),
        "load_average": b.get("load_average"),
    }  # fmt: skip


# ---------------------------------------------------------------------------
# files
def _save_npz(path: Path, traces: dict[str, np.ndarray], names: list[str]) -> None:
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
