"""neuralworld: worlds that exist only as a neural network.

The public face: ``ActionSpec`` (a world's controls) and, as they arrive,
``load(path)`` for a trained world and ``WorldSession`` to play it.
"""

from neuralworld.actions import ActionError, ActionSpec, Axis

__version__ = "0.1.0"
__all__ = ["ActionError", "ActionSpec", "Axis", "__version__"]
