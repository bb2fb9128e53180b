import { InvalidArgumentError } from '@meshnet/core'
import { z } from 'zod'
import { type TensorPlan, type TilePool, tensorChunks, tiledChunks, tilePool } from './generator-fill.ts'
import { GGML_TYPE, type GGMLTypeName, ggmlTypeInfo, QUANTIZABLE_TYPES } from './ggml-types.ts'
import type { GGUFValueInput } from './metadata.ts'
import { LLAMA_TOKEN_TYPE, llamaVocabulary, MAX_VOCAB_SIZE, MIN_VOCAB_SIZE } from './vocab.ts'
import { type GGUFTensorInput, writeGGUF } from './writer.ts'

/** Architectures the generator writes, named as in `general.architecture`. */
export const MODEL_ARCHITECTURES = ['llama', 'qwen2', 'qwen3', 'gemma2', 'gemma3', 'phi3'] as const
export type ModelArchitecture = (typeof MODEL_ARCHITECTURES)[number]

/** Single weight types: every weight matrix of the file in that type (norms and biases F32). */
export const MODEL_TENSOR_TYPES = QUANTIZABLE_TYPES

/** `llama-quantize` mixes: a base type with more bits where llama.cpp gives them (see `tensorType`). */
export const MODEL_MIXES = ['Q3_K_M', 'Q4_K_S', 'Q4_K_M', 'Q5_K_S', 'Q5_K_M'] as const

/** What `--type` accepts: one type for every weight, or a llama-quantize mix. */
export const MODEL_WEIGHT_TYPES = [...MODEL_TENSOR_TYPES, ...MODEL_MIXES] as const
export type ModelWeightType = (typeof MODEL_WEIGHT_TYPES)[number]
type Mix = (typeof MODEL_MIXES)[number]

// llama.cpp's LLAMA_FTYPE (general.file_type) of each choice.
const FILE_TYPE: Record<ModelWeightType, number> = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q8_0: 7,
  Q5_0: 8,
  Q5_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q3_K_M: 12,
  Q4_K: 14,
  Q4_K_S: 14,
  Q4_K_M: 15,
  Q5_K: 16,
  Q5_K_S: 16,
  Q5_K_M: 17,
  Q6_K: 18,
  IQ4_NL: 25,
  IQ4_XS: 30,
  BF16: 32,
}

const count = (max: number) => z.number().int().min(1).max(max)

/**
 * Options of `generateModel`, checked at the boundary. Issues carry the option name as their
 * path, so a CLI can name its own flag.
 */
