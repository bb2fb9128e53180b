import type { GGUFReader } from '@meshnet/gguf'
import { UnsupportedModelError } from '../errors.ts'
import {
  ARCHITECTURE,
  ARCHITECTURES,
  type ArchitectureName,
  isArchitecture,
  swaLayers,
} from './architectures.ts'

export type RopeType = 'normal' | 'neox'

/**
 * The hyperparameters of a model the engine runs, as llama.cpp reads them (with its defaults), and
 * the architecture's switches resolved against the file (which optional tensors it has).
 */
export interface LlamaConfig {
  architecture: ArchitectureName
  layers: number
  embd: number
  ff: number
  heads: number
  kvHeads: number
  headDim: number
  vocab: number
  /** The context the model was trained with (`<arch>.context_length`). */
  trainContext: number
  ropeType: RopeType
  ropeBase: number
  /** 1 / `<arch>.rope.scaling.factor` for linear scaling, else 1. */
  ropeFreqScale: number
  /** `rope_freqs.weight` (llama 3 frequency factors) is in the file. */
  ropeFreqFactors: boolean
  normEps: number
  /** Scale of q·k in the softmax: `<arch>.attention.scale`, default 1/sqrt(headDim); 1 when Q is pre-scaled. */
  attentionScale: number
  /** Q is multiplied by this after RoPE (Gemma's query_pre_attn_scalar, Phi-3); 1: not at all. */
  queryScale: number
  /** No `output.weight`: the output projection is `token_embd.weight`. */
  tiedOutput: boolean
  /** Q/K/V biases (Qwen 2). */
  qkvBias: boolean
  /** Per-head RMSNorm of Q and K before RoPE (Qwen 3, Gemma 3). */
  qkNorm: boolean
  /** RMSNorm of the attention and FFN outputs before the residual add (Gemma 2 and 3). */
  postNorms: boolean
  /** Q, K, V in one `attn_qkv` tensor (Phi-3). */
  fusedQkv: boolean
  /** Gate and up in one `ffn_up` tensor of 2 · ff rows (Phi-3). */
  fusedGateUp: boolean
  activation: 'silu' | 'gelu'
  /** Embeddings are multiplied by this (sqrt(embd) for Gemma, else 1). */
  embedScale: number
  /** tanh soft-capping of q·k (Gemma 2), 0 for none. */
  attnSoftcap: number
  /** tanh soft-capping of the logits (Gemma 2, some Gemma 3), 0 for none. */
  finalSoftcap: number
  /** Sliding window of the local layers (a position sees the previous `slidingWindow`), 0 for none. */
  slidingWindow: number
  /** Which layers use the sliding window (all false without one). */
  swaLayers: readonly boolean[]
  /** RoPE base and scale of the sliding-window layers. */
  ropeBaseSwa: number
  ropeFreqScaleSwa: number
}

const ATTENTION = ['attn_q.weight', 'attn_k.weight', 'attn_v.weight'] as const
const GLOBAL_TENSORS = new Set([
  'token_embd.weight',
  'output_norm.weight',
  'output.weight',
  'rope_freqs.weight',
])

/** The per-layer tensor names a file of `arch` may have, and which of them it must have. */
function layerTensors(
  arch: ArchitectureName,
  fusedQkv: boolean,
): { allowed: Set<string>; required: string[] } {
  const a = ARCHITECTURE[arch]
  const qkv = fusedQkv ? ['attn_qkv.weight'] : [...ATTENTION]
  const ffn = a.fusedGateUp ? ['ffn_up.weight'] : ['ffn_gate.weight', 'ffn_up.weight']
  const required = [...a.layerNorms, ...qkv, 'attn_output.weight', ...ffn, 'ffn_down.weight']
  return { allowed: new Set([...required, ...a.optional]), required }
}

/**
 * Reads and checks a GGUF's hyperparameters and tensor names for one of the engine's architectures.
 * Anything this engine would compute differently from llama.cpp is an UnsupportedModelError that
 * says what and why.
 */
