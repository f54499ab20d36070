"""The recurrent world (model/rnn.py, train/rnn.py) and its CMA-ES controller (controller.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from neuralworld import bundle
from neuralworld.cli import main
from neuralworld.data.store import DatasetWriter
from neuralworld.model.rnn import MemoryRNN, RNNNetConfig, mixture_nll, rnn_preset, sample_mixture
from neuralworld.record.doom import doom_action_spec

SPEC = doom_action_spec(2)


def random_world(path: Path, resolution=(32, 32), seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = rnn_preset("tiny", SPEC, resolution)
    frames = np.full((1, *resolution, 3), 40, np.uint8)
    return bundle.save_bundle(path, cfg, *bundle.build_networks(cfg), start_frames=frames)


def test_mixture_draw_is_the_mixture():
    """The inverse-CDF draw from one normal a number has the mixture's law: its mean, spread,
    likelihood and the share of each mode match draws made the textbook way."""
    g = torch.Generator().manual_seed(0)
    n = 40_000
    logits = torch.tensor([0.3, -0.5, 1.0]).expand(n, 3)
    mean = torch.tensor([-3.0, 0.5, 2.0]).expand(n, 3)
    log_sigma = torch.tensor([-1.0, 0.0, -0.5]).expand(n, 3)
    ours = sample_mixture(logits, mean, log_sigma, torch.randn(n, generator=g))
    comp = torch.multinomial(torch.softmax(logits[0], -1), n, replacement=True, generator=g)
    book = mean[0][comp] + log_sigma[0].exp()[comp] * torch.randn(n, generator=g)
    assert abs(ours.mean() - book.mean()) < 0.05 and abs(ours.std() - book.std()) < 0.05
    assert abs(mixture_nll(logits, mean, log_sigma, ours).mean() - mixture_nll(logits, mean, log_sigma, book).mean()) < 0.03
    assert abs((ours < -1.5).float().mean() - (book < -1.5).float().mean()) < 0.01
    hot = sample_mixture(logits, mean, log_sigma, torch.randn(n, generator=g), temperature=1.5)
    assert hot.std() > ours.std()  # a warmer dream is wilder


def test_the_lstm_learns_a_coin_and_the_dream_flips_it():
    """What a frame-to-frame regression cannot: the next code is +1 or -1 at random, and the
    trained world draws both, each about half the time (its L1 average would be 0)."""
    torch.manual_seed(0)
    net = MemoryRNN(RNNNetConfig(latent=2, hidden=16, mixtures=2), action_size=1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        codes = torch.zeros(64, 9, 2)
        codes[:, :, 0] = torch.randint(0, 2, (64, 9)).float() * 2 - 1
        out, _ = net.run(codes[:, :-1], torch.zeros(64, 8, 1))
        logits, mean, log_sigma, _, _ = net.predict(out)
        loss = mixture_nll(logits, mean, log_sigma, codes[:, 1:]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    cache = net.new_cache(2000)
    net.append(torch.zeros(2000, 2, 1, 1), 0.0, torch.zeros(2000, 1), cache)
    noise = torch.randn(2000, 2, 1, 1, generator=torch.Generator().manual_seed(1))
    code = (noise - net.step(noise, 1.0, torch.zeros(2000, 1), cache).velocity).flatten(1)
    heads = (code[:, 0] > 0).float().mean().item()
    assert 0.4 < heads < 0.6
    assert (code[:, 0].abs() - 1).abs().median() < 0.2  # each draw lands on a side, not between


def test_session_over_a_recurrent_world(tmp_path):
    """Seeded dreams repeat; the heads are read per step; ``pixels=False`` decodes nothing; an
    element restarted forgets its memory; a code is (B, latent, 1, 1)."""
    world = bundle.load_bundle(random_world(tmp_path / "w"))
    acts = np.stack([SPEC.make(strafe_left=1), SPEC.make(strafe_right=1)] * 3)
    a = world.start(seed=3, backend="eager").rollout(acts)
    b = world.start(seed=3, backend="eager").rollout(acts)
    c = world.start(seed=4, backend="eager").rollout(acts)
    assert a.shape == (6, 32, 32, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
    s = world.start(batch_size=3, seed=0, backend="eager", pixels=False)
    assert s.latent.shape == (3, 16, 1, 1) and s.cache.valid.all() and not s.cache.h.any()  # the start code, no step yet
    assert s.step(SPEC.noop()) is None and s.last_termination.shape == (3,)
    assert s.cache.h.abs().sum(1).min() > 0
    with pytest.raises(Exception, match="pixels=False"):
        s.frame
    s.step(SPEC.noop(), restart=np.array([False, True, False]))
    h = s.cache.h
    assert not h[1].any() and h[0].any() and h[2].any()  # element 1 holds only its start code again


def test_check_env_on_a_recurrent_world(tmp_path):
    from gymnasium.utils.env_checker import check_env

    from neuralworld.envs import WorldEnv

    env = WorldEnv(random_world(tmp_path / "w"))
    check_env(env, skip_render_check=True)
    latent = WorldEnv(tmp_path / "w", observation="latent")
    obs, _ = latent.reset(seed=0)
    assert obs.shape == (16, 1, 1) and obs.dtype == np.float32


@pytest.fixture(scope="module")
def dodge_data(tmp_path_factory) -> Path:
    """Episodes of a falling block: a block appears at random columns; an episode ends when the
    block lands on the player's column (``terminated``) or after 14 steps (not)."""
    path = tmp_path_factory.mktemp("rnn") / "data"
    writer = DatasetWriter.create(path, SPEC, (32, 32), source="synthetic: falling blocks", game_variables=("health",))
    rng = np.random.default_rng(0)
    for e in range(12):
        ep = writer.episode(e)
        col, row, player = int(rng.integers(0, 4)), 0, 2
        for t in range(14):
            frame = np.zeros((32, 32, 3), np.uint8)
            frame[row * 6 : row * 6 + 6, col * 8 : col * 8 + 8] = (220, 120, 40)
            frame[28:, player * 8 : player * 8 + 8] = (60, 200, 60)
            action = SPEC.make(strafe_left=1) if rng.random() < 0.5 else SPEC.make(strafe_right=1)
            landed = row == 4 and col == player
            ep.add_frame(frame, action, reward=2.0, terminated=landed, game_vars=(100.0 - 10 * t,))
            if landed:
                break
            player = int(np.clip(player + (-1 if action[SPEC.index("strafe_left")] else 1), 0, 3))
            row += 1
            if row > 4:
                col, row = int(rng.integers(0, 4)), 0
        ep.save()
    return path


