"""A world as two ONNX graphs, and the ONNX Runtime backend that plays them.

    OUT/
      dynamics_step.onnx   Dynamics.step_with_cache_tensors: one frame against explicit cache tensors
      decoder.onnx         normalised latent (B, C, h, w) -> frame (B, 3, H, W), roughly [-1, 1]
      dynamics_step.int8.onnx   (``quantize_step``) the step with int8 weights and dynamically
                           quantised activations in every MatMul/Gemm: faster on a CPU with
                           VNNI (docs/experiments.md), an approximation (velocity errors ~1e-2)
      onnx.json            {"format": "neuralworld-onnx", "opset", "batch_size", shapes, input/output names}

``dynamics_step.onnx``
    inputs   latent (B, C, h, w) f32, noise_level (B,) f32, action (B, A) f32 (normalised),
             prev_latent (B, C, h, w) f32 (only when the world has ``prev_frame``: the latent
             last appended, zeros after a reset),
             full_k, full_v (L, B, H, K-1, N, hd) f32, full_age (K-1,) i64, full_valid (B, K-1) bool,
             pooled_k, pooled_v (L, B, H, M-1, Np, hd) f32, pooled_age (M-1,) i64, pooled_valid (B, M-1) bool
    outputs  velocity (B, C, h, w), reward (B,), termination (B,) (a logit),
             new_full_k, new_full_v (L, B, H, N, hd), new_pooled_k, new_pooled_v (L, B, H, Np, hd):
             the frame's own keys/values; the host writes them into its rings and keeps the
             appended latent as the next ``prev_latent`` (``DynamicsCache.push``).

A warp world (``model.warp``, ``"model": "warp"`` in onnx.json) exports one graph:

``dynamics_step.onnx``  ``WarpNet.step_with_cache_tensors``
    inputs   latent (B, 3, H, W) f32 (the noise the frame is made from), action (B, A) f32,
             frames (B, M, 3, H, W) f32 (the last M frames, 8-bit-quantised, oldest first),
             actions (B, M, A) f32 (the actions that led to them); noise_level is not an
             input (a one-step generator reads none: the exporter drops it)
    outputs  velocity (B, 3, H, W) (frame = latent - velocity), reward (B,), termination (B,)

and no ``decoder.onnx``: its frames are their latents, clamped to [-1, 1] (``PixelCodec``);
onnx.json says so with ``"decoder": {"file": null, "clamp": [-1, 1]}``. Its rings are
``WarpCache``'s shift register, pushed on the host without a network call.

A field world (``model.field``, ``"model": "field"``) exports two graphs and no decoder:

``dynamics_step.onnx``  ``FieldNet.step_with_cache_tensors``
    inputs   latent (B, 3, H, W) f32, action (B, A) f32, pose (B, 4) f32 (x, y, z, angle),
             move (B, 4) f32 (the last move: forward, left; the walk: the speed its bob follows,
             frames since the start)
    outputs  velocity (B, 3, H, W), reward (B,), termination (B,), new_pose (B, 4),
             new_move (B, 4): where the action took the camera (the host keeps them on append)
``locate.onnx``  ``FieldNet.nearest``: frame (1, 3, H, W) in [-1, 1] -> pose (1, 4), the
             closest-rendering of the nearest bank poses (start from an image; no gradient steps)

The graphs are exported for one batch size (fixed shapes let ONNX Runtime plan
every buffer once; a browser plays batch 1). ``OnnxBackend`` runs them with the
same interface as ``backends.TorchBackend`` so ``WorldSession`` drives either:
noise, sampler math and the order of calls stay in the session (one rollout
loop); only the network calls and the ring bookkeeping (numpy) differ.
Priming from real frames still encodes with the torch encoder: it runs once per
reset, not per frame.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from neuralworld.model.autoencoder import Autoencoder
from neuralworld.model.dynamics import Dynamics, DynamicsCache, DynamicsOutput, check_batch
from neuralworld.model.field import MODEL_KIND as FIELD_KIND, FieldCache, FieldNet
from neuralworld.model.warp import MODEL_KIND as WARP_KIND, WarpCache, WarpNet, quantize

log = logging.getLogger(__name__)

FORMAT = "neuralworld-onnx"
OPSET = 17
STEP_FILE = "dynamics_step.onnx"
STEP_INT8_FILE = "dynamics_step.int8.onnx"
DECODER_FILE = "decoder.onnx"
META_FILE = "onnx.json"

STEP_INPUTS = (
    "latent", "noise_level", "action", "prev_latent",
    "full_k", "full_v", "full_age", "full_valid",
    "pooled_k", "pooled_v", "pooled_age", "pooled_valid",
)  # fmt: skip
"""Names of ``step_with_cache_tensors``'s arguments: the frame's, then ``DynamicsCache.step_inputs()``."""
STEP_OUTPUTS = ("velocity", "reward", "termination", "new_full_k", "new_full_v", "new_pooled_k", "new_pooled_v")
WARP_STEP_INPUTS = ("latent", "noise_level", "action", "frames", "actions")
"""``WarpNet.step_with_cache_tensors``'s arguments: the frame's, then ``WarpCache.step_inputs()``."""
WARP_STEP_OUTPUTS = ("velocity", "reward", "termination")
FIELD_STEP_INPUTS = ("latent", "noise_level", "action", "pose", "move")
"""``FieldNet.step_with_cache_tensors``'s arguments: the frame's, then ``FieldCache.step_inputs()``."""
FIELD_STEP_OUTPUTS = ("velocity", "reward", "termination", "new_pose", "new_move")
LOCATE_FILE = "locate.onnx"


class TracedCall(nn.Module):
    """A call on a network's tensors as a module's forward, which is what the exporter traces:
    ``TracedCall(dynamics, dynamics.step_with_cache_tensors)``. ``network`` is held as a
    submodule so its weights become the graph's."""

    def __init__(self, network: nn.Module, call: Callable[..., Any]):
        super().__init__()
        self.network = network
        self.call = call

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.call(*inputs)


