"""The WebSocket protocol of ``neuralworld play``, checked: who may connect, what a
client message may hold, and the binary frame message (the protocol itself is
described in ``server.py``'s docstring).

Every check raises ``MessageError`` with a message for the client, so a bad message
of any shape gets an error reply and the connection plays on:

    * JSON: at most the server's message limit; nested too deeply, malformed, or not an
      object with a "type" is refused.
    * numbers: controls are checked against the ``ActionSpec``; integers too large for
      a float (a 401-digit ``1000...``) are refused, as is a "seq" beyond 2**53 (what a
      page's JavaScript can hold) or a "t" that is not a finite number.
    * start images: PNG or JPEG only; the size is read from the file's header and more
      than ``MAX_IMAGE_PIXELS`` is refused before anything is decoded. Decoding
      (``fit_start_image``) makes the frame the world plays from at once and keeps nothing
      else; the server runs it in a small thread pool of its own.
    * origins (``origin_allowed``): a page may open a session only from the player's own
      page or from an origin the user named (``--allow-origin``).
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import json
import math
import struct
import warnings
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np

from neuralworld.actions import ActionError, ActionSpec

MAX_IMAGE_PIXELS = 4096 * 4096
"""Largest start image decoded (16.8 megapixels): ~50 MB as 8-bit RGB while it is fitted.
The page shrinks an upload to a few times the world's size before it sends it."""
MAX_SEQ = 2**53
"""A "seq" is echoed in frame headers; beyond this a page's JavaScript number loses it."""
MESSAGE_TYPES = "action, reset, start_image, record or autopilot"


class MessageError(ValueError):
    """A client message the server will not act on; answered with {"type": "error"}."""


def _short(value: Any, limit: int = 40) -> str:
    """repr(value), cut to ``limit`` characters: never echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------
# messages
# ---------------------------------------------------------------------------
def parse_message(text: str, max_chars: int) -> dict[str, Any]:
    """Client text -> a JSON object with a string "type"; MessageError says why not."""
    if len(text) > max_chars:
        raise MessageError(f"message of {len(text)} bytes is over the limit of {max_chars} bytes")
    try:
        msg = json.loads(text)
    except RecursionError:  # the parser recursed once per level: 100,000 "[" end here
        raise MessageError("malformed JSON: nested too deeply (a message is one object, two levels at most)") from None
    except ValueError as e:  # also integers of more than 4300 digits
        raise MessageError(f"malformed JSON: {_short(str(e), 120)}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise MessageError(f'a message is a JSON object with a "type": {MESSAGE_TYPES}')
    return msg


def _number(what: str, v: Any) -> float:
    """A JSON number -> a float; MessageError for anything else, an int too large for a
    float included."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise MessageError(f"{what} must be a number, got {_short(v)}")
    try:
        return float(v)
    except OverflowError:
        raise MessageError(f"{what} is out of range: {_short(v)}") from None


def parse_action(spec: ActionSpec, msg: dict[str, Any]) -> np.ndarray:
    """{"buttons": {...}, "axes": {...}} -> a validated action vector; MessageError says why not."""
    buttons, axes = msg.get("buttons", {}), msg.get("axes", {})
    if not isinstance(buttons, dict) or not isinstance(axes, dict):
        raise MessageError('an action has "buttons" and "axes" objects, e.g. {"buttons": {"forward": 1}, "axes": {"turn": 0}}')
    axis_names = [a.name for a in spec.axes]
    values: dict[str, float] = {}
    for group, plural, given, known in (("button", "buttons", buttons, spec.buttons), ("axis", "axes", axes, axis_names)):
        for name, v in given.items():
            if name not in known:
                raise MessageError(f"unknown {group} {_short(name)}; this world's {plural} are {list(known)}")
            if isinstance(v, bool) and group == "button":
                v = float(v)
            values[name] = _number(f"{group} {name!r}", v)
    try:
        return spec.make(values)
    except ActionError as e:
        raise MessageError(str(e)) from None


def parse_echo(msg: dict[str, Any]) -> tuple[int | None, float | None]:
    """An action's "seq" and "t", echoed in the frame made with it: (seq, t), either None
    when absent; MessageError when present and not an integer within 2**53 / a finite number."""
    seq, t = msg.get("seq"), msg.get("t")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or abs(seq) > MAX_SEQ):
        raise MessageError(f'"seq" must be an integer within +-2**53, got {_short(seq)}')
    if t is not None:
        t = _number('"t"', t)
        if not math.isfinite(t):
            raise MessageError(f'"t" must be a finite number, got {t}')
    return seq, t


