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
CAPTION_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct/config.json"
# the fidelity preset, in each restoring workflow's note (README "More faithful or more detail")
FIDELITY = (
    "\n\n**More faithful or more detail** (DPIR Apply LQ Condition). *More faithful to the photo*: set "
    "`restore_cfg` to 4 (each step is pulled toward the photo; 0 is off, and once on a smaller value pulls "
    "harder and longer: 1-2 very faithful, 8 light). *More detail*: keep `restore_cfg` 0 and lower `strength_end` "
    "to 0.5-0.8 (the LQ condition weakens over the last, fine-detail steps, so the model adds more texture of its "
    "own). Colours: `lab` in DPIR Colour Fix matches only the photo's colour balance, `wavelet` also its "
    "large-scale tones.")


def _inputs(spec):
    for section in ("required", "optional"):
        for name, s in (spec["input"].get(section) or {}).items():
            t = s[0]
            opts = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
            yield name, ("COMBO" if isinstance(t, list) else t), {"choices": t, **opts} if isinstance(t, list) else opts


class Graph:
    def __init__(self, info, first_id=1, first_link=1):
        self.info, self.nodes, self.links = info, [], []
        self.first_id, self.first_link = first_id, first_link  # a subgraph's ids follow the root graph's

    def add(self, type_, pos, widgets=None, inputs=None, size=(320, 160), title=None):
        """``inputs``: name → (node, output slot); ``widgets``: name → value (defaults from object_info)."""
        nid = self.first_id + len(self.nodes)
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
        lid = self.first_link + len(self.links)
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
    # (Nodes 2.0 draws Load Image 380 px tall with its preview)
    model = g.add("DPIRModelLoader", (x, 400), {"transformer": FILES["transformer"]}, size=(340, 130))
    sd3_vae = g.add("VAELoader", (x, 740), {"vae_name": FILES["sd3_vae"]}, size=(300, 60))
    robust = g.add("DPIRRobustVAELoader", (x, 840), {"robust_vae": FILES["robust_vae"]}, {"vae": (sd3_vae, 0)},
                   size=(340, 80))
    clip1 = g.add("DPIRCLIPVisionLoader", (x, 1100), {"clip_name": FILES["clip_local"]}, size=(340, 60),
                  title="CLIP vision 1 (local, ViT-B/32)")
    clip2 = g.add("DPIRCLIPVisionLoader", (x, 1380), {"clip_name": FILES["clip_summary"]}, size=(340, 60),
                  title="CLIP vision 2 (summary, ViT-bigG)")
    t5 = g.add("CLIPLoader", (x, 1660), {"clip_name": FILES["t5"], "type": "sd3"}, title="T5-XXL (Load CLIP, type sd3)")
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
    noise = g.add("RandomNoise", (x + 360, y + 340), {"noise_seed": 42}, size=(300, 80))  # below the patch's widgets
    sample = g.add("SamplerCustomAdvanced", (x + 720, y), {}, {
        "noise": (noise, 0), "guider": (patch, 1), "sampler": (patch, 2), "sigmas": (patch, 3),
        "latent_image": (encode, 0)})
    if tiles is None:
        decode = g.add("VAEDecode", (x + 1080, y), {}, {"samples": (sample, 0), "vae": (robust, 0)}, size=(220, 50))
    else:
        # whole image when it fits in memory, else the largest tiles that fit, each region decoded once
        decode = g.add("DPIRVAEDecode", (x + 1080, y), {"tiled_vae": "auto"}, {"samples": (sample, 0), "vae": (robust, 0)})
    # room for the before/after view the node shows after a run (web/js/dpir_compare.js)
    fix = g.add("DPIRColourFix", (x + 1080, y + (100 if tiles is None else 210)), {},
                {"image": (decode, 0), "lq_image": (encode, 1)},
                size=(360, 420))
    g.add("SaveImage", (x + 1480, y), {"filename_prefix": prefix}, {"images": (fix, 0)}, size=(400, 400))