def decode_latent(autoencoder: Autoencoder, latent: torch.Tensor) -> torch.Tensor:
    """Normalised latent (B, C, h, w) -> frame (B, 3, H, W): denormalise, then decode."""
    return autoencoder.decode(autoencoder.denormalize_latents(latent))


def example_step_inputs(dynamics: Dynamics, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of the right shapes and dtypes for ``step_with_cache_tensors`` (random
    latent and keys/values, a half-full cache): what the export traces with."""
    g = torch.Generator().manual_seed(seed)
    c = dynamics.new_cache(batch_size, device="cpu")
    h, w = dynamics.latent_size
    latent = torch.randn(batch_size, dynamics.latent_channels, h, w, generator=g)
    for t in (c.full_k, c.full_v, c.pooled_k, c.pooled_v):
        t.copy_(torch.randn(t.shape, generator=g))
    c.full_valid[:, : (c.full_valid.shape[1] + 1) // 2] = True
    c.pooled_valid[:, : (c.pooled_valid.shape[1] + 1) // 2] = True
    c.prev.copy_(torch.randn(c.prev.shape, generator=g))
    return (latent, torch.full((batch_size,), 0.5), torch.zeros(batch_size, dynamics.action_size), *c.step_inputs())



def export_onnx(world: Any, out_dir: str | os.PathLike, *, batch_size: int = 1, opset: int = OPSET) -> Path:
    """Write ``dynamics_step.onnx``, ``decoder.onnx`` and ``onnx.json`` for ``world``
    (a loaded ``World``) at ``batch_size``; returns the folder. A warp world has no
    ``decoder.onnx`` (``export_warp_onnx``); the U-Net baseline is refused."""
    if isinstance(world.dynamics, WarpNet):
        return export_warp_onnx(world, out_dir, batch_size=batch_size, opset=opset)
    if isinstance(world.dynamics, FieldNet):
        return export_field_onnx(world, out_dir, batch_size=batch_size, opset=opset)
    if not isinstance(world.dynamics, Dynamics):
        raise ValueError(
            f"{getattr(world, 'name', '') or 'this world'} is a {getattr(world, 'model', type(world.dynamics).__name__)}: "
            "the ONNX export and the onnx backends play warp, field and transformer worlds only; use the eager, bf16 or "
            "compiled backend"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dynamics, autoencoder = world.dynamics, world.autoencoder
    device = dynamics.pos_embed.device
    dynamics.cpu().eval()
    autoencoder.cpu().eval()
    step_inputs = example_step_inputs(dynamics, batch_size)
    latent = step_inputs[0]
    try:
        trace_to_onnx(TracedCall(dynamics, dynamics.step_with_cache_tensors), step_inputs, out / STEP_FILE, STEP_INPUTS,
                      STEP_OUTPUTS, opset)
        trace_to_onnx(TracedCall(autoencoder, functools.partial(decode_latent, autoencoder)), (latent,), out / DECODER_FILE,
                      ("latent",), ("frame",), opset)
    finally:
        dynamics.to(device)
        autoencoder.to(device)
    cfg = dynamics.config
    meta = step_meta(world, dynamics, out, opset, batch_size, STEP_INPUTS, STEP_OUTPUTS, step_inputs)
    meta.update({
        "n_layers": cfg.n_layers,
        "full_frames": cfg.full_frames,
        "memory_frames": cfg.memory_frames,
        "prev_frame": bool(cfg.prev_frame),
        "decoder": {"inputs": ["latent"], "outputs": ["frame"]},
    })
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


def step_meta(world: Any, net: nn.Module, out: Path, opset: int, batch_size: int, input_names: tuple[str, ...],
              output_names: tuple[str, ...], step_inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """What onnx.json says of every exported step graph: format, shapes, controls, and the inputs
    the graph kept (the exporter drops inputs nothing reads, e.g. ``prev_latent`` of a world
    without frame stacking, or a warp step's ``noise_level``)."""
    import onnx

    in_graph = {i.name for i in onnx.load(str(out / STEP_FILE), load_external_data=False).graph.input}
    return {
        "format": FORMAT,
        "opset": opset,
        "batch_size": batch_size,
        "resolution": list(world.config.resolution),
        "latent_shape": [net.latent_channels, *net.latent_size],
        "action_size": net.action_size,
        "action_spec": world.config.action_spec,
        "step_inputs": {n: [list(t.shape), str(t.dtype).replace("torch.", "")] for n, t in zip(input_names, step_inputs) if n in in_graph},
        "step_outputs": list(output_names),
    }


def trace_to_onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, input_names: tuple[str, ...],
                  output_names: tuple[str, ...], opset: int) -> None:
    """One traced graph to ``path``, quietly."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        # dynamo=False: the TorchScript exporter gives a plain, fixed-shape graph in seconds
        torch.onnx.export(module, inputs, str(path), input_names=list(input_names), output_names=list(output_names),
                          opset_version=opset, dynamo=False)


def example_warp_step_inputs(net: WarpNet, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of the right shapes for ``WarpNet.step_with_cache_tensors`` (noise, random
    8-bit memory frames and actions): what the warp export traces with."""
    g = torch.Generator().manual_seed(seed)
    cache = net.new_cache(batch_size, device="cpu")
    latent = torch.randn(batch_size, net.latent_channels, *net.latent_size, generator=g)  # (B, 3, H, W)
    frames = quantize(torch.rand(cache.frames.shape, generator=g) * 2 - 1)  # (B, M, 3, H, W)
    actions = torch.rand(cache.actions.shape, generator=g) * 2 - 1  # (B, M, A)
    return (latent, torch.ones(batch_size), torch.zeros(batch_size, net.action_size), frames, actions)


def store_exact_halves(path: Path, min_elements: int = 4096) -> int:
    """Store each float32 weight of the graph at ``path`` that half precision holds exactly (a
    bundle keeps a field's tables at half precision: ``FieldNet.HALF_STORED``) as float16, cast
    back to float32 where the graph starts; returns how many. The graph computes the same numbers
    (ONNX Runtime folds the casts when it loads it) from half the download."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inputs = {i.name for i in graph.input}
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or init.name in inputs:
            continue
        x = numpy_helper.to_array(init)
        if x.size < min_elements or not np.array_equal(x.astype(np.float16).astype(np.float32), x):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(x.astype(np.float16), f"{name}__half"))
        casts.append(helper.make_node("Cast", [f"{name}__half"], [name], to=TensorProto.FLOAT, name=f"{name}__to_float"))
    if casts:
        nodes = casts + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return len(casts)


def float64_to_float32(path: Path) -> int:
    """Make the float64 constants and casts in the graph at ``path`` float32; returns how many.

    The TorchScript exporter's ``linspace`` ignores its dtype (it builds the range from
    Python floats, so float64), and ONNX Runtime has no float64 ``GridSample``: the warp's
    sampling grid comes out float64 and the flow is cast up to meet it. Nothing in our
    networks means float64, so the graph computes what PyTorch does in float32."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(path))
    changed = 0
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.DOUBLE:
                attr.i = TensorProto.FLOAT
                changed += 1
            elif node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == TensorProto.DOUBLE:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
                changed += 1
    for init in model.graph.initializer:
        if init.data_type == TensorProto.DOUBLE:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
            changed += 1
    for info in model.graph.value_info:
        if info.type.tensor_type.elem_type == TensorProto.DOUBLE:
            info.type.tensor_type.elem_type = TensorProto.FLOAT
    if changed:
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return changed


