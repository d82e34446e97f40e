// The text a DPIR prompt node produced, shown on the node after a run: the captions of DPIR Caption (with the
// warning when one was cut to fit T5's 256 tokens), the texts of DPIR Restoration Prompt, and the prompt DPIR T5
// Text Prompt encoded (prefix + caption + suffix), and the
// whole-image or tiled VAE pass the VAE nodes chose. Read-only; never saved with the workflow.
import { app } from '../../../scripts/app.js'
import { addPanel, el, ensureSize, extendMethod, register } from './dpir_dom.js'

const NODES = ['DPIRCaption', 'DPIRRestorationPrompt', 'DPIRT5TextPrompt', 'DPIRRobustVAEEncode', 'DPIRRobustVAEDecode',
  'DPIRVAEDecode']

function show(node, message) {
  const texts = [].concat(message?.text ?? [])
  if (!texts.length) return
  if (!node.dpirText) {
    const warning = el('div', { className: 'dpir-text-warning', style: { color: '#e8a33d', fontSize: '11px' } })
    const body = el('div', {
      className: 'dpir-text',
      style: { whiteSpace: 'pre-wrap', overflowY: 'auto', fontSize: '12px', padding: '4px',
        background: 'rgba(0,0,0,0.25)', borderRadius: '4px', userSelect: 'text', maxHeight: '100%' }
    })
    addPanel(node, 'dpir_text', el('div', { style: { display: 'flex', flexDirection: 'column', gap: '2px' } },
      [warning, body]), 60)
    node.dpirText = { warning, body }
  }
  const warn = [].concat(message?.warning ?? []).filter(Boolean).join(' ')
  node.dpirText.warning.textContent = warn
  node.dpirText.body.textContent = texts.length > 1 ? texts.map((t, i) => `${i + 1}. ${t}`).join('\n\n') : texts[0]
  ensureSize(node, 320, 0)
}

register(app, {
  name: 'DPIR.TextView',
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.includes(nodeData.name)) return
    extendMethod(nodeType, 'onExecuted', (node, message) => show(node, message))
  }
})
