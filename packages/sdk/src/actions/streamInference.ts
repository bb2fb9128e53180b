import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { JobFailedError, JobProtocolError } from '@meshnet/protocols'
import { type JobRequest, type JobResult, type JobToken, requestJob } from '@meshnet/protocols'
import type { SDKClient } from '../client.ts'
import type {
  DataLimitExceededError,
  NoNodesFoundError as NoNodesFound,
  NotConnectedError as NotConnected,
  RequestTimeoutError as RequestTimeout,
} from '../errors.ts'
import { NoNodesFoundError, NotConnectedError, RequestTimeoutError } from '../errors.ts'
import { anySignal, peerTarget, retryable } from '../internal/helpers.ts'
import { idleTimer, ready, requireSession } from '../internal/session.ts'
import { TokenQueue } from '../token-queue.ts'
import type { InferenceRequest, InferenceStream, Session } from '../types.ts'
import { jobCandidates } from './discoverNodes.ts'

export type StreamInferenceParameters = InferenceRequest
export type StreamInferenceReturnType = InferenceStream
/** What the action throws (by `name`); stream errors arrive through the stream and `.result`. */
export type StreamInferenceErrorType =
  | NotConnected
  | NoNodesFound
  | RequestTimeout
  | DataLimitExceededError
  | JobFailedError
  | JobProtocolError

/**
 * Streams a completion: iterate the returned object for tokens as they arrive, or await
 * `.result`. Emits `stream:token` per token and `stream:end` at the end. Before the first token
 * a failed attempt (node unreachable, rate-limited, busy, timed out) is retried on the next node,
 * `maxRetries` times, `retryDelay` apart; after it, failures end the stream.
 */
export function streamInference(client: SDKClient, request: StreamInferenceParameters): InferenceStream {
  return streamJob(client, request, { caller: 'streamInference()' })
}

/** A job request (a prompt or chat messages) and where to run it: what `runJob` takes. */
export type JobInput = Omit<JobRequest, 'poolId'> &
  Pick<InferenceRequest, 'target' | 'poolId' | 'nodeId' | 'signal'>

/**
 * `streamInference` for any job request; `check` runs first, and what it throws ends the stream
 * like any job error. Shared by the actions that stream a job.
 */
export function streamJob(
  client: SDKClient,
  request: JobInput,
  options: { caller: string; check?: () => void },
): InferenceStream {
  const requestId = randomUUID()
  const queue = new TokenQueue<JobToken>()
  const result = (async () => {
    const session = requireSession(client, options.caller)
    options.check?.()
    const controller = new AbortController()
    session.jobs.add(controller)
    try {
      const run = runJob(client, session, request, controller.signal)
      for (;;) {
        const step = await run.next()
        if (step.done) return step.value
        queue.push(step.value.token)
        client.emit('stream:token', { requestId, nodeId: step.value.nodeId, token: step.value.token })
      }
    } finally {
      session.jobs.delete(controller)
    }
  })()
  result.then(
    (value) => {
      queue.end()
      client.emit('stream:end', { requestId, result: value, cancelled: false })
    },
    (err: Error) => {
      queue.fail(err)
      client.emit('stream:end', { requestId, error: err, cancelled: request.signal?.aborted === true })
    },
  )
  return { requestId, result, [Symbol.asyncIterator]: () => queue[Symbol.asyncIterator]() }
}

/** Runs a job and returns the finished result (tokens are also emitted as `stream:token`). */
export function submitJob(client: SDKClient, request: InferenceRequest): Promise<JobResult> {
  return streamInference(client, request).result
}

export async function* runJob(
  client: SDKClient,
  session: Session,
  request: JobInput,
  sessionSignal: AbortSignal,
): AsyncGenerator<{ nodeId: string; token: JobToken }, JobResult, undefined> {
  const p2p = client.config.p2pConfig
  const { target, poolId: requestedPool, nodeId, signal, ...job } = request
  const poolId = target === 'public' ? undefined : (requestedPool ?? session.pool?.poolId)
  if (target === 'pool' && poolId === undefined) {
    throw new NoNodesFoundError('target "pool" needs a pool: give the SDK a dataDir with a pool certificate')
  }
  const candidates = await jobCandidates(client, session, { model: job.model, poolId, nodeId, signal })
  let lastError: Error | undefined
  for (let attempt = 0; attempt <= p2p.maxRetries; attempt++) {
    if (attempt > 0) await sleep(p2p.retryDelay, undefined, { signal: anySignal(signal, sessionSignal) })
    const peer = candidates[attempt % candidates.length]!
    const idle = idleTimer(client, p2p.requestTimeout, [signal, sessionSignal])
    let started = false
    try {
      await ready(client, session, peer, poolId, idle.signal)
      client.debug(
        'job',
        'debug',
        `job on ${peer.nodeId} (attempt ${attempt + 1}, ${poolId ? `pool ${poolId}` : 'public'})`,
      )
      const tokens = requestJob(
        session.node,
        peerTarget(peer),
        { ...job, ...(poolId ? { poolId } : {}) },
        { signal: idle.signal, timeoutMs: p2p.dialTimeout },
      )
      for (;;) {
        const step = await tokens.next()
        idle.reset()
        if (step.done) return step.value
        started = true
        yield { nodeId: peer.nodeId, token: step.value }
      }
    } catch (err) {
      signal?.throwIfAborted()
      if (session.limit !== undefined) throw session.limit
      if (sessionSignal.aborted) throw new NotConnectedError('a running job')
      const error = idle.timedOut()
        ? new RequestTimeoutError(`${peer.nodeId} sent nothing for ${p2p.requestTimeout} ms`, {
            cause: err,
          })
        : (err as Error)
      if (started || !retryable(error) || attempt === p2p.maxRetries) throw error
      lastError = error
      client.debug(
        'job',
        'info',
        `attempt ${attempt + 1} on ${peer.nodeId} failed, retrying: ${error.message}`,
      )
    } finally {
      idle.clear()
    }
  }
  throw lastError ?? new NoNodesFoundError('no attempt was made')
}
