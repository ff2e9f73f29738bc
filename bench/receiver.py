"""A webhook receiver on 127.0.0.1 for benchmarks and tests: every POST goes to a callback.

The callback gets the request headers and body and returns the HTTP status to answer; the receiver
itself only serves (a thread per request), so each user keeps its own bookkeeping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OnPost = Callable[[dict[str, str], bytes], int]


class LoopbackReceiver:
    """Serve ``POST /hooks`` on a free loopback port until ``close``; ``url`` is where to send."""

    def __init__(self, on_post: OnPost) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(on_post(dict(self.headers.items()), body))
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
