// Shared helpers of the DPIR web extensions (no side effects: the server loads every .js under web/ as an extension).
//
// Frontend APIs the extensions use, tested on frontend 1.27.10 (tests/host/test_browser.py) and read in the
// stored ComfyUI_frontend sources of 1.5x: the legacy module shims scripts/app.js and scripts/api.js (still
// generated from src/scripts), app.registerExtension with setup / beforeRegisterNodeDef / refreshComboInNodes,
// the node methods onNodeCreated / onConfigure / onExecuted / onDrawForeground / onRemoved, node.addDOMWidget
// (options serialize, hideOnZoom, getMinHeight), api.apiURL / api.fetchApi, and node docs at
// web/docs/<Node>.md (1.5x first tries docs/<Node>/<locale>.md, then this file). With the Vue node renderer
// (1.3x+ "Nodes 2.0") canvas hooks such as onDrawForeground do not run: dpir_tiles.js polls on a timer there.

export const PACK = 'ComfyUI-DPIR'

// A DOM widget that is never saved into the workflow nor sent with the prompt.
export function addPanel(node, name, element, minHeight) {
  const widget = node.addDOMWidget(name, name, element, {
    serialize: false,
    hideOnZoom: true,
    getMinHeight: () => minHeight
  })
  widget.serialize = false
  // keep pointer and wheel gestures inside the panel (otherwise the canvas drags the node / zooms the graph)
  for (const type of ['pointerdown', 'pointermove', 'pointerup', 'dblclick', 'contextmenu'])
    element.addEventListener(type, (e) => e.stopPropagation())
  element.addEventListener('wheel', (e) => e.stopPropagation(), { passive: true })
  return widget
}

export function el(tag, props = {}, children = []) {
  const e = document.createElement(tag)
  for (const [k, v] of Object.entries(props)) {
    if (k === 'style') Object.assign(e.style, v)
    else if (k === 'dataset') Object.assign(e.dataset, v)
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v)
    else e[k] = v
  }
  for (const c of [].concat(children)) e.append(c)
  return e
}

// Grow a node so its panels get room (never shrinks what the user chose).
export function ensureSize(node, minW, minH) {
  const want = node.computeSize?.() ?? [0, 0]
  const w = Math.max(node.size[0], minW, want[0])
  const h = Math.max(node.size[1], minH, want[1])
  if (w !== node.size[0] || h !== node.size[1]) node.setSize([w, h])
  node.setDirtyCanvas?.(true, true)
}

// A canvas backing store matching its CSS box (device pixels; sharper when the graph is zoomed in).
export function fitCanvas(canvas, zoom = 1) {
  const ratio = (window.devicePixelRatio || 1) * Math.min(4, Math.max(1, zoom))
  const w = Math.max(1, Math.round(canvas.clientWidth * ratio))
  const h = Math.max(1, Math.round(canvas.clientHeight * ratio))
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w
    canvas.height = h
  }
  return ratio
}

export function viewURL(api, ref) {
  const q = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder || '', type: ref.type || 'temp' })
  return api.apiURL(`/view?${q}`)
}

export function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image()
    img.onload = () => resolve(img)
    img.onerror = () => reject(new Error(`could not load ${src}`))
    img.src = src
  })
}

export function graphScale(app) {
  return app.canvas?.ds?.scale ?? 1
}

// The node feeding input `name` of `node`, through legacy Reroute nodes and subgraph boundaries (frontend 1.2x+:
// a link from a subgraph's input slot continues at the subgraph node in the parent graph; an output of a subgraph
// node continues at the inner node wired to it). Null when unknown, e.g. while a workflow loads and the node is not
// in a graph yet (1.5x's getInputNode then throws NullGraphError).
export function inputNode(node, name) {
  let n = node
  let link = inputLink(n, n.findInputSlot?.(name))
  for (let hops = 0; hops < 16 && link; hops++) {
    const graph = n.graph
    if (fromSubgraphInput(link)) {
      n = subgraphHost(graph)
      link = n && inputLink(n, link.origin_slot)
      continue
    }
    const src = graph.getNodeById(link.origin_id)
    if (!src) return null
    if (src.type === 'Reroute') {
      n = src
      link = inputLink(n, 0)
    } else if (src.isSubgraphNode?.()) {
      const inner = src.subgraph.outputNode?.slots?.[link.origin_slot]?.getLinks?.()?.[0]
      if (!inner) return null
      // continue inside: a link whose target is the subgraph's output node
      n = { graph: src.subgraph }
      link = inner
    } else return src
  }
  return null
}

// litegraph's id of a subgraph's input node (1.5x keeps node ids as strings: '-10')
const fromSubgraphInput = (link) => link != null && String(link.origin_id) === '-10'

function inputLink(node, slot) {
  if (slot == null || slot < 0 || !node?.graph) return null
  if (node.isSubgraphNode?.()) {  // its own getInputLink answers for the inner side
    const id = node.inputs?.[slot]?.link
    return id == null ? null : node.graph.links?.get?.(id) ?? node.graph.links?.[id] ?? null
  }
  return node.getInputLink?.(slot) ?? null
}

// The subgraph node whose subgraph is `graph` (the first one, when the definition is used more than once).
function subgraphHost(graph) {
  const root = graph?.rootGraph
  if (!root || root === graph) return null
  const seen = new Set()
  const visit = (g) => {
    if (!g || seen.has(g)) return null
    seen.add(g)
    for (const n of g.nodes ?? []) {
      if (!n.isSubgraphNode?.()) continue
      if (n.subgraph === graph) return n
      const hit = visit(n.subgraph)
      if (hit) return hit
    }
    return null
  }
  return visit(root)
}

export function widget(node, name) {
  return node?.widgets?.find((w) => w.name === name)
}

// The value a widget will run with. Inside a subgraph, a widget promoted to the subgraph node (1.5x: a subgraph
// input wired to the widget's input) runs with the subgraph node's value, not the inner widget's.
export function widgetValue(node, name) {
  let n = node
  let link = inputLink(n, n?.findInputSlot?.(name))
  for (let hops = 0; hops < 16 && fromSubgraphInput(link); hops++) {
    const host = subgraphHost(n.graph)
    const input = host?.inputs?.[link.origin_slot]
    if (!input) break
    const w = host.widgets?.find((w) => w.name === input.name)
    link = inputLink(host, link.origin_slot)
    if (!link && w) return w.value
    n = host
  }
  return widget(node, name)?.value
}

// extend a LiteGraph node method on a node type: the original runs first, then after(node, ...args)
export function extendMethod(nodeType, name, after) {
  const original = nodeType.prototype[name]
  nodeType.prototype[name] = function (...args) {
    const r = original?.apply(this, args)
    after(this, ...args)
    return r
  }
}

export function wrapCallback(w, after) {
  if (!w || w.__dpirWrapped) return
  const cb = w.callback
  w.callback = function (...args) {
    const r = cb?.apply(this, args)
    after()
    return r
  }
  w.__dpirWrapped = true
}
