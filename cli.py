"""Restore photos in batch with DPIR through ComfyUI's HTTP API; fetch the models with one command.

    python custom_nodes/ComfyUI-DPIR/cli.py --download                      # get the models
    python custom_nodes/ComfyUI-DPIR/cli.py photos/ -r -o restored/          # restore a folder (recursive)
    python custom_nodes/ComfyUI-DPIR/cli.py a.jpg "scans/*.png" -o out/ --server http://127.0.0.1:8188
    python custom_nodes/ComfyUI-DPIR/cli.py photos/ -o out/ --server http://gpu0:8188 --server http://gpu1:8188

Without --server it starts a headless ComfyUI on 127.0.0.1 (found via --comfyui, $COMFYUI_PATH, the folders
above this pack, or ~/comfy/ComfyUI) and stops it at the end; with --server it uses a running one, so the
models it already holds are reused; --server given more than once spreads the batch over those servers
(see ``Worker``). One prompt per image through /prompt, progress from the websocket,
results from /history and /view; the models stay loaded between images. Next to each output goes a JSON
sidecar with the settings, seed, workflow and the model files' sha256. Outputs that exist are skipped unless
--overwrite. An unreadable image is reported and the batch goes on; the exit status is 1 if any image
failed, 2 if nothing could run (no ComfyUI, models missing, every server gone). docs/cli.md has the details.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import glob
import hashlib
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent
PACK_NAME = "ComfyUI-DPIR"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
WORKFLOWS = {"restore": "dpir_restore", "large": "dpir_restore_large", "block": "subgraphs/dpir_restore_block"}
TILE = 1024  # px: what one tile of the official setting holds; 'auto' tiles above it
# loader input → the MODEL_FILES kind behind it (CLIP vision: the local tower unless it feeds 'summary')
MODEL_INPUTS = {("DPIRModelLoader", "transformer"): "dpir_transformer",
                ("DPIRRobustVAELoader", "robust_vae"): "robust_vae",
                ("VAELoader", "vae_name"): "sd3_vae",
                ("DPIRCLIPVisionLoader", "clip_name"): "clip_vision_local",
                ("CLIPLoader", "clip_name"): "t5xxl",
                ("DPIRT5TextPrompt", "t5_embedding"): "t5_embedding"}
BASE_KINDS = ["dpir_transformer", "robust_vae", "sd3_vae", "clip_vision_local", "clip_vision_summary"]


class SetupError(Exception):
    """Nothing can run: the message says why and what to do (exit status 2)."""


class ServerDown(SetupError):
    """A server stopped, stopped answering or refused the work: its images go to the other servers."""


# ---------------------------------------------------------------- finding and starting ComfyUI


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


def _standalone(name: str, folder: str = "nodes"):
    """<folder>/<name>.py loaded on its own, once (compat, workflow_api, models/redact: they import no ComfyUI)."""
    key = f"dpir_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, PACK_ROOT / folder / f"{name}.py")
        sys.modules[key] = mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return sys.modules[key]


def _compat():
    """ComfyUI's differences, detected from the host's files."""
    return _standalone("compat")


def redact(text) -> str:
    """Text from the server with token values and Authorization echoes masked (models/redact.py): a server of an
    older pack, or a --server elsewhere, may pass on what a Hub mirror echoed."""
    return _standalone("redact", "models").redact(text)


def host_flags(host: Path) -> frozenset[str]:
    """The command-line flags this ComfyUI knows (read from its comfy/cli_args.py, not from its version)."""
    try:
        return _compat().cli_options(host)
    except (OSError, SyntaxError):
        return frozenset()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pack_loaded_by(host: Path, base: Path | None, extra_paths: Path | None) -> bool:
    """Whether the ComfyUI started with these options finds this checkout in a custom_nodes folder it loads
    (with --base-directory that is the base directory's, not the host's: compat.custom_node_roots)."""
    for root in _compat().custom_node_roots(host, base, (extra_paths,) if extra_paths else ()):
        if root.is_dir() and any(p.is_dir() and p.resolve() == PACK_ROOT for p in root.iterdir()):
            return True
    return False


class Headless:
    """A ComfyUI started for this batch on 127.0.0.1 (stopped by stop())."""

    def __init__(self, host: Path, cpu: bool, base: Path | None, extra_paths: Path | None, online: bool):
        flags = host_flags(host)
        self.host = host
        self.tmp = Path(tempfile.mkdtemp(prefix="dpir-cli-"))
        self.port = _free_port()
        cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port)]
        if "--disable-auto-launch" in flags:
            cmd.append("--disable-auto-launch")
        # API nodes are not needed; newer hosts call the switch --offline (--disable-api-nodes is its old name).
        # A download (--download) needs the network, so the switch stays off then.
        if not online:
            cmd += _compat().no_api_nodes_flags(host)
        if cpu:
            cmd.append("--cpu")
        if base is not None:
            if "--base-directory" not in flags:
                raise SetupError(f"this ComfyUI ({host}) has no --base-directory option")
            for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):  # ComfyUI expects them
                (base / sub).mkdir(parents=True, exist_ok=True)
            cmd += ["--base-directory", str(base)]
        configs = [extra_paths] if extra_paths else []
        if not _pack_loaded_by(host, base, extra_paths):  # ComfyUI would not load it: point it at this checkout
            (self.tmp / "custom_nodes").mkdir()
            os.symlink(PACK_ROOT, self.tmp / "custom_nodes" / PACK_NAME, target_is_directory=True)
            yaml = self.tmp / "dpir_cli_paths.yaml"
            yaml.write_text(json.dumps({"dpir_cli": {"custom_nodes": str(self.tmp / "custom_nodes")}}))
            configs.append(yaml)
        for c in configs:
            cmd += ["--extra-model-paths-config", str(c)]
        self.log_path = self.tmp / "comfyui.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=host, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self.log.close()
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------- inputs and outputs


def collect(args_inputs: list[str], recursive: bool) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """([(image, its path relative to the output folder)], [(argument, why it gave nothing)])."""
    found, problems = [], []
    for arg in args_inputs:
        p = Path(arg).expanduser()
        if p.is_dir():
            walk = p.rglob("*") if recursive else p.glob("*")
            files = sorted(f for f in walk if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            found += [(f, f.relative_to(p)) for f in files]
            if not files:
                problems.append((arg, "no images in this folder" + ("" if recursive else " (use -r for sub-folders)")))
        elif p.is_file():
            found.append((p, Path(p.name)))
        else:
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            found += [(m, Path(m.name)) for m in matches]
            if not matches:
                problems.append((arg, "no such file, folder or matching file"))
    seen, out = set(), []
    for image, rel in found:
        if image.resolve() in seen:
            continue
        seen.add(image.resolve())
        out.append((image, rel))
    return out, problems


def output_paths(items: list[tuple[Path, Path]], out: Path, single_file: bool) -> list[Path]:
    if single_file:
        return [out]
    paths, used = [], set()
    for _, rel in items:
        target = out / rel.with_suffix(".png")
        if target in used:  # photo.jpg and photo.png in one folder
            target = out / rel.with_name(f"{rel.stem}_{rel.suffix[1:]}.png")
        used.add(target)
        paths.append(target)
    return paths


def prepare_image(path: Path) -> tuple[bytes, str, tuple[int, int]]:
    """(bytes to upload, file name, (width, height)); ValueError if it is not a readable image.

    16-bit and float greyscale images are scaled to 8-bit RGB here: ComfyUI's Load Image clips them.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            size = img.size
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                import numpy as np

                arr = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
                arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(arr).convert("RGB").save(buf, format="PNG")
                return buf.getvalue(), path.stem + ".png", size
    except Exception as e:  # PIL raises many kinds for broken files
        raise ValueError(f"not a readable image ({type(e).__name__}: {str(e)[:200]})") from None
    return path.read_bytes(), path.name, size


