import { GGUFFormatError } from './errors.ts'
import type { GGUFReader } from './reader.ts'

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
