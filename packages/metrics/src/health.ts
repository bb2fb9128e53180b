import type { FetchProgressState, ModelState, RingMemberState, RingState } from './source.ts'

/** What readiness is judged on: the served model, the rings this node is in, the fetch under way. */
export interface HealthInput {
  /** The served model; undefined when the agent serves none. */
  model: ModelState | undefined
  rings: readonly RingState[]
  fetch?: FetchProgressState | undefined
}

/** The body of `GET /health`. */
export interface HealthReport {
  /** True when this node can run a job now, with nothing left to load or agree on. */
  ready: boolean
  /** What is not ready, in plain words, one line each; empty when ready. */
  missing: string[]
  model: ModelState | null
  rings: Array<{ poolId: string; epoch: number; converged: boolean; ready: boolean; members: number }>
}

/**
 * Whether a node is ready to serve: every ring it is in has converged, and every member the ring's
 * plan gives a shard reports that shard loaded (a ring planned onto one member runs jobs on the
 * whole model instead); the served model is known, and whole when a job runs on it whole here (no
 * ring, or a ring of one). A node with no ring and a whole model is ready; one serving no model is not.
 */
export function healthOf(input: HealthInput): HealthReport {
  const { model, rings, fetch } = input
  const missing: string[] = []
  if (model === undefined) missing.push('this agent serves no model (start it with --model)')
  else if (!model.known) missing.push(`model ${model.name} waiting for its manifest from pool members`)
  let needsWhole = rings.length === 0
  for (const ring of rings) {
    const before = missing.length
    const members = ring.members.length
    if (!ring.converged) {
      const agreeing = ring.members.filter((m) => reportsOurs(ring, m)).length
      missing.push(
        `ring ${ring.poolId} not converged (${agreeing} of ${members} members report epoch ${ring.epoch})`,
      )
      continue
    }
    if (ring.planProblem !== undefined) {
      missing.push(`ring ${ring.poolId} has no plan: ${ring.planProblem}`)
      continue
    }
    const planned = ring.members.filter((m) => m.shard !== null)
    if (planned.length === 0) {
      // Without a known model there is nothing to plan, and that is said above.
      if (model?.known) missing.push(`ring ${ring.poolId} has no plan for model ${model.name} yet`)
      continue
    }
    // A plan of one member: its jobs run on the whole model (llama.cpp), nothing is preloaded.
    if (planned.length === 1) {
      needsWhole = true
      continue
    }
    for (const member of planned) {
      if (member.shard!.load !== 'ready') missing.push(shardLine(member))
    }
    if (missing.length === before && !ring.ready) missing.push(`ring ${ring.poolId} not ready`)
  }
  if (needsWhole && model?.known === true && !model.whole) {
    missing.push(
      fetch !== undefined && fetch.model === model.id
        ? `model ${model.name} fetching ${bytesPair(fetch.doneBytes, fetch.totalBytes)}`
        : `model ${model.name} incomplete: some of its chunks are not on this node`,
    )
  }
  return {
    ready: missing.length === 0,
    missing,
    model: model ?? null,
    rings: rings.map((r) => ({
      poolId: r.poolId,
      epoch: r.epoch,
      converged: r.converged,
      ready: r.ready,
      members: r.members.length,
    })),
  }
}

function reportsOurs(ring: RingState, member: RingMemberState): boolean {
  const reports = member.reports
  if (reports === undefined || reports.epoch !== ring.epoch) return false
  return ring.digest === undefined || reports.digest === undefined || reports.digest === ring.digest
}

function shardLine(member: RingMemberState): string {
  const shard = member.shard!
  const who = `shard of ${shortId(member.nodeId)}`
  const bytes = shard.bytes ?? 0
  const loaded = shard.loadedBytes ?? 0
  const percent = bytes > 0 ? Math.floor((Math.min(loaded, bytes) / bytes) * 100) : 0
  switch (shard.load) {
    case 'pending':
      return `${who} (layers ${shard.layers[0]}–${shard.layers[1]}) not announced yet`
    case 'fetching':
      return `${who} fetching ${percent}% (${bytesPair(loaded, bytes)})`
    case 'loading':
      return `${who} loading ${percent}%`
    case 'failed':
      return `${who} failed to load${shard.error ? `: ${shard.error}` : ''}`
    default:
      return `${who} ${shard.load}`
  }
}

/** `12D3…abcd`: enough of a node id to tell members apart in a line. */
function shortId(id: string): string {
  return id.length > 12 ? `${id.slice(0, 4)}…${id.slice(-4)}` : id
}

/** `2.1 of 5.0 GB`, in the unit of the total. */
function bytesPair(done: number, total: number): string {
  const units: Array<[number, string]> = [
    [1e9, 'GB'],
    [1e6, 'MB'],
    [1e3, 'kB'],
  ]
  const [scale, unit] = units.find(([s]) => total >= s) ?? [1, 'B']
  const show = (n: number) => (scale === 1 ? String(n) : (n / scale).toFixed(1))
  return `${show(done)} of ${show(total)} ${unit}`
}