def parse_seed(seed: Any) -> int | None:
    """A reset's optional "seed": None (the noise stream goes on) or an int in [0, 2**63)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise MessageError(f'reset "seed" must be an integer from 0 to 2**63 - 1, got {_short(seed)}')
    return seed


# ---------------------------------------------------------------------------
# start images
# ---------------------------------------------------------------------------
def read_start_image(data: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[bytes, tuple[int, int]]:
    """A start_image's "data" (base64 PNG/JPEG, a data: URL allowed) -> (the file's bytes,
    its (height, width) as its header says), without decoding a pixel; MessageError for
    anything that is not a PNG or JPEG of at most ``max_pixels``."""
    from PIL import Image

    if not isinstance(data, str) or not data:
        raise MessageError('start_image needs "data": a base64 PNG or JPEG')
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MessageError("start_image data is not valid base64") from None
    limit = f"the limit of {max_pixels:,} pixels ({math.isqrt(max_pixels)}x{math.isqrt(max_pixels)}): send a smaller image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own budget is far lower
            with Image.open(io.BytesIO(raw), formats=("PNG", "JPEG")) as im:  # reads the header only
                w, h = im.size
    except Image.DecompressionBombError:  # Pillow's own guard, far above ours, says no size
        raise MessageError(f"start_image of more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels is over {limit}") from None
    except Exception:  # Pillow raises many kinds for a file it cannot read
        raise MessageError("start_image data does not decode as an image (send a PNG or JPEG)") from None
    if w * h > max_pixels:
        raise MessageError(f"start_image of {w}x{h} pixels is over {limit}")
    return raw, (h, w)


def fit_start_image(raw: bytes, resolution: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    """A PNG/JPEG already checked by ``read_start_image`` -> (uint8 RGB frame fitted to
    ``resolution`` as a session fits it, or the whole image for None; the decoded (h, w)).
    The full-size decode is dropped before this returns."""
    from neuralworld.session import fit_frame

    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) if raw else None
    if img is None:
        raise MessageError("start_image data does not decode as an image (send a PNG or JPEG)")
    size = img.shape[:2]
    if resolution is not None:
        img = fit_frame(img, resolution)  # BGR throughout: resizing treats channels alike
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)), size


def decode_image(data: Any, resolution: tuple[int, int] | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Base64 PNG/JPEG (or a data: URL) -> uint8 RGB (h, w, 3), fitted to ``resolution``
    when one is given; both checks and the decode, in the caller's thread."""
    raw, _ = read_start_image(data, max_pixels)
    return fit_start_image(raw, resolution)[0]


# ---------------------------------------------------------------------------
# origins
# ---------------------------------------------------------------------------
def normalize_origin(url: str) -> str:
    """"HTTP://Example.org:8080/" -> "http://example.org:8080" (an origin as browsers send
    it); ValueError for what is not an http(s) origin."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"not an origin: {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"an origin looks like http://host:port (scheme, host and port only), got {url!r}")
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def _is_local_name(host: str) -> bool:
    """An IP literal or "localhost": names no other site's page can have (DNS rebinding
    needs a domain name)."""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def origin_allowed(origin: str | None, host_header: str | None, allowed: tuple[str, ...] | frozenset[str] = ()) -> bool:
    """Whether a WebSocket with this Origin header may play.

    * no Origin: yes. Browsers always send one, so this is a program on this machine or
      the network (a script, the tests' client), which an Origin check cannot stop anyway.
    * the page's own origin: the Origin names the host:port the request was sent to (its
      Host header), and that host is an IP literal or "localhost" (127.0.0.1, [::1], a
      LAN address with --host 0.0.0.0). A domain name is refused even when it matches,
      so a site that rebinds its name to 127.0.0.1 cannot pass as the page.
    * an origin in ``allowed`` (normalised, from --allow-origin).
    """
    if origin is None:
        return True
    try:
        origin = normalize_origin(origin)
    except ValueError:
        return False  # "null" (a file: page, a sandboxed frame) and anything odd
    if origin in allowed:
        return True
    if not host_header:
        return False
    try:
        own = {normalize_origin(f"{scheme}://{host_header}") for scheme in ("http", "https")}
    except ValueError:  # a malformed Host
        return False
    return origin in own and _is_local_name(urlsplit(origin).hostname or "")


# ---------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------
def pack_frame(header: dict[str, Any], jpeg: bytes) -> bytes:
    """The binary frame message: uint32 LE header length, JSON header, JPEG."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + jpeg


def unpack_frame(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Inverse of ``pack_frame`` (for clients and tests)."""
    (n,) = struct.unpack_from("<I", data)
    return json.loads(data[4 : 4 + n]), data[4 + n :]