def dpir_restore(info):
    g = Graph(info)
    image, model, robust, clip1, clip2, t5 = loaders(g)
    encode, visual, text = prompts(g, image, robust, clip1, clip2, t5)
    dual = g.add("DPIRDualPrompt", (1080, 0), {}, {"visual_prompt": (visual, 0), "text_prompt": (text, 0)})
    restore_chain(g, 360, 560, model, model, encode, robust, (dual, 0), (dual, 1), "dpir_restore")
    g.add("MarkdownNote", (360, 1060), {"text": (
        "## DPIR restore\nOfficial defaults: LQ resized to long side 1024, robust VAE encode, CLIP global-local "
        "visual prompt + T5 prompt, LQ condition strength 1, Euler / normal / 28 steps / shift 3 / CFG 1, wavelet "
        "colour fix.\n\nAfter a run, **DPIR Colour Fix** shows LQ and result in one split view: move the pointer "
        "to move the split, scroll to zoom, double-click to fit.\n\nModel files: a loader whose file is missing "
        "says in the node which file, from where, into which folder (also the README's Models table). Without "
        "T5-XXL, pick a T5 embedding file in 'DPIR T5 Text Prompt' and delete the Load CLIP node." + FIDELITY)},
          size=(500, 380))
    return g.ui()


def dpir_prompt_ablation(info):
    g = Graph(info)
    image, model, robust, clip1, clip2, t5 = loaders(g)
    encode, visual, text = prompts(g, image, robust, clip1, clip2, t5)
    caption = g.add("DPIRCaption", (360, 260), {"caption_model": CAPTION_MODEL}, {"image": (image, 0)},
                    size=(340, 420))
    # the caption as the T5 text, on its own T5 prompt node beside the typed one
    caption_text = g.add("DPIRT5TextPrompt", (720, 520), {}, {"clip": (t5, 0)}, size=(340, 300),
                         title="DPIR T5 Text Prompt (caption)")
    g.link(caption, 0, caption_text, "text")
    no_visual = g.add("ConditioningZeroOut", (1080, 0), {}, {"conditioning": (visual, 0)}, title="visual dropped")
    no_text = g.add("ConditioningZeroOut", (1080, 230), {}, {"conditioning": (text, 0)}, title="text dropped")
    rows = (("text only", (no_visual, 0), (text, 0), "dpir_text_only"),
            ("visual only", (visual, 0), (no_text, 0), "dpir_visual_only"),
            ("dual", (visual, 0), (text, 0), "dpir_dual"),
            ("caption only", (no_visual, 0), (caption_text, 0), "dpir_caption_only"),
            ("caption + visual", (visual, 0), (caption_text, 0), "dpir_caption_visual"))
    for i, (title, v, t, prefix) in enumerate(rows):
        dual = g.add("DPIRDualPrompt", (1440, 200 * i), {}, {"visual_prompt": v, "text_prompt": t}, title=f"prompt: {title}")
        restore_chain(g, 360, 1000 + 560 * i, model, model, encode, robust, (dual, 0), (dual, 1), prefix)
    g.add("MarkdownNote", (1800, 0), {"text": (
        "## Prompt ablation (paper, Table 5), with captions\nThe same image restored five times with the same seed: "
        "typed text prompt only (visual tokens and pooled vector zeroed, as in training's caption dropout), visual "
        "prompt only (T5 zeroed), both, and the same two with **DPIR Caption**'s description of the photo as the "
        "T5 text instead of the typed one (caption only; caption + visual). Compare the typed and the written "
        "prompt, with and without the visual prompt. Each row's **DPIR Colour Fix** shows its result against the "
        "LQ image (split view: pointer = split, scroll = zoom).\n\nDPIR Caption needs a vision-language model in "
        "`models/LLM/` (see the README); without one, delete it and the two caption rows.")}, size=(460, 300))
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
    # below the Tiled Prompt, which Nodes 2.0 draws about 700 px tall
    restore_chain(g, 360, 740, model, model, encode, robust, (dual, 0), (dual, 1), "dpir_restore_large", tiles=tiles)
    g.add("MarkdownNote", (360, 1240), {"text": (
        "## DPIR restore, large images (2K–8K)\nUpscales ×4 and samples in 1024 px tiles: each tile gets its own "
        "LQ condition and local visual prompt, with the whole image's global tokens (DPIR's training setting); "
        "tiles blend with Gaussian weights and the grid moves a quarter tile per step so no seam stays. "
        "Knobs: tile size/overlap and prompt mode in 'DPIR Tiled Global-Local Prompt', tile batch in the "
        "Sampler Patch (memory per step ~ tile batch × tile size², independent of the image size). The VAE "
        "encode and 'DPIR VAE Decode' work in tiles only when the whole image does not fit in free memory (each "
        "region once, feathered overlaps); the colour fix runs once on the stitched image.\n\nThe Tiled Prompt node "
        "draws the tile grid over the LQ image and redraws it as you change tile size/overlap, with the tile count "
        "and the memory per tile batch — check them before a long run." + FIDELITY)}, size=(520, 380))
    return g.ui()


