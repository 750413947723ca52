"""A fake EC2 instance metadata service (IMDSv2) on 127.0.0.1, for the spot watcher's tests
(``tests/test_spot.py``) and the preemption test that notifies through the watcher."""

from __future__ import annotations

import json
import secrets
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from orchestrator import spot


class FakeIMDS:
    """IMDSv2 as EC2 serves it, for the paths the watcher uses. ``notice`` (a dict, or
    None for 404) is what instance-action answers; ``mode`` makes every GET fail instead:
    "500", "garbage" (200 with a body that is not JSON), "hang-up" (the connection closes
    without an answer)."""

    def __init__(self):
        self.notice: dict | None = None
        self.mode = "ok"
        self.tokens: set[str] = set()
        self.token_ttls: list[int] = []  # the TTL of each token asked for
        self.gets = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_PUT(self):
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if self.path != spot.TOKEN_PATH or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    return self._answer(400, b"")
                token = secrets.token_urlsafe(16)
                fake.tokens.add(token)
                fake.token_ttls.append(int(ttl))
                self._answer(200, token.encode())

            def do_GET(self):
                fake.gets += 1
                if self.headers.get("X-aws-ec2-metadata-token") not in fake.tokens:
                    return self._answer(401, b"")
                if fake.mode == "hang-up":
                    self.close_connection = True
                    return
                if fake.mode == "500":
                    return self._answer(500, b"Internal Server Error")
                if fake.mode == "garbage":
                    return self._answer(200, b"<html>captive portal</html>")
                if self.path != spot.NOTICE_PATH or fake.notice is None:
                    return self._answer(404, b"Not Found")
                self._answer(200, json.dumps(fake.notice).encode())

            def _answer(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def set_notice(self, action: str, when: datetime) -> None:
        self.notice = {"action": action, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def close(self):
        self.server.shutdown()
        self.server.server_close()
