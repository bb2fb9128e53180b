import type { Logger } from '@meshnet/core'
import { parseWith, silentLogger } from '@meshnet/core'
import type { MeshNode } from '@meshnet/discovery'
import { EMBEDDING_POOLINGS } from '@meshnet/engine'
import { MAX_SHARD_BATCH, sha256Schema } from '@meshnet/protocols'
import { z } from 'zod'
import { Attempt, AttemptError } from './attempt.ts'
import { Meter, type ReplanFunction, type ShardedFailover } from './coordinator-options.ts'
import { ShardedRunError, ShardSessionError } from './errors.ts'
import { failOver, stepsFrom } from './failover.ts'
import { MembershipCheck, type ShardGate } from './peers.ts'
import { type ParsedShardedPlan, parseShardedPlan, type ShardedPlan } from './plan.ts'
import type { ShardServer } from './server.ts'

/** Steps sent to the ring before their answers are read: inputs go in groups of about this many steps. */
const STEPS_IN_FLIGHT = 64

const token = z.number().int().min(0).max(0xffff_ffff)

export const shardedEmbeddingOptionsSchema = z.strictObject({
  poolId: z.string().min(1).max(64),
  /** The model every member must hold, by the SHA-256 of its GGUF file. */
  model: z.strictObject({ sha256: sha256Schema }),
  /** Token ids of each input (BOS included when the model wants it); one vector each. */
  inputs: z
    .array(
      z
        .array(token)
        .min(1)
        .max(1 << 20),
    )
    .min(1)
    .max(1 << 16),
  /** How the output member pools an input's final hidden states (the model's GGUF says which). */
  pooling: z.enum(EMBEDDING_POOLINGS),
  /** Positions per step (and per member forward batch). */
  maxBatch: z.number().int().min(1).max(MAX_SHARD_BATCH).default(32),
  kvCacheType: z.enum(['f16', 'f32']).default('f16'),
  /** Hidden states on member links: f32 keeps the vector bit for bit the whole model's; f16 rounds. */
  activations: z.enum(['f32', 'f16']).default('f32'),
  links: z.enum(['direct', 'libp2p']).default('direct'),
  maxFailovers: z.number().int().min(0).max(64).default(3),
  openTimeoutMs: z.number().int().min(100).max(3_600_000).default(120_000),
  stepTimeoutMs: z.number().int().min(100).max(3_600_000).default(60_000),
  pingTimeoutMs: z.number().int().min(100).max(60_000).default(2_000),
})

export interface ShardedEmbeddingOptions extends z.input<typeof shardedEmbeddingOptionsSchema> {
  node: MeshNode
  /** Pool membership of the members (the coordinator sends them the inputs). */
  gate: ShardGate
  /** A pipeline: embeddings are not computed tensor parallel. */
  plan: ShardedPlan
  /** The shard server of this node, for a plan entry that is this node. */
  local?: ShardServer
  replan?: ReplanFunction
  signal?: AbortSignal
  logger?: Logger
}

/** A failover of an embedding run: like a generation's, counted in inputs. */
export interface EmbeddingFailover extends Omit<ShardedFailover, 'atToken'> {
  /** Inputs that had their vector before the failure (the others ran on the next plan). */
  atInput: number
}

export interface ShardedEmbeddingResult {
  /** One L2-normalized vector of the model's width per input, in order. */
  vectors: Float32Array[]
  /** The plan the run finished on. */
  plan: ParsedShardedPlan
  stats: {
    members: number
    promptTokens: number
    /** Opening the first plan's sessions (members loading weights included). */
    openMs: number
    totalMs: number
    bytes: { control: number; links: number }
    failovers: EmbeddingFailover[]
  }
}

/**
 * Embeddings over ring members that each hold a layer range of the model (a pipeline): every input
 * goes through the members from position 0 as a prompt does, and the last member answers each
 * input's last step with the input's final hidden states (after the output norm) pooled and
 * L2-normalized (an embedding session of `/meshnet/shard/1.0.0`). With f32 activations the vector
 * is bit for bit the one the Meshnet engine computes for the whole model.
 *
 * When a member dies, `replan(deadNodeIds)` gives a plan over the members left and the inputs
 * without a vector yet run there.
 */
