"""The download and hash routes against a hostile Hub mirror and a hostile web page, in a real ComfyUI.

The server gets HF_TOKEN (shaped like a real token) and HF_ENDPOINT pointing at tests/fake_hub.py, which serves
the pack's table names with a mirror's tricks: a body that runs past its listed size, a listing without size or
hash (and a body that ends early), an error answer echoing the Authorization header, a '..' path. The web page
is played by requests with the headers browsers send (Origin: null, Sec-Fetch-Site: cross-site, text/plain).
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys

import pytest

import tiny_models as tm
from fake_hub import FakeHub

from .comfy_harness import PACK_ROOT, start_server
from .dpir_env import SPEC

TOKEN = "hf_" + "Kx9" * 11 + "q"  # shaped like a real token; never valid anywhere


def publish_hostile(hub: FakeHub, root):
    t5 = tm.write_t5_file(root / "t5" / "t5xxl_fp16.safetensors", SPEC)
    hub.add_repo("comfyanonymous/flux_text_encoders", {"t5xxl_fp16.safetensors": t5},
                 knobs={"t5xxl_fp16.safetensors": {"bare": True}})
    g = root / "g"
    tm.write_clip_vision_file(g / "clip_vision_g.safetensors", SPEC, which=2)
    (g / "clip_vision_g.json").write_text(tm.clip_vision_config(SPEC, 2).to_json_string())
    hub.add_folder("comfyanonymous/clip_vision_g", g,
                   knobs={"clip_vision_g.safetensors": {"flood": 128 * 2**20}})
    b32 = root / "b32"
    tm.write_clip_vision_file(b32 / "model.safetensors", SPEC, which=1)
    (b32 / "config.json").write_text(tm.clip_vision_config(SPEC, 1).to_json_string())
    hub.add_folder("openai/clip-vit-base-patch32", b32, echo_auth=True)
    dpir = root / "dpir"
    tm.write_transformer_file(dpir / "dpir_transformer.safetensors", SPEC)
    hub.add_repo("DehongKong/dpir", {"../../../../../../escape/dpir_transformer.safetensors":
                                     dpir / "dpir_transformer.safetensors"})


@pytest.fixture(scope="module")
def hostile(comfyui_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_hub")
    with FakeHub(token=TOKEN) as hub:
        publish_hostile(hub, root)
        env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(root / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1",
                   HF_TOKEN=TOKEN)
        server = start_server(comfyui_path, tmp_path_factory.mktemp("hostile_base"), env=env)
        try:
            yield server, hub
        finally:
            server.stop()


def raw(server, path, body: bytes, headers: dict, method="POST"):
    """(status, JSON or text) of a request with exactly these headers (what a browser on another page sends)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
    try:
        conn.request(method, path, body=body, headers={"Host": f"{server.host}:{server.port}", **headers})
        r = conn.getresponse()
        data = r.read()
    finally:
        conn.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, data.decode(errors="replace")


def download(server, kinds, events: list | None = None):
    """POST /dpir/download as the frontend does, collecting the websocket's dpir.download events."""
    import aiohttp

    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"{server.url}/ws?clientId=hostile") as ws:
                task = asyncio.ensure_future(s.post(f"{server.url}/dpir/download", json={"kinds": kinds},
                                                    timeout=aiohttp.ClientTimeout(total=600)))
                while not task.done():
                    try:
                        msg = await ws.receive(timeout=0.2)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        event = json.loads(msg.data)
                        if event.get("type") == "dpir.download" and events is not None:
                            events.append(event)
                r = await task
                body = await r.json()
                for _ in range(10):  # the 'finished' event follows the answer closely
                    try:
                        msg = await ws.receive(timeout=0.5)
                    except asyncio.TimeoutError:
                        break
                    if msg.type == aiohttp.WSMsgType.TEXT and events is not None:
                        event = json.loads(msg.data)
                        if event.get("type") == "dpir.download":
                            events.append(event)
                return r.status, body

    return asyncio.run(go())


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


# --------------------------------------------------------------------------- the mirror


def test_a_body_past_its_listed_size_is_cut_and_nothing_kept(hostile):
    server, hub = hostile
    status, answer = download(server, ["clip_vision_summary"])
    assert status == 200
    r = answer["results"]["clip_vision_summary"]
    assert not r["ok"] and "sent more than the" in r["error"] and "nothing of it was kept" in r["error"], r
    sent = hub.repos["comfyanonymous/clip_vision_g"].files["clip_vision_g.safetensors"].sent
    assert sent < 32 * 2**20, f"the mirror got {sent} bytes out"  # 128 MiB + were on offer
    assert "clip_vision_g.safetensors" not in server.models("clip_vision")
    assert not [p for p in files_under(server.models_dir) if "clip_vision_g" in p], files_under(server.models_dir)


def test_an_unverifiable_file_is_refused_and_never_lands(hostile):
    server, hub = hostile
    status, answer = download(server, ["t5xxl"])
    assert status == 200
    r = answer["results"]["t5xxl"]
    assert not r["ok"], r
    assert "t5xxl_fp16.safetensors" in r["error"] and hub.url in r["error"] and "without a size and a hash" in r["error"]
    assert not hub.touched("t5xxl_fp16.safetensors")  # refused from the listing, before any transfer
    assert "t5xxl_fp16.safetensors" not in server.models("text_encoders")
    assert not [p for p in files_under(server.models_dir) if "t5xxl" in p]


