// Before/after view inside "DPIR Colour Fix": the LQ image left of the split, the restored image right of it.
// Move the pointer to move the split; wheel to zoom at the pointer; drag to pan; double-click to fit;
// ◀ ▶ for the images of a batch. The server sends the images under the UI key `dpir_compare`
// (nodes/web_ui.py: compare_ui).
import { app } from '../../../scripts/app.js'
import { api } from '../../../scripts/api.js'
import { addPanel, el, ensureSize, extendMethod, fitCanvas, graphScale, guarded, loadImage, register, viewURL } from './dpir_dom.js'

const NODE = 'DPIRColourFix'
const MAX_ZOOM = 64

class CompareView {
  constructor(node) {
    this.node = node
    this.items = []
    this.index = 0
    this.images = null // {lq, restored} of the current item
    this.zoom = 1
    this.cx = 0.5 // view centre, as a fraction of the image
    this.cy = 0.5
    this.split = 0.5 // fraction of the canvas width
    this.drag = null
    this.loadToken = 0

    // Nodes 2.0 (1.5x) forwards every wheel over a node to the graph canvas (zoom) unless the event comes from a
    // focused element marked data-capture-wheel: the canvas is focusable and takes the focus when the pointer
    // enters it (unless the user is typing elsewhere), so the wheel zooms the picture, as on the classic canvas
    this.canvas = el('canvas', { className: 'dpir-compare-canvas', tabIndex: -1, dataset: { captureWheel: 'true' }, style: {
      width: '100%', flex: '1 1 auto', minHeight: '0', display: 'block', cursor: 'col-resize', outline: 'none',
      background: 'repeating-conic-gradient(#2a2a2a 0% 25%, #333 0% 50%) 50% / 16px 16px', borderRadius: '4px' } })
    this.label = el('span', { className: 'dpir-compare-label', style: { flex: '1 1 auto', textAlign: 'center' } })
    const btn = (text, title, fn) => el('button', { textContent: text, title, onclick: (e) => { e.stopPropagation(); fn() },
      style: { background: 'var(--comfy-input-bg, #222)', color: 'var(--input-text, #ddd)', border: '1px solid #555',
        borderRadius: '4px', padding: '0 6px', cursor: 'pointer', font: 'inherit' } })
    this.prev = btn('◀', 'previous image of the batch', () => this.show(this.index - 1))
    this.next = btn('▶', 'next image of the batch', () => this.show(this.index + 1))
    this.fit = btn('fit', 'zoom to fit (double-click)', () => this.resetView())
    this.bar = el('div', { className: 'dpir-compare-bar', style: { display: 'flex', gap: '4px', alignItems: 'center',
      font: '11px sans-serif', color: 'var(--descrip-text, #999)', padding: '2px 0' } },
    [this.prev, this.label, this.fit, this.next])
    this.element = el('div', { className: 'dpir-compare', dataset: { ready: '0', count: '0', index: '0', zoom: '1' },
      title: 'DPIR before/after: pointer = split, wheel = zoom, drag = pan, double-click = fit',
      style: { display: 'flex', flexDirection: 'column', width: '100%', height: '100%', boxSizing: 'border-box' } },
    [this.canvas, this.bar])
    this.widget = addPanel(node, 'dpir_compare', this.element, 180)

    this.canvas.addEventListener('pointerenter', () => this.takeFocus())
    this.canvas.addEventListener('pointermove', (e) => this.onMove(e))
    this.canvas.addEventListener('pointerdown', (e) => { this.canvas.focus({ preventScroll: true }); this.onDown(e) })
    this.canvas.addEventListener('pointerup', (e) => this.onUp(e))
    this.canvas.addEventListener('pointercancel', (e) => this.onUp(e))
    this.canvas.addEventListener('wheel', (e) => this.onWheel(e), { passive: false })
    this.canvas.addEventListener('dblclick', () => this.resetView())
    if (typeof ResizeObserver === 'function') new ResizeObserver(() => guarded('compare view redraw', () => this.draw())).observe(this.canvas)
    this.updateBar()
  }

