"""report.md, rendered from the report's metrics alone (so metrics.json re-renders it).

``render_markdown(metrics)`` writes the bars of issue 15 first (bars.py: each measure
with ✓ / ✗), then a verdict (a few plain sentences, good or bad), then one section per
part of the suite that ran (fidelity, control, stability, memory, speed, probes, heads): tables
with a column or rows per world, and the pictures ``plots.py`` drew, linked by the
names in ``metrics["plots"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neuralworld.eval import control as ctl
from neuralworld.eval import idm
from neuralworld.eval.bars import bar_rows, markdown_table


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
    L += ["## Bars (issue 15)", "", "✓ met, ✗ missed, – not measured here (the note says why). Probes: the world played from its "
          "start frames as the player plays it; the real figures are measured on the dataset's recorded frames.", ""]
    L += [*markdown_table(m.get("bars") or bar_rows(m)), ""]
    L += _verdicts(m)

    if "fidelity" in m:
        fid = m["fidelity"]
        L += ["## Fidelity", "", "Teacher-forced: memory holds only real frames; open-loop: the recorded actions drive the world from real context and it never sees a real frame again.", ""]
        hs = list(next(iter(fid.values()))["rollout"]["horizons"])
        head = ["", *names, "copy last frame", "autoencoder (ceiling)"]
        tf = [r["teacher_forced"] for r in fid.values()]
        t0 = tf[0]
        rows = [["teacher-forced PSNR (dB)", *[t["psnr"] for t in tf], t0["copy_last_psnr"], t0["autoencoder_psnr"]],
                ["teacher-forced SSIM", *[t["ssim"] for t in tf], t0["copy_last_ssim"], t0["autoencoder_ssim"]],
                ["teacher-forced sharpness / real", *[t.get("sharpness_ratio") for t in tf], "—", "—"]]
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
                 f"{', '.join(readable) or 'none'}. Bar for the shipped world: generated ≥ {idm.IDM_BAR} × real.")
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
                     *[idm.above_chance(c["worlds"][n]["idm"]["generated"]["overall"], first["real_same_windows"]["overall"]) for n in names]])
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
        engine = s.get("engine")
        if engine is not None:
            L += [f"The recording's engine under the same random drives: {engine['skipped']}." if "skipped" in engine else
                  f"The recording's engine under the same random drives (from its map's start, {engine['frames']} frames): the "
                  f"median sharpness of its last {engine['last_frames']} frames {_f(engine['sharpness'], 1)} "
                  f"({_f(engine['sharpness_ratio'])}× the recording's), black {engine['black_frames']}, white {engine['white_frames']}, "
                  f"frozen {engine['frozen_frames']} (the player held against a wall): what a perfect world would show.", ""]  # fmt: skip
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
    if "probes" in m:
        p, real = m["probes"], m["probes"]["real"]
        L += ["## Probes", "", f"Each world played as the player plays it ({', '.join(sorted({w['session'] for w in p['worlds'].values()}))}), "
              "restarted from its start frames for each probe. Real references from the dataset's recorded frames: "
              f"slide {_f(real['slide_px_per_deg'], 3)} px per degree turned right ({real['turn_pairs']} pairs turning in place, degrees "
              f"from the {real['degrees_from']}), forward {_f(real['forward_px'])} px/frame of radial flow ({real['forward_pairs']} pairs), "
              f"sharpness median {_f(real['sharpness'], 1)}.", ""]
        head = ["world", "turn right 1–12 / 13–24 (px/frame)", "turn left 1–12 / 13–24", "forward (px/frame)", "sharpness, first frames"]
        rows = []
        for n, w in p["worlds"].items():
            t, fw, sh = w["turn"], w["forward"], w["sharpness"]
            turns = [f"{t[d]['first_px']:.2f} / {t[d]['second_px']:.2f} (real {t[d]['real_px']})" if d in t else "—" for d in ("right", "left")]
            rows.append([n, *turns, f"{fw['px']:.2f} (real {fw['real_px']})" if "px" in fw else "—", f"{sh['median']:.1f} ({sh['ratio']}× real)"])
        engine = p.get("engine", {"skipped": "not measured"})
        if "skipped" not in engine:  # the same probes played by the recording's engine: what a perfect world scores
            t, fw, sh = engine["turn"], engine["forward"], engine["sharpness"]
            turns = [f"{t[d]['first_px']:.2f} / {t[d]['second_px']:.2f} ({_f(t[d]['first_ratio'])} / {_f(t[d]['second_ratio'])}× real)"
                     if d in t else "—" for d in ("right", "left")]  # fmt: skip
            rows.append([f"the engine ({engine['session']})", *turns, f"{fw['px']:.2f} ({_f(fw['ratio'])}× real)" if "px" in fw else "—",
                         f"{sh['median']:.1f} ({sh['ratio']}× real)"])  # fmt: skip
        L += [_table(head, rows), ""]
        L += [f"The engine's row plays the same probes in the recording's engine: {engine['skipped']}." if "skipped" in engine else
              "The engine's row plays the same probes in the recording's engine, from its map's start: a perfect world's figures "
              "(the bars compare with the recorded pairs, mostly at full pace).", ""]  # fmt: skip
    if "heads" in m:
        L += ["## Heads", "", "The termination head on held-out real episodes, teacher-forced (the last 200 steps of each): "
              "a death is caught when a step within the tolerance of it has a probability above the threshold; false alarms "
              "are steps further before a death (or in an episode that did not end) that pass it; early: deaths whose "
              "first alarm came before that window.", ""]
        head = ["world", "deaths", "caught (±4)", "missed", "first alarm early", "median first-alarm offset",
                "false alarms / 1000 steps", "caught / false alarms at lower thresholds"]
        rows = []
        for n, h in m["heads"]["worlds"].items():
            if "skipped" in h:
                rows.append([n, h["skipped"], None, None, None, None, None, None])
            else:
                caught = f"{h['caught']} ({_f(h['caught_fraction'])})" if h["deaths"] else "—"
                curve = ", ".join(f"{c['threshold']}: {_f(c['caught_fraction'])} / {c['false_alarms_per_1000']}"
                                  for c in h.get("curve", []) if c["threshold"] < h["threshold"] and h["deaths"])
                rows.append([n, h["deaths"], caught, h["missed"], h["early"], h["median_alarm_offset"], h["false_alarms_per_1000"],
                             curve or "—"])
        L += [_table(head, rows), ""]
    L += [f"All figures: [metrics.json](metrics.json). Took {m.get('seconds', 0)} s.", ""]
    return "\n".join(L)


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
                   f"→ ratio {_f(ratio)} ({'meets' if c['meets_bar'] else 'misses'} the ≥ {idm.IDM_BAR} bar); of the IDM's reading above "
                   f"chance, {_f(idm.above_chance(c['generated']['overall'], c['real_same_windows']['overall']))} survives on generated frames.")
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
