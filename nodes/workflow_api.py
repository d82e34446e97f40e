#!/usr/bin/env python3
"""Convert ComfyUI UI-format workflows (what the frontend saves) to API format.

The server only executes API JSON (``{id: {"class_type", "inputs"}}``); the
conversion normally happens in the browser (``graphToPrompt`` of the ComfyUI
frontend). This module redoes it in pure Python, driven by a ``/object_info``
dict, so tests and scripts can run the pack's shipped UI workflows headless.

Rules (mirroring frontend 1.27):

* ``widgets_values`` map, in order, onto the node's widget inputs: the
  required then optional inputs of ``/object_info`` (``input_order`` when
  given) whose type is a frontend widget type (``INT``, ``FLOAT``, ``STRING``,
  ``BOOLEAN``, a COMBO list, ...) and that are not ``forceInput``. Socket-only
  types (``MODEL``, ``IMAGE``, ...) come from links.
* An INT with ``control_after_generate`` (or, when that option is absent, an
  INT named ``seed``/``noise_seed``) is followed by one extra value ("fixed",
  "randomize", ...); a COMBO with ``control_after_generate`` by two (control +
  filter). A node with an ``image_upload``/``video_upload``/
  ``animated_image_upload`` COMBO (LoadImage) or an ``audio_upload`` input
  has an extra "upload" button widget after its inputs; none of these extras
  is sent to the server.
* ``widgets_values`` may also be a dict ``{input_name: value}``.
* A widget input with a link takes the linked output; a ``PrimitiveNode``
  source writes its value into the widget instead. List values are wrapped
  as ``{"__value__": [...]}`` so the server does not read them as links.
* ``Reroute`` nodes are followed; a bypassed node (mode 4) passes an output
  through its input of the same slot index when the types fit, else its first
  input of the wanted type; notes, primitives and groups are dropped.
* Subgraphs (frontend 1.2x+: ``definitions.subgraphs``, a node whose type
  is a subgraph id) are expanded first, as the frontend does: inner nodes get
  the id ``"<host id>:<inner id>"`` (nested: ``"a:b:c"``), links through the
  subgraph's input and output slots join the nodes on either side, and a
  promoted widget's value is the host node's (an input of the subgraph wired
  to an inner widget, its value in the host's ``widgets_values``; the older
  ``properties.proxyWidgets`` list too). A muted or bypassed subgraph node is
  not expanded: it is dropped or passed through like any other node.
* Muted nodes (mode 2) are dropped, and so is every node that needs one of
  their outputs for a *required* input (transitively); an optional input fed
  by a dropped node is just left out (this is what the frontend sends, minus
  the validation error the server would then raise).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = [
    "MODE_ALWAYS", "MODE_MUTED", "MODE_BYPASS", "VIRTUAL_NODE_TYPES",
    "WidgetSlot", "widget_slots", "ui_to_api", "apply_overrides", "set_input",
    "load_object_info", "main", "expand_subgraphs",
]

MODE_ALWAYS, MODE_MUTED, MODE_BYPASS = 0, 2, 4
# Frontend-only nodes: never sent to the server.
VIRTUAL_NODE_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
# Input types the frontend turns into widgets (scripts/widgets.ts ComfyWidgets
# plus the upload buttons of the core upload extensions). Value: whether the
# widget's value is sent to the server.
FRONTEND_WIDGET_TYPES = {
    "INT": True, "FLOAT": True, "BOOLEAN": True, "STRING": True, "COMBO": True,
    "MARKDOWN": True, "FILEUPLOAD": True, "COLOR": True, "IMAGECOMPARE": True,
    "TREESELECT": True, "MULTISELECT": True, "CHART": True, "GALLERIA": True,
    "SELECTBUTTON": True, "TEXTAREA": True,
    "IMAGEUPLOAD": False, "AUDIOUPLOAD": False,
}
# litegraph's ids of a subgraph's input and output nodes (the ends of links that cross its boundary)
SUBGRAPH_INPUT_ID, SUBGRAPH_OUTPUT_ID = -10, -20
_MEDIA_UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
_LEGACY_SEED_NAMES = ("seed", "noise_seed")


class WidgetSlot:
    """One widget of a node type, as laid out in ``widgets_values``."""

    __slots__ = ("name", "type", "options", "extra", "serialize")

    def __init__(self, name: str, type: str, options: dict, extra: int = 0, serialize: bool = True):
        self.name = name          # input name (= widget name)
        self.type = type          # frontend widget type, e.g. "INT", "COMBO"
        self.options = options    # the input's option dict from /object_info
        self.extra = extra        # values that follow it in widgets_values (control_after_generate, ...)
        self.serialize = serialize  # False for frontend-only widgets (upload buttons)

    @property
    def width(self) -> int:
        """How many ``widgets_values`` entries this widget takes."""
        return 1 + self.extra

    def __repr__(self):
        return f"WidgetSlot({self.name!r}, {self.type!r}, extra={self.extra}, serialize={self.serialize})"


# ---------------------------------------------------------------- object_info

def _spec_parts(spec: Any) -> tuple[Any, dict]:
    """(type, options) of one /object_info input spec."""
    if isinstance(spec, (list, tuple)):
        t = spec[0] if spec else None
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        return t, opts
    return spec, {}


def _widget_type(t: Any, opts: dict) -> str | None:
    if isinstance(t, (list, tuple)):
        return "COMBO"
    wt = opts.get("widgetType") or t
    return wt if isinstance(wt, str) else None


def _ordered_inputs(info: Mapping) -> list[tuple[str, str, Any]]:
    """[(section, name, spec)] of required+optional inputs in frontend order."""
    inputs = info.get("input") or {}
    order = info.get("input_order") or {}
    out, seen = [], set()
    for section in ("required", "optional"):
        specs = inputs.get(section) or {}
        names = order.get(section) if order.get(section) else list(specs)
        for name in names:
            if name in specs and (section, name) not in seen:
                seen.add((section, name))
                out.append((section, name, specs[name]))
    for section in ("required", "optional"):  # anything input_order forgot
        for name, spec in (inputs.get(section) or {}).items():
            if (section, name) not in seen:
                seen.add((section, name))
                out.append((section, name, spec))
    return out


def widget_slots(info: Mapping) -> list[WidgetSlot]:
    """The widgets of a node type in ``widgets_values`` order."""
    slots = []
    upload = None
    for section, name, spec in _ordered_inputs(info):
        t, opts = _spec_parts(spec)
        wt = _widget_type(t, opts)
        if section == "required" and upload is None:
            if wt == "COMBO" and any(opts.get(f) is True for f in _MEDIA_UPLOAD_FLAGS):
                upload = WidgetSlot("upload", "IMAGEUPLOAD", {"imageInputName": name}, serialize=False)
            elif name == "audio" and opts.get("audio_upload") is True:
                upload = WidgetSlot("upload", "AUDIOUPLOAD", {}, serialize=False)
        if wt not in FRONTEND_WIDGET_TYPES or opts.get("forceInput"):
            continue
        extra = 0
        cag = opts.get("control_after_generate")
        if wt == "INT" and (cag if cag is not None else name in _LEGACY_SEED_NAMES):
            extra = 1
        elif wt == "COMBO" and cag:
            extra = 2
        if isinstance(t, (list, tuple)):
            opts = {**opts, "_choices": list(t)}
        slots.append(WidgetSlot(name, wt, opts, extra, FRONTEND_WIDGET_TYPES[wt]))
    if upload is not None:  # the upload extensions add it as a last required input
        slots.append(upload)
    return slots


def _required_inputs(info: Mapping) -> set:
    return set((info.get("input") or {}).get("required") or {})


# ---------------------------------------------------------------- UI graph

def _link_tuple(link: Any) -> tuple:
    """(id, origin_id, origin_slot, target_id, target_slot, type) of a link."""
    if isinstance(link, dict):
        return (link["id"], link["origin_id"], link["origin_slot"],
                link["target_id"], link["target_slot"], link.get("type"))
    link = list(link) + [None] * (6 - len(link))
    return tuple(link[:6])


def _valid_connection(a: Any, b: Any) -> bool:
    """LiteGraph.isValidConnection: wildcard, case-insensitive, comma lists."""
    if a in (None, "", "*", 0) or b in (None, "", "*", 0):
        return True
    a, b = str(a).lower(), str(b).lower()
    if a == b:
        return True
    return bool(set(a.split(",")) & set(b.split(",")))


def _label(node: Mapping) -> str:
    return f"node {node.get('id')} ({node.get('type')})"


class _Graph:
    def __init__(self, ui: Mapping):
        if not isinstance(ui, Mapping) or "nodes" not in ui:
            if isinstance(ui, Mapping) and ui and all(isinstance(v, Mapping) and "class_type" in v for v in ui.values()):
                raise ValueError("this workflow is already in API format (it has class_type entries, no 'nodes')")
            raise ValueError("not a UI-format workflow: no 'nodes' list")
        self.nodes = {}
        for n in ui["nodes"]:
            self.nodes[n["id"]] = n
            self.nodes.setdefault(str(n["id"]), n)
        self.links = {}
        for link in ui.get("links") or []:
            t = _link_tuple(link)
            self.links[t[0]] = t

    def node(self, node_id: Any, context: str) -> Mapping:
        n = self.nodes.get(node_id)
        if n is None:
            n = self.nodes.get(str(node_id))
        if n is None:
            raise ValueError(f"{context}: link points at node {node_id}, which is not in the workflow")
        return n

    def link(self, link_id: Any, context: str) -> tuple:
        link = self.links.get(link_id)
        if link is None:
            raise ValueError(f"{context}: link {link_id} is not in the workflow's links")
        return link

    # The two functions below port ExecutableNodeDTO.resolveInput/resolveOutput.
    def resolve_input(self, node: Mapping, slot: int, want_type: Any, visited: set):
        """Where input ``slot`` of ``node`` really comes from: None (nothing),
        or (origin_node, origin_slot) of a real (non-virtual, non-bypassed) node."""
        key = (node["id"], "I", slot)
        if key in visited:
            raise ValueError(f"{_label(node)}: circular link through input {slot}")
        visited.add(key)
        inputs = node.get("inputs") or []
        if slot >= len(inputs):
            raise ValueError(f"{_label(node)}: no input slot {slot}")
        inp = inputs[slot]
        if inp.get("link") is None:
            return None
        ctx = f"{_label(node)} input {inp.get('name')!r}"
        link = self.link(inp["link"], ctx)
        origin = self.node(link[1], ctx)
        return self.resolve_output(origin, link[2], want_type if want_type is not None else inp.get("type"), visited)

    def resolve_output(self, node: Mapping, slot: int, want_type: Any, visited: set):
        key = (node["id"], "O", slot)
        if key in visited:
            raise ValueError(f"{_label(node)}: circular link through output {slot}")
        visited.add(key)
        if node.get("mode", MODE_ALWAYS) == MODE_BYPASS:
            idx = self._bypass_slot(node, slot, want_type)
            if idx < 0:
                return None
            return self.resolve_input(node, idx, None, visited)
        if node.get("type") in VIRTUAL_NODE_TYPES:
            if slot < len(node.get("inputs") or []):
                return self.resolve_input(node, slot, want_type, visited)
            return None  # PrimitiveNode: its value was written into the widget
        return node, slot

    @staticmethod
    def _bypass_slot(node: Mapping, slot: int, want_type: Any) -> int:
        inputs = node.get("inputs") or []
        if not inputs:
            return -1
        if want_type in ("*", "", None):
            return slot if len(inputs) > slot else 0
        outputs = node.get("outputs") or []
        out_type = outputs[slot].get("type") if slot < len(outputs) else None
        if slot < len(inputs):
            t = inputs[slot].get("type")
            if _valid_connection(t, out_type) and _valid_connection(t, want_type):
                return slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == want_type:
                return i
        for i, inp in enumerate(inputs):
            t = inp.get("type")
            if _valid_connection(t, out_type) and _valid_connection(t, want_type):
                return i
        return -1


# ---------------------------------------------------------------- subgraphs

class _Level:
    """One graph being flattened: the root, or a subgraph definition under one host node."""

    def __init__(self, nodes, links, prefix: str, host=None, parent=None, definition=None):
        self.nodes = {}
        for n in nodes or []:
            self.nodes[n["id"]] = n
            self.nodes.setdefault(str(n["id"]), n)
        self.links = {}
        for link in links or []:
            t = _link_tuple(link)
            self.links[t[0]] = t
        self.prefix, self.host, self.parent, self.definition = prefix, host, parent, definition

    def node(self, node_id):
        return self.nodes.get(node_id, self.nodes.get(str(node_id)))

    def where(self) -> str:
        return f"subgraph {self.definition.get('name') or self.definition.get('id')!r} in {_label(self.host)}" \
            if self.host is not None else "the workflow"


class _Value:
    """A promoted widget's value arriving through a subgraph input (no link)."""

    def __init__(self, value):
        self.value = value