def export_warp_onnx(world: Any, out_dir: str | os.PathLike, *, batch_size: int = 1, opset: int = OPSET) -> Path:
    """A warp world's ``dynamics_step.onnx`` and ``onnx.json`` (no decoder graph: see the module
    docstring); returns the folder. ``export_onnx`` calls it for a warp world."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net: WarpNet = world.dynamics
    device = net.pos_embed.device
    net.cpu().eval()
    step_inputs = example_warp_step_inputs(net, batch_size)
    try:
        trace_to_onnx(TracedCall(net, net.step_with_cache_tensors), step_inputs, out / STEP_FILE, WARP_STEP_INPUTS,
                      WARP_STEP_OUTPUTS, opset)
    finally:
        net.to(device)
    float64_to_float32(out / STEP_FILE)
    cfg = net.config
    meta = {"model": WARP_KIND, **step_meta(world, net, out, opset, batch_size, WARP_STEP_INPUTS, WARP_STEP_OUTPUTS, step_inputs)}
    meta.update({
        "window": cfg.window,
        "full_frames": cfg.full_frames,
        "memory_frames": cfg.memory_frames,
        "action_frames": cfg.action_frames,
        "decoder": {"file": None, "clamp": [-1.0, 1.0]},  # frame = latent clamped (PixelCodec.decode); no graph
    })
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


def export_field_onnx(world: Any, out_dir: str | os.PathLike, *, batch_size: int = 1, opset: int = OPSET) -> Path:
    """A field world's ``dynamics_step.onnx``, ``locate.onnx`` and ``onnx.json`` (no decoder graph:
    its frames are its latents); returns the folder. ``export_onnx`` calls it for a field world."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net: FieldNet = world.dynamics
    device = net.pos_embed.device
    net.cpu().eval()
    g = torch.Generator().manual_seed(0)
    B, (H, W) = batch_size, net.latent_size
    poses = torch.tensor(world.start_poses[-1:] if world.start_poses is not None else [[0.0, 0.0, 0.0, 0.0]], dtype=torch.float32)
    step_inputs = (torch.randn(B, 3, H, W, generator=g), torch.ones(B), torch.zeros(B, net.action_size),
                   poses.expand(B, 4).clone(), net.new_cache(B, "cpu").move)
    try:
        trace_to_onnx(TracedCall(net, net.step_with_cache_tensors), step_inputs, out / STEP_FILE, FIELD_STEP_INPUTS,
                      FIELD_STEP_OUTPUTS, opset)
        trace_to_onnx(TracedCall(net, net.nearest), (torch.rand(1, 3, H, W, generator=g) * 2 - 1,), out / LOCATE_FILE,
                      ("frame",), ("pose",), opset)
    finally:
        net.to(device)
    for f in (STEP_FILE, LOCATE_FILE):
        float64_to_float32(out / f)
        store_exact_halves(out / f)
    meta = {"model": FIELD_KIND, **step_meta(world, net, out, opset, batch_size, FIELD_STEP_INPUTS, FIELD_STEP_OUTPUTS, step_inputs)}
    meta.update({"memory_frames": 0, "decoder": {"file": None, "clamp": [-1.0, 1.0]}, "locate": {"file": LOCATE_FILE}})
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