def dpir_restore_autoprompt(info):
    """LQ → DPIR Caption → T5 prompt (+ visual prompt) → restore; a Restoration Prompt ready for 'suffix'."""
    g = Graph(info)
    image, model, robust, clip1, clip2, t5 = loaders(g)
    encode, visual, text = prompts(g, image, robust, clip1, clip2, t5)
    caption = g.add("DPIRCaption", (360, 260), {"caption_model": CAPTION_MODEL},
                    {"image": (image, 0)}, size=(340, 420))
    g.link(caption, 0, text, "text")
    text["size"] = [340, 300]  # room for the prompt it shows after a run (web/js/dpir_text.js)
    g.add("DPIRRestorationPrompt", (1440, 260), {"mode": "estimate from image"}, {"image": (image, 0)},
          size=(340, 300), title="Restoration Prompt (only for models trained with it: wire into 'suffix')")
    dual = g.add("DPIRDualPrompt", (1080, 0), {}, {"visual_prompt": (visual, 0), "text_prompt": (text, 0)})
    restore_chain(g, 360, 760, model, model, encode, robust, (dual, 0), (dual, 1), "dpir_restore_autoprompt")
    g.add("MarkdownNote", (1960, 0), {"text": (
        "## DPIR restore with an automatic prompt\n**DPIR Caption** describes the LQ photo with a vision-language "
        "model from `models/LLM/` (Qwen2.5-VL, Qwen3-VL, LLaVA, SmolVLM, Florence-2; see the README) and the caption "
        "becomes the T5 text prompt; a batch gets one caption per image. The caption is shown on the node (and the "
        "final prompt on DPIR T5 Text Prompt); `prefix`/`suffix` there keep a fixed text around it.\n\n"
        "**DPIR Restoration Prompt** measures noise, blur and JPEG quality of the LQ photo and writes them as "
        "text ('upscale 4x, deblur sigma 2.1, denoise 8.0, jpeg 40'). The official DPIR checkpoint was NOT trained "
        "on such text: wire it into the T5 prompt's `suffix` only with a model fine-tuned with "
        "`restoration_prompts: true`." + FIDELITY)}, size=(520, 400))
    return g.ui()


