import { randomUUID } from 'node:crypto'
import { SseWriter } from '@meshnet/http'
import { jobIdSchema, nodeIdSchema, poolIdSchema } from '@meshnet/protocols'
import { z } from 'zod'
import type { ChunkRecord, JobRecord } from '../db-schema.ts'
import { conflict, HttpError, noContent, notFound, ok, parseInput, type Route, streaming } from '../http.ts'
import type { ControlPlaneContext, JobEvent } from '../state.ts'
import { bodyNodeId, deviceNotFound } from './devices.ts'

/** Limits of the job queue. */
export const JOB_LIMITS = Object.freeze({
  /** `maxTokens` of one job. */
  maxTokens: 32_768,
  /** Tokens in one append. */
  tokensPerAppend: 4096,
  /** Characters of text in one append. */
  textPerAppend: 60_000,
  /** Characters of output text of one job. */
  textPerJob: 1_048_576,
  /** Characters of an error message. */
  errorChars: 4096,
})

const SSE_PING_MS = 15_000

const createSchema = z.strictObject({
  poolId: poolIdSchema.optional(),
  model: z.string().min(1).max(256).optional(),
  prompt: z.string().min(1),
  maxTokens: z.number().int().min(1).max(JOB_LIMITS.maxTokens),
  temperature: z.number().min(0).max(10).optional(),
  topK: z.number().int().min(0).max(100_000).optional(),
  topP: z.number().gt(0).max(1).optional(),
  seed: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER).optional(),
  mode: z.enum(['auto', 'pipeline', 'tensor']).default('auto'),
})
const claimSchema = z.strictObject({ nodeId: nodeIdSchema, poolId: poolIdSchema.optional() })
const tokensSchema = z.strictObject({
  nodeId: nodeIdSchema,
  tokens: z
    .array(
      z
        .number()
        .int()
        .nonnegative()
        .max(2 ** 32 - 1),
    )
    .max(JOB_LIMITS.tokensPerAppend),
  text: z.string().max(JOB_LIMITS.textPerAppend),
})
const completeSchema = z.strictObject({
  nodeId: nodeIdSchema,
  stats: z.record(z.string().max(64), z.unknown()).default({}),
})
const failSchema = z.strictObject({
  nodeId: nodeIdSchema,
  error: z.string().min(1).max(JOB_LIMITS.errorChars),
})
const jobParams = z.object({ id: jobIdSchema })

const TERMINAL = new Set(['completed', 'failed', 'cancelled'])

/** A job as the API shows it; with `chunks`, also its output so far. */
function jobView(job: JobRecord, chunks?: ChunkRecord[]) {
  return {
    id: job.id,
    status: job.status,
    poolId: job.poolId,
    model: job.model,
    mode: job.mode,
    prompt: job.prompt,
    ...job.params,
    nodeId: job.nodeId,
    attempts: job.attempts,
    tokenCount: job.tokenCount,
    ...(chunks === undefined
      ? {}
      : { tokens: chunks.flatMap((c) => c.tokens), text: chunks.map((c) => c.text).join('') }),
    stats: job.stats,
    error: job.error,
    createdAt: job.createdAt,
    startedAt: job.startedAt,
    finishedAt: job.finishedAt,
  }
}

