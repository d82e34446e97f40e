"""The pack's web extension (web/) in the real ComfyUI frontend, driven by headless Chromium.

A real ComfyUI server (CPU, tiny official-format models through
extra_model_paths.yaml, as in test_workflows.py) serves the real frontend
package; Playwright's Python driver runs the system Chromium (Debian's
``chromium``; no browser download). Each shipped workflow is loaded into the
page, queued with the frontend's own Run path, and after completion the
in-graph views are checked through their DOM/canvas state:

* the before/after view in every DPIR Colour Fix node (images loaded, canvas
  drawn on both sides of the split, split/zoom/fit/batch interactions);
* the tile overlay in DPIR Tiled Global-Local Prompt (estimated from the
  upstream image before the run, the node's own plan after it, live redraw
  when tile_size/tile_overlap change; the browser's plan equals the Python
  node's for a grid of sizes);
* the model-file guidance in the loaders of a server without model files
  (the text equals the loaders' error text and MODEL_FILES; it goes away
  when a file appears and the lists are refreshed);
* the node documentation in the node library's help panel.

Screenshots go to ``test-artifacts/browser/``; with ``DPIR_UPDATE_SCREENSHOTS=1``
the README's ones (docs/screenshots/) are rewritten from them.

Skips loudly (reason + warning) without a ComfyUI host, without the
``playwright`` package or without a Chromium binary (``DPIR_CHROMIUM``,
``chromium``, ``chromium-browser``).
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

import tiny_models as tm
import tiny_vlms as tv
from host.comfy_harness import PACK_NAME, PACK_ROOT
from host.frontends import VUE_NODES_SETTING

SPEC = tm.TinySpec()
WORKFLOWS = PACK_ROOT / "workflows"
ARTIFACTS = PACK_ROOT / "test-artifacts" / "browser"
README_SHOTS = PACK_ROOT / "docs" / "screenshots"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
EXT = f"/extensions/{PACK_NAME}"


def _skip(reason: str):
    text = f"BROWSER TESTS SKIPPED: {reason}"
    warnings.warn(text, pytest.PytestWarning, stacklevel=2)
    pytest.skip(text)


def find_chromium() -> str | None:
    """$DPIR_CHROMIUM when set (authoritative), else Debian's chromium on the PATH."""
    env = os.environ.get("DPIR_CHROMIUM")
    for c in ([env] if env else ["chromium", "chromium-browser", "/usr/bin/chromium"]):
        if shutil.which(c) or (os.path.isfile(c) and os.access(c, os.X_OK)):
            return shutil.which(c) or c
    return None


# ---------------------------------------------------------------- pictures