export const modelOptionsSchema = z
  .strictObject({
    out: z.string().min(1, 'must not be empty'),
    arch: z.enum(MODEL_ARCHITECTURES).default('llama'),
    layers: count(1024),
    embd: count(1 << 16),
    heads: count(1024),
    /** Default: `heads` (no grouped-query attention). */
    kvHeads: count(1024).optional(),
    /** Default: embd / heads. Qwen 3 and Gemma set it apart from the embedding width. */
    headDim: count(1024).optional(),
    ff: count(1 << 18),
    vocab: z.number().int().min(MIN_VOCAB_SIZE).max(MAX_VOCAB_SIZE),
    context: count(1 << 24).default(2048),
    ropeBase: z.number().positive().finite().optional(),
    rmsEps: z.number().positive().max(1).default(1e-5),
    /** Gemma: the sliding window of the local layers (default 4096 for Gemma 2, 512 for Gemma 3). */
    slidingWindow: count(1 << 20).optional(),
    type: z.enum(MODEL_WEIGHT_TYPES).default('Q8_0'),
    /**
     * How weight matrices are filled. `random`: every row drawn and quantized on its own (slow for
     * multi-GB models). `tiled`: rows assembled from a small pool of rows drawn and quantized the same
     * way (see `TILE_POOL_ROWS`), so writing is disk-bound. Norms and biases are drawn either way.
     */
    fill: z.enum(['random', 'tiled']).default('random'),
    seed: z.number().int().min(0).max(0xffffffff).default(0),
    name: z.string().min(1).max(256).optional(),
    /** Also compute the file's SHA-256 while writing it. */
    sha256: z.boolean().default(false),
    signal: z.instanceof(AbortSignal).optional(),
  })
  .superRefine((o, ctx) => {
    const kvHeads = o.kvHeads ?? o.heads
    if (o.headDim === undefined && o.embd % o.heads !== 0) {
      ctx.addIssue({ code: 'custom', path: ['heads'], message: `must divide embd (${o.embd})` })
      return
    }
    const headDim = o.headDim ?? o.embd / o.heads
    if (headDim % 2 !== 0) {
      ctx.addIssue({
        code: 'custom',
        path: [o.headDim === undefined ? 'heads' : 'headDim'],
        message: `gives an odd head size ${headDim}; RoPE needs an even one`,
      })
    }
    if (o.arch === 'qwen2' && headDim * o.heads !== o.embd) {
      ctx.addIssue({ code: 'custom', path: ['headDim'], message: 'must be embd / heads for qwen2' })
    }
    if (o.arch === 'phi3' && o.vocab <= MIN_VOCAB_SIZE) {
      ctx.addIssue({
        code: 'custom',
        path: ['vocab'],
        message: `must be over ${MIN_VOCAB_SIZE} for phi3 (it has <|endoftext|>)`,
      })
    }
    if (kvHeads > o.heads || o.heads % kvHeads !== 0) {
      ctx.addIssue({ code: 'custom', path: ['kvHeads'], message: `must divide heads (${o.heads})` })
    }
    if (o.type === 'F32' || o.type === 'F16' || o.type === 'BF16') return
    // Every quantized row is whole 32-element blocks; a K-quant or IQ4_XS row that is not whole
    // 256-element super-blocks falls back to a 32-block type, as llama-quantize does.
    for (const key of ['embd', 'ff'] as const) {
      if (o[key] % 32 !== 0) {
        ctx.addIssue({
          code: 'custom',
          path: [key],
          message: `must be a multiple of 32 for ${o.type} (rows are whole blocks of 32)`,
        })
      }
    }
    if ((headDim * o.heads) % 32 !== 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['heads'],
        message: `heads × head size must be a multiple of 32 for ${o.type}`,
      })
    }
  })

export type GenerateModelOptions = z.input<typeof modelOptionsSchema>
type Options = z.output<typeof modelOptionsSchema>

export interface GeneratedModel {
  path: string
  bytes: number
  /** Total number of weights (elements of every tensor). */
  parameters: number
  arch: ModelArchitecture
  type: ModelWeightType
  fill: 'random' | 'tiled'
  /** Tensors per ggml type (a mix has several). */
  tensorTypes: Partial<Record<GGMLTypeName, number>>
  tensors: number
  vocab: number
  seed: number
  /** Hex SHA-256 of the file, when asked for. */
  sha256?: string
}

type Role = 'embd' | 'output' | 'attn_v' | 'attn_qkv' | 'attn_output' | 'ffn_down' | 'other'

/** llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third between. */
function useMoreBits(layer: number, layers: number): boolean {
  const eighth = Math.floor(layers / 8)
  return layer < eighth || layer >= Math.floor((7 * layers) / 8) || (layer - eighth) % 3 === 2
}

const MIX_BASE: Record<Mix, GGMLTypeName> = {
  Q3_K_M: 'Q3_K',
  Q4_K_S: 'Q4_K',
  Q4_K_M: 'Q4_K',
  Q5_K_S: 'Q5_K',
  Q5_K_M: 'Q5_K',
}

/**
 * The type of one weight matrix: the chosen type, or for a mix what `llama-quantize` picks
 * (`llama_tensor_get_type` in llama.cpp's src/llama-quant.cpp, dense models, no importance matrix).
 * A K-quant whose rows are not whole 256-element super-blocks falls back as llama.cpp does.
 */
