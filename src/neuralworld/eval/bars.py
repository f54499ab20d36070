"""The bars of issue 15, read off the report's metrics: per row the measure, its value, the
bar and ✓ / ✗, or "–" where this evaluation did not measure it (the note says why).

``bar_rows(metrics)`` reads metrics.json's figures alone (so a saved report re-renders its
bars); ``format_bars`` is what ``neuralworld eval --report`` prints at the end. The rows come
in the issue's order; the thresholds live in ``BARS``, nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuralworld.eval.idm import IDM_BAR

PASS, FAIL, UNMEASURED = "✓", "✗", "–"
LONG_FRAMES = 10_000  # the long rollout the stability bar asks for
TURN_HALVES = ("first", "second")
OPEN_LOOP_HORIZONS = ("1", "8", "32", "128")


@dataclass(frozen=True)
class Bar:
    measure: str
    bar: str  # as the issue words it
    threshold: float
    second: float | None = None  # tf_psnr: dB over copy-last; play_fps: frames/s a 128x128 world must reach


BARS = {
    "sharpness_start": Bar("sharpness / real, first 200 frames played from the start frames", "≥ 0.8", 0.8),
    "sharpness_long": Bar("sharpness / real after 10,000 frames of random held controls (the last 200; median of the drives)", "≥ 0.7", 0.7),
    "collapse_long": Bar("black, white or frozen frames in those 10,000", "none", 0),
    "turn_right": Bar("held turn right 8°/frame: horizontal flow / real, frames 1–12 / 13–24", "≥ 0.75 each", 0.75),
    "turn_left": Bar("held turn left 8°/frame: horizontal flow / real, frames 1–12 / 13–24", "≥ 0.75 each", 0.75),
    "forward": Bar("held forward 12 frames: radial flow / real", "≥ 0.75", 0.75),
    "tf_psnr": Bar("teacher-forced next-frame PSNR", "≥ 26 dB and ≥ copy-last + 5 dB", 26.0, 5.0),
    "tf_sharpness": Bar("teacher-forced sharpness / real", "≥ 0.8", 0.8),
    "open_loop": Bar("open-loop PSNR at t = 1 / 8 / 32 / 128", "above copy-last and the U-Net baseline", 0.0),
    "idm_forward": Bar("inverse dynamics, generated / real: forward", f"≥ {IDM_BAR}", IDM_BAR),
    "idm_turn": Bar("inverse dynamics, generated / real: turn", f"≥ {IDM_BAR}", IDM_BAR),
    "play_fps": Bar("play speed, batch 1, 2 threads, fastest exact backend", "≥ 60 frames/s at 64×64; ≥ 30 at 128×128", 60.0, 30.0),
    "browser_fps": Bar("browser export, headless Chromium", "≥ 20 frames/s at 64×64", 20.0),
    "training_hours": Bar("training time on 2 cores", "≤ 6 h", 6.0),
}


def _row(key: str, value: str, ok: bool | None, note: str = "") -> dict[str, Any]:
    b = BARS[key]
    mark = UNMEASURED if ok is None else PASS if ok else FAIL
    return {"key": key, "measure": b.measure, "value": value, "bar": b.bar, "mark": mark, "note": note}


def _f(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _skipped(m: dict[str, Any], part: str) -> str:
    return f"{part} skipped (--skip)" if part in m.get("skipped", ()) else f"no {part} figures"


def bar_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows for the evaluated world (``m["world"]``), in the issue's order (``BARS``')."""
    rows = [*_probe_rows(m), *_long_rows(m), *_fidelity_rows(m), *_control_rows(m), *_speed_rows(m)]
    order = list(BARS)
    return sorted(rows, key=lambda r: order.index(r["key"]))


