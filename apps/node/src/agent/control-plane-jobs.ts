import { setTimeout as sleep } from 'node:timers/promises'
import type { Logger } from '@meshnet/core'
import {
  type JobRequest,
  type JobResult,
  type JobRunner,
  type JobToken,
  jobRequestSchema,
} from '@meshnet/protocols'
import {
  appendedSchema,
  CLIENT,
  type ClaimedJob,
  type ControlPlaneClient,
  causeText,
  finishedJobSchema,
  type Piece,
  type UploadEnd,
} from './control-plane-client.ts'

/**
 * Running jobs claimed from the control plane: the job request checked, the runner's output
 * appended as it streams (renewing the lease), and the job completed or failed, retrying through
 * an outage while the lease could still hold.
 */
export function controlPlaneJobs(init: {
  client: ControlPlaneClient
  nodeId: string
  logger: Logger
  /** Aborts when the agent stops. */
  signal: () => AbortSignal
}) {
  const { client, nodeId, logger, signal } = init
  const jobRequest = (job: ClaimedJob): JobRequest | string => {
    const parsed = jobRequestSchema.safeParse({
      ...(job.poolId === null ? {} : { poolId: job.poolId }),
      ...(job.model === null ? {} : { model: job.model }),
      prompt: job.prompt,
      maxTokens: job.maxTokens,
      temperature: job.temperature,
      topK: job.topK,
      topP: job.topP,
      seed: job.seed,
      mode: job.mode,
    })
    if (parsed.success) return parsed.data
    const issue = parsed.error.issues[0]!
    return `node ${nodeId} cannot run this job: ${issue.path.join('.') || 'request'}: ${issue.message}`
  }

  /** Posts `complete` or `fail`, retrying through an client.outage while the job's lease could still hold. */
  const report = async (
    job: Pick<ClaimedJob, 'id' | 'leaseMs'>,
    action: 'complete' | 'fail',
    body: object,
  ): Promise<boolean> => {
    const deadline = Date.now() + job.leaseMs
    let delay: number = CLIENT.backoffMs
    for (;;) {
      try {
        const answer = await client.request('POST', `/v1/jobs/${job.id}/${action}`, { nodeId, ...body })
        const what = `the ${action} of job ${job.id}`
        if (answer.status === 200) {
          client.parse(finishedJobSchema, answer, what)
          return true
        }
        if (answer.status !== 409) client.refused(answer, what)
        else
          logger.info(
            { jobId: job.id, reason: client.refusal(answer, what).message },
            'the control plane took the job back',
          )
        return false
      } catch (err) {
        client.failed(err)
        if (signal().aborted || Date.now() + delay > deadline) return false
        await sleep(delay, undefined, { signal: signal() }).catch(() => {})
        delay = Math.min(delay * 2, CLIENT.maxBackoffMs)
      }
    }
  }

  /**
   * Appends a job's output as it streams: everything pending goes in one append (within the control
   * plane's per-append limits) at most every `flushMs`; an empty append renews the lease while the
   * runner is still on the prompt. Ends when the output is all sent, or when the control plane takes
   * the job back (409) or refuses the output.
   */
  const startUpload = (job: ClaimedJob, signal: AbortSignal) => {
    const pending: Piece[] = []
    let finished = false
    let wake: (() => void) | undefined
    const renewMs = Math.max(1_000, Math.floor(job.leaseMs / 3))
    const pause = (ms: number) =>
      new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer)
          signal.removeEventListener('abort', done)
          wake = undefined
          resolve()
        }
        const timer = setTimeout(done, ms)
        signal.addEventListener('abort', done, { once: true })
        wake = done
      })
    const batch = () => {
      let count = 0
      let tokens = 0
      let chars = 0
      for (const piece of pending) {
        if (piece.id !== undefined && tokens === CLIENT.tokensPerAppend) break
        if (count > 0 && chars + piece.text.length > CLIENT.textPerAppend) break
        count++
        chars += piece.text.length
        if (piece.id !== undefined) tokens++
      }
      const taken = pending.slice(0, count)
      return {
        count,
        tokens: taken.flatMap((p) => (p.id === undefined ? [] : [p.id])),
        text: taken.map((p) => p.text).join(''),
      }
    }
    const loop = async (): Promise<UploadEnd> => {
      let lastAck = Date.now()
      let delay: number = CLIENT.flushMs
      for (;;) {
        if (signal.aborted) return { ok: false, gone: true, reason: 'stopped' }
        const next = batch()
        if (next.count === 0 && (finished || Date.now() - lastAck < renewMs)) {
          if (finished) return { ok: true }
          await pause(CLIENT.flushMs)
          continue
        }
        try {
          const answer = await client.request('POST', `/v1/jobs/${job.id}/tokens`, {
            nodeId,
            tokens: next.tokens,
            text: next.text,
          })
          const what = `the output of job ${job.id}`
          if (answer.status !== 200) {
            const { code, message } = client.refusal(answer, what)
            const gone = code === 'ERR_JOB_NOT_RUNNING' || code === 'ERR_NOT_ASSIGNED'
            return { ok: false, gone, reason: message }
          }
          client.parse(appendedSchema, answer, what)
          pending.splice(0, next.count)
          lastAck = Date.now()
          delay = CLIENT.flushMs
          if (!finished) await pause(CLIENT.flushMs)
        } catch (err) {
          client.failed(err)
          if (Date.now() - lastAck > job.leaseMs) {
            return {
              ok: false,
              gone: true,
              reason: `the control plane was unavailable for longer than the job's ${job.leaseMs} ms lease`,
            }
          }
          await pause(delay)
          delay = Math.min(delay * 2, CLIENT.maxBackoffMs)
        }
      }
    }
    // A runner's last piece may only complete the text of the token before it (llama.cpp's tail):
    // each piece is held until the next one or the result shows whether it is a token of its own.
    let held: JobToken | undefined
    let lastIndex = -1
    let queuedTokens = 0
    const enqueue = (piece: JobToken, textOnly: boolean) => {
      const fresh = !textOnly && piece.index > lastIndex
      if (fresh) {
        lastIndex = piece.index
        queuedTokens++
      }
      pending.push({ id: fresh ? piece.id : undefined, text: piece.text })
      if (pending.length >= CLIENT.tokensPerAppend) wake?.()
    }
    return {
      push(token: JobToken) {
        if (held !== undefined) enqueue(held, false)
        held = token
      },
      /** The output is complete: `result` tells whether the held piece is a token. */
      finish(result: JobResult | undefined) {
        if (held !== undefined) enqueue(held, result !== undefined && queuedTokens >= result.tokens.length)
        held = undefined
        finished = true
        wake?.()
      },
      ended: loop(),
    }
  }

  const run = async (runner: JobRunner, job: ClaimedJob): Promise<boolean> => {
    const request = jobRequest(job)
    if (typeof request === 'string') {
      logger.warn({ jobId: job.id }, request)
      await report(job, 'fail', { error: request.slice(0, CLIENT.errorChars) })
      return false
    }
    logger.info({ jobId: job.id, poolId: job.poolId }, 'running a job from the control plane')
    const abort = new AbortController()
    const jobSignal = AbortSignal.any([abort.signal, signal()])
    const upload = startUpload(job, jobSignal)
    void upload.ended.then((end) => {
      if (!end.ok) abort.abort()
    })
    let result: JobResult | undefined
    let error: unknown
    try {
      const stream = runner.run(request, { origin: 'control-plane', signal: jobSignal })
      for (;;) {
        const step = await stream.next()
        if (step.done) {
          result = step.value
          break
        }
        upload.push(step.value)
      }
    } catch (err) {
      error = err
    }
    upload.finish(result)
    const end = await upload.ended
    if (signal().aborted) return false // stopping: the lease lapses and the job goes back to the queue
    if (!end.ok && end.gone) {
      logger.info({ jobId: job.id, reason: end.reason }, 'stopped a job the control plane took back')
      return false
    }
    if (!end.ok || result === undefined) {
      const why = !end.ok ? `the control plane refused its output: ${end.reason}` : causeText(error)
      logger.warn({ jobId: job.id, err: why }, 'a job from the control plane failed')
      await report(job, 'fail', { error: (why || 'the job failed').slice(0, CLIENT.errorChars) })
      return false
    }
    const stats = { ...result.stats, mode: result.mode, model: result.model, stopReason: result.stopReason }
    if (!(await report(job, 'complete', { stats }))) return false
    logger.info({ jobId: job.id, tokens: result.tokens.length }, 'completed a job from the control plane')
    return true
  }

  return {
    /** Runs a claimed job; true when the control plane took its result. */
    run,
    report,
  }
}
