import { InvalidArgumentError } from '@meshnet/core'
import { EngineDisposedError } from '../errors.ts'
import { type BatchStep, canBatch, forwardBatch, segmentsOf } from './batch.ts'
import type { LlamaShard, LogitsWanted, ShardInput, ShardOutput } from './shard-types.ts'

export interface StepBatcherOptions {
  /** Positions one pass takes at most (default, and at most: the shards' `maxBatch`). */
  maxRows?: number
  /**
   * After a pass, how long the next one waits at most for the sessions of the last pass to give
   * their next step: this share of the last pass's time (default 0.25), never more than
   * `maxFillWaitMs` (default 10). 0 starts every pass with whatever is waiting.
   */
  fillWaitShare?: number
  maxFillWaitMs?: number
}

/** What a step batcher has run. */
export interface StepBatcherStats {
  /** Steps run (one per session per pass). */
  steps: number
  /** Passes over the weights. */
  passes: number
  /** Positions run. */
  rows: number
  /** The most sessions one pass has served. */
  widest: number
  /** Steps waiting for the next pass. */
  queued: number
  /**
   * Rounds that waited for the sessions of the round before to give their next step, how long
   * they waited in all (ms), and the sessions waited for that did not come in time.
   */
  fills: { waits: number; ms: number; missed: number }
}

interface Entry {
  step: BatchStep
  signal: AbortSignal | undefined
  resolve: (out: ShardOutput) => void
  reject: (err: unknown) => void
}

/** Positions one batched pass of `shard` takes at most, or undefined when its steps run alone. */
function passRows(shard: LlamaShard): number | undefined {
  return segmentsOf(shard)?.[0]?.maxBatch
}

/**
 * Continuous batching: sessions over the same weights give their steps to one batcher, which runs
 * the steps waiting when the kernels come free as one pass (`forwardBatch`), so that one read of
 * the weights serves every session in flight. Sessions join and leave between passes. Each session
 * gets exactly what `forward` alone gives it. Column slices (tensor parallel) and steps larger than
 * a pass run alone, in order.
 *
 * A session steps again once its last step's result has reached it and come back (a round trip to
 * its coordinator, sampling on the way), so the first of them is back before the others: a pass
 * started with whatever waits would run it alone while the others' steps are on their way, and
 * they would then wait that whole pass. So the next pass waits, for at most a small share of the
 * last pass's time, until every session of the last pass has given its next step; one that has not
 * (it finished, or is slow) is not waited for again until it steps, and one whose last step took
 * longer than that to come back (a pipeline's other stages ran it in between) is not waited for.
 */
export class StepBatcher {
  readonly #maxRows: number
  readonly #fillWaitShare: number
  readonly #maxFillWaitMs: number
  readonly #queue: Entry[] = []
  readonly #stats = { steps: 0, passes: 0, rows: 0, widest: 0 }
  readonly #fills = { waits: 0, ms: 0, missed: 0 }
  /** The sessions of the last round of passes, whose next steps the next round waits for. */
  #recent = new Set<LlamaShard>()
  /** When each session's last step ended, and how long its next step then took to come. */
  readonly #endedAt = new WeakMap<LlamaShard, number>()
  readonly #returnMs = new WeakMap<LlamaShard, number>()
  #lastRoundMs = 0
  /** Wakes a round waiting for steps (`#fill`) when one arrives. */
  #arrived: (() => void) | undefined
  #running = false
  #closed = false

  constructor(options: StepBatcherOptions = {}) {
    const maxRows = options.maxRows ?? Number.POSITIVE_INFINITY
    if (!(maxRows >= 1)) throw new InvalidArgumentError(`maxRows must be at least 1, got ${maxRows}`)
    this.#maxRows = maxRows
    const { fillWaitShare = 0.25, maxFillWaitMs = 10 } = options
    if (!(fillWaitShare >= 0 && fillWaitShare <= 1)) {
      throw new InvalidArgumentError(`fillWaitShare must be between 0 and 1, got ${fillWaitShare}`)
    }
    if (!(maxFillWaitMs >= 0)) {
      throw new InvalidArgumentError(`maxFillWaitMs must be 0 or more, got ${maxFillWaitMs}`)
    }
    this.#fillWaitShare = fillWaitShare
    this.#maxFillWaitMs = maxFillWaitMs
  }

