"""Run the pack inside a real ComfyUI server (standard library only).

    host = find_comfyui()                     # HostLookup(path, reason)
    srv = start_server(host.path, models={"checkpoints": [Path("x.safetensors")]})
    srv.run(api)                              # POST /prompt + poll /history
    srv.stop()

The server runs ``main.py --cpu --listen 127.0.0.1`` (on a GPU, see :func:`host_device`:
``--force-fp32`` instead of ``--cpu``) on a free port with a
throw-away ``--base-directory`` (``custom_nodes/ComfyUI-DPIR`` is a symlink to
this checkout; ``models/<folder>/`` holds links to the files given), an
in-memory database, no API nodes and no custom node pack but this one. Its
output goes to ``<tmp>/server.log``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "ComfyUI-DPIR"
DEFAULT_HOST = Path("~/comfy/ComfyUI")  # where comfy-cli installs it
STARTUP_TIMEOUT = 300.0  # a shared, busy CPU can take minutes to start one


# ---------------------------------------------------------------- finding the host

class HostLookup(NamedTuple):
    path: Path | None
    reason: str  # how it was found, or why not


def is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir()


def find_comfyui() -> HostLookup:
    """The ComfyUI to test in: $COMFYUI_PATH (authoritative when set), else a
    folder above this pack (it sits in ``ComfyUI/custom_nodes/<pack>``), else
    ``~/comfy/ComfyUI``."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        p = Path(env).expanduser()
        if is_comfyui(p):
            return HostLookup(p.resolve(), f"COMFYUI_PATH={env}")
        return HostLookup(None, f"COMFYUI_PATH={env} is not a ComfyUI folder (no main.py + comfy/)")
    here = Path(os.path.abspath(__file__)).parents[2]  # the pack as reached (may be a symlink)
    starts = [here, PACK_ROOT]
    pwd = os.environ.get("PWD")  # the shell's logical cwd keeps a symlinked custom_nodes/<pack> path
    try:
        if pwd and os.path.samefile(pwd, os.getcwd()):
            starts.append(Path(pwd) / "_")
    except OSError:
        pass
    for start in dict.fromkeys(starts):
        for parent in start.parents:
            if is_comfyui(parent):
                return HostLookup(parent.resolve(), f"parent folder of the pack: {parent}")
    home = DEFAULT_HOST.expanduser()
    if is_comfyui(home):
        return HostLookup(home.resolve(), f"default location {home}")
    return HostLookup(None, f"no ComfyUI found: COMFYUI_PATH unset, none above {here}, none at {home}")


# what a ComfyUI writes into (or a user keeps in) its folder: never shared with a copy
HOST_DATA = frozenset({"custom_nodes", "models", "input", "output", "temp", "user", ".git", "__pycache__"})


