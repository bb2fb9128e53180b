import type { GGUFReader } from '@meshnet/gguf'
import { UnsupportedModelError } from '../errors.ts'

export type RopeType = 'normal' | 'neox'

/** The hyperparameters of a llama-family model, as llama.cpp reads them (with its defaults). */
export interface LlamaConfig {
  architecture: 'llama'
  layers: number
  embd: number
  ff: number
  heads: number
  kvHeads: number
  headDim: number
  vocab: number
  /** The context the model was trained with (`llama.context_length`). */
  trainContext: number
  ropeType: RopeType
  ropeBase: number
  /** 1 / `llama.rope.scaling.factor` for linear scaling, else 1. */
  ropeFreqScale: number
  /** `rope_freqs.weight` (llama 3 frequency factors) is in the file. */
  ropeFreqFactors: boolean
  normEps: number
  /** Scale of q·k: `llama.attention.scale`, default 1/sqrt(headDim). */
  attentionScale: number
  /** No `output.weight`: the output projection is `token_embd.weight`. */
  tiedOutput: boolean
}

const SUPPORTED_ARCHITECTURES = new Set(['llama'])

const LAYER_TENSORS = new Set([
  'attn_norm.weight',
  'attn_q.weight',
  'attn_k.weight',
  'attn_v.weight',
  'attn_output.weight',
  'ffn_norm.weight',
  'ffn_gate.weight',
  'ffn_up.weight',
  'ffn_down.weight',
])
const GLOBAL_TENSORS = new Set([
  'token_embd.weight',
  'output_norm.weight',
  'output.weight',
  'rope_freqs.weight',
])

/**
 * Reads and checks a llama-family GGUF's hyperparameters and tensor names. Anything this engine
 * would compute differently from llama.cpp is an UnsupportedModelError that says what and why.
 */
export function readLlamaConfig(file: GGUFReader): LlamaConfig {
  const where = file.path
  const arch = file.getString('general.architecture')
  if (arch === undefined || !SUPPORTED_ARCHITECTURES.has(arch)) {
    throw new UnsupportedModelError(
      `${where} is a '${arch ?? 'unknown'}' model; the Meshnet engine runs llama-architecture models only`,
      {
        hint: 'use --engine llama-cpp for other architectures',
        details: { file: where, architecture: arch },
      },
    )
  }
  const unsupported = (what: string): never => {
    throw new UnsupportedModelError(`${where}: ${what} is not supported by the Meshnet engine`, {
      hint: 'use --engine llama-cpp for this model',
      details: { file: where },
    })
  }
  const num = (key: string) => {
    const value = file.metadata.get(`${arch}.${key}`)
    if (value?.type === 'array') unsupported(`a per-layer '${arch}.${key}'`)
    return file.getNumber(`${arch}.${key}`)
  }
  const req = (key: string) => {
    const value = num(key)
    if (value === undefined) {
      throw new UnsupportedModelError(`${where} has no '${arch}.${key}'; it is not a complete llama model`)
    }
    return value
  }
  const layers = req('block_count')
  const embd = req('embedding_length')
  const ff = req('feed_forward_length')
  const heads = req('attention.head_count')
  const kvHeads = num('attention.head_count_kv') ?? heads
  if ((num('expert_count') ?? 0) > 0) unsupported('mixture-of-experts (llama.expert_count > 0)')
  const headDim = num('attention.key_length') ?? embd / heads
  const valueDim = num('attention.value_length') ?? headDim
  const ropeDim = num('rope.dimension_count') ?? headDim
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) unsupported(`a head size of ${headDim}`)
  if (valueDim !== headDim)
    unsupported(`a value head size (${valueDim}) unlike the key head size (${headDim})`)
  if (ropeDim !== headDim) unsupported(`partial RoPE (${ropeDim} of ${headDim} dimensions)`)
  if (heads % kvHeads !== 0) unsupported(`${heads} query heads over ${kvHeads} KV heads`)
  const scaling = file.getString(`${arch}.rope.scaling.type`) ?? 'linear'
  if (scaling !== 'linear' && scaling !== 'none') unsupported(`RoPE scaling '${scaling}'`)
  const factor = num('rope.scaling.factor') ?? num('rope.scale_linear') ?? 0
  const tokens = file.metadata.get('tokenizer.ggml.tokens')
  const vocab =
    num('vocab_size') ??
    (tokens?.type === 'array' ? tokens.value.length : undefined) ??
    file.tensor('token_embd.weight')?.dims[1] ??
    unsupported('a model without a vocabulary size')
  for (const t of file.tensors) {
    const m = /^blk\.(\d+)\.(.+)$/.exec(t.name)
    const known = m ? LAYER_TENSORS.has(m[2]!) && Number(m[1]) < layers : GLOBAL_TENSORS.has(t.name)
    if (!known) unsupported(`tensor '${t.name}'`)
  }
  const attentionScale = file.getNumber(`${arch}.attention.scale`) ?? 0
  return {
    architecture: 'llama',
    layers,
    embd,
    ff,
    heads,
    kvHeads,
    headDim,
    vocab,
    trainContext: num('context_length') ?? 2048,
    ropeType: 'normal',
    ropeBase: num('rope.freq_base') ?? 10000,
    ropeFreqScale: scaling === 'none' || factor === 0 ? 1 : 1 / factor,
    ropeFreqFactors: file.tensor('rope_freqs.weight') !== undefined,
    normEps: req('attention.layer_norm_rms_epsilon'),
    attentionScale: attentionScale === 0 ? 1 / Math.sqrt(headDim) : attentionScale,
    tiedOutput: file.tensor('output.weight') === undefined,
  }
}
