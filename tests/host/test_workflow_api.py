"""UI-format -> API-format workflow conversion (nodes/workflow_api.py).

The unit tests use hand-written UI fragments and object_info and need no
host. The ``host`` tests check the converter against the real server: the
frontend's own saved workflows (the comfyui-workflow-templates package) must
convert to prompts the server finds nothing wrong with except model files
this bare host does not have.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .comfy_harness import PACK_ROOT, write_png

IMAGE = ["IMAGE"]
INT = lambda **o: ["INT", {"default": 0, "min": 0, "max": 4096, **o}]  # noqa: E731


def _info(required=None, optional=None, output=("IMAGE",), order=True, **extra):
    info = {"input": {"required": required or {}}, "output": list(output), "display_name": extra.pop("display", None)}
    if optional is not None:
        info["input"]["optional"] = optional
    if order:
        info["input_order"] = {k: list(v) for k, v in info["input"].items()}
    info.update(extra)
    return info


OI = {
    "EmptyImage": _info({"width": INT(default=512), "height": INT(default=512), "batch_size": INT(default=1),
                         "color": INT()}, display="EmptyImage"),
    "ImageScale": _info({"image": IMAGE, "upscale_method": [["nearest-exact", "bilinear"]],
                         "width": INT(default=512), "height": INT(default=512), "crop": [["disabled", "center"]]}),
    "ImageInvert": _info({"image": IMAGE}, display="Invert Image"),
    "SaveImage": _info({"images": IMAGE, "filename_prefix": ["STRING", {"default": "ComfyUI"}]}, output=(),
                       output_node=True),
    "ImageBlend": _info({"image1": IMAGE, "image2": IMAGE, "blend_factor": ["FLOAT", {"default": 0.5}],
                         "blend_mode": [["normal", "multiply"]]}),
    "MaskThenImage": _info({"mask": ["MASK"], "image": IMAGE}),
    "KSampler": _info({"model": ["MODEL"], "seed": INT(control_after_generate=True), "steps": INT(default=20),
                       "cfg": ["FLOAT", {"default": 8.0}], "sampler_name": [["euler", "dpmpp_2m"]],
                       "scheduler": [["normal", "karras"]], "positive": ["CONDITIONING"],
                       "negative": ["CONDITIONING"], "latent_image": ["LATENT"],
                       "denoise": ["FLOAT", {"default": 1.0}]}, output=("LATENT",)),
    "LegacySeed": _info({"seed": INT(), "noise_seed": INT(), "other": INT()}),
    "NoControlSeed": _info({"seed": INT(control_after_generate=False), "steps": INT()}),
    "LoadImage": _info({"image": [["a.png", "b.png"], {"image_upload": True}]}, output=("IMAGE", "MASK")),
    "ComboControl": _info({"choice": ["COMBO", {"options": ["x", "y"], "control_after_generate": True}],
                           "after": INT()}),
    "Ordered": {"input": {"required": {"b": INT(), "a": ["STRING", {}]}, "optional": {"z": ["BOOLEAN", {}],
                                                                                   "y": IMAGE}},
                "input_order": {"required": ["a", "b"], "optional": ["y", "z"]}, "output": ["IMAGE"]},
    "ForceInput": _info({"n": ["INT", {"forceInput": True}], "m": INT()}),
    "OptImage": _info({"strength": ["FLOAT", {"default": 1.0}]}, optional={"image": IMAGE}),
    "PrimitiveInt": _info({"value": ["INT", {"control_after_generate": True}]}, output=("INT",)),
    "ListWidget": _info({"items": ["MULTISELECT", {"options": ["p", "q"]}]}),
}


class UI:
    """A tiny builder of UI-format workflows."""

    def __init__(self):
        self.nodes, self.links = [], []

    def node(self, nid, type, widgets=None, inputs=(), outputs=("IMAGE",), mode=0, **kw):
        n = {"id": nid, "type": type, "pos": [0, 0], "size": [100, 50], "flags": {}, "order": len(self.nodes),
             "mode": mode, "inputs": [dict(i) for i in inputs],
             "outputs": [{"name": t, "type": t, "links": []} for t in outputs], "properties": {}}
        if widgets is not None:
            n["widgets_values"] = widgets
        n.update(kw)
        self.nodes.append(n)
        return n

    def link(self, src, src_slot, dst, dst_slot, type=None):
        lid = len(self.links) + 1
        dnode = next(n for n in self.nodes if n["id"] == dst)
        snode = next(n for n in self.nodes if n["id"] == src)
        t = type or dnode["inputs"][dst_slot].get("type")
        self.links.append([lid, src, src_slot, dst, dst_slot, t])
        dnode["inputs"][dst_slot]["link"] = lid
        snode["outputs"][src_slot]["links"].append(lid)
        return lid

    def json(self):
        return {"last_node_id": max([n["id"] for n in self.nodes] or [0]), "last_link_id": len(self.links),
                "nodes": self.nodes, "links": self.links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def inp(name, type, link=None, widget=False):
    d = {"name": name, "type": type, "link": link}
    if widget:
        d["widget"] = {"name": name}
    return d


def img_in(name="image"):
    return inp(name, "IMAGE")


def chain(ui, mode_invert=0):
    ui.node(1, "EmptyImage", [64, 48, 1, 255])
    ui.node(2, "ImageInvert", inputs=[img_in()], mode=mode_invert)
    ui.node(3, "SaveImage", ["out"], inputs=[img_in("images")], outputs=())
    ui.link(1, 0, 2, 0)
    ui.link(2, 0, 3, 0)
    return ui


# ---------------------------------------------------------------- basics

def test_links_and_widgets(workflow_api):
    api = workflow_api.ui_to_api(chain(UI()).json(), OI)
    assert api == {
        "1": {"inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 255}, "class_type": "EmptyImage",
              "_meta": {"title": "EmptyImage"}},
        "2": {"inputs": {"image": ["1", 0]}, "class_type": "ImageInvert", "_meta": {"title": "Invert Image"}},
        "3": {"inputs": {"filename_prefix": "out", "images": ["2", 0]}, "class_type": "SaveImage",
              "_meta": {"title": "SaveImage"}},
    }


def test_link_objects_and_titles(workflow_api):
    ui = chain(UI()).json()
    ui["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), l))
                   for l in ui["links"]]
    ui["nodes"][1]["title"] = "Flip it"
    api = workflow_api.ui_to_api(ui, OI)
    assert api["3"]["inputs"]["images"] == ["2", 0]
    assert api["2"]["_meta"]["title"] == "Flip it"


def test_reroutes_are_followed(workflow_api):
    ui = UI()
    ui.node(1, "EmptyImage", [8, 8, 1, 0])
    ui.node(5, "Reroute", inputs=[inp("", "*")], outputs=("IMAGE",))
    ui.node(6, "Reroute", inputs=[inp("", "*")], outputs=("IMAGE",))
    ui.node(3, "SaveImage", ["x"], inputs=[img_in("images")], outputs=())
    ui.link(1, 0, 5, 0, "IMAGE")
    ui.link(5, 0, 6, 0, "IMAGE")
    ui.link(6, 0, 3, 0)
    api = workflow_api.ui_to_api(ui.json(), OI)
    assert set(api) == {"1", "3"}
    assert api["3"]["inputs"]["images"] == ["1", 0]


def test_notes_groups_and_dangling_reroute_ignored(workflow_api):
    ui = chain(UI())
    ui.node(10, "Note", ["some text"], outputs=())
    ui.node(11, "MarkdownNote", ["# md"], outputs=())
    ui.node(12, "Reroute", inputs=[inp("", "*")], outputs=("*",))
    d = ui.json()
    d["groups"] = [{"title": "G", "bounding": [0, 0, 10, 10]}]
    assert set(workflow_api.ui_to_api(d, OI)) == {"1", "2", "3"}


# ---------------------------------------------------------------- widget layout

def test_seed_control_after_generate(workflow_api):
    ui = UI()
    ui.node(1, "KSampler", [1234, "randomize", 25, 6.5, "dpmpp_2m", "karras", 0.75],
            inputs=[inp("model", "MODEL"), inp("positive", "CONDITIONING"), inp("negative", "CONDITIONING"),
                    inp("latent_image", "LATENT")], outputs=("LATENT",))
    got = workflow_api.ui_to_api(ui.json(), OI)["1"]["inputs"]
    assert got == {"seed": 1234, "steps": 25, "cfg": 6.5, "sampler_name": "dpmpp_2m", "scheduler": "karras",
                   "denoise": 0.75}


def test_legacy_seed_names_and_explicit_no_control(workflow_api):
    ui = UI()
    ui.node(1, "LegacySeed", [1, "fixed", 2, "increment", 3])
    ui.node(2, "NoControlSeed", [7, 9])
    api = workflow_api.ui_to_api(ui.json(), OI)
    assert api["1"]["inputs"] == {"seed": 1, "noise_seed": 2, "other": 3}
    assert api["2"]["inputs"] == {"seed": 7, "steps": 9}


def test_image_upload_and_combo_control(workflow_api):
    ui = UI()
    ui.node(1, "LoadImage", ["b.png", "image"], outputs=("IMAGE", "MASK"))
    ui.node(2, "ComboControl", ["y", "fixed", "", 5])
    api = workflow_api.ui_to_api(ui.json(), OI)
    assert api["1"]["inputs"] == {"image": "b.png"}
    assert api["2"]["inputs"] == {"choice": "y", "after": 5}


def test_input_order_force_input_and_optional_widgets(workflow_api):
    slots = workflow_api.widget_slots(OI["Ordered"])
    assert [s.name for s in slots] == ["a", "b", "z"]
    assert [s.name for s in workflow_api.widget_slots(OI["ForceInput"])] == ["m"]
    ui = UI()
    ui.node(1, "Ordered", ["text", 3, True], inputs=[img_in("y")])
    ui.node(2, "ForceInput", [4], inputs=[inp("n", "INT")])
    api = workflow_api.ui_to_api(ui.json(), OI)
    assert api["1"]["inputs"] == {"a": "text", "b": 3, "z": True}
    assert api["2"]["inputs"] == {"m": 4}


def test_missing_widget_values_take_defaults(workflow_api):
    ui = UI()
    ui.node(1, "EmptyImage", [32])  # short list: the rest as a fresh widget has them
    ui.node(2, "SaveImage", None, inputs=[img_in("images")], outputs=())  # no widgets_values at all
    ui.node(3, "ImageScale", ["bilinear", None, 16, "center"], inputs=[img_in()])
    ui.link(1, 0, 2, 0)
    ui.link(1, 0, 3, 0)
    api = workflow_api.ui_to_api(ui.json(), OI)
    assert api["1"]["inputs"] == {"width": 32, "height": 512, "batch_size": 1, "color": 0}
    assert api["2"]["inputs"]["filename_prefix"] == "ComfyUI"
    assert api["3"]["inputs"] == {"image": ["1", 0], "upscale_method": "bilinear", "width": 512, "height": 16,
                                  "crop": "center"}


def test_dict_widgets_values(workflow_api):
    ui = UI()
    ui.node(1, "EmptyImage", {"width": 10, "height": 20, "batch_size": 2, "color": 3, "preview": "ignored"})
    assert workflow_api.ui_to_api(ui.json(), OI)["1"]["inputs"] == {"width": 10, "height": 20, "batch_size": 2,
                                                                   "color": 3}


def test_list_values_are_boxed(workflow_api):
    ui = UI()
    ui.node(1, "ListWidget", [["p", "q"]])
    assert workflow_api.ui_to_api(ui.json(), OI)["1"]["inputs"] == {"items": {"__value__": ["p", "q"]}}


# ---------------------------------------------------------------- converted widgets, primitives

def test_converted_widget_takes_the_link(workflow_api):
    ui = UI()
    ui.node(1, "EmptyImage", [8, 8, 1, 0])
    ui.node(2, "PrimitiveInt", [40, "fixed"], outputs=("INT",))
    ui.node(3, "ImageScale", ["bilinear", 512, 30, "disabled"],
            inputs=[img_in(), inp("width", "INT", widget=True)])
    ui.link(1, 0, 3, 0)
    ui.link(2, 0, 3, 1)
    api = workflow_api.ui_to_api(ui.json(), OI)
    assert api["3"]["inputs"] == {"image": ["1", 0], "upscale_method": "bilinear", "width": ["2", 0],
                                  "height": 30, "crop": "disabled"}
    assert api["2"]["inputs"] == {"value": 40}


def test_primitive_node_value_goes_into_widgets(workflow_api):
    ui = UI()
    ui.node(1, "EmptyImage", [8, 8, 1, 0], inputs=[inp("width", "INT", widget=True)])
    ui.node(2, "PrimitiveNode", [77, "fixed"], outputs=("INT",), title="size")
    ui.node(3, "ImageScale", ["bilinear", 1, 2, "disabled"],
            inputs=[img_in(), inp("width", "INT", widget=True), inp("height", "INT", widget=True)])
    ui.link(1, 0, 3, 0)
    ui.link(2, 0, 3, 1)
    ui.link(2, 0, 3, 2)
    ui.link(2, 0, 1, 0)
    api = workflow_api.ui_to_api(ui.json(), OI)
    assert set(api) == {"1", "3"}
    assert api["3"]["inputs"]["width"] == 77 and api["3"]["inputs"]["height"] == 77
    assert api["1"]["inputs"]["width"] == 77


# ---------------------------------------------------------------- bypass, mute

def test_bypassed_node_is_rewired(workflow_api):
    api = workflow_api.ui_to_api(chain(UI(), mode_invert=4).json(), OI)
    assert set(api) == {"1", "3"}
    assert api["3"]["inputs"]["images"] == ["1", 0]


def test_bypass_prefers_same_slot_then_first_of_type(workflow_api):
    ui = UI()
    ui.node(1, "EmptyImage", [8, 8, 1, 0])
    ui.node(2, "EmptyImage", [9, 9, 1, 0])
    ui.node(3, "ImageBlend", [0.5, "normal"], inputs=[img_in("image1"), img_in("image2")], mode=4)
    ui.node(4, "SaveImage", ["a"], inputs=[img_in("images")], outputs=())
    ui.node(5, "LoadImage", ["a.png", "image"], outputs=("IMAGE", "MASK"))
    ui.node(6, "MaskThenImage", inputs=[inp("mask", "MASK"), img_in()], mode=4)
    ui.node(7, "SaveImage", ["b"], inputs=[img_in("images")], outputs=())
    ui.link(2, 0, 3, 0)   # image1 <- node 2
    ui.link(1, 0, 3, 1)   # image2 <- node 1
    ui.link(3, 0, 4, 0)
    ui.link(5, 1, 6, 0)   # mask
    ui.link(1, 0, 6, 1)   # image
    ui.link(6, 0, 7, 0)
    api = workflow_api.ui_to_api(ui.json(), OI)
    assert api["4"]["inputs"]["images"] == ["2", 0]  # output 0 -> input 0 (same slot, same type)
    assert api["7"]["inputs"]["images"] == ["1", 0]  # input 0 is a MASK: first IMAGE input instead
    assert "3" not in api and "6" not in api


def test_bypass_without_matching_input_leaves_input_unset(workflow_api):
    ui = UI()
    ui.node(1, "EmptyImage", [8, 8, 1, 0], mode=4)  # bypassed, but it has no inputs
    ui.node(2, "SaveImage", ["a"], inputs=[img_in("images")], outputs=())
    ui.link(1, 0, 2, 0)
    api = workflow_api.ui_to_api(ui.json(), OI)
    assert api == {"2": {"inputs": {"filename_prefix": "a"}, "class_type": "SaveImage",
                         "_meta": {"title": "SaveImage"}}}


def test_muted_node_and_its_dependants_are_dropped(workflow_api):
    ui = chain(UI())
    ui.nodes[0]["mode"] = 2  # mute the EmptyImage at the head of 1 -> 2 -> 3
    ui.node(4, "EmptyImage", [8, 8, 1, 0])
    ui.node(5, "SaveImage", ["kept"], inputs=[img_in("images")], outputs=())
    ui.node(6, "OptImage", [0.3], inputs=[img_in()])
    ui.link(4, 0, 5, 0)
    ui.link(2, 0, 6, 0)  # optional input from a dropped node: input removed, node kept
    api = workflow_api.ui_to_api(ui.json(), OI)
    assert set(api) == {"4", "5", "6"}
    assert api["6"]["inputs"] == {"strength": 0.3}
    # Without pruning the frontend's behaviour: dependants stay, the dead link goes.
    api = workflow_api.ui_to_api(ui.json(), OI, prune=False)
    assert set(api) == {"2", "3", "4", "5", "6"} and api["2"]["inputs"] == {}


def test_unknown_type_in_muted_or_bypassed_node_is_fine(workflow_api):
    ui = chain(UI())
    ui.node(9, "SomeApiNode", [1, 2], mode=2)
    ui.node(10, "OtherMissing", [1], mode=4)
    assert set(workflow_api.ui_to_api(ui.json(), OI)) == {"1", "2", "3"}


# ---------------------------------------------------------------- errors

def test_unknown_node_type_names_the_node(workflow_api):
    ui = chain(UI())
    ui.node(42, "DPIRDoesNotExist", [1])
    with pytest.raises(ValueError, match=r"node 42 \(DPIRDoesNotExist\).*unknown node type"):
        workflow_api.ui_to_api(ui.json(), OI)


def test_bad_inputs_raise_value_error(workflow_api):
    api_format = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    with pytest.raises(ValueError, match="already in API format"):
        workflow_api.ui_to_api(api_format, OI)
    ui = chain(UI()).json()
    ui["links"] = ui["links"][:1]  # node 3's link 2 is gone
    with pytest.raises(ValueError, match=r"node 3 \(SaveImage\).*link 2"):
        workflow_api.ui_to_api(ui, OI)


# ---------------------------------------------------------------- subgraphs (frontend 1.2x+)

def subgraph(sid, inputs, outputs, ui: UI, name="Block"):
    """A ``definitions.subgraphs`` entry: ``ui``'s nodes inside; ``inputs``/``outputs``: [(name, type, [link ids])]."""
    return {"id": sid, "version": 1, "name": name, "inputNode": {"id": -10}, "outputNode": {"id": -20},
            "inputs": [{"id": f"i{k}", "name": n, "type": t, "linkIds": ids} for k, (n, t, ids) in enumerate(inputs)],
            "outputs": [{"id": f"o{k}", "name": n, "type": t, "linkIds": ids} for k, (n, t, ids) in enumerate(outputs)],
            "widgets": [], "nodes": ui.nodes,
            "links": [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
                      for link in ui.links]}