def _promoted_names(definition: Mapping) -> list:
    """Names of the subgraph's inputs wired to an inner widget: the host node's widgets, in their order."""
    nodes = {str(n.get("id")): n for n in definition.get("nodes") or []}
    links = {_link_tuple(link)[0]: _link_tuple(link) for link in definition.get("links") or []}
    names = []
    for sg_input in definition.get("inputs") or []:
        for lid in sg_input.get("linkIds") or []:
            link = links.get(lid)
            target = link and nodes.get(str(link[3]))
            inputs = (target or {}).get("inputs") or []
            if link and link[4] is not None and link[4] < len(inputs) and inputs[link[4]].get("widget"):
                names.append(sg_input.get("name"))
                break
    return names


def _host_widget_values(host: Mapping, definition: Mapping) -> dict:
    """{input name: value} of a subgraph node's promoted widgets. 1.58 saves them in ``widgets_values`` (in the
    order of the subgraph's inputs that feed a widget) and by name in ``widgets_values_named``; the host's own
    input entries for them may be left out of the file."""
    names = _promoted_names(definition)
    wv = host.get("widgets_values")
    if isinstance(wv, Mapping):
        values = {k: v for k, v in wv.items() if v is not None}
    else:
        wv = list(wv or [])
        values = {n: wv[k] for k, n in enumerate(names) if k < len(wv) and wv[k] is not None}
    named = host.get("widgets_values_named")
    if isinstance(named, Mapping):
        values.update({k: v for k, v in named.items() if v is not None})
    return values


