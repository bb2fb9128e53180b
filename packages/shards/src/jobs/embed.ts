import { randomUUID } from 'node:crypto'
import { parseWith } from '@meshnet/core'
import {
  ContextOverflowError,
  type EmbeddingPooling,
  type OpenedTokenizer,
  readEmbeddingPooling,
  UnsupportedModelError,
} from '@meshnet/engine'
import { openGGUF } from '@meshnet/gguf'
import { type JobEvent, type JobOrigin, MAX_JOB_PROMPT_CHARS } from '@meshnet/protocols'
import { ShardPlanError } from '@meshnet/ring'
import { z } from 'zod'
import { runShardedEmbedding } from '../embedding.ts'
import { chooseShardedMode } from '../plan.ts'
import type { ShardServer } from '../server.ts'
import { JobRefusedError } from './errors.ts'
import { holders, planOn } from './sharded.ts'
import type { SingleEngineQueue } from './single.ts'
import type { JobServiceComponents, ServedModel } from './types.ts'

/** Most inputs one embedding job takes (OpenAI's limit per request). */
export const MAX_EMBED_INPUTS = 2048

/**
 * Most tokens of one embedding input (BOS included), or the model's context less one when that is
 * smaller. llama.cpp evaluates an input in one batch with logits for every position, so this
 * bounds its scratch memory.
 */
export const MAX_EMBED_TOKENS = 2048

/** One embedding job: a vector for each input text. */
export const embedRequestSchema = z.strictObject({
  /** The pool whose ring runs the job when this node cannot hold the model (default: its only pool). */
  poolId: z.string().min(1).max(128).optional(),
  /** The model, by file name or SHA-256 (default: the one the node serves). */
  model: z.string().min(1).max(256).optional(),
  /** Texts, tokenized with BOS (and EOS) as the model adds them; control-token text stays text. */
  inputs: z.array(z.string().min(1).max(MAX_JOB_PROMPT_CHARS)).min(1).max(MAX_EMBED_INPUTS),
  /** Cut inputs longer than the limit to it (Ollama's `truncate`) instead of refusing them. */
  truncate: z.boolean().default(false),
  /** `auto`: this node's llama.cpp when it can hold the model, else a pipeline over the ring. */
  mode: z.enum(['auto', 'pipeline']).default('auto'),
})
export type EmbedRequest = z.input<typeof embedRequestSchema>

/** A finished embedding job. */
export interface EmbedResult {
  jobId: string
  /** `single`: this node's llama.cpp; `pipeline`: the Meshnet engine over the ring's members. */
  mode: 'single' | 'pipeline'
  /** SHA-256 of the model. */
  model: string
  pooling: EmbeddingPooling
  /** One L2-normalized vector of the model's width per input, in order. */
  vectors: Float32Array[]
  stats: {
    /** Tokens of every input together (after truncation). */
    promptTokens: number
    /** Inputs that were cut to the limit. */
    truncated: number
    totalMs: number
    members: string[]
    failovers: number
    bytesMoved: number
  }
}

/**
 * The inputs' tokens (with BOS, and EOS when the model adds it), each at most `limit` long: longer
 * ones are cut when `truncate` is set, else ContextOverflowError names the input and its length.
 */
export function embedTokens(
  inputs: readonly string[],
  tokenizer: OpenedTokenizer['tokenizer'],
  limit: number,
  truncate: boolean,
): { tokens: number[][]; truncated: number } {
  let truncated = 0
  const tokens = inputs.map((text, i) => {
    const all = tokenizer.tokenize(text, { addSpecial: true })
    if (all.length <= limit) return all
    if (!truncate) {
      throw new ContextOverflowError(
        `input ${i} is ${all.length} tokens long; an embedding input takes at most ${limit}`,
        { hint: 'shorten it, split it, or ask for truncation (Ollama: truncate: true)' },
      )
    }
    truncated++
    return all.slice(0, limit)
  })
  return { tokens, truncated }
}

/** What an embedding job runs on: the job service's parts. */
export interface EmbedJobContext extends JobServiceComponents {
  served: ServedModel
  tokenizer: OpenedTokenizer['tokenizer']
  engines: SingleEngineQueue
  local: ShardServer | undefined
  /** The pool a job without one runs in (throws when this node is in several). */
  defaultPool(): string | undefined
  /** Tells the job service's listeners. */
  emit(event: JobEvent): void
  /** Jobs running, by id (aborted when the service stops). */
  running: Map<string, AbortController>
  counts: { jobs: number; failed: number }
}

