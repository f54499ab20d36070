"""The training loop run for real: CLI smoke, exact resume after kill -9, NaN stop,
mismatches, damaged checkpoints and bundles, and torchrun with 2 processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("vizdoom")

from neuralworld.bundle import BundleError, load_bundle  # noqa: E402
from neuralworld.record.doom import RecordConfig, record  # noqa: E402
from neuralworld.state_io import load_tensors  # noqa: E402
from neuralworld.train import TrainingError, train, train_config, weights_sha256  # noqa: E402

BIN = Path(sys.executable).parent
CLI = str(BIN / "neuralworld")
FAST = ["--autoencoder-batch", "8", "--dynamics-batch", "4", "--distill-steps", "2", "--clip-frames", "4", "--precision", "fp32", "--quiet"]


@pytest.fixture(scope="module")
def data32(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "d32"
    record(RecordConfig(env="doom/freedoom_map01", episodes=3, workers=2, resolution=(32, 32), max_steps=40), out, progress=False)
    return out


def cli(*args, check=True, env=None):
    p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=600, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"neuralworld {args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def weights(run):
    tensors, _ = load_tensors(Path(run) / "world" / "model.safetensors")
    return tensors


def test_train_smoke_makes_a_loadable_world(tmp_path, data32):
    run = tmp_path / "run"
    p = cli("train", data32, "--out", run, "--autoencoder-steps", 12, "--dynamics-steps", 12, "--validate-every", 6, "--log-every", 3, *FAST)
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["bundle"] == str(run / "world")
    world = load_bundle(run / "world")
    assert world.resolution == (32, 32) and world.spec.size == 7
    # the bundle carries where a session starts: the first frames of a training episode
    from neuralworld.data.store import Dataset

    ds = Dataset(data32)
    first = [ds.episode(i)["frames"][: len(world.start_frames)] for i in range(ds.num_episodes)]
    assert any(np.array_equal(world.start_frames, f) for f in first)
    assert world.start_actions.shape == (len(world.start_frames), 7) and not world.start_actions[0].any()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {(x["stage"], x["kind"]) for x in lines} >= {("autoencoder", "train"), ("autoencoder", "held_out"), ("dynamics", "train"), ("dynamics", "held_out")}
    assert all(np.isfinite(x["loss"]) for x in lines if "loss" in x)
    # held-out: the generated next frame beside copy-last, and what the right actions gain over another clip's
    held = [x for x in lines if (x["stage"], x["kind"]) == ("dynamics", "held_out")]
    assert all(np.isfinite([x["next_frame_psnr"], x["copy_last_psnr"], x["action_gain_db"]]).all() for x in held)
    assert any(x.get("samples_per_s", 0) > 0 for x in lines)
    assert list((run / "tb").glob("events.out.tfevents.*"))
    # a second train into the same folder without --resume is refused, nothing touched
    before = (run / "world" / "model.safetensors").read_bytes()
    p = cli("train", data32, "--out", run, *FAST, check=False)
    assert p.returncode == 2 and "--resume" in p.stderr
    assert (run / "world" / "model.safetensors").read_bytes() == before


def train_until_killed(data, run, args, ckpt):
    """``neuralworld train`` into ``run``, killed with SIGKILL (its whole process group) as soon as
    ``ckpt`` exists; returns that checkpoint's (tensors, meta)."""
    proc = subprocess.Popen([CLI, "train", str(data), "--out", str(run), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while not ckpt.exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() - t0 < 300
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return load_tensors(ckpt)


def test_kill_9_then_resume_is_exact(tmp_path, data32):
    args = ["--autoencoder-steps", 4, "--dynamics-steps", 24, "--checkpoint-every", 3, "--validate-every", 100, *FAST]
    cli("train", data32, "--out", tmp_path / "straight", *args)

    run = tmp_path / "killed"
    ckpt = run / "dynamics.safetensors"
    _, meta = train_until_killed(data32, run, args, ckpt)  # the checkpoint the kill left is whole
    assert 3 <= meta["step"] < 24
    cli("train", data32, "--out", run, "--resume", *args)

    a, b = weights(tmp_path / "straight"), weights(run)
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, f"resumed run differs from the uninterrupted one by {worst}"


def test_nan_loss_stops_with_last_checkpoint_intact(tmp_path, data32, monkeypatch):
    import neuralworld.train.stages as tr  # where the dynamics stage finds its loss

    real = tr.dynamics_loss
    calls = {"n": 0}

    def poisoned(model, batch):
        loss, metrics = real(model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 5 else loss), metrics

    monkeypatch.setattr(tr, "dynamics_loss", poisoned)
    cfg = train_config("tiny", precision="fp32", checkpoint_every=2, validate_every=100, clip_frames=4,
                       **{"autoencoder.steps": 2, "dynamics.steps": 20, "autoencoder.batch_size": 4, "dynamics.batch_size": 2})
    with pytest.raises(TrainingError, match=r"NaN/inf at step 5.*last good checkpoint .*intact"):
        train(data32, tmp_path / "run", cfg, progress=False)
    _, meta = load_tensors(tmp_path / "run" / "dynamics.safetensors")
    assert meta["step"] == 4
    assert not (tmp_path / "run" / "world").exists()


def test_resume_refuses_other_data_and_damaged_checkpoint(tmp_path, data32):
    run = tmp_path / "run"
    cli("train", data32, "--out", run, "--autoencoder-steps", 2, "--dynamics-steps", 2, *FAST)
    other = tmp_path / "d64"
    record(RecordConfig(env="doom/basic", episodes=1, workers=1, resolution=(64, 64), max_steps=12), other, progress=False)
    p = cli("train", other, "--out", run, "--resume", *FAST, check=False)
    assert p.returncode == 2 and "resolution [64, 64] differs from the run's [32, 32]" in p.stderr

    ckpt = run / "dynamics.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    p = cli("train", data32, "--out", run, "--resume", "--autoencoder-steps", 2, "--dynamics-steps", 4, *FAST, check=False)
    assert p.returncode == 2 and "dynamics.safetensors is truncated" in p.stderr and "Traceback" not in p.stderr

    p = cli("train", tmp_path / "nothing", "--out", tmp_path / "r2", *FAST, check=False)
    assert p.returncode == 2 and "no such dataset" in p.stderr


def test_damaged_bundles_are_refused(tmp_path):
    from neuralworld.actions import ActionSpec
    from neuralworld.bundle import build_networks, save_bundle
    from neuralworld.model.config import preset

    cfg = preset("tiny", spec=ActionSpec(buttons=("forward",), fps=10), resolution=(32, 32))
    ae, dyn = build_networks(cfg)
    start = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    path = save_bundle(tmp_path / "w", cfg, ae, dyn, start_frames=start, start_actions=np.ones((3, 1)))
    loaded = load_bundle(path)
    assert loaded.spec.buttons == ("forward",) and np.array_equal(loaded.start_frames, start)
    with pytest.raises(BundleError, match="start frames must be uint8"):
        save_bundle(tmp_path / "w2", cfg, ae, dyn, start_frames=start[:, :16])

    weights_file = path / "model.safetensors"
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[:-8] + b"\x01" * 8)
    with pytest.raises(BundleError, match="SHA-256"):
        load_bundle(path)
    weights_file.write_bytes(data[: len(data) // 3])
    with pytest.raises(BundleError, match="SHA-256|truncated"):
        load_bundle(path)
    weights_file.write_bytes(data)
    meta = json.loads((path / "config.json").read_text())
    meta["world"]["dynamics"]["d_model"] = 64  # the config no longer fits the weights
    meta["weights_sha256"] = meta["weights_sha256"]
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="shape"):
        load_bundle(path)
    (path / "config.json").write_text("{oops")
    with pytest.raises(BundleError, match="damaged"):
        load_bundle(path)
    (path / "config.json").unlink()
    with pytest.raises(BundleError, match="not a neuralworld world"):
        load_bundle(path)
    with pytest.raises(BundleError, match="no such world"):
        load_bundle(tmp_path / "nowhere")


def torchrun_two(data, out, args):
    """``neuralworld train`` as 2 processes under the real launcher (one thread each); returns their env."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "neuralworld", "train", str(data),
         "--out", str(out), *map(str, args)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    return env


def test_torchrun_two_processes_match_one(tmp_path, data32):
    args = ["--autoencoder-steps", 3, "--dynamics-steps", 3, "--distill-steps", 3, "--checkpoint-every", 100, "--validate-every", 100, "--log-every", 1,
            "--autoencoder-batch", 8, "--dynamics-batch", 4, "--clip-frames", 4, "--precision", "fp32", "--quiet"]
    env = torchrun_two(data32, tmp_path / "ddp", args)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_identical"] is True
    # one process, two accumulation steps: the same global batch, split the same way
    cli("train", data32, "--out", tmp_path / "one", "--grad-accum", 2, *args, env=env)
    # the same losses step by step (averaged over processes in the log) ...
    def losses(run):
        lines = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        return [(x["stage"], x["step"], x["loss"]) for x in lines if x["kind"] == "train"]

    la, lb = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert [x[:2] for x in la] == [x[:2] for x in lb] and len(la) == 9  # 3 steps of each stage
    for (stage, step, x), (_, _, y) in zip(la, lb):
        assert abs(x - y) <= 1e-4 * abs(y), (stage, step, x, y)
    # ... and the same weights, to float-summation noise (Adam amplifies it on tiny gradients)
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 2e-3, f"2 processes differ from 1 process on the same global batch by {worst}"


def test_init_autoencoder_starts_from_another_worlds_autoencoder(tmp_path, tiny_world_run):
    """--init-autoencoder with 0 autoencoder steps: the new world decodes with the given
    world's autoencoder (weights equal; the latent normalisation is measured again on this
    run's data); a world of another preset is refused."""
    data, source = tiny_world_run
    run = tmp_path / "run"
    cli("train", data, "--out", run, "--init-autoencoder", source, "--autoencoder-steps", 0, "--dynamics-steps", 2, *FAST)
    a, b = load_bundle(source / "world").autoencoder.state_dict(), load_bundle(run / "world").autoencoder.state_dict()
    for k, v in a.items():
        if "latent" not in k:  # calibration buffers are this run's own
            torch.testing.assert_close(b[k], v, msg=k)
    # the cached latents are keyed by the weights that encoded them (there is no autoencoder
    # checkpoint in this run to key them by), so another --init-autoencoder would encode anew
    _, meta = load_tensors(run / "latents.safetensors")
    assert meta["autoencoder_sha256"] == weights_sha256(load_bundle(run / "world").autoencoder)
    # the autoencoder it was given is kept in the run: a later stage alone needs nothing outside it
    _, meta = load_tensors(run / "autoencoder.safetensors")
    assert meta["step"] == 0 and meta["init"] == str(source)
    shutil.rmtree(run / "world")
    cli("train", data, "--out", run, "--resume", "--stage", "dynamics", "--dynamics-steps", 3, *FAST)
    for k, v in a.items():
        if "latent" not in k:
            torch.testing.assert_close(load_bundle(run / "world").autoencoder.state_dict()[k], v, msg=k)
    p = cli("train", data, "--out", tmp_path / "other", "--preset", "small", "--init-autoencoder", source, *FAST, check=False)
    assert p.returncode == 2 and "--init-autoencoder" in p.stderr, p.stderr


def test_init_world_starts_every_stage_from_a_trained_world(tmp_path, tiny_world_run):
    """--init-world with 0 steps everywhere: the new bundle holds the given world's networks
    (autoencoder, dynamics, student); with dynamics steps the dynamics trains on from them
    and the student still starts as the given one; a world of another preset is refused."""
    data, source = tiny_world_run
    given = load_bundle(source / "world")
    copy = tmp_path / "given"
    shutil.copytree(source / "world", copy)
    run = tmp_path / "same"
    same = ("train", data, "--out", run, "--init-world", copy, "--autoencoder-steps", 0, "--dynamics-steps", 0,
            "--distill-steps", 0, "--autoencoder-batch", "8", "--dynamics-batch", "4", "--clip-frames", "4",
            "--precision", "fp32", "--quiet")
    cli(*same)
    got = load_bundle(run / "world")
    for a, b in ((given.dynamics, got.dynamics), (given.distilled, got.distilled)):
        for k, v in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[k], v, msg=k)
    assert json.loads((run / "world" / "config.json").read_text())["training"]["init_world"] == str(copy)
    for stage in ("autoencoder", "dynamics", "distill"):  # the copies are the run's own checkpoints now
        _, meta = load_tensors(run / f"{stage}.safetensors")
        assert meta["step"] == 0 and meta["init"] == str(copy)
    shutil.rmtree(copy)  # so a resume must find everything in the run itself
    cli(*same, "--resume")
    again = load_bundle(run / "world")
    for k, v in given.distilled.state_dict().items():
        torch.testing.assert_close(again.distilled.state_dict()[k], v, msg=k)

    more = tmp_path / "more"
    cli("train", data, "--out", more, "--init-world", source, "--autoencoder-steps", 0, "--dynamics-steps", 3,
        "--distill-steps", 0, "--autoencoder-batch", "8", "--dynamics-batch", "4", "--clip-frames", "4",
        "--precision", "fp32", "--quiet")
    trained = load_bundle(more / "world")
    moved = [k for k, v in given.dynamics.state_dict().items() if not torch.equal(trained.dynamics.state_dict()[k], v)]
    assert moved, "3 dynamics steps changed nothing"
    # a fresh network would differ everywhere; 3 small steps from the given world stay near it
    delta = max(float((trained.dynamics.state_dict()[k] - given.dynamics.state_dict()[k]).abs().max()) for k in moved)
    assert delta < 0.05, delta
    for k, v in given.distilled.state_dict().items():
        torch.testing.assert_close(trained.distilled.state_dict()[k], v, msg=k)

    p = cli("train", data, "--out", tmp_path / "other", "--preset", "mini", "--init-world", source, *FAST, check=False)
    assert p.returncode == 2 and "--init-world" in p.stderr, p.stderr
    p = cli("train", data, "--out", tmp_path / "both", "--init-world", source, "--init-autoencoder", source, *FAST, check=False)
    assert p.returncode == 2 and "not both" in p.stderr, p.stderr


def test_cli_choices_are_the_librarys_and_cost_no_torch():
    """The CLI takes its training and sampler choices from train/config.py, which names the
    sampler presets and model sizes without importing torch: the same names as the model's."""
    import argparse

    from neuralworld.cli import build_parser
    from neuralworld.model.config import PRESETS
    from neuralworld.model.sampler import SAMPLERS
    from neuralworld.train import STAGES
    from neuralworld.train.config import PRESET_NAMES, SAMPLER_NAMES

    assert SAMPLER_NAMES == tuple(SAMPLERS) and PRESET_NAMES == tuple(PRESETS)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    stage = next(a for a in sub.choices["train"]._actions if a.dest == "stage")
    assert tuple(stage.choices) == ("all", *STAGES)
    for verb in ("eval", "play", "bench", "export"):
        sampler = next(a for a in sub.choices[verb]._actions if a.dest == "sampler")
        assert tuple(sampler.choices) == SAMPLER_NAMES, verb
    code = "import sys, neuralworld.cli, neuralworld.train.config; print('torch' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "False", p.stdout + p.stderr


WARP = ["--model", "warp", "--warp-batch", "4", "--warp-unroll", "3", "--warp-chain", "6", "--precision", "fp32", "--quiet"]


def test_warp_world_trains_resumes_exactly_and_plays(tmp_path, data32):
    """--model warp: the stage's curriculum runs (teacher forcing, the critic, unrolls), a run
    killed mid-way and resumed ends with the uninterrupted run's weights, and the bundle plays."""
    args = ["--warp-steps", 12, "--checkpoint-every", 2, "--validate-every", 6, *WARP]
    cli("train", data32, "--out", tmp_path / "straight", *args)
    run = tmp_path / "killed"
    ckpt = run / "warp.safetensors"
    _, meta = train_until_killed(data32, run, args, ckpt)
    assert 2 <= meta["step"] < 12 and "critic" in meta["companion_optimizers"]  # the critic and its optimizer are kept too
    cli("train", data32, "--out", run, "--resume", *args)

    a, b = weights(tmp_path / "straight"), weights(run)
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())  # not the empty device anchor
    assert worst < 1e-5, f"resumed warp run differs from the uninterrupted one by {worst}"

    logged = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [x for x in logged if x["kind"] == "train"]
    assert max(x["unroll"] for x in train_rows) == 3 and train_rows[-1]["adv_weight"] > 0  # the curriculum ran
    held = [x for x in logged if x["kind"] == "held_out"]
    assert held and all(np.isfinite(x["next_frame_psnr"]) for x in held)
    assert all(x["drive_64_sharpness_ratio"] > 0 for x in held)  # the drive played on: its frames are not flat
    world = load_bundle(tmp_path / "straight" / "world")
    assert world.model == "warp" and world.meta["training"]["steps"] == {"warp": 12} and world.meta["training"]["seconds"] > 0
    session = world.start(seed=0)
    frames = session.rollout(np.stack([world.spec.make(forward=1)] * 3))
    assert frames.shape == (3, 32, 32, 3) and frames.dtype == np.uint8


