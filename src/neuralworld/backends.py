"""Execution backends: how ``WorldSession`` runs its networks, never what it does.

A backend has four calls, all the session needs per frame:

    new_cache(batch_size, device) -> DynamicsCache      the memory rings
    step(latent, level, action, cache) -> DynamicsOutput  one sampler call, cache untouched
    append(latent, level, action, cache) -> DynamicsOutput  the same, and the frame joins memory
    decode(latent) -> frames (B, 3, H, W) float          normalised latent -> pixels

Names (``PATHS``, what ``neuralworld bench --paths`` measures):
    eager     fp32 PyTorch, the reference (``WorldSession``'s default: what evaluation measures)
    bf16      PyTorch under CPU bfloat16 autocast, bfloat16 cache
    compiled  ``torch.compile`` of the pure step (``Dynamics.step_with_cache_tensors``) and decoder
    onnx      ONNX Runtime on the exported graphs (``onnx_export.OnnxBackend``)
    onnx_int8 the same with the dynamics step's matmuls in int8 (dynamic quantisation; approximate)

``eager``, ``compiled`` and ``onnx`` compute the same float32 function (tested to
~1e-6); ``bf16`` and ``onnx_int8`` trade exactness for speed.

``"auto"`` (``fastest_exact``) is what a player gets (``World.start``, ``neuralworld
play``): ``onnx`` where ONNX Runtime is installed and the world exports to ONNX
(a transformer or warp world on the CPU), else ``eager``.

Noise, the sampler and the order of calls stay in the session, so every backend
plays the same rollout loop (STYLE habit 3).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from neuralworld.model.dynamics import Dynamics, DynamicsCache, DynamicsOutput
from neuralworld.model.field import FieldNet
from neuralworld.model.warp import WarpNet

PATHS = ("eager", "bf16", "compiled", "onnx", "onnx_int8")
EXACT_PATHS = ("eager", "compiled", "onnx")
"""Paths that compute the reference float32 function (to rounding)."""
AUTO = "auto"
"""Not a path: the fastest exact one for the world at hand (``fastest_exact``)."""


class TorchBackend:
    """The world's own PyTorch modules: fp32 (``eager``), bf16 autocast, or compiled."""

    def __init__(self, world: Any, *, precision: str = "fp32", compile: bool = False):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.dynamics, self.autoencoder = world.dynamics, world.autoencoder
        self.precision = precision
        self.name = "compiled" if compile else ("bf16" if precision == "bf16" else "eager")
        self._compiled_step = self._compiled_decode = None
        if compile:
            self._compiled_step = torch.compile(self.dynamics.step_with_cache_tensors, dynamic=False)
            self._compiled_decode = torch.compile(self._decode_eager, dynamic=False)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.dynamics.pos_embed.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def new_cache(self, batch_size: int, device: Any = None) -> DynamicsCache:
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        return self.dynamics.new_cache(batch_size, device=device, dtype=dtype)

    def _compiled_run(self, latent, noise_level, action, cache):
        B = latent.shape[0]
        level = torch.as_tensor(noise_level, dtype=torch.float32, device=latent.device).expand(B).contiguous()
        return self._compiled_step(latent, level, action, *cache.step_inputs())

    def step(self, latent: torch.Tensor, noise_level: Any, action: torch.Tensor, cache: DynamicsCache) -> DynamicsOutput:
        if self._compiled_step is not None:
            out = DynamicsOutput(*self._compiled_run(latent, noise_level, action, cache)[:3])
            if isinstance(self.dynamics, WarpNet):  # its append hands back the last step's heads
                cache.reward, cache.termination = out.reward.detach().clone(), out.termination.detach().clone()
            return out
        with self._autocast():
            out = self.dynamics.step(latent, noise_level, action, cache)
        return DynamicsOutput(out.velocity.float(), out.reward.float(), out.termination.float())

    def append(self, latent: torch.Tensor, noise_level: Any, action: torch.Tensor, cache: DynamicsCache) -> DynamicsOutput:
        if self._compiled_step is not None and not isinstance(self.dynamics, WarpNet):  # a warp world's append calls no network
            velocity, reward, term, *kv = self._compiled_run(latent, noise_level, action, cache)
            cache.push(*kv, self.dynamics.config.memory_frames, latent=latent)
            return DynamicsOutput(velocity, reward, term)
        with self._autocast():
            out = self.dynamics.append(latent, noise_level, action, cache)
        return DynamicsOutput(out.velocity.float(), out.reward.float(), out.termination.float())

    def _decode_eager(self, latent: torch.Tensor) -> torch.Tensor:
        ae = self.autoencoder
        return ae.decode(ae.denormalize_latents(latent))  # (B, 3, H, W)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if self._compiled_decode is not None:
            return self._compiled_decode(latent)
        with self._autocast():
            return self._decode_eager(latent).float()


def fastest_exact(world: Any) -> str:
    """The fastest path in ``EXACT_PATHS`` that plays ``world`` here (as ``neuralworld bench``
    measures it on a CPU): ``onnx`` where ``onnx`` and ``onnxruntime`` are installed and the
    world is a transformer, warp or field world on the CPU; else ``eager`` (the U-Net baseline, a GPU,
    no ONNX Runtime). ``compiled`` is never picked: it compiles a while before its first frame."""
    dynamics = world.dynamics
    if not isinstance(dynamics, (Dynamics, WarpNet, FieldNet)) or dynamics.pos_embed.device.type != "cpu":
        return "eager"
    try:
        import onnx  # noqa: F401  (the export)
        import onnxruntime  # noqa: F401  (the runtime)
    except ImportError:
        return "eager"
    return "onnx"


def make_backend(backend: Any, world: Any, batch_size: int) -> Any:
    """A backend from its name in ``PATHS`` (``"torch"`` is ``"eager"``; ``"auto"`` is
    ``fastest_exact(world)``), or any object with the four calls, as is."""
    if not isinstance(backend, str):
        return backend
    name = "eager" if backend == "torch" else fastest_exact(world) if backend == AUTO else backend
    if name == "eager":
        return TorchBackend(world)
    if name == "bf16":
        return TorchBackend(world, precision="bf16")
    if name == "compiled":
        return TorchBackend(world, compile=True)
    if name in ("onnx", "onnx_int8"):
        from neuralworld.onnx_export import OnnxBackend

        return OnnxBackend.from_world(world, batch_size, int8=name == "onnx_int8")
    raise ValueError(f"unknown backend {backend!r}; choose from {PATHS}, {AUTO!r} or pass a backend object")
