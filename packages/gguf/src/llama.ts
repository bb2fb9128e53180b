import { InvalidArgumentError } from '@meshnet/core'
import { z } from 'zod'
import { GGUFFormatError } from './errors.ts'
import { GGML_TYPE, type GGMLTypeName, ggmlTypeInfo, QK_K, rowByteLength } from './ggml-types.ts'
import type { GGUFValueInput } from './metadata.ts'
import { fillTriangular, seededUint32 } from './prng.ts'
import { quantizeRow } from './quants.ts'
import type { GGUFReader } from './reader.ts'
import { llamaVocabulary, MAX_VOCAB_SIZE, MIN_VOCAB_SIZE } from './vocab.ts'
import { type GGUFTensorInput, writeGGUF } from './writer.ts'

/** Weight types the generator can write (norms are always F32). */
export const LLAMA_WEIGHT_TYPES = ['F32', 'F16', 'Q8_0', 'Q4_0', 'Q4_K', 'Q6_K'] as const
export type LlamaWeightType = (typeof LLAMA_WEIGHT_TYPES)[number]

// llama.cpp's LLAMA_FTYPE for a file whose weights are all of one type (Q4_K: "Q4_K - Small").
const FILE_TYPE: Record<LlamaWeightType, number> = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 7, Q4_K: 14, Q6_K: 18 }

const count = (max: number) => z.number().int().min(1).max(max)

/**
 * Options of `generateLlamaModel`, checked at the boundary. Issues carry the option name as their
 * path, so a CLI can name its own flag.
 */
export const llamaModelOptionsSchema = z
  .strictObject({
    out: z.string().min(1, 'must not be empty'),
    layers: count(1024),
    embd: count(1 << 16),
    heads: count(1024),
    /** Default: `heads` (no grouped-query attention). */
    kvHeads: count(1024).optional(),
    ff: count(1 << 18),
    vocab: z.number().int().min(MIN_VOCAB_SIZE).max(MAX_VOCAB_SIZE),
    context: count(1 << 24).default(2048),
    ropeBase: z.number().positive().finite().default(10000),
    rmsEps: z.number().positive().max(1).default(1e-5),
    type: z.enum(LLAMA_WEIGHT_TYPES).default('Q8_0'),
    seed: z.number().int().min(0).max(0xffffffff).default(0),
    name: z.string().min(1).max(256).optional(),
    /** Also compute the file's SHA-256 while writing it. */
    sha256: z.boolean().default(false),
    signal: z.instanceof(AbortSignal).optional(),
  })
  .superRefine((o, ctx) => {
    const kvHeads = o.kvHeads ?? o.heads
    if (o.embd % o.heads !== 0) {
      ctx.addIssue({ code: 'custom', path: ['heads'], message: `must divide embd (${o.embd})` })
      return
    }
    const headDim = o.embd / o.heads
    if (headDim % 2 !== 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['heads'],
        message: `gives an odd head size ${o.embd}/${o.heads} = ${headDim}; RoPE needs an even one`,
      })
    }
    if (kvHeads > o.heads || o.heads % kvHeads !== 0) {
      ctx.addIssue({ code: 'custom', path: ['kvHeads'], message: `must divide heads (${o.heads})` })
    }
    const block = ggmlTypeInfo(o.type).blockSize
    const kind = block === QK_K ? 'K-quant super-blocks' : 'blocks'
    for (const key of ['embd', 'ff'] as const) {
      if (o[key] % block !== 0) {
        ctx.addIssue({
          code: 'custom',
          path: [key],
          message: `must be a multiple of ${block} for ${o.type} (rows are whole ${kind} of ${block})`,
        })
      }
    }
  })

export type GenerateLlamaModelOptions = z.input<typeof llamaModelOptionsSchema>

export interface GeneratedLlamaModel {
  path: string
  bytes: number
  /** Total number of weights (elements of every tensor). */
  parameters: number
  type: LlamaWeightType
  tensors: number
  vocab: number
  seed: number
  /** Hex SHA-256 of the file, when asked for. */
  sha256?: string
}

interface TensorPlan {
  name: string
  dims: [number] | [number, number]
  type: GGMLTypeName
  /** Values are drawn with this mean and standard deviation. */
  mean: number
  std: number
}

