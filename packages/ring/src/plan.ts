import { MeshError } from '@meshnet/core'

/** The ring cannot hold or split the model as asked. */
export class ShardPlanError extends MeshError {
  override name = 'ShardPlanError' as const
  constructor(message: string, hint?: string) {
    super('ERR_SHARD_PLAN', message, hint === undefined ? {} : { hint })
  }
}

/** A ring member as planning sees it, in ring order. */
export interface PlanMember {
  nodeId: string
  /** Bytes of memory the member offers for model weights and caches. */
  capacityBytes: number
}

/** The model facts planning needs (from GGUF metadata). */
export interface PlanModel {
  layers: number
  heads: number
  kvHeads: number
  ff: number
  /** Bytes of weights per transformer block (used to check capacity). */
  bytesPerLayer: number
  /** Bytes outside the blocks (embeddings, output) held by the first and last pipeline member. */
  bytesOutsideLayers?: number
  /** Bytes of the token embedding, which the first pipeline member holds. Default: half the outside bytes. */
  embedBytes?: number
  /** Bytes of the output norm and projection, which the last pipeline member holds. Default: half the outside bytes. */
  headBytes?: number
  /** KV cache bytes of one layer for the context plans are made for. Default 0. */
  kvBytesPerLayer?: number
  /** Context (positions) `kvBytesPerLayer` is for, named in messages. */
  contextSize?: number
  /**
   * Bytes every member keeps out of what it offers: the process itself (runtime, libp2p) and the
   * forward pass's scratch. Default 0.
   */
  reserveBytes?: number
  /** Heads per tensor-parallel unit: slices of attention must stay whole quant blocks. Default 1. */
  headUnit?: number
  /** FFN columns per tensor-parallel unit (the weight type's block size, 32 or 256). Default 32. */
  ffnUnit?: number
}

/** Half-open range [start, end). */
export type Range = readonly [start: number, end: number]

export interface PipelineShard {
  nodeId: string
  layers: Range
}

export interface TensorShard {
  nodeId: string
  /** Query heads this member computes. */
  heads: Range
  /** KV heads it needs for those query heads (neighbours may share one under GQA). */
  kvHeads: Range
  /** FFN columns of gate/up (and input columns of down) it computes. */
  ffn: Range
}

/**
 * Splits `total` units among weights by the largest-remainder method so that shares are
 * proportional to the weights and sum to `total`. With `atLeastOne`, every weight gets one unit
 * first (when there are enough units).
 */
export function apportion(total: number, weights: readonly number[], atLeastOne = true): number[] {
  if (!Number.isInteger(total) || total < 0)
    throw new RangeError(`total must be a whole number ≥ 0, got ${total}`)
  if (weights.length === 0) return []
  if (weights.some((w) => !(w > 0) || !Number.isFinite(w))) throw new RangeError('every weight must be > 0')
  const base = atLeastOne && total >= weights.length ? 1 : 0
  const rest = total - base * weights.length
  const sum = weights.reduce((a, b) => a + b, 0)
  const exact = weights.map((w) => (rest * w) / sum)
  const shares = exact.map((x) => base + Math.floor(x))
  let left = total - shares.reduce((a, b) => a + b, 0)
  // Largest remainders first; ties go to the earlier member (ring order), so every node agrees.
  const order = exact
    .map((x, i) => [x - Math.floor(x), i] as const)
    .sort((a, b) => b[0] - a[0] || a[1] - b[1])
  for (const [, i] of order) {
    if (left === 0) break
    shares[i]!++
    left--
  }
  return shares
}

function toRanges(shares: number[]): Range[] {
  let start = 0
  return shares.map((n) => {
    const range = [start, start + n] as const
    start += n
    return range
  })
}

/**
 * Pipeline plan: contiguous layer ranges in ring order, weighted by what each member can hold —
 * its offered memory net of `reserveBytes`, of the embedding (first member) or the output head
 * (last member), with every layer costing its weights plus its KV cache — and never more layers
 * than that. Members that can hold no layer, and members beyond the number of layers, are left
 * out. A ring that cannot hold the model is refused with what it needs and what each member offers.
 */
export function planPipeline(members: readonly PlanMember[], model: PlanModel): PipelineShard[] {
  if (members.length === 0) throw new ShardPlanError('no live member to plan on')
  const perLayer = model.bytesPerLayer + (model.kvBytesPerLayer ?? 0)
  const outside = model.bytesOutsideLayers ?? 0
  const embed = model.embedBytes ?? outside / 2
  const head = model.headBytes ?? outside / 2
  const reserve = model.reserveBytes ?? 0
  /** Layers `m` can hold when it is first and/or last of the plan. */
  const room = (m: PlanMember, first: boolean, last: boolean) =>
    Math.max(0, Math.floor((m.capacityBytes - reserve - (first ? embed : 0) - (last ? head : 0)) / perLayer))
  // Leave out members that cannot hold a layer in the middle of the ring; then the ends take their
  // extra tensors, and an end member that cannot take them is left out too.
  let used = members.filter((m) => room(m, false, false) > 0)
  for (let changed = true; changed && used.length > 0; ) {
    changed = false
    const n = used.length
    const keep = used.filter((m, i) => room(m, i === 0, i === n - 1) > 0)
    if (keep.length < n) {
      used = keep
      changed = true
    }
  }
  used = used.slice(0, Math.min(used.length, model.layers))
  const caps = used.map((m, i) => room(m, i === 0, i === used.length - 1))
  const total = caps.reduce((a, b) => a + b, 0)
  if (used.length === 0 || total < model.layers) throw shortfall(members, model)
  const shares = cappedApportion(model.layers, caps)
  const ranges = toRanges(shares)
  return used
    .map((m, i) => ({ nodeId: m.nodeId, layers: ranges[i]! }))
    .filter((s) => s.layers[1] > s.layers[0])
}