export function jobRoutes(ctx: ControlPlaneContext): Route[] {
  const requireJob = (params: Record<string, string>): JobRecord => {
    const { id } = parseInput(jobParams, params, 'path')
    const job = ctx.db.getJob(id)
    if (job === undefined) throw notFound('ERR_JOB_NOT_FOUND', `no job ${id}`)
    return job
  }
  /** The job, when `nodeId` holds its lease; 409 otherwise (cancelled, requeued, finished). */
  const requireAssigned = (params: Record<string, string>, nodeId: string): JobRecord => {
    const job = requireJob(params)
    if (job.status !== 'running') {
      throw conflict('ERR_JOB_NOT_RUNNING', `job ${job.id} is ${job.status}; stop working on it`, {
        status: job.status,
      })
    }
    if (job.nodeId !== nodeId) {
      throw conflict('ERR_NOT_ASSIGNED', `job ${job.id} is assigned to ${job.nodeId}, not ${nodeId}`, {
        status: job.status,
      })
    }
    return job
  }
  const finish = (job: JobRecord, status: 'completed' | 'failed' | 'cancelled', update: object) => {
    ctx.db.finishJob(job.id, status, { now: ctx.now(), ...update })
    const done = ctx.db.getJob(job.id)!
    ctx.events.emit(job.id, { type: 'finished', job: done })
    ctx.logger.info({ jobId: job.id, nodeId: job.nodeId, tokens: done.tokenCount }, `job ${status}`)
    return done
  }

  return [
    {
      method: 'POST',
      path: '/v1/jobs',
      handler({ body }) {
        const input = parseInput(createSchema, body)
        if (input.poolId !== undefined && ctx.db.getPool(input.poolId) === undefined) {
          throw notFound(
            'ERR_POOL_NOT_FOUND',
            `pool ${input.poolId} is not registered with this control plane`,
            'register it first (POST /v1/pools)',
          )
        }
        const id = randomUUID()
        const { poolId, model, mode, prompt, ...params } = input
        ctx.db.insertJob({
          id,
          poolId: poolId ?? null,
          model: model ?? null,
          mode,
          prompt,
          params,
          createdAt: ctx.now(),
        })
        ctx.logger.debug({ jobId: id, poolId }, 'job queued')
        return { status: 201, body: { jobId: id, status: 'queued' } }
      },
    },
    {
      method: 'POST',
      path: '/v1/jobs/claim',
      actsFor: ({ body }) => bodyNodeId(body),
      handler({ body }) {
        const input = parseInput(claimSchema, body)
        if (ctx.db.getDevice(input.nodeId) === undefined) throw deviceNotFound(input.nodeId)
        if (input.poolId !== undefined && !ctx.db.ringsOf(input.nodeId).includes(input.poolId)) {
          throw new HttpError(
            403,
            'ERR_NOT_RING_MEMBER',
            `node ${input.nodeId} is not in the ring of pool ${input.poolId}`,
            { hint: `join it first (POST /v1/rings/${input.poolId}/join with the node's certificate)` },
          )
        }
        const job = ctx.db.claimJob(input.poolId ?? null, input.nodeId, ctx.now())
        if (job === undefined) return noContent()
        ctx.logger.info({ jobId: job.id, nodeId: input.nodeId, attempt: job.attempts }, 'job claimed')
        return ok({ ...jobView(job), leaseMs: ctx.jobLeaseMs })
      },
    },
    {
      method: 'GET',
      path: '/v1/jobs/:id',
      handler({ params }) {
        const job = requireJob(params)
        return ok(jobView(job, ctx.db.chunks(job.id)))
      },
    },
    {
      method: 'POST',
      path: '/v1/jobs/:id/tokens',
      actsFor: ({ body }) => bodyNodeId(body),
      handler({ params, body }) {
        const input = parseInput(tokensSchema, body)
        const job = requireAssigned(params, input.nodeId)
        const now = ctx.now()
        if (input.tokens.length === 0 && input.text === '') {
          ctx.db.touchJob(job.id, now)
          return ok({ tokenCount: job.tokenCount })
        }
        const { maxTokens } = job.params
        if (job.tokenCount + input.tokens.length > maxTokens) {
          throw conflict(
            'ERR_TOO_MANY_TOKENS',
            `job ${job.id} asked for at most ${maxTokens} tokens; ${job.tokenCount} were appended already`,
          )
        }
        if (ctx.db.textLength(job.id) + input.text.length > JOB_LIMITS.textPerJob) {
          throw conflict(
            'ERR_OUTPUT_TOO_LARGE',
            `job ${job.id} output is over ${JOB_LIMITS.textPerJob} characters`,
          )
        }
        const chunk = ctx.db.appendChunk(job.id, input.tokens, input.text, now)
        ctx.events.emit(job.id, { type: 'token', chunk })
        return ok({ tokenCount: job.tokenCount + input.tokens.length })
      },
    },
    {
      method: 'POST',
      path: '/v1/jobs/:id/complete',
      actsFor: ({ body }) => bodyNodeId(body),
      handler({ params, body }) {
        const input = parseInput(completeSchema, body)
        const job = requireAssigned(params, input.nodeId)
        return ok(jobView(finish(job, 'completed', { stats: input.stats })))
      },
    },
    {
      method: 'POST',
      path: '/v1/jobs/:id/fail',
      actsFor: ({ body }) => bodyNodeId(body),
      handler({ params, body }) {
        const input = parseInput(failSchema, body)
        const job = requireAssigned(params, input.nodeId)
        return ok(jobView(finish(job, 'failed', { error: input.error })))
      },
    },
    {
      method: 'POST',
      path: '/v1/jobs/:id/cancel',
      handler({ params }) {
        const job = requireJob(params)
        if (TERMINAL.has(job.status)) {
          throw conflict('ERR_JOB_FINISHED', `job ${job.id} is already ${job.status}`, { status: job.status })
        }
        return ok(jobView(finish(job, 'cancelled', { error: 'cancelled by request' })))
      },
    },
    {
      method: 'GET',
      path: '/v1/jobs/:id/stream',
      handler({ params, req, res }) {
        const job = requireJob(params)
        const lastEventId = Number.parseInt(String(req.headers['last-event-id'] ?? '0'), 10)
        const sse = new SseWriter(res, { cacheControl: 'no-store' })
        // Replay and subscribe in the same tick: no append can fall between the two.
        for (const chunk of ctx.db.chunks(job.id, Number.isSafeInteger(lastEventId) ? lastEventId : 0)) {
          sendToken(sse, chunk)
        }
        if (TERMINAL.has(job.status)) {
          sendEnd(sse, job)
          return streaming
        }
        const ping = setInterval(() => void sse.write(': ping\n\n'), SSE_PING_MS)
        ping.unref()
        const unsubscribe = ctx.events.subscribe(job.id, (event: JobEvent) => {
          if (event.type === 'token') sendToken(sse, event.chunk)
          else if (event.type === 'requeued') {
            void sse.send({ status: 'queued', attempts: event.job.attempts }, { event: 'requeued' })
          } else sendEnd(sse, event.job)
        })
        res.on('close', () => {
          unsubscribe()
          clearInterval(ping)
        })
        return streaming
      },
    },
  ]
}

function sendToken(sse: SseWriter, chunk: ChunkRecord): void {
  void sse.send({ tokens: chunk.tokens, text: chunk.text }, { event: 'token', id: chunk.id })
}

/** The last event of a stream (`end` for a completed job, `error` otherwise); closes the response. */
function sendEnd(sse: SseWriter, job: JobRecord): void {
  if (job.status === 'completed') {
    void sse.send({ status: job.status, tokenCount: job.tokenCount, stats: job.stats }, { event: 'end' })
  } else void sse.send({ status: job.status, error: job.error }, { event: 'error' })
  sse.end()
}