function planLlama(o: z.output<typeof llamaModelOptionsSchema>): TensorPlan[] {
  const kvHeads = o.kvHeads ?? o.heads
  const headDim = o.embd / o.heads
  const kvDim = headDim * kvHeads
  // ~N(0, 1/fan_in) weights keep each projection's output near unit scale; the two residual
  // projections are further scaled by 1/sqrt(2·layers) so the residual stream stays bounded however
  // deep the model. Norm weights sit near 1 but not at 1, so an engine that skips them is caught.
  const fan = (n: number) => 1 / Math.sqrt(n)
  const residual = 1 / Math.sqrt(2 * o.layers)
  const w = (name: string, dims: [number, number], std: number): TensorPlan => ({
    name,
    dims,
    type: o.type,
    mean: 0,
    std,
  })
  const norm = (name: string): TensorPlan => ({ name, dims: [o.embd], type: 'F32', mean: 1, std: 0.05 })
  const plan: TensorPlan[] = [w('token_embd.weight', [o.embd, o.vocab], 1)]
  for (let i = 0; i < o.layers; i++) {
    const b = `blk.${i}`
    plan.push(
      norm(`${b}.attn_norm.weight`),
      w(`${b}.attn_q.weight`, [o.embd, o.embd], fan(o.embd)),
      w(`${b}.attn_k.weight`, [o.embd, kvDim], fan(o.embd)),
      w(`${b}.attn_v.weight`, [o.embd, kvDim], fan(o.embd)),
      w(`${b}.attn_output.weight`, [o.embd, o.embd], fan(o.embd) * residual),
      norm(`${b}.ffn_norm.weight`),
      w(`${b}.ffn_gate.weight`, [o.embd, o.ff], fan(o.embd)),
      w(`${b}.ffn_up.weight`, [o.embd, o.ff], fan(o.embd)),
      w(`${b}.ffn_down.weight`, [o.ff, o.embd], fan(o.ff) * residual),
    )
  }
  plan.push(norm('output_norm.weight'), w('output.weight', [o.embd, o.vocab], fan(o.embd)))
  return plan
}

const CHUNK_BYTES = 1 << 20

/** Streams one tensor's rows: values from its own PRNG stream, quantized a chunk of rows at a time. */
function* tensorChunks(t: TensorPlan, seed: number): Generator<Uint8Array> {
  const next = seededUint32(seed, t.name)
  const n = t.dims[0]
  const rows = t.dims[1] ?? 1
  const rowBytes = rowByteLength(t.type, n)
  const rowsPerChunk = Math.max(1, Math.floor(CHUNK_BYTES / rowBytes))
  const values = new Float32Array(n)
  const chunk = new Uint8Array(rowsPerChunk * rowBytes)
  for (let r = 0; r < rows; r += rowsPerChunk) {
    const count = Math.min(rowsPerChunk, rows - r)
    for (let k = 0; k < count; k++) {
      fillTriangular(next, values, t.mean, t.std)
      quantizeRow(t.type, values, chunk.subarray(k * rowBytes, (k + 1) * rowBytes))
    }
    yield chunk.subarray(0, count * rowBytes)
  }
}

function parseOptions(options: GenerateLlamaModelOptions): z.output<typeof llamaModelOptionsSchema> {
  const parsed = llamaModelOptionsSchema.safeParse(options)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!
    const key = issue.path.join('.') || 'options'
    const given =
      issue.path.length > 0 ? (options as Record<string, unknown>)[String(issue.path[0])] : undefined
    throw new InvalidArgumentError(
      `generateLlamaModel ${key}${given === undefined ? '' : ` ${JSON.stringify(given)}`}: ${issue.message}`,
      { details: { option: key } },
    )
  }
  return parsed.data
}

/**
 * Writes a deterministic llama-architecture GGUF that llama.cpp loads: the hyperparameters, a
 * SentencePiece vocabulary with byte fallback, and weights drawn from a PRNG seeded by (seed,
 * tensor name). Tensors are generated and written one chunk of rows at a time, so memory stays
 * small whatever the model size. The same options always give the same bytes.
 */
