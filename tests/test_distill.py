"""The fast sampler's network: distillation objective, training stage, bundle, session."""

import json
import shutil

import numpy as np
import pytest
import torch

from neuralworld.actions import ActionSpec, Axis
from neuralworld.bundle import BundleError, build_networks, load_bundle, save_bundle
from neuralworld.model.config import preset
from neuralworld.model.objective import LatentClip, distill_loss, rollout_loss
from neuralworld.model.sampler import SAMPLERS
from neuralworld.session import SessionError, WorldSession, resolve_sampler

SPEC = ActionSpec(buttons=("forward", "attack"), axes=(Axis("turn", -10.0, 10.0, "deg/frame"),), fps=35.0)


def random_world(seed: int = 0):
    torch.manual_seed(seed)
    cfg = preset("tiny", spec=SPEC, resolution=(32, 32))
    ae, dyn = build_networks(cfg)
    with torch.no_grad():
        for p in dyn.parameters():  # a teacher whose every path matters, as after training
            p.add_(0.1 * torch.randn_like(p))
    return cfg, ae, dyn


def test_distillation_teaches_one_step_to_land_where_the_teacher_lands():
    cfg, _, teacher = random_world()
    teacher.eval()
    _, _, student = random_world()
    student.load_state_dict(teacher.state_dict())
    g = torch.Generator().manual_seed(0)
    C, (h, w) = teacher.latent_channels, teacher.latent_size
    batch = LatentClip(torch.randn(4, 3, C, h, w, generator=g), torch.randn(4, 3, SPEC.size, generator=g),
                       torch.zeros(4, 3), torch.zeros(4, 3))  # fmt: skip
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        torch.manual_seed(1)  # the same noise every step: the student must fit this one mapping
        loss, metrics = distill_loss(student, teacher, batch, teacher_sampler=SAMPLERS["quality"], student_steps=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(metrics["distill"])
    assert {"distill", "teacher_vs_real", "reward", "termination", "loss"} <= set(metrics)
    assert losses[0] > 0 and losses[-1] < 0.2 * losses[0], losses
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is never trained


def test_bundle_carries_the_student_and_fast_plays_it(tmp_path):
    cfg, ae, dyn = random_world()
    _, _, student = random_world(seed=1)
    path = save_bundle(tmp_path / "w", cfg, ae, dyn, distilled=student, distilled_steps=2)
    world = load_bundle(path)
    assert world.distilled is not None and world.distilled_steps == 2
    assert json.loads((path / "config.json").read_text())["distilled"] == {"sampler_steps": 2}
    for k, v in student.state_dict().items():
        torch.testing.assert_close(world.distilled.state_dict()[k], v)

    fast = world.start(None, sampler="fast", seed=0)
    assert fast.dynamics is world.distilled and fast.sampler.steps == 2 and fast.sampler.network == "distilled"
    slow = world.start(None, sampler="euler2", seed=0)
    assert slow.dynamics is world.dynamics
    a = SPEC.make(forward=1, turn=3)
    assert not np.array_equal(fast.step(a), slow.step(a))  # two networks, two frames

    # a world without a student plays "fast" as plain 2-step Euler, and says nothing is distilled
    bare = load_bundle(save_bundle(tmp_path / "bare", cfg, ae, dyn))
    assert bare.distilled is None and resolve_sampler("fast", bare) == SAMPLERS["euler2"]
    assert bare.start(None, sampler="fast").dynamics is bare.dynamics
    with pytest.raises(SessionError, match="distilled"):
        resolve_sampler(SAMPLERS["fast"], bare)
    with pytest.raises(BundleError, match="no distilled network"):
        bare.network("distilled")
    with pytest.raises(BundleError, match="distilled_steps"):
        save_bundle(tmp_path / "bad", cfg, ae, dyn, distilled=student)


def test_fast_student_on_onnx_runtime_plays_what_torch_plays(tmp_path):
    pytest.importorskip("onnxruntime")
    cfg, ae, dyn = random_world()
    _, _, student = random_world(seed=1)
    world = load_bundle(save_bundle(tmp_path / "w", cfg, ae, dyn, distilled=student, distilled_steps=1))
    ref = WorldSession(world, sampler="fast", seed=4, backend="torch")
    onnx = WorldSession(world, sampler="fast", seed=4, backend="onnx")
    for t in range(5):
        a = SPEC.make(forward=t % 2, turn=2.0 * t - 4)
        np.testing.assert_allclose(onnx.step(a).astype(int), ref.step(a).astype(int), atol=1)


def test_training_distils_and_a_distill_stage_alone_resumes_the_teacher(tiny_world_run, tmp_path):
    """The shared tiny run trained its student (conftest: 10 steps); distilling it again
    alone, longer, reads the teacher from its checkpoint and leaves it untouched."""
    from neuralworld.train import train, train_config

    data, run = tiny_world_run
    world = load_bundle(run / "world")
    assert world.distilled is not None and world.distilled_steps == 1
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    held = [x for x in lines if x["stage"] == "distill" and x["kind"] == "held_out"]
    assert held and {"student_vs_teacher_psnr", "undistilled_vs_teacher_psnr", "student_psnr", "teacher_psnr"} <= set(held[-1])

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg = train_config("tiny", stages=("distill",), clip_frames=4, precision="fp32", device="cpu", log_every=5,
                       distill_student_steps=2,
                       **{"autoencoder.steps": 20, "dynamics.steps": 20, "distill.steps": 14, "autoencoder.batch_size": 8,
                          "dynamics.batch_size": 4})  # fmt: skip
    shutil.rmtree(copy / "world")
    (copy / "distill.safetensors").unlink()  # distil afresh, for 2 calls this time
    train(data, copy, cfg, resume=True, progress=False)
    again = load_bundle(copy / "world")
    assert again.distilled_steps == 2
    for k, v in world.dynamics.state_dict().items():
        torch.testing.assert_close(again.dynamics.state_dict()[k], v)  # the teacher as it was
    assert any(not torch.equal(again.distilled.state_dict()[k], v) for k, v in world.distilled.state_dict().items())


def rollout_batch(T: int = 6, B: int = 3):
    g = torch.Generator().manual_seed(0)
    C, (h, w) = 8, (4, 4)
    return LatentClip(torch.randn(B, T, C, h, w, generator=g), torch.randn(B, T, SPEC.size, generator=g),
                      torch.zeros(B, T), torch.zeros(B, T))  # fmt: skip


def test_rollout_loss_teaches_from_the_students_own_frames():
    """The frames the student plays itself stand in for the recorded ones: changing the
    recorded frames there changes nothing, changing a recorded memory frame does; the teacher
    gets no gradient; a rollout that leaves no recorded memory is refused."""
    _, _, teacher = random_world()
    teacher.eval()
    _, _, student = random_world(seed=1)
    batch = rollout_batch()
    assert batch.latents.shape[2:] == (student.latent_channels, *student.latent_size)

    def loss_of(b):
        torch.manual_seed(3)  # the same rollout length and noise each time
        return rollout_loss(student, b, rollout=3, student_steps=1, context_level=0.02, teacher=teacher,
                            teacher_sampler=SAMPLERS["euler2"])

    loss, metrics = loss_of(batch)
    assert {"to_real", "to_teacher", "rolled", "reward", "termination", "loss"} <= set(metrics)
    r = int(metrics["rolled"])
    assert 1 <= r <= 3
    n_real = batch.latents.shape[1] - 1 - r
    played = LatentClip(batch.latents.clone(), batch.actions, batch.rewards, batch.terminated)
    played.latents[:, n_real:-1] += 5.0  # recorded frames the student replaces with its own
    assert loss_of(played)[1]["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
    remembered = LatentClip(batch.latents.clone(), batch.actions, batch.rewards, batch.terminated)
    remembered.latents[:, 0] += 5.0  # a recorded frame of its memory
    assert loss_of(remembered)[1]["loss"] != pytest.approx(metrics["loss"], rel=1e-3)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    with pytest.raises(ValueError, match="rollout"):
        rollout_loss(student, batch, rollout=5, student_steps=1, context_level=0.02)


def test_rollout_training_pulls_the_played_frame_to_the_record():
    _, _, student = random_world(seed=1)
    batch = rollout_batch()
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        torch.manual_seed(2)
        loss, metrics = rollout_loss(student, batch, rollout=3, student_steps=1, context_level=0.02)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(metrics["to_real"])
    assert "to_teacher" not in metrics
    assert losses[-1] < 0.3 * losses[0], losses


def test_a_rollout_stage_fine_tunes_the_distilled_student(tiny_world_run, tmp_path):
    """``--stage rollout`` on a trained run: the student changes, the teacher does not, the
    held-out open-loop PSNR is logged beside the student it started from; without a
    distilled student the stage is refused."""
    from neuralworld.train import TrainingError, train, train_config

    data, run = tiny_world_run
    world = load_bundle(run / "world")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "world")
    cfg = train_config("tiny", stages=("rollout",), clip_frames=4, precision="fp32", device="cpu", log_every=2,
                       validate_every=3, rollout_frames=2,
                       **{"autoencoder.steps": 20, "dynamics.steps": 20, "distill.steps": 10, "rollout.steps": 6,
                          "rollout.batch_size": 4, "autoencoder.batch_size": 8, "dynamics.batch_size": 4})  # fmt: skip
    train(data, copy, cfg, resume=True, progress=False)
    again = load_bundle(copy / "world")
    assert again.distilled is not None and again.distilled_steps == 1
    for k, v in world.dynamics.state_dict().items():
        torch.testing.assert_close(again.dynamics.state_dict()[k], v)
    assert any(not torch.equal(again.distilled.state_dict()[k], v) for k, v in world.distilled.state_dict().items())
    lines = [json.loads(x) for x in (copy / "metrics.jsonl").read_text().splitlines()]
    held = [x for x in lines if x["stage"] == "rollout" and x["kind"] == "held_out"]
    assert [x["step"] for x in held] == [3, 6]
    assert all(np.isfinite([x["open_loop_psnr_last"], x["start_psnr_last"]]).all() for x in held)
    assert json.loads((copy / "world" / "config.json").read_text())["training"]["steps"]["rollout"] == 6

    (copy / "distill.safetensors").unlink()
    with pytest.raises(TrainingError, match="distill stage before the rollout"):
        train(data, copy, cfg, resume=True, progress=False)