def synthetic_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A small degraded 'photo' (sky, sun, hills, a house; blurred, noisy, JPEG'd) so screenshots read as one."""
    w, h = width * 4, height * 4
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    for y in range(h):  # sky
        t = y / h
        d.line([(0, y), (w, y)], fill=(int(90 + 120 * t), int(150 + 80 * t), int(235 - 30 * t)))
    d.ellipse([w * 0.72, h * 0.08, w * 0.86, h * 0.08 + w * 0.14], fill=(255, 226, 120))
    d.polygon([(0, h * 0.62), (w * 0.3, h * 0.45), (w * 0.62, h * 0.6), (w, h * 0.5), (w, h), (0, h)], fill=(70, 140, 70))
    x0, y0 = w * 0.18, h * 0.52
    d.rectangle([x0, y0, x0 + w * 0.22, y0 + h * 0.26], fill=(200, 90, 60))
    d.polygon([(x0 - w * 0.02, y0), (x0 + w * 0.11, y0 - h * 0.14), (x0 + w * 0.24, y0)], fill=(120, 50, 40))
    for i in range(3):
        d.rectangle([x0 + w * (0.025 + 0.07 * i), y0 + h * 0.06, x0 + w * (0.065 + 0.07 * i), y0 + h * 0.12],
                    fill=(250, 240, 200))
    img = img.resize((width, height), Image.LANCZOS).filter(ImageFilter.GaussianBlur(0.8))
    rng = np.random.default_rng(seed)
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 10, (height, width, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def chromium_path():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _skip("the 'playwright' package is not installed (pip install playwright; no browser download needed)")
    path = find_chromium()
    if path is None:
        _skip(f"no Chromium binary ({'DPIR_CHROMIUM=' + os.environ['DPIR_CHROMIUM'] if os.environ.get('DPIR_CHROMIUM') else 'chromium not on the PATH'}; "
              "apt-get install chromium, or set DPIR_CHROMIUM)")
    return path


@pytest.fixture(scope="session")
def browser_files(tmp_path_factory):
    """Tiny model files and input pictures, written once for all frontend configurations."""
    root = tmp_path_factory.mktemp("dpir_browser_models")
    tm.write_transformer_folder(root / "dpir" / "transformer", SPEC)
    tm.write_vae_folder(root / "dpir" / "robust_vae", SPEC, robust=True, full=True)
    tm.write_t5_embedding(root / "dpir" / "prompt.safetensors", SPEC, prompt="a sharp photo")
    tm.write_vae_file(root / "vae" / "sd3_vae.safetensors", SPEC, full=True)
    for which, name in ((1, "clip_vit_b32"), (2, "clip_vision_g")):
        tm.write_clip_vision_file(root / "clip_vision" / f"{name}.safetensors", SPEC, which=which)
        (root / "clip_vision" / f"{name}.json").write_text(tm.clip_vision_config(SPEC, which).to_json_string())
    inputs = {}
    for name, size, seed in (("photo.png", (80, 60), 0), ("tiles_demo.png", (160, 120), 1),
                             ("strip.png", (68, 12), 2)):
        synthetic_photo(*size, seed=seed).save(root / name)
        inputs[name] = root / name
    tv.write_qwen25_vl(root / "LLM" / "tiny-qwen2.5-vl")  # the prompt ablation's DPIR Caption
    paths = {"dpir_browser": {"base_path": str(root), "dpir": "dpir", "vae": "vae", "clip_vision": "clip_vision",
                              "LLM": "LLM"}}
    return inputs, paths


@pytest.fixture(scope="module")
def server(start_server, browser_files, frontend):
    """A server with the tiny models, serving this configuration's frontend (shared by its two Nodes 2.0 modes)."""
    inputs, paths = browser_files
    return start_server(inputs=inputs, extra_model_paths=paths, extra_args=frontend.server_args)


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_FLAGS)
    except Exception as e:  # a broken browser install is an environment problem, not a pack failure
        pw.stop()
        _skip(f"Chromium at {chromium_path} did not start: {str(e).splitlines()[0]}")
    yield b
    b.close()
    pw.stop()


class Page:
    """A frontend page of one server, with helpers for the graph (all through the frontend's own objects)."""

    def __init__(self, browser, srv, frontend):
        self.srv = srv
        self.frontend = frontend
        # a fresh user: no template dialog on start, no minimap over the canvas; no missing-models dialog over the
        # canvas either (the workflows' model links list T5-XXL, which these servers replace by an embedding file);
        # Nodes 2.0 on or off as the configuration says
        srv.post("/settings", {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                               "Comfy.Workflow.ShowMissingModelsWarning": False, **frontend.settings})
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.errors = []  # uncaught exceptions
        self.console_errors = []  # console.error calls: text and the script that made them
        self.page.on("pageerror", lambda e: self.errors.append(f"{e}\n{getattr(e, 'stack', '') or ''}"))
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(
            f"{m.text} @ {(m.location or {}).get('url', '')}"))
        self.page.goto(srv.url)
        self.page.wait_for_function("window.app && window.app.graph && window.app.vueAppReady && window.comfyAPI",
                                    timeout=180_000)  # a shared, busy CPU can take minutes
        # the configuration is the one asked for: the frontend's own version and its Nodes 2.0 setting
        seen = self.page.evaluate("""(key) => [window.__COMFYUI_FRONTEND_VERSION__,
                                              app.extensionManager?.setting?.get?.(key) ?? app.ui.settings.getSettingValue(key)]""",
                                  VUE_NODES_SETTING)
        assert seen == [frontend.version, frontend.vue_nodes], (frontend.label, seen)
        self.page.evaluate("""() => {
            const api = window.comfyAPI.api.api
            window.__dpirQueued = []
            window.__dpirEvents = []
            for (const t of ['executed', 'execution_start', 'execution_success', 'status', 'execution_cached'])
                api.addEventListener(t, (e) => window.__dpirEvents.push([t, JSON.stringify(e.detail).slice(0, 120), api.clientId]))
            const queue = api.queuePrompt.bind(api)
            api.queuePrompt = async (...a) => { const r = await queue(...a); window.__dpirQueued.push(r.prompt_id); return r }
        }""")

    def load(self, name: str, **changes) -> dict:
        """Load workflows/<name>.json as a user would (T5 replaced by the embedding file); {type: [node ids]}."""
        wf = json.loads((WORKFLOWS / f"{name}.json").read_text())
        return self.page.evaluate("""async ([wf, name, changes]) => {
            await app.loadGraphData(wf, true, true, name)
            const g = app.graph
            for (const n of [...g.nodes]) if (n.type === 'CLIPLoader') g.remove(n)  // no T5-XXL here
            const set = (n, k, v) => { const w = n.widgets.find(w => w.name === k); w.value = v; w.callback?.(v) }
            const defaults = {DPIRT5TextPrompt: {t5_embedding: 'prompt.safetensors'}, LoadImage: {image: 'photo.png'},
                              DPIRSamplerPatch: {steps: 3}}
            for (const n of g.nodes)
                for (const [k, v] of Object.entries({...(defaults[n.type] || {}), ...(changes[n.type] || {})})) set(n, k, v)
            const ids = {}
            for (const n of g.nodes) (ids[n.type] ||= []).push(n.id)
            return ids
        }""", [wf, name, changes])

    def set_widget(self, node_id: int, name: str, value):
        """Change a widget as the UI does (value, then its callback)."""
        self.page.evaluate("""([id, k, v]) => {
            const n = app.graph.getNodeById(id); const w = n.widgets.find(w => w.name === k)
            w.value = v; w.callback?.(v, app.canvas, n); app.graph.setDirtyCanvas(true, true)
        }""", [node_id, name, value])

    def run(self, timeout: float = 300) -> dict:
        """Queue the graph with the frontend's Run; the finished history entry."""
        before = self.page.evaluate("window.__dpirQueued.length")
        self.page.evaluate("app.queuePrompt(0, 1)")
        self.page.wait_for_function(f"window.__dpirQueued.length > {before}", timeout=30_000)
        prompt_id = self.page.evaluate("window.__dpirQueued.at(-1)")
        entry = self.srv.wait(prompt_id, timeout=timeout)
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
        return entry

    def focus(self, node_id: int, scale: float = 1.0):
        """Put a node at the top left of the canvas at the given zoom (DOM widgets follow on the next frames)."""
        self.page.evaluate("""([id, s]) => {
            const n = app.graph.getNodeById(id); const ds = app.canvas.ds
            ds.scale = s; ds.offset = [-n.pos[0] + 40 / s, -n.pos[1] + 110 / s]
            app.canvas.deselectAll?.(); app.graph.setDirtyCanvas(true, true)
        }""", [node_id, scale])
        self.page.wait_for_timeout(400)

    def view_around(self, node_id: int, scale: float = 0.75):
        """The graph at the given zoom with a node at the right of the window, its upstream nodes to its left."""
        self.page.evaluate("""([id, s]) => {
            const n = app.graph.getNodeById(id); const ds = app.canvas.ds; const r = app.canvas.canvas.getBoundingClientRect()
            ds.scale = s; ds.offset = [(r.width - 60) / s - n.pos[0] - n.size[0], 140 / s - n.pos[1]]
            app.canvas.deselectAll?.(); app.graph.setDirtyCanvas(true, true)
        }""", [node_id, scale])
        self.page.wait_for_timeout(600)

    def require_views(self, node_id: int, timeout: float = 10_000, skip: bool = True) -> bool:
        """The pack's views (DOM widgets) of a node on screen are in the page; in the one configuration whose
        frontend cannot show them -- frontend 1.27's Nodes 2.0, a hidden experimental preview ("Enable Vue node
        rendering (hidden)") that renders only the widget types of its own registry, no extension DOM widget --
        the view checks of the calling test are skipped, by name; anywhere else their absence fails."""
        try:
            self.page.wait_for_function("""(id) => app.graph.getNodeById(id)?.widgets?.some(w => w.element?.isConnected)""",
                                        arg=node_id, timeout=timeout)
            return True
        except Exception:
            if not (self.frontend.which == "pinned" and self.frontend.vue_nodes):
                raise
        shown = self.page.evaluate("() => app.graph.nodes.some(n => n.widgets?.some(w => w.element?.isConnected))")
        assert not shown, "some DOM widgets are shown, this node's are not"
        why = (f"{self.frontend.label}: the pack's views are not checked here -- this frontend's Nodes 2.0 preview "
               "shows no extension DOM widget (addDOMWidget) at all")
        if skip:
            _skip(why)
        warnings.warn(why, pytest.PytestWarning, stacklevel=2)
        return False

    def node_box(self, node_id: int, pad: int = 8, dom: bool = False) -> dict:
        """A node's box on the page from its graph position and size; with ``dom``, the box of its Vue element
        where Nodes 2.0 renders one (it grows with its content)."""
        return self.page.evaluate("""([id, pad, dom]) => {
            const n = app.graph.getNodeById(id); const ds = app.canvas.ds
            const v = dom && document.querySelector(`[data-node-id="${id}"]`)
            if (v) { const b = v.getBoundingClientRect()
                     return {x: Math.max(0, b.left - pad), y: Math.max(0, b.top - pad), width: b.width + 2 * pad, height: b.height + 2 * pad} }
            const r = app.canvas.canvas.getBoundingClientRect(); const title = LiteGraph.NODE_TITLE_HEIGHT
            const [x, y] = ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - title])
            return {x: Math.max(0, r.left + x - pad), y: Math.max(0, r.top + y - pad),
                    width: n.size[0] * ds.scale + 2 * pad, height: (n.size[1] + title) * ds.scale + 2 * pad}
        }""", [node_id, pad, dom])

    def shot(self, name: str, node_id: int | None = None, box: dict | None = None) -> Path:
        """A screenshot in test-artifacts/browser/<configuration>/ (the node's box, a given box, or the page)."""
        path = ARTIFACTS / self.frontend.name / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        clip = box or (self.node_box(node_id, dom=True) if node_id is not None else None)
        self.page.screenshot(path=str(path), clip=clip)
        return path

    def dataset(self, selector: str, node_id: int) -> dict:
        """The data-* state of a node's view element."""
        return self.page.evaluate("""([sel, id]) => {
            const n = app.graph.getNodeById(id)
            const w = n.widgets.find(w => w.element?.matches?.(sel))
            return w ? {...w.element.dataset} : null
        }""", [selector, node_id])

    def wait_dataset(self, selector: str, node_id: int, key: str, value: str, timeout: float = 20_000):
        try:
            return self._wait_dataset(selector, node_id, key, value, timeout)
        except Exception:
            print(f"view state when {key}={value!r} was awaited:", self.dataset(selector, node_id))
            raise

    def _wait_dataset(self, selector, node_id, key, value, timeout):
        self.page.wait_for_function("""([sel, id, k, v]) => {
            const n = app.graph.getNodeById(id)
            const w = n?.widgets?.find(w => w.element?.matches?.(sel))
            return w && w.element.dataset[k] === v
        }""", arg=[selector, node_id, key, value], timeout=timeout)

    def canvas_halves(self, node_id: int) -> dict:
        """Mean alpha and colour of the compare canvas left and right of the split."""
        return self.page.evaluate("""(id) => {
            const n = app.graph.getNodeById(id)
            const c = n.widgets.find(w => w.element?.matches?.('.dpir-compare')).element.querySelector('canvas')
            const ctx = c.getContext('2d'); const W = c.width, H = c.height
            const split = Math.round(parseFloat(c.parentElement.dataset.split) * W)
            const stats = (x0, x1) => {
                const d = ctx.getImageData(x0, Math.floor(H * 0.47), Math.max(1, x1 - x0), Math.max(1, Math.floor(H * 0.06))).data
                let a = 0, rgb = 0
                for (let i = 0; i < d.length; i += 4) { a += d[i + 3]; rgb += d[i] + d[i + 1] + d[i + 2] }
                return {alpha: a / (d.length / 4), rgb: rgb / (d.length / 4)}
            }
            return {W, H, split, left: stats(2, split - 4), right: stats(split + 4, W - 2)}
        }""", node_id)

    def close(self):
        self.page.close()