  takeFocus() {
    const active = document.activeElement
    const typing = active instanceof HTMLElement && active !== this.canvas &&
      (active.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(active.tagName))
    if (!typing) this.canvas.focus({ preventScroll: true })
  }

  /** @param {any[]} items */
  setItems(items) {
    this.items = Array.isArray(items) ? items : []
    this.element.dataset.count = String(this.items.length)
    this.show(Math.min(this.index, Math.max(0, this.items.length - 1)), true)
    if (this.items.length) ensureSize(this.node, 360, 420)
  }

  async show(i, force = false) {
    if (!this.items.length) {
      this.images = null
      this.element.dataset.ready = '0'
      this.updateBar()
      this.draw()
      return
    }
    i = (i + this.items.length) % this.items.length
    if (i === this.index && this.images && !force) return
    this.index = i
    this.element.dataset.index = String(i)
    this.element.dataset.ready = '0'
    this.updateBar()
    const item = this.items[i]
    const token = ++this.loadToken
    try {
      const [lq, restored] = await Promise.all([loadImage(viewURL(api, item.lq)), loadImage(viewURL(api, item.restored))])
      if (token !== this.loadToken) return
      this.images = { lq, restored }
      this.element.dataset.size = `${restored.naturalWidth}x${restored.naturalHeight}`
      this.draw()
      this.element.dataset.ready = '1'
    } catch (err) {
      if (token !== this.loadToken) return
      this.images = null
      this.element.dataset.error = String(err.message || err)
      this.draw()
    }
    this.updateBar()
  }

  updateBar() {
    const n = this.items.length
    const batch = n > 1 ? `${this.index + 1} / ${n}` : n ? '1 image' : 'run the workflow to compare'
    const zoom = this.zoom > 1.001 ? ` · ${Math.round(this.zoom * 100)}%` : ''
    const size = this.images ? ` · ${this.images.restored.naturalWidth}×${this.images.restored.naturalHeight}` : ''
    this.label.textContent = `LQ ◀ ▶ restored · ${batch}${size}${zoom}`
    this.prev.disabled = this.next.disabled = n < 2
    this.prev.style.opacity = this.next.style.opacity = n < 2 ? '0.4' : '1'
    this.element.dataset.zoom = String(this.zoom)
  }

  // image px -> canvas px transform: x' = ox + x * k
  transform() {
    const { restored } = this.images
    const W = this.canvas.width, H = this.canvas.height
    const iw = restored.naturalWidth, ih = restored.naturalHeight
    const k = Math.min(W / iw, H / ih) * this.zoom
    return { k, ox: W / 2 - this.cx * iw * k, oy: H / 2 - this.cy * ih * k, iw, ih, W, H }
  }

  clampView() {
    const half = 0.5 / this.zoom
    this.cx = Math.min(1 - half, Math.max(half, this.cx))
    this.cy = Math.min(1 - half, Math.max(half, this.cy))
  }

  resetView() {
    this.zoom = 1
    this.cx = this.cy = 0.5
    this.updateBar()
    this.draw()
  }

  /**
   * @param {MouseEvent} e
   * @returns {[number, number]}
   */
  fraction(e) {
    const r = this.canvas.getBoundingClientRect() // includes the graph's CSS scale
    return [(e.clientX - r.left) / Math.max(1, r.width), (e.clientY - r.top) / Math.max(1, r.height)]
  }

  onMove(e) {
    const [fx, fy] = this.fraction(e)
    if (this.drag && this.images && this.zoom > 1.001) { // at 'fit' a drag moves the split (touch)
      const t = this.transform()
      this.cx = this.drag.cx - ((fx - this.drag.fx) * t.W) / (t.iw * t.k)
      this.cy = this.drag.cy - ((fy - this.drag.fy) * t.H) / (t.ih * t.k)
      this.clampView()
    } else {
      this.split = Math.min(1, Math.max(0, fx))
    }
    this.draw()
  }

  onDown(e) {
    if (e.button !== 0) return
    const [fx, fy] = this.fraction(e)
    this.drag = { fx, fy, cx: this.cx, cy: this.cy }
    this.canvas.setPointerCapture?.(e.pointerId)
    this.canvas.style.cursor = 'grabbing'
  }