class Subgraph(Graph):
    """A subgraph definition (frontend 1.2x+ ``definitions.subgraphs``, in the form 1.58 saves after "Convert to
    Subgraph" + "Promote widget"): nodes inside, links from its input node (id -10) and to its output node (-20).
    A promoted widget is a subgraph input wired to the inner widget's input; its value lives on the host node."""

    def __init__(self, info, name, first_id, first_link):
        super().__init__(info, first_id, first_link)
        self.name = name
        self.id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"ComfyUI-DPIR/subgraph/{name}"))
        self.input_node = {"id": -10, "outputs": []}   # its slots are the subgraph's inputs
        self.output_node = {"id": -20, "inputs": []}   # and the subgraph's outputs
        self.promoted = []  # (input name, value) for the host node's widgets

    def input(self, name, type_, targets, value=None, widget=False):
        """A subgraph input ``name`` feeding ``targets`` [(node, input name)]; ``widget``: a promoted widget."""
        slot = len(self.input_node["outputs"])
        self.input_node["outputs"].append({"name": name, "type": type_, "links": [], "widget": widget})
        for node, inp in targets:
            self.link(self.input_node, slot, node, inp)
        if widget:
            self.promoted.append((name, value))
        return slot

    def output(self, name, type_, src, slot):
        self.output_node["inputs"].append({"name": name, "type": type_, "link": None})
        self.link(src, slot, self.output_node, name)

    def definition(self):
        def boundary(slots, links):
            return [{"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.id}/{i}/{s['name']}")), "name": s["name"],
                     "type": s["type"], "linkIds": links(s), "localized_name": s["name"]} for i, s in enumerate(slots)]

        xs = [n["pos"][0] for n in self.nodes]
        ys = [n["pos"][1] for n in self.nodes]
        return {"id": self.id, "version": 1, "revision": 0, "name": self.name,
                "state": {"lastGroupId": 0, "lastNodeId": self.first_id + len(self.nodes) - 1,
                          "lastLinkId": self.first_link + len(self.links) - 1, "lastRerouteId": 0},
                "config": {},
                "inputNode": {"id": -10, "bounding": [min(xs) - 260, min(ys), 180, 40 + 20 * len(self.input_node["outputs"])]},
                "outputNode": {"id": -20, "bounding": [max(xs) + 460, min(ys), 140, 40 + 20 * len(self.output_node["inputs"])]},
                "inputs": boundary(self.input_node["outputs"], lambda s: list(s["links"])),
                "outputs": boundary(self.output_node["inputs"], lambda s: [s["link"]]),
                "widgets": [], "nodes": self.nodes, "groups": [],
                "links": [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
                          for link in self.links],
                "extra": {}}

    def host(self, g: Graph, pos, size=(360, 260), title=None):
        """The subgraph node in ``g``: one input per subgraph input (a promoted one carries its widget), the
        promoted widgets' values in ``widgets_values``."""
        nid = g.first_id + len(g.nodes)
        node = {"id": nid, "type": self.id, "pos": list(pos), "size": list(size), "flags": {}, "order": nid - 1,
                "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [v for _, v in self.promoted],
                "widgets_values_named": dict(self.promoted)}
        if title:
            node["title"] = title
        for s in self.input_node["outputs"]:
            inp = {"name": s["name"], "type": s["type"], "link": None}
            if s["widget"]:
                inp["widget"] = {"name": s["name"]}
            node["inputs"].append(inp)
        for s in self.output_node["inputs"]:
            node["outputs"].append({"name": s["name"], "type": s["type"], "links": []})
        g.nodes.append(node)
        return node