@pytest.fixture(scope="module")
def page(browser, server, frontend):
    p = Page(browser, server, frontend)
    yield p
    p.close()


def _copy_for_readme(page: Page, path: Path, name: str, config: str = "pinned-classic", max_width: int = 900):
    """With DPIR_UPDATE_SCREENSHOTS=1, a small copy of a screenshot taken in the given frontend configuration for
    the README (docs/screenshots/): the classic look from the pinned frontend, the Nodes 2.0 look from the newest."""
    if os.environ.get("DPIR_UPDATE_SCREENSHOTS") != "1" or page.frontend.name != config:
        return
    README_SHOTS.mkdir(parents=True, exist_ok=True)
    img = Image.open(path).convert("RGB")
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(README_SHOTS / name, optimize=True)


def _compare_ready(page: Page, node_id: int, count: int):
    page.require_views(node_id)
    try:
        page.wait_dataset(".dpir-compare", node_id, "ready", "1")
    except Exception:
        print("compare view state at the timeout:", page.page.evaluate("""(id) => { const n = app.graph.getNodeById(id); return {n: !!n, has: !!n?.dpirCompare, items: n?.dpirCompare?.items?.length, ds: {...(n?.dpirCompare?.element.dataset || {})}, out: JSON.stringify(app.nodeOutputs?.[id] ?? null).slice(0, 300), ev: window.__dpirEvents.slice(-30)} }""", node_id))
        raise
    state = page.dataset(".dpir-compare", node_id)
    assert state["count"] == str(count) and int(state["draws"]) > 0
    halves = page.canvas_halves(node_id)
    assert halves["W"] > 50 and halves["H"] > 50
    # both images drawn: opaque pixels on each side of the split
    assert halves["left"]["alpha"] > 200 and halves["right"]["alpha"] > 200, halves
    return state