def test_the_token_never_shows_in_answers_events_logs_or_cli(hostile):
    server, hub = hostile
    events: list = []
    status, answer = download(server, ["clip_vision_local"], events)
    assert status == 200
    r = answer["results"]["clip_vision_local"]
    assert not r["ok"] and "500" in r["error"], r
    assert any(h.get("authorization") == f"Bearer {TOKEN}" for h in hub.headers)  # the mirror got it and echoed it
    assert any("finished" in e.get("data", {}) for e in events), events
    for where, text in (("answer", json.dumps(answer)), ("events", json.dumps(events)), ("log", server.log_text())):
        assert TOKEN not in text and "Kx9Kx9" not in text and "Bearer hf_" not in text, f"token in the {where}"
    # cli.py passes the server's answers on: its output holds no token either
    env = {**os.environ, "HF_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    run = subprocess.run([sys.executable, str(PACK_ROOT / "cli.py"), "--download", "--server", server.url],
                         env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert run.returncode == 2 and "clip_vision_local: FAILED" in run.stderr, run.stderr[-3000:]
    out = run.stdout + run.stderr
    assert TOKEN not in out and "Kx9Kx9" not in out and "Bearer hf_" not in out, out[-3000:]


def test_a_path_out_of_the_folder_is_refused_by_the_pack(hostile):
    server, hub = hostile
    status, answer = download(server, ["dpir_transformer"])
    r = answer["results"]["dpir_transformer"]
    assert status == 200 and not r["ok"] and "refusing it: it has an empty, '.' or '..' part" in r["error"], r
    assert not hub.touched("escape")  # the library never got the path: no HEAD, no GET
    assert not [p for p in files_under(server.base_dir.parent) if "escape" in p]


# --------------------------------------------------------------------------- the web page


JSON = {"Content-Type": "application/json"}
KINDS = json.dumps({"kinds": ["t5xxl"]}).encode()


@pytest.mark.parametrize("route", ["/dpir/download", "/dpir/model_hashes"])
@pytest.mark.parametrize("headers,status", [
    ({"Content-Type": "text/plain", "Origin": "null"}, 415),  # a sandboxed iframe's simple POST
    ({"Content-Type": "text/plain"}, 415),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ({}, 415),
    ({**JSON, "Origin": "null"}, 403),
    ({**JSON, "Sec-Fetch-Site": "cross-site"}, 403),
    ({**JSON, "Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"}, 403),
    ({**JSON, "Origin": "http://evil.example"}, 403),  # ComfyUI's own check refuses this one already
    ({**JSON, "Origin": "http://evil.example", "Host": "192.168.1.20:8188"}, 403),  # ... but not on a LAN address
])
def test_cross_site_requests_are_refused(hostile, route, headers, status):
    server, hub = hostile
    n = len(hub.requests)
    got, answer = raw(server, route, KINDS if route == "/dpir/download" else b'{"t5xxl": "x"}', headers)
    assert got == status, answer
    assert len(hub.requests) == n


def test_same_origin_and_local_tools_pass(hostile):
    server, hub = hostile
    me = f"http://{server.host}:{server.port}"
    body = b'{"t5xxl": "not-there.safetensors"}'  # passes the guard, then fails validation: 400, not 403/415
    for headers in ({**JSON, "Origin": me, "Sec-Fetch-Site": "same-origin"},  # the frontend
                    {"Content-Type": "application/json; charset=utf-8", "Origin": me},
                    {**JSON, "Origin": f"http://localhost:{server.port}", "Host": f"localhost:{server.port}"},
                    JSON):  # cli.py: no Origin
        got, answer = raw(server, "/dpir/model_hashes", body, headers)
        assert got == 400 and "not a file the loaders list" in answer["error"], (headers, answer)


# --------------------------------------------------------------------------- the hash route


def test_hash_route_hashes_only_listed_regular_files_inside(hostile, tmp_path):
    server, _ = hostile
    dpir = server.models_dir / "dpir"
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"not yours")
    tm.write_transformer_folder(dpir / "transformer", SPEC)
    os.symlink(outside, dpir / "transformer" / "leak.bin")  # a link beside a listed file, to outside
    tm.write_transformer_file(dpir / "mine.safetensors", SPEC)
    os.symlink(outside, dpir / "linked.safetensors")  # a listed name that is a link to outside
    os.symlink(dpir / "mine.safetensors", dpir / "alias.safetensors")  # a link that stays inside
    (dpir / "notes.json").write_text("{}")
    listed = server.get("/dpir/model_files")["listed"]["DPIRModelLoader"]
    assert {"mine.safetensors", "alias.safetensors", "linked.safetensors"} <= set(listed)

    def ask(name, kind="dpir_transformer"):
        return raw(server, "/dpir/model_hashes", json.dumps({kind: name}).encode(), JSON)

    for name in (".", "", "transformer", "transformer/", "./mine.safetensors", "notes.json", "../dpir/mine.safetensors",
                 str(dpir / "mine.safetensors"), "linked.safetensors", "transformer/leak.bin",
                 "transformer/diffusion_pytorch_model.safetensors"):
        status, answer = ask(name)
        assert status == 400 and "sha256" not in answer, (name, answer)
    status, answer = ask("alias.safetensors")
    assert status == 200 and answer["dpir_transformer"]["sha256"]["alias.safetensors"] == \
        __import__("hashlib").sha256((dpir / "mine.safetensors").read_bytes()).hexdigest()
    # a diffusers folder with a link to outside beside its files is refused as a whole
    index = [n for n in listed if n.startswith("transformer/")]
    assert index, listed
    status, answer = ask(index[0])
    assert status == 400 and "leak.bin" in answer["error"], answer
    (dpir / "transformer" / "leak.bin").unlink()
    status, answer = ask(index[0])
    assert status == 200 and "config.json" in answer["dpir_transformer"]["sha256"], answer