def dpir_restore_subgraph(info):
    """The restore chain of dpir_restore_large as one "DPIR Restore" subgraph node with its knobs promoted; the
    loaders, the photo, the text prompt and Save Image stay outside (the loaders keep their model guidance and
    model links where the artist sees them)."""
    g = Graph(info)
    image, model, robust, clip1, clip2, t5 = loaders(g)
    text = g.add("DPIRT5TextPrompt", (360, 1300), {"text": "a high-quality, sharp, detailed photo"}, {"clip": (t5, 0)},
                 size=(360, 200))
    sg = Subgraph(info, "DPIR Restore", first_id=100, first_link=100)
    encode = sg.add("DPIRRobustVAEEncode", (0, 0))
    visual = sg.add("DPIRVisualPrompt", (360, 0), {}, {"image": (encode, 1)})
    dual = sg.add("DPIRDualPrompt", (720, 0), {}, {"visual_prompt": (visual, 0)})
    tiles = sg.add("DPIRTiledPrompt", (1080, 0), {}, {"lq_image": (encode, 1)}, size=(400, 540))
    lq = sg.add("DPIRApplyLQCondition", (0, 600), {}, {"lq_latent": (encode, 0)})
    patch = sg.add("DPIRSamplerPatch", (360, 600), {}, {"model": (lq, 0), "positive": (dual, 0), "negative": (dual, 1),
                                                       "tiles": (tiles, 0)})
    noise = sg.add("RandomNoise", (360, 900), {"noise_seed": 42}, size=(300, 80))
    sample = sg.add("SamplerCustomAdvanced", (720, 600), {}, {
        "noise": (noise, 0), "guider": (patch, 1), "sampler": (patch, 2), "sigmas": (patch, 3),
        "latent_image": (encode, 0)})
    decode = sg.add("DPIRVAEDecode", (1080, 600), {"tiled_vae": "auto"}, {"samples": (sample, 0)})
    fix = sg.add("DPIRColourFix", (1500, 0), {}, {"image": (decode, 0), "lq_image": (encode, 1)}, size=(360, 420))
    sg.input("image", "IMAGE", [(encode, "image")])
    sg.input("model", "MODEL", [(lq, "model")])
    sg.input("lq_branch", "DPIR_LQ_BRANCH", [(lq, "lq_branch")])
    sg.input("robust_vae", "VAE", [(encode, "vae"), (decode, "vae")])
    sg.input("clip_vision_local", "CLIP_VISION", [(visual, "clip_vision_local"), (tiles, "clip_vision_local")])
    sg.input("clip_vision_summary", "CLIP_VISION", [(visual, "clip_vision_summary"), (tiles, "clip_vision_summary")])
    sg.input("text_prompt", "CONDITIONING", [(dual, "text_prompt"), (tiles, "text_prompt")])
    sg.input("tile_size", "INT", [(tiles, "tile_size")], 1024, widget=True)
    sg.input("steps", "INT", [(patch, "steps")], 28, widget=True)
    sg.input("method", "COMBO", [(fix, "method")], "wavelet", widget=True)
    sg.output("IMAGE", "IMAGE", fix, 0)
    host = sg.host(g, (760, 0), title="DPIR Restore")
    for name, (src, slot) in {"image": (image, 0), "model": (model, 0), "lq_branch": (model, 1), "robust_vae": (robust, 0),
                              "clip_vision_local": (clip1, 0), "clip_vision_summary": (clip2, 0),
                              "text_prompt": (text, 0)}.items():
        g.link(src, slot, host, name)
    g.add("SaveImage", (1180, 0), {"filename_prefix": "dpir_restore"}, {"images": (host, 0)}, size=(400, 400))
    g.add("MarkdownNote", (760, 420), {"text": (
        "## DPIR Restore (one block)\nThe whole DPIR chain of `dpir_restore_large` in one subgraph: robust VAE "
        "encode, visual + T5 dual prompt, tiled global-local prompt, LQ condition, sampler patch, one-pass tiled VAE "
        "decode, colour fix. Its knobs are on the block: **tile_size** (px per tile; 1024 = the training crop), **steps** "
        "(28 official) and the colour fix **method**. The LQ photo is resized to a long side of 1024 px inside.\n\n"
        "Open the block (the icon at its top right) to see the tile overlay on 'DPIR Tiled Global-Local Prompt' and, "
        "after a run, the before/after view on 'DPIR Colour Fix'.")}, size=(400, 300))
    ui = g.ui()
    ui["definitions"] = {"subgraphs": [sg.definition()]}
    ui["last_node_id"] = sg.first_id + len(sg.nodes) - 1
    ui["last_link_id"] = sg.first_link + len(sg.links) - 1
    return ui


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
             "dpir_restore_large": dpir_restore_large, "dpir_restore_autoprompt": dpir_restore_autoprompt,
             "subgraphs/dpir_restore_block": dpir_restore_subgraph}


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
        (a.out / f"{name}.json").parent.mkdir(exist_ok=True)
        (a.out / f"{name}.json").write_text(json.dumps(ui, indent=1) + "\n")
        print("wrote", a.out / f"{name}.json")


if __name__ == "__main__":
    main()