# ---------------------------------------------------------------- tests

def test_node_docs_are_served_for_every_node(server):
    """web/docs/<Node>.md is what the node library's help panel loads for a custom node (frontend 1.27)."""
    info = server.object_info()
    mine = {k: v for k, v in info.items() if v.get("category") == "DPIR"}
    assert len(mine) >= 12
    for name, spec in mine.items():
        status, body = server.request("GET", f"{EXT}/docs/{name}.md", raw=True)
        assert status == 200, f"no web/docs/{name}.md"
        text = body.decode()
        assert text.startswith(f"# {spec['display_name']}"), name
        names = [n for sec in ("required", "optional") for n in (spec["input"].get(sec) or {})]
        names += list(spec.get("output_name") or [])
        missing = [n for n in names if f"`{n}`" not in text]
        assert not missing, f"web/docs/{name}.md does not describe {missing}"


def test_model_files_route(server):
    for prefix in ("", "/api"):
        p = server.get(f"{prefix}/dpir/model_files")
        assert set(p["guidance"]) == set(p["files"])
        for kind, f in p["files"].items():
            g = p["guidance"][kind]
            assert f["expected"] in g and f["source"] in g and f"ComfyUI/models/{f['folder']}/" in g
        assert p["loaders"]["DPIRModelLoader"] == {"transformer": ["dpir_transformer"]}
        assert "transformer/diffusion_pytorch_model.safetensors" in p["listed"]["DPIRModelLoader"]