def _boundary_link(ui: UI, lid, src, src_slot, dst, dst_slot, type="IMAGE"):
    """A link from the subgraph's input node (-10) or to its output node (-20)."""
    ui.links.append([lid, src, src_slot, dst, dst_slot, type])
    if dst != -20:
        next(n for n in ui.nodes if n["id"] == dst)["inputs"][dst_slot]["link"] = lid


def scale_block():
    """Inside: image → ImageScale (width promoted as input 'width') → out 0; image also passes straight to out 1."""
    inner = UI()
    inner.node(5, "ImageScale", ["bilinear", 111, 32, "disabled"],
               inputs=[img_in(), inp("width", "INT", widget=True)])
    _boundary_link(inner, 1, -10, 0, 5, 0)
    _boundary_link(inner, 2, -10, 1, 5, 1, "INT")
    _boundary_link(inner, 3, 5, 0, -20, 0)
    _boundary_link(inner, 4, -10, 0, -20, 1)
    return subgraph("sg-scale", [("image", "IMAGE", [1, 4]), ("width", "INT", [2])],
                    [("IMAGE", "IMAGE", [3]), ("passed", "IMAGE", [4])], inner)


def host_ui(mode=0, widgets=(64,), **host_kw):
    ui = UI()
    ui.node(1, "EmptyImage", [64, 48, 1, 255])
    ui.node(7, "sg-scale", list(widgets), inputs=[img_in(), inp("width", "INT", widget=True)],
            outputs=("IMAGE", "IMAGE"), mode=mode, **host_kw)
    ui.node(3, "SaveImage", ["a"], inputs=[img_in("images")], outputs=())
    ui.node(4, "SaveImage", ["b"], inputs=[img_in("images")], outputs=())
    ui.link(1, 0, 7, 0)
    ui.link(7, 0, 3, 0)
    ui.link(7, 1, 4, 0)
    wf = ui.json()
    wf["definitions"] = {"subgraphs": [scale_block()]}
    return wf