export async function runShardedEmbedding(options: ShardedEmbeddingOptions): Promise<ShardedEmbeddingResult> {
  const { node, gate, plan: initialPlan, local, replan, signal, logger: givenLogger, ...rest } = options
  const opts = parseWith(shardedEmbeddingOptionsSchema, rest, 'sharded embedding option')
  const logger = (givenLogger ?? silentLogger()).child({ component: 'sharded-embedding' })
  let plan = pipeline(initialPlan)
  const { inputs } = opts
  const contextSize = Math.max(...inputs.map((t) => t.length))
  const membership = new MembershipCheck(gate)
  const meter = new Meter()
  const failovers: EmbeddingFailover[] = []
  const vectors: Array<Float32Array | undefined> = inputs.map(() => undefined)
  const started = performance.now()
  let openMs: number | undefined
  let attempt: Attempt | undefined
  let attemptNo = 0
  let failedAt: number | undefined
  let pending: Omit<EmbeddingFailover, 'recoveryMs'> | undefined
  try {
    for (;;) {
      attemptNo++
      if (attempt) meter.control += attempt.controlBytes()
      attempt = new Attempt({
        node,
        local,
        membership,
        opts,
        contextSize,
        topK: 1,
        meter,
        logger,
        signal,
        embedding: opts.pooling,
      })
      try {
        const opening = performance.now()
        await attempt.open(plan)
        openMs ??= performance.now() - opening
        if (pending) {
          failovers.push({ ...pending, recoveryMs: performance.now() - failedAt! })
          pending = undefined
          failedAt = undefined
        }
        for (const group of groups(vectors, inputs, opts.maxBatch)) {
          const stepsOf = group.map((i) => stepsFrom(inputs[i]!, opts.maxBatch))
          const answers = await attempt.embed(stepsOf.flat())
          let at = 0
          for (const [g, i] of group.entries()) {
            at += stepsOf[g]!.length
            const values = answers[at - 1]!.values
            if (values.length !== attempt.embd) {
              throw new ShardSessionError(`the output member answered input ${i} with no vector`)
            }
            vectors[i] = values
          }
        }
        await attempt.close()
        return {
          vectors: vectors as Float32Array[],
          plan,
          stats: {
            members: plan.shards.length,
            promptTokens: inputs.reduce((sum, t) => sum + t.length, 0),
            openMs: openMs ?? 0,
            totalMs: performance.now() - started,
            bytes: { control: meter.control + attempt.controlBytes(), links: meter.links },
            failovers,
          },
        }
      } catch (err) {
        const failed = attempt
        failedAt ??= performance.now()
        if (signal?.aborted || !(err instanceof AttemptError)) {
          await failed.abort()
          throw err
        }
        const cause = err.cause as Error
        const next = await failOver({
          run: 'embedding',
          failed,
          cause,
          attemptNo,
          plan,
          replan,
          parse: pipeline,
          taken: failovers.length + (pending ? 1 : 0),
          options: opts,
          signal,
          logger,
        })
        plan = next.plan
        if (pending) failovers.push({ ...pending, recoveryMs: performance.now() - failedAt })
        pending = {
          deadNodeIds: next.dead,
          atInput: vectors.filter((v) => v !== undefined).length,
          cause: cause.message,
        }
      }
    }
  } finally {
    await attempt?.abort()
  }
}

function pipeline(plan: ShardedPlan): ParsedShardedPlan {
  const parsed = parseShardedPlan(plan)
  if (parsed.mode !== 'pipeline') {
    throw new ShardedRunError('embeddings run over a pipeline plan (layer ranges), not tensor parallel')
  }
  return parsed
}

/** The inputs without a vector yet, in groups of about STEPS_IN_FLIGHT steps (at least one input each). */
function* groups(
  vectors: ReadonlyArray<Float32Array | undefined>,
  inputs: ReadonlyArray<readonly number[]>,
  maxBatch: number,
): Generator<number[]> {
  let group: number[] = []
  let steps = 0
  for (let i = 0; i < inputs.length; i++) {
    if (vectors[i] !== undefined) continue
    const n = Math.ceil(inputs[i]!.length / maxBatch)
    if (group.length > 0 && steps + n > STEPS_IN_FLIGHT) {
      yield group
      group = []
      steps = 0
    }
    group.push(i)
    steps += n
  }
  if (group.length > 0) yield group
}
