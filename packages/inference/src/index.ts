/**
 * @packageDocumentation
 * Llama inference for Meshnet. Two engines behind one interface: the Meshnet engine (a llama
 * forward pass in TypeScript over WebAssembly SIMD kernels, that can run any layer range and any
 * column slice of a model as a shard) and the llama.cpp engine (node-llama-cpp on the CPU), the
 * reference it is tested against. Plus the SentencePiece tokenizer, llama.cpp's sampler, the
 * kernels, and sharded sessions: a model split over ring members by layers (pipeline) or by heads
 * and FFN columns (tensor parallel), served by `shardServer` and driven by `runShardedGeneration`.
 */
export type { CreateEngineOptions, EngineName } from './create-engine.ts'
export { createEngine, ENGINE_NAMES } from './create-engine.ts'
export {
  ContextOverflowError,
  EngineDisposedError,
  InvalidShardError,
  ModelLoadError,
  UnsupportedModelError,
  UnsupportedTensorTypeError,
} from './errors.ts'
export type {
  JobMode,
  JobOrigin,
  JobReply,
  JobRequest,
  JobResult,
  JobRunner,
  JobStats,
  JobToken,
} from './jobs/protocol.ts'
export {
  decodeJobRequest,
  encodeJobFrame,
  JOB_MODES,
  JOB_PROTOCOL,
  JobFailedError,
  JobProtocolError,
  jobRequestSchema,
  MAX_JOB_FRAME_BYTES,
  MAX_JOB_PROMPT_CHARS,
  modelProviderKey,
  requestJob,
} from './jobs/protocol.ts'
export type { CreateWasmKernelsOptions, KernelBuffer, Kernels } from './kernels/index.ts'
export {
  createJsKernels,
  createWasmKernels,
  KERNEL_TYPES,
  KernelMemoryError,
  KernelUnavailableError,
} from './kernels/index.ts'
export type { LlamaCppEngine, LlamaCppEngineOptions } from './llama-cpp/engine.ts'
export { createLlamaCppEngine, llamaCppEngineOptionsSchema } from './llama-cpp/engine.ts'
export type { MeshnetEngine, MeshnetEngineOptions, OpenedTokenizer } from './meshnet-engine.ts'
export { createMeshnetEngine, meshnetEngineOptionsSchema, openModelTokenizer } from './meshnet-engine.ts'
export { createLocalAllReduce } from './model/all-reduce.ts'
export type { LlamaConfig, RopeType } from './model/config.ts'
export { readLlamaConfig } from './model/config.ts'
export type {
  AllReduce,
  ForwardOptions,
  LlamaShard,
  LoadShardOptions,
  ShardInput,
  ShardOutput,
} from './model/shard.ts'
export { loadShard, loadShardOptionsSchema } from './model/shard.ts'
export { spmTokenizerFromGGUF } from './model/vocab.ts'
export { SUPPORTED_WEIGHT_TYPES } from './model/weights.ts'
export type { ResolvedSamplingOptions, Sampler, SamplingOptions } from './sampling.ts'
export { argmax, createSampler, Mt19937, samplingOptionsSchema } from './sampling.ts'
export type {
  ReplanFunction,
  ShardedFailover,
  ShardedGenerationOptions,
  ShardedGenerationResult,
  ShardedGenerationStats,
  ShardedToken,
} from './sharded/coordinator.ts'
export { runShardedGeneration, shardedGenerationOptionsSchema } from './sharded/coordinator.ts'
export { ShardCapacityError, ShardedRunError, ShardModelError, ShardSessionError } from './sharded/errors.ts'
export type { ShardGate } from './sharded/peers.ts'
export type { ShardedModeChoice, ShardedPlan, ShardModelFacts } from './sharded/plan.ts'
export { chooseShardedMode, readShardModelFacts, shardedPlanSchema } from './sharded/plan.ts'
export { SHARD_PROTOCOL } from './sharded/protocol.ts'
export type {
  ModelResolver,
  ShardChannel,
  ShardServer,
  ShardServerInit,
  ShardServerOptions,
  ShardServerStats,
} from './sharded/server.ts'
export { shardServer, shardServerOptionsSchema } from './sharded/server.ts'
export { TextStreamer } from './text-stream.ts'
export type { DetokenizeOptions, SpmVocab, TokenizeOptions } from './tokenizer.ts'
export { SpmTokenizer, TOKEN_TYPE } from './tokenizer.ts'
export type {
  EvaluateLogitsOptions,
  GeneratedToken,
  GenerateOptions,
  GenerateResult,
  GenerateTimings,
  InferenceEngine,
  StopReason,
  Tokenizer,
} from './types.ts'
export { generateOptionsSchema } from './types.ts'
