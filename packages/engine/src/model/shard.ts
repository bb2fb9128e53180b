import { open } from 'node:fs/promises'
import { parseWith } from '@meshnet/core'
import { type GGUFReader, openGGUF } from '@meshnet/gguf'
import { z } from 'zod'
import { InvalidShardError } from '../errors.ts'
import type { Kernels } from '../kernels/api.ts'
import { type LlamaConfig, readLlamaConfig } from './config.ts'
import { LlamaShardImpl } from './llama-shard.ts'
import type { LayerWeights, LlamaShard, ShardPlan, ShardRanges } from './shard-types.ts'
import { type Matrix, WeightLoader } from './weights.ts'

const index = z
  .number()
  .int()
  .min(0)
  .max(1 << 24)
export const range = z
  .tuple([index, index])
  .refine(([a, b]) => a <= b, 'must be [start, end) with start <= end')

export const loadShardOptionsSchema = z.strictObject({
  /** The GGUF file. */
  path: z.string().min(1),
  /** Layers `[a, b)` this shard runs. Default: all of them. */
  layers: range.optional(),
  /**
   * Tensor-parallel slice: query heads `[h0, h1)` (with the KV heads they read) and FFN columns
   * `[f0, f1)`. The shard's attention and FFN outputs are then partial sums; the shards of one
   * group must partition both ranges, and `forward` needs an `allReduce`. Default: all columns.
   */
  columns: z.strictObject({ heads: range, ffn: range }).optional(),
  /** Load `token_embd` and accept token ids. Default: when the range starts at layer 0. */
  embed: z.boolean().optional(),
  /** Load the output norm and projection and return logits. Default: when the range ends at the last layer. */
  head: z.boolean().optional(),
  /**
   * Positions the KV cache holds; it is allocated in kernel memory when the shard loads (2 · layers ·
   * contextSize · KV heads · headDim values). Default: the training context, at most 4096.
   */
  contextSize: z
    .number()
    .int()
    .min(1)
    .max(1 << 20)
    .optional(),
  /** KV cache element type. f16 is what llama.cpp uses by default. */
  kvCacheType: z.enum(['f16', 'f32']).default('f16'),
  /** Positions per batch of a prompt (one matmul per weight per batch). */
  maxBatch: z.number().int().min(1).max(4096).default(64),
  /** Override the RoPE layout (llama uses 'normal'; 'neox' rotates the two halves of a head). */
  ropeType: z.enum(['normal', 'neox']).optional(),
})

export type LoadShardOptions = z.input<typeof loadShardOptionsSchema> & {
  /** Where weights live and matrices are multiplied. */
  kernels: Kernels
  signal?: AbortSignal
}

/**
 * Loads the part of a llama GGUF one node runs: layers `[a, b)`, and optionally only query heads
 * `[h0, h1)` and FFN columns `[f0, f1)` of them (tensor parallel). Only the tensors and rows the
 * shard needs are read, straight into kernel memory:
 *
 * - `attn_q` rows `[h0·d, h1·d)`, `attn_k`/`attn_v` rows of the KV heads those query heads read
 *   (with GQA a KV head may be computed by more than one shard), `ffn_gate`/`ffn_up` rows `[f0, f1)`;
 * - `attn_output` columns `[h0·d, h1·d)` and `ffn_down` columns `[f0, f1)`: ggml stores a weight as
 *   rows = outputs, so these slices cut inside every row. When a slice starts and ends on a block
 *   boundary (32 elements, 256 for K-quants) each row's byte range is read as it is; otherwise the
 *   rows are dequantized and the slice is kept as F32 (exact, but 4 bytes per weight).
 */
export async function loadShard(options: LoadShardOptions): Promise<LlamaShard> {
  const { kernels, signal, ...rest } = options
  const parsed = parseWith(loadShardOptionsSchema, rest, 'loadShard option')
  const opts = parsed
  const file = await openGGUF(opts.path)
  const handle = await open(opts.path, 'r').catch(async (err: unknown) => {
    await file.close()
    throw err
  })
  let loader: WeightLoader | undefined
  try {
    const config = readLlamaConfig(file)
    if (opts.ropeType) config.ropeType = opts.ropeType
    const plan = planShard(config, opts)
    loader = new WeightLoader(file, handle, kernels, signal)
    const { layers, embedding, head, freqFactors } = await loadShardTensors(file, loader, config, plan)
    return new LlamaShardImpl({
      config,
      plan,
      kernels,
      layers,
      embedding,
      head,
      freqFactors,
      weightBytes: loader.bytes,
      buffers: loader.allocated,
      maxBatch: opts.maxBatch,
      kvCacheType: opts.kvCacheType,
    })
  } catch (err) {
    for (const buf of loader?.allocated ?? []) kernels.free(buf)
    throw err
  } finally {
    await handle.close()
    await file.close()
  }
}

