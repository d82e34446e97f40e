// Shared helpers of the DPIR web extensions (no side effects: the server loads every .js under web/ as an extension).
//
// Frontend APIs the extensions use, tested on frontend 1.27.10 (tests/host/test_browser.py) and read in the
// stored ComfyUI_frontend sources of 1.5x: the legacy module shims scripts/app.js and scripts/api.js (still
// generated from src/scripts), app.registerExtension with setup / beforeRegisterNodeDef / refreshComboInNodes,
// the node methods onNodeCreated / onConfigure / onExecuted / onDrawForeground / onRemoved, node.addDOMWidget
// (options serialize, hideOnZoom, getMinHeight), api.apiURL / api.fetchApi, and node docs at
// web/docs/<Node>.md (1.5x first tries docs/<Node>/<locale>.md, then this file). With the Vue node renderer
// (1.3x+ "Nodes 2.0") canvas hooks such as onDrawForeground do not run: dpir_tiles.js polls on a timer there.
// docs/frontend.md lists what differs between the frontends and how each difference is handled here.
//
// Every frontend API is feature-detected and every hook body runs through `guarded`: a missing API turns a view
// off, it never throws into the frontend (an exception in onNodeCreated/onConfigure aborts a workflow load).

import { crossBoundary, inputLink } from './dpir_subgraph.js'

export const PACK = 'ComfyUI-DPIR'

/**
 * @typedef {ComfyTypes.LGraphNode} LGraphNode
 * @typedef {ComfyTypes.IBaseWidget} IBaseWidget
 */

// An exception of the pack, logged with its name (tests and users see it), never thrown into the frontend.
/**
 * @param {string} what
 * @param {unknown} err
 */
export function report(what, err) {
  console.error(`[${PACK}] ${what}:`, err)
}

// Runs fn; an exception is reported, never propagated.
/**
 * @template T
 * @param {string} what
 * @param {() => T} fn
 * @returns {T | undefined}
 */
export function guarded(what, fn) {
  try {
    return fn()
  } catch (err) {
    report(what, err)
    return undefined
  }
}

// A DOM widget that is never saved into the workflow nor sent with the prompt; null where the frontend has no
// DOM widgets.
/**
 * @param {ComfyTypes.DOMWidgetHost} node
 * @param {string} name
 * @param {HTMLElement} element
 * @param {number} minHeight
 * @returns {ComfyTypes.DOMWidget | null}
 */
export function addPanel(node, name, element, minHeight) {
  if (typeof node.addDOMWidget !== 'function') return null
  const widget = node.addDOMWidget(name, name, element, {
    serialize: false,
    hideOnZoom: true,
    getMinHeight: () => minHeight
  })
  if (!widget) return null
  widget.serialize = false
  // keep pointer and wheel gestures inside the panel (otherwise the canvas drags the node / zooms the graph)
  for (const type of ['pointerdown', 'pointermove', 'pointerup', 'dblclick', 'contextmenu'])
    element.addEventListener(type, (e) => e.stopPropagation())
  element.addEventListener('wheel', (e) => e.stopPropagation(), { passive: true })
  return widget
}

/**
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, any>} [props]
 * @param {(Node | string)[] | Node | string} [children]
 * @returns {HTMLElementTagNameMap[K]}
 */
export function el(tag, props = {}, children = []) {
  const e = document.createElement(tag)
  for (const [k, v] of Object.entries(props)) {
    if (k === 'style') Object.assign(e.style, v)
    else if (k === 'dataset') Object.assign(e.dataset, v)
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v)
    else /** @type {any} */ (e)[k] = v
  }
  for (const c of [].concat(children)) e.append(c)
  return e
}

// Grow a node so its panels get room (never shrinks what the user chose).
/**
 * @param {LGraphNode} node
 * @param {number} minW
 * @param {number} minH
 */
export function ensureSize(node, minW, minH) {
  if (!node.size) return
  const want = node.computeSize?.() ?? [0, 0]
  const w = Math.max(node.size[0], minW, want[0])
  const h = Math.max(node.size[1], minH, want[1])
  if (w !== node.size[0] || h !== node.size[1]) {
    if (typeof node.setSize === 'function') node.setSize([w, h])
    else node.size = [w, h]
  }
  node.setDirtyCanvas?.(true, true)
}

// A canvas backing store matching its CSS box (device pixels; sharper when the graph is zoomed in).
/**
 * @param {HTMLCanvasElement} canvas
 * @param {number} [zoom]
 */
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

/**
 * @param {ComfyTypes.ComfyApi} api
 * @param {{filename: string, subfolder?: string, type?: string}} ref
 */
export function viewURL(api, ref) {
  const q = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder || '', type: ref.type || 'temp' })
  const path = `/view?${q}`
  return typeof api?.apiURL === 'function' ? api.apiURL(path) : `api${path}`
}

/**
 * @param {string} src
 * @returns {Promise<HTMLImageElement>}
 */
export function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image()
    img.onload = () => resolve(img)
    img.onerror = () => reject(new Error(`could not load ${src}`))
    img.src = src
  })
}

/** @param {ComfyTypes.ComfyApp} app */
export function graphScale(app) {
  return app?.canvas?.ds?.scale ?? 1
}

// The node feeding input `name` of `node`, through legacy Reroute nodes and subgraph boundaries (dpir_subgraph.js).
// Null when unknown, e.g. while a workflow loads and the node is not in a graph yet (1.5x configures the nodes of
// a loaded workflow before adding them, and its getInputNode throws NullGraphError there).
/**
 * @param {LGraphNode} node
 * @param {string} name
 * @returns {LGraphNode | null}
 */
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

/**
 * @param {LGraphNode | null | undefined} node
 * @param {string} name
 * @returns {IBaseWidget | undefined}
 */
export function widget(node, name) {
  return node?.widgets?.find((w) => w.name === name)
}

// extend a LiteGraph node method on a node type: the original runs first, then after(node, ...args), guarded
/**
 * @param {any} nodeType the node class (beforeRegisterNodeDef's nodeType)
 * @param {string} name
 * @param {(node: any, ...args: any[]) => void} after
 */
export function extendMethod(nodeType, name, after) {
  const proto = nodeType?.prototype
  if (!proto) return
  const original = proto[name]
  proto[name] = function (/** @type {any[]} */ ...args) {
    const r = original?.apply(this, args)
    guarded(`${nodeType.comfyClass ?? nodeType.type ?? ''}.${name}`, () => after(this, ...args))
    return r
  }
}

/**
 * @param {IBaseWidget | undefined} w
 * @param {() => void} after
 */
export function wrapCallback(w, after) {
  const ww = /** @type {any} */ (w)
  if (!ww || ww.__dpirWrapped) return
  const cb = ww.callback
  ww.callback = function (/** @type {any[]} */ ...args) {
    const r = cb?.apply(this, args)
    guarded('widget callback', after)
    return r
  }
  ww.__dpirWrapped = true
}

// app.registerExtension where the frontend has it (the extension is left out, quietly, where it has not)
/**
 * @param {ComfyTypes.ComfyApp} app
 * @param {ComfyTypes.ComfyExtension} extension
 */
export function register(app, extension) {
  if (typeof app?.registerExtension !== 'function') return
  guarded(`registerExtension(${extension.name})`, () => app.registerExtension(extension))
}