def quantize_step(folder: str | os.PathLike) -> Path:
    """Write ``dynamics_step.int8.onnx`` beside ``dynamics_step.onnx``: int8 weights, activations
    quantised per call (ONNX Runtime's dynamic quantisation; no calibration data needed).
    The decoder stays float: ONNX Runtime's integer convolutions are slower than its float ones."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(folder)
    logger = logging.getLogger()  # the quantizer warns through the root logger about pre-processing
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(folder / STEP_FILE), str(folder / STEP_INT8_FILE), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])  # fmt: skip
    finally:
        logger.setLevel(level)
    return folder / STEP_INT8_FILE


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """``onnx.json`` of an export folder (``ValueError`` where it is not ours)."""
    path = Path(folder) / META_FILE
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a neuralworld ONNX export")
    return meta


CACHE_ENTRIES = 8
"""Exports the cache keeps (the newest by use); each is about the size of the world's weights."""


def cache_root() -> Path | None:
    """Where exports are kept: ``$NEURALWORLD_CACHE/onnx``, else the user's cache folder
    (``$XDG_CACHE_HOME`` or ~/.cache) ``/neuralworld/onnx``; None when NEURALWORLD_CACHE is "off"."""
    env = os.environ.get("NEURALWORLD_CACHE")
    if env == "off":
        return None
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "neuralworld"
    return base / "onnx"


