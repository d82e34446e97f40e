// Model-file guidance inside the DPIR loaders: when a loader's file list is empty (only "none") or the chosen
// file is not in it (a workflow from elsewhere), the node says which file is expected, where it comes from and
// which folder it goes in. The text comes from the server (GET /dpir/model_files, nodes/web_ui.py), built from
// MODEL_FILES in nodes/model_files.py: the same text as the loaders' "file missing" errors and the README table.
import { app } from '../../../scripts/app.js'
import { api } from '../../../scripts/api.js'
import { addPanel, el, ensureSize, extendMethod, register, report, widget, wrapCallback } from './dpir_dom.js'

const events = /** @type {EventTarget} */ (api) // the pack's own 'dpir.download' event is not in the typed ApiEvents
let payload = null
let loading = null

async function modelFiles(refresh = false) {
  if (payload && !refresh) return payload
  if (typeof api?.fetchApi !== 'function') return null
  if (!loading || refresh) {
    loading = api.fetchApi('/dpir/model_files', { cache: 'no-store' })
      .then((r) => (r.ok ? r.json() : null))
      .catch(() => null)
      .then((p) => {
        if (p) payload = p
        loading = null
        return payload
      })
  }
  return loading
}

function missing(w) {
  const values = w?.options?.values
  const list = Array.isArray(values) ? values : typeof values === 'function' ? values() : []
  if (!list.length || (list.length === 1 && list[0] === 'none')) return 'empty'
  if (w.value != null && !list.includes(w.value)) return 'absent'
  return null
}

// One entry per expected file: its fields verbatim from MODEL_FILES (the error text and the README table are built
// from the same fields); the whole error sentence (guidance(kind)) is the entry's tooltip.
function panelFor(node, name, kinds, why) {
  const head = why === 'empty'
    ? `No file for '${name}' in its folder. Put it there, then press R:`
    : `'${widget(node, name)?.value}' is not in the model folder. Put it there (or pick another), then press R:`
  const row = (label, text, cls) => el('div', { className: cls, style: { marginTop: '1px' } },
    [el('span', { textContent: `${label} `, style: { opacity: '0.75' } }), el('span', { textContent: text })])
  const items = kinds.map((k) => {
    const f = payload.files[k]
    return el('div', { className: 'dpir-guidance-item', dataset: { kind: k }, title: payload.guidance[k],
      style: { marginTop: '4px', paddingTop: '3px', borderTop: '1px solid rgba(240, 180, 60, 0.3)' } }, [
      row('file:', f.expected, 'dpir-guidance-expected'),
      row('from:', f.source, 'dpir-guidance-source'),
      row('into:', `ComfyUI/models/${f.folder}/`, 'dpir-guidance-folder'),
      ...(f.hub ? [downloadRow(k)] : [])
    ])
  })
  return el('div', { className: 'dpir-guidance', dataset: { widget: name, why }, style: {
    font: '10.5px sans-serif', lineHeight: '1.3', color: '#f3d9a4', background: 'rgba(120, 80, 0, 0.25)',
    border: '1px solid rgba(240, 180, 60, 0.6)', borderRadius: '4px', padding: '4px 6px', overflowY: 'auto',
    userSelect: 'text', height: '100%', boxSizing: 'border-box' } },
  [el('div', { style: { fontWeight: 'bold' }, textContent: head }), ...items])
}

