"""Kill -9 of `llmaas gateway` under load: every request whose answer reached its client has its
ledger row (the row is durable before the answer's last byte)."""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.tenancy import Tenancy
from tests.ports import free_port, wait_port

MODEL = "smollm2:135m"






def client_loop(port: int, key: str, prefix: str, completed: list[str], stop: threading.Event) -> None:
    """Sends requests one after another until the gateway dies; records the ids answered in full."""
    i = 0
    while not stop.is_set():
        request_id = f"{prefix}-{i}"
        stream = i % 2 == 1
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say ok."}],
                           "max_tokens": 1, "stream": stream}, separators=(",", ":"))
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/v1/chat/completions", body, {"authorization": f"Bearer {key}",
                                                                 "x-request-id": request_id,
                                                                 "content-type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            conn.close()
        except (OSError, http.client.HTTPException):
            return  # the gateway is gone
        assert response.status == 200, data
        if not stream or data.rstrip().endswith(b"data: [DONE]"):
            completed.append(request_id)
        i += 1


@pytest.mark.parametrize("lane", [False, True], ids=["python", "native-lane"])
def test_kill_9_under_load_loses_no_completed_request(tmp_path: Path, lane: bool) -> None:
    """With prompt security on, the Python server serves every request; with it off, the native
    lane serves the whole answers (journaling their usage itself) and Python the streams."""
    db = tmp_path / "llmaas.db"
    tenancy = Tenancy.open(str(db))
    key, _ = tenancy.tokens.create("durable", "premium")
    tenancy.close()
    backend_port, gateway_port = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    security = "" if not lane else "[security]\nenabled = false\n"
    config.write_text(f'[server]\nport = {gateway_port}\n[tenancy]\ndb = "{db}"\n{security}'
                      f'[[models]]\nname = "{MODEL}"\nhosts = ["http://127.0.0.1:{backend_port}"]\n')
    backend = subprocess.Popen([sys.executable, "-m", "bench.instant_backend", "--port", str(backend_port)])
    banner = tmp_path / "gateway.out"
    with banner.open("wb") as out:
        gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "gateway", "--config", str(config)],
                                   stdout=out, env={**os.environ, "LLMAAS_DB_SYNC": "NORMAL"})
    try:
        wait_port(backend_port)
        wait_port(gateway_port)
        completed: list[str] = []
        stop = threading.Event()
        clients = [threading.Thread(target=client_loop, args=(gateway_port, key, f"c{n}", completed, stop))
                   for n in range(6)]
        for c in clients:
            c.start()
        deadline = time.monotonic() + 30
        while len(completed) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        stop.set()
        for c in clients:
            c.join(15)
    finally:
        gateway.kill()
        backend.kill()
        backend.wait(10)
    assert len(completed) >= 150
    assert ("native lane: on" in banner.read_text()) == lane
    reopened = Tenancy.open(str(db))  # as the next gateway would: the lane's journal is recorded then
    try:
        recorded = {row.request_id for row in reopened.store.usage("durable", since=0.0)}
        assert reopened.audit.verify() == []
    finally:
        reopened.close()
    missing = [rid for rid in completed if rid not in recorded]
    assert not missing, f"{len(missing)} answered requests have no ledger row: {missing[:5]}"