def _host_input(host: Mapping, definition: Mapping, slot: int) -> Mapping | None:
    """The host node's input for the subgraph's input ``slot`` (by name; by position as a fallback)."""
    sg_inputs = definition.get("inputs") or []
    name = sg_inputs[slot].get("name") if slot < len(sg_inputs) else None
    inputs = host.get("inputs") or []
    for i in inputs:
        if name is not None and i.get("name") == name:
            return i
    return inputs[slot] if slot < len(inputs) and name is None else None


def _output_link(level: _Level, slot: int):
    """The link inside ``level`` that feeds the subgraph's output ``slot``."""
    outs = level.definition.get("outputs") or []
    for lid in (outs[slot].get("linkIds") or []) if slot < len(outs) else []:
        if lid in level.links:
            return level.links[lid]
    for link in level.links.values():
        if str(link[3]) == str(SUBGRAPH_OUTPUT_ID) and link[4] == slot:
            return link
    return None


def expand_subgraphs(ui: Mapping) -> dict:
    """A copy of ``ui`` with every active subgraph node replaced by its inner nodes (recursively), as the
    frontend's graphToPrompt sees them: ids ``"host:inner"``, links joined across the subgraph boundary,
    promoted widget values written into the inner widgets (``_dpir_widgets`` on the inner node). A workflow
    without subgraphs comes back unchanged."""
    definitions = {d.get("id"): d for d in ((ui.get("definitions") or {}).get("subgraphs") or [])
                   if isinstance(d, Mapping)}
    if not definitions:
        return dict(ui)

    def expanded(n) -> bool:
        return n.get("type") in definitions and n.get("mode", MODE_ALWAYS) not in (MODE_MUTED, MODE_BYPASS)

    def source(level: _Level, origin_id, origin_slot, seen: frozenset):
        """Flattened (node id, slot) of a link's origin, a _Value, or None (nothing arrives)."""
        if str(origin_id) == str(SUBGRAPH_INPUT_ID):  # ids may be saved as strings
            if level.host is None:
                raise ValueError(f"{level.where()}: a link starts at a subgraph input outside any subgraph")
            hin = _host_input(level.host, level.definition, origin_slot)
            if hin is not None and hin.get("link") is not None:
                link = level.parent.links.get(hin["link"])
                if link is None:
                    raise ValueError(f"{_label(level.host)} input {hin.get('name')!r}: link {hin['link']} "
                                     f"is not in {level.parent.where()}'s links")
                return source(level.parent, link[1], link[2], seen)
            sg_inputs = level.definition.get("inputs") or []
            name = sg_inputs[origin_slot].get("name") if origin_slot < len(sg_inputs) else None
            values = _host_widget_values(level.host, level.definition)
            return _Value(values[name]) if name in values else None
        node = level.node(origin_id)
        if node is None:
            raise ValueError(f"{level.where()}: a link starts at node {origin_id}, which is not there")
        if not expanded(node):
            return (level.prefix + str(node["id"]) if level.prefix else node["id"]), origin_slot
        child = child_level(level, node, seen)
        link = _output_link(child, origin_slot)
        return None if link is None else source(child, link[1], link[2], seen | {node["type"]})

    def child_level(level: _Level, host, seen: frozenset) -> _Level:
        d = definitions[host["type"]]
        if host["type"] in seen:
            raise ValueError(f"{_label(host)}: subgraph {d.get('name')!r} contains itself")
        return _Level(d.get("nodes"), d.get("links"), f"{level.prefix}{host['id']}:", host, level, d)

    nodes, links = [], []

    def flatten(level: _Level, seen: frozenset):
        proxied = {}
        if level.host is not None:  # the older promotion (1.2x-1.3x): [inner id, widget name], value on the host
            wv = level.host.get("widgets_values")
            for r, entry in enumerate((level.host.get("properties") or {}).get("proxyWidgets") or []):
                if isinstance(entry, (list, tuple)) and len(entry) >= 2 and str(entry[0]) != "-1" \
                        and isinstance(wv, list) and r < len(wv) and wv[r] is not None:
                    proxied.setdefault(str(entry[0]), {})[entry[1]] = wv[r]
        for n in _unique(level.nodes.values()):
            if expanded(n):
                flatten(child_level(level, n, seen), seen | {n["type"]})
                continue
            m = copy.deepcopy(dict(n))
            if level.prefix:
                m["id"] = level.prefix + str(n["id"])
            widgets = dict(proxied.get(str(n["id"]), {}))
            for inp in m.get("inputs") or []:
                lid = inp.get("link")
                if lid is None:
                    continue
                link = level.links.get(lid)
                if link is None:
                    raise ValueError(f"{_label(n)} input {inp.get('name')!r} in {level.where()}: "
                                     f"link {lid} is not in its links")
                src = source(level, link[1], link[2], seen)
                inp["link"] = None
                if isinstance(src, _Value):
                    name = (inp.get("widget") or {}).get("name") or inp.get("name")
                    widgets[name] = src.value
                elif src is not None:
                    new_id = f"{level.prefix}{lid}" if level.prefix else lid
                    links.append([new_id, src[0], src[1], m["id"], (m["inputs"]).index(inp), link[5]])
                    inp["link"] = new_id
            if widgets:
                m["_dpir_widgets"] = widgets
            nodes.append(m)

    flatten(_Level(ui.get("nodes"), ui.get("links"), ""), frozenset())
    out = {k: v for k, v in ui.items() if k != "definitions"}
    out["nodes"], out["links"] = nodes, links
    return out


