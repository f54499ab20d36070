"""The warp-and-paint world's pieces with tiny tensors: the warp, the memory, the objective."""

import numpy as np
import torch

from neuralworld.actions import ActionSpec
from neuralworld.model.warp import (
    PatchDiscriminator, WarpBatch, WarpNet, backward_warp, fit_action_flow, quantize, warp_discriminator_loss, warp_generator_loss,
    warp_preset,
)  # fmt: skip

SPEC = ActionSpec(buttons=("forward",), axes=(), fps=10)


def tiny(**overrides):
    cfg = warp_preset("tiny", SPEC, (32, 32))
    for k, v in overrides.items():
        setattr(cfg.dynamics, k, v)
    torch.manual_seed(0)
    return cfg.validate(), WarpNet.from_world(cfg.validate())


def test_backward_warp_moves_pixels_by_the_flow():
    frame = torch.rand(1, 3, 8, 8)
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0] = 2.0  # every pixel comes from two to its right
    out = backward_warp(frame, flow)
    assert torch.allclose(out[..., :6], frame[..., 2:], atol=1e-6)
    assert torch.allclose(backward_warp(frame, torch.zeros_like(flow)), frame, atol=1e-6)


def test_an_untrained_world_starts_as_copy_last_and_quantises_its_memory():
    cfg, net = tiny()
    M = cfg.dynamics.window
    frames = quantize(torch.rand(2, M, 3, 32, 32) * 2 - 1)
    out = net(frames, torch.zeros(2, cfg.dynamics.action_frames, SPEC.size), torch.randn(2, 3, 32, 32))
    assert (out["frame"] - frames[:, -1]).abs().mean() < 0.1  # the mask starts near 1: not grey
    cache = net.new_cache(2)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    net.append(x, 0.0, torch.ones(2, SPEC.size), cache)
    assert torch.all(cache.frames == quantize(x)[:, None])  # the first frame fills every slot ...
    assert cache.valid.tolist() == [[False] * (M - 1) + [True]] * 2  # ... but only one was appended
    assert torch.equal(quantize(quantize(x)), quantize(x)) and len(torch.unique(quantize(x) * 127.5)) <= 256


def batch(cfg, unroll, B=2):
    M = cfg.dynamics.window
    g = torch.Generator().manual_seed(1)
    return WarpBatch(
        frames=torch.rand(B, M + unroll, 3, 32, 32, generator=g) * 2 - 1,
        actions=torch.rand(B, M + unroll, SPEC.size, generator=g),
        rewards=torch.zeros(B, unroll), terminated=torch.zeros(B, unroll), flow=torch.zeros(B, 2, 32, 32),
    )


def test_the_generator_loss_trains_the_generator_and_not_the_critic():
    cfg, net = tiny()
    critic = PatchDiscriminator(cfg.dynamics, SPEC.size)
    critic.requires_grad_(False)  # as train/warp.py holds it during the generator's loss
    loss, fakes, logs, _ = warp_generator_loss(net, critic, batch(cfg, 3), unroll=3, adv_weight=0.1)
    loss.backward()
    critic.requires_grad_(True)
    assert all(p.grad is None for p in critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert {"l1_0", "l1_2", "g_adv_2", "flow_l1"} <= set(logs) and len(fakes) == 3
    d_loss, d_logs = warp_discriminator_loss(critic, fakes)
    d_loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())
    assert np.isfinite(d_logs["d_real"]) and np.isfinite(d_logs["d_fake"])


def test_played_frames_are_pulled_to_the_record_only_through_their_average():
    """A played frame whose 4x4 averages match the record costs no L1, however its detail differs;
    with rollout_lowpass=1 the same detail costs its full size."""
    def l1_of_second_frame(lowpass, b):
        cfg, net = tiny(rollout_lowpass=lowpass, adv_weight=0.0, flow_weight=0.0, context_noise_max=0.0)
        _, fakes, logs, _ = warp_generator_loss(net, None, b, unroll=2, adv_weight=0.0, generator=torch.Generator().manual_seed(5))
        return logs["l1_1"], fakes[1][1]

    cfg, _ = tiny()
    b = batch(cfg, 2)
    _, played = l1_of_second_frame(4, b)
    detail = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(16, 16) * 0.25  # (32, 32), zero over every 4x4 block
    frames = b.frames.clone()
    frames[:, -1] = played + detail
    b2 = WarpBatch(frames, b.actions, b.rewards, b.terminated, b.flow)
    low, _ = l1_of_second_frame(4, b2)
    full, _ = l1_of_second_frame(1, b2)
    assert low < 1e-5 and abs(full - 0.25) < 1e-4