/** The pooling of a model's embeddings, read from its GGUF once (undefined: it makes none). */
export async function modelPooling(path: string): Promise<EmbeddingPooling | undefined> {
  const file = await openGGUF(path)
  try {
    return readEmbeddingPooling(file).pooling
  } finally {
    await file.close()
  }
}

/**
 * Runs an embedding job: on this node's whole-model engine when the plan says it can hold the model
 * (`auto`), else as a pipeline over the ring's members that hold it (also when another single
 * member could hold it: embedding jobs are not forwarded over the job protocol).
 */
export async function runEmbedJob(
  ctx: EmbedJobContext,
  input: EmbedRequest,
  options: { origin: JobOrigin; signal?: AbortSignal; pooling: EmbeddingPooling | undefined },
): Promise<EmbedResult> {
  const { served, nodeId, store, logger, rings } = ctx
  const request = parseWith(embedRequestSchema, input, 'embedding job')
  if (
    request.model !== undefined &&
    request.model !== served.info.sha256 &&
    request.model !== served.info.name
  ) {
    throw new JobRefusedError('ERR_NO_MODEL', `this agent serves ${served.info.name}, not ${request.model}`)
  }
  const pooling = options.pooling
  if (pooling === undefined) {
    throw new UnsupportedModelError(
      `${served.info.name} makes no embeddings (its GGUF declares pooling rank: a reranker)`,
    )
  }
  const facts = served.plan
  const contextSize = Math.min(facts.trainContext, 4096)
  const limit = Math.min(contextSize - 1, MAX_EMBED_TOKENS)
  const { tokens, truncated } = embedTokens(request.inputs, ctx.tokenizer, limit, request.truncate)
  const promptTokens = tokens.reduce((sum, t) => sum + t.length, 0)
  const poolId =
    options.origin === 'p2p' || options.origin === 'control-plane'
      ? request.poolId
      : (request.poolId ?? ctx.defaultPool())
  const members = poolId === undefined ? [] : holders(rings, poolId, served)
  const choice = chooseShardedMode({
    members:
      members.length > 0
        ? members.map((m) => ({ nodeId: m.nodeId, capacityBytes: m.capabilities.capacityBytes }))
        : [{ nodeId, capacityBytes: rings.capacityBytes() }],
    model: facts,
    contextSize,
    mode: request.mode === 'auto' && served.whole?.() === false ? 'pipeline' : request.mode,
    preferNodeId: nodeId,
  })
  const here = choice.mode === 'single' && choice.nodeId === nodeId
  if (choice.mode === 'none' || (!here && facts.unsplittable !== undefined)) {
    throw new JobRefusedError(
      'ERR_NO_PLAN',
      choice.mode === 'none' ? choice.reason : `this node cannot hold the model and ${facts.unsplittable}`,
      { hint: 'run it on a member that can hold the model whole (more --memory)' },
    )
  }
  if (!here && poolId === undefined) {
    throw new JobRefusedError(
      'ERR_NO_PLAN',
      `${choice.reason}, and a job without a pool runs on this node only`,
      {
        hint: 'join a pool whose members hold the model, or ask a node that can hold it whole',
      },
    )
  }
  const mode = here ? ('single' as const) : ('pipeline' as const)
  const jobId = randomUUID()
  const controller = new AbortController()
  const onAbort = () => controller.abort()
  options.signal?.addEventListener('abort', onAbort, { once: true })
  if (options.signal?.aborted) controller.abort()
  ctx.running.set(jobId, controller)
  const started = performance.now()
  store.createJob({ id: jobId, poolId: poolId ?? null, model: served.info.sha256, mode })
  store.updateJob(jobId, {
    status: 'running',
    stats: { origin: options.origin, kind: 'embedding', inputs: tokens.length, reason: choice.reason },
  })
  ctx.counts.jobs++
  logger.info({ jobId, mode, poolId, origin: options.origin, inputs: tokens.length }, 'embedding job started')
  const at = () => Date.now()
  ctx.emit({
    type: 'start',
    jobId,
    at: at(),
    origin: options.origin,
    mode,
    poolId: poolId ?? null,
    promptTokens,
  })
  const onMembers = (list: string[], failover?: { dead: string[] }) =>
    ctx.emit({ type: 'members', jobId, at: at(), members: list, ...(failover ? { failover } : {}) })
  try {
    let run: { vectors: Float32Array[]; members: string[]; failovers: number; bytesMoved: number }
    if (here) {
      // llama.cpp loads the whole file: a model held by parts is completed first.
      await served.ensure?.(
        { layers: [0, served.plan.layers], embed: true, head: true },
        { signal: controller.signal },
      )
      onMembers([nodeId])
      const vectors = await ctx.engines.run((engine) => {
        if (engine.embed === undefined) {
          throw new JobRefusedError('ERR_NO_EMBEDDINGS', "this node's whole-model engine makes no embeddings")
        }
        return engine.embed(tokens, { signal: controller.signal })
      }, controller.signal)
      run = { vectors, members: [nodeId], failovers: 0, bytesMoved: 0 }
    } else {
      run = await embedOnRing(ctx, {
        tokens,
        pooling,
        poolId: poolId!,
        jobId,
        signal: controller.signal,
        onMembers,
      })
    }
    const stats = {
      promptTokens,
      truncated,
      totalMs: performance.now() - started,
      members: run.members,
      failovers: run.failovers,
      bytesMoved: run.bytesMoved,
    }
    store.updateJob(jobId, {
      status: 'completed',
      stats: { origin: options.origin, kind: 'embedding', mode, ...stats },
    })
    logger.info({ jobId, ...stats }, 'embedding job finished')
    ctx.emit({ type: 'end', jobId, at: at(), status: 'completed' })
    return { jobId, mode, model: served.info.sha256, pooling, vectors: run.vectors, stats }
  } catch (err) {
    ctx.counts.failed++
    const status = controller.signal.aborted ? 'cancelled' : 'failed'
    store.updateJob(jobId, {
      status,
      error: (err as Error).message,
      stats: { totalMs: performance.now() - started },
    })
    logger.warn({ jobId, err: (err as Error).message }, 'embedding job failed')
    ctx.emit({ type: 'end', jobId, at: at(), status, error: (err as Error).message })
    throw err
  } finally {
    controller.abort()
    ctx.running.delete(jobId)
    options.signal?.removeEventListener('abort', onAbort)
  }
}

