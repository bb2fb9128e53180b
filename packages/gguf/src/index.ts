/**
 * @packageDocumentation
 * GGUF v2/v3 files and ggml's quant formats, for the inference engine and for tests: a reader that
 * validates the header and reads tensor data lazily by byte range, an atomic streaming writer,
 * bit-exact reference quantize/dequantize for F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K,
 * Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS (`QUANTIZABLE_TYPES`), and a deterministic llama-family test-model generator whose files llama.cpp loads.
 */
export { GGUFFormatError, TensorNotFoundError, UnsupportedQuantTypeError } from './errors.ts'
export { fp16ToFp32, fp32ToFp16 } from './f16.ts'
export type {
  GeneratedModel,
  GenerateModelOptions,
  ModelArchitecture,
  ModelWeightType,
} from './generator.ts'
export {
  generateModel,
  MODEL_ARCHITECTURES,
  MODEL_MIXES,
  MODEL_TENSOR_TYPES,
  MODEL_WEIGHT_TYPES,
  modelOptionsSchema,
} from './generator.ts'
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
export {
  DEFAULT_GGUF_LIMITS,
  type GGUFHeader,
  type HeaderSource,
  readHeader as readGGUFHeader,
} from './header.ts'
export type { LlamaHyperparameters } from './llama.ts'
export { readLlamaHyperparameters } from './llama.ts'
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
export type { SplitGGUFOptions } from './split.ts'
export { splitGGUF } from './split.ts'
export type { LlamaVocabulary } from './vocab.ts'
export { LLAMA_TOKEN_TYPE, llamaVocabulary, SPM_SPACE } from './vocab.ts'
export type { GGUFTensorInput, WriteGGUFOptions, WriteGGUFResult } from './writer.ts'
export { writeGGUF } from './writer.ts'
