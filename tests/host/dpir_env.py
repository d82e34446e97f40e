"""Shared set-up of the server tests that run the shipped workflows with tiny models.

* ``write_model_set(root)`` writes one tiny official-format model set (DPIR
  transformer folder, robust VAE folder, stock SD3 VAE, the two CLIP vision
  towers with their configs, a T5 embedding instead of T5-XXL, and an SDXL
  UNet as a foreign file) and returns the ``extra_model_paths`` mapping that
  points a server at it (keys 'dpir', 'vae', 'clip_vision', so that path is
  tested too);
* ``api_of(name, ...)`` converts a workflow of ``workflows/`` to API format
  and shrinks it for the CPU (T5 embedding instead of T5-XXL, small size, few
  steps) before applying per-node overrides;
* ``fork`` puts several copies of a chain (e.g. one per test image) into one
  prompt, sharing the loaders: one prompt instead of one per case;
* ``saved_images`` reads a history entry's images back through ``/view``;
* ``write_photo`` writes a smooth random test photo (any PNG mode, 16-bit RGB too).

The session fixtures ``dpir_models`` and ``dpir_server`` (tests/host/conftest.py)
build this once per test session and share one server between modules.
"""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

import tiny_models as tm

from .comfy_harness import PACK_ROOT

SPEC = tm.TinySpec()
WORKFLOWS = PACK_ROOT / "workflows"
PROMPT_EMBEDDING = "prompt.safetensors"
PHOTO = "photo.png"


def write_model_set(root: Path) -> dict:
    """Tiny models under ``root``; returns the extra_model_paths mapping for them."""
    root = Path(root)
    tm.write_transformer_folder(root / "dpir" / "transformer", SPEC)
    tm.write_vae_folder(root / "dpir" / "robust_vae", SPEC, robust=True, full=True)
    tm.write_t5_embedding(root / "dpir" / PROMPT_EMBEDDING, SPEC, prompt="a sharp photo")
    tm.write_sdxl_unet_file(root / "dpir" / "sdxl_unet.safetensors")
    tm.write_vae_file(root / "vae" / "sd3_vae.safetensors", SPEC, full=True)
    for which, name in ((1, "clip_vit_b32"), (2, "clip_vision_g")):
        tm.write_clip_vision_file(root / "clip_vision" / f"{name}.safetensors", SPEC, which=which)
        # tiny towers are no published geometry: a same-name config beside the file says what they are
        (root / "clip_vision" / f"{name}.json").write_text(tm.clip_vision_config(SPEC, which).to_json_string())
    return {"dpir_tests": {"base_path": str(root), "dpir": "dpir", "vae": "vae", "clip_vision": "clip_vision"}}


def write_photo(path: Path, width: int = 80, height: int = 60, seed: int = 0, mode: str = "RGB") -> Path:
    """A smooth random photo (a coarse random grid, resized); ``mode`` any PIL mode PNG can hold."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    img = small.resize((width, height), Image.BILINEAR)
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8))
        img = Image.merge("RGBA", (*img.split(), alpha))
    elif mode == "I;16":
        grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(grey)  # uint16 → mode I;16
    elif mode == "RGB;16":  # 48-bit RGB, which PIL cannot write
        return _write_png16_rgb(path, np.asarray(img, dtype=np.uint16) * 257)
    elif mode != "RGB":
        img = img.convert(mode)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, compress_level=1)
    return path


def _write_png16_rgb(path: Path, rgb: np.ndarray) -> Path:
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    h, w, _ = rgb.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b""))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def api_of(name, server, object_info, workflow_api, **overrides):
    """Workflow ``name`` in API format, with the T5 embedding, photo.png, long side 72 and 3 steps;
    ``overrides`` = {class_type: {input: value}} applied to every node of that type."""
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    api = workflow_api.ui_to_api(ui, object_info)
    # no T5-XXL here: the T5 prompt reads the embedding file instead
    for nid in [k for k, v in api.items() if v["class_type"] == "CLIPLoader"]:
        del api[nid]
    for node in api.values():
        inputs = node["inputs"]
        if node["class_type"] == "DPIRT5TextPrompt":
            inputs.pop("clip", None)
            inputs["t5_embedding"] = PROMPT_EMBEDDING
        elif node["class_type"] == "LoadImage":
            inputs["image"] = PHOTO
        elif node["class_type"] == "DPIRRobustVAEEncode":
            inputs.update(resize="long side", long_side=72)
        elif node["class_type"] == "DPIRSamplerPatch":
            inputs["steps"] = 3
        for key, value in overrides.get(node["class_type"], {}).items():
            inputs[key] = value
    return api


def node_id(api, class_type: str) -> str:
    """The id of the (first) node of a type in an API prompt."""
    return next(k for k, v in api.items() if v["class_type"] == class_type)


def fork(api: dict, root: str, variants: list[dict]) -> tuple[dict, list[dict]]:
    """``api`` with the chain that starts at node ``root`` (it and every node it feeds) replaced by one
    copy per variant; the other nodes (loaders, prompts...) are shared. A variant is
    {class_type: {input: value}}, applied to that copy. Returns (new api, per copy {old id: new id})."""
    chain, grew = {root}, True
    while grew:
        grew = False
        for nid, node in api.items():
            if nid not in chain and any(isinstance(v, list) and v and v[0] in chain for v in node["inputs"].values()):
                chain.add(nid)
                grew = True
    out = {k: v for k, v in api.items() if k not in chain}
    ids = []
    for i, variant in enumerate(variants):
        new_id = {old: str((i + 1) * 1000 + int(old)) for old in chain}
        for old in chain:
            node = json.loads(json.dumps(api[old]))
            for key, value in node["inputs"].items():
                if isinstance(value, list) and value and value[0] in chain:
                    node["inputs"][key] = [new_id[value[0]], value[1]]
            node["inputs"].update(variant.get(node["class_type"], {}))
            out[new_id[old]] = node
        ids.append(new_id)
    return out, ids


def saved_images(server, entry, kind="output", node_id=None):
    """The images of a history entry (type ``kind``; one node or all) as uint8 arrays, in order."""
    out = []
    for img in server.output_images(entry, node_id):
        if img["type"] != kind:
            continue
        arr = np.asarray(Image.open(io.BytesIO(server.view(img["filename"], img.get("subfolder", ""), img["type"]))))
        out.append(arr)
    return out
