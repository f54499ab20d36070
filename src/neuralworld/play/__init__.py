"""The web player: a small ASGI server streams a world's frames to a page over a WebSocket.

    neuralworld play runs/doom              # http://127.0.0.1:8000/

``server.py`` holds the app (``create_app``) and ``serve``, ``player.py`` one connection,
``protocol.py`` the checks every client message passes, ``worlds.py`` which world opens;
``export.py`` writes the static web export and ``static_server.py`` serves one; ``static/``
the page (plain HTML, JS and CSS: no build step, nothing fetched from the network).
"""

from neuralworld.play.server import PlayConfig, PlayError, create_app, resolve_world, serve

__all__ = ["PlayConfig", "PlayError", "create_app", "resolve_world", "serve"]
