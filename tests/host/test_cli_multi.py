"""cli.py spreading one batch over several ComfyUI servers (--server given more than once).

Three real servers on tiny models (started by the harness, in parallel); the tests kill one (SIGKILL) or
stop one (SIGSTOP) while it holds an image, and check that every image is restored once, that the sidecars
are those of a one-server run, and the exit status. A watcher polls the output folder during the run and
records every file version it sees (inode, mtime): a second write of an output would show as a second one.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .comfy_harness import PACK_ROOT, free_port, load_compat
from .dpir_env import PROMPT_EMBEDDING, write_photo

SETTINGS = ["--long-side", "72", "--steps", "2", "--seed", "3", "--t5-embedding", PROMPT_EMBEDDING]


def start_cli(*args, log: Path) -> subprocess.Popen:
    """cli.py in the background; its stderr goes to ``log`` (read while it runs)."""
    return subprocess.Popen([sys.executable, str(PACK_ROOT / "cli.py"), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return log.read_text(errors="replace")


class Writes:
    """Every version (inode, mtime_ns) of every file under ``folder``, polled while the batch runs."""

    def __init__(self, folder: Path):
        self.folder, self.seen, self.stop = folder, {}, threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self):
        while not self.stop.is_set():
            self.look()
            time.sleep(0.01)

    def look(self):
        for p in self.folder.rglob("*") if self.folder.exists() else ():
            try:
                st = p.stat()
            except FileNotFoundError:  # a .part file renamed meanwhile
                continue
            self.seen.setdefault(p.relative_to(self.folder).as_posix(), set()).add((st.st_ino, st.st_mtime_ns))

    def close(self) -> dict[str, int]:
        self.stop.set()
        self.thread.join()
        self.look()
        return {k: len(v) for k, v in self.seen.items() if not k.endswith(".part") and "/." not in "/" + k}


def wait_running(server, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Return as soon as ``server`` runs a prompt (one of the batch's images)."""
    deadline = time.monotonic() + timeout
    while not server.queue()["queue_running"]:
        assert proc.poll() is None and time.monotonic() < deadline, f"{server.url} never ran a prompt"
        time.sleep(0.01)


def wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"cli.py ended before {text!r}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in cli.py's output"
        time.sleep(0.05)


def sidecars(folder: Path) -> dict[str, dict]:
    """rel path → sidecar, its 'output' field made relative to ``folder`` (the folders differ by run)."""
    out = {}
    for p in sorted(folder.rglob("*.json")):
        side = json.loads(p.read_text())
        side["output"] = Path(side["output"]).relative_to(folder).as_posix()
        out[p.relative_to(folder).as_posix()] = side
    return out


def uploaded_name(photo: Path) -> str:
    """The name cli.py uploads a (8-bit RGB) photo under: its content hash and its name."""
    return f"{hashlib.sha256(photo.read_bytes()).hexdigest()[:12]}_{photo.name}"


@pytest.fixture(scope="module")
def servers(start_server, dpir_models):
    """Three servers on the same tiny model set, started side by side."""
    load_compat()  # once, before the threads: the harness's lazy load is not thread-safe
    with ThreadPoolExecutor(3) as pool:
        return list(pool.map(lambda _: start_server(extra_model_paths=dpir_models, fresh=True), range(3)))


def photos(folder: Path, n: int, seed: int) -> list[Path]:
    return [write_photo(folder / f"photo{i}.png", 80, 60, seed=seed + i) for i in range(n)]