  /** `shard.forward(input, pos)`, run in the next pass with the other sessions' waiting steps. */
  forward(
    shard: LlamaShard,
    input: ShardInput,
    pos: number,
    options: { logits?: LogitsWanted; signal?: AbortSignal } = {},
  ): Promise<ShardOutput> {
    if (this.#closed) return Promise.reject(new EngineDisposedError('the step batcher was closed'))
    return new Promise<ShardOutput>((resolve, reject) => {
      const step: BatchStep = { shard, input, pos, ...(options.logits ? { logits: options.logits } : {}) }
      const ended = this.#endedAt.get(shard)
      if (ended !== undefined) this.#returnMs.set(shard, performance.now() - ended)
      this.#queue.push({ step, signal: options.signal, resolve, reject })
      this.#arrived?.()
      this.#start()
    })
  }

  /**
   * A prompt in steps of at most `chunk` positions, each its own step, so that other sessions'
   * steps run between them (a long prompt does not stall their decoding). The result is that of
   * the whole input: the hidden states of every position, or the logits of the last one (or all);
   * with `logits: 'none'`, a shard with the head gives the hidden states of every position too.
   */
  async forwardChunked(
    shard: LlamaShard,
    input: ShardInput,
    pos: number,
    options: { chunk: number; logits?: LogitsWanted; signal?: AbortSignal },
  ): Promise<ShardOutput> {
    const embd = shard.config.embd
    const n = 'tokens' in input ? input.tokens.length : input.hidden.length / embd
    const chunk = Math.max(1, Math.floor(options.chunk))
    if (n <= chunk) return this.forward(shard, input, pos, options)
    const outs: ShardOutput[] = []
    for (let start = 0; start < n; start += chunk) {
      const end = Math.min(n, start + chunk)
      const part: ShardInput =
        'tokens' in input
          ? { tokens: input.tokens.slice(start, end) }
          : { hidden: input.hidden.subarray(start * embd, end * embd) }
      const last = end === n
      outs.push(
        await this.forward(shard, part, pos + start, {
          ...(options.signal ? { signal: options.signal } : {}),
          ...(options.logits === 'all' || options.logits === 'none' ? { logits: options.logits } : {}),
        }),
      )
      if (!last) options.signal?.throwIfAborted()
    }
    return joinOutputs(outs, n, embd, shard.config.vocab, options.logits === 'all')
  }

  stats(): StepBatcherStats {
    return { ...this.#stats, queued: this.#queue.length, fills: { ...this.#fills } }
  }

  /** Fails the steps still waiting; later calls are refused. */
  close(): void {
    this.#closed = true
    this.#arrived?.()
    for (const entry of this.#queue.splice(0)) {
      entry.reject(new EngineDisposedError('the step batcher was closed'))
    }
  }

  #start(): void {
    if (this.#running) return
    this.#running = true
    // After the I/O callbacks of this turn, so that steps arriving together share the first pass.
    setImmediate(() => void this.#run())
  }

  async #run(): Promise<void> {
    try {
      for (;;) {
        await this.#fill()
        if (this.#queue.length === 0) break
        const waiting = this.#queue.splice(0)
        this.#recent = new Set(waiting.map((e) => e.step.shard))
        const started = performance.now()
        for (const pass of this.#passes(waiting)) await this.#pass(pass)
        this.#lastRoundMs = performance.now() - started
        // Sessions whose step just ended queue their next one (and links deliver theirs) first.
        await new Promise<void>((resolve) => setImmediate(resolve))
      }
    } finally {
      this.#recent.clear()
      this.#running = false
      if (this.#queue.length > 0 && !this.#closed) this.#start()
    }
  }

  /**
   * Waits until every session of the last round has queued its next step, for at most
   * `fillWaitShare` of that round's time (and `maxFillWaitMs`). Those that did not are forgotten
   * until they step again. A session whose last step came back later than that is not waited for:
   * in a pipeline, its next step comes only after the other stages' passes, and this stage serves
   * the sessions that are back in the meantime.
   */
  async #fill(): Promise<void> {
    const limit = Math.min(this.#maxFillWaitMs, this.#lastRoundMs * this.#fillWaitShare)
    const missing = () => {
      const queued = new Set(this.#queue.map((e) => e.step.shard))
      return [...this.#recent].filter(
        (shard) => !queued.has(shard) && (this.#returnMs.get(shard) ?? 0) <= limit,
      )
    }
    if (!(limit > 0) || missing().length === 0) return
    const start = performance.now()
    this.#fills.waits++
    for (let left = limit; left > 0 && !this.#closed && missing().length > 0; ) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        this.#arrived = () => {
          clearTimeout(timer)
          resolve()
        }
      })
      this.#arrived = undefined
      left = start + limit - performance.now()
    }
    this.#fills.ms += performance.now() - start
    const late = missing()
    this.#fills.missed += late.length
    for (const shard of late) this.#recent.delete(shard)
  }

  /** Waiting steps in passes, in arrival order: each joins the first pass it can share. */
  #passes(entries: Entry[]): Entry[][] {
    const passes: Array<{ entries: Entry[]; rows: number; limit: number }> = []
    for (const entry of entries) {
      if (entry.signal?.aborted) {
        entry.reject(entry.signal.reason ?? new DOMException('aborted', 'AbortError'))
        continue
      }
      const { shard } = entry.step
      const n = rowsOf(entry.step)
      const pass = passes.find(
        (p) =>
          p.rows + n <= p.limit &&
          !p.entries.some((e) => e.step.shard === shard) &&
          canBatch(p.entries[0]!.step.shard, shard),
      )
      if (pass) {
        pass.entries.push(entry)
        pass.rows += n
      } else {
        passes.push({ entries: [entry], rows: n, limit: Math.min(this.#maxRows, passRows(shard) ?? 0) })
      }
    }
    return passes.map((p) => p.entries)
  }

  async #pass(entries: Entry[]): Promise<void> {
    const rows = entries.reduce((sum, e) => sum + rowsOf(e.step), 0)
    this.#stats.passes++
    this.#stats.steps += entries.length
    this.#stats.rows += rows
    this.#stats.widest = Math.max(this.#stats.widest, entries.length)
    try {
      // One session's abort ends its own step only: a shared pass runs without signals.
      const signal = entries.length === 1 ? entries[0]!.signal : undefined
      const outs = await forwardBatch(
        entries.map((e) => e.step),
        signal ? { signal } : {},
      )
      const now = performance.now()
      for (const [i, e] of entries.entries()) {
        this.#endedAt.set(e.step.shard, now)
        e.resolve(outs[i]!)
      }
    } catch (err) {
      if (entries.length === 1) {
        entries[0]!.reject(err)
        return
      }
      // One step's fault (a position outside its cache, say) must not fail the others: each runs
      // alone, rewriting whatever the failed pass wrote at its positions.
      for (const e of entries) {
        try {
          e.resolve((await forwardBatch([e.step], e.signal ? { signal: e.signal } : {}))[0]!)
        } catch (own) {
          e.reject(own)
        }
      }
    }
  }
}

function rowsOf(step: BatchStep): number {
  const { input, shard } = step
  return 'tokens' in input ? input.tokens.length : input.hidden.length / shard.config.embd
}

/** The outputs of consecutive chunks of one input as the output of the whole input. */
function joinOutputs(outs: ShardOutput[], n: number, embd: number, vocab: number, all: boolean): ShardOutput {
  const last = outs.at(-1)!
  if (last.kind === 'hidden') {
    const hidden = new Float32Array(n * embd)
    let at = 0
    for (const out of outs) {
      if (out.kind !== 'hidden') throw new Error('unreachable: chunks of one shard give one kind')
      hidden.set(out.hidden, at)
      at += out.hidden.length
    }
    return { kind: 'hidden', n, hidden }
  }
  if (!all) return { ...last, n }
  const logits = new Float32Array(n * vocab)
  let at = 0
  for (const out of outs) {
    if (out.kind !== 'logits') throw new Error('unreachable: chunks of one shard give one kind')
    logits.set(out.logits, at)
    at += out.logits.length
  }
  return { kind: 'logits', n, rows: n, logits }
}
