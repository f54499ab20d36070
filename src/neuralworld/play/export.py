"""``neuralworld export --web``: a world as a static folder that plays in a browser,
with no server and no network.

    DIR/
      index.html             the player page (the same file ``neuralworld play`` serves)
      static/                app.js, style.css, local.js (the in-browser transport),
                             world-worker.js (onnxruntime-web in a Web Worker)
      world.json             the manifest (``MANIFEST_FILE``, below): what the page needs to
                             run the world
      start.bin              where a playthrough begins, float32 little-endian: the start
                             frames' normalised latents (T, C, h, w), then the normalised
                             actions that led to them (T, A)
      dynamics_step.onnx     the pure step (``onnx_export``), batch 1; with ``int8`` instead
                             dynamics_step.int8.onnx: int8 weights, activations quantised per
                             call in every MatMul (~4x smaller, ~1.5x faster in WASM, approximate)
      decoder.onnx           normalised latent (1, C, h, w) -> frame (1, 3, H, W) in ~[-1, 1]
      encoder.onnx           frame (1, 3, H, W) in [-1, 1] -> normalised latent: "start from image"
      onnx.json              ``onnx_export``'s metadata (input shapes and dtypes)
      ort/                   onnxruntime-web's WebAssembly (CPU) build only: ort.wasm.min.mjs,
                             ort-wasm-simd-threaded.{mjs,wasm}, its LICENSE

A warp world (model/warp.py) ships the same folder without ``decoder.onnx`` and
``encoder.onnx``: its frames are its latents (in [-1, 1], so start.bin holds the start
frames themselves), and the manifest's ``graphs.decoder`` and ``graphs.encoder`` are null;
its step graph reads the last frames and actions (``onnx_export``), which the page keeps
in a shift register (world-worker.js's ``WarpMemory``). A field world (model/field.py) ships
the same way, with ``locate.onnx`` (start from an image: the nearest bank pose) and its start
pose in the manifest's ``memory`` (world-worker.js's ``FieldMemory``). The U-Net baseline does
not export.

Why it looks like this
    * The page is the server player's page. It asks for ``world.json`` first: this one
      says ``"format": "neuralworld-web"``, so it plays locally; under ``neuralworld play
      WORLD`` the server's says ``"neuralworld-play"`` and it opens its WebSocket.
    * The start context is encoded here, once, so opening the page runs no encoder;
      the page still adds the preset's context noise itself (``session.py``'s order).
    * Everything the page loads lies in DIR, by relative URL: any static file server
      (``python -m http.server -d DIR``) plays it with the network cut; ``neuralworld
      play DIR`` serves it with threads (``static_server.py``). A page opened from
      ``file://`` cannot start a module worker, so a server is needed.
    * Threads: WebAssembly threads need cross-origin isolation (COOP/COEP headers),
      which plain static servers do not send; the page uses 1 thread then, more when
      the server isolates it.
    * The folder is built beside DIR and renamed into place, so an interrupted export
      never leaves half a world where a previous one was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuralworld.model.autoencoder import frames_to_tensor
from neuralworld.model.field import MODEL_KIND as FIELD_KIND
from neuralworld.model.warp import MODEL_KIND as WARP_KIND
from neuralworld.onnx_export import (
    DECODER_FILE, META_FILE, OPSET, STEP_FILE, STEP_INT8_FILE, TracedCall, export_onnx, quantize_step,
)  # fmt: skip
from neuralworld.play.static_server import StaticServer  # noqa: F401  (the export's server; re-exported for callers)
from neuralworld.play.worlds import PlayError, resolve_world

FORMAT = "neuralworld-web"
VERSION = 1
MANIFEST_FILE = "world.json"
START_FILE = "start.bin"
ENCODER_FILE = "encoder.onnx"
PAGE_FILES = ("index.html",)
STATIC_FILES = ("app.js", "style.css", "local.js", "world-worker.js")
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
"""onnxruntime-web's CPU (WebAssembly) build: the API module and the WASM with its loader.
The WebGPU/JSEP/WebGL bundles are left out (~100 MB the page never loads)."""
ORT_ENV = "NEURALWORLD_ORT_WEB"
ORT_WEB_VERSION = "1.30.0"
"""The onnxruntime-web the page is tested with (package.json pins the same)."""
REPO_ROOT = Path(__file__).resolve().parents[3]
STATIC_DIR = Path(__file__).with_name("static")


class ExportError(Exception):
    """An export that cannot be made as asked; the message says what to do."""


def export_encoder(world: Any, out_dir: str | os.PathLike, *, opset: int = OPSET) -> Path:
    """Write ``encoder.onnx`` (batch 1) for ``world``; returns its path."""
    path = Path(out_dir) / ENCODER_FILE
    ae = world.autoencoder
    device = next(ae.parameters()).device
    H, W = world.config.resolution
    ae.cpu().eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
            torch.onnx.export(
                # frame (B, 3, H, W) in [-1, 1] -> normalised latent (B, C, h, w), as a session primes
                TracedCall(ae, lambda frame: ae.normalize_latents(ae.encode(frame))), (torch.zeros(1, 3, H, W),), str(path),
                input_names=["frame"], output_names=["latent"], opset_version=opset, dynamo=False,
            )  # fmt: skip
    finally:
        ae.to(device)
    return path


def find_onnxruntime_web(path: str | os.PathLike | None = None) -> Path:
    """The ``dist`` folder of onnxruntime-web: ``path`` (the package or its dist), else
    $NEURALWORLD_ORT_WEB, else ``<repo>/node_modules/onnxruntime-web``."""
    given = path if path is not None else os.environ.get(ORT_ENV) or None
    root = Path(given) if given is not None else REPO_ROOT / "node_modules" / "onnxruntime-web"
    for dist in (root, root / "dist"):
        if all((dist / f).is_file() for f in ORT_FILES):
            return dist
    where = f"{root} (from {'--onnxruntime-web' if path is not None else ORT_ENV})" if given is not None else str(root)
    raise ExportError(
        f"onnxruntime-web is not installed at {where}: run `npm ci` in {REPO_ROOT} (./setup.sh does), "
        f"or `npm install onnxruntime-web@{ORT_WEB_VERSION}` in any folder and pass --onnxruntime-web "
        f"FOLDER/node_modules/onnxruntime-web (or set {ORT_ENV})"
    )


def start_context(world: Any) -> tuple[np.ndarray, np.ndarray]:
    """The world's start frames as the page primes from them: (normalised latents (T, C, h, w),
    normalised actions (T, A)), float32. A bundle without start frames begins on mid-grey,
    as a ``WorldSession`` given no frames does."""
    from neuralworld.session import GREY

    spec = world.spec
    H, W = world.config.resolution
    frames = world.start_frames
    if frames is None:
        frames, actions = np.full((1, H, W, 3), GREY, np.uint8), None
    else:
        actions = world.start_actions
    if actions is None:
        actions = np.broadcast_to(spec.noop(), (len(frames), spec.size))
    ae = world.autoencoder
    with torch.inference_mode():
        x = frames_to_tensor(np.ascontiguousarray(frames)).to(next(ae.parameters()).device)  # (T, 3, H, W)
        latents = ae.normalize_latents(ae.encode(x)).float().cpu().numpy()  # (T, C, h, w)
    return np.ascontiguousarray(latents, np.float32), np.ascontiguousarray(spec.normalize(actions), np.float32)


def _action_affine(spec: Any) -> tuple[list[float], list[float]]:
    """``ActionSpec.normalize`` as ``scale * a + offset`` per control (buttons: 1, 0)."""
    scale, offset = [1.0] * len(spec.buttons), [0.0] * len(spec.buttons)
    for ax in spec.axes:
        span = ax.high - ax.low
        scale.append(2.0 / span)
        offset.append(-2.0 * ax.low / span - 1.0)
    return scale, offset


def build_manifest(
    world: Any, onnx_meta: dict[str, Any], sampler: Any, start_shapes: tuple[tuple, tuple], *, int8: bool = False
) -> dict[str, Any]:
    """What the page reads (``world.json``): controls, the sampler preset, shapes, files."""
    from neuralworld.model.sampler import flow_times

    spec = world.spec
    scale, offset = _action_affine(spec)
    (T, *latent_shape), (_, A) = start_shapes
    latent_bytes = T * int(np.prod(latent_shape)) * 4
    step_inputs = onnx_meta["step_inputs"]
    kind = onnx_meta.get("model", "world")
    locate = None
    if kind == WARP_KIND:  # a shift register of frames; frames are latents: no decoder or encoder graph
        memory = {k: onnx_meta[k] for k in ("window", "full_frames", "memory_frames", "action_frames")}
        decoder = encoder = None
    elif kind == FIELD_KIND:  # a camera pose; frames are latents
        poses = world.start_poses
        memory = {"start_pose": [float(v) for v in (poses[-1] if poses is not None else np.zeros(4))]}
        decoder = encoder = None
        locate = {"file": onnx_meta["locate"]["file"], "inputs": {"frame": [[1, 3, *world.config.resolution], "float32"]},
                  "outputs": ["pose"]}
    else:
        memory = {
            "memory_frames": onnx_meta["memory_frames"],
            "full_frames": onnx_meta["full_frames"],
            "full_slots": step_inputs["full_k"][0][3],  # K-1
            "pooled_slots": step_inputs["pooled_k"][0][3],  # M-1
            "prev_frame": "prev_latent" in step_inputs,
        }
        decoder = {"file": DECODER_FILE, "inputs": {"latent": [[1, *latent_shape], "float32"]}, "outputs": ["frame"]}
        encoder = {"file": ENCODER_FILE, "inputs": {"frame": [[1, 3, *world.config.resolution], "float32"]}, "outputs": ["latent"]}
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": kind,
        "name": world.name,
        "resolution": list(world.config.resolution),
        "fps": spec.fps,
        "spec": spec.to_json_dict(),
        "hints": dict(spec.descriptions),
        "action": {
            "size": spec.size,
            "normalize": {"scale": scale, "offset": offset},  # normalised = scale * value + offset
            "noop": [float(v) for v in spec.normalize(spec.noop())],
        },
        "sampler": {
            "name": sampler.name, "method": sampler.preset.method, "steps": sampler.preset.steps,
            "shift": sampler.preset.shift, "context_level": sampler.preset.context_level, "network": sampler.network,
            "flow_times": flow_times(sampler.preset.steps, sampler.preset.shift),
        },  # fmt: skip
        "latent_shape": list(latent_shape),
        "memory": memory,
        "graphs": {
            "step": {"file": STEP_INT8_FILE if int8 else STEP_FILE, "int8": int8, "inputs": step_inputs, "outputs": onnx_meta["step_outputs"]},
            "decoder": decoder,
            "encoder": encoder,
            "locate": locate,
        },
        "start": {
            "file": START_FILE, "frames": T,
            "latents": {"offset": 0, "shape": [T, *latent_shape]},
            "actions": {"offset": latent_bytes, "shape": [T, A]},
        },  # fmt: skip
        "ort": {"dir": "ort/", "module": ORT_FILES[0]},
    }


class _Sampler:
    """A preset name as ``WorldSession`` resolves it for ``world``, and the world whose
    dynamics it drives (the distilled student for a distilled preset): the page plays
    exactly what ``neuralworld play`` plays."""

    def __init__(self, name: str, world: Any):
        from neuralworld.bundle import BundleError
        from neuralworld.session import SessionError, resolve_sampler

        try:
            self.preset = resolve_sampler(name, world)  # fast: the student's steps, or euler2 without one
            self.world = world.network(self.preset.network)
        except (SessionError, BundleError) as e:
            raise ExportError(str(e)) from None
        self.name = name
        self.network = self.preset.network


def is_previous_export(path: Path) -> bool:
    """Whether ``path`` holds a web export (its manifest says so): one we may replace."""
    try:
        return json.loads((path / MANIFEST_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def export_web(
    world_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    sampler: str = "fast",
    force: bool = False,
    onnxruntime_web: str | os.PathLike | None = None,
    int8: bool = False,
) -> Path:
    """Write the static player of the world at ``world_path`` (a bundle or a run folder)
    into ``out_dir``; returns it.

    ``out_dir`` may be absent, empty, or a previous web export (replaced); anything
    else is refused unless ``force``. ``onnxruntime_web``: the onnxruntime-web package
    or its ``dist`` (default: $NEURALWORLD_ORT_WEB, then ``<repo>/node_modules``).
    ``int8``: ship the step graph with int8 matmuls (``onnx_export.quantize_step``) instead
    of the float one: a quarter of the download and faster in WASM (docs/experiments.md), an
    approximation of the world (velocity errors ~1e-2)."""
    from neuralworld.bundle import BundleError, load_bundle

    out = Path(out_dir)
    ort_dist = find_onnxruntime_web(onnxruntime_web)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not is_previous_export(out) and not force:
        raise ExportError(f"{out} is not empty and is not a previous web export: choose another folder or pass --force")
    try:
        world = load_bundle(resolve_world(str(world_path)))
    except (BundleError, PlayError) as e:
        raise ExportError(str(e)) from None
    if getattr(world, "model", "world") not in ("world", WARP_KIND, FIELD_KIND):
        raise ExportError(f"{world_path} is a {world.model} bundle: only transformer, warp and field worlds export to the web")
    preset = _Sampler(sampler, world)
    world = preset.world

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        onnx_meta = json.loads((export_onnx(world, tmp, batch_size=1) / META_FILE).read_text())
        if onnx_meta.get("model") not in (WARP_KIND, FIELD_KIND):  # a pixel world's encoder is the identity
            export_encoder(world, tmp)
        if int8:
            quantize_step(tmp)
            (tmp / STEP_FILE).unlink()  # the page loads one step graph; don't ship 4x its size unused
        latents, actions = start_context(world)
        with open(tmp / START_FILE, "wb") as f:
            f.write(latents.astype("<f4").tobytes())
            f.write(actions.astype("<f4").tobytes())
        manifest = build_manifest(world, onnx_meta, preset, (latents.shape, actions.shape), int8=int8)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        for name in PAGE_FILES:
            shutil.copyfile(STATIC_DIR / name, tmp / name)
        (tmp / "static").mkdir()
        for name in STATIC_FILES:
            shutil.copyfile(STATIC_DIR / name, tmp / "static" / name)
        (tmp / "ort").mkdir()
        for name in ORT_FILES:
            shutil.copyfile(ort_dist / name, tmp / "ort" / name)
        if (ort_dist.parent / "LICENSE").is_file():
            shutil.copyfile(ort_dist.parent / "LICENSE", tmp / "ort" / "LICENSE")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a served folder must be readable
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