def test_a_played_sample_goes_on_from_its_own_memory_without_the_flow_target():
    """A stream's sample (played=True) starts from the memory it hands in, not the recorded frames;
    its first frame is pulled to the record only through the low-pass and has no flow target; the
    memory handed back is the one it ends with (its last frame the one it played last)."""
    cfg, net = tiny(adv_weight=0.0, context_noise_max=0.0)
    b = batch(cfg, 2)
    own = quantize(torch.rand(b.frames[:, : cfg.dynamics.window].shape, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    b.memory, b.played = own, torch.tensor([True, False])
    _, fakes, logs, end = warp_generator_loss(net, None, b, unroll=2, adv_weight=0.0)
    assert torch.equal(fakes[0][0][0], own[0, -1]) and torch.equal(fakes[0][0][1], quantize(b.frames[1, cfg.dynamics.window - 1]))
    assert torch.equal(end[:, -1], quantize(fakes[1][1])) and torch.equal(end[:, -2], quantize(fakes[0][1]))
    assert logs["played_fraction"] == 0.5
    b.played = torch.tensor([True, True])
    b.flow = torch.full_like(b.flow, 5.0)  # a flow target far from anything: it must cost nothing now
    _, _, logs, _ = warp_generator_loss(net, None, b, unroll=1, adv_weight=0.0)
    assert logs["flow_l1"] == 0.0


def test_the_action_flow_is_fitted_from_flows_and_moves_the_picture_before_any_training():
    """With action_flow, least squares on (actions, optical flows) finds the flow each action
    makes; an untrained network then warps the last frame by it (a held turn slides the picture)."""
    cfg, net = tiny(action_flow=True, integer_warp=False)
    k, A = cfg.dynamics.action_frames, SPEC.size
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(512, k, A, generator=g)
    per_unit = torch.zeros(2, 32, 32)
    per_unit[0] = 3.0  # the newest action's first component slides everything 3 px to the left
    flows = acts[:, -1, 0, None, None, None] * per_unit + 0.01 * torch.randn(512, 2, 32, 32, generator=g)
    explained = fit_action_flow(net, acts, flows)
    assert explained > 0.99
    one = torch.zeros(1, k, A)
    one[:, -1, 0] = 1.0
    assert torch.allclose(net.ego_flow(one), per_unit[None], atol=0.05)
    frames = quantize(torch.rand(1, cfg.dynamics.window, 3, 32, 32, generator=g) * 2 - 1)
    out = net(frames, one, torch.zeros(1, 3, 32, 32))
    assert torch.allclose(out["warped"], backward_warp(frames[:, -1], net.ego_flow(one)), atol=1e-5)
    assert "action_flow" in net.state_dict()  # it travels in the bundle


def test_an_integer_warp_moves_whole_pixels_with_straight_through_gradients():
    """integer_warp: the warped frame is the last frame moved by floor(flow + u), exact pixels (no
    resampling blur), with u from the noise; under autograd the flow still gets the bilinear warp's
    gradient. flow_resolution: the flow is constant over blocks where the network makes it so."""
    cfg, net = tiny(integer_warp=True, flow_resolution=4)
    M = cfg.dynamics.window
    g = torch.Generator().manual_seed(0)
    frames = quantize(torch.rand(2, M, 3, 32, 32, generator=g) * 2 - 1)
    with torch.no_grad():
        net.out.bias[0] = 2.3 * cfg.dynamics.max_flow / 16.0  # a flow of ~0.29 px to the right everywhere (tanh of bias)
    noise = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        out = net(frames, torch.zeros(2, cfg.dynamics.action_frames, SPEC.size), noise)
    flow = out["flow"]
    assert torch.allclose(flow, flow[:, :, :1, :1].expand_as(flow), atol=1e-5)  # one flow for the frame here
    u = 0.5 * (1 + torch.erf(noise[:, 0, 0, 0] / 2 ** 0.5))
    whole = torch.floor(flow[:, 0, 0, 0] + u)  # 0 or 1 per element, never a fraction
    for b in range(2):
        shifted = frames[b, -1, :, :, int(whole[b]):]
        assert torch.equal(out["warped"][b, :, :, : shifted.shape[-1]], shifted)  # exact pixels moved
    frames.requires_grad_(False)
    net.out.bias.grad = None
    out = net(frames, torch.zeros(2, cfg.dynamics.action_frames, SPEC.size), noise)
    out["warped"].sum().backward()
    assert net.out.bias.grad[0].abs() > 0  # the flow learns through the straight-through warp


def test_a_geometry_world_moves_the_picture_as_its_depth_and_camera_move_say_and_learns_both():
    """geometry_flow: untrained it is copy-last (no move); its flow is the reprojection of the depth
    it predicts by the move it predicts; the objective pulls both to the record's."""
    from neuralworld.model.warp import reprojection_flow

    cfg, net = tiny(geometry_flow=True, residual_flow=0.01)
    M, k = cfg.dynamics.window, cfg.dynamics.action_frames
    frames = quantize(torch.rand(2, M, 3, 32, 32) * 2 - 1)
    out = net(frames, torch.zeros(2, k, SPEC.size), torch.randn(2, 3, 32, 32))
    assert torch.all(out["move"] == 0) and out["depth"].shape == (2, 1, 32, 32)
    assert out["flow"].abs().max() < 0.05 and (out["frame"] - frames[:, -1]).abs().mean() < 0.1
    with torch.no_grad():
        net.pose_head[-1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0]))  # a 10-degree turn to the left
    out = net(frames, torch.zeros(2, k, SPEC.size), torch.randn(2, 3, 32, 32))
    d = cfg.dynamics
    want = reprojection_flow(out["depth"], out["move"], hfov_deg=d.camera_hfov, aspect=d.camera_aspect, depth_unit=d.depth_unit)
    assert (out["flow"] - want).abs().max() < 0.05 and want[:, 0].mean() < -2  # a left turn: pixels came from the left
    b = batch(cfg, 1)
    b.depth, b.move = torch.full((2, 1, 1, 32, 32), 0.2), torch.tensor([[[0.5, 0.0, 0.0, -1.0]]] * 2)
    _, net = tiny(geometry_flow=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = None
    for _ in range(30):
        loss, _, logs, _ = warp_generator_loss(net, None, b, unroll=1, adv_weight=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        before = before or (logs["depth_l1_0"], logs["move_l1_0"])
    assert logs["depth_l1_0"] < before[0] / 2 and logs["move_l1_0"] < before[1] / 2


def test_what_is_drawn_over_the_view_stays_put_and_the_scene_is_never_warped_from_it():
    """overlay: the overlay's pixels keep the last frame's (zero flow, whatever the network says),
    and a scene pixel whose flow samples the overlay is paint (mask 0), not the weapon dragged."""
    from neuralworld.model.warp import overlay_from_depth

    depth = np.full((10, 32, 32), 50, np.uint8)
    depth[:, 24:, 12:20] = 0  # the weapon, always
    depth[:3, :4, :4] = 0  # a dark corner, now and then
    over = overlay_from_depth([depth[:6], depth[6:]])
    assert over.shape == (1, 1, 32, 32) and over[0, 0, 24:, 12:20].eq(1).all() and over.sum() == 8 * 8
    cfg, net = tiny(overlay=True, action_flow=False, integer_warp=False, flow_resolution=1)
    with torch.no_grad():
        net.overlay.copy_(over)
        net.out.bias[1] = 0.5 * cfg.dynamics.max_flow  # every pixel comes from further down (3.7 px at 32 wide)
    M, k = cfg.dynamics.window, cfg.dynamics.action_frames
    frames = quantize(torch.rand(1, M, 3, 32, 32) * 2 - 1)
    out = net(frames, torch.zeros(1, k, SPEC.size), torch.randn(1, 3, 32, 32))
    assert out["flow"][0, :, 24:, 12:20].abs().max() == 0  # the weapon does not move ...
    assert torch.allclose(out["warped"][0, :, 24:, 12:20], frames[0, -1, :, 24:, 12:20], atol=1e-5)
    assert out["flow"][0, 1, :16].mean() > 3  # ... the scene does
    above = out["inside"][0, 0, 21:24, 13:19]  # sampled 3.7 px below: from the weapon
    assert above.eq(0).all() and out["mask"][0, 0, 21:24, 13:19].eq(0).all()
    assert out["inside"][0, 0, :8].eq(1).all() and out["inside"][0, 0, 24:, 12:20].eq(1).all()
