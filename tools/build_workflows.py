"""Writes the shipped UI-format workflows (workflows/*.json) from compact graph specs.

The widget order and socket types come from a running ComfyUI's /object_info,
so the files match what the frontend itself would save:

    curl -s 127.0.0.1:8188/object_info > object_info.json
    python tools/build_workflows.py --object-info object_info.json
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
ROOT = Path(__file__).resolve().parents[1]

# model files the workflows name; README "Models" lists the same
FILES = {
    "transformer": "transformer/diffusion_pytorch_model.safetensors",
    "robust_vae": "robust_vae/diffusion_pytorch_model.safetensors",
    "sd3_vae": "sd3_vae.safetensors",
    "clip_local": "clip_vit_b32.safetensors",
    "clip_summary": "clip_vision_g.safetensors",
    "t5": "t5xxl_fp16.safetensors",
}


def _inputs(spec):
    for section in ("required", "optional"):
        for name, s in (spec["input"].get(section) or {}).items():
            t = s[0]
            opts = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
            yield name, ("COMBO" if isinstance(t, list) else t), {"choices": t, **opts} if isinstance(t, list) else opts


class Graph:
    def __init__(self, info):
        self.info, self.nodes, self.links = info, [], []

    def add(self, type_, pos, widgets=None, inputs=None, size=(320, 160), title=None):
        """``inputs``: name → (node, output slot); ``widgets``: name → value (defaults from object_info)."""
        nid = len(self.nodes) + 1
        node = {"id": nid, "type": type_, "pos": list(pos), "size": list(size), "flags": {}, "order": nid - 1,
                "mode": 0, "inputs": [], "outputs": [], "properties": {"Node name for S&R": type_},
                "widgets_values": []}
        if title:
            node["title"] = title
        if type_ == "MarkdownNote":
            node["widgets_values"] = [widgets["text"]]
            self.nodes.append(node)
            return node
        spec = self.info[type_]
        widgets, inputs = widgets or {}, inputs or {}
        for name, t, opts in _inputs(spec):
            if t in WIDGET_TYPES:
                value = widgets.get(name, opts.get("default", (opts.get("choices") or [None])[0]))
                node["widgets_values"].append(value)
                if opts.get("control_after_generate"):
                    node["widgets_values"].append("fixed")
                if opts.get("image_upload"):
                    node["widgets_values"].append("image")
            else:
                node["inputs"].append({"name": name, "type": t, "link": None})
        for i, t in enumerate(spec["output"]):
            node["outputs"].append({"name": spec["output_name"][i], "type": t, "links": [], "slot_index": i})
        unknown = set(widgets) - {n for n, t, _ in _inputs(spec) if t in WIDGET_TYPES}
        if unknown:
            raise KeyError(f"{type_}: no widgets {unknown}")
        self.nodes.append(node)
        for name, (src, slot) in inputs.items():
            self.link(src, slot, node, name)
        return node

    def link(self, src, slot, dst, name):
        lid = len(self.links) + 1
        dst_input = next((i for i in dst["inputs"] if i["name"] == name), None)
        if dst_input is None:  # a widget fed by a link: the frontend adds an input slot naming the widget
            t = next(t for n, t, _ in _inputs(self.info[dst["type"]]) if n == name)
            dst_input = {"name": name, "type": t, "widget": {"name": name}, "link": None}
            dst["inputs"].append(dst_input)
        t = src["outputs"][slot]["type"]
        self.links.append([lid, src["id"], slot, dst["id"], dst["inputs"].index(dst_input), t])
        src["outputs"][slot]["links"].append(lid)
        dst_input["link"] = lid

    def ui(self):
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps([n["type"] for n in self.nodes]))),
                "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(self.links),
                "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def loaders(g: Graph, x=0):
    # spaced so a loader whose file is missing has room for the guidance it then shows (web/js/dpir_guidance.js)
    image = g.add("LoadImage", (x, 0), {"image": "example.png"}, size=(300, 320))
    model = g.add("DPIRModelLoader", (x, 360), {"transformer": FILES["transformer"]}, size=(340, 130))
    sd3_vae = g.add("VAELoader", (x, 700), {"vae_name": FILES["sd3_vae"]}, size=(300, 60))
    robust = g.add("DPIRRobustVAELoader", (x, 800), {"robust_vae": FILES["robust_vae"]}, {"vae": (sd3_vae, 0)},
                   size=(340, 80))
    clip1 = g.add("DPIRCLIPVisionLoader", (x, 1060), {"clip_name": FILES["clip_local"]}, size=(340, 60),
                  title="CLIP vision 1 (local, ViT-B/32)")
    clip2 = g.add("DPIRCLIPVisionLoader", (x, 1340), {"clip_name": FILES["clip_summary"]}, size=(340, 60),
                  title="CLIP vision 2 (summary, ViT-bigG)")
    t5 = g.add("CLIPLoader", (x, 1620), {"clip_name": FILES["t5"], "type": "sd3"}, title="T5-XXL (Load CLIP, type sd3)")
    return image, model, robust, clip1, clip2, t5


def prompts(g: Graph, image, robust, clip1, clip2, t5, **encode_widgets):
    """Robust encode of the LQ, and its visual and T5 prompts."""
    encode = g.add("DPIRRobustVAEEncode", (360, 0), encode_widgets, {"image": (image, 0), "vae": (robust, 0)})
    visual = g.add("DPIRVisualPrompt", (720, 0), {}, {"clip_vision_local": (clip1, 0), "clip_vision_summary": (clip2, 0),
                                                      "image": (encode, 1)})
    text = g.add("DPIRT5TextPrompt", (720, 260), {"text": "a high-quality, sharp, detailed photo"}, {"clip": (t5, 0)})
    return encode, visual, text


def restore_chain(g: Graph, x, y, model, lq_branch, encode, robust, positive, negative, prefix, tiles=None):
    lq = g.add("DPIRApplyLQCondition", (x, y), {}, {"model": (model, 0), "lq_branch": (lq_branch, 1),
                                                   "lq_latent": (encode, 0)})
    links = {"model": (lq, 0), "positive": positive, "negative": negative}
    if tiles is not None:
        links["tiles"] = (tiles, 0)
    patch = g.add("DPIRSamplerPatch", (x + 360, y), {}, links)
    noise = g.add("RandomNoise", (x + 360, y + 260), {"noise_seed": 42}, size=(300, 80))
    sample = g.add("SamplerCustomAdvanced", (x + 720, y), {}, {
        "noise": (noise, 0), "guider": (patch, 1), "sampler": (patch, 2), "sigmas": (patch, 3),
        "latent_image": (encode, 0)})
    if tiles is None:
        decode = g.add("VAEDecode", (x + 1080, y), {}, {"samples": (sample, 0), "vae": (robust, 0)}, size=(220, 50))
    else:
        # whole image when it fits in memory, else the largest tiles that fit, each region decoded once
        decode = g.add("DPIRVAEDecode", (x + 1080, y), {"tiled_vae": "auto"}, {"samples": (sample, 0), "vae": (robust, 0)})
    # room for the before/after view the node shows after a run (web/js/dpir_compare.js)
    fix = g.add("DPIRColourFix", (x + 1080, y + 100), {}, {"image": (decode, 0), "lq_image": (encode, 1)},
                size=(360, 420))
    g.add("SaveImage", (x + 1480, y), {"filename_prefix": prefix}, {"images": (fix, 0)}, size=(400, 400))


def dpir_restore(info):
    g = Graph(info)
    image, model, robust, clip1, clip2, t5 = loaders(g)
    encode, visual, text = prompts(g, image, robust, clip1, clip2, t5)
    dual = g.add("DPIRDualPrompt", (1080, 0), {}, {"visual_prompt": (visual, 0), "text_prompt": (text, 0)})
    restore_chain(g, 360, 560, model, model, encode, robust, (dual, 0), (dual, 1), "dpir_restore")
    g.add("MarkdownNote", (360, 900), {"text": (
        "## DPIR restore\nOfficial defaults: LQ resized to long side 1024, robust VAE encode, CLIP global-local "
        "visual prompt + T5 prompt, LQ condition strength 1, Euler / normal / 28 steps / shift 3 / CFG 1, wavelet "
        "colour fix.\n\nAfter a run, **DPIR Colour Fix** shows LQ and result in one split view: move the pointer "
        "to move the split, scroll to zoom, double-click to fit.\n\nModel files: a loader whose file is missing "
        "says in the node which file, from where, into which folder (also the README's Models table). Without "
        "T5-XXL, pick a T5 embedding file in 'DPIR T5 Text Prompt' and delete the Load CLIP node.")}, size=(500, 300))
    return g.ui()


def dpir_prompt_ablation(info):
    g = Graph(info)
    image, model, robust, clip1, clip2, t5 = loaders(g)
    encode, visual, text = prompts(g, image, robust, clip1, clip2, t5)
    no_visual = g.add("ConditioningZeroOut", (1080, 0), {}, {"conditioning": (visual, 0)}, title="visual dropped")
    no_text = g.add("ConditioningZeroOut", (1080, 100), {}, {"conditioning": (text, 0)}, title="text dropped")
    rows = (("text only", (no_visual, 0), (text, 0), "dpir_text_only"),
            ("visual only", (visual, 0), (no_text, 0), "dpir_visual_only"),
            ("dual", (visual, 0), (text, 0), "dpir_dual"))
    for i, (title, v, t, prefix) in enumerate(rows):
        dual = g.add("DPIRDualPrompt", (1440, 300 * i), {}, {"visual_prompt": v, "text_prompt": t}, title=f"prompt: {title}")
        restore_chain(g, 360, 760 + 560 * i, model, model, encode, robust, (dual, 0), (dual, 1), prefix)
    g.add("MarkdownNote", (1800, 0), {"text": (
        "## Prompt ablation (paper, Table 5)\nThe same image restored three times with the same seed: text prompt "
        "only (visual tokens and pooled vector zeroed, as in training's caption dropout), visual prompt only (T5 "
        "zeroed), and both. Each row's **DPIR Colour Fix** shows its result against the LQ image (split view: "
        "pointer = split, scroll = zoom).")}, size=(460, 200))
    return g.ui()


def dpir_restore_large(info):
    g = Graph(info)
    image, model, robust, clip1, clip2, t5 = loaders(g)
    encode, visual, text = prompts(g, image, robust, clip1, clip2, t5, resize="upscale factor", upscale_factor=4.0,
                                   tiled_vae="auto")
    dual = g.add("DPIRDualPrompt", (1080, 0), {}, {"visual_prompt": (visual, 0), "text_prompt": (text, 0)})
    # room for the live tile overlay (web/js/dpir_tiles.js)
    tiles = g.add("DPIRTiledPrompt", (1440, 0), {}, {"clip_vision_local": (clip1, 0),
                                                     "clip_vision_summary": (clip2, 0), "lq_image": (encode, 1),
                                                     "text_prompt": (text, 0)}, size=(400, 540))
    g.add("PreviewImage", (1880, 0), {}, {"images": (tiles, 1)}, size=(400, 300), title="tile plan")
    restore_chain(g, 360, 600, model, model, encode, robust, (dual, 0), (dual, 1), "dpir_restore_large", tiles=tiles)
    g.add("MarkdownNote", (360, 1000), {"text": (
        "## DPIR restore, large images (2K–8K)\nUpscales ×4 and samples in 1024 px tiles: each tile gets its own "
        "LQ condition and local visual prompt, with the whole image's global tokens (DPIR's training setting); "
        "tiles blend with Gaussian weights and the grid moves a quarter tile per step so no seam stays. "
        "Knobs: tile size/overlap and prompt mode in 'DPIR Tiled Global-Local Prompt', tile batch in the "
        "Sampler Patch (memory per step ~ tile batch × tile size², independent of the image size). The VAE "
        "encode and 'DPIR VAE Decode' work in tiles only when the whole image does not fit in free memory (each "
        "region once, feathered overlaps); the colour fix runs once on the stitched image.\n\nThe Tiled Prompt node "
        "draws the tile grid over the LQ image and redraws it as you change tile size/overlap, with the tile count "
        "and the memory per tile batch — check them before a long run.")}, size=(520, 300))
    return g.ui()


def dpir_restore_autoprompt(info):
    """LQ → DPIR Caption → T5 prompt (+ visual prompt) → restore; a Restoration Prompt ready for 'suffix'."""
    g = Graph(info)
    image, model, robust, clip1, clip2, t5 = loaders(g)
    encode, visual, text = prompts(g, image, robust, clip1, clip2, t5)
    caption = g.add("DPIRCaption", (360, 260), {"caption_model": "Qwen/Qwen2.5-VL-3B-Instruct/config.json"},
                    {"image": (image, 0)}, size=(340, 420))
    g.link(caption, 0, text, "text")
    text["size"] = [340, 300]  # room for the prompt it shows after a run (web/js/dpir_text.js)
    g.add("DPIRRestorationPrompt", (1440, 260), {"mode": "estimate from image"}, {"image": (image, 0)},
          size=(340, 300), title="Restoration Prompt (only for models trained with it: wire into 'suffix')")
    dual = g.add("DPIRDualPrompt", (1080, 0), {}, {"visual_prompt": (visual, 0), "text_prompt": (text, 0)})
    restore_chain(g, 360, 760, model, model, encode, robust, (dual, 0), (dual, 1), "dpir_restore_autoprompt")
    g.add("MarkdownNote", (1800, 0), {"text": (
        "## DPIR restore with an automatic prompt\n**DPIR Caption** describes the LQ photo with a vision-language "
        "model from `models/LLM/` (Qwen2.5-VL, Qwen3-VL, LLaVA, SmolVLM, Florence-2; see the README) and the caption "
        "becomes the T5 text prompt; a batch gets one caption per image. The caption is shown on the node (and the "
        "final prompt on DPIR T5 Text Prompt); `prefix`/`suffix` there keep a fixed text around it.\n\n"
        "**DPIR Restoration Prompt** measures noise, blur and JPEG quality of the LQ photo and writes them as "
        "text ('upscale 4x, deblur sigma 2.1, denoise 8.0, jpeg 40'). The official DPIR checkpoint was NOT trained "
        "on such text: wire it into the T5 prompt's `suffix` only with a model fine-tuned with "
        "`restoration_prompts: true`.")}, size=(520, 320))
    return g.ui()


def model_links(ui: dict, model_files: dict) -> dict:
    """ComfyUI's model metadata on the loaders: ``properties.models`` = [{name, url, directory}] for each
    widget value that names a single-file model of ``MODEL_FILES`` with a known download URL. The frontend's
    missing-models dialog reads it (the entries whose name is one of the node's widget values)."""
    links = {f["workflow"]["name"]: {"name": f["workflow"]["name"], "url": f["workflow"]["url"], "directory": f["folder"]}
             for f in model_files.values() if f.get("workflow")}
    for node in ui["nodes"]:
        models = [links[v] for v in node.get("widgets_values", []) if isinstance(v, str) and v in links]
        if models:
            node["properties"]["models"] = models
    return ui


WORKFLOWS = {"dpir_restore": dpir_restore, "dpir_prompt_ablation": dpir_prompt_ablation,
             "dpir_restore_large": dpir_restore_large, "dpir_restore_autoprompt": dpir_restore_autoprompt}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--object-info", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "workflows")
    a = ap.parse_args()
    info = json.loads(a.object_info.read_text())
    a.out.mkdir(exist_ok=True)
    sys.path.insert(0, str(ROOT / "tools"))
    from model_table import load_model_files

    for name, build in WORKFLOWS.items():
        ui = model_links(build(info), load_model_files())
        (a.out / f"{name}.json").write_text(json.dumps(ui, indent=1) + "\n")
        print("wrote", a.out / f"{name}.json")


if __name__ == "__main__":
    main()