/**
 * Splits `total` units in proportion to `caps`, no share above its cap (the caps sum to at least
 * `total`): shares over their cap are cut to it and the rest goes to the others, as `apportion` does.
 */
function cappedApportion(total: number, caps: readonly number[]): number[] {
  const shares = caps.map(() => 0)
  let open = caps.map((_, i) => i)
  let left = total
  while (left > 0 && open.length > 0) {
    const trial = apportion(
      left,
      open.map((i) => caps[i]! - shares[i]!),
    )
    const over = open.filter((i, k) => shares[i]! + trial[k]! > caps[i]!)
    if (over.length === 0) {
      open.forEach((i, k) => {
        shares[i]! += trial[k]!
      })
      break
    }
    for (const i of over) {
      left -= caps[i]! - shares[i]!
      shares[i] = caps[i]!
    }
    open = open.filter((i) => !over.includes(i))
  }
  return shares
}

/** The refusal of a ring too small for the model: what it needs, what each member offers and holds. */
function shortfall(members: readonly PlanMember[], model: PlanModel): ShardPlanError {
  const kv = (model.kvBytesPerLayer ?? 0) * model.layers
  const weights = model.layers * model.bytesPerLayer + (model.bytesOutsideLayers ?? 0)
  const reserve = model.reserveBytes ?? 0
  const need = weights + kv + reserve * Math.min(members.length, model.layers)
  const offered = members.reduce((sum, m) => sum + m.capacityBytes, 0)
  const perLayer = model.bytesPerLayer + (model.kvBytesPerLayer ?? 0)
  const each = members
    .map((m) => {
      const layers = Math.max(0, Math.floor((m.capacityBytes - reserve) / perLayer))
      return `${m.nodeId} offers ${mib(m.capacityBytes)} (room for about ${layers} of ${model.layers} layers)`
    })
    .join('; ')
  const context = model.contextSize === undefined ? '' : ` for ${model.contextSize} positions`
  const parts = [`weights ${mib(weights)}`]
  if (kv > 0) parts.push(`KV cache ${mib(kv)}${context}`)
  if (reserve > 0) parts.push(`${mib(reserve)} per member for the process`)
  return new ShardPlanError(
    `the model needs about ${mib(need)} (${parts.join(', ')}) but the ring offers ${mib(offered)}, ${mib(Math.max(0, need - offered))} short: ${each}`,
    'add members, give members more memory (mesh start --memory), or use a smaller or more quantized model',
  )
}

/**
 * Tensor-parallel plan: every member computes a share of the query heads (in whole `headUnit`s)
 * and of the FFN columns (in whole `ffnUnit`s) of every layer; partial outputs are summed. Shares
 * are weighted by what each member offers past its reserve and the embedding (which every member
 * holds); a ring whose members cannot hold their shares is refused as `planPipeline` refuses it.
 */
export function planTensor(members: readonly PlanMember[], model: PlanModel): TensorShard[] {
  if (members.length === 0) throw new ShardPlanError('no live member to plan on')
  const headUnit = model.headUnit ?? 1
  const ffnUnit = model.ffnUnit ?? 32
  if (model.heads % headUnit !== 0) {
    throw new ShardPlanError(`${model.heads} heads do not split into units of ${headUnit}`)
  }
  if (model.ff % ffnUnit !== 0)
    throw new ShardPlanError(`FFN width ${model.ff} is not a multiple of ${ffnUnit}`)
  const headUnits = model.heads / headUnit
  const ffnUnits = model.ff / ffnUnit
  // Every member embeds; the layers, their KV cache and the output head are shared out.
  const fixed = (model.reserveBytes ?? 0) + (model.embedBytes ?? (model.bytesOutsideLayers ?? 0) / 2)
  const shared =
    model.layers * (model.bytesPerLayer + (model.kvBytesPerLayer ?? 0)) +
    (model.headBytes ?? (model.bytesOutsideLayers ?? 0) / 2)
  const able = members.filter((m) => m.capacityBytes > fixed)
  const count = Math.min(able.length, headUnits, ffnUnits)
  const used = able.slice(0, count)
  if (used.length === 0) throw shortfall(members, model)
  const weights = used.map((m) => m.capacityBytes - fixed)
  const headShares = apportion(headUnits, weights)
  const ffnShares = apportion(ffnUnits, weights)
  // A member's part of the layers follows its share of the FFN columns (most of a layer's bytes).
  if (used.some((m, i) => fixed + (shared * ffnShares[i]!) / ffnUnits > m.capacityBytes)) {
    throw shortfall(members, model)
  }
  const headRanges = toRanges(headShares)
  const ffnRanges = toRanges(ffnShares)
  const group = model.heads / model.kvHeads
  return used.map((m, i) => {
    const heads = [headRanges[i]![0] * headUnit, headRanges[i]![1] * headUnit] as const
    return {
      nodeId: m.nodeId,
      heads,
      kvHeads: [Math.floor(heads[0] / group), Math.ceil(heads[1] / group)] as const,
      ffn: [ffnRanges[i]![0] * ffnUnit, ffnRanges[i]![1] * ffnUnit] as const,
    }
  })
}

function mib(bytes: number): string {
  return `${Math.ceil(bytes / 2 ** 20)} MiB`
}
