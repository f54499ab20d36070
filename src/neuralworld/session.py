"""WorldSession: the only stateful piece. Memory in, action in, next frame out.

A session owns everything that changes while a world is played: the dynamics'
KV cache (rolling memory), the noise generator, the current frame and the
heads' last reward and termination. Every surface drives this one object — the
web player, the gym env, evaluation, benchmarks — so there is exactly one
rollout loop in the code base (STYLE habit 3)::

    world = neuralworld.load("runs/doom/world")
    session = world.start(frames, actions=led_to)    # or an image, or None
    frame = session.step(world.spec.make(forward=1))  # uint8 (H, W, 3)

What happens per step
    1. the action is validated and normalised with the world's ``ActionSpec``;
    2. the sampler preset integrates fresh noise to a latent, calling
       ``dynamics.step(x, t, action, cache)`` (the cache is read, never copied);
    3. the latent is remembered: lightly noised to the preset's
       ``context_level`` and ``dynamics.append``-ed, which writes its keys and
       values into the cache's fixed rings and gives reward and termination;
    4. the latent is decoded to uint8 pixels.
    Nothing is allocated per step beyond the few tensors of the sampler; the
    generated latent is never re-encoded from pixels.

Alignment (as in the dynamics): ``actions[t]`` is the action that LED TO frame
t. A dataset stores the opposite (``frames[t]`` is seen before ``actions[t]``),
so context taken from a dataset slice ``frames[s:s+T]`` goes with
``[actions[s-1], actions[s], ..., actions[s+T-2]]`` (a no-op where ``s == 0``).

Why remembered frames are noised
    The dynamics was trained with context frames noised to a level in
    ``[0, context_noise_max]`` *and told that level* (GameNGen's augmentation).
    Giving it a clean latent labelled 0.06 is an input it never saw; noising
    ``x = (1 - l) z + l eps`` is exactly the training distribution, and it is
    what lets the world forgive its own small errors.

Determinism
    Noise comes only from the session's ``torch.Generator`` seeded by ``seed``.
    The order of draws is part of the contract (the KV-cache test rebuilds it):
    one ``(B, C, h, w)`` draw per remembered frame when ``context_level > 0``
    (context frames in order, then each generated frame after it is sampled),
    and one ``(B, C, h, w)`` draw of starting noise per ``step``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import cv2
import numpy as np
import torch

from neuralworld.actions import ActionError, ActionSpec
from neuralworld.backends import make_backend
from neuralworld.model.autoencoder import frames_to_tensor, tensor_to_frames
from neuralworld.model.dynamics import DynamicsCache
from neuralworld.model import memory
from neuralworld.model.sampler import SAMPLERS, SamplerPreset

GREY = 128
"""Value of the mid-grey frame a session starts from when given no frames."""

_ENCODE_CHUNK = 64  # frames per autoencoder call when priming (bounds memory for long contexts)


class SessionError(ValueError):
    """Frames or settings a session cannot start from; the message says what fits."""


def resolve_sampler(sampler: str | SamplerPreset, world: Any = None) -> SamplerPreset:
    """A preset name from ``SAMPLERS`` or a ``SamplerPreset`` as is; given the ``world``,
    what the preset means there: ``fast`` takes the steps its student was distilled for,
    and becomes ``euler2`` on a world trained without distillation; a one-step generator
    plays every preset as its single call."""
    if isinstance(sampler, SamplerPreset):
        preset = sampler
    else:
        try:
            preset = SAMPLERS[sampler]
        except (KeyError, TypeError):
            raise SessionError(f"unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)} or pass a SamplerPreset") from None
    if getattr(getattr(world, "dynamics", None), "one_step", False):
        # a one-step generator (model.warp): every preset is its one call, and memory is
        # fed back 8-bit-quantised instead of noised
        return SamplerPreset("euler", steps=1, context_level=0.0)
    if world is None or preset.network != "distilled":
        return preset
    if getattr(world, "distilled", None) is None:
        if sampler == "fast":
            return SAMPLERS["euler2"]
        raise SessionError(f"sampler {preset} needs a distilled network; {getattr(world, 'name', 'this world')} has none")
    return dataclasses.replace(preset, steps=world.distilled_steps) if sampler == "fast" else preset


def fit_frame(image: np.ndarray, resolution: tuple[int, int]) -> np.ndarray:
    """Any RGB image (h, w, 3) -> uint8 (H, W, 3): scale until it covers the frame, then
    crop the centre, so the aspect ratio is kept and nothing is letterboxed (the
    world never saw black bars)."""
    H, W = resolution
    h, w = image.shape[:2]
    if (h, w) == (H, W):
        return image
    scale = max(H / h, W / w)
    new_w, new_h = max(W, round(w * scale)), max(H, round(h * scale))
    # INTER_AREA averages when shrinking (no aliasing); INTER_LINEAR when growing
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=interp)
    top, left = (new_h - H) // 2, (new_w - W) // 2
    return resized[top : top + H, left : left + W]


class WorldSession:
    """One (or B parallel) playthroughs of a world.

    Args:
        world: a loaded ``World`` (``neuralworld.load``). ``World.start`` makes a
            session with what the player plays (``fast`` on ``backend="auto"``).
        frames: where the playthrough starts (see ``reset``): ``None`` for a
            mid-grey frame, one image (H, W, 3) of any size, dataset frames
            (T, H, W, 3), or one context per batch element (B, T, H, W, 3).
        sampler: ``"fast"`` (the default, what the player plays), ``"quality"``,
            ``"euler2"`` (see ``model.sampler.SAMPLERS``) or a ``SamplerPreset``.
            ``fast`` drives the world's distilled network where it has one, and is
            ``euler2`` where it has none.
        batch_size: parallel playthroughs. None: B of 5-d frames, else 1. Frames
            without a batch axis are shared by every element.
        seed: seeds the session's noise generator; same seed, same frames.
        device: where to run; None keeps the world's device. Another device moves
            the world's networks there (they are shared, not copied).
        actions: the actions that led to ``frames`` (T, A) or (B, T, A), in the
            ActionSpec's units; None: no-ops (the usual case for an image).
        backend: how the networks run (``backends.PATHS``): ``"torch"``/``"eager"``
            (fp32, the reference and the default: evaluation, training's validation
            and the bench's FLOP count construct sessions and measure this path),
            ``"bf16"``, ``"compiled"``, ``"onnx"`` (ONNX Runtime), ``"auto"`` (the
            fastest exact path, ``backends.fastest_exact``), or a backend object.
            The rollout is the same for all.
        pixels: False skips decoding each generated frame (``frame`` then refuses and
            ``step`` returns None): for a caller that reads only ``latent`` and the
            heads, such as a controller trained in a recurrent world's dream.

    A session made with 5-d frames or ``batch_size > 1`` is *batched*: ``step``
    returns (B, H, W, 3) and takes (A,) (same action for all) or (B, A). Otherwise
    ``step`` returns (H, W, 3) and takes (A,).
    """

    def __init__(
        self,
        world: Any,
        frames: np.ndarray | None = None,
        *,
        sampler: str | SamplerPreset = "fast",
        batch_size: int | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
        actions: np.ndarray | None = None,
        backend: str | Any = "torch",
        pixels: bool = True,
    ):
        if isinstance(world, (str, os.PathLike)):  # the bundle sits above: it makes sessions (World.start)
            raise SessionError(f"WorldSession takes a loaded world: neuralworld.load({str(world)!r}).start(...)")
        self.sampler = resolve_sampler(sampler, world)
        self.sampler_name = sampler if isinstance(sampler, str) else None  # as asked ("fast"), for the repr
        world = world.network(self.sampler.network)  # the student, for a distilled preset
        self.world = world
        self.spec: ActionSpec = world.spec
        self.resolution: tuple[int, int] = tuple(world.config.resolution)  # type: ignore[assignment]
        self.autoencoder = world.autoencoder
        self.dynamics = world.dynamics
        self.device = torch.device(device) if device is not None else self.dynamics.pos_embed.device
        if self.dynamics.pos_embed.device != self.device:
            self.autoencoder.to(self.device)
            self.dynamics.to(self.device)
        self.autoencoder.eval()
        self.dynamics.eval()

        shape_batch = np.shape(frames)[0] if frames is not None and np.ndim(frames) == 5 else None
        if batch_size is None:
            batch_size = shape_batch or 1
        if batch_size < 1:
            raise SessionError(f"batch_size must be >= 1, got {batch_size}")
        if shape_batch is not None and shape_batch != batch_size:
            raise SessionError(f"frames hold {shape_batch} contexts (B, T, H, W, 3) but batch_size is {batch_size}")
        self.batch_size = int(batch_size)
        self.batched = shape_batch is not None or self.batch_size > 1

        h, w = self.dynamics.latent_size
        self._latent_shape = (self.batch_size, self.dynamics.latent_channels, h, w)  # (B, C, h, w)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.backend = make_backend(backend, world, self.batch_size)
        self.cache: DynamicsCache  # allocated by reset
        self._frame: np.ndarray | None  # (B, H, W, 3) uint8; None when pixels=False after a step
        self._latent: torch.Tensor  # (B, C, h, w), the dynamics' normalised latent of the current frame
        self._reward: np.ndarray  # (B,)
        self._termination: np.ndarray  # (B,) probability
        self.step_index = 0
        self.pixels = bool(pixels)
        self.reset(frames, actions=actions)

    # -- what a caller reads ------------------------------------------------------------
    @property
    def frame(self) -> np.ndarray:
        """The current frame, uint8 (H, W, 3) or (B, H, W, 3): the last generated one,
        or after ``reset`` the last context frame as given (fitted to the resolution)."""
        if self._frame is None:
            raise SessionError("this session was made with pixels=False: it decodes no frames (read .latent)")
        return self._frame if self.batched else self._frame[0]

    @property
    def latent(self) -> torch.Tensor:
        """The current frame's latent as the dynamics sees it (B, C, h, w), normalised."""
        return self._latent

    @property
    def last_reward(self) -> float | np.ndarray:
        """The reward head's estimate for the transition into the current frame."""
        return self._reward if self.batched else float(self._reward[0])

    @property
    def last_termination(self) -> float | np.ndarray:
        """The termination head's probability that the episode ended at the current frame."""
        return self._termination if self.batched else float(self._termination[0])

    @property
    def frames_in_memory(self) -> int:
        """Frames appended since the last reset (context and generated)."""
        return self._remembered

    # -- starting over -----------------------------------------------------------------------
    @torch.inference_mode()
    def reset(self, frames: np.ndarray | None = None, *, actions: np.ndarray | None = None, seed: int | None = None) -> np.ndarray:
        """Forget everything and start from ``frames``; returns the current frame.

        ``frames``: None (the world's start frames when its bundle has them, else a
        mid-grey frame), one image (H, W, 3) of any size and
        aspect (scaled to cover and centre-cropped), a sequence (T, H, W, 3)
        shared by every batch element, or (B, T, H, W, 3). ``actions`` led to them
        (see the module docstring), None for no-ops. ``seed`` reseeds the noise
        generator (as ``gymnasium.Env.reset`` does); None continues its stream.
        """
        if seed is not None:
            self.generator.manual_seed(int(seed))
        # a fresh cache, not the old one marked empty: a ring reused from another slot sums
        # attention over its slots in another order, so the same seed would not give the
        # same frames bit for bit (gymnasium's check_env asks that of reset(seed=...))
        self.cache = self.backend.new_cache(self.batch_size, device=self.device)
        self._remembered = 0
        self.step_index = 0
        poses = None
        if frames is None and getattr(self.world, "start_frames", None) is not None:
            frames, actions = self.world.start_frames, self.world.start_actions
            poses = getattr(self.world, "start_poses", None)
        context = self._as_context(frames)
        self._observe(context, actions, poses=poses, start=True)
        # where ``step(restart=...)`` starts an element over: the last frame of this context
        self._restart_latent, self._restart_frame = self._latent, self._frame.copy()
        self._restart_action = self._context_actions(actions, context.shape[1])[:, -1]  # (B, A)
        return self.frame

    @torch.inference_mode()
    def observe(self, frames: np.ndarray, actions: np.ndarray | None = None) -> np.ndarray:
        """Remember real frames (the ones the player did see), as priming does: the
        teacher-forcing path of evaluation, or a player handing control back to a
        recording. Shapes as ``reset``'s (a 4-d array is a sequence, so a batched
        session takes one new frame per element as (B, 1, H, W, 3))."""
        if frames is None:
            raise SessionError("observe needs frames")
        self._observe(self._as_context(frames), actions)
        return self.frame

    # -- playing ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, action: np.ndarray, *, remember: bool = True, restart: np.ndarray | None = None) -> np.ndarray:
        """Generate the frame that ``action`` leads to; returns uint8 (H, W, 3) or (B, H, W, 3).

        ``remember=False`` generates without putting the frame into memory (the
        cache is untouched; the noise stream still advances): evaluation uses it to
        predict a frame and then ``observe`` the real one. Reward and termination
        are read when a frame is remembered.

        ``restart`` (B,) bool: those batch elements begin a new playthrough at this
        step (a vector env's autoreset): their memory is forgotten and the last frame
        of their context at ``reset`` is remembered in place of the frame generated
        for them (its action ignored), so every element still advances one frame per
        call: the memory rings of a batch move together, and only one frame a call can
        join them. The other elements play on as without it.
        """
        a = self._action_tensor(action, "step")  # (B, A) normalised
        rows = self._restart_rows(restart, remember)  # (k,) element indices
        noise = torch.randn(self._latent_shape, generator=self.generator, device=self.device)  # (B, C, h, w)
        latent = memory.generate(self.backend, self.sampler, noise, a, self.cache)  # (B, C, h, w)
        if len(rows):
            self.cache.reset(rows)  # those elements forget everything
            index = torch.from_numpy(rows).to(self.device)
            latent, a = latent.clone(), a.clone()  # never write into a backend's buffers
            latent[index] = self._restart_latent[index]
            a[index] = self._restart_action[index]
        if remember:
            self._remember(latent, a)
        self._latent = latent
        self._frame = self._decode(latent) if self.pixels else None
        if len(rows) and self._frame is not None:
            self._frame[rows] = self._restart_frame[rows]  # the frame as given, not decoded
        self.step_index += 1
        return self.frame if self.pixels else None

    def _restart_rows(self, restart: np.ndarray | None, remember: bool) -> np.ndarray:
        """``step``'s ``restart`` mask checked -> the indices of the elements to restart."""
        if restart is None:
            return np.zeros(0, np.int64)
        mask = np.asarray(restart)
        if mask.dtype != np.bool_ or mask.shape != (self.batch_size,):
            raise SessionError(f"restart must be a bool mask of shape ({self.batch_size},), got {mask.dtype} {mask.shape}")
        if mask.any() and not remember:
            raise SessionError("restart needs remember=True: a restarted element's start frame joins its memory")
        return np.flatnonzero(mask)

    def rollout(self, actions: np.ndarray) -> np.ndarray:
        """``step`` once per action: (T, A) -> (T, H, W, 3); batched sessions also take
        (B, T, A) and return (B, T, H, W, 3). Just a loop over ``step``."""
        arr = self.spec.validate(actions)
        if arr.ndim == 2:
            steps = list(arr)  # T x (A,): the same action for every batch element
        elif arr.ndim == 3 and self.batched:
            steps = list(arr.swapaxes(0, 1))  # T x (B, A)
        else:
            want = "(T, A) or (B, T, A)" if self.batched else "(T, A)"
            raise ActionError(f"rollout takes actions {want} with A = {self.spec.size}, got shape {arr.shape}")
        frames = [self.step(a) for a in steps]
        if not frames:
            return np.zeros((*((self.batch_size,) if self.batched else ()), 0, *self.resolution, 3), np.uint8)
        return np.stack(frames, axis=1 if self.batched else 0)

    # -- internals ----------------------------------------------------------------------------
    def _as_context(self, frames: np.ndarray | None) -> np.ndarray:
        """Whatever ``reset`` accepts -> uint8 (B, T, H, W, 3) at the world's resolution."""
        H, W = self.resolution
        B = self.batch_size
        if frames is None:
            return np.full((B, 1, H, W, 3), GREY, np.uint8)
        arr = np.asarray(frames)
        if arr.dtype != np.uint8:
            raise SessionError(f"frames must be uint8 RGB (0..255), got {arr.dtype}")
        if arr.ndim == 3 and arr.shape[-1] == 4:
            arr = arr[..., :3]  # an RGBA image: the world has no alpha
        if arr.ndim < 3 or arr.ndim > 5 or arr.shape[-1] != 3 or 0 in arr.shape:
            raise SessionError(
                f"frames must be an image (H, W, 3), a sequence (T, H, W, 3) or (B, T, H, W, 3); got shape {arr.shape}"
            )
        if arr.ndim == 3:
            arr = arr[None]  # (1, h, w, 3)
        if arr.ndim == 4:
            arr = arr[None]  # (1, T, h, w, 3)
        if arr.shape[0] not in (1, B):
            raise SessionError(f"frames hold {arr.shape[0]} contexts; this session has batch size {B}")
        if arr.shape[2:4] != (H, W):
            arr = np.stack([[fit_frame(f, (H, W)) for f in seq] for seq in arr])
        return np.broadcast_to(arr, (B, *arr.shape[1:]))  # (B, T, H, W, 3)

    def _action_tensor(self, action: np.ndarray, where: str) -> torch.Tensor:
        """(A,) or (B, A) in the ActionSpec's units -> (B, A) normalised float32 on the device."""
        try:
            arr = self.spec.validate(action)
        except ActionError as e:
            raise ActionError(f"{where}: {e}") from None
        B = self.batch_size
        if arr.ndim == 1:
            arr = arr[None]
        elif arr.ndim != 2 or (arr.shape[0] != B and not (self.batched and arr.shape[0] == 1)):
            want = f"({self.spec.size},) or ({B}, {self.spec.size})" if self.batched else f"({self.spec.size},)"
            raise ActionError(f"{where}: an action for this session has shape {want}, got {arr.shape}")
        a = torch.from_numpy(self.spec.normalize(arr)).to(self.device)  # (1 | B, A)
        return a.expand(B, -1)  # (B, A)

    def _context_actions(self, actions: np.ndarray | None, T: int) -> torch.Tensor:
        """The actions that led to T context frames -> (B, T, A) normalised."""
        B, A = self.batch_size, self.spec.size
        if actions is None:
            arr = np.broadcast_to(self.spec.noop(), (B, T, A))
        else:
            try:
                arr = self.spec.validate(actions)
            except ActionError as e:
                raise ActionError(f"context actions: {e}") from None
            if arr.ndim == 2:
                arr = arr[None]  # (1, T, A)
            if arr.ndim != 3 or arr.shape[1] != T or arr.shape[0] not in (1, B):
                raise ActionError(
                    f"context actions must be (T, A) or (B, T, A) with T = {T} frames, B = {B} and A = {A}, "
                    f"one action that led to each frame; got {arr.shape}"
                )
            arr = np.broadcast_to(arr, (B, T, A))
        return torch.from_numpy(self.spec.normalize(arr)).to(self.device)  # (B, T, A)

    def _observe(self, context: np.ndarray, actions: np.ndarray | None, *, poses: np.ndarray | None = None,
                 start: bool = False) -> None:
        """Encode real frames (B, T, H, W, 3) and remember each one. A world that carries a
        camera pose (``place``: the field world) is put where the last frame was seen: at
        ``poses[-1]`` (T, 4) when known, else where it finds that frame; ``start``: a reset."""
        B, T = context.shape[:2]
        a = self._context_actions(actions, T)  # (B, T, A)
        ae = self.autoencoder
        flat = context.reshape(B * T, *context.shape[2:])  # (B*T, H, W, 3)
        latents = torch.cat([
            # .copy(): a broadcast context is a read-only view, which torch will not wrap
            ae.normalize_latents(ae.encode(frames_to_tensor(flat[i : i + _ENCODE_CHUNK].copy()).to(self.device)))
            for i in range(0, B * T, _ENCODE_CHUNK)
        ])  # (B*T, C, h, w)
        latents = latents.reshape(B, T, *latents.shape[1:])  # (B, T, C, h, w)
        for t in range(T):
            self._remember(latents[:, t], a[:, t])
        self._latent = latents[:, -1]
        self._frame = np.ascontiguousarray(context[:, -1])  # (B, H, W, 3)
        place = getattr(self.dynamics, "place", None)
        if place is not None:
            known = None if poses is None else torch.as_tensor(np.asarray(poses, np.float32)[-1], device=self.device).expand(B, 4)
            place(self.cache, self._latent, known, start=start)

    def _remember(self, latent: torch.Tensor, action: torch.Tensor) -> None:
        """Append a finished latent (B, C, h, w) to memory at the preset's context level
        (``model.memory.remember``: its noise is one draw from the session's generator)."""
        _, out = memory.remember(self.backend, latent, self.sampler.context_level, action, self.cache, generator=self.generator)
        self._reward = out.reward.float().cpu().numpy()  # (B,)
        self._termination = torch.sigmoid(out.termination.float()).cpu().numpy()  # (B,)
        self._remembered += 1

    def _decode(self, latent: torch.Tensor) -> np.ndarray:
        """Normalised latents (B, C, h, w) -> uint8 frames (B, H, W, 3)."""
        return tensor_to_frames(self.backend.decode(latent))

    def __repr__(self) -> str:
        name = getattr(self.world, "name", "") or "world"
        p = self.sampler
        preset = f"{p.method}, {p.steps} step{'s' if p.steps > 1 else ''}" + (", distilled" if p.network == "distilled" else "")
        sampler = f"{self.sampler_name} ({preset})" if self.sampler_name else preset
        backend = getattr(self.backend, "name", type(self.backend).__name__)
        return (
            f"WorldSession({name!r}, {self.resolution[0]}x{self.resolution[1]}, batch {self.batch_size}, "
            f"sampler {sampler}, backend {backend}, step {self.step_index}, device {self.device})"
        )