// One click: the server fetches this kind of the pack's table (POST /dpir/download, nodes/downloads.py; it takes
// table kinds only) and reports progress as 'dpir.download' events; the lists are refreshed when it is done.
function downloadRow(kind) {
  const status = el('span', { className: 'dpir-guidance-status', style: { marginLeft: '4px' } })
  const button = el('button', { className: 'dpir-guidance-download', textContent: 'Download',
    title: 'fetch this file from Hugging Face into the folder (POST /dpir/download)',
    style: { font: '10px sans-serif', padding: '0 5px', lineHeight: '12px', cursor: 'pointer' } })
  const onProgress = (e) => {
    const d = e.detail || {}
    if (d.kind === kind && d.total) status.textContent = `${d.file}: ${Math.floor((100 * d.done) / d.total)} %`
  }
  button.onclick = async (event) => {
    event.stopPropagation()
    button.disabled = true
    status.textContent = 'asking the Hub…'
    events.addEventListener?.('dpir.download', onProgress)
    try {
      const r = await api.fetchApi('/dpir/download', { method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ kinds: [kind] }) })
      const body = await r.json()
      const result = body.results?.[kind]
      if (result?.ok) {
        status.textContent = `done: ${result.names.join(', ')}`
        await app.refreshComboInNodes?.()
      } else {
        status.textContent = result?.error || body.error || `HTTP ${r.status}`
        status.style.color = '#ff9c9c'
        button.disabled = false
      }
    } catch (e) {
      status.textContent = String(e)
      button.disabled = false
    } finally {
      events.removeEventListener?.('dpir.download', onProgress)
    }
  }
  // floats beside the 'into:' line, so the panel needs no extra line (the shipped layouts leave no room for one)
  return el('div', { className: 'dpir-guidance-action', style: { float: 'right', marginTop: '-14px' } }, [button, status])
}

// height the panel needs at the node's width (10.5 px sans-serif: ~5.8 px per character, 13.65 px per line)
function panelHeight(node, name, kinds) {
  const perLine = Math.max(20, Math.floor((Math.max(node.size[0], 340) - 36) / 5.8))
  const lines = (text) => Math.ceil(text.length / perLine)
  let n = lines(`'${widget(node, name)?.value}' is not in the model folder. Put it there (or pick another), then press R:`)
  for (const k of kinds) {
    const f = payload.files[k]
    n += lines(`file: ${f.expected}`) + lines(`from: ${f.source}`) + lines(`into: ComfyUI/models/${f.folder}/`)
  }
  return Math.ceil(n * 13.65 + 12 + 8 * kinds.length)
}

async function refresh(node) {
  const p = await modelFiles()
  const spec = p?.loaders?.[node.type]
  if (!spec || !node.widgets) return
  for (const [name, kinds] of Object.entries(spec)) {
    const w = widget(node, name)
    wrapCallback(w, () => refresh(node))
    const why = missing(w)
    const key = `${name}:${why}:${w?.value}`
    const current = node.dpirGuidance?.[name]
    if ((current && current.key === key) || (!current && !why)) continue
    if (current) {
      if (current.widget && typeof node.removeWidget === 'function') node.removeWidget(current.widget)
      delete node.dpirGuidance[name]
    }
    if (why) {
      const element = panelFor(node, name, kinds, why)
      const panel = addPanel(node, `dpir_guidance_${name}`, element, panelHeight(node, name, kinds))
      if (!panel) continue
      node.dpirGuidance = { ...(node.dpirGuidance || {}), [name]: { widget: panel, key } }
      ensureSize(node, 340, 0)
    } else {
      if (node.computeSize && node.setSize) node.setSize([node.size[0], node.computeSize()[1]]) // the panel is gone: give its room back
    }
    node.setDirtyCanvas?.(true, true)
  }
}

register(app, {
  name: 'DPIR.ModelFileGuidance',
  async setup() {
    await modelFiles()
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const p = await modelFiles()
    if (!p?.loaders?.[nodeData.name]) return
    // after a loaded workflow has set the widget values
    const later = (node) => setTimeout(() => refresh(node).catch((e) => report('model guidance', e)), 0)
    extendMethod(nodeType, 'onNodeCreated', later)
    extendMethod(nodeType, 'onConfigure', later)
  },
  async refreshComboInNodes() {
    await modelFiles(true) // folders may have changed: new guidance text and lists
    for (const node of app.graph?.nodes ?? []) if (payload?.loaders?.[node.type]) refresh(node).catch((e) => report('model guidance', e))
  }
})