def test_warp_torchrun_two_processes_match_one(tmp_path, data32):
    args = ["--warp-steps", 4, "--checkpoint-every", 100, "--validate-every", 100, "--log-every", 1, *WARP]
    env = torchrun_two(data32, tmp_path / "ddp", args)
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2
    cli("train", data32, "--out", tmp_path / "one", "--grad-accum", 2, *args, env=env)
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())  # not the empty device anchor
    assert worst < 2e-3, f"2 processes differ from 1 process on the same global batch by {worst}"


def test_rollout_streams_go_on_where_they_ended_and_start_again_after_their_length(data32):
    """A stream's next sample is the next window of its episode with the memory its last step ended
    with (as 8-bit frames); after its drawn length, or with chaining off, it starts again from
    recorded memory; its state survives a checkpoint's round trip."""
    from neuralworld.data.store import Dataset
    from neuralworld.train.warp import RolloutStreams, WarpWindows

    ds = Dataset(data32)
    source = WarpWindows(ds, list(range(ds.num_episodes)), 4, 3, with_flow=False)
    streams = RolloutStreams(source, 6, chain=8, seed=0)
    first = streams.batch(0, range(6), 2, chaining=True)
    assert not first.played.any()  # nothing played yet: every stream starts from the record
    where0, lengths = streams.where.clone(), streams.length.clone()
    assert ((lengths >= 0) & (lengths <= 8)).all() and len(set(lengths[1::2].tolist())) > 1
    assert (lengths[::2] == 0).all()  # even slots never go on: half the batch is fresh from the record
    ended = torch.rand(6, 4, 3, 32, 32) * 2 - 1
    streams.went_on(range(6), ended, 2)
    nxt = streams.batch(1, range(6), 2, chaining=True)
    goes_on = lengths >= 4  # 2 played, 2 more to play
    assert goes_on.any() and not goes_on.all()
    assert torch.equal(nxt.played, goes_on)
    assert torch.equal(streams.where[goes_on], where0[goes_on] + torch.tensor([0, 2]))
    assert torch.allclose(nxt.memory[goes_on], ((ended[goes_on] + 1) * 127.5).round() / 127.5 - 1, atol=1e-6)
    # the recorded frames of a stream that goes on are its episode's, two steps on
    e, s = (int(x) for x in streams.where[int(goes_on.nonzero()[0])])
    assert torch.equal(nxt.frames[int(goes_on.nonzero()[0]), 0], source.batch_at([(e, s)], 2).frames[0, 0])
    again = RolloutStreams(source, 6, chain=6, seed=0)
    again.load(streams.state())
    assert all(torch.equal(a, b) for a, b in zip(again.state().values(), streams.state().values()))
    streams.went_on(range(6), ended, 2)
    assert not streams.batch(2, range(6), 2, chaining=False).played.any()
    with pytest.raises(TrainingError, match="same batch"):
        RolloutStreams(source, 5, chain=6, seed=0).load(streams.state())


