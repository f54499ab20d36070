"""Fast unit tests of the pure model modules, on tiny tensors."""

from __future__ import annotations

import json

import pytest
import torch

from neuralworld.actions import ActionSpec, Axis
from neuralworld.model import (
    PRESETS,
    SAMPLERS,
    Autoencoder,
    AutoencoderConfig,
    ConfigError,
    Dynamics,
    DynamicsConfig,
    LatentClip,
    WorldConfig,
    autoencoder_loss,
    dynamics_loss,
    frames_to_tensor,
    preset,
    sample_euler,
    sample_heun,
    tensor_to_frames,
)
from neuralworld.model.dynamics import Block

SPEC = ActionSpec(buttons=("forward", "attack"), axes=(Axis("turn", -10.0, 10.0, "deg/frame"),), fps=35.0)
A = SPEC.size


def tiny_dynamics(
    full_frames: int = 2, memory_frames: int = 6, n_layers: int = 2, latent=(4, 4, 4), prev_frame: bool = True
) -> Dynamics:
    """A very small dynamics: 4x4x4 latent, patch 1 -> 16 tokens/frame, 4 pooled."""
    cfg = DynamicsConfig(
        d_model=32, n_layers=n_layers, n_heads=2, mlp_ratio=2.0, cond_dim=16, patch_size=1,
        full_frames=full_frames, memory_frames=memory_frames, memory_pool=2, prev_frame=prev_frame,
    )  # fmt: skip
    c, h, w = latent
    return Dynamics(cfg, latent_channels=c, latent_size=(h, w), action_size=A)