export function readLlamaConfig(file: GGUFReader): LlamaConfig {
  const where = file.path
  const arch = file.getString('general.architecture')
  if (!isArchitecture(arch)) {
    const moe = arch !== undefined && /moe|mixtral|gpt-oss|deepseek|olmoe|granitemoe/i.test(arch)
    throw new UnsupportedModelError(
      `${where} is a '${arch ?? 'unknown'}' model; the Meshnet engine runs ${ARCHITECTURES.join(', ')}${moe ? ' (not mixture-of-experts)' : ''}`,
      {
        hint: 'use --engine llama-cpp (or auto, which runs a model that fits on one member on llama.cpp)',
        details: { file: where, architecture: arch },
      },
    )
  }
  const spec = ARCHITECTURE[arch]
  const unsupported = (what: string): never => {
    throw new UnsupportedModelError(`${where}: ${what} is not supported by the Meshnet engine`, {
      hint: 'use --engine llama-cpp for this model',
      details: { file: where, architecture: arch },
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
      throw new UnsupportedModelError(`${where} has no '${arch}.${key}'; it is not a complete ${arch} model`)
    }
    return value
  }
  const layers = req('block_count')
  const embd = req('embedding_length')
  const ff = req('feed_forward_length')
  const heads = req('attention.head_count')
  const kvHeads = num('attention.head_count_kv') ?? heads
  if ((num('expert_count') ?? 0) > 0) unsupported(`mixture-of-experts (${arch}.expert_count > 0)`)
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
  // llama.cpp takes a fused attn_qkv in place of attn_q/k/v for any of these architectures.
  const fusedQkv = file.tensor('blk.0.attn_qkv.weight') !== undefined
  const { allowed, required } = layerTensors(arch, fusedQkv)
  for (const t of file.tensors) {
    const m = /^blk\.(\d+)\.(.+)$/.exec(t.name)
    const known = m ? allowed.has(m[2]!) && Number(m[1]) < layers : GLOBAL_TENSORS.has(t.name)
    if (known) continue
    if (/^rope_factors_(long|short)/.test(t.name)) unsupported(`LongRoPE ('${t.name}')`)
    if (m && /_exps?\b|ffn_gate_inp/.test(m[2]!)) unsupported(`mixture-of-experts (tensor '${t.name}')`)
    unsupported(`tensor '${t.name}' (not part of a ${arch} model as this engine knows it)`)
  }
  for (let l = 0; l < layers; l++) {
    for (const name of required) {
      if (file.tensor(`blk.${l}.${name}`) === undefined) {
        throw new UnsupportedModelError(
          `${where} has no tensor 'blk.${l}.${name}'; it is not a complete ${arch} model`,
        )
      }
    }
  }
  const qkvBias = spec.optional.includes('attn_q.bias') && file.tensor('blk.0.attn_q.bias') !== undefined
  if (qkvBias) {
    for (let l = 0; l < layers; l++) {
      for (const b of ['attn_q.bias', 'attn_k.bias', 'attn_v.bias']) {
        if (file.tensor(`blk.${l}.${b}`) === undefined)
          unsupported(`a model with some Q/K/V biases missing ('blk.${l}.${b}')`)
      }
    }
  }
  // Attention scaling: llama's attention.scale (or 1/sqrt(d)) in the softmax; Gemma and Phi-3 scale
  // Q instead. Gemma's query_pre_attn_scalar is not in the file: llama.cpp uses embd/heads for the
  // 27B models (46 layers of Gemma 2, 62 of Gemma 3) and the head size otherwise.
  const attentionScale = file.getNumber(`${arch}.attention.scale`) ?? 0
  const kqScale = attentionScale === 0 ? 1 / Math.sqrt(headDim) : attentionScale
  const gemma27b = (arch === 'gemma2' && layers === 46) || (arch === 'gemma3' && layers === 62)
  const queryScale =
    spec.scaleOn === 'kq' ? 1 : gemma27b ? 1 / Math.sqrt(embd / heads) : 1 / Math.sqrt(headDim)
  const ropeBase = num('rope.freq_base') ?? 10000
  const ropeFreqScale = scaling === 'none' || factor === 0 ? 1 : 1 / factor
  const window = spec.slidingWindow
  const slidingWindow = window === undefined ? 0 : (num('attention.sliding_window') ?? window.window)
  let swa = new Array<boolean>(layers).fill(false)
  if (window !== undefined && slidingWindow > 0) {
    const pattern = file.metadata.get(`${arch}.attention.sliding_window_pattern`)
    if (pattern?.type === 'array') {
      const values = pattern.value as unknown[]
      if (values.length !== layers)
        unsupported(`a sliding-window pattern of ${values.length} layers for ${layers}`)
      swa = values.map((v) => v === true || v === 1)
    } else {
      swa = swaLayers(layers, num('attention.sliding_window_pattern') ?? window.pattern)
    }
  }
  const softcap = (key: string, fallback: number) => (spec.softcapping ? (num(key) ?? fallback) : 0)
  return {
    architecture: arch,
    layers,
    embd,
    ff,
    heads,
    kvHeads,
    headDim,
    vocab,
    trainContext: num('context_length') ?? 2048,
    ropeType: spec.rope,
    ropeBase,
    ropeFreqScale,
    ropeFreqFactors: file.tensor('rope_freqs.weight') !== undefined,
    normEps: req('attention.layer_norm_rms_epsilon'),
    attentionScale: spec.scaleOn === 'query' ? 1 : kqScale,
    queryScale,
    // Gemma 2 always ties its output to the embedding table.
    tiedOutput: arch === 'gemma2' || file.tensor('output.weight') === undefined,
    qkvBias,
    qkNorm: spec.layerNorms.includes('attn_q_norm.weight'),
    postNorms: spec.layerNorms.includes('post_attention_norm.weight'),
    fusedQkv,
    fusedGateUp: spec.fusedGateUp,
    activation: spec.activation,
    embedScale: spec.embedScale ? Math.sqrt(embd) : 1,
    attnSoftcap: arch === 'gemma2' ? softcap('attn_logit_softcapping', 50) : 0,
    finalSoftcap: softcap('final_logit_softcapping', arch === 'gemma2' ? 30 : 0),
    slidingWindow: swa.some(Boolean) ? slidingWindow : 0,
    swaLayers: swa,
    // Gemma 3's local layers default to base 10000 and no scaling; Gemma 2's follow the global ones.
    ropeBaseSwa: num('rope.freq_base_swa') ?? (arch === 'gemma3' ? 10000 : ropeBase),
    ropeFreqScaleSwa: arch === 'gemma3' ? 1 : ropeFreqScale,
  }
}