def test_train_rnn_cli_plays_and_resumes(dodge_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", str(dodge_data), "--model", "rnn", "--preset", "tiny", "--out", str(out), "--vae-steps", "20",
            "--rnn-steps", "10", "--checkpoint-every", "10", "--validate-every", "10", "--quiet"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == "rnn" and summary["held_out_vae_psnr"] > 0
    world = bundle.load_bundle(out / "world")
    assert world.model == "rnn" and world.start_frames.shape == (1, 32, 32, 3)
    before = (out / "rnn.safetensors").read_bytes()
    args[args.index("--rnn-steps") + 1] = "20"
    assert main([*args, "--resume"]) == 0
    assert (out / "rnn.safetensors").read_bytes() != before  # went on from step 10
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rnn_steps = [m["step"] for m in metrics if m.get("stage") == "rnn" and "nll" in m]
    assert max(rnn_steps) == 20 and rnn_steps.count(10) == 1  # the resumed run did not redo steps 1-10
    frames = world.start(seed=0, backend="eager").rollout(np.stack([SPEC.make(strafe_left=1)] * 4))
    assert frames.shape == (4, 32, 32, 3)


def test_train_rnn_from_another_world(dodge_data, tmp_path, capsys):
    """--init-world: 0 steps keep the given world's networks as they are; steps train on from
    them (the VAE kept with --vae-steps 0); another preset is refused, naming the network."""
    base = ["train", str(dodge_data), "--model", "rnn", "--preset", "tiny", "--checkpoint-every", "5",
            "--validate-every", "5", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "a"), "--vae-steps", "10", "--rnn-steps", "5"]) == 0
    a = bundle.load_bundle(tmp_path / "a" / "world")

    def weights(module):
        return {k: v.clone() for k, v in module.state_dict().items()}

    assert main([*base, "--out", str(tmp_path / "b"), "--vae-steps", "0", "--rnn-steps", "0", "--init-world", str(tmp_path / "a")]) == 0
    b = bundle.load_bundle(tmp_path / "b" / "world")
    for mine, theirs in ((b.autoencoder, a.autoencoder), (b.dynamics, a.dynamics)):
        assert all(torch.equal(v, weights(theirs)[k]) for k, v in weights(mine).items())
    assert main([*base, "--out", str(tmp_path / "c"), "--vae-steps", "0", "--rnn-steps", "5", "--init-world", str(tmp_path / "a")]) == 0
    c = bundle.load_bundle(tmp_path / "c" / "world")
    assert all(torch.equal(v, weights(a.autoencoder)[k]) for k, v in weights(c.autoencoder).items())
    assert any(not torch.equal(v, weights(a.dynamics)[k]) for k, v in weights(c.dynamics).items())
    capsys.readouterr()
    assert main([*base, "--preset", "mini", "--out", str(tmp_path / "d"), "--vae-steps", "0", "--rnn-steps", "0",
                 "--init-world", str(tmp_path / "a")]) == 2
    assert "its vae is not this run's" in capsys.readouterr().err
    # --rnn-hidden: a wider memory over the same VAE (--init-autoencoder), not the same MDN-LSTM
    assert main([*base, "--out", str(tmp_path / "e"), "--vae-steps", "0", "--rnn-steps", "5", "--rnn-hidden", "24",
                 "--init-autoencoder", str(tmp_path / "a")]) == 0
    e = bundle.load_bundle(tmp_path / "e" / "world")
    assert e.config.dynamics.hidden == 24 and e.dynamics.lstm.hidden_size == 24 != a.config.dynamics.hidden
    assert all(torch.equal(v, weights(a.autoencoder)[k]) for k, v in weights(e.autoencoder).items())
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "f"), "--vae-steps", "0", "--rnn-steps", "0", "--rnn-hidden", "24",
                 "--init-world", str(tmp_path / "a")]) == 2
    assert "its rnn is not this run's" in capsys.readouterr().err