def randomize_zero_init(model: torch.nn.Module) -> torch.nn.Module:
    """Give the zero-initialised parameters (adaLN, output, biases) random values, so
    tests see a model whose every path matters, as after training."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def random_clip(B: int, T: int, model: Dynamics):
    c, (h, w) = model.latent_channels, model.latent_size
    x = torch.randn(B, T, c, h, w)
    t = torch.rand(B, T)
    a = torch.randn(B, T, A)
    return x, t, a


# ---------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------
def test_config_json_round_trip():
    cfg = preset("small", spec=SPEC)
    text = cfg.to_json()
    back = WorldConfig.from_json(text)
    assert back == cfg
    assert back.spec == SPEC and back.action_size == A
    assert isinstance(back.autoencoder.encoder_channels, tuple) and isinstance(back.resolution, tuple)
    json.loads(text)  # plain JSON, no tuples or objects


def test_config_unknown_key_is_an_error_and_missing_keys_default():
    d = preset("tiny", spec=SPEC).to_dict()
    d["dynamics"]["d_modle"] = 64
    with pytest.raises(ConfigError, match="d_modle"):
        WorldConfig.from_dict(d)
    d = preset("tiny", spec=SPEC).to_dict()
    d["colour"] = "red"
    with pytest.raises(ConfigError, match="colour"):
        WorldConfig.from_dict(d)
    # an old bundle without newer keys still loads, with defaults
    d = preset("tiny", spec=SPEC).to_dict()
    del d["dynamics"]["reward_weight"], d["autoencoder"]["latent_noise"], d["version"]
    cfg = WorldConfig.from_dict(d)
    assert cfg.dynamics.reward_weight == DynamicsConfig().reward_weight
    assert cfg.autoencoder.latent_noise == AutoencoderConfig().latent_noise
    assert cfg.dynamics.d_model == PRESETS["tiny"].dynamics.d_model


def test_config_validation():
    with pytest.raises(ConfigError, match="for_spec"):
        Dynamics.from_world(preset("tiny"))  # not bound to controls
    with pytest.raises(ConfigError, match="multiple"):
        preset("small", spec=SPEC, resolution=(120, 128)).validate()
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
    bad = preset("tiny", spec=SPEC)
    bad.dynamics.full_frames = 9
    with pytest.raises(ConfigError, match="full_frames"):
        bad.validate()


def count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_presets_build_with_sane_sizes():
    for name in ("tiny", "small"):
        cfg = preset(name, spec=SPEC).validate()
        ae, dyn = Autoencoder(cfg.autoencoder), Dynamics.from_world(cfg)
        if name == "small":
            assert 3e6 <= count(dyn) <= 8e6
            assert cfg.tokens_per_frame == 64 and cfg.dynamics.d_model == 256
            assert count(ae.decoder) < count(ae.encoder)
        if name == "tiny":
            assert count(dyn) < 2e6
    assert set(PRESETS) >= {"tiny", "small", "base"}
    PRESETS["base"].for_spec(SPEC).validate()


# ---------------------------------------------------------------------------
# autoencoder
# ---------------------------------------------------------------------------
def test_autoencoder_shapes_and_normalisation():
    torch.manual_seed(0)
    cfg = AutoencoderConfig(latent_channels=4, encoder_channels=(8, 8, 16, 16), decoder_channels=(16, 8, 8, 8))
    ae = Autoencoder(cfg)
    frames = torch.rand(2, 3, 32, 48) * 2 - 1
    z = ae.encode(frames)
    assert z.shape == (2, 4, 4, 6)
    assert ae.decode(z).shape == frames.shape
    ae.calibrate_latents(z)
    zn = ae.normalize_latents(z)
    assert torch.allclose(zn.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(zn.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-4)
    assert torch.allclose(ae.denormalize_latents(zn), z, atol=1e-5)
    assert "latent_scale" in ae.state_dict()


def test_uint8_frames_round_trip():
    frames = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8).numpy()
    x = frames_to_tensor(frames)
    assert x.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert (tensor_to_frames(x) == frames).all()


def test_autoencoder_loss_decreases():
    torch.manual_seed(0)
    cfg = AutoencoderConfig(latent_channels=4, encoder_channels=(8, 16, 16, 16), decoder_channels=(16, 16, 8, 8))
    ae = Autoencoder(cfg)
    # smooth-ish fixed images: blobs of colour
    frames = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4) * 2 - 1, size=(32, 32), mode="bilinear")
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, metrics = autoencoder_loss(ae, frames)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert set(metrics) >= {"l1", "gradient", "frequency", "latent_rms", "psnr"}
    assert sum(losses[-5:]) < 0.85 * sum(losses[:5])


# ---------------------------------------------------------------------------
# dynamics
# ---------------------------------------------------------------------------
def test_dynamics_shapes():
    torch.manual_seed(0)
    model = tiny_dynamics()
    x, t, a = random_clip(2, 5, model)
    out = model(x, t, a)
    assert out.velocity.shape == x.shape
    assert out.reward.shape == (2, 5) and out.termination.shape == (2, 5)
    # an untrained model predicts zero velocity (zero-initialised output layer)
    assert out.velocity.abs().max() == 0


def test_actions_start_as_loud_as_the_noise_level():
    """At init the action's share of the conditioning is of the noise level's order, so
    training can find the controls (two std-0.02 layers started it ~10x quieter, 0.11 of the
    level's spread here against 4.0 now, and the world ignored its controls)."""
    from neuralworld.model.dynamics import timestep_embedding

    torch.manual_seed(0)
    model = Dynamics(PRESETS["mini"].dynamics, latent_channels=8, latent_size=(8, 8), action_size=7)
    actions = torch.zeros(64, 7)
    actions[torch.arange(64), torch.randint(0, 7, (64,))] = torch.randint(0, 2, (64,)) * 2.0 - 1.0  # one control held
    levels = model.level_embed(timestep_embedding(torch.rand(64), 256))
    acts = model.action_embed(actions)
    change = (acts - model.action_embed(torch.zeros(1, 7))).norm(dim=-1).mean()
    assert change > 0.25 * (levels - levels.mean(0)).norm(dim=-1).mean()


def test_untrained_block_is_identity():
    torch.manual_seed(0)
    model = tiny_dynamics()
    block: Block = model.blocks[0]
    x = torch.randn(2, 3, model.tokens_per_frame, model.config.d_model)
    c = torch.randn(2, 3, model.config.cond_dim)
    bias = model._clip_bias(block.frame_bias, 3)
    y, _, _ = block(x, c, bias, model._clip_pool(3))
    assert torch.equal(y, x)


def test_frame_causality():
    torch.manual_seed(0)
    model = randomize_zero_init(tiny_dynamics(full_frames=2, memory_frames=4))
    x, t, a = random_clip(2, 7, model)
    ref = model(x, t, a)
    for j in (0, 3, 6):
        x2, t2, a2 = x.clone(), t.clone(), a.clone()
        x2[:, j] += 1.0
        t2[:, j] = 0.5 * t2[:, j]
        a2[:, j] += 1.0
        out = model(x2, t2, a2)
        assert torch.allclose(out.velocity[:, :j], ref.velocity[:, :j], atol=1e-6)
        assert torch.allclose(out.reward[:, :j], ref.reward[:, :j], atol=1e-6)
        assert not torch.allclose(out.velocity[:, j], ref.velocity[:, j])
    # a clip's prefix (here shorter than K, so no pooled keys at all) gives the same outputs
    short = model(x[:, :2], t[:, :2], a[:, :2])
    assert torch.allclose(short.velocity, ref.velocity[:, :2], atol=1e-6)
    # with one layer, memory is exactly M frames: a frame M or more back is never seen
    # (with L layers information can hop L * (M - 1) frames back, as in sliding-window attention);
    # frame stacking adds one frame: the oldest frame attended to carries its own previous frame
    for prev_frame in (False, True):
        one_layer = randomize_zero_init(tiny_dynamics(full_frames=2, memory_frames=4, n_layers=1, prev_frame=prev_frame))
        ref = one_layer(x, t, a)
        x2 = x.clone()
        x2[:, 0] += 1.0
        out = one_layer(x2, t, a)
        horizon = one_layer.config.memory_frames + int(prev_frame)
        assert torch.allclose(out.velocity[:, horizon:], ref.velocity[:, horizon:], atol=1e-6)
        assert not torch.allclose(out.velocity[:, horizon - 1], ref.velocity[:, horizon - 1])


@pytest.mark.parametrize("full_frames,memory_frames,prev_frame", [(2, 6, True), (1, 5, True), (3, 3, True), (2, 6, False)])
def test_kv_cached_steps_equal_full_recompute(full_frames, memory_frames, prev_frame):
    """40 frames, so both rings wrap several times and pooled memory is in use; with and
    without frame stacking (the cache's ``prev`` must be the clip's previous frame)."""
    torch.manual_seed(0)
    model = randomize_zero_init(tiny_dynamics(full_frames, memory_frames, prev_frame=prev_frame)).eval()
    B, T = 2, 40
    x, t, a = random_clip(B, T, model)
    with torch.no_grad():
        ref = model(x, t, a)
        cache = model.new_cache(B)
        for i in range(T):
            stepped = model.step(x[:, i], t[:, i], a[:, i], cache)
            # a step leaves the cache untouched: asking twice gives the same answer
            again = model.step(x[:, i], t[:, i], a[:, i], cache)
            appended = model.append(x[:, i], t[:, i], a[:, i], cache)
            for out in (stepped, again, appended):
                assert torch.allclose(out.velocity, ref.velocity[:, i], atol=1e-5), f"frame {i}"
                assert torch.allclose(out.reward, ref.reward[:, i], atol=1e-5)
                assert torch.allclose(out.termination, ref.termination[:, i], atol=1e-5)
    assert cache.frames_seen == T
    torch.testing.assert_close(cache.prev, x[:, -1])
    assert all(int(age.max(initial=0)) <= memory_frames for age in (cache.full_age.numpy(), cache.pooled_age.numpy()))


def test_cache_reset_starts_one_rollout_afresh():
    torch.manual_seed(0)
    model = randomize_zero_init(tiny_dynamics()).eval()
    x, t, a = random_clip(2, 12, model)
    with torch.no_grad():
        cache = model.new_cache(2)
        for i in range(7):
            model.append(x[:, i], t[:, i], a[:, i], cache)
        cache.reset(0)  # element 0 starts a new episode at frame 7
        fresh = model(x[:1, 7:], t[:1, 7:], a[:1, 7:])
        full = model(x[1:], t[1:], a[1:])
        for i in range(7, 12):
            out = model.append(x[:, i], t[:, i], a[:, i], cache)
            assert torch.allclose(out.velocity[0], fresh.velocity[0, i - 7], atol=1e-5)
            assert torch.allclose(out.velocity[1], full.velocity[0, i], atol=1e-5)


def test_objective_is_finite_and_reaches_every_parameter():
    torch.manual_seed(0)
    model = randomize_zero_init(tiny_dynamics(full_frames=2, memory_frames=4))
    x, _, a = random_clip(3, 6, model)
    batch = LatentClip(latents=x, actions=a, rewards=torch.randn(3, 6), terminated=torch.rand(3, 6) < 0.2)
    loss, metrics = dynamics_loss(model, batch)
    assert torch.isfinite(loss)
    assert {"loss", "flow", "reward", "termination"} <= set(metrics)
    assert any(k.startswith("flow_by_t/") for k in metrics)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reaches {missing}"


def test_objective_trains_from_zero_init():
    """From the real (zero) init, a few steps lower the flow loss."""
    torch.manual_seed(0)
    model = tiny_dynamics()
    x, _, a = random_clip(4, 4, model)
    x = x[:, :1].expand_as(x).contiguous()  # a static scene: learnable in a few steps
    batch = LatentClip(latents=x, actions=a)

    def fixed_loss() -> float:  # same noise levels and noise every time
        torch.manual_seed(123)
        with torch.no_grad():
            return dynamics_loss(model, batch)[0].item()

    before = fixed_loss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss, _ = dynamics_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss() < 0.95 * before


# ---------------------------------------------------------------------------
# samplers
# ---------------------------------------------------------------------------
def gaussian_velocity(mu: float, s: float):
    """Exact rectified-flow velocity when data ~ N(mu, s^2): E[eps - x0 | x_t]."""

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.view(-1, *([1] * (x.dim() - 1)))
        var = (1 - t) ** 2 * s**2 + t**2
        cov = t - (1 - t) * s**2
        return -mu + cov / var * (x - (1 - t) * mu)

    return v


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun])
def test_samplers_converge_on_a_gaussian(sampler):
    torch.manual_seed(0)
    mu, s = 2.0, 0.5
    noise = torch.randn(64, 3)
    exact = mu + s * noise  # the flow maps each noise draw to this point
    errors = [(sampler(gaussian_velocity(mu, s), noise, n) - exact).abs().max().item() for n in (2, 8, 32)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < (0.1 if sampler is sample_euler else 0.01)  # first vs second order


def test_heun_beats_euler_and_presets_work():
    torch.manual_seed(0)
    mu, s = -1.0, 0.3
    noise = torch.randn(16, 2)
    exact = mu + s * noise
    v = gaussian_velocity(mu, s)
    err_euler = (sample_euler(v, noise, 8) - exact).abs().max()
    err_heun = (sample_heun(v, noise, 8) - exact).abs().max()
    assert err_heun < err_euler
    for name in ("fast", "quality"):
        calls = []
        out = SAMPLERS[name](lambda x, t: calls.append(1) or v(x, t), noise)
        assert out.shape == noise.shape and len(calls) == SAMPLERS[name].calls
    assert SAMPLERS["fast"].calls <= 2


def test_sampler_drives_a_cached_rollout():
    """The documented rollout: context, then sample + append, with fixed shapes throughout."""
    torch.manual_seed(0)
    model = randomize_zero_init(tiny_dynamics()).eval()
    c, (h, w) = model.latent_channels, model.latent_size
    preset_ = SAMPLERS["fast"]
    with torch.no_grad():
        cache = model.new_cache(1)
        model.append(torch.randn(1, c, h, w), preset_.context_level, torch.zeros(1, A), cache)
        for _ in range(10):
            action = torch.randn(1, A)
            z = preset_(lambda x, t: model.step(x, t, action, cache).velocity, torch.randn(1, c, h, w))
            out = model.append(z, preset_.context_level, action, cache)
            assert z.shape == (1, c, h, w) and torch.isfinite(z).all() and out.reward.shape == (1,)
