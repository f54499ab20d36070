"""The export server: a folder from ``neuralworld export --web`` served over HTTP by
the standard library, as ``neuralworld play EXPORT_DIR`` does.

What it serves, and what not:
    * regular files under the folder, by their path: "/" and a folder's "/" give its
      index.html; a path through a symlink is not followed, even one that points back
      into the folder (an export is written with copies only).
    * no directory listings: a folder without index.html is a 404.
    * a bad path (a NUL byte, broken percent-encoding) is a 400 error page, a missing
      or refused one a 404 page; no request ends in a dropped connection.
    * every response says ``X-Content-Type-Options: nosniff``, with the content type
      of the page's files fixed here (never guessed from the system's mime table).
"""

from __future__ import annotations

import email.utils
import functools
import http.server
import os
import stat
import threading
import urllib.parse
from http import HTTPStatus
from typing import Any


class StaticServer:
    """A folder served by ``http.server`` on 127.0.0.1 from a thread, as any static
    server would (``port`` 0: a free one). ``isolated`` adds the two headers that make
    the page cross-origin isolated (COOP ``same-origin``, COEP ``require-corp``), which
    lets onnxruntime-web run WebAssembly threads; without them the page uses one.

        with StaticServer(folder) as server:
            open(server.url)
    """

    def __init__(self, folder: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 0, isolated: bool = False):
        handler = functools.partial(FolderHandler, directory=str(folder), isolated=isolated)
        self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "StaticServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class BadPath(ValueError):
    """A request path that names no file of the folder; ``status`` says which error page."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class FolderHandler(http.server.SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` with its path handling replaced (``send_head``): regular
    files under the folder only, no listings, error pages for bad paths, nosniff."""

    extensions_map = {
        ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
        ".json": "application/json", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
        ".bin": "application/octet-stream", "": "application/octet-stream",
    }  # fmt: skip

    def __init__(self, *args: Any, directory: str, isolated: bool = False, **kwargs: Any):
        self.isolated = isolated
        super().__init__(*args, directory=os.path.realpath(directory), **kwargs)

    def log_message(self, *args: Any) -> None:
        pass

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.isolated:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def resolve(self, url_path: str) -> str:
        """The request's path -> the real path of a regular file under the folder; BadPath
        otherwise (a folder given without its trailing "/" raises it with MOVED_PERMANENTLY)."""
        path = urllib.parse.urlsplit(url_path).path
        try:
            path = urllib.parse.unquote(path, errors="strict")
        except UnicodeDecodeError:
            raise BadPath(HTTPStatus.BAD_REQUEST, "Bad path: not UTF-8") from None
        if "\x00" in path or "\\" in path:
            raise BadPath(HTTPStatus.BAD_REQUEST, "Bad path")
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise BadPath(HTTPStatus.NOT_FOUND, "File not found")
        target = os.path.join(self.directory, *parts)
        if os.path.realpath(target) != target:  # a symlink on the way (or the folder is gone)
            raise BadPath(HTTPStatus.NOT_FOUND, "File not found")
        try:
            mode = os.lstat(target).st_mode
        except OSError:
            raise BadPath(HTTPStatus.NOT_FOUND, "File not found") from None
        if stat.S_ISDIR(mode):
            if not path.endswith("/"):
                raise BadPath(HTTPStatus.MOVED_PERMANENTLY, path + "/")
            target = os.path.join(target, "index.html")
            try:
                mode = os.lstat(target).st_mode
            except OSError:
                raise BadPath(HTTPStatus.NOT_FOUND, "File not found") from None
        if not stat.S_ISREG(mode):  # a symlinked index.html, a socket, a device
            raise BadPath(HTTPStatus.NOT_FOUND, "File not found")
        return target

    def send_head(self) -> Any:
        try:
            path = self.resolve(self.path)
        except BadPath as e:
            if e.status == HTTPStatus.MOVED_PERMANENTLY:
                self.send_response(e.status)
                self.send_header("Location", urllib.parse.quote(str(e)))
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_error(e.status, str(e))
            return None
        try:
            f = open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW))
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        try:
            fs = os.fstat(f.fileno())
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-type", self.guess_type(path))
            self.send_header("Content-Length", str(fs.st_size))
            self.send_header("Last-Modified", email.utils.formatdate(fs.st_mtime, usegmt=True))
            self.end_headers()
            return f
        except BaseException:
            f.close()
            raise