def test_the_termination_head_learns_from_the_steps_that_ended_episodes(tmp_path):
    """A death is the last recorded step: no frame follows it, so no ordinary window holds it.
    WarpWindows.end_batch hands those steps to the heads (and only to them), and the
    termination head's probability at deaths rises above the rest after a few steps; the
    eval part (eval/heads.py) reads it teacher-forced on real episodes."""
    from neuralworld.data.store import Dataset
    from neuralworld.eval.heads import death_timing
    from neuralworld.model.warp import PatchDiscriminator, WarpNet, warp_generator_loss, warp_preset
    from neuralworld.train.warp import WarpWindows

    out = tmp_path / "tc"
    record(RecordConfig(env="doom/take_cover", episodes=3, workers=1, resolution=(64, 64), max_steps=300, policy="random"), out, progress=False)
    ds = Dataset(out)
    assert all(ds.episode(i).load(("terminated",))["terminated"][-1] for i in range(3))  # random play dies
    cfg = warp_preset("tiny", ds.spec, (64, 64)).validate()
    torch.manual_seed(0)
    net = WarpNet.from_world(cfg)
    M = cfg.dynamics.window
    source = WarpWindows(ds, [0, 1, 2], M, 1, with_flow=False)
    assert source.ends == [0, 1, 2]
    ends = source.end_batch(np.random.default_rng(0), 4)
    assert ends.frames.shape[:2] == (4, M) and ends.actions.shape[:2] == (4, M + 1) and ends.terminated.eq(1).all()
    never = WarpWindows(ds, [0, 1, 2], M, 1, with_flow=False)
    never.ends = []
    assert never.end_batch(np.random.default_rng(0), 4) is None
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    rng = np.random.default_rng(1)
    for _ in range(30):
        batch = source.batch(rng, 8, 1)
        batch.ends = source.end_batch(rng, 4)
        loss, _, logs, _ = warp_generator_loss(net, None, batch, unroll=1, adv_weight=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        e = source.end_batch(np.random.default_rng(2), 6)
        b = source.batch(np.random.default_rng(3), 6, 1)
        at_death = torch.sigmoid(net(e.frames[:, :M], e.actions[:, M - cfg.dynamics.action_frames + 1 :], torch.randn(6, 3, 64, 64))["termination"])
        alive = torch.sigmoid(net(b.frames[:, :M], b.actions[:, M - cfg.dynamics.action_frames + 1 : M + 1], torch.randn(6, 3, 64, 64))["termination"])
    assert at_death.mean() > alive.mean() + 0.2
    from neuralworld import bundle
    world = bundle.load_bundle(bundle.save_bundle(tmp_path / "w", cfg, *bundle.build_networks(cfg)))
    timing = death_timing(world, ds, [0, 1, 2], context=4)
    assert timing["deaths"] == 3 and timing["caught"] + timing["missed"] == 3 and timing["early"] <= 3
    assert timing["steps_checked"] > 0 and timing["false_alarms_per_1000"] is not None
    curve = {c["threshold"]: c for c in timing["curve"]}
    assert curve[0.5]["caught_fraction"] == timing["caught_fraction"]
    assert curve[0.02]["caught_fraction"] >= curve[0.5]["caught_fraction"]  # a lower bar catches more
    assert curve[0.02]["false_alarms_per_1000"] >= curve[0.5]["false_alarms_per_1000"]  # and cries wolf more


def test_a_geometry_warp_world_learns_the_recordings_depth_and_camera_and_plays(tmp_path, data32):
    """--warp-objective geometry_flow=1: the world takes the recording's camera, its targets are
    each predicted frame's recorded depth and the camera's recorded move (WarpWindows), both
    losses are logged, and the bundle plays; a recording without depth is refused, by name."""
    from neuralworld.data.store import Dataset
    from neuralworld.model.warp import camera_move
    from neuralworld.train.warp import WarpWindows

    ds = Dataset(data32)
    src = WarpWindows(ds, [0, 1], 16, 2, with_flow=False, with_geometry=True)
    b = src.batch_at([(0, 3)], 2)
    st = ds.episode(0).load(("depth", "poses"))
    assert b.depth.shape == (1, 2, 1, 32, 32) and torch.equal(b.depth[0, :, 0] * 255, torch.from_numpy(st["depth"][3 + 16 : 3 + 18]).float())
    want = camera_move(torch.from_numpy(st["poses"][19:21]).double(), torch.from_numpy(st["poses"][18:20]).double()).float()
    assert torch.allclose(b.move[0], want)
    args = ["--warp-steps", 6, "--checkpoint-every", 3, "--validate-every", 3, *WARP, "--warp-objective", "geometry_flow=1",
            "--warp-objective", "overlay=1"]
    cli("train", data32, "--out", tmp_path / "geo", *args)
    logged = [json.loads(x) for x in (tmp_path / "geo" / "metrics.jsonl").read_text().splitlines()]
    assert any("depth_l1_0" in x and "move_l1_0" in x for x in logged if x["kind"] == "train")
    world = load_bundle(tmp_path / "geo" / "world")
    assert world.config.dynamics.geometry_flow and world.config.dynamics.depth_unit == ds.info.camera.depth_unit
    zero = np.mean([(ds.episode(i).load(("depth",))["depth"] == 0).mean(0) for i in range(len(ds))], 0)  # each pixel: the share of frames at depth 0
    over = world.dynamics.overlay[0, 0].numpy()
    assert over.sum() > 0 and np.all(zero[over == 1] > 0.4)  # the weapon, from the recording's depth, kept in the bundle
    frames = world.start(seed=0).rollout(np.stack([world.spec.make(forward=1, turn=5.0)] * 3))
    assert frames.shape == (3, 32, 32, 3)
    # a recording without a camera (imported video has none) is refused with the reason
    from neuralworld.data.store import DatasetWriter

    w = DatasetWriter.create(tmp_path / "nocam", ds.spec, (32, 32), source="test")
    ep = w.episode(w.next_ids(1)[0])
    for _ in range(40):
        ep.add_frame(np.zeros((32, 32, 3), np.uint8), ds.spec.noop())
    ep.save()
    p = cli("train", tmp_path / "nocam", "--out", tmp_path / "nocam_run", *args, check=False)
    assert p.returncode != 0 and "geometry_flow and overlay need(s) a recording with depth" in p.stderr


def test_resume_reads_settings_added_since_the_run_began_as_their_defaults(tmp_path):
    """A run begun before a setting existed (its run.json lacks it) resumes when the setting is
    at its default, and is refused when it is not."""
    from neuralworld.model.warp import warp_preset
    from neuralworld.state_io import atomic_write_json
    from neuralworld.train.run import _check_run

    from neuralworld.actions import ActionSpec

    world = warp_preset("tiny", ActionSpec(buttons=("forward",), axes=(), fps=10)).validate()
    record = {"action_spec": {"a": 1}, "resolution": [64, 64], "world": world.to_dict()}
    old = {**record, "world": {**world.to_dict(), "dynamics": {k: v for k, v in world.to_dict()["dynamics"].items() if k != "geometry_flow"}}}
    (tmp_path / "run").mkdir()
    atomic_write_json(tmp_path / "run" / "run.json", old)
    _check_run(tmp_path / "run", record, True, type(world))
    world.dynamics.geometry_flow = True
    with pytest.raises(TrainingError, match="model config differs"):
        _check_run(tmp_path / "run", {**record, "world": world.to_dict()}, True, type(world))
