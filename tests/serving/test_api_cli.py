"""`dcoder serve` as a user runs it: a subprocess on loopback, key from a file; bad input is one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx

from dcoder.cli import main


def test_serve_rejects_a_missing_model_dir_in_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a directory" in err


def test_serve_rejects_an_empty_key_file(tmp_path, capsys, model_dirs):
    (tmp_path / "key").write_text("\n")
    assert main(["serve", str(model_dirs["ar"]), "--api-key-file", str(tmp_path / "key")]) == 2
    assert "API key" in capsys.readouterr().err


def test_dcoder_serve_subprocess_with_key_file(tmp_path, model_dirs):
    (tmp_path / "key").write_text("s3cret-key\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dcoder.cli", "serve", str(model_dirs["ar"]), "--port", str(port),
             "--api-key-file", str(tmp_path / "key"), "--max-batch", "2"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        body = {"input_prefix": "def f():\n", "n_predict": 4}
        assert httpx.post(f"{base}/infill", json=body).status_code == 401
        r = httpx.post(f"{base}/infill", json=body, headers={"Authorization": "Bearer s3cret-key"}, timeout=30)
        assert r.status_code == 200 and r.json()["tokens_predicted"] <= 4
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "s3cret-key" not in log.read_text()  # the key never reaches the log
    assert '"input_prefix"' not in log.read_text()  # nor do request bodies
