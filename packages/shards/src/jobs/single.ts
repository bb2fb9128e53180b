import type { JobResult, JobToken } from '@meshnet/protocols'
import { pushable } from 'it-pushable'
import { type ConstraintFactory, type ParsedJobRequest, samplingOf } from './request.ts'
import type { ServedModel, SingleEngine } from './types.ts'

/**
 * The whole-model engine, made on first use. It runs up to `parallel` generations at once (the
 * engine decodes them together, one sequence each); more jobs wait their turn, first come first
 * served.
 */
export class SingleEngineQueue {
  #engine: Promise<SingleEngine> | undefined
  readonly #create: () => Promise<SingleEngine>
  readonly #parallel: number
  readonly #waiting: Array<() => void> = []
  #running = 0

  constructor(create: () => Promise<SingleEngine>, parallel = 1) {
    this.#create = create
    this.#parallel = parallel
  }

  /**
   * Runs `task` on the engine once a sequence is free. A job aborted while it waits for one, or for
   * the engine to load, ends at once (the engine goes on loading for the next job).
   */
  async run<T>(task: (engine: SingleEngine) => Promise<T>, signal?: AbortSignal): Promise<T> {
    this.#engine ??= this.#create()
    const engine = this.#engine
    if (this.#running >= this.#parallel) {
      let wake!: () => void
      const turn = new Promise<void>((resolve) => {
        wake = resolve
      })
      this.#waiting.push(wake)
      try {
        await abortable(turn, signal)
      } catch (err) {
        // Gone before its turn: the turn passes on when it comes.
        const at = this.#waiting.indexOf(wake)
        if (at >= 0) this.#waiting.splice(at, 1)
        else this.#waiting.shift()?.()
        throw err
      }
    }
    this.#running++
    try {
      return await task(await abortable(engine, signal))
    } finally {
      this.#running--
      this.#waiting.shift()?.()
    }
  }

  async dispose(): Promise<void> {
    await this.#engine?.then((e) => e.dispose()).catch(() => {})
  }
}

/** `promise`, or the signal's reason as soon as it is aborted. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise
  if (signal.aborted) return Promise.reject(signal.reason)
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort)
        resolve(value)
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort)
        reject(err)
      },
    )
  })
}

/** Runs a job on this node's whole-model engine, streaming its tokens as they come. */
export async function* runSingle(job: {
  engines: SingleEngineQueue
  served: ServedModel
  nodeId: string
  request: ParsedJobRequest
  promptTokens: number[]
  /** With a `grammar`: the constraint of this run. */
  constraint: ConstraintFactory | undefined
  jobId: string
  signal: AbortSignal
  started: number
}): AsyncGenerator<JobToken, JobResult, undefined> {
  const { request, served, jobId, started } = job
  const tokens = pushable<JobToken>({ objectMode: true })
  let index = 0
  let firstTokenAt: number | undefined
  const done = job.engines.run(async (engine): Promise<JobResult> => {
    const stream = engine.stream(job.promptTokens, {
      maxTokens: request.maxTokens,
      ...samplingOf(request),
      ...(request.logprobs === undefined ? {} : { logprobs: request.logprobs }),
      ...(job.constraint === undefined ? {} : { constraint: job.constraint() }),
      signal: job.signal,
    })
    for (let step = await stream.next(); ; step = await stream.next()) {
      if (step.done) {
        const { timings } = step.value
        return {
          jobId,
          mode: 'single',
          model: served.info.sha256,
          tokens: step.value.tokens,
          text: step.value.text,
          stopReason: step.value.stopReason,
          stats: {
            tokensPerSecond: timings.tokensPerSecond,
            timeToFirstTokenMs: firstTokenAt === undefined ? 0 : firstTokenAt - started,
            totalMs: performance.now() - started,
            promptTokens: timings.promptTokens,
            completionTokens: step.value.tokens.length,
            hopLatencyMs: 0,
            bytesMoved: 0,
            failovers: 0,
            members: [job.nodeId],
          },
        }
      }
      firstTokenAt ??= performance.now()
      if (step.value.textOnly)
        tokens.push({ id: step.value.id, text: step.value.text, index: index - 1, textOnly: true })
      else
        tokens.push({
          id: step.value.id,
          text: step.value.text,
          index: index++,
          ...(step.value.logprobs === undefined ? {} : { logprobs: step.value.logprobs }),
        })
    }
  }, job.signal)
  // Ended without the error: it-pushable drops buffered values on an error, and every token the
  // engine gave comes out before the job's error does (from `await done`).
  done.then(
    () => tokens.end(),
    () => tokens.end(),
  )
  yield* tokens
  return await done
}