def export_key(world: Any, batch_size: int, int8: bool) -> str:
    """What an export depends on: the networks' weights and config, the batch, int8, the opset,
    torch's version and the source of the code that traces it (the model and this module)."""
    h = hashlib.sha256(json.dumps([FORMAT, OPSET, batch_size, int8, torch.__version__, repr(world.config)]).encode())
    package = Path(__file__).parent
    for source in sorted((package / "model").glob("*.py")) + [Path(__file__)]:
        h.update(source.read_bytes())
    for net in (world.dynamics, world.autoencoder):
        for name, tensor in net.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()[:32]


def cached_export(world: Any, batch_size: int, *, int8: bool = False) -> Path | None:
    """The folder of ``world``'s export at ``batch_size`` in the cache (``cache_root``), made
    there once (atomically: written aside, then renamed) and reused by every later start of the
    same weights; None when the cache is off or cannot be written (the caller exports into a
    temporary folder)."""
    root = cache_root()
    if root is None:
        return None
    key = export_key(world, batch_size, int8)
    folder = root / key
    if (folder / META_FILE).exists():
        os.utime(folder)  # used: the newest are kept
        return folder
    try:
        root.mkdir(parents=True, exist_ok=True)
        part = Path(tempfile.mkdtemp(prefix=".part-", dir=root))
    except OSError as e:
        log.info("no ONNX export cache at %s (%s): exporting into a temporary folder", root, e)
        return None
    try:
        export_onnx(world, part, batch_size=batch_size)
        if int8:
            quantize_step(part)
        try:
            part.rename(folder)
        except OSError:  # another process finished the same export first
            if not (folder / META_FILE).exists():
                raise
    finally:
        shutil.rmtree(part, ignore_errors=True)
    old = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    for stale in old[:-CACHE_ENTRIES]:
        shutil.rmtree(stale, ignore_errors=True)
    return folder


