// Tile-plan overlay inside "DPIR Tiled Global-Local Prompt": the tile grid and its overlaps over the LQ image,
// redrawn as soon as tile_size / tile_overlap / seam_shift (or the upstream resize, or the Sampler Patch's
// tile_batch / cfg) change, with the number of tiles and an estimate of the memory per tile batch.
//
// The LQ image: after a run, the one the node received (UI key `dpir_tiles`, nodes/web_ui.py: tiles_ui);
// before a run (or when the upstream settings changed since), the image of the node feeding
// 'DPIR Robust VAE Encode' (e.g. Load Image) at the size that node will resize it to.
import { app } from '../../../scripts/app.js'
import { api } from '../../../scripts/api.js'
import { addPanel, el, ensureSize, extendMethod, fitCanvas, graphScale, guarded, inputNode, loadImage, register, viewURL, widget, wrapCallback } from './dpir_dom.js'
import { widgetValue } from './dpir_subgraph.js'
import { dpirTilePlan, encodeTargetSize, tileBatchMemory } from './dpir_tile_plan.js'

const NODE = 'DPIRTiledPrompt'
const pictures = new Map() // /view URL -> {image}: upstream pictures, loaded once
const COLOURS = ['#ff4d33', '#33ccff', '#ffe633', '#80ff66'] // as the node's tile_preview (draw_plan)
const MEMORY_NOTE = [
  'Tile plan of this node (plan 0; with seam_shift the grid also takes 3 shifted positions during sampling).',
  'LQ: "last run" = the image this node received; "estimate" = the upstream image at the size DPIR Robust VAE ' +
    'Encode will give it (before a run, or when the upstream settings changed since).',
  'Memory per call = activations of the largest model call: tiles per call × (2 with CFG > 1) × tile latent px ' +
    '× 2 bytes × 0.01 × 1.2 MiB — ComfyUI\'s own SD3 estimate with flash attention (comfy/model_base.py ' +
    'memory_required; fp16/bf16). Add the weights: SD3-medium transformer (2 B parameters) ≈ 4 GB fp16 / 2 GB fp8, ' +
    'plus the VAE and CLIP towers while loaded. "tile_batch N?" = no DPIR Sampler Patch connected: its default.'
].join('\n')

function fmtMiB(mib) {
  return mib >= 1024 ? `${(mib / 1024).toFixed(mib >= 10240 ? 0 : 1)} GiB` : `${Math.max(1, Math.round(mib))} MiB`
}

class TileOverlay {
  constructor(node) {
    this.node = node
    this.executed = null // {info, image}
    this.upstreamImage = null
    this.signature = ''
    this.canvas = el('canvas', { className: 'dpir-tiles-canvas', style: {
      width: '100%', flex: '1 1 auto', minHeight: '0', display: 'block', borderRadius: '4px', background: '#1b1b1b' } })
    this.info = el('div', { className: 'dpir-tiles-info', title: MEMORY_NOTE, style: {
      font: '11px sans-serif', color: 'var(--descrip-text, #aaa)', padding: '3px 2px 0', lineHeight: '1.35',
      whiteSpace: 'pre-wrap' } })
    this.element = el('div', { className: 'dpir-tiles', dataset: { tiles: '0', source: 'none' }, style: {
      display: 'flex', flexDirection: 'column', width: '100%', height: '100%', boxSizing: 'border-box' } },
    [this.canvas, this.info])
    this.widget = addPanel(node, 'dpir_tile_overlay', this.element, 190)
    for (const name of ['tile_size', 'tile_overlap', 'seam_shift']) wrapCallback(widget(node, name), () => this.update())
    if (typeof ResizeObserver === 'function') new ResizeObserver(() => guarded('tile overlay redraw', () => this.render())).observe(this.canvas)
    // upstream changes are noticed on the node's canvas frames (onDrawForeground); where no frames come -- nodes
    // rendered by the frontend's Vue node renderer (1.3x+ "Nodes 2.0") -- a slow timer polls instead
    this.lastFrame = 0
    this.timer = setInterval(() => guarded('tile overlay poll', () => {
      if (this.element.isConnected && performance.now() - this.lastFrame > 1000) this.poll()
    }), 500)
    this.update()
  }

  frame() {
    this.lastFrame = performance.now()
    this.poll()
  }

  dispose() {
    clearInterval(this.timer)
  }

  async setExecuted(info) {
    if (!info) return
    try {
      const image = await loadImage(viewURL(api, info.lq))
      this.executed = { info, image }
    } catch {
      this.executed = { info, image: null }
    }
    ensureSize(this.node, 360, 480)
    this.update(true)
  }

