import { InvalidArgumentError, parseWith } from '@meshnet/core'
import {
  type LlamaConfig,
  readLlamaConfig,
  resolveSpec,
  SUPPORTED_WEIGHT_TYPES,
  sessionBytes,
  UnsupportedModelError,
} from '@meshnet/engine'
import { findGGMLType, openGGUF, readLlamaHyperparameters } from '@meshnet/gguf'
import { z } from 'zod'

const index = z
  .number()
  .int()
  .min(0)
  .max(1 << 24)
const range = z
  .tuple([index, index])
  .readonly()
  .refine(([a, b]) => a <= b, 'must be [start, end) with start <= end')
const addrs = z.array(z.string().min(1).max(512)).max(16).optional()
const nodeId = z.string().min(1).max(128)

/**
 * How a model is split over ring members, in ring order. The shapes are those of `@meshnet/ring`'s
 * `planPipeline` (`{ nodeId, layers }`) and `planTensor` (`{ nodeId, heads, ffn }`, its `kvHeads`
 * ignored), plus optional multiaddrs other members may dial (default: their peer stores').
 */
export const shardedPlanSchema = z.discriminatedUnion('mode', [
  z.object({
    mode: z.literal('pipeline'),
    shards: z
      .array(z.object({ nodeId, layers: range, addrs }))
      .min(1)
      .max(64),
  }),
  z.object({
    mode: z.literal('tensor'),
    shards: z
      .array(z.object({ nodeId, heads: range, ffn: range, addrs }))
      .min(1)
      .max(64),
  }),
])

export type ShardedPlan = z.input<typeof shardedPlanSchema>
export type ParsedShardedPlan = z.output<typeof shardedPlanSchema>

/** Checks a plan's shape: layer ranges (or head and FFN ranges) that follow each other from 0. */
export function parseShardedPlan(plan: unknown): ParsedShardedPlan {
  const parsed = parseWith(shardedPlanSchema, plan, 'sharded plan')
  const p = parsed
  const ids = p.shards.map((s) => s.nodeId)
  if (new Set(ids).size !== ids.length) {
    throw new InvalidArgumentError(`sharded plan names a member twice: ${ids.join(', ')}`)
  }
  const contiguous = (ranges: ReadonlyArray<readonly [number, number]>, what: string) => {
    let at = 0
    for (const [a, b] of ranges) {
      if (a !== at)
        throw new InvalidArgumentError(
          `sharded plan: ${what} ranges must follow each other from 0 (gap or overlap at ${at})`,
        )
      at = b
    }
  }
  if (p.mode === 'pipeline')
    contiguous(
      p.shards.map((s) => s.layers),
      'layer',
    )
  else {
    contiguous(
      p.shards.map((s) => s.heads),
      'head',
    )
    contiguous(
      p.shards.map((s) => s.ffn),
      'FFN column',
    )
  }
  return p
}

/** End of a plan's ranges (layers for a pipeline, heads and FFN columns for tensor parallel). */
export function planCoverage(plan: ParsedShardedPlan): { layers?: number; heads?: number; ffn?: number } {
  if (plan.mode === 'pipeline') return { layers: plan.shards.at(-1)!.layers[1] }
  return { heads: plan.shards.at(-1)!.heads[1], ffn: plan.shards.at(-1)!.ffn[1] }
}

/**
 * What planning needs to know about a model, read from its GGUF: the fields of `@meshnet/ring`'s
 * `PlanModel` (pass it to `planPipeline`/`planTensor` as it is) and the sizes `chooseShardedMode`
 * weighs.
 */
export interface ShardModelFacts {
  layers: number
  heads: number
  kvHeads: number
  ff: number
  embd: number
  vocab: number
  headDim: number
  trainContext: number
  /** Bytes of the largest transformer block. */
  bytesPerLayer: number
  /** Embedding, output norm and output projection. */
  bytesOutsideLayers: number
  /** Every tensor. */
  totalBytes: number
  /** Heads per tensor-parallel unit so that `attn_output` slices stay whole quant blocks. */
  headUnit: number
  /** FFN columns per tensor-parallel unit (the block of `ffn_down`'s type). */
  ffnUnit: number
  /** KV cache bytes per position of context, every layer, f16 (llama.cpp's default). */
  kvBytesPerPosition: number
  /** The token embedding (held by a pipeline's first member). */
  embedBytes: number
  /** The output norm and projection (held by a pipeline's last member; the embedding when tied). */
  headBytes: number
  /** The context plans are made for: the training context, at most 4096 (the jobs' default). */
  contextSize: number
  /** KV cache bytes of one layer for `contextSize` positions. */
  kvBytesPerLayer: number
  /** What every member keeps back from its offer: `PROCESS_RESERVE_BYTES` plus the forward pass's scratch. */
  reserveBytes: number
  /**
   * Why the Meshnet engine cannot run this model (an architecture or weight type it does not have),
   * so the ring cannot split it; absent when it can. Such a model runs on one member's llama.cpp.
   */
  unsplittable?: string
}

/**
 * What a member's own process takes besides shards and KV caches (Node.js, libp2p, the store),
 * kept out of its offered memory when planning, so that the process stays within its offer.
 */
export const PROCESS_RESERVE_BYTES = 384 * 2 ** 20

/** The context plans are made for, at most (the jobs' default context). */
const PLAN_CONTEXT = 4096

