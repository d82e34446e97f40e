"""Restore one photo headlessly: runs workflows/dpir_restore.json inside the host ComfyUI.

    python custom_nodes/ComfyUI-DPIR/cli.py photo.jpg -o restored.png [--steps 28] [--seed 0]

ComfyUI is found via --comfyui, $COMFYUI_PATH, the folders above this pack
(ComfyUI/custom_nodes/ComfyUI-DPIR) or ~/comfy/ComfyUI. Models are read
from that ComfyUI's model folders (and its extra_model_paths.yaml); when a
file is missing the CLI says which file, where it comes from and which
folder it goes in, and exits with status 2.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent
PACK_NAME = "ComfyUI-DPIR"
# loader input → the MODEL_FILES entry that explains it
MODEL_INPUTS = {("DPIRModelLoader", "transformer"): "dpir_transformer",
                ("DPIRRobustVAELoader", "robust_vae"): "robust_vae",
                ("VAELoader", "vae_name"): "sd3_vae",
                ("DPIRCLIPVisionLoader", "clip_name"): "clip_vision_local",
                ("CLIPLoader", "clip_name"): "t5xxl",
                ("DPIRT5TextPrompt", "t5_embedding"): "t5_embedding"}


def is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir()


def find_comfyui(explicit: str | None = None) -> tuple[Path | None, str]:
    """(ComfyUI folder or None, how it was found or why not)."""
    env = explicit or os.environ.get("COMFYUI_PATH")
    if env:
        p = Path(env).expanduser()
        return (p.resolve(), env) if is_comfyui(p) else (None, f"{env} is not a ComfyUI folder (no main.py + comfy/)")
    for start in (Path(os.path.abspath(__file__)).parent, PACK_ROOT):
        for parent in start.parents:
            if is_comfyui(parent):
                return parent, f"the folder above the pack ({parent})"
    home = Path("~/comfy/ComfyUI").expanduser()
    if is_comfyui(home):
        return home, str(home)
    return None, "no ComfyUI found: set COMFYUI_PATH, pass --comfyui, or install the pack in ComfyUI/custom_nodes"


class _Server:
    """The little of PromptServer that PromptExecutor uses: progress goes to stderr."""
    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        if event == "executing" and data.get("node"):
            print(f"  running node {data['node']}", file=sys.stderr)


def object_info(mappings) -> dict:
    out = {}
    for name, cls in mappings.items():
        try:
            out[name] = {"input": cls.INPUT_TYPES(), "output": list(getattr(cls, "RETURN_TYPES", ())),
                         "output_name": list(getattr(cls, "RETURN_NAMES", None) or getattr(cls, "RETURN_TYPES", ()))}
        except Exception:  # a node pack we do not use may fail here; it cannot be in our workflow
            continue
    return out


def start_host(host: Path, cpu: bool, extra_paths: Path | None = None):
    import torch

    cpu = cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available())
    sys.argv = ["main.py", "--disable-api-nodes"] + (["--cpu"] if cpu else [])
    sys.path.insert(0, str(host))
    os.chdir(host)
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401
    import utils.extra_config  # before the rest, as main.py does: later imports shadow ComfyUI's 'utils'
    import folder_paths
    import nodes

    for extra in (host / "extra_model_paths.yaml", extra_paths):
        if extra is not None and extra.exists():
            utils.extra_config.load_extra_path_config(str(extra))
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    spec = importlib.util.spec_from_file_location(PACK_NAME, PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = pack
    spec.loader.exec_module(pack)
    nodes.NODE_CLASS_MAPPINGS.update(pack.NODE_CLASS_MAPPINGS)
    return nodes, folder_paths, pack


def build_prompt(args, mappings, image_name: str) -> dict:
    wa = importlib.util.spec_from_file_location("dpir_workflow_api", PACK_ROOT / "nodes" / "workflow_api.py")
    workflow_api = importlib.util.module_from_spec(wa)
    wa.loader.exec_module(workflow_api)
    ui = json.loads((PACK_ROOT / "workflows" / "dpir_restore.json").read_text())
    api = workflow_api.ui_to_api(ui, object_info(mappings))
    for nid, node in list(api.items()):
        c, inputs = node["class_type"], node["inputs"]
        if c == "LoadImage":
            inputs["image"] = image_name
        elif c == "DPIRRobustVAEEncode":
            inputs.update(resize="upscale factor" if args.scale else "long side", long_side=args.long_side,
                          upscale_factor=args.scale or 1.0)
        elif c == "DPIRSamplerPatch":
            inputs.update(steps=args.steps, cfg=args.cfg)
        elif c == "RandomNoise":
            inputs["noise_seed"] = args.seed
        elif c == "DPIRT5TextPrompt":
            inputs["text"] = args.prompt
            if args.t5_embedding:
                inputs["t5_embedding"] = args.t5_embedding
                inputs.pop("clip", None)
        elif c == "SaveImage":
            inputs["filename_prefix"] = f"dpir_cli_{uuid.uuid4().hex[:8]}"
    if args.t5_embedding:
        for nid in [k for k, v in api.items() if v["class_type"] == "CLIPLoader"]:
            del api[nid]
    return api


def missing_models(api, errors, guidance) -> list[str]:
    summary = {str(n["inputs"].get("clip_vision_summary", [None])[0]) for n in api.values()
               if n["class_type"] == "DPIRVisualPrompt"}
    lines = []
    for nid, ne in errors.items():
        for e in ne.get("errors", []):
            name = e.get("extra_info", {}).get("input_name")
            kind = MODEL_INPUTS.get((api[nid]["class_type"], name))
            if kind == "clip_vision_local" and nid in summary:
                kind = "clip_vision_summary"
            if kind and e.get("type") == "value_not_in_list":
                lines.append(f"- {api[nid]['class_type']}.{name} = {api[nid]['inputs'][name]!r} is missing. "
                             + guidance(kind))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Restore a photo with DPIR inside ComfyUI (workflows/dpir_restore.json).")
    ap.add_argument("image", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True, help="where to write the restored PNG")
    ap.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH, the folders above, ~/comfy/ComfyUI)")
    ap.add_argument("--long-side", type=int, default=1024, help="output long side in pixels (official: 1024)")
    ap.add_argument("--scale", type=float, help="upscale factor instead of --long-side")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", default="a high-quality, sharp, detailed photo", help="T5 text prompt")
    ap.add_argument("--t5-embedding", help="a T5 embedding file in models/dpir to use instead of T5-XXL")
    ap.add_argument("--extra-model-paths", type=Path, help="an extra_model_paths.yaml (besides the host's own)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (slow)")
    args = ap.parse_args(argv)
    if not args.image.is_file():
        print(f"error: {args.image} is not a file", file=sys.stderr)
        return 2
    comfy, how = find_comfyui(args.comfyui)
    if comfy is None:
        print(f"error: {how}", file=sys.stderr)
        return 2
    image = args.image.resolve()
    output = args.output.resolve()
    nodes, folder_paths, pack = start_host(comfy, args.cpu, args.extra_model_paths and args.extra_model_paths.resolve())
    import execution

    folder_paths.set_input_directory(str(image.parent))
    api = build_prompt(args, nodes.NODE_CLASS_MAPPINGS, image.name)
    ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), api, None))
    if not ok:
        from importlib import import_module

        guidance = import_module(f"{PACK_NAME}.nodes.model_files").guidance
        lines = missing_models(api, node_errors, guidance)
        print("error: " + ("the models below are missing:\n" + "\n".join(lines) if lines
                           else json.dumps(node_errors or error, indent=1)), file=sys.stderr)
        return 2
    executor = execution.PromptExecutor(_Server(), cache_type=False)
    executor.execute(api, str(uuid.uuid4()), {}, outputs)
    if not executor.success:
        failed = [d for e, d in executor.status_messages if e == "execution_error"]
        msg = failed[0] if failed else {}
        print(f"error in node {msg.get('node_type')} #{msg.get('node_id')}: {msg.get('exception_message')}",
              file=sys.stderr)
        return 1
    saved = [img for out in executor.history_result["outputs"].values() for img in out.get("images", [])]
    src = Path(folder_paths.get_output_directory(), saved[0].get("subfolder", ""), saved[0]["filename"])
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(output))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