def test_episode_batches_mark_deaths_only_where_they_were(dodge_data):
    from neuralworld.data.store import Dataset
    from neuralworld.train.rnn import _Episodes, _load

    ds = Dataset(dodge_data)
    raw, frames = _load(SimpleNamespace(ds=ds), list(range(ds.num_episodes)))
    assert np.shares_memory(raw[-1]["frames"], frames) and len(frames) == sum(len(r["actions"]) for r in raw)  # held once
    codes = [(torch.zeros(len(r["actions"]), 4), torch.zeros(len(r["actions"]), 4)) for r in raw]
    acts = [torch.from_numpy(ds.spec.normalize(r["actions"])).float() for r in raw]
    eps = _Episodes(codes, acts, raw)
    b = eps.batch(np.random.default_rng(0), 0, 100, np.arange(len(raw)))
    for i, r in enumerate(raw):
        L = len(r["actions"])
        assert b["steps"][i].sum() == L and b["has_next"][i].sum() == L - 1
        assert b["ended"][i].sum() == float(r["terminated"][-1]) and (not r["terminated"][-1] or b["ended"][i, L - 1] == 1)
        assert b["has_health"][i].sum() == L and torch.allclose(b["health"][i, :L], torch.from_numpy(1.0 - 0.1 * np.arange(L, dtype=np.float32)))
    short = eps.batch(np.random.default_rng(0), 0, 5, np.arange(len(raw)))  # stretches: a death only if the stretch reaches it
    assert short["codes"].shape[1] == 5 and short["ended"].sum() <= sum(bool(r["terminated"][-1]) for r in raw)