def test_subgraph_is_expanded_with_host_ids_and_promoted_values(workflow_api):
    api = workflow_api.ui_to_api(host_ui(), OI)
    assert sorted(api) == ["1", "3", "4", "7:5"]
    assert api["7:5"]["inputs"] == {"upscale_method": "bilinear", "width": 64, "height": 32, "crop": "disabled",
                                    "image": ["1", 0]}  # the host's promoted width, not the inner 111
    assert api["3"]["inputs"]["images"] == ["7:5", 0]
    assert api["4"]["inputs"]["images"] == ["1", 0]  # straight through the subgraph


def test_subgraph_promoted_values_by_name_or_missing(workflow_api):
    named = host_ui(widgets=(), widgets_values_named={"width": 80})
    for n in named["nodes"]:  # 1.58 may leave the host's widget inputs out of the file
        n["inputs"] = [i for i in n["inputs"] if not i.get("widget")]
    assert workflow_api.ui_to_api(named, OI)["7:5"]["inputs"]["width"] == 80
    # no value on the host: the inner widget's own
    assert workflow_api.ui_to_api(host_ui(widgets=()), OI)["7:5"]["inputs"]["width"] == 111


def test_subgraph_widget_input_fed_from_outside(workflow_api):
    ui = host_ui()
    ui["nodes"].insert(0, {"id": 9, "type": "PrimitiveNode", "mode": 0, "widgets_values": [200, "fixed"],
                           "inputs": [], "outputs": [{"name": "INT", "type": "INT", "links": [9]}]})
    ui["links"].append([9, 9, 0, 7, 1, "INT"])
    ui["nodes"][2]["inputs"][1]["link"] = 9
    assert workflow_api.ui_to_api(ui, OI)["7:5"]["inputs"]["width"] == 200