export async function readShardModelFacts(path: string): Promise<ShardModelFacts> {
  const file = await openGGUF(path)
  try {
    let config: Pick<
      LlamaConfig,
      'layers' | 'heads' | 'kvHeads' | 'ff' | 'embd' | 'vocab' | 'headDim' | 'trainContext'
    >
    let unsplittable: string | undefined
    let scratch = 0
    try {
      const full = readLlamaConfig(file)
      config = full
      scratch = sessionBytes(full, resolveSpec(full, { embed: true, head: true }), {
        contextSize: 1,
        kvCacheType: 'f16',
        maxBatch: 64,
      }).scratchBytes
      const odd = file.tensors.find((t) => t.dims.length > 1 && !SUPPORTED_WEIGHT_TYPES.has(t.typeName))
      if (odd)
        unsplittable = `tensor '${odd.name}' is ${odd.typeName}, which the Meshnet engine does not compute with`
    } catch (err) {
      if (!(err instanceof UnsupportedModelError)) throw err
      // What llama.cpp reads of any architecture, for planning a whole-model run on one member.
      const h = readLlamaHyperparameters(file)
      config = {
        layers: h.blockCount,
        heads: h.headCount,
        kvHeads: h.headCountKv,
        ff: h.feedForwardLength,
        embd: h.embeddingLength,
        vocab: h.vocabSize,
        headDim: file.getNumber(`${h.architecture}.attention.key_length`) ?? h.headDim,
        trainContext: h.contextLength,
      }
      unsplittable = err.shortMessage
    }
    const perLayer = new Map<number, number>()
    let outside = 0
    let total = 0
    for (const t of file.tensors) {
      total += t.byteLength
      const m = /^blk\.(\d+)\./.exec(t.name)
      if (m) perLayer.set(Number(m[1]), (perLayer.get(Number(m[1])) ?? 0) + t.byteLength)
      else outside += t.byteLength
    }
    const bytesOf = (name: string) => file.tensor(name)?.byteLength ?? 0
    const embedBytes = bytesOf('token_embd.weight')
    const headBytes =
      bytesOf('output_norm.weight') + (file.tensor('output.weight') ? bytesOf('output.weight') : embedBytes)
    const contextSize = Math.min(config.trainContext, PLAN_CONTEXT)
    const kvBytesPerPosition = config.kvHeads * config.headDim * config.layers * 2 * 2
    const block = (name: string) => findGGMLType(file.tensor(name)?.type ?? 0)?.blockSize ?? 1
    const outBlock = block('blk.0.attn_output.weight')
    const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b))
    return {
      layers: config.layers,
      heads: config.heads,
      kvHeads: config.kvHeads,
      ff: config.ff,
      embd: config.embd,
      vocab: config.vocab,
      headDim: config.headDim,
      trainContext: config.trainContext,
      bytesPerLayer: Math.max(0, ...perLayer.values()),
      bytesOutsideLayers: outside,
      totalBytes: total,
      headUnit: outBlock / gcd(outBlock, config.headDim),
      ffnUnit: block('blk.0.ffn_down.weight'),
      kvBytesPerPosition,
      embedBytes,
      headBytes,
      contextSize,
      kvBytesPerLayer: Math.ceil((kvBytesPerPosition * contextSize) / Math.max(1, config.layers)),
      reserveBytes: PROCESS_RESERVE_BYTES + scratch,
      ...(unsplittable === undefined ? {} : { unsplittable }),
    }
  } finally {
    await file.close()
  }
}

export type ShardedModeChoice =
  | { mode: 'single'; nodeId: string; reason: string }
  | { mode: 'pipeline' | 'tensor'; reason: string }
  /** The model cannot be split (`unsplittable`) and no member can hold it whole, or a split was asked for. */
  | { mode: 'none'; reason: string }

/**
 * Where a model should run: on one member when one can hold it whole (weights and KV cache for
 * `contextSize` with a 10% margin, plus what the member keeps for its process: `reserveBytes`) — the caller then runs its local engine there, e.g.
 * node-llama-cpp — otherwise split over the ring, as a pipeline unless `mode: 'tensor'` asks for
 * tensor parallelism. With `mode: 'pipeline' | 'tensor'` the model is split even when it would fit.
 */
export function chooseShardedMode(input: {
  members: ReadonlyArray<{ nodeId: string; capacityBytes: number }>
  model: ShardModelFacts
  contextSize: number
  mode?: 'auto' | 'pipeline' | 'tensor'
  /** Chosen when it can hold the model (usually the coordinator's own node). */
  preferNodeId?: string
}): ShardedModeChoice {
  const mode = input.mode ?? 'auto'
  const unsplittable = input.model.unsplittable
  if (mode !== 'auto') {
    if (unsplittable !== undefined) return { mode: 'none', reason: `cannot run ${mode}: ${unsplittable}` }
    return { mode, reason: `${mode} asked for` }
  }
  const need =
    input.model.reserveBytes +
    Math.ceil((input.model.totalBytes + input.model.kvBytesPerPosition * input.contextSize) * 1.1)
  const fits = input.members.filter((m) => m.capacityBytes >= need)
  const preferred = fits.find((m) => m.nodeId === input.preferNodeId)
  const best = preferred ?? [...fits].sort((a, b) => b.capacityBytes - a.capacityBytes)[0]
  if (best !== undefined) {
    return {
      mode: 'single',
      nodeId: best.nodeId,
      reason: `${best.nodeId} offers ${mib(best.capacityBytes)}, enough for the whole model (${mib(need)})`,
    }
  }
  if (unsplittable !== undefined) {
    return {
      mode: 'none',
      reason: `no single member offers the ${mib(need)} the whole model needs, and it cannot be split: ${unsplittable}`,
    }
  }
  return {
    mode: 'pipeline',
    reason: `no single member offers the ${mib(need)} the whole model needs; split by layers over ${input.members.length} members`,
  }
}

function mib(bytes: number): string {
  return `${Math.ceil(bytes / 2 ** 20)} MiB`
}