function tensorType(
  type: ModelWeightType,
  role: Role,
  layer: number,
  layers: number,
  cols: number,
): GGMLTypeName {
  let t: GGMLTypeName
  if (!(MODEL_MIXES as readonly string[]).includes(type)) {
    t = type as GGMLTypeName
  } else {
    const mix = type as Mix
    t = MIX_BASE[mix]
    if (role === 'output') t = 'Q6_K'
    else if (role === 'attn_v') {
      if (mix === 'Q3_K_M') t = layer < 2 ? 'Q5_K' : 'Q4_K'
      else if ((mix === 'Q4_K_M' || mix === 'Q5_K_M') && useMoreBits(layer, layers)) t = 'Q6_K'
      else if (mix === 'Q4_K_S' && layer < 4) t = 'Q5_K'
    } else if (role === 'ffn_down') {
      if (mix === 'Q3_K_M') t = layer < Math.floor(layers / 16) ? 'Q5_K' : 'Q4_K'
      else if ((mix === 'Q4_K_M' || mix === 'Q5_K_M') && useMoreBits(layer, layers)) t = 'Q6_K'
      else if (mix === 'Q4_K_S' && layer < Math.floor(layers / 8)) t = 'Q5_K'
    } else if (role === 'attn_output') {
      if (mix === 'Q3_K_M') t = 'Q4_K'
    } else if (role === 'attn_qkv') {
      if (mix === 'Q3_K_M') t = 'Q4_K'
      else if (mix === 'Q4_K_M') t = 'Q5_K'
      else if (mix === 'Q5_K_M') t = 'Q6_K'
    }
  }
  if (cols % ggmlTypeInfo(t).blockSize === 0) return t
  // llama.cpp's fallback for rows that are not whole super-blocks.
  const fallback: Partial<Record<GGMLTypeName, GGMLTypeName>> = {
    Q2_K: 'IQ4_NL',
    Q3_K: 'IQ4_NL',
    IQ4_XS: 'IQ4_NL',
    Q4_K: 'Q5_0',
    Q5_K: 'Q5_1',
    Q6_K: 'Q8_0',
  }
  return fallback[t] ?? 'F16'
}

/** The architecture-dependent parts of a generated file. */
interface Shape {
  headDim: number
  qDim: number
  kvDim: number
  /** Gemma 2 always ties the output to the embedding; Gemma 3 and Qwen do in small models. */
  tied: boolean
}

function shapeOf(o: Options): Shape {
  const kvHeads = o.kvHeads ?? o.heads
  const headDim = o.headDim ?? o.embd / o.heads
  return {
    headDim,
    qDim: headDim * o.heads,
    kvDim: headDim * kvHeads,
    tied: o.arch === 'gemma2' || o.arch === 'gemma3',
  }
}