def _probe_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    p = m.get("probes", {}).get("worlds", {}).get(m["world"])
    if p is None:
        return [_row(k, "", None, _skipped(m, "probes")) for k in ("sharpness_start", "turn_right", "turn_left", "forward")]
    real = m["probes"]["real"]
    sh = p["sharpness"]
    engine = m["probes"].get("engine", {}).get("sharpness", {})
    rows = [_row("sharpness_start", _f(sh["ratio"]), _at_least(sh["ratio"], "sharpness_start"),
                 f"median {_f(sh['median'], 1)} vs real {_f(sh['real_median'], 1)} ({p['start']})"
                 + (f"; the engine under the same play: {_f(engine['ratio'])}" if engine.get("ratio") is not None else ""))]
    turn = p["turn"]
    for side in ("right", "left"):
        key = f"turn_{side}"
        if "skipped" in turn:
            rows.append(_row(key, "", None, turn["skipped"]))
            continue
        t = turn[side]
        ratios = [t[f"{h}_ratio"] for h in TURN_HALVES]
        ok = None if None in ratios else all(r >= BARS[key].threshold for r in ratios)
        note = (f"{_f(t['first_px'])} / {_f(t['second_px'])} px/frame vs real {_f(t['real_px'])} at {_f(turn['rate'], 1)}°/frame "
                f"({real['turn_pairs']} recorded pairs, degrees from the {real['degrees_from']})")  # fmt: skip
        engine = m["probes"].get("engine", {}).get("turn", {}).get(side, {})
        if engine.get("first_ratio") is not None:
            note += f"; the engine under the same hold: {_f(engine['first_ratio'])} / {_f(engine['second_ratio'])}"
        if t["real_px"] is None:
            note = "no recorded pairs turn at this rate without moving: the real slide is unknown"
        rows.append(_row(key, " / ".join(_f(r) for r in ratios), ok, note))
    fw = p["forward"]
    if "skipped" in fw:
        rows.append(_row("forward", "", None, fw["skipped"]))
    else:
        note = (f"{_f(fw['px'])} px/frame vs real {_f(fw['real_px'])} ({real['forward_pairs']} recorded pairs)"
                if fw["real_px"] is not None else "no recorded forward-only pairs: the real flow is unknown")
        engine = m["probes"].get("engine", {}).get("forward", {})
        if engine.get("ratio") is not None:
            note += f"; the engine under the same hold: {_f(engine['ratio'])}"
        rows.append(_row("forward", _f(fw["ratio"]), _at_least(fw["ratio"], "forward"), note))
    return rows


def _at_least(v: float | None, key: str) -> bool | None:
    return None if v is None else v >= BARS[key].threshold


def _long_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    s = m.get("stability", {}).get("worlds", {}).get(m["world"])
    if s is None or "end" not in s:
        why = _skipped(m, "stability")
        return [_row("sharpness_long", "", None, why), _row("collapse_long", "", None, why)]
    end = s["end"]
    frames = s["frames"]
    short = frames < LONG_FRAMES
    where = f"the stability part's random drive{'s' if end['drives'] > 1 else ''}, from held-out context"
    ok = _at_least(end["sharpness_ratio"], "sharpness_long")
    note = f"{where}; {frames} frames" + (f" of the {LONG_FRAMES:,} the bar asks for" if short else "")
    engine = m["stability"].get("engine", {})
    sharp_note, collapse_note = note, note
    if end["drives"] > 1 and end.get("drive_ratios"):
        sharp_note += f"; each drive: {' / '.join(_f(v) for v in end['drive_ratios'])}"
    if engine.get("sharpness_ratio") is not None:
        sharp_note += f"; the engine under the same drive: {_f(engine['sharpness_ratio'])}"
        collapse_note += (f"; the engine under the same drive: black {engine['black_frames']}, white {engine['white_frames']}, "
                          f"frozen {engine['frozen_frames']}")  # fmt: skip
    sharp = _row("sharpness_long", _f(end["sharpness_ratio"]), None if short and ok else ok, sharp_note)
    bad = end["black_frames"] + end["white_frames"] + end["frozen_frames"]
    value = f"black {end['black_frames']}, white {end['white_frames']}, frozen {end['frozen_frames']}"
    defs = (f"black: mean grey < {end['black_below']:g}; white: > {end['white_above']:g}; frozen: in a run of ≥ {end['frozen_run']} frames "
            f"changing < {end['frozen_change']:g} grey levels while the controls move the view")  # fmt: skip
    collapse = _row("collapse_long", value, False if bad else (None if short else True), f"{defs}; {collapse_note}")
    return [sharp, collapse]


