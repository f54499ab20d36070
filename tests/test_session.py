"""WorldSession on a real (tiny, barely trained) world: starting points, batching,
action validation, determinism, rollout == repeated step, and the KV-cached
session against a full recompute of the clip."""

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("vizdoom")

import neuralworld  # noqa: E402
from neuralworld import ActionError  # noqa: E402
from neuralworld.data.store import Dataset  # noqa: E402
from neuralworld.model.autoencoder import frames_to_tensor, tensor_to_frames  # noqa: E402
from neuralworld.model.sampler import SamplerPreset  # noqa: E402
from neuralworld.session import GREY, SessionError, WorldSession, fit_frame  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tiny_world_run):
    return tiny_world_run


@pytest.fixture(scope="module")
def world(tiny):
    return neuralworld.load(tiny[1] / "world")


@pytest.fixture(scope="module")
def episode(tiny):
    return Dataset(tiny[0]).episode(0).load(("frames", "actions"))


def led_to(actions: np.ndarray, spec) -> np.ndarray:
    """Dataset actions (applied after each frame) -> the actions that led to each frame."""
    return np.concatenate([spec.noop()[None], actions[:-1]])


def randomized(world):
    """A copy whose zero-initialised layers are random, so memory and actions matter a lot
    (a barely trained adaLN-zero model is close to the identity and would hide mistakes)."""
    w = copy.deepcopy(world)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in w.dynamics.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return w


# ---------------------------------------------------------------------------
def test_public_face_and_start_from_frames(world, episode, tiny):
    spec = world.spec
    frames = episode["frames"][:6]
    s = world.start(frames, actions=led_to(episode["actions"][:6], spec), sampler="fast")
    assert isinstance(s, neuralworld.WorldSession) and not s.batched
    assert np.array_equal(s.frame, frames[-1])  # the current frame is the last context frame as given
    assert s.step_index == 0 and s.frames_in_memory == 6
    out = s.step(spec.make(forward=1))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert np.array_equal(out, s.frame) and s.step_index == 1 and s.frames_in_memory == 7
    assert isinstance(s.last_reward, float) and 0.0 <= s.last_termination <= 1.0
    assert s.latent.shape == (1, world.config.latent_channels, *world.config.latent_size)
    # a session of a loaded world; a path is refused with the way in (the session never loads bundles)
    s2 = WorldSession(neuralworld.load(tiny[1] / "world"), frames)
    assert s2.step(spec.noop()).shape == (32, 32, 3)
    assert s2.sampler == s.sampler and s2.backend.name == "eager"  # the session's defaults: fast, on the reference path
    with pytest.raises(SessionError, match=r"neuralworld\.load\("):
        WorldSession(str(tiny[1] / "world"), frames)


def test_start_from_any_image_or_nothing(world):
    # a wide 90x160 image: scaled to cover 32x32 (-> 32x57), centre cropped
    img = np.zeros((90, 160, 3), np.uint8)
    img[:, :20] = (255, 0, 0)  # a red band on the left is cropped away
    img[:, 40:120] = (0, 200, 0)
    s = world.start(img, sampler="fast")
    assert s.frame.shape == (32, 32, 3)
    assert np.all(s.frame[:, 8:24] == (0, 200, 0)) and s.frame[..., 0].max() < 255
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    assert np.array_equal(world.start(rgba, sampler="fast").frame, s.frame)
    assert fit_frame(img, (32, 32)).shape == (32, 32, 3)
    # nothing given: the world's start frames (real frames saved in its bundle) ...
    assert world.start_frames is not None and world.start_frames.shape[1:] == (32, 32, 3)
    begun = world.start(None, sampler="fast")
    assert np.array_equal(begun.frame, world.start_frames[-1]) and begun.frames_in_memory == len(world.start_frames)
    # ... or mid-grey for a world without them
    bare = copy.copy(world)
    bare.start_frames = bare.start_actions = None
    grey = bare.start(None, sampler="fast")
    assert np.all(grey.frame == GREY) and grey.step(world.spec.noop()).shape == (32, 32, 3)
    for bad in (np.zeros((8, 8), np.uint8), np.zeros((4, 32, 32, 3), np.float32), np.zeros((1, 2, 3, 32, 32, 3), np.uint8)):
        with pytest.raises(SessionError, match="frames"):
            world.start(bad)


