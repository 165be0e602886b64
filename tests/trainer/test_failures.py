"""Failures the worker turns into an exit status of their own, because a retry would fail the
same way: wandb refusing the credentials (2, a bad configuration) and no room to save a
checkpoint (74). For real: a loopback server that answers 401 to everything, a small tmpfs."""

from __future__ import annotations

import http.server
import os
import threading

import pytest

from support import tmpfs


class Refuses(http.server.BaseHTTPRequestHandler):
    def answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"errors": [{"message": "user is not logged in"}]}')

    do_GET = do_POST = do_PUT = answer

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_wandb_refusing_the_credentials_is_a_bad_configuration(worker, refusing_server):
    run = worker.run("wandb401", "wandb.enabled=true", "wandb.mode=online", expect=2,
                     env={"WANDB_BASE_URL": refusing_server, "WANDB_API_KEY": "k" * 40,
                          "WANDB_MODE": "online", "WANDB_ERROR_REPORTING": "false"})
    out = run.output()
    assert "error: wandb refused the credentials" in out and "wandb.mode=offline" in out
    assert "k" * 40 not in out


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "small", "8m") as mount:
        yield mount


def leave_free(directory, free: int) -> None:
    stat = os.statvfs(directory)
    with open(directory / "filler", "wb") as handle:
        handle.write(b"\0" * (stat.f_bavail * stat.f_frsize - free))


def test_no_room_for_a_checkpoint_is_exit_74_with_the_path_and_the_free_space(worker, small_disk):
    sizer = worker.run("sizer", max_steps=4)  # how large one checkpoint of this model is
    size = (sizer.run_dir / "checkpoints" / "ep0-ba4-rank0.pt").stat().st_size
    leave_free(small_disk, size + size // 2)  # room for the first save, not the second
    run = worker.run("full", max_steps=12, run_dir=small_disk / "full", expect=74)
    out = run.output()
    folder = small_disk / "full" / "checkpoints"
    assert f"error: no space left to save a checkpoint in {folder}" in out
    assert f"on {small_disk} (tmpfs)" in out and "MiB free" in out
    assert os.readlink(folder / "latest-rank0.pt") == "ep0-ba4-rank0.pt"  # the last good one
