import { InvalidArgumentError } from '@meshnet/core'
import { EngineDisposedError } from '../errors.ts'
import { type BatchStep, canBatch, forwardBatch, segmentsOf } from './batch.ts'
import type { LlamaShard, LogitsWanted, ShardInput, ShardOutput } from './shard-types.ts'

export interface StepBatcherOptions {
  /** Positions one pass takes at most (default, and at most: the shards' `maxBatch`). */
  maxRows?: number
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
 * whatever steps are waiting when the kernels come free as one pass (`forwardBatch`), so that one
 * read of the weights serves every session in flight. Sessions join and leave between passes;
 * nothing waits for a batch to fill. Each session gets exactly what `forward` alone gives it.
 * Column slices (tensor parallel) and steps larger than a pass run alone, in order.
 */
export class StepBatcher {
  readonly #maxRows: number
  readonly #queue: Entry[] = []
  readonly #stats = { steps: 0, passes: 0, rows: 0, widest: 0 }
  #running = false
  #closed = false

  constructor(options: StepBatcherOptions = {}) {
    const maxRows = options.maxRows ?? Number.POSITIVE_INFINITY
    if (!(maxRows >= 1)) throw new InvalidArgumentError(`maxRows must be at least 1, got ${maxRows}`)
    this.#maxRows = maxRows
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
      this.#queue.push({ step, signal: options.signal, resolve, reject })
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
    return { ...this.#stats, queued: this.#queue.length }
  }

  /** Fails the steps still waiting; later calls are refused. */
  close(): void {
    this.#closed = true
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
      while (this.#queue.length > 0) {
        const waiting = this.#queue.splice(0)
        for (const pass of this.#passes(waiting)) await this.#pass(pass)
        // Sessions whose step just ended queue their next one (and links deliver theirs) first.
        await new Promise<void>((resolve) => setImmediate(resolve))
      }
    } finally {
      this.#running = false
      if (this.#queue.length > 0) this.#start()
    }
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
      for (const [i, e] of entries.entries()) e.resolve(outs[i]!)
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