def test_controller_trains_resumes_and_plays_its_world(tmp_path, capsys):
    pytest.importorskip("cma")
    pytest.importorskip("stable_baselines3")
    from neuralworld.agents import load_agent
    from neuralworld.controller import ControllerAgent

    world = random_world(tmp_path / "w")
    out = tmp_path / "agent"
    base = ["agent", "train", str(world), "--algorithm", "cma", "--out", str(out), "--population", "4", "--rollouts", "2",
            "--max-steps", "6", "--actions", "noop;strafe_left;strafe_right", "--threshold", "1.0", "--quiet"]
    assert main([*base, "--generations", "2"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["generations"] == 2 and first["timesteps"] == 2 * 4 * 2 * 6  # nobody dies at threshold 1: every dream runs out
    assert main([*base, "--generations", "2"]) == 2  # the folder holds an agent
    assert "already holds an agent" in capsys.readouterr().err
    assert main([*base, "--generations", "3", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["generations"] == 3
    assert main([*base, "--generations", "10", "--steps", str(4 * 48 + 1), "--resume"]) == 0  # a generation plays 48 steps
    spent = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert spent["generations"] == 5 and spent["timesteps"] == 5 * 48  # the budget stops it, not the generations
    agent = load_agent(out, SPEC)
    assert isinstance(agent, ControllerAgent) and len(agent.combinations) == 3
    moves = {tuple(agent.act(np.full((32, 32, 3), v, np.uint8))) for v in (0, 100, 200)}
    assert moves <= {tuple(SPEC.make(**c)) for c in agent.combinations}
    assert main(["agent", "eval", str(out), "--env", str(world), "--episodes", "2", "--max-steps", "5", "--threshold", "1.0"]) == 0
    assert json.loads(capsys.readouterr().out)["mean_length"] == 5
    # --codes sample: the remembered code of a real frame is a draw from the VAE's posterior, seeded
    from neuralworld.agents import AgentError
    from neuralworld.model.autoencoder import frames_to_tensor

    frame = np.full((32, 32, 3), 100, np.uint8)
    codes = []
    for how in ("mean", "sample", "sample"):
        agent.reset()
        agent.seed(3, how)
        agent.act(frame)
        codes.append(agent._sessions[0].cache.z.clone())
    with torch.no_grad():
        mean, _ = agent.world.autoencoder.posterior(frames_to_tensor(frame[None]))
    assert torch.allclose(codes[0], mean, atol=1e-5) and not torch.allclose(codes[1], mean, atol=1e-2)
    assert torch.equal(codes[1], codes[2])
    with pytest.raises(AgentError, match="codes must be"):
        agent.seed(0, "mode")
    assert main(["agent", "eval", str(out), "--env", str(world), "--episodes", "1", "--max-steps", "3", "--threshold", "1.0",
                 "--codes", "sample"]) == 0
    assert json.loads(capsys.readouterr().out)["codes"] == "sample"


def test_controller_reading_the_cell_state(tmp_path, capsys):
    """--features zhc: the controller reads [z, h, c] (World Models' Doom set): its weights have
    room for the cell, the agent loads reading it, and its scores follow the cell; a resume asking
    for the other set is refused."""
    pytest.importorskip("cma")
    pytest.importorskip("stable_baselines3")
    from neuralworld.agents import load_agent
    from neuralworld.state_io import load_tensors

    world = random_world(tmp_path / "w")
    out = tmp_path / "agent"
    base = ["agent", "train", str(world), "--algorithm", "cma", "--out", str(out), "--population", "4", "--rollouts", "2",
            "--max-steps", "4", "--actions", "noop;strafe_left;strafe_right", "--threshold", "1.0", "--quiet"]
    assert main([*base, "--generations", "1", "--features", "zhc"]) == 0
    capsys.readouterr()
    weights, _ = load_tensors(out / "controller.safetensors", what="controller")
    dyn = bundle.load_bundle(world).dynamics.config
    assert weights["weight"].shape == (dyn.latent + 2 * dyn.hidden, 3)
    assert main([*base, "--generations", "2", "--resume"]) == 2  # it read zhc; this asks for zh
    assert "was trained reading zhc" in capsys.readouterr().err
    agent = load_agent(out, SPEC)
    assert agent.cell
    frame = np.full((32, 32, 3), 90, np.uint8)
    agent.act(frame)
    cache = agent._sessions[0].cache
    f = agent.world.dynamics.features(cache, True)[0]
    assert torch.equal(f[-dyn.hidden:], cache.c[0])  # the cell is what the last numbers are
    agent.weight.zero_()
    agent.bias.zero_()
    agent.weight[0, -1] = torch.tensor([0.0, 1.0, -1.0])  # only the cell's last number scores
    for _ in range(3):
        move = tuple(agent.act(frame))
        last = float(agent._sessions[0].cache.c[0, -1])
        assert move == tuple(SPEC.make(**({"strafe_left": 1.0} if last > 0 else {"strafe_right": 1.0})))


def test_vote_takes_the_most_chosen_and_breaks_ties_by_order():
    from neuralworld.controller import vote

    assert vote(torch.tensor([2, 1, 1])) == 1
    assert vote(torch.tensor([2, 1, 0])) == 2  # all differ: the first member's
    assert vote(torch.tensor([0, 2, 2, 0])) == 0  # a tie: the earliest member's among the tied
    assert vote(torch.tensor([1])) == 1


def test_controllers_combine_into_a_voting_ensemble(tmp_path, capsys):
    """agent combine: controllers of one world vote; the ensemble plays what most members choose,
    and members of other action sets are refused."""
    pytest.importorskip("cma")
    pytest.importorskip("stable_baselines3")
    from neuralworld.agents import load_agent

    world = random_world(tmp_path / "w")
    base = ["agent", "train", str(world), "--algorithm", "cma", "--population", "4", "--rollouts", "2", "--max-steps", "4",
            "--threshold", "1.0", "--generations", "1", "--quiet"]
    three = "noop;strafe_left;strafe_right"
    for name, seed, actions in (("a", 0, three), ("b", 1, three), ("c", 2, three), ("other", 0, "noop;strafe_left")):
        assert main([*base, "--out", str(tmp_path / name), "--seed", str(seed), "--actions", actions]) == 0
    capsys.readouterr()
    out = tmp_path / "ens"
    assert main(["agent", "combine", *(str(tmp_path / n) for n in "abc"), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["members"] == 3
    ens = load_agent(out, SPEC)
    members = [load_agent(tmp_path / n, SPEC) for n in "abc"]
    assert ens.weight.shape[0] == 3
    rng = np.random.default_rng(0)
    for _ in range(6):  # the members choose from the ensemble's memory (it remembers the ensemble's moves)
        move = tuple(ens.act(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
        f = ens.world.dynamics.features(ens._sessions[0].cache)[0]
        choices = [tuple(m.table[int((f @ m.weight[0] + m.bias[0]).argmax())]) for m in members]
        best = max(choices, key=choices.count)
        assert move == (best if choices.count(best) > 1 else choices[0])
    assert main(["agent", "combine", str(tmp_path / "a"), str(tmp_path / "other"), "--out", str(tmp_path / "bad")]) == 2
    assert "differ in their actions" in capsys.readouterr().err
    assert main(["agent", "combine", str(tmp_path / "a"), "--out", str(tmp_path / "one")]) == 2
    assert "at least two" in capsys.readouterr().err


def test_controller_refuses_a_world_without_code_and_memory(tmp_path, capsys):
    pytest.importorskip("cma")
    from neuralworld.model.warp import warp_preset

    torch.manual_seed(0)
    cfg = warp_preset("tiny", SPEC)
    warp = bundle.save_bundle(tmp_path / "warp", cfg, *bundle.build_networks(cfg))
    assert main(["agent", "train", str(warp), "--algorithm", "cma", "--out", str(tmp_path / "a"), "--generations", "1"]) == 2
    assert "plays a recurrent world" in capsys.readouterr().err
    world = random_world(tmp_path / "rnn")
    assert main(["agent", "train", str(world), "--algorithm", "cma", "--out", str(tmp_path / "b"), "--generations", "1",
                 "--death-scale", "1.2"]) == 2  # without --sample-deaths it would change nothing
    assert "needs sample_deaths" in capsys.readouterr().err


def test_controller_in_the_real_game(tmp_path, capsys):
    """The same search in real ViZDoom, seeing through a recurrent world: engines in lockstep,
    the real return; a world of other controls, or none, is refused."""
    pytest.importorskip("cma")
    pytest.importorskip("vizdoom")
    world = random_world(tmp_path / "w", resolution=(64, 64))
    out = tmp_path / "real"
    args = ["agent", "train", "doom/take_cover", "--algorithm", "cma", "--out", str(out), "--generations", "1", "--population", "2",
            "--rollouts", "2", "--envs", "3", "--max-steps", "30", "--actions", "noop;strafe_left;strafe_right", "--quiet"]
    assert main(args) == 2
    assert "sees through a recurrent world" in capsys.readouterr().err
    assert main([*args, "--world", str(world)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["world"] == "doom/take_cover" and 2 * 2 * 10 <= result["timesteps"] <= 2 * 2 * 30
    meta = json.loads((out / "agent.json").read_text())
    assert meta["algorithm"] == "CMA-ES" and (out / "world" / "config.json").is_file()
    assert main(["agent", "eval", str(out), "--env", "doom/take_cover", "--episodes", "2", "--max-steps", "30"]) == 0
    assert 0 < json.loads(capsys.readouterr().out)["mean_length"] <= 30


def test_sampled_deaths_end_dreams_at_the_heads_rate(tmp_path):
    """With ``sample_deaths`` a dream ends at each step with the head's probability: a head that says
    about 0.5 every step (random weights) ends dreams after about two steps, where the threshold
    (0.5 exactly is not passed reliably) would let some run out; the same seed plays the same; a
    death scale multiplies the probability."""
    pytest.importorskip("cma")
    from neuralworld.controller import dream_returns
    from neuralworld.envs import combination_table

    world = bundle.load_bundle(random_world(tmp_path / "w"))
    table = combination_table(SPEC, [{}, {"strafe_left": 1.0}])
    w, b = np.zeros((4, 16 + 64, 2)), np.zeros((4, 2))
    p = world.start(seed=0, backend="eager", pixels=False)
    p.step(SPEC.noop())
    assert 0.2 < float(p.last_termination) < 0.8
    r1, n1 = dream_returns(world, w, b, table, rollouts=25, max_steps=40, threshold=1.0, seed=5, sample_deaths=True)
    r2, n2 = dream_returns(world, w, b, table, rollouts=25, max_steps=40, threshold=1.0, seed=5, sample_deaths=True)
    assert n1 == n2 and np.array_equal(r1, r2)
    assert 100 <= n1 <= 400  # 100 dreams of mean length about 1 / p, not 40 steps each
    _, longer = dream_returns(world, w, b, table, rollouts=25, max_steps=40, threshold=1.0, seed=5, sample_deaths=True,
                              death_scale=0.25)
    _, shortest = dream_returns(world, w, b, table, rollouts=25, max_steps=40, threshold=1.0, seed=5, sample_deaths=True,
                                death_scale=10.0)
    assert longer > 2 * n1 and shortest == 100  # a scaled hazard: a quarter lives about 4x longer; at p x 10 >= 1 every dream ends at once
    _, never = dream_returns(world, w, b, table, rollouts=25, max_steps=40, threshold=1.0, seed=5)
    assert never == 100 * 40


def test_death_horizon_marks_the_last_steps_of_deaths(dodge_data):
    from neuralworld.data.store import Dataset
    from neuralworld.train.rnn import _Episodes, _load

    ds = Dataset(dodge_data)
    raw, frames = _load(SimpleNamespace(ds=ds), list(range(ds.num_episodes)))
    assert np.shares_memory(raw[-1]["frames"], frames) and len(frames) == sum(len(r["actions"]) for r in raw)  # held once
    codes = [(torch.zeros(len(r["actions"]), 4), torch.zeros(len(r["actions"]), 4)) for r in raw]
    eps = _Episodes(codes, [torch.zeros(len(r["actions"]), 7) for r in raw], raw)
    b = eps.batch(np.random.default_rng(0), 0, 100, np.arange(len(raw)), horizon=3)
    for i, r in enumerate(raw):
        L = len(r["actions"])
        want = np.zeros(b["ended"].shape[1], np.float32)
        if r["terminated"][-1]:
            want[L - 3 : L] = 1
        assert np.array_equal(b["ended"][i].numpy(), want)
    assert any(r["terminated"][-1] for r in raw) and any(not r["terminated"][-1] for r in raw)


def test_the_shipped_take_cover_world_and_its_agent():
    """worlds/take-cover passes Gymnasium's check as neuralworld/World-v0; agents/take-cover loads
    for its controls and plays it."""
    import gymnasium
    from gymnasium.utils.env_checker import check_env

    import neuralworld.envs  # noqa: F401  (registers the ids)
    from neuralworld.agents import load_agent

    root = Path(__file__).resolve().parents[1]
    env = gymnasium.make("neuralworld/World-v0", world=str(root / "worlds" / "take-cover"))
    check_env(env.unwrapped, skip_render_check=True)
    agent = load_agent(root / "agents" / "take-cover", env.unwrapped.spec_actions)
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        obs, reward, terminated, truncated, _ = env.step(agent.act(obs))
    assert obs.shape == (64, 64, 3) and 1.0 < reward < 3.0  # about 2 tics a step alive
