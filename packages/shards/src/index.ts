/**
 * @packageDocumentation
 * Sharded generation over a Meshnet ring: a model split over members by layers (pipeline) or by
 * heads and FFN columns (tensor parallel). `shardServer` serves this member's shards over
 * `/meshnet/shard/1.0.0` (and direct member links); `runShardedGeneration` drives a generation,
 * failing over to the ring's live members when one dies; `jobService` runs jobs (whole on one
 * member, or sharded) for the agent.
 */

export { runShardedGeneration } from './coordinator.ts'
export type {
  ReplanFunction,
  ShardedFailover,
  ShardedGenerationOptions,
  ShardedGenerationResult,
  ShardedGenerationStats,
  ShardedToken,
} from './coordinator-options.ts'
export { shardedGenerationOptionsSchema } from './coordinator-options.ts'
export type {
  EmbeddingFailover,
  ShardedEmbeddingOptions,
  ShardedEmbeddingResult,
} from './embedding.ts'
export { runShardedEmbedding, shardedEmbeddingOptionsSchema } from './embedding.ts'
export { PoolAccessError, ShardCapacityError, ShardedRunError, ShardModelError } from './errors.ts'
export type { EmbedRequest, EmbedResult } from './jobs/embed.ts'
export { embedRequestSchema, MAX_EMBED_INPUTS, MAX_EMBED_TOKENS } from './jobs/embed.ts'
export { JobRefusedError } from './jobs/errors.ts'
export { jobService } from './jobs/index.ts'
export type { ForcedToolChoice } from './jobs/request.ts'
export { jobStats } from './jobs/stats.ts'
export type {
  ChatTools,
  JobRecord,
  JobRings,
  JobService,
  JobServiceComponents,
  JobServiceInit,
  JobStore,
  RenderChat,
  ServedModel,
  ShardAssignment,
  ShardLoadState,
  SingleEngine,
} from './jobs/types.ts'
export type { ModelHash } from './model-hash.ts'
export { fileSha256, modelSha256 } from './model-hash.ts'
export type { ShardGate } from './peers.ts'
export type { ShardedModeChoice, ShardedPlan, ShardModelFacts } from './plan.ts'
export {
  chooseShardedMode,
  PROCESS_RESERVE_BYTES,
  readShardModelFacts,
  shardedPlanSchema,
} from './plan.ts'
export type {
  ModelCopy,
  ModelResolver,
  ShardChannel,
  ShardServer,
  ShardServerInit,
  ShardServerOptions,
  ShardServerStats,
} from './server.ts'
export { shardServer, shardServerOptionsSchema } from './server.ts'
export type { SegmentReport, SegmentState } from './weight-cache.ts'