export async function generateLlamaModel(options: GenerateLlamaModelOptions): Promise<GeneratedLlamaModel> {
  const o = parseOptions(options)
  const kvHeads = o.kvHeads ?? o.heads
  const headDim = o.embd / o.heads
  const vocab = llamaVocabulary(o.vocab)
  const quantized = o.type !== 'F32' && o.type !== 'F16'
  const u32 = (value: number): GGUFValueInput => ({ type: 'uint32', value })
  const f32 = (value: number): GGUFValueInput => ({ type: 'float32', value })
  const metadata = new Map<string, GGUFValueInput>([
    ['general.architecture', { type: 'string', value: 'llama' }],
    [
      'general.name',
      { type: 'string', value: o.name ?? `meshnet-test-llama-${o.layers}x${o.embd}-${o.type}` },
    ],
    ['general.file_type', u32(FILE_TYPE[o.type])],
    ...(quantized ? ([['general.quantization_version', u32(2)]] as const) : []),
    ['llama.context_length', u32(o.context)],
    ['llama.embedding_length', u32(o.embd)],
    ['llama.block_count', u32(o.layers)],
    ['llama.feed_forward_length', u32(o.ff)],
    ['llama.attention.head_count', u32(o.heads)],
    ['llama.attention.head_count_kv', u32(kvHeads)],
    ['llama.rope.dimension_count', u32(headDim)],
    ['llama.rope.freq_base', f32(o.ropeBase)],
    ['llama.attention.layer_norm_rms_epsilon', f32(o.rmsEps)],
    ['llama.vocab_size', u32(o.vocab)],
    ['tokenizer.ggml.model', { type: 'string', value: 'llama' }],
    ['tokenizer.ggml.tokens', { type: 'array', itemType: 'string', value: vocab.tokens }],
    ['tokenizer.ggml.scores', { type: 'array', itemType: 'float32', value: vocab.scores }],
    ['tokenizer.ggml.token_type', { type: 'array', itemType: 'int32', value: vocab.tokenTypes }],
    ['tokenizer.ggml.bos_token_id', u32(vocab.bosId)],
    ['tokenizer.ggml.eos_token_id', u32(vocab.eosId)],
    ['tokenizer.ggml.unknown_token_id', u32(vocab.unkId)],
    ['tokenizer.ggml.add_bos_token', { type: 'bool', value: true }],
    ['tokenizer.ggml.add_eos_token', { type: 'bool', value: false }],
    ['tokenizer.ggml.add_space_prefix', { type: 'bool', value: true }],
    ['meshnet.test_model.seed', u32(o.seed)],
  ])

  const plan = planLlama(o)
  const tensors: GGUFTensorInput[] = plan.map((t) => ({
    name: t.name,
    dims: t.dims,
    type: GGML_TYPE[t.type],
    data: () => tensorChunks(t, o.seed),
  }))
  const written = await writeGGUF(o.out, {
    metadata,
    tensors,
    sha256: o.sha256,
    ...(o.signal ? { signal: o.signal } : {}),
  })
  const parameters = plan.reduce((sum, t) => sum + t.dims[0] * (t.dims[1] ?? 1), 0)
  return {
    path: written.path,
    bytes: written.bytes,
    parameters,
    type: o.type,
    tensors: plan.length,
    vocab: o.vocab,
    seed: o.seed,
    ...(written.sha256 === undefined ? {} : { sha256: written.sha256 }),
  }
}

/** The llama-family hyperparameters of a GGUF, as llama.cpp reads them (with its defaults). */
export interface LlamaHyperparameters {
  architecture: string
  contextLength: number
  embeddingLength: number
  blockCount: number
  feedForwardLength: number
  headCount: number
  headCountKv: number
  /** embeddingLength / headCount. */
  headDim: number
  ropeDimensionCount: number
  ropeFreqBase: number
  rmsNormEpsilon: number
  vocabSize: number
  bosTokenId: number | undefined
  eosTokenId: number | undefined
}

/**
 * Reads `<arch>.*` hyperparameters from an open GGUF (general.architecture decides the prefix).
 * Missing required keys are a GGUFFormatError naming the key.
 */
export function readLlamaHyperparameters(file: GGUFReader): LlamaHyperparameters {
  const arch = file.getString('general.architecture')
  const missing = (key: string): never => {
    throw new GGUFFormatError(`${file.path}: at byte 0: required key '${key}' is missing`, {
      details: { file: file.path, offset: 0, key },
      hint: 'this is not a complete llama-family model',
    })
  }
  if (arch === undefined) missing('general.architecture')
  const req = (key: string) => file.getNumber(`${arch}.${key}`) ?? missing(`${arch}.${key}`)
  const embeddingLength = req('embedding_length')
  const headCount = req('attention.head_count')
  const headDim = embeddingLength / headCount
  const tokens = file.metadata.get('tokenizer.ggml.tokens')
  const vocabSize =
    file.getNumber(`${arch}.vocab_size`) ??
    (tokens?.type === 'array' ? tokens.value.length : undefined) ??
    file.tensor('token_embd.weight')?.dims[1] ??
    missing(`${arch}.vocab_size`)
  return {
    architecture: arch!,
    contextLength: req('context_length'),
    embeddingLength,
    blockCount: req('block_count'),
    feedForwardLength: req('feed_forward_length'),
    headCount,
    headCountKv: file.getNumber(`${arch}.attention.head_count_kv`) ?? headCount,
    headDim,
    ropeDimensionCount: file.getNumber(`${arch}.rope.dimension_count`) ?? headDim,
    ropeFreqBase: file.getNumber(`${arch}.rope.freq_base`) ?? 10000,
    rmsNormEpsilon: req('attention.layer_norm_rms_epsilon'),
    vocabSize,
    bosTokenId: file.getNumber('tokenizer.ggml.bos_token_id'),
    eosTokenId: file.getNumber('tokenizer.ggml.eos_token_id'),
  }
}