def _fidelity_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    fid = m.get("fidelity", {})
    r = fid.get(m["world"])
    if r is None:
        why = _skipped(m, "fidelity")
        return [_row(k, "", None, why) for k in ("tf_psnr", "tf_sharpness", "open_loop")]
    tf = r["teacher_forced"]
    over = tf["psnr"] - tf["copy_last_psnr"]
    ok = tf["psnr"] >= BARS["tf_psnr"].threshold and over >= BARS["tf_psnr"].second
    rows = [_row("tf_psnr", f"{tf['psnr']:.2f} dB", ok, f"copy-last {tf['copy_last_psnr']:.2f} dB ({over:+.2f} dB)")]
    ratio = tf.get("sharpness_ratio")
    rows.append(_row("tf_sharpness", _f(ratio), _at_least(ratio, "tf_sharpness"),
                     f"median {_f(tf.get('sharpness'), 1)} vs the real next frames' {_f(tf.get('real_sharpness'), 1)}"
                     if ratio is not None else "not in these figures (an older report)"))  # fmt: skip
    hs = r["rollout"]["horizons"]
    unets = [n for n in m.get("baselines", []) if m["worlds"].get(n, {}).get("model") == "unet-baseline" and n in fid]
    above_copy = all(v["psnr"] > v["copy_last_psnr"] for v in hs.values())
    above_unet = all(v["psnr"] > fid[u]["rollout"]["horizons"][h]["psnr"] for u in unets for h, v in hs.items())
    value = " / ".join(f"{v['psnr']:.1f}" for v in hs.values()) + " dB"
    note = f"t = {' / '.join(hs)}; copy-last " + " / ".join(f"{v['copy_last_psnr']:.1f}" for v in hs.values())
    note += "".join(f"; {u} " + " / ".join(f"{fid[u]['rollout']['horizons'][h]['psnr']:.1f}" for h in hs) for u in unets)
    missing = [h for h in OPEN_LOOP_HORIZONS if h not in hs]
    if missing:
        note += f"; not measured at t = {', '.join(missing)} (--horizons, or episodes too short)"
    ok = above_copy and above_unet
    if ok and not unets:
        note += "; no U-Net baseline given (--baseline runs/…/world): only copy-last checked"
    if ok and (missing or not unets):
        ok = None
    rows.append(_row("open_loop", value, ok, note))
    return rows


def _control_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    c = m.get("control", {}).get("worlds", {}).get(m["world"])
    if c is None:
        return [_row(k, "", None, _skipped(m, "control")) for k in ("idm_forward", "idm_turn")]
    idm = c["idm"]
    rows = []
    for control in ("forward", "turn"):
        key = f"idm_{control}"
        gen = idm["generated"]["controls"].get(control, {}).get("score")
        real = idm["real_same_windows"]["controls"].get(control, {}).get("score")
        held = idm["held_out_real"]["controls"].get(control, {}).get("score")
        if control not in idm["held_out_real"]["controls"]:
            rows.append(_row(key, "", None, f"the world has no {control} control"))
        elif control not in idm["readable_controls"]:
            rows.append(_row(key, "not read", None, f"the IDM does not read {control} above chance on real frames "
                                                    f"(held-out real {_f(held)} < {idm['readable_threshold']})"))  # fmt: skip
        elif gen is None or not real:
            rows.append(_row(key, "", None, f"the evaluation windows hold no {control} pairs the IDM can score"))
        else:
            ratio = gen / real
            rows.append(_row(key, _f(ratio), ratio >= BARS[key].threshold, f"generated {_f(gen)} vs real {_f(real)} (same windows)"))
    return rows


def _speed_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    sp = m.get("speed", {}).get("worlds", {}).get(m["world"])
    H, W = m["worlds"][m["world"]]["resolution"]
    bar = BARS["play_fps"]
    if sp is None or "error" in sp:
        rows.append(_row("play_fps", "", None, sp["error"] if sp else _skipped(m, "speed")))
    else:
        fps = sp["fps_batch1"]
        need = bar.threshold if H * W <= 64 * 64 else bar.second if H * W <= 128 * 128 else None
        rows.append(_row("play_fps", f"{fps:g} frames/s", None if need is None else fps >= need,
                         f"{H}×{W}, path {sp['path']}; {m['speed']['source']}"))
    rows.append(_row("browser_fps", "", None, "not measured by eval: benchmarks/web_export_fps.py"))
    t = m.get("training") or {}
    hours = None if t.get("seconds") is None else t["seconds"] / 3600
    rows.append(_row("training_hours", "" if hours is None else f"{hours:.2f} h",
                     None if hours is None else hours <= BARS["training_hours"].threshold, t.get("source", "not recorded")))  # fmt: skip
    return rows


def format_bars(rows: list[dict[str, Any]]) -> str:
    """One line per bar: mark, measure, value, bar, note (what the CLI prints)."""
    return "\n".join(f"{r['mark']} {r['measure']}: {r['value'] or '—'} (bar {r['bar']})" + (f"  [{r['note']}]" if r["note"] else "")
                     for r in rows)  # fmt: skip


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """The bars as report.md's first table."""
    lines = ["| | measure | value | bar | note |", "|---|---|---|---|---|"]
    lines += [f"| {r['mark']} | {r['measure']} | {r['value'] or '—'} | {r['bar']} | {r['note']} |" for r in rows]
    return lines