  onUp(e) {
    this.drag = null
    this.canvas.releasePointerCapture?.(e.pointerId)
    this.canvas.style.cursor = 'col-resize'
  }

  onWheel(e) {
    e.preventDefault()
    e.stopPropagation()
    if (!this.images) return
    this.zoomAt(this.fraction(e), Math.exp(-e.deltaY * 0.0015))
  }

  // zoom by `factor` keeping the image point under canvas fraction (fx, fy) in place
  zoomAt([fx, fy], factor) {
    const t = this.transform()
    const px = (fx * t.W - t.ox) / (t.iw * t.k), py = (fy * t.H - t.oy) / (t.ih * t.k)
    const zoom = Math.min(MAX_ZOOM, Math.max(1, this.zoom * factor))
    const k = (t.k / this.zoom) * zoom
    this.zoom = zoom
    this.cx = px - (fx * t.W - t.W / 2) / (t.iw * k)
    this.cy = py - (fy * t.H - t.H / 2) / (t.ih * k)
    this.clampView()
    this.updateBar()
    this.draw()
  }

  draw() {
    const ctx = this.canvas.getContext('2d')
    const ratio = fitCanvas(this.canvas, graphScale(app))
    const W = this.canvas.width, H = this.canvas.height
    ctx.clearRect(0, 0, W, H)
    if (!this.images) {
      ctx.fillStyle = '#888'
      ctx.font = `${12 * ratio}px sans-serif`
      ctx.textAlign = 'center'
      ctx.fillText(this.element.dataset.error || 'before / after appears here after a run', W / 2, H / 2)
      return
    }
    const { lq, restored } = this.images
    const t = this.transform()
    const dw = t.iw * t.k, dh = t.ih * t.k
    const sx = Math.round(this.split * W)
    ctx.imageSmoothingEnabled = t.k < 2 // show the pixels when zoomed in
    ctx.save()
    ctx.beginPath()
    ctx.rect(0, 0, sx, H)
    ctx.clip()
    ctx.drawImage(lq, t.ox, t.oy, dw, dh) // an LQ of another size is stretched onto the restored image
    ctx.restore()
    ctx.save()
    ctx.beginPath()
    ctx.rect(sx, 0, W - sx, H)
    ctx.clip()
    ctx.drawImage(restored, t.ox, t.oy, dw, dh)
    ctx.restore()
    ctx.fillStyle = 'rgba(255,255,255,0.9)'
    ctx.fillRect(sx - ratio, 0, 2 * ratio, H)
    ctx.font = `bold ${11 * ratio}px sans-serif`
    ctx.textBaseline = 'top'
    const tag = (text, x, align) => {
      ctx.textAlign = align
      const w = ctx.measureText(text).width + 8 * ratio
      ctx.fillStyle = 'rgba(0,0,0,0.55)'
      ctx.fillRect(align === 'left' ? x : x - w, 4 * ratio, w, 16 * ratio)
      ctx.fillStyle = '#fff'
      ctx.fillText(text, align === 'left' ? x + 4 * ratio : x - 4 * ratio, 6 * ratio)
    }
    if (sx > 40 * ratio) tag('LQ', 4 * ratio, 'left')
    if (W - sx > 70 * ratio) tag('restored', W - 4 * ratio, 'right')
    this.element.dataset.split = this.split.toFixed(3)
    this.element.dataset.draws = String((+this.element.dataset.draws || 0) + 1)
  }
}

register(app, {
  name: 'DPIR.CompareView',
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return
    extendMethod(nodeType, 'onNodeCreated', (node) => { node.dpirCompare = new CompareView(node) })
    // a saved size from before this extension may be too small for the view
    extendMethod(nodeType, 'onConfigure', (node) => ensureSize(node, 360, 420))
    extendMethod(nodeType, 'onExecuted', (node, message) => {
      if (message?.dpir_compare) node.dpirCompare?.setItems(message.dpir_compare)
    })
  }
})
