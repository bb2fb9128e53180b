import type { Logger } from '@meshnet/core'
import {
  estimateWeightBytes,
  type KernelFactory,
  type Kernels,
  type LlamaConfig,
  planSegments,
  resolveSpec,
  type ShardSpec,
  ShardWeights,
} from '@meshnet/engine'
import type { GGUFReader } from '@meshnet/gguf'
import { ShardCapacityError } from './errors.ts'

/** A wasm32 kernel memory holds at most 4 GiB. */
const KERNEL_MEMORY_BYTES = 2 ** 32
/** Kernel memories of dropped segments kept for reuse. */
const MAX_SPARE_MEMORIES = 8

/** The ranges of one weight segment, resolved against the model. */
interface SegmentSpec {
  layers: readonly [number, number]
  heads: readonly [number, number]
  ffn: readonly [number, number]
  embed: boolean
  head: boolean
  vocab: readonly [number, number] | undefined
}

export type SegmentState = 'loading' | 'ready' | 'failed'

/** One weight segment in memory (or loading): consecutive layers of one model, one column slice. */
interface Segment {
  readonly key: string
  readonly sha: string
  readonly spec: SegmentSpec
  /** Estimated until loaded, then exact. */
  bytes: number
  loadedBytes: number
  state: SegmentState
  error?: string
  /** Sessions using it. */
  refs: number
  /** Held for the ring's current plan: kept while idle (`pin`). */
  pinned: boolean
  lastUsed: number
  loading: Promise<ShardWeights>
  weights: ShardWeights | undefined
}

/** A segment a shard needs: one in memory, or one to load. */
interface Piece {
  segment: Segment | undefined
  spec: SegmentSpec
  estimate: number
}

/** What `stats().segments` reports of each segment. */
export interface SegmentReport {
  sha256: string
  layers: [number, number]
  heads: [number, number]
  ffn: [number, number]
  embed: boolean
  head: boolean
  bytes: number
  loadedBytes: number
  state: SegmentState
  error?: string
  sessions: number
  pinned: boolean
}

/** Weights taken for a session (or a preload), with their share of the budget. */
export interface WeightLease {
  readonly weights: Promise<ShardWeights[]>
  /** Segments already in memory (none loaded for this lease). */
  readonly reused: boolean
  /** Bytes of weights loaded for this lease. */
  readonly loadBytes: number
  release(): void
}

