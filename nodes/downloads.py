"""``POST /dpir/download``: fetch model files of the pack's own table into ComfyUI's model folders.

The request names kinds of ``MODEL_FILES`` and nothing else (``{"kinds": ["dpir_transformer", ...]}``):
repositories, files and folders all come from the table and ``folder_paths``, so the route can neither fetch
an arbitrary URL nor write an arbitrary file. Progress goes to the browser (websocket event
``dpir.download``: kind, file, bytes done and total) and to the server's terminal (huggingface_hub's bars).
The download logic itself is models/hub_download.py (plain Python, also used without ComfyUI).
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from pathlib import Path

import folder_paths

from ..models.hub_download import DownloadError, download, plan_kind, sha256_file
from .model_files import MODEL_FILES, resolve

ROUTE = "/dpir/download"
HASH_ROUTE = "/dpir/model_hashes"
EVENT = "dpir.download"
_busy = threading.Lock()  # one download at a time: two would race for the same files


def downloadable() -> list[str]:
    return [k for k, f in MODEL_FILES.items() if f.get("hub")]


def parse_request(body) -> list[str]:
    """The kinds a request asks for; ValueError (with the reason) for anything else."""
    if not isinstance(body, dict) or set(body) != {"kinds"}:
        raise ValueError('the body must be {"kinds": [...]} and nothing else')
    kinds = body["kinds"]
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
        raise ValueError('"kinds" must be a non-empty list of names')
    unknown = [k for k in kinds if k not in downloadable()]
    if unknown:
        raise ValueError(f"not in the pack's model table: {unknown[:5]}; downloadable: {downloadable()}")
    return list(dict.fromkeys(kinds))


def target_folder(kind: str) -> Path:
    """The first folder ComfyUI has for the kind's model type (models/<folder> or extra_model_paths.yaml)."""
    return Path(folder_paths.get_folder_paths(MODEL_FILES[kind]["folder"])[0])


def fetch(kinds: list[str], progress=None, token: str | None = None) -> dict:
    """Download each kind (first source of its table entry that works); per kind {ok, names, repo | error}."""
    results = {}
    for kind in kinds:
        try:
            plan = plan_kind(kind, MODEL_FILES[kind]["hub"], target_folder(kind), token)
            needed = bool(plan.todo())
            download(plan, token, (lambda f, d, t, k=kind: progress(k, f, d, t)) if progress else None)
            results[kind] = {"ok": True, "repo": plan.repo, "names": plan.names, "downloaded": needed,
                             "folder": MODEL_FILES[kind]["folder"]}
        except DownloadError as e:
            results[kind] = {"ok": False, "error": str(e)}
        except Exception as e:  # an unexpected failure of one kind must not hide the others' results
            logging.exception("ComfyUI-DPIR: downloading %s failed", kind)
            results[kind] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return results


_hashes: dict[tuple, str] = {}


def model_hashes(body) -> dict:
    """sha256 of listed model files ({kind: name}); cached by (path, size, mtime)."""
    if not isinstance(body, dict) or not all(k in MODEL_FILES and isinstance(v, str) for k, v in body.items()):
        raise ValueError('the body must be {kind: file name} with kinds of the pack\'s model table')
    out = {}
    for kind, name in body.items():
        path = resolve(MODEL_FILES[kind]["folder"], name, kind)  # refuses names outside the model folders
        if path.is_file() and (path.parent / "config.json").is_file():  # a file of a diffusers folder: the folder
            path = path.parent
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        entry = {}
        for f in files:
            st = f.stat()
            key = (str(f), st.st_size, st.st_mtime_ns)
            if key not in _hashes:
                _hashes[key] = sha256_file(f)
            entry[os.path.relpath(f, path.parent if path.is_file() else path)] = _hashes[key]
        out[kind] = {"name": name, "sha256": entry}
    return out


def register_routes() -> bool:
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None or getattr(instance, "_dpir_download_routes", False):
        return False
    from aiohttp import web

    def progress(kind, file, done, total, _last={"t": 0.0}):
        now = time.monotonic()
        if done >= total or now - _last["t"] > 0.25:
            _last["t"] = now
            instance.send_sync(EVENT, {"kind": kind, "file": file, "done": done, "total": total})

    @instance.routes.post(ROUTE)
    async def dpir_download(request):
        try:
            kinds = parse_request(await request.json())
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        except Exception:
            return web.json_response({"error": "the body must be JSON"}, status=400)
        if not _busy.acquire(blocking=False):
            return web.json_response({"error": "a download is already running"}, status=409)
        try:
            results = await asyncio.get_running_loop().run_in_executor(None, fetch, kinds, progress)
        finally:
            _busy.release()
        instance.send_sync(EVENT, {"finished": results})
        return web.json_response({"results": results})

    @instance.routes.post(HASH_ROUTE)
    async def dpir_model_hashes(request):
        try:
            body = await request.json()
            out = await asyncio.get_running_loop().run_in_executor(None, model_hashes, body)
        except Exception as e:  # a malformed body, or DPIRModelError: a name that is missing or escapes its folder
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(out)

    instance._dpir_download_routes = True
    return True


try:
    register_routes()
except Exception:  # never let the optional routes stop the nodes from loading
    logging.exception("ComfyUI-DPIR: could not add the %s route", ROUTE)