function plan(o: Options): TensorPlan[] {
  const s = shapeOf(o)
  // ~N(0, 1/fan_in) weights keep each projection's output near unit scale; the two residual
  // projections are further scaled by 1/sqrt(2·layers) so the residual stream stays bounded however
  // deep the model. Norm weights sit near 1 but not at 1, so an engine that skips them is caught.
  const fan = (n: number) => 1 / Math.sqrt(n)
  const residual = 1 / Math.sqrt(2 * o.layers)
  const w = (name: string, dims: [number, number], std: number, role: Role, layer = 0): TensorPlan => ({
    name,
    dims,
    type: tensorType(o.type, role, layer, o.layers, dims[0]),
    mean: 0,
    std,
  })
  const vector = (name: string, length: number, mean: number, std: number): TensorPlan => ({
    name,
    dims: [length],
    type: 'F32',
    mean,
    std,
  })
  const norm = (name: string, length = o.embd) => vector(name, length, 1, 0.05)
  const gemma = o.arch === 'gemma2' || o.arch === 'gemma3'
  // Gemma multiplies embeddings by sqrt(embd); smaller ones keep its hidden states near unit scale.
  const tensors: TensorPlan[] = [
    w('token_embd.weight', [o.embd, o.vocab], gemma ? fan(o.embd) : 1, s.tied ? 'output' : 'embd'),
  ]
  for (let i = 0; i < o.layers; i++) {
    const b = `blk.${i}`
    tensors.push(norm(`${b}.attn_norm.weight`))
    if (o.arch === 'phi3') {
      tensors.push(w(`${b}.attn_qkv.weight`, [o.embd, s.qDim + 2 * s.kvDim], fan(o.embd), 'attn_qkv', i))
    } else {
      tensors.push(
        w(`${b}.attn_q.weight`, [o.embd, s.qDim], fan(o.embd), 'other', i),
        w(`${b}.attn_k.weight`, [o.embd, s.kvDim], fan(o.embd), 'other', i),
        w(`${b}.attn_v.weight`, [o.embd, s.kvDim], fan(o.embd), 'attn_v', i),
      )
    }
    if (o.arch === 'qwen2') {
      tensors.push(
        vector(`${b}.attn_q.bias`, s.qDim, 0, 0.5),
        vector(`${b}.attn_k.bias`, s.kvDim, 0, 0.5),
        vector(`${b}.attn_v.bias`, s.kvDim, 0, 0.1),
      )
    }
    if (o.arch === 'qwen3' || o.arch === 'gemma3') {
      tensors.push(norm(`${b}.attn_q_norm.weight`, s.headDim), norm(`${b}.attn_k_norm.weight`, s.headDim))
    }
    tensors.push(w(`${b}.attn_output.weight`, [s.qDim, o.embd], fan(s.qDim) * residual, 'attn_output', i))
    if (gemma) tensors.push(norm(`${b}.post_attention_norm.weight`))
    tensors.push(norm(`${b}.ffn_norm.weight`))
    if (o.arch === 'phi3') {
      tensors.push(w(`${b}.ffn_up.weight`, [o.embd, 2 * o.ff], fan(o.embd), 'other', i))
    } else {
      tensors.push(
        w(`${b}.ffn_gate.weight`, [o.embd, o.ff], fan(o.embd), 'other', i),
        w(`${b}.ffn_up.weight`, [o.embd, o.ff], fan(o.embd), 'other', i),
      )
    }
    tensors.push(w(`${b}.ffn_down.weight`, [o.ff, o.embd], fan(o.ff) * residual, 'ffn_down', i))
    if (gemma) tensors.push(norm(`${b}.post_ffw_norm.weight`))
  }
  tensors.push(norm('output_norm.weight'))
  if (!s.tied) tensors.push(w('output.weight', [o.embd, o.vocab], fan(o.embd), 'output'))
  return tensors
}

/** The architecture's hyperparameters, under its own key prefix. */
function hyperparameters(o: Options): Array<[string, GGUFValueInput]> {
  const s = shapeOf(o)
  const u32 = (value: number): GGUFValueInput => ({ type: 'uint32', value })
  const f32 = (value: number): GGUFValueInput => ({ type: 'float32', value })
  const a = o.arch
  const defaultBase = {
    llama: 10000,
    qwen2: 1000000,
    qwen3: 1000000,
    gemma2: 10000,
    gemma3: 1000000,
    phi3: 10000,
  }
  const keys: Array<[string, GGUFValueInput]> = [
    [`${a}.context_length`, u32(o.context)],
    [`${a}.embedding_length`, u32(o.embd)],
    [`${a}.block_count`, u32(o.layers)],
    [`${a}.feed_forward_length`, u32(o.ff)],
    [`${a}.attention.head_count`, u32(o.heads)],
    [`${a}.attention.head_count_kv`, u32(o.kvHeads ?? o.heads)],
    [`${a}.attention.key_length`, u32(s.headDim)],
    [`${a}.attention.value_length`, u32(s.headDim)],
    [`${a}.rope.dimension_count`, u32(s.headDim)],
    [`${a}.rope.freq_base`, f32(o.ropeBase ?? defaultBase[a])],
    [`${a}.attention.layer_norm_rms_epsilon`, f32(o.rmsEps)],
    [`${a}.vocab_size`, u32(o.vocab)],
  ]
  if (a === 'gemma2') {
    keys.push(
      [`${a}.attention.sliding_window`, u32(o.slidingWindow ?? 4096)],
      [`${a}.attn_logit_softcapping`, f32(50)],
      [`${a}.final_logit_softcapping`, f32(30)],
    )
  }
  if (a === 'gemma3') keys.push([`${a}.attention.sliding_window`, u32(o.slidingWindow ?? 512)])
  return keys
}

