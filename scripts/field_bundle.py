"""Make a playable field-world bundle from a ``scripts/field_ab.py`` run's field.pt.

    .venv/bin/python scripts/field_bundle.py DATA RUN/field.pt OUT [--name NAME]

field_ab trains the same renderer as the package's field world (``model.field.FieldNet``, whose
parameters have the same names and whose gathered reads equal field_ab's ``grid_sample``:
tests/test_field.py). This fits what the package fits before training (kinematics, walls, floor,
localisation bank: ``train.field._fit_geometry``) on field_ab's training episodes (all but the
last tenth), takes the map area field_ab's grids cover from the weights, and writes a bundle
(OUT: config.json + model.safetensors) that ``neuralworld play``, eval and world_check load.
A bundle ``--init-world`` can start a package run from (e.g. the low-pass critic stage)."""
from __future__ import annotations

import argparse
import json

import torch

from neuralworld.bundle import save_bundle
from neuralworld.data.store import Dataset
from neuralworld.model.field import FieldNet, field_preset
from neuralworld.model.unet import PixelCodec
from neuralworld.train.data import TrainData
from neuralworld.train.field import _fit_geometry


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data"), p.add_argument("weights"), p.add_argument("out")
    p.add_argument("--name", default=None)
    a = p.parse_args()
    ds = Dataset(a.data)
    state = torch.load(a.weights, weights_only=True)
    lo, hi = state["lo"].tolist(), state["hi"].tolist()
    world = field_preset("mini", ds.spec, ds.resolution)
    world.dynamics.bounds = (lo[0], lo[1], hi[0], hi[1])
    if ds.info.camera is not None:
        world.dynamics.hfov = float(ds.info.camera.hfov_deg)
    world.validate()
    net = FieldNet.from_world(world)
    n = ds.num_episodes
    held = list(range(n - max(1, n // 10), n))
    data = TrainData(ds, [e for e in range(n) if e not in held], held)
    _, _, starts = _fit_geometry(net, data, world)
    error = starts.pop("kinematics_error")
    missing, unexpected = net.load_state_dict(state, strict=False)
    fitted = {"pos_embed", "kinematics", "walls", "floor", "bank_thumbs", "bank_poses"}
    if unexpected or set(missing) - fitted:
        raise SystemExit(f"{a.weights} does not fit the field world: missing {sorted(set(missing) - fitted)}, unexpected {unexpected}")
    net.eval()
    save_bundle(a.out, world, PixelCodec(), net, name=a.name or "field", **starts,
                training={"data": a.data, "model": "field", "from": a.weights, "kinematics_median_error": error,
                          "held_out_episodes": held})
    print(json.dumps({"bundle": a.out, "kinematics_median_error": error}))


if __name__ == "__main__":
    main()
