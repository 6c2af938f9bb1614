"""bench/peers/llama_server.py: finding a binary, its command line, and a start/stop lifecycle
with a stand-in binary that answers /health (no llama.cpp build needed)."""
from __future__ import annotations

import http.client
import sys
from pathlib import Path

import pytest

from bench.peers.llama_server import command, find_binary, shipped_gguf, start

FAKE = """#!{python}
import http.server, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _fake_binary(folder: Path) -> Path:
    path = folder / "llama-server"
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(0o755)
    return path


def test_command_line_has_the_slots_threads_and_context() -> None:
    cmd = command(Path("/b/llama-server"), Path("/m.gguf"), 8123, parallel=32, threads=2, ctx_per_slot=512)
    joined = " ".join(cmd)
    assert "--parallel 32" in joined and "--threads 2" in joined and "--ctx-size 16384" in joined
    assert "--host 127.0.0.1 --port 8123" in joined


def test_find_binary_prefers_the_explicit_one(tmp_path: Path) -> None:
    fake = _fake_binary(tmp_path)
    assert find_binary(str(fake)) == fake
    (tmp_path / "not-exec").write_text("")
    with pytest.raises(FileNotFoundError, match="README"):
        find_binary(str(tmp_path / "not-exec"), name="no-such-llama-tool")


def test_shipped_gguf_is_found_through_its_package() -> None:
    path = shipped_gguf()
    assert path.name.endswith("Q4_1.gguf") and path.is_file()


def test_start_waits_for_health_and_stops_the_server(tmp_path: Path) -> None:
    fake = _fake_binary(tmp_path)
    with start(fake, tmp_path / "m.gguf", timeout=20, log=tmp_path / "log") as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        port = int(url.split(":")[2].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
    with pytest.raises(OSError):  # stopped on exit
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/health")


def test_start_reports_a_server_that_dies(tmp_path: Path) -> None:
    dead = tmp_path / "dead"
    dead.write_text("#!/bin/sh\nexit 3\n")
    dead.chmod(0o755)
    with pytest.raises(RuntimeError, match="exited with 3"):
        with start(dead, tmp_path / "m.gguf", timeout=20):
            pass