  // The picture a node feeds: a Load Image's file (loaded here, so it does not matter whether the node has been
  // drawn yet), else the node's own preview images.
  picture(src) {
    const name = widgetValue(src, 'image')
    if (typeof name === 'string' && src.type?.startsWith('LoadImage')) {
      const m = name.match(/^(.*?)(?: \[(input|output|temp)\])?$/)
      const path = m[1], type = m[2] || 'input'
      const cut = path.lastIndexOf('/')
      const url = viewURL(api, { filename: path.slice(cut + 1), subfolder: cut < 0 ? '' : path.slice(0, cut), type })
      const entry = pictures.get(url)
      if (entry) return entry.image
      pictures.set(url, { image: null })
      loadImage(url).then((image) => {
        pictures.set(url, { image })
        guarded('tile overlay update', () => this.update())
      }, () => {})
      return null
    }
    const img = src.imgs?.[0]
    return img?.naturalWidth ? img : null
  }

  // LQ size (h, w) and image the next run will see, from the upstream graph; null if unknown
  upstream() {
    const src = inputNode(this.node, 'lq_image')
    if (!src) return null
    if (src.type === 'DPIRRobustVAEEncode') {
      const photo = inputNode(src, 'image')
      const img = photo && this.picture(photo)
      if (!img) return null
      const v = (n) => widgetValue(src, n)
      return { size: encodeTargetSize(img.naturalHeight, img.naturalWidth, v('resize'), v('long_side'), v('upscale_factor')), image: img }
    }
    const img = this.picture(src)
    return img ? { size: [img.naturalHeight, img.naturalWidth], image: img } : null
  }

  // Sampler Patch nodes fed by our 'tiles' output: their tile_batch and cfg
  sampler() {
    const links = this.node.outputs?.[0]?.links ?? []
    const graph = this.node.graph
    for (const id of graph ? links : []) {
      // links: a Map in 1.2x+, a plain object before
      const link = typeof graph.links?.get === 'function' ? graph.links.get(id) : /** @type {any} */ (graph.links)?.[id]
      const target = link && graph.getNodeById?.(link.target_id)
      if (target?.type === 'DPIRSamplerPatch')
        return { tileBatch: widgetValue(target, 'tile_batch') ?? 4, cfg: widgetValue(target, 'cfg') ?? 1, linked: true }
    }
    return { tileBatch: 4, cfg: 1, linked: false }
  }

  // the source, plan and memory estimate for the current widgets
  state() {
    const v = (n) => widgetValue(this.node, n)
    const up = this.upstream()
    const ex = this.executed
    let source = null
    if (ex && (!up || (up.size[0] === ex.info.height && up.size[1] === ex.info.width)))
      source = { kind: 'run', h: ex.info.height, w: ex.info.width, image: ex.image }
    else if (up) source = { kind: 'estimate', h: up.size[0], w: up.size[1], image: up.image }
    const sampler = this.sampler()
    const plan = source ? dpirTilePlan(source.h, source.w, Number(v('tile_size')), Number(v('tile_overlap')), v('seam_shift') !== false) : null
    const memory = plan && !plan.error ? tileBatchMemory(plan.tiles, Number(sampler.tileBatch), Number(sampler.cfg)) : null
    return { source, plan, sampler, memory, tileSize: v('tile_size'), tileOverlap: v('tile_overlap') }
  }

  // called on every frame the node is drawn: cheap check whether anything that the overlay shows changed
  poll() {
    const s = this.state()
    const sig = JSON.stringify([s.tileSize, s.tileOverlap, widgetValue(this.node, 'seam_shift'), s.source?.kind,
      s.source?.h, s.source?.w, s.sampler.tileBatch, s.sampler.cfg, !!s.source?.image])
    if (sig !== this.signature) this.update()
  }

  update(force = false) {
    const s = this.state()
    this.signature = JSON.stringify([s.tileSize, s.tileOverlap, widgetValue(this.node, 'seam_shift'), s.source?.kind,
      s.source?.h, s.source?.w, s.sampler.tileBatch, s.sampler.cfg, !!s.source?.image])
    this.current = s
    const d = this.element.dataset
    d.source = s.source?.kind ?? 'none'
    d.tiles = String(s.plan && !s.plan.error ? s.plan.rects.length : 0)
    d.rects = JSON.stringify(s.plan?.rects ?? [])
    d.lq = s.source ? `${s.source.w}x${s.source.h}` : ''
    d.memMib = s.memory ? s.memory.mib.toFixed(1) : ''
    d.tileSize = String(s.tileSize)
    d.tileOverlap = String(s.tileOverlap)
    this.info.textContent = this.describe(s)
    this.render()
    this.node.setDirtyCanvas?.(true, false)
  }