/** A shard's resolved ranges. */
/** Weights of a shard's layers, head and embedding, read through `loader` (only the rows and columns the plan names). */
export async function loadShardTensors(
  file: GGUFReader,
  loader: WeightLoader,
  config: LlamaConfig,
  plan: Pick<ShardPlan, 'layers' | 'heads' | 'kvHeads' | 'ffn' | 'embed' | 'head'>,
): Promise<{
  layers: LayerWeights[]
  embedding: Matrix | undefined
  head: { norm: Float32Array; output: Matrix } | undefined
  freqFactors: Float32Array | undefined
}> {
  const { embd, headDim: d, vocab } = config
  const qRows = config.heads * d
  const kvRows = config.kvHeads * d
  const layers: LayerWeights[] = []
  for (let l = plan.layers[0]; l < plan.layers[1]; l++) {
    const b = `blk.${l}`
    const [h0, h1] = plan.heads
    const [kv0, kv1] = plan.kvHeads
    const [f0, f1] = plan.ffn
    layers.push({
      attnNorm: await loader.vector(`${b}.attn_norm.weight`, embd),
      wq: loader.packed(await loader.rows(`${b}.attn_q.weight`, embd, qRows, h0 * d, h1 * d)),
      wk: loader.packed(await loader.rows(`${b}.attn_k.weight`, embd, kvRows, kv0 * d, kv1 * d)),
      wv: loader.packed(await loader.rows(`${b}.attn_v.weight`, embd, kvRows, kv0 * d, kv1 * d)),
      wo: loader.packed(await loader.columns(`${b}.attn_output.weight`, qRows, embd, h0 * d, h1 * d)),
      ffnNorm: await loader.vector(`${b}.ffn_norm.weight`, embd),
      gate: loader.packed(await loader.rows(`${b}.ffn_gate.weight`, embd, config.ff, f0, f1)),
      up: loader.packed(await loader.rows(`${b}.ffn_up.weight`, embd, config.ff, f0, f1)),
      down: loader.packed(await loader.columns(`${b}.ffn_down.weight`, config.ff, embd, f0, f1)),
    })
  }
  const embedding = plan.embed ? await loader.rows('token_embd.weight', embd, vocab, 0, vocab) : undefined
  let head: { norm: Float32Array; output: Matrix } | undefined
  if (plan.head) {
    const norm = await loader.vector('output_norm.weight', embd)
    const output =
      config.tiedOutput && embedding
        ? embedding
        : loader.packed(
            await loader.rows(
              config.tiedOutput ? 'token_embd.weight' : 'output.weight',
              embd,
              vocab,
              0,
              vocab,
            ),
          )
    head = { norm, output }
  }
  const freqFactors =
    config.ropeFreqFactors && plan.layers[1] > plan.layers[0]
      ? await file.readTensorRowsF32('rope_freqs.weight', 0, 1)
      : undefined
  return { layers, embedding, head, freqFactors }
}

/** A shard's ranges checked against the model: every shard, whole or sliced, follows these rules. */
export function resolveSpec(config: LlamaConfig, spec: ShardRanges): Omit<ShardPlan, 'contextSize'> {
  const [l0, l1] = spec.layers ?? [0, config.layers]
  if (l1 > config.layers) {
    throw new InvalidShardError(
      `layers [${l0}, ${l1}) are out of range; the model has ${config.layers} layers (0..${config.layers - 1})`,
    )
  }
  const heads = spec.heads ?? [0, config.heads]
  const ffn = spec.ffn ?? [0, config.ff]
  if (heads[1] > config.heads) {
    throw new InvalidShardError(
      `heads [${heads[0]}, ${heads[1]}) are out of range; the model has ${config.heads}`,
    )
  }
  if (ffn[1] > config.ff) {
    throw new InvalidShardError(
      `FFN columns [${ffn[0]}, ${ffn[1]}) are out of range; the model has ${config.ff}`,
    )
  }
  if (l0 === l1 && !spec.embed && !spec.head) {
    throw new InvalidShardError(`layers [${l0}, ${l1}) are empty and the shard has no embedding or head`)
  }
  const group = config.heads / config.kvHeads
  const kvHeads: [number, number] =
    heads[0] === heads[1] ? [0, 0] : [Math.floor(heads[0] / group), Math.ceil(heads[1] / group)]
  return {
    layers: [l0, l1],
    heads: [heads[0], heads[1]],
    kvHeads,
    ffn: [ffn[0], ffn[1]],
    partial: heads[0] !== 0 || heads[1] !== config.heads || ffn[0] !== 0 || ffn[1] !== config.ff,
    embed: spec.embed,
    head: spec.head,
  }
}

function planShard(config: LlamaConfig, opts: z.output<typeof loadShardOptionsSchema>): ShardPlan {
  const layers = opts.layers ?? [0, config.layers]
  return {
    ...resolveSpec(config, {
      layers,
      heads: opts.columns?.heads,
      ffn: opts.columns?.ffn,
      embed: opts.embed ?? layers[0] === 0,
      head: opts.head ?? layers[1] === config.layers,
    }),
    contextSize: opts.contextSize ?? Math.min(config.trainContext, 4096),
  }
}
