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
  let loader: WeightLoader | undefined
  try {
    const config = readLlamaConfig(file)
    if (opts.ropeType) config.ropeType = opts.ropeType
    const plan = planShard(config, opts)
    loader = new WeightLoader(file, kernels, signal)
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
    await file.close()
  }
}

/** Where a projection's rows are: `total` rows of tensor `name`, this projection's from row `at`. */
export interface RowSource {
  name: string
  total: number
  at: number
}

/**
 * The tensors and row offsets of a layer's Q, K, V, gate and up projections: separate tensors, or
 * row ranges of Phi-3's fused `attn_qkv` (Q, K, V) and `ffn_up` (gate, up). A column slice of a
 * fused tensor is the same slice of each part, so a tensor-parallel shard reads its heads' rows of
 * Q, K and V and its FFN columns of gate and up.
 */
export function layerSources(
  config: LlamaConfig,
  layer: number,
): Record<'q' | 'k' | 'v' | 'gate' | 'up', RowSource> {
  const b = `blk.${layer}`
  const q = config.heads * config.headDim
  const kv = config.kvHeads * config.headDim
  const attention = config.fusedQkv
    ? {
        q: { name: `${b}.attn_qkv.weight`, total: q + 2 * kv, at: 0 },
        k: { name: `${b}.attn_qkv.weight`, total: q + 2 * kv, at: q },
        v: { name: `${b}.attn_qkv.weight`, total: q + 2 * kv, at: q + kv },
      }
    : {
        q: { name: `${b}.attn_q.weight`, total: q, at: 0 },
        k: { name: `${b}.attn_k.weight`, total: kv, at: 0 },
        v: { name: `${b}.attn_v.weight`, total: kv, at: 0 },
      }
  const ffn = config.fusedGateUp
    ? {
        gate: { name: `${b}.ffn_up.weight`, total: 2 * config.ff, at: 0 },
        up: { name: `${b}.ffn_up.weight`, total: 2 * config.ff, at: config.ff },
      }
    : {
        gate: { name: `${b}.ffn_gate.weight`, total: config.ff, at: 0 },
        up: { name: `${b}.ffn_up.weight`, total: config.ff, at: 0 },
      }
  return { ...attention, ...ffn }
}

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
  const { embd, headDim: d } = config
  const layers: LayerWeights[] = []
  for (let l = plan.layers[0]; l < plan.layers[1]; l++) {
    const b = `blk.${l}`
    const src = layerSources(config, l)
    const [h0, h1] = plan.heads
    const [kv0, kv1] = plan.kvHeads
    const [f0, f1] = plan.ffn
    const part = async (s: RowSource, start: number, end: number) =>
      loader.packed(await loader.rows(s.name, embd, s.total, s.at + start, s.at + end))
    const bias = async (name: string, total: number, start: number, end: number) =>
      config.qkvBias ? (await loader.vector(`${b}.${name}`, total)).slice(start, end) : undefined
    const norm = async (name: string, present: boolean, length = embd) =>
      present ? await loader.vector(`${b}.${name}`, length) : undefined
    layers.push({
      attnNorm: await loader.vector(`${b}.attn_norm.weight`, embd),
      wq: await part(src.q, h0 * d, h1 * d),
      wk: await part(src.k, kv0 * d, kv1 * d),
      wv: await part(src.v, kv0 * d, kv1 * d),
      bq: await bias('attn_q.bias', config.heads * d, h0 * d, h1 * d),
      bk: await bias('attn_k.bias', config.kvHeads * d, kv0 * d, kv1 * d),
      bv: await bias('attn_v.bias', config.kvHeads * d, kv0 * d, kv1 * d),
      qNorm: await norm('attn_q_norm.weight', config.qkNorm, d),
      kNorm: await norm('attn_k_norm.weight', config.qkNorm, d),
      wo: loader.packed(
        await loader.columns(`${b}.attn_output.weight`, config.heads * d, embd, h0 * d, h1 * d),
      ),
      attnPostNorm: await norm('post_attention_norm.weight', config.postNorms),
      ffnNorm: await loader.vector(`${b}.ffn_norm.weight`, embd),
      gate: await part(src.gate, f0, f1),
      up: await part(src.up, f0, f1),
      down: loader.packed(await loader.columns(`${b}.ffn_down.weight`, config.ff, embd, f0, f1)),
      ffnPostNorm: await norm('post_ffw_norm.weight', config.postNorms),
    })
  }
  const { vocab } = config
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
