"""
A tiny HTTP file server on 127.0.0.1 that honours ``Range: bytes=N-`` and can
cut a transfer after a given number of bytes, to test resumed downloads.
Python's http.server does not do ranges.
"""

import http.server
import os
import re
import threading


class RangeServer:
    def __init__(self, root):
        self.root = str(root)
        self.requests = []  # (path, range header or None, status)
        self.cut_after = None  # bytes to send before dropping the connection, once
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 - http.server API
                path = os.path.join(server.root, self.path.lstrip("/"))
                rng = self.headers.get("Range")
                if not os.path.isfile(path):
                    server.requests.append((self.path, rng, 404))
                    self.send_error(404)
                    return
                size = os.path.getsize(path)
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if match:
                    start = int(match.group(1))
                    if start >= size:
                        server.requests.append((self.path, rng, 416))
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(200)
                server.requests.append((self.path, rng, 206 if match else 200))
                self.send_header("Content-Length", str(size - start))
                self.end_headers()
                budget, server.cut_after = server.cut_after, None
                with open(path, "rb") as fh:
                    fh.seek(start)
                    sent = 0
                    while block := fh.read(65536):
                        if budget is not None and sent + len(block) > budget:
                            self.wfile.write(block[: budget - sent])
                            self.wfile.flush()
                            self.connection.shutdown(2)
                            return
                        self.wfile.write(block)
                        sent += len(block)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        return False