def choose_workflow(choice: str, size: tuple[int, int], args) -> str:
    if choice != "auto":
        return WORKFLOWS[choice]
    long_side = max(size) * args.scale if args.scale else args.long_side
    return WORKFLOWS["large" if long_side > TILE else "restore"]


# ---------------------------------------------------------------- the prompt


def summary_loaders(api: dict) -> set[str]:
    return {str(n["inputs"].get("clip_vision_summary", [None])[0]) for n in api.values()
            if n["class_type"] in ("DPIRVisualPrompt", "DPIRTiledPrompt")}


def build_prompt(ui: dict, object_info: dict, args, image_name: str, models: dict[str, str]) -> dict:
    """The workflow in API format with this run's settings; ``models``: kind → file name to use."""
    api = _standalone("workflow_api").ui_to_api(ui, object_info)
    summary = summary_loaders(api)
    for nid, node in list(api.items()):
        c, inputs = node["class_type"], node["inputs"]
        for (cls, name), kind in MODEL_INPUTS.items():
            if c == cls and name in inputs:
                kind = "clip_vision_summary" if nid in summary and kind == "clip_vision_local" else kind
                if kind in models:
                    inputs[name] = models[kind]
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
        elif c == "PreviewImage":  # a view for the canvas (the tile overlay): not the result, not worth running
            del api[nid]
        elif c == "SaveImage":  # the result comes back through /view; nothing stays in ComfyUI's output folder
            node["class_type"], node["inputs"] = "PreviewImage", {"images": inputs["images"]}
    if args.t5_embedding:
        for nid in [k for k, v in api.items() if v["class_type"] == "CLIPLoader"]:
            del api[nid]
    return api


