import type { Logger } from '@meshnet/core'
import type { MeshNode } from '@meshnet/discovery'
import type { StopReason, TokenLogprobs } from '@meshnet/engine'
import {
  MAX_TOP_LOGPROBS,
  type SamplingOptions,
  samplingOptionsSchema,
  type TokenConstraint,
} from '@meshnet/engine'
import { MAX_SHARD_BATCH, sha256Schema } from '@meshnet/protocols'
import { z } from 'zod'
import type { ShardGate } from './peers.ts'
import type { ParsedShardedPlan, ShardedPlan } from './plan.ts'
import type { ShardServer } from './server.ts'

export const shardedGenerationOptionsSchema = z.strictObject({
  poolId: z.string().min(1).max(64),
  /** The model every member must hold, by the SHA-256 of its GGUF file. */
  model: z.strictObject({ sha256: sha256Schema }),
  /** Token ids of the prompt (BOS included when the model wants it). */
  promptTokens: z.array(z.number().int().min(0).max(0xffff_ffff)).min(1).max(1_048_576),
  maxTokens: z.number().int().min(1).max(1_048_576).default(128),
  sampling: samplingOptionsSchema.optional(),
  /**
   * Report each token's log-probabilities (`ShardedToken.logprobs`) with this many alternatives.
   * The output member then also sends the log-sum-exp of its whole row (OPEN `logSumExp`).
   */
  logprobs: z.number().int().min(0).max(MAX_TOP_LOGPROBS).optional(),
  /** Tokens that end the generation (not included in the output): the model's EOS/EOT ids. */
  stopTokens: z.array(z.number().int().min(0)).max(64).default([]),
  /** Positions every member's KV cache holds. Default: prompt + maxTokens. */
  contextSize: z
    .number()
    .int()
    .min(1)
    .max(1 << 20)
    .optional(),
  /** Prompt positions per step (and per member forward batch). */
  maxBatch: z.number().int().min(1).max(MAX_SHARD_BATCH).default(32),
  kvCacheType: z.enum(['f16', 'f32']).default('f16'),
  /** Hidden states and partial sums on the wire: f32 (exact) or f16 (half the bytes, rounded). */
  activations: z.enum(['f32', 'f16']).default('f32'),
  /** Member-to-member links: direct encrypted TCP channels when possible, or libp2p streams only. */
  links: z.enum(['direct', 'libp2p']).default('direct'),
  /**
   * After a failover: 'exact' replays the prompt in the same batches and the generated tokens one
   * at a time, so a pipeline continues bit for bit as if nothing had happened; 'batched' replays
   * everything in prompt batches (faster, logits may differ in the last float bits).
   */
  replay: z.enum(['exact', 'batched']).default('exact'),
  maxFailovers: z.number().int().min(0).max(64).default(3),
  /** Budget for opening every member's session (loading its weights included). */
  openTimeoutMs: z.number().int().min(100).max(3_600_000).default(120_000),
  /** Budget for one step's output (a whole prompt batch included). */
  stepTimeoutMs: z.number().int().min(100).max(3_600_000).default(60_000),
  /** Budget for a liveness ping when deciding which members died. */
  pingTimeoutMs: z.number().int().min(100).max(60_000).default(2_000),
})

/** After members died: a plan over the members left (the agent's ring re-plans), or throw why none fits. */
export type ReplanFunction = (
  deadNodeIds: string[],
  context: { attempt: number; plan: ShardedPlan; cause: Error; signal: AbortSignal },
) => ShardedPlan | Promise<ShardedPlan>

export interface ShardedGenerationOptions extends z.input<typeof shardedGenerationOptionsSchema> {
  node: MeshNode
  /** Pool membership of the members (the coordinator sends them the prompt). */
  gate: ShardGate
  plan: ShardedPlan
  sampling?: SamplingOptions
  /** The shard server of this node, for a plan entry that is this node. */
  local?: ShardServer
  replan?: ReplanFunction
  /**
   * Only tokens it allows are sampled (structured output): the output member then returns the whole
   * row, since the likeliest tokens may all be refused. It lasts through failovers.
   */
  constraint?: TokenConstraint
  signal?: AbortSignal
  logger?: Logger
}

export interface ShardedToken {
  id: number
  /** 0 for the first generated token. */
  index: number
  /** With the `logprobs` option. */
  logprobs?: TokenLogprobs
}

export interface ShardedFailover {
  deadNodeIds: string[]
  /** Tokens generated before the failure. */
  atToken: number
  /** From the failure to the first token on the new plan's sessions being ready. */
  recoveryMs: number
  cause: string
}

export interface ShardedGenerationStats {
  mode: 'pipeline' | 'tensor'
  /** Members of the last plan. */
  members: number
  /** Member-to-member links of the last plan, by transport. */
  links: { direct: number; libp2p: number }
  promptTokens: number
  generatedTokens: number
  /** Opening the first plan's sessions (members loading weights included). */
  openMs: number
  /** From the call to the first token. */
  timeToFirstTokenMs: number
  totalMs: number
  /** From the first token to the last. */
  decodeMs: number
  /** `(generatedTokens - 1) / decodeMs`, per second. */
  tokensPerSecond: number
  /** Mean compute time of one decode step, all members together (ms). */
  computeMsPerToken: number | undefined
  /**
   * Mean latency of one network hop of a decode step (ms): the step's round trip less compute
   * (and, tensor parallel, less all-reduce time) over its hops (pipeline: members + 1; tensor: 2).
   */
  hopLatencyMs: number | undefined
  /** Tensor parallel: mean time of one all-reduce exchange as the output member saw it (ms). */
  allReduceMs: number | undefined
  bytes: {
    /** Coordinator ↔ members, both directions. */
    control: number
    /** Member ↔ member. */
    links: number
    /** Mean bytes moved (control and links) per decode step. */
    perToken: number | undefined
  }
  failovers: ShardedFailover[]
}

export interface ShardedGenerationResult {
  tokens: number[]
  stopReason: StopReason
  /** The plan the generation finished on. */
  plan: ParsedShardedPlan
  stats: ShardedGenerationStats
}

export type Options = z.output<typeof shardedGenerationOptionsSchema>

export interface Step {
  tokens: number[]
  pos: number
  want: boolean
}

/** Accumulated over every attempt. */
export class Meter {
  control = 0
  links = 0
  decodeSteps = 0
  decodeBytes = 0
  decodeCompute = 0
  hopSum = 0
  hopSteps = 0
  allReduceSum = 0
  allReduceSteps = 0
}
