import type { RopeType } from './config.ts'

/** The architectures the Meshnet engine runs (`general.architecture`). */
export const ARCHITECTURES = ['llama', 'qwen2', 'qwen3', 'gemma2', 'gemma3', 'phi3'] as const
export type ArchitectureName = (typeof ARCHITECTURES)[number]

/**
 * What one architecture adds to the llama forward pass: which optional tensors and operations it
 * uses and how they are named in a GGUF. The forward pass is the same for all of them; it reads
 * these switches (resolved against the file by `readModelConfig`). Mirrors llama.cpp's
 * `src/models/<arch>.cpp`.
 */
export interface Architecture {
  /** RoPE layout: llama rotates adjacent pairs, the others the two halves of a head (NEOX). */
  rope: RopeType
  /** Per-layer tensors every file of this architecture has (besides attention and FFN weights). */
  layerNorms: readonly string[]
  /** Per-layer tensors a file may have. */
  optional: readonly string[]
  /**
   * Files of this architecture fuse Q, K and V into one `attn_qkv` (rows: Q, then K, then V). A
   * file of any architecture may, as llama.cpp accepts; this says what converters write.
   */
  fusedQkv: boolean
  /** `ffn_up` holds the gate rows then the up rows (2 · ff rows) and there is no `ffn_gate`. */
  fusedGateUp: boolean
  /** The gated FFN's activation: SwiGLU (SiLU) or GeGLU (tanh GELU, ggml's f16 table). */
  activation: 'silu' | 'gelu'
  /** Token embeddings are multiplied by sqrt(embd) (Gemma). */
  embedScale: boolean
  /**
   * How attention scales q·k: `kq` in the softmax (llama's `attention.scale` or 1/sqrt(head dim));
   * `query` multiplies Q by the scale before the product and the softmax uses 1 (Gemma, Phi-3).
   */
  scaleOn: 'kq' | 'query'
  /**
   * Sliding-window attention: the layer pattern llama.cpp assumes when the file gives none (every
   * `pattern`-th layer is global) and the window when the file gives none (0: the file must).
   */
  slidingWindow?: { pattern: number; window: number }
  /** Soft-capping keys the file may set (`<arch>.attn_logit_softcapping`, `final_logit_softcapping`). */
  softcapping: boolean
}

const LLAMA_NORMS = ['attn_norm.weight', 'ffn_norm.weight'] as const

export const ARCHITECTURE: Readonly<Record<ArchitectureName, Architecture>> = {
  llama: {
    rope: 'normal',
    layerNorms: LLAMA_NORMS,
    optional: [],
    fusedQkv: false,
    fusedGateUp: false,
    activation: 'silu',
    embedScale: false,
    scaleOn: 'kq',
    softcapping: false,
  },
  qwen2: {
    rope: 'neox',
    layerNorms: LLAMA_NORMS,
    optional: ['attn_q.bias', 'attn_k.bias', 'attn_v.bias'],
    fusedQkv: false,
    fusedGateUp: false,
    activation: 'silu',
    embedScale: false,
    scaleOn: 'kq',
    softcapping: false,
  },
  qwen3: {
    rope: 'neox',
    layerNorms: [...LLAMA_NORMS, 'attn_q_norm.weight', 'attn_k_norm.weight'],
    optional: [],
    fusedQkv: false,
    fusedGateUp: false,
    activation: 'silu',
    embedScale: false,
    scaleOn: 'kq',
    softcapping: false,
  },
  gemma2: {
    rope: 'neox',
    layerNorms: [...LLAMA_NORMS, 'post_attention_norm.weight', 'post_ffw_norm.weight'],
    optional: [],
    fusedQkv: false,
    fusedGateUp: false,
    activation: 'gelu',
    embedScale: true,
    scaleOn: 'query',
    slidingWindow: { pattern: 2, window: 4096 },
    softcapping: true,
  },
  gemma3: {
    rope: 'neox',
    layerNorms: [
      ...LLAMA_NORMS,
      'attn_q_norm.weight',
      'attn_k_norm.weight',
      'post_attention_norm.weight',
      'post_ffw_norm.weight',
    ],
    optional: [],
    fusedQkv: false,
    fusedGateUp: false,
    activation: 'gelu',
    embedScale: true,
    scaleOn: 'query',
    slidingWindow: { pattern: 6, window: 0 },
    softcapping: true,
  },
  phi3: {
    rope: 'neox',
    layerNorms: LLAMA_NORMS,
    optional: [],
    fusedQkv: true,
    fusedGateUp: true,
    activation: 'silu',
    embedScale: false,
    scaleOn: 'query',
    softcapping: false,
  },
}

/** Whether `name` is an architecture the engine runs. */
export function isArchitecture(name: string | undefined): name is ArchitectureName {
  return name !== undefined && (ARCHITECTURES as readonly string[]).includes(name)
}

/**
 * llama.cpp's sliding-window layer pattern: with pattern n, layer l is local unless l % n == n - 1
 * (`llama_hparams::set_swa_pattern`); n = 0 makes every layer local, 1 none.
 */
export function swaLayers(layers: number, pattern: number): boolean[] {
  return Array.from({ length: layers }, (_, l) => pattern === 0 || l % pattern < pattern - 1)
}
