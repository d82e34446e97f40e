"""Smoke test of the host harness: a real ComfyUI with this pack, core nodes only.

Nothing here needs the pack's own nodes (they may still be being written);
the workflows use core nodes that run on the CPU without model files.
"""
from __future__ import annotations

import io

import pytest

from .comfy_harness import PACK_NAME, ExecutionFailed, PromptRejected, png_size


def _ui(width=64, height=48, color=0xFF0000, method="bilinear", out_w=40, out_h=30, prefix="dpir_smoke"):
    """EmptyImage -> ImageScale -> ImageInvert -> SaveImage, as the editor saves it."""
    def node(nid, type, widgets, inputs=(), outputs=("IMAGE",)):
        return {"id": nid, "type": type, "pos": [nid * 250, 100], "size": [220, 100], "flags": {}, "order": nid,
                "mode": 0, "inputs": [{"name": n, "type": t, "link": l} for n, t, l in inputs],
                "outputs": [{"name": t, "type": t, "links": []} for t in outputs], "properties": {},
                "widgets_values": widgets}
    nodes = [
        node(1, "EmptyImage", [width, height, 1, color]),
        node(2, "ImageScale", [method, out_w, out_h, "disabled"], [("image", "IMAGE", 1)]),
        node(3, "ImageInvert", None, [("image", "IMAGE", 2)]),
        node(4, "SaveImage", [prefix], [("images", "IMAGE", 3)], outputs=()),
        {"id": 5, "type": "Note", "pos": [0, 0], "size": [200, 60], "flags": {}, "order": 0, "mode": 0,
         "inputs": [], "outputs": [], "properties": {}, "widgets_values": ["smoke test"]},
    ]
    links = [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"]]
    return {"last_node_id": 5, "last_link_id": 3, "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {}, "version": 0.4}


def test_server_is_up_and_pack_imports(comfy_server, object_info):
    stats = comfy_server.system_stats()
    assert stats["system"]["comfyui_version"], stats
    assert {"EmptyImage", "ImageScale", "ImageInvert", "SaveImage"} <= set(object_info)
    err = comfy_server.pack_import_error()
    assert err is None, f"{PACK_NAME} failed to import in ComfyUI:\n{err}"
    assert f"custom_nodes/{PACK_NAME}" in comfy_server.log_text()  # it was loaded, not skipped
    mine = {k for k, v in object_info.items() if PACK_NAME in str(v.get("python_module", ""))}
    for name in mine:  # whatever nodes exist so far must describe themselves
        assert object_info[name]["category"], name


def test_server_reports_the_pyproject_version(comfy_server):
    """The version the node registry publishes (pyproject.toml) is the one the running pack reports."""
    import tomllib

    from .comfy_harness import PACK_ROOT

    version = tomllib.loads((PACK_ROOT / "pyproject.toml").read_text())["project"]["version"]
    status, body = comfy_server.request("GET", "/dpir/model_files")
    assert status == 200 and body["version"] == version


def test_core_workflow_runs_and_saves_png(comfy_server, object_info, workflow_api):
    api = workflow_api.ui_to_api(_ui(), object_info)
    assert set(api) == {"1", "2", "3", "4"}
    entry = comfy_server.run(api, timeout=60)
    assert entry["status"]["status_str"] == "success"
    images = comfy_server.output_images(entry, "4")
    assert len(images) == 1 and images[0]["type"] == "output"
    assert images[0]["filename"].startswith("dpir_smoke")
    data = comfy_server.view(images[0]["filename"], images[0]["subfolder"], images[0]["type"])
    assert png_size(data) == (40, 30)
    assert (comfy_server.output_dir / images[0]["subfolder"] / images[0]["filename"]).is_file()
    Image = pytest.importorskip("PIL.Image")
    px = Image.open(io.BytesIO(data)).convert("RGB").getpixel((20, 15))
    assert px == (0, 255, 255)  # red, inverted


def test_bad_prompt_is_rejected_and_server_goes_on(comfy_server, object_info, workflow_api):
    bad = workflow_api.ui_to_api(_ui(method="no-such-method"), object_info)
    status, body = comfy_server.post_prompt(bad)
    assert status == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errs = body["node_errors"]["2"]
    assert errs["class_type"] == "ImageScale"
    assert [e["type"] for e in errs["errors"]] == ["value_not_in_list"]
    assert "upscale_method" in errs["errors"][0]["details"]
    with pytest.raises(PromptRejected, match=r"node 2 \(ImageScale\): value_not_in_list"):
        comfy_server.run(bad)
    # the server still serves the next prompt
    entry = comfy_server.run(workflow_api.ui_to_api(_ui(out_w=8, out_h=6, prefix="after_bad"), object_info))
    img = comfy_server.output_images(entry)[0]
    assert png_size(comfy_server.view(img["filename"], img["subfolder"])) == (8, 6)


def test_execution_error_names_the_node(comfy_server):
    """ImageToMask(alpha) on an RGB image passes validation and fails at run time."""
    api = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": "alpha"}},
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    with pytest.raises(ExecutionFailed, match=r"node 2 \(ImageToMask\) raised IndexError") as e:
        comfy_server.run(api, timeout=60)
    assert e.value.entry["status"]["status_str"] == "error"


def test_queue_interrupt_free(comfy_server):
    q = comfy_server.queue()
    assert set(q) == {"queue_running", "queue_pending"}
    comfy_server.interrupt()  # nothing running: harmless
    comfy_server.free(unload_models=True, free_memory=True)
    comfy_server.clear_queue()
    assert comfy_server.queue()["queue_pending"] == []


def test_model_files_reach_the_server(comfy_server, tmp_path):
    f = tmp_path / "dpir_dummy_upscaler.pth"
    f.write_bytes(b"not a model")
    comfy_server.add_model("upscale_models", f)
    assert "dpir_dummy_upscaler.pth" in comfy_server.models("upscale_models")
    spec = comfy_server.object_info("UpscaleModelLoader")["input"]["required"]["model_name"]
    choices = spec[0] if isinstance(spec[0], list) else spec[1]["options"]  # V1 list or V3 ("COMBO", {options})
    assert "dpir_dummy_upscaler.pth" in choices


def test_prepare_base_layout(tmp_path):
    """The base directory the server starts from (no host needed)."""
    from .comfy_harness import PACK_ROOT, prepare_base

    a, b = tmp_path / "a.safetensors", tmp_path / "b.bin"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    base = tmp_path / "base"
    yaml_path = prepare_base(base, models={"checkpoints": [a], "dpir": {"renamed.bin": b}}, inputs=[a],
                             extra_model_paths={"mine": {"base_path": str(tmp_path), "checkpoints": "."}})
    assert (base / "custom_nodes" / PACK_NAME).resolve() == PACK_ROOT
    assert (base / "models" / "checkpoints" / "a.safetensors").read_bytes() == b"a"
    assert (base / "models" / "dpir" / "renamed.bin").read_bytes() == b"b"
    assert (base / "input" / "a.safetensors").is_file()
    assert yaml_path == base / "extra_model_paths.yaml"
    assert "base_path" in yaml_path.read_text()
    assert prepare_base(tmp_path / "base2") is None