def test_batched_session(world, episode):
    spec = world.spec
    ctx = np.stack([episode["frames"][:4], episode["frames"][10:14], episode["frames"][20:24]])  # (3, 4, H, W, 3)
    s = world.start(ctx, sampler="fast")
    assert s.batched and s.batch_size == 3 and s.frame.shape == (3, 32, 32, 3)
    out = s.step(np.stack([spec.make(forward=1), spec.make(turn=5.0), spec.noop()]))  # (B, A)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    assert s.step(spec.noop()).shape == (3, 32, 32, 3)  # one action for all
    assert s.last_reward.shape == (3,) and s.last_termination.shape == (3,)
    # one shared context broadcast to a batch
    shared = world.start(episode["frames"][:4], batch_size=2, sampler="fast")
    assert shared.batched and shared.step(spec.noop()).shape == (2, 32, 32, 3)
    with pytest.raises(SessionError, match="batch_size"):
        world.start(ctx, batch_size=2)


def test_step_validates_actions(world, episode):
    spec = world.spec
    s = world.start(episode["frames"][:3], sampler="fast")
    with pytest.raises(ActionError, match=r"step: actions must have shape \(\.\.\., 7\)"):
        s.step(np.zeros(5, np.float32))
    with pytest.raises(ActionError, match=r"shape \(7,\), got \(2, 7\)"):
        s.step(np.zeros((2, 7), np.float32))
    with pytest.raises(ActionError, match="turn"):
        s.step(spec.noop() + np.array([0, 0, 0, 0, 0, 0, 1000], np.float32))
    with pytest.raises(ActionError, match="buttons are 0 or 1"):
        s.step(np.full(7, 0.5, np.float32))
    b = world.start(episode["frames"][:3], batch_size=3, sampler="fast")
    with pytest.raises(ActionError, match=r"\(3, 7\), got \(2, 7\)"):
        b.step(np.zeros((2, 7), np.float32))
    with pytest.raises(ActionError, match="context actions"):
        world.start(episode["frames"][:3], actions=np.zeros((2, 7), np.float32))
    assert s.step_index == 0  # nothing was generated by the refused calls


def test_same_seed_same_frames_and_reset(world, episode):
    w = randomized(world)
    acts = episode["actions"][4:10]
    runs = [w.start(episode["frames"][:4], sampler="fast", seed=seed).rollout(acts) for seed in (3, 3, 4)]
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    s = w.start(episode["frames"][:4], sampler="fast", seed=3)
    s.rollout(acts)
    s.reset(episode["frames"][:4], seed=3)  # reseeding reproduces the rollout
    assert s.step_index == 0 and np.array_equal(s.rollout(acts), runs[0])
    s.reset()  # no frames: back to the world's start frames
    assert np.array_equal(s.frame, w.start_frames[-1]) and s.frames_in_memory == len(w.start_frames)


def test_rollout_is_repeated_step(world, episode):
    w = randomized(world)
    acts = episode["actions"][:5]
    a = w.start(episode["frames"][:3], sampler="fast", seed=1)
    b = w.start(episode["frames"][:3], sampler="fast", seed=1)
    rolled = a.rollout(acts)
    stepped = np.stack([b.step(x) for x in acts])
    assert rolled.shape == (5, 32, 32, 3) and np.array_equal(rolled, stepped)
    assert a.step_index == b.step_index == 5 and a.last_reward == b.last_reward
    # batched: (B, T, A) -> (B, T, H, W, 3)
    c = w.start(episode["frames"][:3], batch_size=2, sampler="fast", seed=1)
    d = w.start(episode["frames"][:3], batch_size=2, sampler="fast", seed=1)
    both = np.stack([acts, acts[::-1]])  # (2, 5, A)
    assert np.array_equal(c.rollout(both), np.stack([d.step(both[:, t]) for t in range(5)], axis=1))


