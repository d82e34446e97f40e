"""Subgraphs on today's frontend (comfyui-frontend-package 1.58.1, classic canvas), in headless Chromium.

The shipped workflows' DPIR part is selected and turned into a subgraph with the frontend's own
"Convert to Subgraph" command; the graph is queued with the frontend's Run and runs to an image on the tiny
models; then the test enters the subgraph, as an artist does, and checks the views there: the before/after
view of DPIR Colour Fix (images drawn, split, wheel zoom) and the tile overlay of DPIR Tiled Global-Local
Prompt (estimate from the Load Image outside the subgraph, live redraw, the run's plan). The shipped
``workflows/subgraphs/dpir_restore_block.json`` (one "DPIR Restore" subgraph node with promoted widgets) loads
without error with every node present, its promoted widgets drive the run and the overlay, and it runs.

Every prompt the frontend sends to /prompt is compared with what the pack's own converter
(nodes/workflow_api.py, used by cli.py) makes of the workflow the frontend sends with it.

The frontend is served from an unpacked wheel with ComfyUI's ``--front-end-root``: $DPIR_NEWEST_FRONTEND (as
.ci/run sets it for the browser suite), else ~/comfy/frontends/fe-1.58.1/comfyui_frontend_package/static;
without one the module is skipped, loudly. Checked on 1.58.1.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from host.comfy_harness import load_workflow_api
from host.frontends import CONFIGURATIONS
from host.test_browser import Page, _skip, browser, browser_files, chromium_path  # noqa: F401

# the newest frontend (DPIR_NEWEST_FRONTEND, or the newest unpacked under ~/comfy/frontends: tests/host/frontends.py),
# classic canvas: subgraphs are a 1.5x feature
NEWEST = next(c for c in CONFIGURATIONS if c.name == "newest-classic")
# the nodes an artist leaves outside: the photo, the model loaders, the output, the notes
OUTSIDE = ("LoadImage", "SaveImage", "PreviewImage", "DPIRModelLoader", "VAELoader", "DPIRRobustVAELoader",
           "DPIRCLIPVisionLoader", "CLIPLoader", "MarkdownNote")


@pytest.fixture(scope="module")
def server(start_server, browser_files):  # noqa: F811
    if not NEWEST.available:
        _skip(f"no newest frontend: {NEWEST.reason} (set DPIR_NEWEST_FRONTEND to the static/ folder of an "
              "unpacked comfyui-frontend-package wheel, 1.58.1 or newer)")
    inputs, paths = browser_files  # the browser suite's tiny models and pictures, written once per session
    return start_server(inputs=inputs, extra_model_paths=paths, extra_args=NEWEST.server_args)


class SubgraphPage(Page):
    """Page helpers that address nodes of the graph the canvas shows (the root graph or an opened subgraph)."""

    def __init__(self, browser, srv):
        super().__init__(browser, srv, NEWEST)
        # what the frontend sends to /prompt (the API prompt and the workflow that goes with it)
        self.page.evaluate("""() => {
            const api = window.comfyAPI.api.api
            window.__dpirSent = []
            const queue = api.queuePrompt.bind(api)
            api.queuePrompt = async (number, data, ...rest) => { window.__dpirSent.push(JSON.parse(JSON.stringify(data))); return queue(number, data, ...rest) }
        }""")

    def convert(self, keep=OUTSIDE) -> dict:
        """Select every node of the root graph but ``keep`` and run the frontend's Convert to Subgraph."""
        return self.page.evaluate("""async (keep) => {
            const g = app.rootGraph ?? app.graph
            const chosen = g.nodes.filter(n => !keep.includes(n.type))
            app.canvas.deselectAll()
            for (const n of chosen) app.canvas.select(n)
            await app.extensionManager.command.execute('Comfy.Graph.ConvertToSubgraph')
            const hosts = g.nodes.filter(n => n.isSubgraphNode?.())
            return {chosen: chosen.map(n => n.type).sort(), hosts: hosts.map(h => h.id),
                    inner: hosts.length === 1 ? hosts[0].subgraph.nodes.map(n => n.type).sort() : null,
                    root: g.nodes.map(n => n.type).sort()}
        }""", list(keep))

    def enter(self, host_id) -> dict:
        """Open the subgraph of node ``host_id`` on the canvas (what its enter button does); {type: [inner ids]}."""
        return self.page.evaluate("""(id) => {
            const host = (app.rootGraph ?? app.graph).getNodeById(id)
            app.canvas.openSubgraph(host.subgraph, host)
            const ids = {}
            for (const n of app.canvas.graph.nodes) (ids[n.type] ||= []).push(n.id)
            return {ids, inside: app.canvas.graph === host.subgraph}
        }""", host_id)

    def sent(self) -> dict:
        return self.page.evaluate("window.__dpirSent.at(-1)")

    def set_widget(self, node_id, name, value, root=False):
        self.page.evaluate("""([id, k, v, root]) => {
            const g = root ? (app.rootGraph ?? app.graph) : app.canvas.graph
            const n = g.getNodeById(id); const w = n.widgets.find(w => w.name === k)
            w.value = v; w.callback?.(v, app.canvas, n); app.canvas.setDirty(true, true)
        }""", [node_id, name, value, root])

    def focus(self, node_id, scale=1.0):
        self.page.evaluate("""([id, s]) => {
            const n = app.canvas.graph.getNodeById(id); const ds = app.canvas.ds
            ds.scale = s; ds.offset = [-n.pos[0] + 40 / s, -n.pos[1] + 110 / s]
            app.canvas.deselectAll?.(); app.canvas.setDirty(true, true)
        }""", [node_id, scale])
        self.page.wait_for_timeout(400)

    def node_box(self, node_id, pad=8, dom=False):  # classic canvas: no Vue element to measure (dom unused)
        return self.page.evaluate("""([id, pad]) => {
            const n = app.canvas.graph.getNodeById(id); const ds = app.canvas.ds
            const r = app.canvas.canvas.getBoundingClientRect(); const title = LiteGraph.NODE_TITLE_HEIGHT
            const [x, y] = ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - title])
            return {x: Math.max(0, r.left + x - pad), y: Math.max(0, r.top + y - pad),
                    width: n.size[0] * ds.scale + 2 * pad, height: (n.size[1] + title) * ds.scale + 2 * pad}
        }""", [node_id, pad])

    def dataset(self, selector, node_id):
        return self.page.evaluate("""([sel, id]) => {
            const n = app.canvas.graph.getNodeById(id)
            const w = n?.widgets?.find(w => w.element?.matches?.(sel))
            return w ? {...w.element.dataset} : null
        }""", [selector, node_id])

    def wait_dataset(self, selector, node_id, key, value, timeout=20_000):
        try:
            self.page.wait_for_function("""([sel, id, k, v]) => {
                const n = app.canvas.graph.getNodeById(id)
                const w = n?.widgets?.find(w => w.element?.matches?.(sel))
                return w && w.element.dataset[k] === v
            }""", arg=[selector, node_id, key, value], timeout=timeout)
        except Exception:
            print(f"view state when {key}={value!r} was awaited:", self.dataset(selector, node_id))
            raise

    def canvas_halves(self, node_id):
        return self.page.evaluate("""(id) => {
            const n = app.canvas.graph.getNodeById(id)
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


@pytest.fixture(scope="module")
def page(browser, server):
    p = SubgraphPage(browser, server)
    yield p
    p.close()


@pytest.fixture(scope="module")
def object_info_158(server):
    return server.object_info()


def _same_as_converter(page: SubgraphPage, object_info: dict) -> dict:
    """The prompt the frontend sent equals the pack's converter's prompt of the workflow sent with it."""
    sent = page.sent()
    workflow = sent.get("workflow") or sent.get("extra_data", {}).get("extra_pnginfo", {}).get("workflow")
    assert workflow and (workflow.get("definitions") or {}).get("subgraphs"), "the frontend sent no subgraph workflow"
    ours = load_workflow_api().ui_to_api(workflow, object_info)
    theirs = sent["output"]
    assert sorted(ours) == sorted(theirs)
    for nid in theirs:
        assert ours[nid]["class_type"] == theirs[nid]["class_type"], nid
        assert ours[nid]["inputs"] == theirs[nid]["inputs"], (nid, ours[nid]["inputs"], theirs[nid]["inputs"])
    return theirs


def _compare_view_works(page: SubgraphPage, fix: int, size: str):
    page.focus(fix, 1.6)
    page.wait_dataset(".dpir-compare", fix, "ready", "1")
    state = page.dataset(".dpir-compare", fix)
    assert state["count"] == "1" and int(state["draws"]) > 0 and state["size"] == size, state
    halves = page.canvas_halves(fix)
    assert halves["left"]["alpha"] > 200 and halves["right"]["alpha"] > 200, halves  # both images drawn
    assert abs(halves["left"]["rgb"] - halves["right"]["rgb"]) > 1e-3  # LQ and restored differ
    box = page.page.locator(".dpir-compare canvas").first.bounding_box()
    page.page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
    assert abs(float(page.dataset(".dpir-compare", fix)["split"]) - 0.4) < 0.02
    page.page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5)
    page.page.mouse.wheel(0, -600)
    page.page.wait_for_timeout(150)
    assert float(page.dataset(".dpir-compare", fix)["zoom"]) > 1.5
    page.page.mouse.dblclick(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    assert float(page.dataset(".dpir-compare", fix)["zoom"]) == 1


def _no_page_errors(page: SubgraphPage):
    assert not page.errors, page.errors


def test_restore_converted_to_subgraph_runs_and_shows_the_compare_view(page, server, object_info_158):
    ids = page.load("dpir_restore", DPIRRobustVAEEncode={"resize": "long side", "long_side": 72})
    made = page.convert()
    dpir_part = sorted(t for t, nodes in ids.items() if t not in OUTSIDE for _ in nodes)
    assert made["chosen"] == dpir_part and len(made["hosts"]) == 1 and made["inner"] == dpir_part, made
    host = made["hosts"][0]
    entry = page.run()
    prompt = _same_as_converter(page, object_info_158)
    inner = page.enter(host)
    assert inner["inside"]
    fix = inner["ids"]["DPIRColourFix"][0]
    key = f"{host}:{fix}"  # the execution id of a node inside a subgraph
    assert prompt[key]["class_type"] == "DPIRColourFix"
    ui = entry["outputs"][key]["dpir_compare"]
    assert len(ui) == 1 and (ui[0]["width"], ui[0]["height"]) == (72, 54)
    assert [i for i in server.output_images(entry) if i["type"] == "output"]  # Save Image outside got the image
    _compare_view_works(page, fix, "72x54")
    page.shot("subgraph_compare_restore", fix)
    _no_page_errors(page)


def test_large_converted_to_subgraph_tile_overlay(page, server, object_info_158):
    ids = page.load("dpir_restore_large", LoadImage={"image": "tiles_demo.png"},
                    DPIRRobustVAEEncode={"resize": "upscale factor", "upscale_factor": 4.0},
                    DPIRTiledPrompt={"tile_size": 256, "tile_overlap": 64})
    assert sum(map(len, ids.values())) == len(json.loads((Path(__file__).parents[2] / "workflows" /
                                                          "dpir_restore_large.json").read_text())["nodes"]) - 1
    made = page.convert()
    assert len(made["hosts"]) == 1 and "DPIRTiledPrompt" in made["inner"] and "LoadImage" in made["root"], made
    host = made["hosts"][0]
    inner = page.enter(host)
    node = inner["ids"]["DPIRTiledPrompt"][0]
    page.focus(node, 1.0)
    # the estimate reaches Load Image outside the subgraph through the subgraph's input (160×120 ×4 = 640×480)
    page.wait_dataset(".dpir-tiles", node, "source", "estimate")
    state = page.dataset(".dpir-tiles", node)
    assert state["lq"] == "640x480" and state["tiles"] == "9", state
    page.shot("subgraph_tiles_estimate", node)
    page.set_widget(node, "tile_size", 512)  # live redraw inside the subgraph
    page.wait_dataset(".dpir-tiles", node, "tiles", "2")
    page.set_widget(node, "tile_size", 256)
    page.set_widget(ids["LoadImage"][0], "image", "strip.png", root=True)  # 68×12 ×4 = 272×48: a quick run
    page.wait_dataset(".dpir-tiles", node, "lq", "272x48")
    entry = page.run(timeout=600)
    _same_as_converter(page, object_info_158)
    ui = entry["outputs"][f"{host}:{node}"]["dpir_tiles"][0]
    assert (ui["width"], ui["height"]) == (272, 48) and len(ui["tiles"]) == 2
    page.focus(node, 1.0)
    page.wait_dataset(".dpir-tiles", node, "source", "run")
    state = page.dataset(".dpir-tiles", node)
    assert json.loads(state["rects"]) == ui["tiles"] and int(state["draws"]) > 0
    page.shot("subgraph_tiles_after_run", node)
    _compare_view_works(page, inner["ids"]["DPIRColourFix"][0], "272x48")
    _no_page_errors(page)


def test_shipped_subgraph_workflow_loads_and_runs(page, server, object_info_158):
    path = Path(__file__).parents[2] / "workflows" / "subgraphs" / "dpir_restore_block.json"
    wf = json.loads(path.read_text())
    definition = wf["definitions"]["subgraphs"][0]
    ids = page.load("subgraphs/dpir_restore_block")  # T5 replaced by the embedding file, photo.png
    assert sum(map(len, ids.values())) == len(wf["nodes"]) - 1  # every node but the removed Load CLIP
    host = ids[definition["id"]][0]
    shown = page.page.evaluate("""(id) => { const h = (app.rootGraph ?? app.graph).getNodeById(id)
        return {title: h.title, widgets: h.widgets.map(w => w.name), inner: h.subgraph.nodes.length} }""", host)
    assert shown == {"title": "DPIR Restore", "widgets": ["tile_size", "steps", "method"],
                     "inner": len(definition["nodes"])}, shown
    _no_page_errors(page)
    inner = page.enter(host)
    tiled, encode = inner["ids"]["DPIRTiledPrompt"][0], inner["ids"]["DPIRRobustVAEEncode"][0]
    page.set_widget(encode, "long_side", 640)  # 80×60 → 640×480
    page.focus(tiled, 1.0)
    page.wait_dataset(".dpir-tiles", tiled, "lq", "640x480")
    assert page.dataset(".dpir-tiles", tiled)["tiles"] == "1"  # the block's tile_size 1024: one tile
    # the overlay follows the block's promoted tile_size (what the run uses), not the inner widget's own value
    page.set_widget(host, "tile_size", 256, root=True)
    page.wait_dataset(".dpir-tiles", tiled, "tileSize", "256")
    state = page.dataset(".dpir-tiles", tiled)
    assert int(state["tiles"]) > 1 and max(r[2] for r in json.loads(state["rects"])) <= 256, state
    page.shot("subgraph_block_tiles", tiled)
    page.set_widget(encode, "long_side", 72)
    page.set_widget(host, "steps", 2, root=True)
    page.set_widget(host, "method", "adain", root=True)
    entry = page.run()
    prompt = _same_as_converter(page, object_info_158)
    patch, fix = inner["ids"]["DPIRSamplerPatch"][0], inner["ids"]["DPIRColourFix"][0]
    assert prompt[f"{host}:{patch}"]["inputs"]["steps"] == 2 and prompt[f"{host}:{fix}"]["inputs"]["method"] == "adain"
    assert prompt[f"{host}:{tiled}"]["inputs"]["tile_size"] == 256
    assert [i for i in server.output_images(entry) if i["type"] == "output"]
    _compare_view_works(page, fix, "72x54")
    page.shot("subgraph_block_compare", fix)
    _no_page_errors(page)
