"""An HTTP server on 127.0.0.1 for the download and corpus tests: no network needed."""

from __future__ import annotations

import http.server
import threading
import time

#: path -> (HTTP status, Content-Type, body), optionally followed by a dict of extra headers
Routes = dict[str, tuple]


class LocalServer:
    """Serves fixed routes on a random port and logs every request as (path, User-Agent)."""

    def __init__(self, routes: Routes, delay_s: float = 0.0) -> None:
        self.routes = routes
        self.delay_s = delay_s
        self.log: list[tuple[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
                owner.log.append((self.path, self.headers.get("User-Agent", "")))
                time.sleep(owner.delay_s)
                status, content_type, body, *extra = owner.routes.get(self.path, (404, "text/plain", b"not found"))
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    for name, value in (extra[0] if extra else {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except ConnectionError:  # the client gave up first (the timeout test)
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.log]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
