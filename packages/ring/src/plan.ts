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
 * Pipeline plan: contiguous layer ranges in ring order, sized by each member's capacity. Members
 * that would get no layer (more members than layers) are left out of the plan.
 */
export function planPipeline(members: readonly PlanMember[], model: PlanModel): PipelineShard[] {
  if (members.length === 0) throw new ShardPlanError('no live member to plan on')
  const used = members.slice(0, Math.min(members.length, model.layers))
  const shares = apportion(
    model.layers,
    used.map((m) => m.capacityBytes),
  )
  const plan = used.map((m, i) => ({ nodeId: m.nodeId, layers: toRanges(shares)[i]! }))
  for (const [i, shard] of plan.entries()) {
    const outside =
      i === 0 || i === plan.length - 1 ? (model.bytesOutsideLayers ?? 0) / (plan.length === 1 ? 1 : 2) : 0
    const need = (shard.layers[1] - shard.layers[0]) * model.bytesPerLayer + outside
    if (need > used[i]!.capacityBytes) {
      const total = model.layers * model.bytesPerLayer + (model.bytesOutsideLayers ?? 0)
      const offered = used.reduce((sum, m) => sum + m.capacityBytes, 0)
      throw new ShardPlanError(
        `the model needs about ${mib(total)} but the ring offers ${mib(offered)}: ${shard.nodeId} would need ${mib(need)} and offers ${mib(used[i]!.capacityBytes)}`,
        'add members, give members more memory, or use a smaller or more quantized model',
      )
    }
  }
  return plan
}

/**
 * Tensor-parallel plan: every member computes a share of the query heads (in whole `headUnit`s)
 * and of the FFN columns (in whole `ffnUnit`s) of every layer; partial outputs are summed.
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
  const count = Math.min(members.length, headUnits, ffnUnits)
  const used = members.slice(0, count)
  const weights = used.map((m) => m.capacityBytes)
  const headRanges = toRanges(apportion(headUnits, weights))
  const ffnRanges = toRanges(apportion(ffnUnits, weights))
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