def test_legacy_proxy_widgets(workflow_api):
    """Frontend 1.2x-1.3x promotion: properties.proxyWidgets [[inner id, widget]], value by position on the host."""
    ui = host_ui(widgets=(64, 77), properties={"proxyWidgets": [["-1", "width"], ["5", "height"]]})
    assert workflow_api.ui_to_api(ui, OI)["7:5"]["inputs"]["height"] == 77


def test_nested_subgraphs(workflow_api):
    """A subgraph node inside a subgraph: ids 'outer:inner:node', links through both boundaries."""
    mid = UI()
    mid.node(6, "sg-scale", [90], inputs=[img_in(), inp("width", "INT", widget=True)], outputs=("IMAGE", "IMAGE"))
    _boundary_link(mid, 1, -10, 0, 6, 0)
    _boundary_link(mid, 2, 6, 0, -20, 0)
    ui = UI()
    ui.node(1, "EmptyImage", [64, 48, 1, 255])
    ui.node(8, "sg-outer", [], inputs=[img_in()])
    ui.node(3, "SaveImage", ["a"], inputs=[img_in("images")], outputs=())
    ui.link(1, 0, 8, 0)
    ui.link(8, 0, 3, 0)
    wf = ui.json()
    wf["definitions"] = {"subgraphs": [scale_block(), subgraph("sg-outer", [("image", "IMAGE", [1])],
                                                                [("IMAGE", "IMAGE", [2])], mid)]}
    api = workflow_api.ui_to_api(wf, OI)
    assert sorted(api) == ["1", "3", "8:6:5"]
    assert api["8:6:5"]["inputs"]["image"] == ["1", 0] and api["8:6:5"]["inputs"]["width"] == 90
    assert api["3"]["inputs"]["images"] == ["8:6:5", 0]