def _unique(nodes: Iterable[Mapping]) -> list:
    """The nodes of a _Level once each (it indexes them by id and by str(id))."""
    seen, out = set(), []
    for n in nodes:
        if id(n) not in seen:
            seen.add(id(n))
            out.append(n)
    return out


def _boxed(value: Any) -> Any:
    return {"__value__": value} if isinstance(value, list) else value


_NO_DEFAULT = object()


def _default(slot: WidgetSlot) -> Any:
    """The value a fresh frontend widget starts with."""
    opts = slot.options
    if slot.type == "COMBO":
        if opts.get("default"):
            return opts["default"]
        choices = opts.get("_choices") or opts.get("options") or []
        return choices[0] if choices else _NO_DEFAULT
    if "default" in opts:
        return opts["default"]
    return {"INT": 0, "FLOAT": 0, "BOOLEAN": False, "STRING": ""}.get(slot.type, _NO_DEFAULT)


def _widget_values(node: Mapping, info: Mapping) -> dict:
    """{input_name: value} of the node's serialised widgets; widgets missing
    from ``widgets_values`` (or null there) get their default, as in the editor."""
    wv = node.get("widgets_values")
    slots = widget_slots(info)
    out = {}
    if isinstance(wv, Mapping):
        given = lambda s, k: wv.get(s.name)  # noqa: E731
    else:
        wv = list(wv or [])
        given = lambda s, k: wv[k] if k < len(wv) else None  # noqa: E731
    k = 0
    for s in slots:
        if s.serialize:
            v = given(s, k)
            if v is None:
                v = _default(s)
            if v is not _NO_DEFAULT:
                out[s.name] = v
        k += s.width
    return out


