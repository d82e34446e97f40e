"""The shipped workflows carry ComfyUI's model metadata (node ``properties.models``) written from MODEL_FILES."""
import importlib.util
import json
import sys

from conftest import PACK_ROOT


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"dpir_{name}", PACK_ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(f"dpir_{name}", mod)
    spec.loader.exec_module(mod)
    return mod


def test_every_single_file_loader_links_its_model():
    files = _tool("model_table").load_model_files()
    links = {f["workflow"]["name"]: (f["workflow"]["url"], f["folder"]) for f in files.values() if f.get("workflow")}
    assert set(links) == {"sd3_vae.safetensors", "clip_vit_b32.safetensors", "clip_vision_g.safetensors",
                          "t5xxl_fp16.safetensors"}
    for path in sorted((PACK_ROOT / "workflows").rglob("dpir_*.json")):
        ui = json.loads(path.read_text())
        seen = set()
        for node in ui["nodes"]:
            values = [v for v in node.get("widgets_values", []) if isinstance(v, str)]
            models = node["properties"].get("models", [])
            # exactly the linked files among the widget values, as the frontend matches them (by name)
            assert sorted(m["name"] for m in models) == sorted(v for v in values if v in links), (path.name, node["type"])
            for m in models:
                assert (m["url"], m["directory"]) == links[m["name"]]
                assert m["url"].startswith("https://huggingface.co/") and "/resolve/main/" in m["url"]
                seen.add(m["name"])
        assert seen == set(links), path.name  # every shipped workflow names all four


def test_model_links_is_the_only_change_it_makes():
    tool = _tool("build_workflows")
    ui = {"nodes": [{"type": "VAELoader", "properties": {"Node name for S&R": "VAELoader"},
                     "widgets_values": ["sd3_vae.safetensors"]},
                    {"type": "LoadImage", "properties": {}, "widgets_values": ["example.png", "image"]}]}
    files = {"sd3_vae": {"folder": "vae", "workflow": {"name": "sd3_vae.safetensors", "url": "https://huggingface.co/x/resolve/main/v.safetensors"}}}
    out = tool.model_links(json.loads(json.dumps(ui)), files)
    assert out["nodes"][0]["properties"]["models"] == [
        {"name": "sd3_vae.safetensors", "url": "https://huggingface.co/x/resolve/main/v.safetensors", "directory": "vae"}]
    assert out["nodes"][1] == ui["nodes"][1]