def result_nodes(api: dict) -> list[str]:
    """The prompt's image outputs: the workflow's SaveImage nodes (build_prompt turned them into PreviewImage and
    dropped the workflow's own previews, which the server may list first)."""
    return [nid for nid, node in api.items() if node["class_type"] == "PreviewImage"]


def used_models(api: dict) -> dict[str, str]:
    """kind → file name the prompt's loaders name."""
    summary, out = summary_loaders(api), {}
    for nid, node in api.items():
        for (cls, name), kind in MODEL_INPUTS.items():
            value = node["inputs"].get(name)
            if node["class_type"] == cls and isinstance(value, str) and value != "none":
                out["clip_vision_summary" if nid in summary and kind == "clip_vision_local" else kind] = value
    return out


def missing_models(api: dict, errors: dict, guidance: dict) -> list[str]:
    summary, lines = summary_loaders(api), []
    for nid, ne in (errors or {}).items():
        for e in ne.get("errors", []):
            name = e.get("extra_info", {}).get("input_name")
            kind = MODEL_INPUTS.get((api.get(nid, {}).get("class_type"), name))
            if kind == "clip_vision_local" and nid in summary:
                kind = "clip_vision_summary"
            if kind and e.get("type") == "value_not_in_list":
                lines.append(f"- {api[nid]['class_type']}.{name} = {api[nid]['inputs'][name]!r} is missing. "
                             + guidance.get(kind, ""))
    return lines


# ---------------------------------------------------------------- talking to ComfyUI