def ui_to_api(ui: Mapping, object_info: Mapping, *, prune: bool = True) -> dict:
    """Convert a UI-format workflow to API format.

    ``object_info`` is the server's ``GET /object_info`` answer (only the node
    types the workflow uses are needed). Raises ValueError naming the node for
    an unknown node type or a dangling link. Subgraphs are expanded first
    (:func:`expand_subgraphs`). With ``prune`` (the
    default) nodes that need a muted node's output for a required input are
    dropped too; without it they are sent with that input missing, as the
    frontend does.
    """
    if isinstance(ui, Mapping) and "nodes" in ui:
        ui = expand_subgraphs(ui)
    g = _Graph(ui)
    active = []
    for n in ui["nodes"]:
        t = n.get("type")
        mode = n.get("mode", MODE_ALWAYS)
        if t in VIRTUAL_NODE_TYPES or mode in (MODE_MUTED, MODE_BYPASS):
            continue
        if t not in object_info:
            hint = " (a legacy group node; convert it back to nodes)" if str(t).startswith("workflow") else \
                " (is its custom node pack installed and importing?)"
            raise ValueError(f"{_label(n)}: unknown node type {t!r}, not in /object_info{hint}")
        active.append(n)

    # Widget values, then PrimitiveNode values written into their targets.
    values = {n["id"]: {**_widget_values(n, object_info[n["type"]]), **n.get("_dpir_widgets", {})} for n in active}
    for p in ui["nodes"]:
        if p.get("type") != "PrimitiveNode":
            continue
        wv = p.get("widgets_values")
        if not wv:
            continue
        v = wv[0] if isinstance(wv, list) else next(iter(wv.values()), None) if isinstance(wv, Mapping) else None
        for link in g.links.values():
            if link[1] != p["id"]:
                continue
            target = g.nodes.get(link[3])
            if target is None or target["id"] not in values:
                continue
            tin = (target.get("inputs") or [])
            if link[4] is None or link[4] >= len(tin):
                continue
            widget = tin[link[4]].get("widget") or {}
            name = widget.get("name") or tin[link[4]].get("name")
            if name:
                values[target["id"]][name] = v

    api = {}
    for n in active:
        info = object_info[n["type"]]
        inputs = {k: _boxed(v) for k, v in values[n["id"]].items()}
        for i, inp in enumerate(n.get("inputs") or []):
            resolved = g.resolve_input(n, i, None, set())
            if resolved is None:
                continue  # nothing connected: a widget keeps its own value
            src, slot = resolved
            inputs[inp["name"]] = [str(src["id"]), int(slot)]
        title = n.get("title") or info.get("display_name") or n["type"]
        api[str(n["id"])] = {"inputs": inputs, "class_type": n["type"], "_meta": {"title": title}}

    # Inputs fed by dropped nodes (muted, or pruned below) go; with prune, a
    # node missing a required input that way goes too.
    changed = True
    while changed:
        changed = False
        for nid in list(api):
            node = api[nid]
            required = _required_inputs(object_info[node["class_type"]])
            for name, v in list(node["inputs"].items()):
                if isinstance(v, list) and len(v) == 2 and v[0] not in api:
                    del node["inputs"][name]
                    if prune and name in required:
                        del api[nid]
                        changed = True
                        break
    return api


