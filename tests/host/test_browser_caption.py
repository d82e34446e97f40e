"""The autoprompt workflow in the real frontend (headless Chromium): it loads with the caption wired into the T5
prompt's 'text' widget, runs, and the captions and the prompt are shown on the nodes (web/js/dpir_text.js).

Shares the browser, server and page of test_browser.py; a tiny random Qwen2.5-VL (tests/tiny_vlms.py) is copied
into the server's models/LLM/.
"""
from __future__ import annotations

import shutil

import tiny_vlms as tv
from host.test_browser import Page, browser, browser_files, chromium_path, page, server  # noqa: F401  (shared fixtures)

QWEN_DIR = "tiny-qwen2.5-vl"
QWEN = f"{QWEN_DIR}/config.json"  # the caption node lists each model folder by its config.json


def _texts(page: Page, node_id: int) -> dict:
    return page.page.evaluate("""(id) => {
        const n = app.graph.getNodeById(id)
        const w = n.widgets.find(w => w.element?.querySelector?.('.dpir-text'))
        return w ? {text: w.element.querySelector('.dpir-text').textContent,
                    warning: w.element.querySelector('.dpir-text-warning').textContent} : null
    }""", node_id)


def test_autoprompt_workflow_shows_the_caption(page, server, tmp_path):  # noqa: F811
    tv.write_qwen25_vl(tmp_path / QWEN_DIR)
    shutil.copytree(tmp_path / QWEN_DIR, server.models_dir / "LLM" / QWEN_DIR, dirs_exist_ok=True)
    page.page.evaluate("app.refreshComboInNodes?.()")
    ids = page.load("dpir_restore_autoprompt", DPIRRobustVAEEncode={"resize": "long side", "long_side": 72},
                    DPIRCaption={"caption_model": QWEN, "max_new_tokens": 12})
    t5, caption = ids["DPIRT5TextPrompt"][0], ids["DPIRCaption"][0]
    linked = page.page.evaluate("""(id) => {
        const n = app.graph.getNodeById(id); const i = n.inputs.find(i => i.name === 'text')
        return i && i.link != null ? app.graph.links[i.link]?.origin_id ?? app.graph.links.get?.(i.link)?.origin_id : null
    }""", t5)
    assert linked == caption  # the caption feeds the T5 prompt's text widget
    # the server is shared by the classic and Nodes 2.0 pages: without this the second page's run finds the caption
    # in ComfyUI's cache, and a cached node that is not an output node gets no 'executed' event to show it
    server.free()
    entry = page.run(timeout=600)
    captions = entry["outputs"][str(caption)]["text"]
    assert len(captions) == 1 and captions[0]
    page.focus(caption, 1.0)
    page.page.wait_for_function("(id) => !!app.graph.getNodeById(id).widgets.find(w => w.name === 'dpir_text')",
                                arg=caption, timeout=90_000)  # a busy CPU delays the executed event
    assert _texts(page, caption)["text"] == captions[0]
    assert captions[0] in _texts(page, t5)["text"]
    page.shot("caption_view", caption)