def test_muted_and_bypassed_subgraph_nodes(workflow_api):
    muted = workflow_api.ui_to_api(host_ui(mode=2), OI)
    assert sorted(muted) == ["1"]  # both Save Image nodes needed it
    bypassed = workflow_api.ui_to_api(host_ui(mode=4), OI)
    assert bypassed["3"]["inputs"]["images"] == ["1", 0] and bypassed["4"]["inputs"]["images"] == ["1", 0]


def test_subgraph_that_contains_itself_raises(workflow_api):
    wf = host_ui()
    inner = wf["definitions"]["subgraphs"][0]
    inner["nodes"].append({"id": 6, "type": "sg-scale", "mode": 0, "inputs": [], "outputs": []})
    with pytest.raises(ValueError, match="contains itself"):
        workflow_api.ui_to_api(wf, OI)


def test_circular_reroutes_raise(workflow_api):
    ui = UI()
    ui.node(5, "Reroute", inputs=[inp("", "*")], outputs=("*",))
    ui.node(6, "Reroute", inputs=[inp("", "*")], outputs=("*",))
    ui.node(3, "SaveImage", ["x"], inputs=[img_in("images")], outputs=())
    ui.link(5, 0, 6, 0, "*")
    ui.link(6, 0, 5, 0, "*")
    ui.link(6, 0, 3, 0)
    with pytest.raises(ValueError, match="circular"):
        workflow_api.ui_to_api(ui.json(), OI)