class OnnxBackend:
    """``WorldSession``'s network calls on ONNX Runtime (CPU), one batch size.

    Same interface as ``backends.TorchBackend``: ``new_cache``, ``step``, ``append``
    (torch tensors in and out, so the session's sampler math is untouched) and
    ``decode``. The cache is a ``DynamicsCache`` of numpy arrays. A warp world's export
    opens as a ``WarpOnnxBackend`` (``OnnxBackend(folder)`` picks it from onnx.json).
    """

    INPUTS = STEP_INPUTS
    """The step graph's inputs in ``step_with_cache_tensors``'s order (the graph may lack some)."""

    def __new__(cls, folder: str | os.PathLike, **kw: Any) -> "OnnxBackend":
        if cls is OnnxBackend:
            cls = {WARP_KIND: WarpOnnxBackend, FIELD_KIND: FieldOnnxBackend}.get(read_meta(folder).get("model"), cls)
        return super().__new__(cls)

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None, int8: bool = False):
        import onnxruntime as ort

        folder = Path(folder)
        self.meta = read_meta(folder)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # no busy-waiting between runs: torch ops run between the calls on the same cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("NEURALWORLD_ORT_SPIN", "0"))
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        self.name = "onnx_int8" if int8 else "onnx"
        step_file = folder / (STEP_INT8_FILE if int8 else STEP_FILE)
        self.step_session = ort.InferenceSession(str(step_file), opts, providers=providers)
        decoder = self.meta["decoder"].get("file", DECODER_FILE)  # None: a pixel world's frame is its latent
        self.decoder_session = ort.InferenceSession(str(folder / decoder), opts, providers=providers) if decoder else None
        self.batch_size = int(self.meta["batch_size"])
        self.memory_frames = int(self.meta["memory_frames"])

    @classmethod
    def from_world(cls, world: Any, batch_size: int, *, threads: int | None = None, int8: bool = False) -> "OnnxBackend":
        """Open ``world``'s export at ``batch_size`` (step quantised when ``int8``): from the
        export cache (``cached_export``) when it can hold one, else exported into a temporary
        folder that is gone once the graphs are loaded."""
        folder = cached_export(world, batch_size, int8=int8)
        if folder is not None:
            return cls(folder, threads=threads, int8=int8)
        with tempfile.TemporaryDirectory(prefix="neuralworld-onnx-") as folder:
            export_onnx(world, folder, batch_size=batch_size)
            if int8:
                quantize_step(folder)
            return cls(folder, threads=threads, int8=int8)

    def new_cache(self, batch_size: int, device: Any = None) -> DynamicsCache:
        if batch_size != self.batch_size:
            raise ValueError(f"this ONNX export is for batch {self.batch_size}, not {batch_size}")
        shapes = {n: tuple(s) for n, (s, _) in self.meta["step_inputs"].items()}
        zeros = lambda name, dtype: np.zeros(shapes[name], dtype)  # noqa: E731
        B, (C, h, w) = self.batch_size, self.meta["latent_shape"]
        return DynamicsCache(
            prev=np.zeros((B, C, h, w), np.float32),
            full_k=zeros("full_k", np.float32),
            full_v=zeros("full_v", np.float32),
            full_age=np.arange(1, shapes["full_age"][0] + 1, dtype=np.int64),
            full_valid=zeros("full_valid", np.bool_),
            pooled_k=zeros("pooled_k", np.float32),
            pooled_v=zeros("pooled_v", np.float32),
            pooled_age=np.arange(1, shapes["pooled_age"][0] + 1, dtype=np.int64),
            pooled_valid=zeros("pooled_valid", np.bool_),
        )

    def _run(self, latent: torch.Tensor, noise_level: Any, action: torch.Tensor, cache: DynamicsCache, outputs: list[str]):
        B = latent.shape[0]
        level = torch.as_tensor(noise_level, dtype=torch.float32).expand(B)
        inputs = (
            np.ascontiguousarray(latent.float().cpu().numpy()),
            np.ascontiguousarray(level.cpu().numpy()),
            np.ascontiguousarray(action.float().cpu().numpy()),
            *(x.numpy() if isinstance(x, torch.Tensor) else x for x in cache.step_inputs()),  # WarpCache: host tensors
        )
        feed = {n: x for n, x in zip(self.INPUTS, inputs) if n in self.meta["step_inputs"]}
        return self.step_session.run(outputs, feed)

    def step(self, latent: torch.Tensor, noise_level: Any, action: torch.Tensor, cache: DynamicsCache) -> DynamicsOutput:
        velocity, reward, term = self._run(latent, noise_level, action, cache, ["velocity", "reward", "termination"])
        return DynamicsOutput(torch.from_numpy(velocity), torch.from_numpy(reward), torch.from_numpy(term))

    def append(self, latent: torch.Tensor, noise_level: Any, action: torch.Tensor, cache: DynamicsCache) -> DynamicsOutput:
        velocity, reward, term, k, v, pk, pv = self._run(latent, noise_level, action, cache, list(STEP_OUTPUTS))
        cache.push(k, v, pk, pv, self.memory_frames, latent=latent.float().cpu().numpy())
        return DynamicsOutput(torch.from_numpy(velocity), torch.from_numpy(reward), torch.from_numpy(term))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, h, w) -> frames (B, 3, H, W) float."""
        (frame,) = self.decoder_session.run(["frame"], {"latent": np.ascontiguousarray(latent.float().cpu().numpy())})
        return torch.from_numpy(frame)


class WarpOnnxBackend(OnnxBackend):
    """A warp world's step on ONNX Runtime (``OnnxBackend(folder)`` opens a warp export as one).

    As ``WarpNet`` does: the cache is a ``WarpCache`` (torch tensors on the host: its ``push``
    quantises the frame exactly as eager play does); ``step`` runs the graph and records the
    heads in the cache; ``append`` pushes the frame and action with no network call and hands
    back the last step's heads; ``decode`` clamps (``PixelCodec.decode``)."""

    INPUTS = WARP_STEP_INPUTS

    def new_cache(self, batch_size: int, device: Any = None) -> WarpCache:
        if batch_size != self.batch_size:
            raise ValueError(f"this ONNX export is for batch {self.batch_size}, not {batch_size}")
        shapes = {n: tuple(s) for n, (s, _) in self.meta["step_inputs"].items()}
        B = self.batch_size
        return WarpCache(
            frames=torch.zeros(shapes["frames"]),  # (B, M, 3, H, W)
            actions=torch.zeros(shapes["actions"]),  # (B, M, A)
            valid=torch.zeros(B, shapes["frames"][1], dtype=torch.bool),
            reward=torch.zeros(B),
            termination=torch.zeros(B),
        )

    def step(self, latent: torch.Tensor, noise_level: Any, action: torch.Tensor, cache: WarpCache) -> DynamicsOutput:
        check_batch(cache, latent)
        velocity, reward, term = self._run(latent, noise_level, action, cache, list(WARP_STEP_OUTPUTS))
        out = DynamicsOutput(torch.from_numpy(velocity), torch.from_numpy(reward), torch.from_numpy(term))
        cache.reward, cache.termination = out.reward.clone(), out.termination.clone()
        return out

    def append(self, latent: torch.Tensor, noise_level: Any, action: torch.Tensor, cache: WarpCache) -> DynamicsOutput:
        check_batch(cache, latent)
        out = DynamicsOutput(torch.zeros_like(latent), cache.reward.clone(), cache.termination.clone())
        cache.push(action.float().cpu(), latent=latent.float().cpu())
        cache.reward.zero_()
        cache.termination.zero_()
        return out

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Frames in [-1, 1] are the latents (B, 3, H, W): clamped, as ``PixelCodec.decode``."""
        return latent.float().cpu().clamp(-1.0, 1.0)


class FieldOnnxBackend(WarpOnnxBackend):
    """A field world's step on ONNX Runtime (``OnnxBackend(folder)`` opens a field export as one).

    The cache is a ``FieldCache`` (torch tensors on the host). ``step`` runs the graph and keeps
    where the action took the camera; ``append`` moves the camera there (no network call when
    it follows the ``step`` of the same action, as in play; else one call), except for an
    element's first frame after a reset, which is where it starts (``FieldNet.append``)."""

    INPUTS = FIELD_STEP_INPUTS

    def new_cache(self, batch_size: int, device: Any = None) -> FieldCache:
        if batch_size != self.batch_size:
            raise ValueError(f"this ONNX export is for batch {self.batch_size}, not {batch_size}")
        z = lambda *s: torch.zeros(batch_size, *s)  # noqa: E731
        moves = self.meta["step_inputs"]["move"][0][1]  # 4 (2 in an export from before the walk's bob)
        cache = FieldCache(pose=z(4), move=z(moves), home=z(4), fresh=torch.ones(batch_size, dtype=torch.bool),
                           reward=z(), termination=z())
        cache.stepped = None  # (action, new pose, new move) of the last step
        return cache

    def step(self, latent: torch.Tensor, noise_level: Any, action: torch.Tensor, cache: FieldCache) -> DynamicsOutput:
        check_batch(cache, latent)
        velocity, reward, term, pose, move = self._run(latent, noise_level, action, cache, list(FIELD_STEP_OUTPUTS))
        cache.stepped = (action.float().cpu().clone(), torch.from_numpy(pose), torch.from_numpy(move))
        return DynamicsOutput(torch.from_numpy(velocity), torch.from_numpy(reward), torch.from_numpy(term))

    def append(self, latent: torch.Tensor, noise_level: Any, action: torch.Tensor, cache: FieldCache) -> DynamicsOutput:
        check_batch(cache, latent)
        stepped = getattr(cache, "stepped", None)
        if stepped is None or not torch.equal(stepped[0], action.float().cpu()):
            *_, pose, move = self._run(latent, noise_level, action, cache, list(FIELD_STEP_OUTPUTS))
            stepped = (None, torch.from_numpy(pose), torch.from_numpy(move))
        cache.go(stepped[1], stepped[2])
        cache.stepped = None
        zeros = torch.zeros(latent.shape[0])
        return DynamicsOutput(torch.zeros_like(latent), zeros, zeros - 20.0)