def test_a_server_killed_mid_batch_hands_its_image_to_the_others(servers, tmp_path):
    a, b, c = servers
    src = tmp_path / "album"
    photos(src, 4, seed=10)  # one each, and one more for whoever is free first
    out, log = tmp_path / "restored", tmp_path / "cli.log"
    writes = Writes(out)
    proc = start_cli(src, "-o", out, "--server", a.url, "--server", b.url, "--server", c.url,
                     "--server-timeout", "300", *SETTINGS, log=log)  # the kill closes the websocket: no timeout needed
    wait_running(a, proc)
    os.kill(a.proc.pid, signal.SIGKILL)  # it holds an image: nothing of it can come back now
    a.proc.wait(timeout=30)
    text = finish(proc, log)
    versions = writes.close()
    assert proc.returncode == 0, text[-4000:]
    assert "restored 4, skipped 0 (output exists; --overwrite to redo), failed 0" in text, text[-3000:]
    name = a.url.split("://")[1]
    assert f"{name} dropped from the batch: " in text, text[-3000:]
    summary = text[text.rindex("servers:"):]
    line_a = next(l for l in summary.splitlines() if l.strip().startswith(name))
    assert "restored 0, then dropped" in line_a and "re-queued on the others: photo" in line_a, summary
    counts = [int(l.split("restored ")[1].split(",")[0]) for l in summary.splitlines()[1:4]]
    assert sum(counts) == 4, summary
    # every image restored exactly once: one version of each output and of each sidecar
    assert versions == {f"photo{i}.{ext}": 1 for i in range(4) for ext in ("png", "json")}, versions

    # a one-server run of the same batch gives the same sidecars (settings, seed, workflow, prompt, model
    # hashes, input size, pack version: every field; 'output' compared relative to the output folder)
    alone = tmp_path / "alone"
    one = finish(start_cli(src, "-o", alone, "--server", c.url, *SETTINGS, log=tmp_path / "alone.log"),
                 tmp_path / "alone.log")
    assert "restored 4," in one and "servers:" not in one, one[-3000:]
    assert sidecars(out) == sidecars(alone)
    for i in range(4):  # and the same pixels (the same CPU, seed and models on every server)
        same = np.asarray(Image.open(out / f"photo{i}.png")), np.asarray(Image.open(alone / f"photo{i}.png"))
        assert same[0].shape == (54, 72, 3) and np.array_equal(*same), i


def test_a_server_that_stops_answering_is_dropped_and_its_late_result_ignored(servers, tmp_path):
    _, b, c = servers
    src = tmp_path / "album"
    batch = photos(src, 3, seed=40)  # new photos: nothing cached from the other test
    out, log = tmp_path / "restored", tmp_path / "cli.log"
    writes = Writes(out)
    proc = start_cli(src, "-o", out, "--server", b.url, "--server", c.url, "--server-timeout", "15", *SETTINGS,
                     log=log)
    wait_running(b, proc)
    os.kill(b.proc.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for(log, f"{b.url.split('://')[1]} dropped from the batch: it stopped answering (no reply in 15 s)", proc)
        waited = time.monotonic() - stopped
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)  # it wakes up and finishes the image it held: too late
    text = finish(proc, log)
    versions = writes.close()
    assert proc.returncode == 0, text[-4000:]
    assert 15 <= waited < 90, waited
    assert "restored 3, skipped 0" in text
    line = next(l for l in text[text.rindex("servers:"):].splitlines() if b.url.split("://")[1] in l)
    assert "then dropped: it stopped answering" in line, line
    requeued = [p for p in batch if p.name in line.split("re-queued on the others: ")[1].split(", ")]
    assert len(requeued) == 1, line
    # the stopped server did finish that image after it woke up ...
    deadline = time.monotonic() + 120
    while b.queue()["queue_running"] or b.queue()["queue_pending"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    late = [e for e in b.history().values()
            if any(n["class_type"] == "LoadImage" and n["inputs"]["image"].endswith(uploaded_name(requeued[0]))
                   for n in e["prompt"][2].values())]
    assert late and late[-1]["status"]["status_str"] == "success"
    # ... and yet every output and sidecar was written once
    assert versions == {f"photo{i}.{ext}": 1 for i in range(3) for ext in ("png", "json")}, versions
    assert all(json.loads((out / f"photo{i}.json").read_text())["settings"]["seed"] == 3 for i in range(3))


def test_all_servers_down_says_which_and_why(tmp_path):
    photo = write_photo(tmp_path / "photo.png")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with socket.socket() as mute:  # listens, never answers (a hung server)
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        hung = f"http://127.0.0.1:{mute.getsockname()[1]}"
        run = subprocess.run([sys.executable, str(PACK_ROOT / "cli.py"), str(photo), "-o", str(tmp_path / "out"),
                              "--server", dead, "--server", hung, "--server-timeout", "2"],
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "error: no ComfyUI server is left to restore the batch (1 image(s) not restored, 0 restored)" in run.stderr
    for url, why in ((dead, "connection refused"), (hung, "timed out")):
        assert f"- {url.split('://')[1]}: ComfyUI at {url} did not answer within 2 s ({why})" in run.stderr
    assert not (tmp_path / "out").exists()