# ---------------------------------------------------------------- overrides, CLI

def test_apply_overrides(workflow_api):
    ui = chain(UI())
    ui.node(4, "SaveImage", ["second"], inputs=[img_in("images")], outputs=(), title="Keep me")
    ui.link(1, 0, 4, 0)
    api = workflow_api.ui_to_api(ui.json(), OI)
    out = workflow_api.apply_overrides(api, {"SaveImage": {"filename_prefix": "p"}, "1": {"width": 7},
                                             "@Keep me": {"filename_prefix": "kept"}, "2": {"image": None}})
    assert out["3"]["inputs"]["filename_prefix"] == "p" and out["4"]["inputs"]["filename_prefix"] == "kept"
    assert out["1"]["inputs"]["width"] == 7 and "image" not in out["2"]["inputs"]
    assert api["1"]["inputs"]["width"] == 64 and api["2"]["inputs"]["image"] == ["1", 0]  # copy
    with pytest.raises(KeyError, match="NoSuchNode"):
        workflow_api.apply_overrides(api, {"NoSuchNode": {"x": 1}})
    assert workflow_api.apply_overrides(api, {"NoSuchNode": {"x": 1}}, strict=False) == api
    assert workflow_api.set_input(api, "SaveImage", "filename_prefix", "q") == 2
    assert api["4"]["inputs"]["filename_prefix"] == "q"


