"""Which world ``neuralworld play`` and ``export --web`` open, and on which execution path.

Both the server (``server.py``) and the web export (``export.py``) start here, so
neither imports the other for it.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_WORLDS = Path(__file__).resolve().parents[3] / "worlds"
"""Where shipped worlds live in a checkout (``worlds/<name>``); ``play NAME`` looks there."""
DEFAULT_WORLD: str | None = "freedoom-map01"
"""The world ``neuralworld play`` opens with no argument (worlds/freedoom-map01, see README)."""


class PlayError(Exception):
    """A world or an address the player cannot use; the message says what to do."""


def resolve_world(world: str | None) -> Path:
    """A bundle folder, a run folder (RUN/world), or the name of a shipped world -> bundle path."""
    if world is None:
        if DEFAULT_WORLD is None:
            raise PlayError("no world given: neuralworld play WORLD (a world bundle, or a run folder from neuralworld train)")
        world = DEFAULT_WORLD
    p = Path(world)
    if not p.exists() and "/" not in str(world) and (SHIPPED_WORLDS / str(world)).exists():
        p = SHIPPED_WORLDS / str(world)
    if (p / "config.json").is_file():
        return p
    if (p / "world" / "config.json").is_file():
        return p / "world"
    if p.exists():
        raise PlayError(f"{p} is neither a world bundle (config.json) nor a run folder with a finished world (world/config.json)")
    raise PlayError(f"{world}: no such world")


def resolve_backend(name: str, world: object | None = None) -> str:
    """"auto" -> given the ``world``, ``backends.fastest_exact`` (what plays it fastest and
    exactly here); without one, ONNX Runtime when it is installed (the fastest exact path
    measured on a 2-core CPU), else eager PyTorch. Any other name must be one of
    ``backends.PATHS``."""
    from neuralworld.backends import PATHS, fastest_exact

    if name == "auto" and world is not None:
        return fastest_exact(world)
    if name == "auto":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "eager"
        return "onnx"
    if name not in PATHS:
        raise PlayError(f"backend must be auto or one of {list(PATHS)}, got {name!r}")
    return name
