"""POST /dpir/download in a real ComfyUI: from no models to a restored photo, against a Hub on 127.0.0.1.

The server starts with HF_ENDPOINT pointing at tests/fake_hub.py, which serves tiny repositories under the
names of the pack's table (MODEL_FILES): the DPIR release as diffusers folders, the gated SD3 repository, the
two CLIP repositories. The route must refuse anything that is not a kind of that table.
"""
from __future__ import annotations

import json

import pytest

import tiny_models as tm
from fake_hub import FakeHub

from .comfy_harness import start_server
from .dpir_env import SPEC, api_of, saved_images, write_photo

KINDS = ["dpir_transformer", "robust_vae", "sd3_vae", "clip_vision_local", "clip_vision_summary", "t5_embedding"]


def publish(hub: FakeHub, root):
    dpir = root / "dpir"
    tm.write_transformer_folder(dpir / "checkpoints" / "transformer", SPEC)
    tm.write_vae_folder(dpir / "checkpoints" / "denoise_vae", SPEC, robust=True, full=True)
    tm.write_t5_embedding(dpir / "t5_prompt_embedding.safetensors", SPEC, prompt="a sharp photo")
    (dpir / "README.md").write_text("DPIR\n")
    hub.add_folder("DehongKong/dpir", dpir)
    sd3 = root / "sd3"
    tm.write_vae_folder(sd3 / "vae", SPEC, full=True)
    hub.add_folder("stabilityai/stable-diffusion-3-medium-diffusers", sd3, gated=True)
    for which, repo, files in ((1, "openai/clip-vit-base-patch32", ("model.safetensors", "config.json")),
                               (2, "comfyanonymous/clip_vision_g", ("clip_vision_g.safetensors", "clip_vision_g.json"))):
        folder = root / repo.replace("/", "_")
        tm.write_clip_vision_file(folder / files[0], SPEC, which=which)
        (folder / files[1]).write_text(tm.clip_vision_config(SPEC, which).to_json_string())
        hub.add_folder(repo, folder)


@pytest.fixture(scope="module")
def hub_server(comfyui_path, tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("hub")
    with FakeHub() as hub:
        publish(hub, root)
        env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(root / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
        server = start_server(comfyui_path, tmp_path_factory.mktemp("base"), env=env)
        try:
            yield server, hub
        finally:
            server.stop()


def model_files(server):
    return sorted(p.relative_to(server.models_dir).as_posix() for p in server.models_dir.rglob("*") if p.is_file())


@pytest.mark.parametrize("body", [
    {"kinds": ["../../../tmp/x"]},
    {"kinds": ["dpir_transformer"], "repo": "evil/weights"},
    {"kinds": ["sd3_vae"], "folder": "/tmp"},
    {"url": "http://127.0.0.1:1/x.safetensors", "kinds": ["t5xxl"]},
    {"kinds": "dpir_transformer"},
    {"kinds": []},
    {"kinds": [{"repo": "evil/weights"}]},
    ["dpir_transformer"],
])
def test_route_refuses_anything_outside_the_table(hub_server, body):
    server, hub = hub_server
    before = model_files(server)
    n = len(hub.requests)
    status, answer = server.request("POST", "/dpir/download", body)
    assert status == 400 and "error" in answer
    assert len(hub.requests) == n, "a refused request must not reach the Hub"
    assert model_files(server) == before
    status, answer = server.request("POST", "/dpir/model_hashes", {"sd3_vae": "../../main.py"})
    assert status == 400


def test_one_request_fetches_the_models_and_the_shipped_workflow_runs(hub_server, object_info, workflow_api, tmp_path):
    server, hub = hub_server
    assert "transformer/diffusion_pytorch_model.safetensors" not in server.models("dpir")
    status, answer = server.request("POST", "/dpir/download", {"kinds": KINDS}, timeout=600)
    assert status == 200, answer
    results = answer["results"]
    assert all(r["ok"] for r in results.values()), json.dumps(results, indent=1)
    # no token: the gated SD3 repository refuses, so the table's alternative (the robust VAE's full file) is used
    assert results["sd3_vae"]["repo"] == "DehongKong/dpir" and results["sd3_vae"]["names"] == ["sd3_vae.safetensors"]
    assert results["dpir_transformer"]["names"] == ["transformer/diffusion_pytorch_model.safetensors"]
    assert results["robust_vae"]["names"] == ["robust_vae/diffusion_pytorch_model.safetensors"]
    assert not any("README" in p for p in hub.downloads())
    assert "transformer/diffusion_pytorch_model.safetensors" in server.models("dpir")
    assert {"clip_vit_b32.safetensors", "clip_vision_g.safetensors"} <= set(server.models("clip_vision"))
    assert not [p for p in model_files(server) if ".dpir-download" in p]
    # the shipped workflow runs on exactly the downloaded files
    server.add_input(write_photo(tmp_path / "photo.png"))
    api = api_of("dpir_restore", server, object_info, workflow_api,
                 DPIRT5TextPrompt={"t5_embedding": results["t5_embedding"]["names"][0]})
    entry = server.run(api, timeout=600)
    [img] = saved_images(server, entry)
    assert img.shape == (54, 72, 3) and img.std() > 0
    # a second request finds everything in place
    n = len(hub.downloads())
    status, again = server.request("POST", "/dpir/download", {"kinds": KINDS}, timeout=600)
    assert status == 200 and not any(r["downloaded"] for r in again["results"].values())
    assert len(hub.downloads()) == n
    hashes = server.post("/dpir/model_hashes", {"robust_vae": "robust_vae/diffusion_pytorch_model.safetensors"})
    assert set(hashes["robust_vae"]["sha256"]) == {"config.json", "diffusion_pytorch_model.safetensors"}
