// Shared helpers of the DPIR web extensions (no side effects: the server loads every .js under web/ as an extension).
//
// Frontend APIs the extensions use, tested on frontend 1.27.10 (tests/host/test_browser.py) and read in the
// stored ComfyUI_frontend sources of 1.5x: the legacy module shims scripts/app.js and scripts/api.js (still
// generated from src/scripts), app.registerExtension with setup / beforeRegisterNodeDef / refreshComboInNodes,
// the node methods onNodeCreated / onConfigure / onExecuted / onDrawForeground / onRemoved, node.addDOMWidget
// (options serialize, hideOnZoom, getMinHeight), api.apiURL / api.fetchApi, and node docs at
// web/docs/<Node>.md (1.5x first tries docs/<Node>/<locale>.md, then this file). With the Vue node renderer
// (1.3x+ "Nodes 2.0") canvas hooks such as onDrawForeground do not run: dpir_tiles.js polls on a timer there.

import { crossBoundary, inputLink } from './dpir_subgraph.js'

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

// The node feeding input `name` of `node`, through legacy Reroute nodes and subgraph boundaries (dpir_subgraph.js).
// Null when unknown, e.g. while a workflow loads and the node is not in a graph yet (1.5x configures the nodes of
// a loaded workflow before adding them, and its getInputNode throws NullGraphError there).
export function inputNode(node, name) {
  let graph = node?.graph
  let link = inputLink(node, node?.findInputSlot?.(name))
  for (let hops = 0; hops < 16 && link && graph; hops++) {
    const next = crossBoundary(graph, link)
    if (next) {
      graph = next.graph
      link = next.link
      continue
    }
    const src = graph.getNodeById?.(link.origin_id)
    if (!src) return null
    if (src.type !== 'Reroute') return src
    link = inputLink(src, 0)
  }
  return null
}

export function widget(node, name) {
  return node?.widgets?.find((w) => w.name === name)
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
