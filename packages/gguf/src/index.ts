/**
 * @packageDocumentation
 * GGUF v2/v3 files and ggml's quant formats, for the inference engine and for tests: a reader that
 * validates the header and reads tensor data lazily by byte range, an atomic streaming writer,
 * bit-exact reference quantize/dequantize for F32, F16, Q8_0, Q4_0, Q4_K and Q6_K, and a
 * deterministic llama-family test-model generator whose files llama.cpp loads.
 */
export { GGUFFormatError, TensorNotFoundError, UnsupportedQuantTypeError } from './errors.ts'
export { fp16ToFp32, fp32ToFp16 } from './f16.ts'
export type { GGMLType, GGMLTypeInfo, GGMLTypeName } from './ggml-types.ts'
export {
  findGGMLType,
  GGML_TYPE,
  ggmlTypeInfo,
  QK_K,
  QUANTIZABLE_TYPES,
  rowByteLength,
} from './ggml-types.ts'
export type { GGUFLimits, GGUFTensorInfo } from './header.ts'
export { DEFAULT_GGUF_LIMITS } from './header.ts'
export type {
  GeneratedLlamaModel,
  GenerateLlamaModelOptions,
  LlamaHyperparameters,
  LlamaWeightType,
} from './llama.ts'
export {
  generateLlamaModel,
  LLAMA_WEIGHT_TYPES,
  llamaModelOptionsSchema,
  readLlamaHyperparameters,
} from './llama.ts'
export type {
  GGUFArrayItems,
  GGUFScalarTypeName,
  GGUFValue,
  GGUFValueInput,
  GGUFValueTypeName,
} from './metadata.ts'
export { GGUF_DEFAULT_ALIGNMENT, GGUF_VALUE_TYPE } from './metadata.ts'
export { dequantizeRow, quantizeRow } from './quants.ts'
export type { GGUFReader, OpenGGUFOptions, TensorRowRange } from './reader.ts'
export { openGGUF } from './reader.ts'
export type { LlamaVocabulary } from './vocab.ts'
export { LLAMA_TOKEN_TYPE, llamaVocabulary, SPM_SPACE } from './vocab.ts'
export type { GGUFTensorInput, WriteGGUFOptions, WriteGGUFResult } from './writer.ts'
export { writeGGUF } from './writer.ts'