def test_command_line(tmp_path):
    wf, oi = tmp_path / "wf.json", tmp_path / "oi.json"
    wf.write_text(json.dumps(chain(UI()).json()))
    oi.write_text(json.dumps(OI))
    script = PACK_ROOT / "nodes" / "workflow_api.py"
    r = subprocess.run([sys.executable, str(script), str(wf), "--object-info", str(oi),
                        "--set", "SaveImage.filename_prefix=cli", "--set", "1.width=5"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    api = json.loads(r.stdout)
    assert api["3"]["inputs"]["filename_prefix"] == "cli" and api["1"]["inputs"]["width"] == 5
    bad = chain(UI()).json()
    bad["nodes"][1]["type"] = "Nope"
    wf.write_text(json.dumps(bad))
    r = subprocess.run([sys.executable, str(script), str(wf), "--object-info", str(oi)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "node 2 (Nope)" in r.stderr


# ---------------------------------------------------------------- against the real server

def test_command_line_asks_the_server(comfy_server, tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(chain(UI()).json()))
    r = subprocess.run([sys.executable, str(PACK_ROOT / "nodes" / "workflow_api.py"), str(wf),
                        "--server", comfy_server.url, "--wrap"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    api = json.loads(r.stdout)["prompt"]
    assert api["2"] == {"inputs": {"image": ["1", 0]}, "class_type": "ImageInvert",
                        "_meta": {"title": "Invert Image"}}


FILE_HINTS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin", ".gguf", ".sft", ".png", ".jpg", ".jpeg", ".webp",
              ".mp4", ".webm", ".gif", ".mp3", ".wav", ".flac", ".json", ".glb", ".obj")


def _only_missing_files(body) -> list[str]:
    """Node errors other than "this model/image file is not on this bare host"."""
    bad = []
    for nid, ne in (body.get("node_errors") or {}).items():
        for e in ne.get("errors", []):
            received = str((e.get("extra_info") or {}).get("received_value", ""))
            if e.get("type") == "value_not_in_list" and (
                    received.lower().endswith(FILE_HINTS) or "/" in received or "\\" in received):
                continue
            if e.get("type") == "custom_validation_failed" and re.search(
                    r"Invalid (image|video|audio) file", str(e.get("details", ""))):
                continue  # LoadImage/LoadVideo's own check of a media file this host lacks
            bad.append(f"{ne.get('class_type')}#{nid}: {e.get('type')} {e.get('details', '')[:100]}")
    if not body.get("node_errors") and body.get("error"):
        bad.append(str(body["error"])[:200])
    return bad


def _templates():
    try:
        import comfyui_workflow_templates
    except ImportError:
        return None
    folder = Path(comfyui_workflow_templates.__file__).parent / "templates"
    return sorted(folder.glob("*.json"))


def test_frontend_default_workflow_validates(comfy_server, object_info, workflow_api):
    """The editor's default txt2img graph (old-style saved: control value `true`,
    no widgets_values on SaveImage) converts to a prompt that is only short of
    its checkpoint."""
    files = _templates()
    if not files or not any(f.name == "default.json" for f in files):
        pytest.skip("comfyui-workflow-templates (with default.json) is not installed")
    ui = json.loads(next(f for f in files if f.name == "default.json").read_text())
    api = workflow_api.ui_to_api(ui, object_info)
    assert {v["class_type"] for v in api.values()} >= {"KSampler", "CheckpointLoaderSimple", "SaveImage"}
    status, body = comfy_server.post_prompt(api)
    assert status == 400, body
    assert _only_missing_files(body) == []
    errs = [(nid, e["type"]) for nid, ne in body["node_errors"].items() for e in ne["errors"]]
    assert errs and all(api[nid]["class_type"] == "CheckpointLoaderSimple" for nid, _ in errs), errs


def test_frontend_templates_validate(comfy_server, object_info, workflow_api):
    """Every template workflow the frontend ships (real saved UI JSON: seeds,
    bypassed nodes, primitives, reroutes, notes) that uses only node types this
    host has converts to a prompt the server rejects for missing model/media
    files at most."""
    files = _templates()
    if not files:
        pytest.skip("comfyui-workflow-templates is not installed")
    checked, problems, skipped = 0, [], 0
    for f in files:
        try:
            ui = json.loads(f.read_text())
        except ValueError:
            continue
        if not isinstance(ui, dict) or "nodes" not in ui:
            continue
        try:
            api = workflow_api.ui_to_api(ui, object_info)
        except ValueError as e:
            if "unknown node type" in str(e) or "subgraph" in str(e):
                skipped += 1  # API nodes (disabled here), audio nodes without torchaudio, subgraphs
                continue
            problems.append(f"{f.name}: {e}")
            continue
        if not api:
            continue
        status, body = comfy_server.post_prompt(api)
        checked += 1
        if status == 200:  # nothing missing: it is queued; do not let it run
            comfy_server.clear_queue()
            comfy_server.interrupt(body.get("prompt_id"))
            continue
        bad = _only_missing_files(body) if isinstance(body, dict) else [str(body)[:200]]
        if bad:
            problems.append(f"{f.name}: " + "; ".join(bad[:3]))
    assert checked >= 20, f"only {checked} templates checked ({skipped} skipped)"
    assert not problems, f"{len(problems)}/{checked} templates do not convert cleanly:\n" + "\n".join(problems)


SHIPPED = sorted((PACK_ROOT / "workflows").rglob("*.json"))


@pytest.mark.parametrize("path", SHIPPED or [None], ids=[p.name for p in SHIPPED] or ["none"])
def test_shipped_workflows_validate(path, comfy_server, object_info, workflow_api, tmp_path):
    """The pack's own UI workflows convert and pass the server's validation,
    short of model files (and with LoadImage pointed at a real image)."""
    if path is None:
        pytest.skip("no workflows/*.json shipped yet")
    ui = json.loads(path.read_text())
    api = workflow_api.ui_to_api(ui, object_info)
    assert api, f"{path.name} converts to an empty prompt"
    image = comfy_server.add_input(write_png(tmp_path / "dpir_test_input.png", 96, 64))
    api = workflow_api.apply_overrides(api, {"LoadImage": {"image": image}}, strict=False)
    status, body = comfy_server.post_prompt(api)
    if status == 200:
        comfy_server.clear_queue()
        comfy_server.interrupt(body.get("prompt_id"))
        return
    assert _only_missing_files(body) == [], json.dumps(body)[:2000]