def copy_host(src: Path, dest: Path) -> Path:
    """A throw-away ComfyUI at ``dest``: the code of the one at ``src`` as hard links (a copy across file
    systems), with empty data folders (see HOST_DATA), so what the copy writes never reaches ``src``. Links, not
    symlinks: ComfyUI takes its folder from ``os.path.realpath(__file__)``. ComfyUI and Python replace files
    (``__pycache__`` is not shared), never rewrite the linked ones in place."""
    src, dest = Path(src).resolve(), Path(dest)

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    for entry in src.iterdir():
        if entry.name in HOST_DATA:
            continue
        if entry.is_dir():
            shutil.copytree(entry, dest / entry.name, copy_function=link,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dest.mkdir(parents=True, exist_ok=True)
            link(entry, dest / entry.name)
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    return dest


def pack_module(name: str):
    """The pack's ``nodes.<name>`` module as the running (in-process) host imported it."""
    return sys.modules[f"{PACK_NAME}.nodes.{name}"]


def object_info_of(mappings) -> dict:
    """What the server's /object_info gives ``ui_to_api`` (inputs, outputs), from node classes in this process."""
    out = {}
    for name, cls in mappings.items():
        try:
            out[name] = {"input": cls.INPUT_TYPES(), "output": list(getattr(cls, "RETURN_TYPES", ())),
                         "output_name": list(getattr(cls, "RETURN_NAMES", None) or getattr(cls, "RETURN_TYPES", ()))}
        except Exception:  # a core node that fails here cannot be in the shipped workflows
            continue
    return out


class QuietServer:
    """The little of PromptServer that an in-process PromptExecutor uses."""
    client_id = last_node_id = last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        pass


def host_device() -> str:
    """Where the host tests run ComfyUI: $DPIR_TEST_DEVICE ('cpu' or 'cuda') when set, else 'cuda' when torch
    finds a GPU, else 'cpu'."""
    env = os.environ.get("DPIR_TEST_DEVICE", "").strip().lower()
    if env:
        if env not in ("cpu", "cuda"):
            raise ValueError(f"DPIR_TEST_DEVICE={env!r}: use 'cpu' or 'cuda'")
        return env
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_args(device: str) -> list[str]:
    """ComfyUI's options for the test device. On a GPU, --force-fp32 keeps 'default' weights and the VAE and
    CLIP towers in fp32 (ComfyUI would pick bf16/fp16 there), so the fp32 tolerances of the CPU hold; the
    weight-dtype test covers the other storage dtypes."""
    return ["--cpu"] if device == "cpu" else ["--force-fp32"]


def load_standalone(name: str):
    """``nodes/<name>.py`` as a stand-alone module (importing it through the pack's ``nodes`` package would
    import the node modules, which need ComfyUI); for the modules that import no ComfyUI."""
    key = f"dpir_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, PACK_ROOT / "nodes" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


def load_workflow_api():
    """nodes/workflow_api.py, stand-alone."""
    return load_standalone("workflow_api")


def load_compat():
    """nodes/compat.py (the ComfyUI touch points and version differences), stand-alone."""
    return load_standalone("compat")


# ---------------------------------------------------------------- errors

class ServerError(RuntimeError):
    """The server could not be started or answered unexpectedly."""


class PromptRejected(ServerError):
    """POST /prompt answered 400 (validation failed)."""

    def __init__(self, status: int, body: Any):
        self.status, self.body = status, body
        super().__init__(f"prompt rejected (HTTP {status}): {format_prompt_error(body)}")


class ExecutionFailed(ServerError):
    """The prompt was accepted but its execution failed or was interrupted."""

    def __init__(self, prompt_id: str, entry: Mapping, message: str):
        self.prompt_id, self.entry = prompt_id, entry
        super().__init__(message)


def format_prompt_error(body: Any) -> str:
    """One readable text from a /prompt 400 body (error + node_errors)."""
    if not isinstance(body, Mapping):
        return str(body)[:2000]
    parts = []
    err = body.get("error")
    if isinstance(err, Mapping):
        parts.append(f"{err.get('type')}: {err.get('message')} {err.get('details', '')}".strip())
    elif err:
        parts.append(str(err))
    for nid, ne in (body.get("node_errors") or {}).items():
        for e in ne.get("errors", []):
            parts.append(f"node {nid} ({ne.get('class_type')}): {e.get('type')}: {e.get('message')}"
                         f" [{e.get('details', '')}]")
    return "; ".join(parts)


def execution_error(entry: Mapping) -> str | None:
    """The error text of a finished history entry, or None if it succeeded."""
    status = entry.get("status") or {}
    if status.get("status_str") == "success":
        return None
    for event, data in status.get("messages") or []:
        if event == "execution_error":
            tb = "".join(data.get("traceback") or [])[-1500:]
            return (f"node {data.get('node_id')} ({data.get('node_type')}) raised "
                    f"{data.get('exception_type')}: {data.get('exception_message')}\n{tb}")
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return f"execution did not succeed: status {json.dumps(status)[:500]}"


# ---------------------------------------------------------------- the client

class Server:
    """A running ComfyUI (see :func:`start_server`) and a small HTTP client for it."""

    def __init__(self, proc: subprocess.Popen | None, port: int, base_dir: Path, log_path: Path,
                 host: str = "127.0.0.1"):
        self.proc, self.port, self.host = proc, port, host
        self.base_dir, self.log_path = Path(base_dir), Path(log_path)
        self.client_id = uuid.uuid4().hex

    # folders of the throw-away base directory
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def add_model(self, folder: str, src: Path, name: str | None = None) -> Path:
        """Link a file into ``models/<folder>/`` of the running server (ComfyUI
        rescans a model folder when it changes, so no restart is needed)."""
        dst = self.models_dir / folder / (name or Path(src).name)
        _place(Path(src), dst)
        return dst

    def add_input(self, src: Path, name: str | None = None) -> str:
        """Link a file into the server's ``input/`` (for LoadImage); its name there."""
        dst = self.input_dir / (name or Path(src).name)
        _place(Path(src), dst)
        return dst.name

    def models(self, folder: str) -> list[str]:
        """GET /models/{folder}: the file names ComfyUI lists for a model folder."""
        return self.get(f"/models/{urllib.parse.quote(folder)}")

    # raw HTTP
    def request(self, method: str, path: str, data: Any = None, timeout: float = 30.0,
                raw: bool = False) -> tuple[int, Any]:
        """(status, parsed JSON | bytes | text); HTTP errors are returned, not raised."""
        req = urllib.request.Request(self.url + path, method=method)
        if data is not None:
            req.data = json.dumps(data).encode()
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        if raw:
            return status, body
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, body.decode(errors="replace")

    def get(self, path: str, timeout: float = 30.0) -> Any:
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ServerError(f"GET {path}: HTTP {status}: {str(body)[:500]}")
        return body

    def post(self, path: str, data: Any = None, timeout: float = 30.0) -> Any:
        status, body = self.request("POST", path, {} if data is None else data, timeout=timeout)
        if status != 200:
            raise ServerError(f"POST {path}: HTTP {status}: {str(body)[:500]}")
        return body

    # endpoints
    def system_stats(self) -> dict:
        return self.get("/system_stats")

    def object_info(self, node_class: str | None = None) -> dict:
        """GET /object_info (all node types) or /object_info/{node_class} (that one, unwrapped)."""
        if node_class is None:
            return self.get("/object_info", timeout=120)
        info = self.get("/object_info/" + urllib.parse.quote(node_class))
        if node_class not in info:
            raise KeyError(f"node type {node_class!r} is not known to the server")
        return info[node_class]

    def post_prompt(self, api: Mapping, client_id: str | None = None,
                    extra_data: Mapping | None = None) -> tuple[int, Any]:
        """POST /prompt; (status, body): 200 {prompt_id, number, node_errors} or
        400 {error, node_errors}. Nothing is raised for a 400."""
        payload = {"prompt": api, "client_id": client_id or self.client_id}
        if extra_data:
            payload["extra_data"] = dict(extra_data)
        return self.request("POST", "/prompt", payload)

    def queue_prompt(self, api: Mapping) -> str:
        """POST /prompt; its prompt_id, or PromptRejected."""
        status, body = self.post_prompt(api)
        if status != 200 or not isinstance(body, Mapping) or "prompt_id" not in body:
            raise PromptRejected(status, body)
        return body["prompt_id"]

    def history(self, prompt_id: str | None = None) -> dict:
        """GET /history or /history/{prompt_id} (that entry, or {} while not done)."""
        if prompt_id is None:
            return self.get("/history")
        return (self.get(f"/history/{prompt_id}") or {}).get(prompt_id, {})

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.1) -> dict:
        """Poll /history until the prompt is done; its history entry
        (``prompt``, ``outputs``, ``status``, ``meta``). Does not judge success."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                entry = self.history(prompt_id)
            except (TimeoutError, urllib.error.URLError):  # a busy server (shared CPU) may answer a poll late
                entry = None
            if entry:  # an entry appears in /history once the prompt is finished
                return entry
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not done after {timeout:.0f} s; queue: "
                                   f"{json.dumps(self.queue())[:300]}")
            time.sleep(poll)

    def run(self, api: Mapping, timeout: float = 120.0) -> dict:
        """Queue ``api`` and wait for it: the history entry on success;
        PromptRejected (validation, with the node errors) or ExecutionFailed
        (with the failing node, its exception and traceback tail)."""
        prompt_id = self.queue_prompt(api)
        entry = self.wait(prompt_id, timeout)
        err = execution_error(entry)
        if err is not None:
            raise ExecutionFailed(prompt_id, entry, f"prompt {prompt_id} failed: {err}")
        return entry

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt (the running prompt, or only ``prompt_id`` if it is the running one)."""
        self.post("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def queue(self) -> dict:
        """GET /queue: {queue_running: [...], queue_pending: [...]}."""
        return self.get("/queue")

    def clear_queue(self) -> None:
        """Drop pending prompts (POST /queue {clear: true})."""
        self.post("/queue", {"clear": True})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """POST /free: unload models / free memory after the current prompt."""
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})
        # ComfyUI's prompt worker reads these flags when it wakes from its queue wait; a prompt posted before that
        # (a busy CPU) runs first and still sees the old cache. No API tells when they were consumed: give it time.
        time.sleep(2.0)

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        """GET /view: the bytes of an output/input/temp file."""
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        status, body = self.request("GET", "/view?" + q, raw=True)
        if status != 200:
            raise ServerError(f"GET /view {filename!r} ({type}/{subfolder}): HTTP {status}")
        return body

    @staticmethod
    def output_images(entry: Mapping, node_id: str | None = None) -> list[dict]:
        """The ``{filename, subfolder, type}`` images of a history entry (one node or all)."""
        out = []
        for nid, o in (entry.get("outputs") or {}).items():
            if node_id is None or str(nid) == str(node_id):
                out += list(o.get("images") or [])
        return out

    # process
    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(f"ComfyUI exited with code {self.proc.returncode}\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def pack_import_error(self) -> str | None:
        """The traceback/line of a failed import of this pack, from the log; None if it loaded."""
        text = self.log_text()
        lines = text.splitlines()
        failed = [l for l in lines if "IMPORT FAILED" in l and PACK_NAME in l]
        cannot = [i for i, l in enumerate(lines) if l.startswith("Cannot import") and PACK_NAME in l]
        if not failed and not cannot:
            return None
        if cannot:  # the traceback is logged just before "Cannot import ..."
            i = cannot[0]
            start = max((j for j in range(i) if lines[j].startswith("Traceback")), default=i)
            return "\n".join(lines[start:i + 1])
        return failed[0]

    def stop(self, timeout: float = 15.0) -> None:
        """Kill the server's process group (SIGTERM, then SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"Server({self.url}, base={self.base_dir})"


# ---------------------------------------------------------------- starting one

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    os.symlink(os.path.abspath(src), dst)


def prepare_base(base: Path, models: Mapping[str, Any] | None = None,
                 inputs: Sequence[Path] | Mapping[str, Path] | None = None,
                 extra_model_paths: Mapping | str | Path | None = None) -> Path | None:
    """Lay out a ComfyUI base directory; returns the extra-model-paths YAML to pass, if any.

    ``models``: {folder_name: [paths]} or {folder_name: {file_name: path}};
    files are symlinked into ``base/models/<folder_name>/``. ``inputs``: files
    linked into ``base/input``. ``extra_model_paths``: a YAML file, or a dict
    written as one (JSON is YAML).
    """
    base = Path(base)
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    for sub in ("input", "output", "temp", "user", "models"):
        (base / sub).mkdir(exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        os.symlink(PACK_ROOT, link, target_is_directory=True)
    for folder, files in (models or {}).items():
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        items = files.items() if isinstance(files, Mapping) else ((Path(f).name, f) for f in files)
        for name, src in items:
            _place(Path(src), base / "models" / folder / name)
    items = inputs.items() if isinstance(inputs, Mapping) else ((Path(f).name, f) for f in (inputs or []))
    for name, src in items:
        _place(Path(src), base / "input" / name)
    if extra_model_paths is None:
        return None
    if isinstance(extra_model_paths, Mapping):
        path = base / "extra_model_paths.yaml"
        path.write_text(json.dumps(extra_model_paths, indent=2))
        return path
    return Path(extra_model_paths)


def start_server(comfy_path: Path, base_dir: Path | None = None, *,
                 models: Mapping[str, Any] | None = None,
                 inputs: Sequence[Path] | Mapping[str, Path] | None = None,
                 extra_model_paths: Mapping | str | Path | None = None,
                 extra_args: Sequence[str] = (), timeout: float = STARTUP_TIMEOUT,
                 env: Mapping[str, str] | None = None) -> Server:
    """Start ComfyUI with this pack as its only custom node; return once
    GET /system_stats answers. Raises ServerError (with the log tail) if it
    exits or does not come up within ``timeout`` seconds."""
    comfy_path = Path(comfy_path)
    base = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="dpir-comfy-"))
    yaml_path = prepare_base(base, models, inputs, extra_model_paths)
    port = free_port()
    log_path = base / "server.log"
    cmd = [sys.executable, "main.py", *device_args(host_device()), "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--database-url", "sqlite:///:memory:",
           "--disable-auto-launch", "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_NAME,
           *load_compat().no_api_nodes_flags(comfy_path)]
    if yaml_path is not None:
        cmd += ["--extra-model-paths-config", str(yaml_path)]
    cmd += list(extra_args)
    run_env = dict(os.environ if env is None else env)
    run_env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "ab") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=comfy_path, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=run_env, start_new_session=True)
    server = Server(proc, port, base, log_path)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {proc.returncode} during start-up "
                                  f"(log {log_path}):\n{server.log_tail()}")
            try:
                status, _ = server.request("GET", "/system_stats", timeout=2)
                if status == 200:
                    return server
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"ComfyUI did not answer /system_stats within {timeout:.0f} s "
                                  f"(log {log_path}):\n{server.log_tail()}")
            time.sleep(0.25)
    except BaseException:
        server.stop()
        raise


# ---------------------------------------------------------------- PNG helper

def write_png(path: Path, width: int, height: int, rgb: tuple[int, int, int] = (128, 128, 128)) -> Path:
    """A solid-colour 8-bit RGB PNG (standard library only)."""
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))
    Path(path).write_bytes(data)
    return Path(path)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