# ---------------------------------------------------------------- overrides

def _select(api: Mapping, selector: str) -> list[str]:
    selector = str(selector)
    if selector in api:
        return [selector]
    if selector.startswith("@"):
        title = selector[1:]
        return [k for k, v in api.items() if (v.get("_meta") or {}).get("title") == title]
    return [k for k, v in api.items() if v.get("class_type") == selector]


def apply_overrides(api: Mapping, overrides: Mapping[str, Mapping[str, Any]], *, strict: bool = True) -> dict:
    """A copy of ``api`` with inputs replaced.

    ``overrides`` maps a selector to ``{input_name: value}``. A selector is a
    node id (``"12"``), a class type (``"LoadImage"``: every node of it) or
    ``"@Title"`` (nodes whose ``_meta.title`` is Title). A value of None
    deletes the input; a list is taken as a link ``[node_id, slot]``. With
    ``strict``, a selector that matches no node raises KeyError.
    """
    out = copy.deepcopy(dict(api))
    for selector, inputs in overrides.items():
        ids = _select(out, selector)
        if not ids and strict:
            raise KeyError(f"override {selector!r} matches no node (ids, class types or @titles)")
        for nid in ids:
            node_inputs = out[nid].setdefault("inputs", {})
            for name, value in inputs.items():
                if value is None:
                    node_inputs.pop(name, None)
                else:
                    node_inputs[name] = value
    return out