function parseOptions(options: GenerateModelOptions): Options {
  const parsed = modelOptionsSchema.safeParse(options)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!
    const key = issue.path.join('.') || 'options'
    const given =
      issue.path.length > 0 ? (options as Record<string, unknown>)[String(issue.path[0])] : undefined
    throw new InvalidArgumentError(
      `generateModel ${key}${given === undefined ? '' : ` ${JSON.stringify(given)}`}: ${issue.message}`,
      { details: { option: key } },
    )
  }
  return parsed.data
}

/**
 * Writes a deterministic GGUF of one of the engine's architectures that llama.cpp loads: the
 * hyperparameters, a SentencePiece vocabulary with byte fallback, and weights drawn from a PRNG
 * seeded by (seed, tensor name), quantized as `type` says; with `fill: 'tiled'`, weight matrices
 * are assembled from small pools of such rows instead, which writes a multi-GB model at disk speed.
 * Tensors are generated and written one chunk of rows at a time, so memory stays small whatever the
 * model size. The same options always give the same bytes.
 */
export async function generateModel(options: GenerateModelOptions): Promise<GeneratedModel> {
  const o = parseOptions(options)
  const vocab = llamaVocabulary(o.vocab)
  if (o.arch === 'phi3') {
    // llama.cpp looks up Phi-3's <|endoftext|> by name when the model's name says phi3.
    vocab.tokens[o.vocab - 1] = '<|endoftext|>'
    vocab.tokenTypes[o.vocab - 1] = LLAMA_TOKEN_TYPE.CONTROL
  }
  const quantized = o.type !== 'F32' && o.type !== 'F16' && o.type !== 'BF16'
  const u32 = (value: number): GGUFValueInput => ({ type: 'uint32', value })
  const metadata = new Map<string, GGUFValueInput>([
    ['general.architecture', { type: 'string', value: o.arch }],
    [
      'general.name',
      { type: 'string', value: o.name ?? `meshnet-test-${o.arch}-${o.layers}x${o.embd}-${o.type}` },
    ],
    ['general.file_type', u32(FILE_TYPE[o.type])],
    ...(quantized ? ([['general.quantization_version', u32(2)]] as const) : []),
    ...hyperparameters(o),
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
    // Only a tiled file says so: a random one keeps the bytes it always had.
    ...(o.fill === 'tiled'
      ? ([['meshnet.test_model.fill', { type: 'string', value: 'tiled' }]] as const)
      : []),
  ])
  const tensors = plan(o)
  const pools = new Map<string, TilePool>()
  const data = (t: TensorPlan): Iterable<Uint8Array> => {
    if (o.fill === 'random' || t.dims.length === 1) return tensorChunks(t, o.seed)
    const key = `${t.type}\0${t.dims[0]}\0${t.mean}\0${t.std}`
    let pool = pools.get(key)
    if (pool === undefined) {
      pool = tilePool(t, o.seed)
      pools.set(key, pool)
    }
    return tiledChunks(t, o.seed, pool)
  }
  const written = await writeGGUF(o.out, {
    metadata,
    tensors: tensors.map(
      (t): GGUFTensorInput => ({
        name: t.name,
        dims: t.dims,
        type: GGML_TYPE[t.type],
        data: () => data(t),
      }),
    ),
    sha256: o.sha256,
    ...(o.signal ? { signal: o.signal } : {}),
  })
  const tensorTypes: Partial<Record<GGMLTypeName, number>> = {}
  for (const t of tensors) if (t.dims.length === 2) tensorTypes[t.type] = (tensorTypes[t.type] ?? 0) + 1
  return {
    path: written.path,
    bytes: written.bytes,
    parameters: tensors.reduce((sum, t) => sum + t.dims[0] * (t.dims[1] ?? 1), 0),
    arch: o.arch,
    type: o.type,
    fill: o.fill,
    tensorTypes,
    tensors: tensors.length,
    vocab: o.vocab,
    seed: o.seed,
    ...(written.sha256 === undefined ? {} : { sha256: written.sha256 }),
  }
}