def test_restore_workflow_compare_view(page, server):
    ids = page.load("dpir_restore", DPIRRobustVAEEncode={"resize": "long side", "long_side": 72})
    assert not page.page.query_selector_all(".dpir-guidance"), "model files are there: no guidance expected"
    entry = page.run()
    fix = ids["DPIRColourFix"][0]
    ui = entry["outputs"][str(fix)]["dpir_compare"]
    assert len(ui) == 1 and (ui[0]["width"], ui[0]["height"]) == (72, 54)
    page.focus(fix, 1.6)
    state = _compare_ready(page, fix, 1)
    assert state["size"] == "72x54"
    halves = page.canvas_halves(fix)
    assert abs(halves["left"]["rgb"] - halves["right"]["rgb"]) > 1e-3  # LQ and restored differ

    canvas = page.page.locator(f".dpir-compare canvas").first
    box = canvas.bounding_box()
    # the split follows the pointer
    page.page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
    assert abs(float(page.dataset(".dpir-compare", fix)["split"]) - 0.4) < 0.02
    _copy_for_readme(page, page.shot("compare_restore", fix), "compare_view.png")
    # wheel zooms at the pointer, double-click fits again
    page.page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5)
    page.page.mouse.wheel(0, -600)
    page.page.wait_for_timeout(150)
    zoom = float(page.dataset(".dpir-compare", fix)["zoom"])
    assert zoom > 1.5, zoom
    page.shot("compare_restore_zoomed", fix)
    page.page.mouse.dblclick(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    assert float(page.dataset(".dpir-compare", fix)["zoom"]) == 1
    # the graph around the view (the Nodes 2.0 look for the README, from the newest frontend)
    page.view_around(fix, scale=1.0)
    moved = page.page.locator(".dpir-compare canvas").first.bounding_box()
    page.page.mouse.move(moved["x"] + moved["width"] * 0.45, moved["y"] + moved["height"] * 0.5)
    _copy_for_readme(page, page.shot("restore_graph"), "nodes2-restore.png", config="newest-nodes2")
    # the node's own output is unchanged: Save Image got the restored image
    saved = [i for i in server.output_images(entry) if i["type"] == "output"]
    assert len(saved) == 1
    assert not page.errors or all("reading 'id'" in e for e in page.errors), page.errors


def pack_errors(p: Page, since: tuple[int, int] = (0, 0)) -> list[str]:
    """Uncaught page errors, and console errors that come from the pack (its scripts, its '[ComfyUI-DPIR]' reports)
    or name the load failure that 1.5x logs for an exception in a node hook, since the given counts."""
    console = [e for e in p.console_errors[since[1]:]
               if EXT in e or f"[{PACK_NAME}]" in e or "NullGraphError" in e]
    return p.errors[since[0]:] + console


@pytest.mark.parametrize("name", sorted(f.relative_to(WORKFLOWS).with_suffix("").as_posix()
                                           for f in WORKFLOWS.rglob("*.json")))  # subgraphs/ too
def test_every_shipped_workflow_loads_whole(page, name):
    """Loading a shipped workflow as a user does throws nothing (no page error, no error from the pack) and puts
    every node of the file (and of each subgraph it defines) in the graph."""
    wf = json.loads((WORKFLOWS / f"{name}.json").read_text())
    since = (len(page.errors), len(page.console_errors))
    counts = page.page.evaluate("""async ([wf, name]) => {
        await app.loadGraphData(wf, true, true, name)
        await new Promise((r) => setTimeout(r, 1500))  // deferred hooks (guidance refresh, overlay poll) run too
        const subgraphs = {}
        for (const [id, sg] of app.graph.subgraphs ?? []) subgraphs[id] = sg.nodes.length
        return {nodes: app.graph.nodes.length, subgraphs}
    }""", [wf, name])
    assert not pack_errors(page, since), pack_errors(page, since)
    assert counts["nodes"] == len(wf["nodes"]), counts
    for sg in wf.get("definitions", {}).get("subgraphs", []):
        assert counts["subgraphs"].get(sg["id"]) == len(sg["nodes"]), (sg["id"], counts)


@pytest.mark.parametrize("name", sorted(f.relative_to(WORKFLOWS).with_suffix("").as_posix()
                                           for f in WORKFLOWS.rglob("*.json")))
def test_shipped_workflow_nodes_do_not_overlap(page, name):
    """As the page draws them (Nodes 2.0: each node's own element, which grows with its widgets and the pack's
    views; classic: its size and title bar), no node of a shipped workflow covers another."""
    if page.frontend.which == "pinned" and page.frontend.vue_nodes:
        _skip(f"{page.frontend.label}: layout not checked -- this frontend's hidden Nodes 2.0 preview draws every node "
              "at least 430 px wide whatever its saved size")
    wf = json.loads((WORKFLOWS / f"{name}.json").read_text())
    page.page.evaluate("async ([wf, name]) => { await app.loadGraphData(wf, true, true, name) }", [wf, name])
    boxes = {}
    for n in wf["nodes"]:
        page.focus(n["id"], 1.0)  # on screen, full detail: Nodes 2.0 may cull or simplify nodes out of view
        boxes[n["id"]] = (n["type"], page.page.evaluate("""(id) => {
            const n = app.graph.getNodeById(id); const ds = app.canvas.ds
            const v = document.querySelector(`[data-node-id="${id}"]`)
            if (v) { const c = app.canvas.canvas.getBoundingClientRect(); const b = v.getBoundingClientRect()
                     const [x0, y0] = ds.convertCanvasToOffset([b.left - c.left, b.top - c.top])
                     const [x1, y1] = ds.convertCanvasToOffset([b.right - c.left, b.bottom - c.top])
                     return [x0, y0, x1, y1] }
            const title = n.collapsed ? 0 : LiteGraph.NODE_TITLE_HEIGHT
            return [n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]
        }""", n["id"]))
    hits = []
    for i, (a, (ta, ba)) in enumerate(boxes.items()):
        for b, (tb, bb) in list(boxes.items())[i + 1:]:
            w, h = min(ba[2], bb[2]) - max(ba[0], bb[0]), min(ba[3], bb[3]) - max(ba[1], bb[1])
            if w > 2 and h > 2:
                hits.append(f"{ta} #{a} {[round(v) for v in ba]} and {tb} #{b} {[round(v) for v in bb]}")
    assert not hits, f"{page.frontend.label}: overlapping nodes in {name}: " + "; ".join(hits)


def test_prompt_ablation_workflow_compare_views(page):
    ids = page.load("dpir_prompt_ablation", DPIRRobustVAEEncode={"resize": "long side", "long_side": 72},
                    DPIRCaption={"caption_model": "tiny-qwen2.5-vl/config.json", "max_new_tokens": 12})
    entry = page.run()
    fixes = ids["DPIRColourFix"]
    assert len(fixes) == 5
    for fix in fixes:
        assert len(entry["outputs"][str(fix)]["dpir_compare"]) == 1
        page.focus(fix, 1.0)
        _compare_ready(page, fix, 1)
    page.shot("compare_ablation_dual", fixes[-1])


def test_compare_view_batch(page):
    """A batch of two: ◀ ▶ step through it; the view of each item loads its own pair."""
    ids = page.page.evaluate("""async () => {
        await app.loadGraphData({last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [], config: {},
                                 extra: {}, version: 0.4}, true, true, 'batch')
        const add = (type, pos) => { const n = LiteGraph.createNode(type); n.pos = pos; app.graph.add(n); return n }
        const a = add('LoadImage', [0, 0]), b = add('LoadImage', [0, 400])
        a.widgets[0].value = 'photo.png'; b.widgets[0].value = 'tiles_demo.png'
        const batch = add('ImageBatch', [350, 0]), blur = add('ImageBlur', [350, 200]), fix = add('DPIRColourFix', [700, 0])
        a.connect(0, batch, 0); b.connect(0, batch, 1); batch.connect(0, blur, 0)
        blur.connect(0, fix, 0); batch.connect(0, fix, 1)
        blur.widgets.find(w => w.name === 'blur_radius').value = 4
        return {fix: fix.id}
    }""")
    entry = page.run()
    fix = ids["fix"]
    items = entry["outputs"][str(fix)]["dpir_compare"]
    assert [i["index"] for i in items] == [0, 1]
    assert items[0]["lq"]["filename"] != items[1]["lq"]["filename"]
    page.focus(fix, 1.2)
    _compare_ready(page, fix, 2)
    first = page.canvas_halves(fix)
    page.page.locator(".dpir-compare-bar button", has_text="▶").first.click()
    page.wait_dataset(".dpir-compare", fix, "index", "1")
    page.wait_dataset(".dpir-compare", fix, "ready", "1")
    second = page.canvas_halves(fix)
    assert first["left"]["rgb"] != second["left"]["rgb"]
    assert "2 / 2" in page.page.locator(".dpir-compare-label").first.inner_text()
    page.shot("compare_batch_2of2", fix)


def _python_plan(tiled_cls, h, w, tile_size, overlap, seam_shift=True):
    """The Python node's plan for an h×w LQ image, as [x, y, w, h] image px (as nodes/web_ui.py sends it)."""
    import torch

    modes = tiled_cls.INPUT_TYPES()["required"]["prompt_mode"][0]
    tiles, _ = tiled_cls().plan(None, None, torch.zeros(1, h, w, 3), None, tile_size, overlap, modes[1], seam_shift, 1)
    rects = []
    for t in tiles.plans[0]:
        x0, y0 = t.left * 8, t.top * 8
        rects.append([x0, y0, min(w, t.right * 8) - x0, min(h, t.bottom * 8) - y0])
    return rects, len(tiles.plans)


def test_tile_plan_in_the_browser_equals_the_node(page, pack_nodes):
    """dpir_tile_plan.js vs DPIRTiledPrompt.plan (the Python node itself) on a grid of sizes and settings."""
    tiled = pack_nodes["DPIRTiledPrompt"]
    rng = np.random.default_rng(0)
    n = 60  # the node draws its preview too: keep the images small, the fixed cases cover the big tiles
    cases = [(int(h), int(w), int(t), int(o), bool(s)) for h, w, t, o, s in zip(
        rng.integers(8, 900, n), rng.integers(8, 900, n), rng.choice([256, 272, 384, 512, 528], n),
        rng.choice([0, 16, 64, 128, 256, 512], n), rng.integers(0, 2, n))]
    cases += [(54, 72, 256, 64, True), (48, 272, 256, 64, True), (480, 640, 256, 64, True), (1024, 1024, 1024, 128, True),
              (1088, 2100, 1024, 128, False), (1500, 1030, 1040, 0, True), (257, 257, 256, 0, True), (17, 4000, 256, 16, True)]
    js = page.page.evaluate("""async ([ext, cases]) => {
        const m = await import(ext + '/js/dpir_tile_plan.js')
        return cases.map(([h, w, t, o, s]) => { const p = m.dpirTilePlan(h, w, t, o, s); return p.error ? {error: p.error} : {rects: p.rects, shifts: p.shifts} })
    }""", [EXT, cases])
    for case, got in zip(cases, js):
        h, w, t, o, s = case
        if o >= t:
            assert "error" in got, case
            continue
        rects, shifts = _python_plan(tiled, h, w, t, o, s)
        assert got.get("rects") == rects and got["shifts"] == shifts, case


def test_large_workflow_tile_overlay(page, server):
    # before the run: the overlay is estimated from Load Image and the encode's resize (160×120 ×4 = 640×480)
    ids = page.load("dpir_restore_large", LoadImage={"image": "tiles_demo.png"},
                    DPIRRobustVAEEncode={"resize": "upscale factor", "upscale_factor": 4.0},
                    DPIRTiledPrompt={"tile_size": 256, "tile_overlap": 64})
    node = ids["DPIRTiledPrompt"][0]
    page.focus(node, 1.0)
    page.require_views(node)
    page.wait_dataset(".dpir-tiles", node, "source", "estimate")
    state = page.dataset(".dpir-tiles", node)
    assert state["lq"] == "640x480" and state["tiles"] == "9", state  # 3 × 3
    # the memory estimate: 4 tiles of 32×32 latent px per call (tile_batch 4, cfg 1), 2 bytes × 0.012 MiB per px
    assert float(state["memMib"]) == pytest.approx(4 * 32 * 32 * 2 * 0.012, abs=0.06)
    info = page.page.locator(".dpir-tiles-info").first.inner_text()
    assert "9 tiles (3 × 3)" in info and "3 model calls per step" in info
    _copy_for_readme(page, page.shot("tiles_estimate_256", node), "tile_overlay.png")
    page.view_around(node, scale=0.7)
    _copy_for_readme(page, page.shot("large_graph"), "nodes2-large.png", config="newest-nodes2")
    page.focus(node, 1.0)
    # live: the plan follows tile_size / tile_overlap at once
    page.set_widget(node, "tile_size", 512)
    page.wait_dataset(".dpir-tiles", node, "tiles", "2")
    page.set_widget(node, "tile_size", 384)
    page.wait_dataset(".dpir-tiles", node, "tiles", "4")
    page.shot("tiles_estimate_384_64", node)
    page.set_widget(node, "tile_overlap", 512)  # overlap ≥ tile: the node would refuse it, the overlay says so
    page.wait_dataset(".dpir-tiles", node, "tiles", "0")
    assert "must be smaller" in page.page.locator(".dpir-tiles-info").first.inner_text()
    # the run (a 68×12 strip ×4 = 272×48 keeps the full-size test VAE quick): the node's own plan comes back
    page.set_widget(node, "tile_size", 256)
    page.set_widget(node, "tile_overlap", 64)
    page.set_widget(ids["LoadImage"][0], "image", "strip.png")
    # the classic and Nodes 2.0 pages share a server: a fully cached prompt sends no 'executed' to the node
    server.free()
    entry = page.run(timeout=600)
    ui = entry["outputs"][str(node)]["dpir_tiles"][0]
    assert (ui["width"], ui["height"]) == (272, 48) and len(ui["tiles"]) == 2
    page.focus(node, 1.0)
    page.wait_dataset(".dpir-tiles", node, "source", "run")
    state = page.dataset(".dpir-tiles", node)
    assert json.loads(state["rects"]) == ui["tiles"] and state["lq"] == "272x48"
    assert int(state["draws"]) > 0
    page.shot("tiles_after_run", node)
    # the run's output is unchanged: the tiled preview image and the saved image
    assert any(i["type"] == "temp" for i in server.output_images(entry))
    fix = ids["DPIRColourFix"][0]
    page.focus(fix, 1.0)
    _compare_ready(page, fix, 1)
    page.shot("compare_large", fix)


def test_node_help_panel_shows_the_docs(page):
    ids = page.load("dpir_restore")
    fix = ids["DPIRColourFix"][0]
    page.focus(fix, 1.0)
    page.page.evaluate("(id) => { app.canvas.selectNode(app.graph.getNodeById(id)); app.graph.setDirtyCanvas(true, true) }", fix)
    page.page.locator('[data-testid="info-button"]').first.dispatch_event("click")
    help_text = page.page.get_by_text("The before/after view", exact=False).first
    help_text.wait_for(timeout=15_000)
    page.page.wait_for_timeout(300)
    page.shot("node_help_colour_fix")


def test_loaders_without_files_show_where_to_get_them(browser, start_server, frontend):
    """A server without model files: the loaders say which file, its source and folder — the error's text."""
    srv = start_server(extra_args=frontend.server_args, fresh=True)
    route = srv.get("/dpir/model_files")
    p = Page(browser, srv, frontend)
    try:
        ids = p.load("dpir_restore")
        expect = {"DPIRModelLoader": ["dpir_transformer"], "DPIRRobustVAELoader": ["robust_vae"],
                  "DPIRCLIPVisionLoader": ["clip_vision_local", "clip_vision_summary"]}
        for node_type, kinds in expect.items():
            for nid in ids[node_type]:
                p.page.wait_for_function("""(id) => app.graph.getNodeById(id).widgets.some(w => w.element?.matches?.('.dpir-guidance'))""",
                                         arg=nid, timeout=15_000)
                items = p.page.evaluate("""(id) => [...app.graph.getNodeById(id).widgets.find(w => w.element?.matches?.('.dpir-guidance'))
                    .element.querySelectorAll('.dpir-guidance-item')].map(e => ({kind: e.dataset.kind, title: e.title,
                     expected: e.querySelector('.dpir-guidance-expected').textContent,
                     source: e.querySelector('.dpir-guidance-source').textContent,
                     folder: e.querySelector('.dpir-guidance-folder').textContent}))""", nid)
                assert [i["kind"] for i in items] == kinds
                for i in items:
                    f = route["files"][i["kind"]]
                    assert i["title"] == route["guidance"][i["kind"]]  # the loader's error sentence
                    assert i["expected"] == f"file: {f['expected']}" and i["source"] == f"from: {f['source']}"
                    assert i["folder"] == f"into: ComfyUI/models/{f['folder']}/"
        loader = ids["DPIRModelLoader"][0]
        p.focus(loader, 1.0)
        if p.require_views(loader, skip=False):  # the panels on screen
            # the loader column: the panels fit between the nodes of the shipped layout
            column = (loader, *ids["VAELoader"], *ids["DPIRRobustVAELoader"], *ids["DPIRCLIPVisionLoader"])
            boxes = [p.node_box(n, 0) for n in column]
            for a, b in zip(boxes, boxes[1:]):
                assert a["y"] + a["height"] <= b["y"] + 1, (a, b)
            boxes = boxes[:3]  # the picture: model loader, Load VAE, robust VAE loader
            top, bottom = boxes[0]["y"], max(b["y"] + b["height"] for b in boxes)
            column = {"x": boxes[0]["x"] - 8, "y": top - 8, "width": max(b["width"] for b in boxes) + 16,
                      "height": min(bottom - top + 16, 880 - top)}
            _copy_for_readme(p, p.shot("guidance_loaders", box=column), "model_guidance.png")

        # the same text is the loader's error when run without a file
        api = {"1": {"class_type": "DPIRModelLoader", "inputs": {"transformer": "none", "weight_dtype": "default"}},
               "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
        from host.comfy_harness import ExecutionFailed

        with pytest.raises(ExecutionFailed) as e:
            srv.run(api, timeout=60)
        assert route["guidance"]["dpir_transformer"] in str(e.value)

        # a file appears, R refreshes the lists: the guidance of the dpir-folder loaders goes away
        tm.write_t5_embedding(srv.models_dir / "dpir" / "some_model.safetensors", SPEC)
        p.page.evaluate("app.refreshComboInNodes()")
        p.page.wait_for_function("""(id) => !app.graph.getNodeById(id).widgets.some(w => w.element?.matches?.('.dpir-guidance')
                                    && w.element.dataset.why === 'empty')""", arg=loader, timeout=15_000)
        # the workflow's file name is still not there: the panel now says so
        p.page.wait_for_function("""(id) => app.graph.getNodeById(id).widgets.some(w => w.element?.dataset?.why === 'absent')""",
                                 arg=loader, timeout=15_000)
        p.page.evaluate("""(id) => { const n = app.graph.getNodeById(id); const w = n.widgets.find(w => w.name === 'transformer')
                           w.value = 'some_model.safetensors'; w.callback?.(w.value) }""", loader)
        p.page.wait_for_function("""(id) => !app.graph.getNodeById(id).widgets.some(w => w.element?.matches?.('.dpir-guidance'))""",
                                 arg=loader, timeout=15_000)
    finally:
        p.close()
        srv.stop()


def test_download_button_fetches_the_file_in_one_click(browser, comfyui_path, tmp_path, frontend):
    """The loader's guidance has a Download button: one click, the server fetches the file from the (local) Hub,
    the lists refresh and the guidance goes away."""
    from fake_hub import FakeHub
    from host.comfy_harness import start_server as start
    from host.test_downloads import publish

    with FakeHub() as hub:
        publish(hub, tmp_path / "hub")
        env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"))
        srv = start(comfyui_path, tmp_path / "base", env=env, extra_args=frontend.server_args)
        p = Page(browser, srv, frontend)
        try:
            loader = p.load("dpir_restore")["DPIRModelLoader"][0]
            p.page.wait_for_function("""(id) => app.graph.getNodeById(id).widgets.some(w => w.element?.querySelector?.('.dpir-guidance-download'))""",
                                     arg=loader, timeout=15_000)
            p.focus(loader, 1.0)
            p.shot("guidance_download_button")
            p.page.evaluate("""(id) => app.graph.getNodeById(id).widgets.map(w => w.element?.querySelector?.('.dpir-guidance-download'))
                               .find(Boolean).click()""", loader)
            p.page.wait_for_function("""(id) => !app.graph.getNodeById(id).widgets.some(w => w.element?.matches?.('.dpir-guidance'))""",
                                     arg=loader, timeout=120_000)
            assert (srv.models_dir / "dpir" / "transformer" / "config.json").is_file()
            assert "transformer/diffusion_pytorch_model.safetensors" in srv.models("dpir")
            fetched = {d.split("/resolve/")[1].split("/", 1)[1] for d in hub.downloads()}
            assert fetched == {"checkpoints/transformer/config.json",
                               "checkpoints/transformer/diffusion_pytorch_model.safetensors"}
        finally:
            p.close()
            srv.stop()


def _workflow_links(name: str) -> dict:
    """{file name: {url, directory}} of a shipped workflow's model links (its loaders' properties.models)."""
    wf = json.loads((WORKFLOWS / f"{name}.json").read_text())
    return {m["name"]: m for n in wf["nodes"] for m in n.get("properties", {}).get("models", [])}


def _missing_model_rows(p: Page) -> dict:
    """{file name: {text, url}} of the frontend's missing-models report: the "Missing Models" dialog of 1.2x (a
    list row "<directory> / <name>" with Download and Copy URL), or, in 1.5x, the "N issues found" overlay whose
    "View details" opens the Issues panel (a row per file: name, Copy URL, directory, Download). The URL is what
    the row's Copy URL button puts on the clipboard. Only the report's own element is read: with Nodes 2.0 the
    nodes' widget values are page text too."""
    old, new = p.page.locator(".comfy-missing-models"), p.page.get_by_role("button", name="View details")
    old.or_(new).first.wait_for(timeout=30_000)
    if new.count():
        new.first.click()
        p.page.locator('[data-testid="error-group-missing-model"]').wait_for(timeout=15_000)
        rows_js = """() => [...document.querySelectorAll('[data-testid="error-group-missing-model"] [data-testid="missing-model-download"]')]
            .map(b => b.parentElement)"""
    else:
        rows_js = """() => [...document.querySelectorAll('.comfy-missing-models li')]"""
    p.page.wait_for_timeout(500)  # the rows render after the section
    n = p.page.evaluate(f"({rows_js})().length")
    rows = {}
    for i in range(n):
        p.page.evaluate("() => navigator.clipboard.writeText('')")
        text = p.page.evaluate(f"""(i) => {{ const row = ({rows_js})()[i]
            const copy = [...row.querySelectorAll('button')].find(b => /copy url/i.test(b.getAttribute('aria-label') || b.textContent))
            copy?.click(); return row.innerText }}""", i)
        p.page.wait_for_timeout(200)
        url = p.page.evaluate("() => navigator.clipboard.readText()")
        name = next((k for k in text.replace(" / ", "\n").split("\n") if k.strip().endswith(".safetensors")), text).strip()
        rows[name] = {"text": text, "url": url}
    return rows


def test_missing_models_dialog_lists_the_workflow_links(browser, start_server, frontend):
    """ComfyUI's own missing-models report reads the shipped workflows' model links (properties.models on the
    loaders): on a server without model files, loading a workflow lists every linked file with its folder and
    download URL."""
    srv = start_server(extra_args=frontend.server_args)  # no model files
    for name in ("dpir_restore", "dpir_restore_large"):
        links = _workflow_links(name)
        assert {"t5xxl_fp16.safetensors", "sd3_vae.safetensors", "clip_vision_g.safetensors"} <= set(links)
        p = Page(browser, srv, frontend)
        try:
            p.page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=srv.url)
            p.page.evaluate("async () => { await app.extensionManager.setting.set('Comfy.Workflow.ShowMissingModelsWarning', true) }")
            wf = json.loads((WORKFLOWS / f"{name}.json").read_text())
            p.page.evaluate("async ([wf, name]) => { await app.loadGraphData(wf, true, true, name) }", [wf, name])
            rows = _missing_model_rows(p)
            if name == "dpir_restore":
                p.shot(f"missing_models_{frontend.name}")
            for file, link in links.items():
                assert file in rows, (file, list(rows))
                assert link["directory"] in rows[file]["text"], rows[file]
                # 1.5x copies the file's page (/blob/), 1.2x the download URL (/resolve/)
                assert rows[file]["url"] in (link["url"], link["url"].replace("/resolve/", "/blob/")), (file, rows[file])
        finally:
            p.page.evaluate("async () => { await app.extensionManager.setting.set('Comfy.Workflow.ShowMissingModelsWarning', false) }")
            p.close()