class Client:
    def __init__(self, session, url: str):
        self.http, self.url, self.client_id = session, url.rstrip("/"), uuid.uuid4().hex
        self.ws = None

    async def json(self, method: str, path: str, body=None, timeout: float = 60):
        import aiohttp

        async with self.http.request(method, self.url + path, json=body,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            try:
                data = await r.json(content_type=None)
            except ValueError:
                data = (await r.text())[:2000]
            return r.status, data

    async def wait_up(self, proc: Headless | None, timeout: float = 300):
        deadline, last = time.monotonic() + timeout, "no answer"
        while True:
            try:
                status, _ = await self.json("GET", "/system_stats",
                                            timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                if status == 200:
                    return
                last = f"HTTP {status}"
            except Exception as e:  # not listening yet
                last = why_down(e)
            if proc is not None and proc.proc.poll() is not None:
                raise SetupError(f"ComfyUI exited during start-up (code {proc.proc.returncode}):\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise SetupError(f"ComfyUI at {self.url} did not answer within {timeout:.0f} s ({last})"
                                 + (f":\n{proc.log_tail()}" if proc else ""))
            await asyncio.sleep(0.5)

    async def require_pack(self, proc: Headless | None):
        """SetupError unless this ComfyUI runs the DPIR nodes (a pack that failed to import, or a --server
        without it, would otherwise fail later as an unknown node type)."""
        status, info = await self.json("GET", "/object_info/DPIRModelLoader")
        if status == 200 and isinstance(info, dict) and "DPIRModelLoader" in info:
            return
        if proc is None:
            raise SetupError(f"the ComfyUI at {self.url} has no DPIR nodes: install {PACK_NAME} in its custom_nodes "
                             "folder and restart it, or leave out --server to start one here")
        raise SetupError(f"the ComfyUI started from {proc.host} did not load {PACK_NAME} ({PACK_ROOT}); "
                         f"its log ends with:\n{proc.log_tail()}")

    async def connect(self, heartbeat: float = 30):
        self.ws = await self.http.ws_connect(f"{self.url}/ws?clientId={self.client_id}", heartbeat=heartbeat)

    async def events(self, timeout: float):
        """Yield JSON websocket messages (binary previews are skipped) until ``timeout`` passes without one."""
        import aiohttp

        while True:
            try:
                msg = await self.ws.receive(timeout=timeout)
            except asyncio.TimeoutError:
                yield None
                continue
            if msg.type == aiohttp.WSMsgType.TEXT:
                yield json.loads(msg.data)
            elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise ServerDown("ComfyUI closed the websocket (did the server stop?)")

    async def upload(self, data: bytes, name: str) -> str:
        import aiohttp

        form = aiohttp.FormData()
        # named by content: the same photo has the same name on every server and in every run, so the
        # prompt (and the sidecar that records it) does not depend on which server restored it
        form.add_field("image", data, filename=f"{hashlib.sha256(data).hexdigest()[:12]}_{name}")
        form.add_field("subfolder", "dpir_cli")
        form.add_field("type", "input")
        form.add_field("overwrite", "true")
        async with self.http.post(self.url + "/upload/image", data=form) as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                raise SetupError(f"upload to {self.url} failed: HTTP {r.status} {body}")
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]

    async def view(self, image: dict) -> bytes:
        params = {"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": image["type"]}
        async with self.http.get(self.url + "/view", params=params) as r:
            if r.status != 200:
                raise RuntimeError(f"GET /view {image['filename']}: HTTP {r.status}")
            return await r.read()


def execution_error(entry: dict) -> str | None:
    status = entry.get("status") or {}
    if status.get("status_str") == "success":
        return None
    for event, data in status.get("messages") or []:
        if event == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_message', '').strip()}"
        if event == "execution_interrupted":
            return "interrupted"
    return "the prompt did not finish"


async def run_prompt(client: Client, api: dict, bar) -> dict:
    """Queue ``api``; follow its progress on the websocket; its history entry when done."""
    status, body = await client.json("POST", "/prompt", {"prompt": api, "client_id": client.client_id})
    if status != 200:
        raise PromptRejected(body)
    pid = body["prompt_id"]
    async for event in client.events(timeout=2.0):
        if event is not None:
            kind, data = event.get("type"), event.get("data") or {}
            if data.get("prompt_id") not in (None, pid):
                continue
            if kind == "progress" and bar is not None:
                bar.set_postfix_str(f"step {data.get('value')}/{data.get('max')}")
            if not ((kind == "executing" and data.get("node") is None and data.get("prompt_id") == pid)
                    or kind in ("execution_success", "execution_error", "execution_interrupted")):
                continue
        # done (or a quiet moment): the history entry appears when the prompt has finished
        status, hist = await client.json("GET", f"/history/{pid}")
        if status == 200 and isinstance(hist, dict) and pid in hist:
            return hist[pid]


class PromptRejected(Exception):
    def __init__(self, body):
        self.body = body
        super().__init__(str(body))


# ---------------------------------------------------------------- download


async def download(client: Client, kinds: list[str]) -> dict:
    import aiohttp
    from tqdm import tqdm

    print(f"fetching models: {', '.join(kinds)}", file=sys.stderr)
    task = asyncio.ensure_future(client.json("POST", "/dpir/download", {"kinds": kinds}, timeout=24 * 3600))
    bars = {}
    try:
        while not task.done():
            try:
                msg = await client.ws.receive(timeout=0.5)
            except asyncio.TimeoutError:
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            data = event.get("data") or {}
            if event.get("type") != "dpir.download" or "file" not in data:
                continue
            key = (data["kind"], data["file"])
            if key not in bars:
                bars[key] = tqdm(total=data["total"], unit="B", unit_scale=True, desc=f"{data['kind']}: {data['file']}"[-60:],
                                 file=sys.stderr)
            bars[key].n = data["done"]
            bars[key].refresh()
    finally:
        for b in bars.values():
            b.close()
    status, body = await task
    if status != 200:
        raise SetupError(redact(f"POST /dpir/download: HTTP {status}: {body}"))
    results = body["results"]
    for kind, r in results.items():
        print(f"  {kind}: " + (f"{', '.join(r['names'])} in models/{r['folder']}/ (from {r['repo']}"
                               f"{'' if r['downloaded'] else ', already there'})" if r["ok"] else "FAILED\n    "
                               + redact(r["error"]).replace("\n", "\n    ")), file=sys.stderr)
    return results


# ---------------------------------------------------------------- main


def parse_args(argv):
    ap = argparse.ArgumentParser(description="Restore photos with DPIR through ComfyUI's HTTP API.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--version", action="version", version=f"ComfyUI-DPIR {pack_version()}")
    ap.add_argument("inputs", nargs="*", help="images, folders or glob patterns ('scans/**/*.png')")
    ap.add_argument("-o", "--output", type=Path, help="output folder (or one .png file for a single input)")
    ap.add_argument("-r", "--recursive", action="store_true", help="also restore images in sub-folders of a folder")
    ap.add_argument("--workflow", choices=["restore", "large", "block", "auto"], default="auto",
                    help="restore: one 1024 px piece (official); large: tiled, for 2K-8K; block: large's chain as "
                         "the 'DPIR Restore' subgraph workflow; auto: tiled above 1024 px")
    ap.add_argument("--overwrite", action="store_true", help="restore again images whose output exists")
    ap.add_argument("--download", action="store_true", help="fetch missing model files from Hugging Face first")
    ap.add_argument("--server", action="append", metavar="URL",
                    help="a running ComfyUI, e.g. http://127.0.0.1:8188 (default: start one); give it once per "
                         "server to spread the batch over several (each takes the next image when it is free)")
    ap.add_argument("--server-timeout", type=float, default=60, metavar="SECONDS",
                    help="a server that does not answer for this long is dropped and its image goes to the others "
                         "(also how long to wait for a --server to come up)")
    ap.add_argument("--comfyui", help="ComfyUI folder to start (default: $COMFYUI_PATH, the folders above, ~/comfy/ComfyUI)")
    ap.add_argument("--base-directory", type=Path, help="ComfyUI base directory (models, input, output) for the started ComfyUI")
    ap.add_argument("--extra-model-paths", type=Path, help="an extra_model_paths.yaml for the started ComfyUI")
    ap.add_argument("--cpu", action="store_true", help="run the started ComfyUI on the CPU (slow)")
    ap.add_argument("--long-side", type=int, default=1024, help="output long side in pixels (official: 1024)")
    ap.add_argument("--scale", type=float, help="upscale factor instead of --long-side")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", default="a high-quality, sharp, detailed photo", help="T5 text prompt")
    ap.add_argument("--t5-embedding", help="a T5 embedding file in models/dpir to use instead of T5-XXL")
    args = ap.parse_args(argv)
    if args.inputs and args.output is None:
        ap.error("give an output folder with -o")
    if not args.inputs and not args.download:
        ap.error("give images to restore, or --download to fetch the models")
    if args.server_timeout <= 0:
        ap.error("--server-timeout must be positive")
    args.server = list(dict.fromkeys(u.rstrip("/") for u in args.server or []))  # each server once
    return args


def pack_version() -> str:
    return _standalone("version").pack_version()


@functools.lru_cache(maxsize=None)
def _workflow_text(name: str) -> str:
    return (PACK_ROOT / "workflows" / f"{name}.json").read_text()


def shipped_workflow(name: str) -> dict:
    """A fresh copy of workflows/<name>.json (read from disk once per run)."""
    return json.loads(_workflow_text(name))


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------- the batch: one worker per server


def why_down(e: BaseException) -> str:
    """A short reason for a failed request to a server."""
    import aiohttp

    if isinstance(e, aiohttp.ClientConnectorError):
        return ("connection refused" if isinstance(e.os_error, ConnectionRefusedError)
                else f"cannot connect: {e.os_error.strerror or e.os_error}")
    if isinstance(e, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return "timed out"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    return f"{type(e).__name__}: {str(e)[:300]}"


class Job:
    """One image of the batch; ``holder`` is the worker it is dealt to (None while it waits)."""

    __slots__ = ("image", "out", "holder", "finished")

    def __init__(self, image: Path, out: Path):
        self.image, self.out, self.holder, self.finished = image, out, None, False


class Dealer:
    """The images not yet restored, dealt one at a time to whichever worker asks (a free server)."""

    def __init__(self, jobs: list[Job]):
        self.pending = collections.deque(jobs)
        self.busy = 0  # dealt and not settled
        self.done = 0
        self.failed: list[tuple[Path, str]] = []
        self.changed = asyncio.Condition()

    async def take(self, worker) -> Job | None:
        """The next image for ``worker``; None when every image is settled."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.pending or not self.busy)
            if not self.pending:
                return None
            job = self.pending.popleft()
            job.holder, self.busy = worker, self.busy + 1
            return job

    async def all_settled(self) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: not self.pending and not self.busy)

    async def settle(self, job: Job, worker, result) -> bool:
        """Record what ``worker`` made of ``job``: None (give it back to the others), an error text, or
        (png bytes, sidecar). Only the worker the job is dealt to settles it, once: a result that comes
        late, from a server whose images were given to the others, is dropped (False)."""
        async with self.changed:
            if job.holder is not worker or job.finished:
                return False
            self.busy -= 1
            job.holder = None
            if result is None:
                self.pending.appendleft(job)
            elif isinstance(result, str):
                job.finished = True
                self.failed.append((job.image, result))
            else:
                png, sidecar = result
                atomic_write(job.out, png)
                atomic_write(job.out.with_suffix(".json"), json.dumps(sidecar, indent=1).encode())
                job.finished = True
                self.done += 1
            self.changed.notify_all()
            return True


class Worker:
    """One ComfyUI of the batch. It takes the next image whenever its server is free (so one of the batch's
    prompts at a time waits in that server's own queue), and holds it until the result is written. A server
    that stops, stops answering for ``--server-timeout`` seconds, or refuses the prompt is dropped for the rest
    of the batch and the image it held goes back to the others."""

    def __init__(self, client: Client, proc: Headless | None, args, overall, bar):
        self.client, self.proc, self.args, self.overall, self.bar = client, proc, args, overall, bar
        self.state = "starting"  # → ready → finished | down
        self.why = ""
        self.restored = 0
        self.requeued: list[Path] = []
        self.models: dict[str, str] = {}
        self.object_info = self.guidance = self.hashes = None
        self.peers: list[Worker] = []

    @property
    def name(self) -> str:
        return self.client.url.split("://", 1)[-1].rsplit("@", 1)[-1]  # host:port, no user:password@

    def say(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)

    async def start(self, with_jobs: bool) -> None:
        args = self.args
        await self.client.require_pack(self.proc)
        await self.client.connect(heartbeat=max(30.0, 2 * args.server_timeout))  # the pings below come first
        if args.download:
            kinds = BASE_KINDS + (["t5_embedding"] if args.t5_embedding else ["t5xxl"])
            results = await download(self.client, kinds)
            bad = [k for k, r in results.items() if not r["ok"]]
            if bad:
                raise SetupError(f"could not fetch {', '.join(bad)} (see above)")
            self.models = {k: r["names"][0] for k, r in results.items() if k != "t5_embedding" and r["names"]}
        if with_jobs:
            _, self.object_info = await self.client.json("GET", "/object_info", timeout=300)
            _, files = await self.client.json("GET", "/dpir/model_files")
            self.guidance = (files or {}).get("guidance", {}) if isinstance(files, dict) else {}
        self.state = "ready"

    async def run(self, dealer: Dealer, with_jobs: bool) -> None:
        import aiohttp

        try:
            await self.client.wait_up(self.proc, 300 if self.proc else self.args.server_timeout)
            await self.watched(self.start(with_jobs))
            while (job := await dealer.take(self)) is not None:
                result = None
                try:
                    result = await self.watched(self.restore(job))
                finally:  # a server problem (or a cancel) leaves result None: the image goes back to the others
                    await dealer.settle(job, self, result)
                    if result is None:
                        self.requeued.append(job.image)
                if not isinstance(result, str):
                    self.restored += 1
                    self.show()
                self.overall.update(1)
            self.state = "finished"
        except (SetupError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            self.state, self.why = "down", str(e) if isinstance(e, SetupError) else why_down(e)
            self.show("dropped: " + self.why.splitlines()[0])
            if len(self.peers) > 1:
                again = f"; {self.requeued[-1].name} goes to the others" if self.requeued else ""
                verb = "dropped from the batch" if self.restored or self.requeued else "not used"
                self.say(f"{self.name} {verb}: {self.why.splitlines()[0]}{again}")

    def show(self, doing: str = "") -> None:
        """Several servers: this server's bar (on a terminal) and the per-server counts beside the batch bar."""
        if self.bar is None:
            return
        self.bar.set_description_str(f"{self.name}: {self.restored} restored" + (f" | {doing}" if doing else ""),
                                     refresh=False)
        self.bar.set_postfix_str("")
        self.overall.set_postfix_str(" | ".join(f"{w.name} {w.restored}" + (" dropped" if w.state == "down" else "")
                                                for w in self.peers))

    async def watched(self, coro):
        """Run ``coro`` while pinging the server (GET /queue): ServerDown once it goes --server-timeout
        seconds without answering (stopped, hung, or a lost network)."""
        task = asyncio.ensure_future(coro)
        timeout = self.args.server_timeout
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=min(2.0, timeout / 2))
                if done:
                    return task.result()
                try:
                    await self.client.json("GET", "/queue", timeout=timeout)
                except asyncio.TimeoutError:
                    if task.done():
                        return task.result()
                    raise ServerDown(f"it stopped answering (no reply in {timeout:g} s)") from None
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def restore(self, job: Job):
        """(png bytes, sidecar) or an error text for this image; ServerDown for a server-side problem."""
        args, image, out = self.args, job.image, job.out
        if self.bar is None:  # one server: the batch bar shows the image (and run_prompt its step)
            bar = self.overall
            bar.set_description(image.name[-30:])
        else:
            bar = self.bar
            self.show(image.name[-30:])
        try:
            data, name, size = prepare_image(image)
        except (ValueError, OSError) as e:  # it changed since it was checked
            return str(e)
        workflow = choose_workflow(args.workflow, size, args)
        api = build_prompt(shipped_workflow(workflow), self.object_info, args,
                           await self.client.upload(data, name), self.models)
        try:
            entry = await run_prompt(self.client, api, bar)
        except PromptRejected as e:
            lines = missing_models(api, (e.body or {}).get("node_errors") if isinstance(e.body, dict) else {},
                                   self.guidance)
            if lines:
                raise ServerDown("the models below are missing (python cli.py --download fetches them):\n"
                                 + "\n".join(lines)) from None
            raise ServerDown(f"ComfyUI refused the prompt: {json.dumps(e.body)[:3000]}") from None
        err = execution_error(entry)
        outputs = entry.get("outputs") or {}
        images = [i for nid in result_nodes(api) for i in (outputs.get(nid) or {}).get("images") or []]
        if err is None and not images:
            err = "the workflow gave no image"
        if err is not None:
            return err
        if self.hashes is None:
            status, hashes = await self.client.json("POST", "/dpir/model_hashes", used_models(api), timeout=3600)
            self.hashes = hashes if status == 200 else {"error": hashes}
            self.compare_models()
        try:
            png = await self.client.view(images[0])
        except RuntimeError as e:
            return str(e)
        sidecar = {"input": str(image), "output": str(out), "workflow": f"workflows/{workflow}.json",
                   "settings": {"seed": args.seed, "steps": args.steps, "cfg": args.cfg, "long_side": args.long_side,
                                "scale": args.scale, "prompt": args.prompt, "t5_embedding": args.t5_embedding},
                   "input_size": list(size), "models": self.hashes, "pack_version": pack_version(),
                   "prompt": api}
        return png, sidecar

    def compare_models(self) -> None:
        """Warn when servers hold different model files: their results differ (each sidecar names its files)."""
        for other in self.peers:
            if other is not self and other.hashes is not None:
                differ = sorted(k for k in set(self.hashes) | set(other.hashes)
                                if self.hashes.get(k) != other.hashes.get(k))
                if differ:
                    self.say(f"warning: {self.name} and {other.name} hold different model files "
                             f"({', '.join(differ)}): their results differ; each sidecar records the files used")
                return

    def summary(self) -> str:
        if self.state == "starting":
            return f"  {self.name}: not used (the batch was done before it answered)"
        if self.state == "down" and not self.restored and not self.requeued:
            return f"  {self.name}: not used: {self.why.splitlines()[0]}"
        line = f"  {self.name}: restored {self.restored}"
        if self.state == "down":
            line += f", then dropped: {self.why.splitlines()[0]}"
            if self.requeued:
                line += f"; re-queued on the others: {', '.join(p.name for p in self.requeued)}"
        return line


async def batch(args, jobs, server: Headless | None, urls: list[str]) -> tuple[int, list]:
    """Restore ``jobs`` on the servers at ``urls``; (restored, [(image, why it failed)])."""
    import aiohttp
    from tqdm import tqdm

    dealer = Dealer([Job(i, o) for i, o in jobs])
    several = len(urls) > 1
    overall = tqdm(total=len(jobs), unit="image", file=sys.stderr, dynamic_ncols=True,
                   disable=not jobs, desc="all servers" if several else None)
    async with aiohttp.ClientSession() as http:
        workers = [Worker(Client(http, url), server, args, overall,
                          # one bar per server on a terminal (in a log, the batch bar's counts say it)
                          tqdm(file=sys.stderr, dynamic_ncols=True, position=i + 1, bar_format="{desc}{postfix}",
                               disable=not (jobs and sys.stderr.isatty())) if several else None)
                   for i, url in enumerate(urls)]
        for w in workers:
            w.peers = workers
        tasks = {asyncio.ensure_future(w.run(dealer, bool(jobs))): w for w in workers}
        settled = asyncio.ensure_future(dealer.all_settled())
        try:
            while not (jobs and settled.done()) and not all(t.done() for t in tasks):
                await asyncio.wait([t for t in tasks if not t.done()] + [settled],
                                   return_when=asyncio.FIRST_COMPLETED)
            for t, w in tasks.items():  # the batch is done: servers still coming up are not needed
                if w.state == "starting" and not args.download:
                    t.cancel()
            for t in tasks:
                await asyncio.gather(t, return_exceptions=True)
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()
        finally:
            settled.cancel()
            for w in workers:
                if w.bar is not None:
                    w.bar.close()
            overall.close()
    down = [w for w in workers if w.state == "down"]
    if dealer.pending or (not jobs and len(down) == len(workers)):
        if len(workers) == 1:
            raise SetupError(workers[0].why)
        left = f"{len(dealer.pending)} image(s) not restored" if jobs else "nothing fetched"
        raise SetupError(f"no ComfyUI server is left to restore the batch ({left}, {dealer.done} restored):\n"
                         + "\n".join(f"- {w.name}: {w.why}".replace("\n", "\n    ") for w in workers))
    if several or down:
        print("servers:\n" + "\n".join(w.summary() for w in workers), file=sys.stderr)
    return dealer.done, dealer.failed


def main(argv=None) -> int:
    args = parse_args(argv)
    items, problems = collect(args.inputs, args.recursive)
    single = bool(args.output and args.output.suffix.lower() == ".png" and len(items) == 1 and len(args.inputs) == 1)
    outs = output_paths(items, args.output, single) if items else []
    jobs = [(i, o) for (i, _), o in zip(items, outs)]
    skipped = [] if args.overwrite else [(i, o) for i, o in jobs if o.exists()]
    jobs = [j for j in jobs if j not in skipped]
    failed = [(Path(a), why) for a, why in problems]
    readable = []
    for image, out in jobs:  # unreadable images are reported without starting ComfyUI for them
        try:
            prepare_image(image)
            readable.append((image, out))
        except ValueError as e:
            failed.append((image, str(e)))
    jobs, server, done = readable, None, 0
    try:
        if jobs or args.download:
            urls = args.server
            if not urls:
                host, how = find_comfyui(args.comfyui)
                if host is None:
                    raise SetupError(how)
                import torch

                cpu = args.cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available())
                print(f"starting ComfyUI ({host}) on 127.0.0.1 ...", file=sys.stderr)
                server = Headless(host, cpu, args.base_directory and args.base_directory.resolve(),
                                  args.extra_model_paths and args.extra_model_paths.resolve(), online=args.download)
                urls = [server.url]
            done, more = asyncio.run(batch(args, jobs, server, urls))
            failed += more
    except SetupError as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    if args.inputs:
        print(f"restored {done}, skipped {len(skipped)} (output exists; --overwrite to redo), failed {len(failed)}",
              file=sys.stderr)
        for image, why in failed:
            print(f"  FAILED {image}: {why}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
