"""``POST /dpir/download``: fetch model files of the pack's own table into ComfyUI's model folders.

The request names kinds of ``MODEL_FILES`` and nothing else (``{"kinds": ["dpir_transformer", ...]}``):
repositories, files and folders all come from the table and ``folder_paths``, so the route can neither fetch
an arbitrary URL nor write an arbitrary file. Progress goes to the browser (websocket event
``dpir.download``: kind, file, bytes done and total) and to the server's terminal (huggingface_hub's bars).
The download logic itself is models/hub_download.py (plain Python, also used without ComfyUI).

Both POST routes take only ``Content-Type: application/json`` (a web page can send text/plain to any server
without asking) and refuse what a browser marks as coming from another site (``Origin: null`` or a foreign
origin, ``Sec-Fetch-Site`` other than same-origin): ComfyUI's own origin check lets ``null`` and non-loopback
hosts through. cli.py and other local tools send no Origin and pass. Every message passed on is redacted
(models/redact.py). docs/security.md sums it up.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import traceback
import urllib.parse
from pathlib import Path

import folder_paths

from ..models.hub_download import DownloadError, download, plan_kind, sha256_file
from ..models.redact import protect_loggers, redact
from .model_files import DPIR_FOLDER, MODEL_FILES, list_models, resolve

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
            logging.error("ComfyUI-DPIR: downloading %s failed:\n%s", kind, redact(traceback.format_exc(), token))
            results[kind] = {"ok": False, "error": redact(f"{type(e).__name__}: {e}", token)}
    return results


def cross_site(headers, cors_origin: str | None = None) -> str | None:
    """Why a request must be refused as sent by another web site; None for ComfyUI's own page and for local
    tools (which send no Origin). ``cors_origin``: what ComfyUI's --enable-cors-header allows ("*" = any)."""
    origin, fetch_site = headers.get("Origin"), headers.get("Sec-Fetch-Site")
    if cors_origin and origin and origin != "null" and cors_origin in ("*", origin):
        return None  # the user allowed this origin when starting ComfyUI
    if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
        return f"the browser marks it as {fetch_site} (Sec-Fetch-Site)"
    if origin is None:
        return None
    if origin.strip().lower() == "null":
        return "it comes from a page without an origin (Origin: null: a sandboxed frame, a file, a redirect)"
    parsed = urllib.parse.urlsplit(origin)
    host = urllib.parse.urlsplit("//" + headers.get("Host", ""))
    try:
        same = bool(parsed.hostname) and parsed.hostname == host.hostname and (
            parsed.port is None or host.port is None or parsed.port == host.port)
    except ValueError:  # a port that is not a number
        same = False
    return None if same else f"its Origin ({origin[:100]}) is not this server ({headers.get('Host', '')[:100]})"


def _cors_origin() -> str | None:
    try:
        from comfy.cli_args import args

        return getattr(args, "enable_cors_header", None)
    except Exception:  # not inside ComfyUI
        return None


_hashes: dict[tuple, str] = {}


def listed(folder: str) -> set[str]:
    """The names the loaders offer for a model folder: the pack's loaders list ``dpir`` (list_models), the core
    loaders their own folders (folder_paths.get_filename_list)."""
    names = set(list_models(folder))
    if folder != DPIR_FOLDER:
        try:
            names |= set(folder_paths.get_filename_list(folder))
        except Exception:  # a folder name the host does not know
            pass
    return names


def _inside(path: Path, bases: list[Path]) -> Path | None:
    """The real path of a regular file inside one of ``bases`` (symlinks resolved), else None."""
    real = path.resolve()
    return real if real.is_file() and any(b == real or b in real.parents for b in bases) else None


def model_hashes(body) -> dict:
    """sha256 of listed model files ({kind: name}); cached by (path, size, mtime).

    Only names the loaders list, resolved (symlinks too) to regular files inside the kind's model folders; a
    file of a diffusers folder stands for the folder's files (not its subfolders), each of which must stay
    inside too."""
    if not isinstance(body, dict) or not body or not all(k in MODEL_FILES and isinstance(v, str)
                                                         for k, v in body.items()):
        raise ValueError('the body must be {kind: file name} with kinds of the pack\'s model table')
    out = {}
    for kind, name in body.items():
        folder = MODEL_FILES[kind]["folder"]
        if name not in listed(folder):
            raise ValueError(f"{name[:200]!r} is not a file the loaders list in models/{folder}/: only those are "
                             "hashed")
        path = resolve(folder, name, kind)  # refuses names outside the model folders
        bases = [Path(b).resolve() for b in folder_paths.get_folder_paths(folder)]
        if _inside(path, bases) is None:
            raise ValueError(f"{name!r} is not a regular file inside models/{folder}/")
        diffusers = (path.parent / "config.json").is_file()  # a file of a diffusers folder: the folder
        files = sorted(p for p in path.parent.iterdir() if not p.is_dir()) if diffusers else [path]
        entry = {}
        for f in files:
            real = _inside(f, bases)
            if real is None:
                raise ValueError(f"{f.name!r} beside {name!r} points outside models/{folder}/ or is not a regular "
                                 "file: refusing to hash it")
            st = real.stat()
            key = (str(real), st.st_size, st.st_mtime_ns)
            if key not in _hashes:
                _hashes[key] = sha256_file(real)
            entry[f.name if diffusers else os.path.basename(name)] = _hashes[key]
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

    def refused(request):
        """The answer to a request that is not JSON or comes from another web site; None to go on."""
        if request.content_type != "application/json":
            return web.json_response({"error": "send the body as JSON (Content-Type: application/json)"}, status=415)
        why = cross_site(request.headers, _cors_origin())
        if why:
            logging.warning("ComfyUI-DPIR: refused %s from another site: %s", request.path, why)
            return web.json_response({"error": f"refused: {why}. This route answers ComfyUI's own page and local "
                                               "tools such as cli.py"}, status=403)
        return None

    protect_loggers()  # before the first download: the libraries log status lines a mirror may fill with the token

    @instance.routes.post(ROUTE)
    async def dpir_download(request):
        if (answer := refused(request)) is not None:
            return answer
        try:
            kinds = parse_request(await request.json())
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        except Exception:
            return web.json_response({"error": "the body must be JSON"}, status=400)
        if not _busy.acquire(blocking=False):
            return web.json_response({"error": "a download is already running"}, status=409)
        try:
            protect_loggers()  # again: loggers the libraries created since (huggingface_hub's children)
            results = await asyncio.get_running_loop().run_in_executor(None, fetch, kinds, progress)
        finally:
            _busy.release()
        instance.send_sync(EVENT, {"finished": results})
        return web.json_response({"results": results})

    @instance.routes.post(HASH_ROUTE)
    async def dpir_model_hashes(request):
        if (answer := refused(request)) is not None:
            return answer
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