def set_input(api: dict, class_type: str, name: str, value: Any) -> int:
    """Set input ``name`` of every node of ``class_type`` in place; returns how many."""
    n = 0
    for node in api.values():
        if node.get("class_type") == class_type:
            node.setdefault("inputs", {})[name] = value
            n += 1
    return n


# ---------------------------------------------------------------- CLI

def load_object_info(source: str | Path) -> dict:
    """/object_info from a JSON file or a server URL (``http://host:port``)."""
    s = str(source)
    if s.startswith(("http://", "https://")):
        url = s.rstrip("/")
        if not url.endswith("/object_info"):
            url += "/object_info"
        with urllib.request.urlopen(url, timeout=60) as r:
            return json.loads(r.read())
    with open(s, encoding="utf-8") as f:
        return json.load(f)


def _parse_set(items: Iterable[str]) -> dict:
    overrides: dict = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected SELECTOR.INPUT=VALUE")
        key, raw = item.split("=", 1)
        if "." not in key:
            raise SystemExit(f"--set {item!r}: expected SELECTOR.INPUT=VALUE")
        selector, name = key.rsplit(".", 1)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        overrides.setdefault(selector, {})[name] = value
    return overrides


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Convert a ComfyUI UI-format workflow to API format (printed as JSON).")
    ap.add_argument("workflow", help="UI-format workflow JSON (as saved by the ComfyUI frontend)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--object-info", help="a saved GET /object_info JSON")
    src.add_argument("--server", help="a running ComfyUI to ask for /object_info, e.g. http://127.0.0.1:8188")
    ap.add_argument("--set", action="append", default=[], metavar="SELECTOR.INPUT=VALUE",
                    help="override an input; SELECTOR is a node id, a class type or @Title; "
                         "VALUE is parsed as JSON when it can be (repeatable)")
    ap.add_argument("--no-prune", action="store_true",
                    help="keep nodes whose required input comes from a muted node")
    ap.add_argument("--wrap", action="store_true", help='print {"prompt": ...}, ready for POST /prompt')
    ap.add_argument("-o", "--output", help="write here instead of stdout")
    a = ap.parse_args(argv)
    with open(a.workflow, encoding="utf-8") as f:
        ui = json.load(f)
    info = load_object_info(a.object_info or a.server)
    try:
        api = ui_to_api(ui, info, prune=not a.no_prune)
        if a.set:
            api = apply_overrides(api, _parse_set(a.set))
    except (ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = json.dumps({"prompt": api} if a.wrap else api, indent=2)
    if a.output:
        Path(a.output).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
