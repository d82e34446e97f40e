// Links across subgraph boundaries (frontend 1.2x+; docs/subgraphs.md). No side effects: the server loads every
// .js under web/ as an extension.
//
// Inside a subgraph, a link from the subgraph's input slot k starts at its input node (id -10; 1.5x keeps node ids
// as strings, '-10') and continues at input k of the subgraph node in the parent graph. A link from an output of a
// subgraph node continues inside at the link that feeds the subgraph's output node.

const fromSubgraphInput = (link) => link != null && String(link.origin_id) === '-10'

// The link into input `slot` of `node`; null when unconnected or while the node is not in a graph.
export function inputLink(node, slot) {
  if (slot == null || slot < 0 || !node?.graph) return null
  if (node.isSubgraphNode?.()) { // its own getInputLink answers for the inner side
    const id = node.inputs?.[slot]?.link
    return id == null ? null : node.graph.links?.get?.(id) ?? node.graph.links?.[id] ?? null
  }
  return node.getInputLink?.(slot) ?? null
}

// The subgraph node whose subgraph is `graph` (the first one found, when the definition is used more than once).
export function subgraphHost(graph) {
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

// Where `link` (in `graph`) really comes from when its origin is a subgraph boundary: {graph, link} one step
// further (null link: nothing connected there), or null when its origin is an ordinary node.
export function crossBoundary(graph, link) {
  if (fromSubgraphInput(link)) {
    const host = subgraphHost(graph)
    return { graph: host?.graph, link: host ? inputLink(host, link.origin_slot) : null }
  }
  const src = graph.getNodeById?.(link.origin_id)
  if (!src?.isSubgraphNode?.()) return null
  const inner = src.subgraph?.outputNode?.slots?.[link.origin_slot]?.getLinks?.()?.[0]
  return { graph: src.subgraph, link: inner ?? null }
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
  return node?.widgets?.find((w) => w.name === name)?.value
}