  describe({ source, plan, sampler, memory }) {
    if (!source) return 'Tile plan: connect lq_image (DPIR Robust VAE Encode fed by Load Image) or run once.'
    if (plan.error) return `Tile plan: ${plan.error}`
    const n = plan.rects.length
    const from = source.kind === 'run' ? 'last run' : 'estimate'
    const cfg = memory.cfgBatch > 1 ? ' ×2 CFG' : ''
    const batch = sampler.linked ? `tile_batch ${sampler.tileBatch}` : `tile_batch ${sampler.tileBatch}?`
    return `${n} tile${n === 1 ? '' : 's'} (${plan.rows} × ${plan.cols}) · ${plan.tile * 8} px, overlap ${plan.overlap * 8} px` +
      ` · LQ ${source.w}×${source.h} (${from})\n` +
      `${batch} → ${memory.callsPerStep} model call${memory.callsPerStep === 1 ? '' : 's'} per step` +
      ` · ≈ ${fmtMiB(memory.mib)} per call (${memory.tilesPerCall} tile${memory.tilesPerCall === 1 ? '' : 's'}${cfg}) + weights` +
      (this.vaeChoice() ? `\n${this.vaeChoice()}` : '')
  }

  // what the upstream DPIR Robust VAE Encode chose in its last run (whole image or tiles: dpir_text.js shows it)
  vaeChoice() {
    // dpirText: the text panel dpir_text.js puts on the VAE nodes (not a frontend property)
    const encode = /** @type {any} */ (inputNode(this.node, 'lq_image'))
    return encode?.dpirText?.body?.textContent ?? ''
  }

  render() {
    const s = this.current
    const ctx = this.canvas.getContext('2d')
    const ratio = fitCanvas(this.canvas, graphScale(app))
    const W = this.canvas.width, H = this.canvas.height
    ctx.clearRect(0, 0, W, H)
    if (!s?.source) return
    const { h, w, image } = s.source
    const k = Math.min(W / w, H / h)
    const ox = (W - w * k) / 2, oy = (H - h * k) / 2
    if (image) {
      ctx.globalAlpha = 0.8
      ctx.drawImage(image, ox, oy, w * k, h * k)
      ctx.globalAlpha = 1
    } else {
      ctx.fillStyle = '#444'
      ctx.fillRect(ox, oy, w * k, h * k)
    }
    if (!s.plan || s.plan.error) {
      ctx.fillStyle = 'rgba(200,40,40,0.35)'
      ctx.fillRect(ox, oy, w * k, h * k)
      return
    }
    // overlaps: each tile adds a light veil, so areas under two or four tiles are lighter
    ctx.fillStyle = 'rgba(255,255,255,0.13)'
    for (const [x, y, rw, rh] of s.plan.rects) ctx.fillRect(ox + x * k, oy + y * k, rw * k, rh * k)
    const line = Math.max(1, 2 * ratio)
    ctx.lineWidth = line
    ctx.font = `bold ${Math.max(9, 11 * ratio)}px sans-serif`
    ctx.textBaseline = 'top'
    s.plan.rects.forEach(([x, y, rw, rh], i) => {
      const c = COLOURS[i % COLOURS.length]
      const inset = line / 2 + (i % 2) * line // neighbours' outlines do not hide each other
      ctx.strokeStyle = c
      ctx.strokeRect(ox + x * k + inset, oy + y * k + inset, rw * k - 2 * inset, rh * k - 2 * inset)
      ctx.fillStyle = c
      ctx.fillText(String(i + 1), ox + x * k + inset + 3 * ratio, oy + y * k + inset + 2 * ratio)
    })
    this.element.dataset.draws = String((+this.element.dataset.draws || 0) + 1)
  }
}

register(app, {
  name: 'DPIR.TileOverlay',
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return
    extendMethod(nodeType, 'onNodeCreated', (node) => { node.dpirTiles = new TileOverlay(node) })
    // a saved size from before this extension may be too small for the view
    extendMethod(nodeType, 'onConfigure', (node) => ensureSize(node, 360, 480))
    extendMethod(nodeType, 'onExecuted', (node, message) => {
      if (message?.dpir_tiles?.length) node.dpirTiles?.setExecuted(message.dpir_tiles[0])
    })
    extendMethod(nodeType, 'onDrawForeground', (node) => node.dpirTiles?.frame())
    extendMethod(nodeType, 'onRemoved', (node) => node.dpirTiles?.dispose())
  }
})