const same = (a: readonly number[] | undefined, b: readonly number[] | undefined) =>
  a === b || (a !== undefined && b !== undefined && a[0] === b[0] && a[1] === b[1])

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(bytes < 10 * 2 ** 20 ? 1 : 0)} MiB`
}

/**
 * The shard weights of one member, in segments of consecutive layers, each in kernel memory of its
 * own when the member has a kernel factory (so a member holds more than one 4 GiB wasm32 memory).
 * A shard is assembled from the segments that cover it: a member whose range grows (failover) keeps
 * what it holds and loads only the layers it gains, never two copies of a range. Everything comes
 * out of one budget with the sessions' KV caches and scratch; idle unpinned segments are evicted
 * first, oldest first.
 */
export class WeightCache {
  readonly #kernels: Kernels | KernelFactory
  readonly #segmentBytes: number
  readonly #budget: number
  readonly #logger: Logger
  readonly #segments = new Map<string, Segment>()
  /**
   * Kernel sets of dropped segments, memory and all, for the next segments to load into: a
   * WebAssembly memory is freed only when garbage-collected, so a member whose shard changes would
   * otherwise hold its old and new weights at once.
   */
  readonly #spare: Kernels[] = []
  #sessionBytes = 0

  constructor(init: {
    kernels: Kernels | KernelFactory
    memoryBytes: number
    /** Weight bytes per segment at most (factory mode; default `DEFAULT_SEGMENT_BYTES`). */
    segmentBytes: number
    logger: Logger
  }) {
    this.#kernels = init.kernels
    this.#budget = init.memoryBytes
    this.#segmentBytes = typeof init.kernels === 'function' ? init.segmentBytes : Number.POSITIVE_INFINITY
    this.#logger = init.logger
  }

  get sessionBytes(): number {
    return this.#sessionBytes
  }

  get weightBytes(): number {
    let sum = 0
    for (const s of this.#segments.values()) sum += s.bytes
    return sum
  }

  get size(): number {
    return this.#segments.size
  }

  segments(): SegmentReport[] {
    return [...this.#segments.values()].map((s) => ({
      sha256: s.sha,
      layers: [...s.spec.layers],
      heads: [...s.spec.heads],
      ffn: [...s.spec.ffn],
      embed: s.spec.embed,
      head: s.spec.head,
      bytes: s.bytes,
      loadedBytes: s.loadedBytes,
      state: s.state,
      ...(s.error === undefined ? {} : { error: s.error }),
      sessions: s.refs,
      pinned: s.pinned,
    }))
  }

  /**
   * Takes the segments of shard `spec` of model `sha` (at `path`, open as `file`) plus `sessionBytes`
   * of the budget, loading the segments it does not hold. Throws ShardCapacityError, naming what is
   * needed, when the budget cannot take it even after evicting idle segments.
   */
  lease(input: {
    sha: string
    path: string
    file: GGUFReader
    config: LlamaConfig
    spec: ShardSpec
    sessionBytes: number
    describe: string
    pin?: boolean
  }): WeightLease {
    const plan = resolveSpec(input.config, input.spec)
    const want: SegmentSpec = {
      layers: plan.layers,
      heads: plan.heads,
      ffn: plan.ffn,
      embed: plan.embed,
      head: plan.head,
      vocab: input.spec.vocab,
    }
    const pieces = this.#cover(input.sha, want, input.file, input.config)
    const loadBytes = pieces.reduce((sum, p) => sum + (p.segment ? 0 : p.estimate), 0)
    const keep = new Set(pieces.flatMap((p) => (p.segment ? [p.segment.key] : [])))
    const need = input.sessionBytes + loadBytes
    this.#evict(need, keep)
    const used = this.weightBytes + this.#sessionBytes
    if (used + need > this.#budget) {
      const held = pieces.reduce((sum, p) => sum + (p.segment?.bytes ?? 0), 0)
      throw new ShardCapacityError(
        `${input.describe} needs ${mib(need)} more (weights ${mib(loadBytes)} to load${held > 0 ? `, ${mib(held)} already loaded` : ''}, KV cache and scratch ${mib(input.sessionBytes)}); this member has ${mib(Math.max(0, this.#budget - used))} free of its ${mib(this.#budget)} shard budget`,
        {
          hint: 'give the member a larger memory budget (--memory), use a smaller context, or spread the model over more members',
          details: { need, free: Math.max(0, this.#budget - used), budget: this.#budget },
        },
      )
    }
    const segments = pieces.map((p) => p.segment ?? this.#load(input.sha, input.path, p))
    for (const s of segments) {
      s.refs++
      s.lastUsed = Date.now()
      if (input.pin) s.pinned = true
    }
    this.#sessionBytes += input.sessionBytes
    let released = false
    return {
      weights: Promise.all(segments.map((s) => s.loading)),
      reused: loadBytes === 0,
      loadBytes,
      release: () => {
        if (released) return
        released = true
        this.#sessionBytes -= input.sessionBytes
        for (const s of segments) {
          s.refs--
          s.lastUsed = Date.now()
        }
      },
    }
  }

  /** How many segments shard `spec` of model `sha` would take (in memory or to load). */
  segmentCount(sha: string, file: GGUFReader, config: LlamaConfig, spec: ShardSpec): number {
    const plan = resolveSpec(config, spec)
    return this.#cover(
      sha,
      {
        layers: plan.layers,
        heads: plan.heads,
        ffn: plan.ffn,
        embed: plan.embed,
        head: plan.head,
        vocab: spec.vocab,
      },
      file,
      config,
    ).length
  }

  /**
   * The ring's plan changed: segments `keep` rejects are no longer held for it. Idle ones are freed
   * now (a member's memory holds its current shard, not its past ones); those in use go when idle.
   */
  repin(keep: (segment: { sha: string; layers: readonly [number, number] }) => boolean): void {
    for (const s of [...this.#segments.values()]) {
      if (keep({ sha: s.sha, layers: s.spec.layers })) continue
      s.pinned = false
      if (s.refs === 0 && s.state === 'ready') this.#drop(s)
    }
  }

  /** Frees idle, unpinned segments unused for `idleMs`. */
  sweep(idleMs: number): void {
    const now = Date.now()
    let dropped = false
    for (const s of [...this.#segments.values()]) {
      if (s.refs === 0 && !s.pinned && s.weights !== undefined && now - s.lastUsed > idleMs) {
        this.#drop(s)
        dropped = true
      }
    }
    // Spare memories kept through a quiet sweep go back to the system.
    if (!dropped) for (const kernels of this.#spare.splice(0)) void kernels.dispose()
  }

  async dispose(): Promise<void> {
    for (const s of this.#segments.values()) {
      await s.loading.catch(() => {})
      s.weights?.dispose()
    }
    this.#segments.clear()
    await Promise.all(this.#spare.splice(0).map((k) => k.dispose()))
  }

  /**
   * The segments that make up `want`, in layer order: those in memory that fit where they stand
   * (same model and columns, the embedding only at the start, the head only at the end), and new
   * ones, cut by `planSegments`, for the gaps between them.
   */
  #cover(sha: string, want: SegmentSpec, file: GGUFReader, config: LlamaConfig): Piece[] {
    const [l0, l1] = want.layers
    const fits = (s: Segment, at: number) =>
      s.sha === sha &&
      s.state !== 'failed' &&
      same(s.spec.heads, want.heads) &&
      same(s.spec.ffn, want.ffn) &&
      s.spec.layers[0] === at &&
      s.spec.layers[1] <= l1 &&
      (s.spec.layers[1] > at || at === l1) &&
      s.spec.embed === (want.embed && at === l0) &&
      s.spec.head === (want.head && s.spec.layers[1] === l1) &&
      same(s.spec.vocab, s.spec.layers[1] === l1 ? want.vocab : undefined)
    const pieces: Piece[] = []
    const fresh = (a: number, b: number) => {
      const spec: ShardSpec = {
        layers: [a, b],
        heads: want.heads,
        ffn: want.ffn,
        embed: want.embed && a === l0,
        head: want.head && b === l1,
        vocab: b === l1 ? want.vocab : undefined,
      }
      for (const part of planSegments(file, config, spec, this.#segmentBytes)) {
        const plan = resolveSpec(config, part)
        pieces.push({
          segment: undefined,
          spec: {
            layers: plan.layers,
            heads: plan.heads,
            ffn: plan.ffn,
            embed: plan.embed,
            head: plan.head,
            vocab: part.vocab,
          },
          estimate: estimateWeightBytes(file, config, plan, part.vocab),
        })
      }
    }
    if (l0 === l1) {
      const held = [...this.#segments.values()].find((s) => fits(s, l0))
      if (held) pieces.push({ segment: held, spec: held.spec, estimate: 0 })
      else fresh(l0, l1)
      return pieces
    }
    let at = l0
    while (at < l1) {
      const held = [...this.#segments.values()]
        .filter((s) => fits(s, at) && s.spec.layers[1] > at)
        .sort((a, b) => b.spec.layers[1] - a.spec.layers[1])[0]
      if (held) {
        pieces.push({ segment: held, spec: held.spec, estimate: 0 })
        at = held.spec.layers[1]
        continue
      }
      let next = l1
      for (const s of this.#segments.values()) {
        const start = s.spec.layers[0]
        if (start > at && start < next && fits(s, start)) next = start
      }
      fresh(at, next)
      at = next
    }
    return pieces
  }

  /** Evicts idle segments outside `keep`, unpinned ones first, oldest first, until `need` fits. */
  #evict(need: number, keep: Set<string>): void {
    const over = () => this.weightBytes + this.#sessionBytes + need > this.#budget
    if (!over()) return
    const idle = [...this.#segments.values()].filter((s) => s.refs === 0 && !keep.has(s.key))
    idle.sort((a, b) => Number(a.pinned) - Number(b.pinned) || a.lastUsed - b.lastUsed)
    for (const s of idle) {
      if (!over()) break
      this.#drop(s)
    }
  }

  #drop(s: Segment): void {
    if (this.#segments.get(s.key) !== s) return
    this.#segments.delete(s.key)
    // Freed now when loaded (a load that follows takes its memory); a segment still loading is
    // freed when its load ends (it is no longer in the map).
    if (s.weights !== undefined) this.#free(s.weights)
    this.#logger.info(
      { layers: s.spec.layers, bytes: s.bytes, sha256: s.sha.slice(0, 12) },
      'released shard weights',
    )
  }

  /** Frees a dropped segment's weights, keeping its kernel memory for the next load (a few at most). */
  #free(weights: ShardWeights): void {
    if (typeof this.#kernels !== 'function') {
      weights.dispose()
      return
    }
    const kernels = weights.releaseKernels()
    if (this.#spare.length < MAX_SPARE_MEMORIES) this.#spare.push(kernels)
    else void kernels.dispose()
  }

  #load(sha: string, path: string, piece: Piece): Segment {
    const spec = piece.spec
    const key = JSON.stringify([
      sha,
      spec.layers,
      spec.heads,
      spec.ffn,
      spec.embed,
      spec.head,
      spec.vocab ?? null,
    ])
    const segment: Segment = {
      key,
      sha,
      spec,
      bytes: piece.estimate,
      loadedBytes: 0,
      state: 'loading',
      refs: 0,
      pinned: false,
      lastUsed: Date.now(),
      loading: Promise.resolve(undefined as never),
      weights: undefined,
    }
    const started = performance.now()
    let lastLog = started
    const onProgress = (bytes: number) => {
      segment.loadedBytes = bytes
      const now = performance.now()
      if (now - lastLog > 2_000) {
        lastLog = now
        this.#logger.info(
          { layers: spec.layers, loaded: mib(bytes), of: mib(segment.bytes) },
          `loading shard weights: ${Math.floor((100 * bytes) / Math.max(1, segment.bytes))}%`,
        )
      }
    }
    const shardSpec: ShardSpec = { ...spec }
    segment.loading = (async () => {
      const factory = this.#kernels
      if (typeof factory !== 'function') return ShardWeights.load(path, shardSpec, factory, { onProgress })
      const kernels = this.#spare.pop() ?? (await factory(KERNEL_MEMORY_BYTES))
      return ShardWeights.load(path, shardSpec, kernels, { onProgress, ownsKernels: true })
    })()
      .then((w) => {
        segment.weights = w
        segment.bytes = w.weightBytes
        segment.loadedBytes = w.weightBytes
        segment.state = 'ready'
        this.#logger.info(
          { layers: spec.layers, bytes: w.weightBytes, ms: Math.round(performance.now() - started) },
          'shard weights loaded',
        )
        if (this.#segments.get(key) !== segment) this.#free(w)
        return w
      })
      .catch((err: unknown) => {
        segment.state = 'failed'
        segment.error = (err as Error).message
        if (this.#segments.get(key) === segment) this.#segments.delete(key)
        throw err
      })
    segment.loading.catch(() => {})
    this.#segments.set(key, segment)
    return segment
  }
}