/** Embeddings over a pipeline of the ring's members that hold the model, failing over to the live ones. */
async function embedOnRing(
  ctx: EmbedJobContext,
  job: {
    tokens: number[][]
    pooling: EmbeddingPooling
    poolId: string
    jobId: string
    signal: AbortSignal
    onMembers: (members: string[], failover?: { dead: string[] }) => void
  },
): Promise<{ vectors: Float32Array[]; members: string[]; failovers: number; bytesMoved: number }> {
  const { served, rings, store } = ctx
  const { poolId, jobId } = job
  let plan: ReturnType<typeof planOn>
  try {
    plan = planOn('pipeline', holders(rings, poolId, served), served.plan)
  } catch (err) {
    if (err instanceof ShardPlanError) throw new JobRefusedError('ERR_NO_PLAN', err.message)
    throw err
  }
  job.onMembers(plan.shards.map((s) => s.nodeId))
  const result = await runShardedEmbedding({
    node: ctx.node,
    gate: ctx.gate,
    poolId,
    model: { sha256: served.info.sha256 },
    plan,
    inputs: job.tokens,
    pooling: job.pooling,
    local: ctx.local,
    signal: job.signal,
    logger: ctx.logger,
    replan: (dead) => {
      for (const nodeId of dead) {
        store.recordTrustEvent(nodeId, { kind: 'shard-lost', delta: -0.1, reason: `lost mid-job ${jobId}` })
      }
      const left = holders(rings, poolId, served).filter((m) => !dead.includes(m.nodeId))
      if (left.length === 0) throw new ShardPlanError('no member that holds the model is left')
      const next = planOn('pipeline', left, served.plan)
      job.onMembers(
        next.shards.map((s) => s.nodeId),
        { dead },
      )
      return next
    },
  })
  const members = result.plan.shards.map((s) => s.nodeId)
  for (const nodeId of members) {
    if (nodeId !== ctx.nodeId) {
      store.recordTrustEvent(nodeId, { kind: 'shard-completed', delta: 0.01, reason: `job ${jobId}` })
    }
  }
  return {
    vectors: result.vectors,
    members,
    failovers: result.stats.failovers.length,
    bytesMoved: result.stats.bytes.control + result.stats.bytes.links,
  }
}
