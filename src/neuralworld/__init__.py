"""neuralworld: worlds that exist only as a neural network.

The public face: ``ActionSpec`` (a world's controls), ``load(path)`` for a trained
world and ``WorldSession`` to play it::

    world = neuralworld.load("worlds/freedoom-map01")
    session = world.start()                            # what the player plays: fast, fastest exact backend
    frame = session.step(world.spec.make(forward=1))   # uint8 (H, W, 3)
    world.start(sampler="quality")                     # the 8-step Heun sampler: 15 network calls a frame, not 1
"""

from typing import TYPE_CHECKING

from neuralworld.actions import ActionError, ActionSpec, Axis

if TYPE_CHECKING:  # what the lazy __getattr__ below returns, for type checkers
    from neuralworld.bundle import load_bundle as load
    from neuralworld.session import WorldSession

__version__ = "0.1.0"
__all__ = ["ActionError", "ActionSpec", "Axis", "WorldSession", "__version__", "load"]


def __getattr__(name: str):
    # lazy (PEP 562): `load` and `WorldSession` need torch, which commands like
    # `neuralworld data info` should not pay ~1 s to import
    if name == "load":
        from neuralworld.bundle import load_bundle

        return load_bundle
    if name == "WorldSession":
        from neuralworld.session import WorldSession

        return WorldSession
    raise AttributeError(f"module 'neuralworld' has no attribute {name!r}")
