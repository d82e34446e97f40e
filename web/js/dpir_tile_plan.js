// Tile plan of "DPIR Tiled Global-Local Prompt", computed in the browser with the rule of the Python node
// (nodes/tiled_sampling.py: DPIRTiledPrompt.plan + token_aligned_plan; models/tiling.py: plan_tiles;
// models/dual_prompt.py: tile_starts). Pure functions: no ComfyUI import, so tests can run them anywhere.

export const LATENT_SCALE = 8 // image px per latent px (SD3 VAE)
export const PATCH = 2 // latent px per transformer token
export const PAD_MULTIPLE = 16 // the robust encode pads images to multiples of 16 px
export const RESIZE_MODES = ['long side', 'upscale factor', 'keep size']

// Python's round(): halves go to the even neighbour
export function roundHalfEven(x) {
  const r = Math.round(x)
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r
}

// DPIR Robust VAE Encode's output size (nodes/robust_encode.py: target_size) -> [h, w]
export function encodeTargetSize(h, w, mode, longSide, factor) {
  let scale
  if (mode === 'long side') scale = longSide / Math.max(h, w)
  else if (mode === 'upscale factor') scale = factor
  else scale = 1.0
  return [Math.max(1, roundHalfEven(h * scale)), Math.max(1, roundHalfEven(w * scale))]
}

// models/dual_prompt.py: tile_starts
export function tileStarts(size, tile, overlap) {
  if (size <= 0 || tile <= 0) throw new Error(`cannot tile a side of ${size} px with tiles of ${tile} px`)
  if (!(overlap >= 0 && overlap < tile)) throw new Error(`tile overlap ${overlap} must be at least 0 and smaller than the tile size ${tile}`)
  if (size <= tile) return [0]
  const stride = tile - overlap
  const count = Math.ceil((size - overlap) / stride)
  const out = []
  for (let i = 0; i < count; i++) out.push(Math.min(i * stride, size - tile))
  return out
}

// models/tiling.py: plan_tiles -> [{top, left, height, width}] row-major
export function planTiles(height, width, tile, overlap) {
  const th = Math.min(tile, height), tw = Math.min(tile, width)
  const out = []
  for (const top of tileStarts(height, tile, overlap))
    for (const left of tileStarts(width, tile, overlap)) out.push({ top, left, height: th, width: tw })
  return out
}

// nodes/tiled_sampling.py: token_aligned_plan (shift 0) -> tiles in latent px on the patch-2 token grid
export function tokenAlignedPlan(height, width, tile, overlap) {
  const rows = Math.floor((height + 1) / 2), cols = Math.floor((width + 1) / 2)
  return planTiles(rows, cols, Math.floor(tile / 2), Math.floor(overlap / 2)).map((t) => ({
    top: 2 * t.top,
    left: 2 * t.left,
    height: Math.min(2 * t.height, height - 2 * t.top),
    width: Math.min(2 * t.width, width - 2 * t.left)
  }))
}

// DPIRTiledPrompt.plan for an LQ image of h x w px and the node's widgets.
// Returns {latent: [lh, lw], tile, overlap (latent px), shifts, tiles (latent px), rects: [[x, y, w, h]] image px,
// rows, cols} or {error}.
export function dpirTilePlan(h, w, tileSize, tileOverlap, seamShift = true) {
  const lh = Math.ceil(h / PAD_MULTIPLE) * 2, lw = Math.ceil(w / PAD_MULTIPLE) * 2
  const tile = Math.floor(tileSize / LATENT_SCALE / 2) * 2
  const overlap = Math.floor(tileOverlap / LATENT_SCALE / 2) * 2
  if (overlap >= tile) return { error: `tile_overlap ${tileOverlap} must be smaller than tile_size ${tileSize}` }
  const quarter = Math.floor(tile / 4 / 2) * 2
  const shifts = seamShift && quarter ? 4 : 1
  const tiles = tokenAlignedPlan(lh, lw, tile, overlap)
  const rects = tiles.map((t) => {
    const x0 = t.left * LATENT_SCALE, y0 = t.top * LATENT_SCALE
    const x1 = Math.min(w, (t.left + t.width) * LATENT_SCALE), y1 = Math.min(h, (t.top + t.height) * LATENT_SCALE)
    return [x0, y0, x1 - x0, y1 - y0]
  })
  const rows = new Set(tiles.map((t) => t.top)).size, cols = new Set(tiles.map((t) => t.left)).size
  return { latent: [lh, lw], tile, overlap, shifts, tiles, rects, rows, cols }
}

// Activation memory of one model call, as ComfyUI estimates it for SD3 before sampling
// (comfy/model_base.py BaseModel.memory_required with PyTorch/xformers flash attention):
//   MiB = batch x latent_h x latent_w x dtype_bytes x 0.01 x memory_usage_factor (1.2 for SD3)
// (ComfyUI uses 0.15 x 1.2 MiB per latent px, any dtype, without flash attention, e.g. on the CPU).
// A call of DPIR Sampler Patch's tiled sampling evaluates up to `tileBatch` same-size tiles, twice that
// when CFG > 1 (cond + uncond batched together); the largest call of the plan is returned.
export const SD3_MEMORY_FACTOR = 1.2
export function tileBatchMemory(tiles, tileBatch, cfg = 1, dtypeBytes = 2, flash = true) {
  const b = Math.max(1, Math.floor(tileBatch) || 1)
  let area = 0, calls = 0, most = 0
  for (let s = 0; s < tiles.length; s += b) {
    const groups = new Map() // same-size tiles of a chunk go through the model together
    for (const t of tiles.slice(s, s + b)) {
      const k = `${t.height}x${t.width}`
      const g = groups.get(k) || { n: 0, area: 0 }
      groups.set(k, { n: g.n + 1, area: g.area + t.height * t.width })
    }
    for (const g of groups.values()) {
      if (g.area > area) [area, most] = [g.area, g.n]
      calls += 1
    }
  }
  const batch = cfg > 1 ? 2 : 1
  const perPx = flash ? dtypeBytes * 0.01 * SD3_MEMORY_FACTOR : 0.15 * SD3_MEMORY_FACTOR
  return { mib: batch * area * perPx, latentPx: batch * area, tilesPerCall: most, callsPerStep: calls, cfgBatch: batch }
}
