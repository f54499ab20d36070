"""Ship a trained world: its bundle re-saved under worlds/NAME with the shipped name and the
commands that made it in its training record (what `neuralworld play` opens with no argument).

    .venv/bin/python scripts/ship_world.py runs/warp64f/world freedoom-map01 "DATA COMMAND" "TRAIN COMMAND"
"""
import shutil
import sys
from pathlib import Path

from neuralworld.bundle import load_bundle, save_bundle

source, name, data_cmd, train_cmd = sys.argv[1:5]
world = load_bundle(source)
training = {**world.meta.get("training", {}), "data": data_cmd, "command": train_cmd}
out = Path("worlds") / name
tmp = out.with_name(f".{name}.new")
shutil.rmtree(tmp, ignore_errors=True)
save_bundle(tmp, world.config, world.autoencoder, world.dynamics, name=name, training=training,
            start_frames=world.start_frames, start_actions=world.start_actions, start_poses=world.start_poses)
load_bundle(tmp)  # it loads before it replaces anything
shutil.rmtree(out, ignore_errors=True)
tmp.rename(out)
print(f"shipped {source} as {out} ({sum(f.stat().st_size for f in out.iterdir()) / 2**20:.1f} MiB)")
