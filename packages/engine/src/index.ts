/**
 * @packageDocumentation
 * The Meshnet engine: a llama forward pass in TypeScript over WebAssembly SIMD kernels that runs
 * any layer range and any column slice of a GGUF model as a shard, plus the SentencePiece tokenizer
 * and llama.cpp's sampler. No network and no native runtime: `@meshnet/shards` runs shards over a
 * ring, `@meshnet/llama-cpp` is the llama.cpp reference the engine is tested against.
 */
export {
  ContextOverflowError,
  EngineDisposedError,
  InvalidShardError,
  ModelLoadError,
  UnsupportedModelError,
  UnsupportedTensorTypeError,
} from './errors.ts'
export type { KernelBuffer, Kernels } from './kernels/api.ts'
export { KernelMemoryError, KernelUnavailableError } from './kernels/errors.ts'
export { createJsKernels } from './kernels/js.ts'
export { KERNEL_TYPES } from './kernels/types.ts'
export type { CreateWasmKernelsOptions } from './kernels/wasm.ts'
export { createWasmKernels } from './kernels/wasm.ts'
export type {
  MeshnetEngine,
  MeshnetEngineOptions,
  OpenedTokenizer,
  TokenizerKind,
  TokenizerOpener,
} from './meshnet-engine.ts'
export { createMeshnetEngine, meshnetEngineOptionsSchema, openSpmTokenizer } from './meshnet-engine.ts'
export { createLocalAllReduce } from './model/all-reduce.ts'
export type { BatchStep } from './model/batch.ts'
export { canBatch, forwardBatch } from './model/batch.ts'
export type { LlamaConfig, RopeType } from './model/config.ts'
export { readLlamaConfig } from './model/config.ts'
export type { EmbeddingPooling } from './model/embedding.ts'
export {
  EMBEDDING_POOLINGS,
  EmbeddingPooler,
  l2Normalize,
  readEmbeddingPooling,
} from './model/embedding.ts'
export type { KernelFactory } from './model/segments.ts'
export { ChainedShard, chainSessions, DEFAULT_SEGMENT_BYTES, planSegments } from './model/segments.ts'
export type { LoadShardOptions } from './model/shard.ts'
export { loadShard, loadShardOptionsSchema, resolveSpec } from './model/shard.ts'
export type {
  AllReduce,
  ForwardOptions,
  LlamaShard,
  LogitsWanted,
  ShardInput,
  ShardOutput,
  ShardRanges,
} from './model/shard-types.ts'
export type { ShardLoadOptions, ShardSpec } from './model/shard-weights.ts'
export {
  estimateWeightBytes,
  ShardWeights,
  sessionBytes,
  VocabHead,
  vocabSlice,
} from './model/shard-weights.ts'
export type { StepBatcherOptions, StepBatcherStats } from './model/step-batcher.ts'
export { StepBatcher } from './model/step-batcher.ts'
export { spmTokenizerFromGGUF } from './model/vocab.ts'
export { SUPPORTED_WEIGHT_TYPES } from './model/weights.ts'
export type {
  LogprobsOptions,
  ResolvedSamplingOptions,
  Sampler,
  SamplerExtras,
  SamplingOptions,
  TokenConstraint,
  TokenLogprobs,
} from './sampling.ts'
export {
  argmax,
  ConstraintDeadEndError,
  createSampler,
  logSumExp,
  MAX_PENALTY,
  MAX_TOP_LOGPROBS,
  Mt19937,
  randomSeed,
  samplingOptionsSchema,
} from './sampling.ts'
export { TextStreamer } from './text-stream.ts'
export type { DetokenizeOptions, SpmVocab, TokenizeOptions } from './tokenizer.ts'
export { SpmTokenizer } from './tokenizer.ts'
export type {
  EmbedOptions,
  EvaluateLogitsOptions,
  GeneratedToken,
  GenerateOptions,
  GenerateResult,
  GenerateTimings,
  InferenceEngine,
  StopReason,
  Tokenizer,
  TokenPiece,
} from './types.ts'
export { generateOptionsSchema, parseGenerateOptions } from './types.ts'