def test_kv_cached_session_equals_full_recompute(world, episode):
    """The session's first two generated frames equal sampling against Dynamics.forward
    over the whole clip (context + new frame), with the same noise. 10 context frames
    wrap the tiny preset's rings (K = 2, M = 8), so full and pooled memory are both used."""
    w = randomized(world)
    spec, ae, dyn = w.spec, w.autoencoder, w.dynamics
    T, level, seed = 10, 0.05, 7
    preset = SamplerPreset("heun", steps=3, context_level=level)
    ctx = episode["frames"][:T]
    ctx_led_to = led_to(episode["actions"][: T + 2], spec)  # led to frames 0..T+1
    s = w.start(ctx, actions=ctx_led_to[:T], sampler=preset, seed=seed, backend="eager")
    got_frames = [s.step(ctx_led_to[T]), None]
    got_latents = [s.latent.clone(), None]
    got_frames[1] = s.step(ctx_led_to[T + 1])
    got_latents[1] = s.latent.clone()

    # the reference: no cache, the whole clip through forward at every sampler call,
    # the noise drawn in the order the session documents
    g = torch.Generator().manual_seed(seed)
    shape = (1, w.config.latent_channels, *w.config.latent_size)
    with torch.no_grad():
        z = ae.normalize_latents(ae.encode(frames_to_tensor(ctx)))  # (T, C, h, w)
        memory = [(1 - level) * z[t : t + 1] + level * torch.randn(shape, generator=g) for t in range(T)]
        acts = torch.from_numpy(spec.normalize(ctx_led_to))[None]  # (1, T+2, A)
        for k in range(2):
            past = torch.stack(memory, 1)  # (1, T+k, C, h, w)
            n = past.shape[1]

            def denoise(x, t):
                clip = torch.cat([past, x[:, None]], 1)  # (1, n+1, C, h, w)
                levels = torch.cat([torch.full((1, n), level), t[:, None]], 1)  # (1, n+1)
                return dyn(clip, levels, acts[:, : n + 1]).velocity[:, -1]

            ref = preset(denoise, torch.randn(shape, generator=g))
            assert torch.allclose(got_latents[k], ref, atol=1e-4, rtol=1e-4), f"frame {k}: {(got_latents[k] - ref).abs().max()}"
            ref_frame = tensor_to_frames(ae.decode(ae.denormalize_latents(ref)))[0]
            assert np.abs(got_frames[k].astype(int) - ref_frame.astype(int)).max() <= 1
            memory.append((1 - level) * ref + level * torch.randn(shape, generator=g))

    # the check has teeth: another memory (the same frames mirrored) moves the frame
    # by far more than the tolerance (measured: ~0.1 against errors of ~1e-6)
    other = w.start(ctx[:, :, ::-1], actions=ctx_led_to[:T], sampler=preset, seed=seed, backend="eager")
    other.step(ctx_led_to[T])
    assert (other.latent - got_latents[0]).abs().max() > 1e-2


def test_compiled_backend_matches_eager(world, episode):
    # the torch.compile path runs the pure step and writes the rings with DynamicsCache.push
    acts = episode["actions"][4:14]  # 10 steps: the tiny world's rings (K=2, M=8) wrap
    eager = world.start(episode["frames"][:4], sampler="fast", seed=5, backend="eager").rollout(acts)
    compiled = world.start(episode["frames"][:4], sampler="fast", seed=5, backend="compiled").rollout(acts)
    assert np.abs(eager.astype(int) - compiled.astype(int)).max() <= 1
