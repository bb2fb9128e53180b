import type { Logger } from '@meshnet/core'
import { silentLogger } from '@meshnet/core'
import { ChunkHashError, FetchError } from './errors.ts'
import type { ModelStore, StoredModel } from './store.ts'

/** Somewhere chunks of a model come from: a pool member (`/meshnet/weights/1.0.0`) or a URL. */
export interface ChunkSource {
  /** A node id, or the URL. */
  readonly id: string
  readonly kind: 'peer' | 'url'
  /** Whether the source has chunk `index` (a URL has them all). */
  holds(index: number): boolean
  /** The chunks asked for, in any order, each as soon as it arrived; may end early (the rest are asked elsewhere). */
  fetch(
    indices: readonly number[],
    signal: AbortSignal,
  ): AsyncIterable<{ index: number; bytes: Uint8Array | readonly Uint8Array[] }>
}

/** Progress of a fetch, after each chunk. */
export interface FetchProgress {
  /** Bytes this fetch needed (the chunks missing when it began). */
  totalBytes: number
  doneBytes: number
  /** Bytes per source so far. */
  sources: Record<string, number>
  /** Chunks dropped because they failed their hash. */
  badChunks: number
  /** Bytes per second since the fetch began. */
  rate: number
}

export interface FetchOptions {
  signal?: AbortSignal | undefined
  onProgress?: ((progress: FetchProgress) => void) | undefined
  /**
   * A source sent bytes that failed their hash (it is not asked again by this fetch), or stalled
   * past `stallMs` twice. The agent lowers the peer's trust score.
   */
  onBadSource?:
    | ((source: ChunkSource, reason: 'bad-bytes' | 'stalled' | 'failed', detail: string) => void)
    | undefined
  /** A request that delivers nothing for this long is cut and its chunks asked elsewhere. Default 15 s. */
  stallMs?: number
  /**
   * Bytes per request at most. Default 64 MiB, less for a small fetch: about an eighth of it, so
   * that every source gets a share from the start.
   */
  batchBytes?: number
  /** Requests in flight per source. Default 4 (one answer streams while the next are set up). */
  perSource?: number
  /** How long chunks no source holds are waited for (a member joining) before FetchError. Default 60 s. */
  waitForSourceMs?: number
  logger?: Logger
}

const DEFAULT_STALL_MS = 15_000
const DEFAULT_BATCH_BYTES = 64 * 2 ** 20
const DEFAULT_WAIT_MS = 60_000

/**
 * Fetches the chunks of `wanted` that the store does not hold from every source at once: each
 * source takes the next chunks it holds from one shared queue (so a fast source takes more), each
 * chunk is checked against the manifest before it is written (`ModelStore.writeChunk`), and a
 * chunk that fails its hash is dropped and asked of another source, never of that one again. A
 * request that stalls is cut and its chunks go back to the queue; a source that stalls twice or
 * fails three times is dropped. `sources` is asked again whenever the queue has chunks no source
 * holds (peers that joined since). Resolves when every chunk is held; FetchError when some cannot be had.
 */
export async function fetchChunks(
  store: ModelStore,
  stored: StoredModel,
  wanted: readonly number[],
  sources: () => ChunkSource[] | Promise<ChunkSource[]>,
  options: FetchOptions = {},
): Promise<FetchProgress> {
  const logger = options.logger ?? silentLogger()
  const { chunks } = stored.model
  const missing = store.missing(stored.id, wanted)
  const totalBytes = missing.reduce((n, i) => n + chunks.length[i]!, 0)
  const progress: FetchProgress = { totalBytes, doneBytes: 0, sources: {}, badChunks: 0, rate: 0 }
  if (missing.length === 0) return progress
  await store.reserve(totalBytes)
  const started = performance.now()
  const queue = new Set(missing)
  const inFlight = new Set<number>()
  const refused = new Map<number, Set<string>>()
  const dropped = new Set<string>()
  const strikes = new Map<string, number>()
  const failures = new Map<string, number>()
  const stallMs = options.stallMs ?? DEFAULT_STALL_MS
  const batchBytes =
    options.batchBytes ?? Math.min(DEFAULT_BATCH_BYTES, Math.max(1, Math.ceil(totalBytes / 8)))
  const perSource = options.perSource ?? 4
  const waitMs = options.waitForSourceMs ?? DEFAULT_WAIT_MS
  const lifetime = new AbortController()
  const onAbort = () => lifetime.abort(options.signal?.reason)
  options.signal?.addEventListener('abort', onAbort, { once: true })

  const take = (source: ChunkSource): number[] => {
    const batch: number[] = []
    let bytes = 0
    for (const index of queue) {
      if (!source.holds(index) || refused.get(index)?.has(source.id)) continue
      batch.push(index)
      bytes += chunks.length[index]!
      if (bytes >= batchBytes) break
    }
    for (const index of batch) {
      queue.delete(index)
      inFlight.add(index)
    }
    return batch
  }
  const putBack = (indices: Iterable<number>) => {
    for (const index of indices) {
      if (inFlight.delete(index)) queue.add(index)
    }
  }
  const drop = (source: ChunkSource, reason: 'bad-bytes' | 'stalled' | 'failed', detail: string) => {
    if (dropped.has(source.id)) return
    dropped.add(source.id)
    logger.warn({ source: source.id, reason, detail }, 'dropped a weights source')
    options.onBadSource?.(source, reason, detail)
  }

  const request = async (source: ChunkSource, batch: number[]): Promise<void> => {
    const pending = new Set(batch)
    const cut = new AbortController()
    const onLifetime = () => cut.abort(lifetime.signal.reason)
    lifetime.signal.addEventListener('abort', onLifetime, { once: true })
    let stalled = false
    let timer = setTimeout(() => {
      stalled = true
      cut.abort(new Error('stalled'))
    }, stallMs)
    try {
      for await (const { index, bytes } of source.fetch(batch, cut.signal)) {
        clearTimeout(timer)
        timer = setTimeout(() => {
          stalled = true
          cut.abort(new Error('stalled'))
        }, stallMs)
        if (!pending.delete(index)) continue
        try {
          await store.writeChunk(stored, index, bytes)
        } catch (err) {
          if (!(err instanceof ChunkHashError)) throw err
          progress.badChunks++
          refused.set(index, (refused.get(index) ?? new Set()).add(source.id))
          putBack([index])
          drop(source, 'bad-bytes', err.message)
          return
        }
        inFlight.delete(index)
        const length = chunks.length[index]!
        progress.doneBytes += length
        progress.sources[source.id] = (progress.sources[source.id] ?? 0) + length
        progress.rate = progress.doneBytes / Math.max(1e-3, (performance.now() - started) / 1000)
        options.onProgress?.(progress)
      }
      if (pending.size > 0 && !cut.signal.aborted) {
        // The source ended without some chunks (it no longer has them): not from it again.
        for (const index of pending) refused.set(index, (refused.get(index) ?? new Set()).add(source.id))
      }
    } catch (err) {
      if (lifetime.signal.aborted) return
      if (stalled) {
        const n = (strikes.get(source.id) ?? 0) + 1
        strikes.set(source.id, n)
        logger.info({ source: source.id, strikes: n }, 'a weights request stalled; asking elsewhere')
        if (n >= 2) drop(source, 'stalled', `no bytes for ${stallMs} ms, twice`)
      } else {
        // A reset stream or a refused request may pass (a member restarting, a rate limit):
        // the chunks go back to the queue, and the third failure drops the source.
        const n = (failures.get(source.id) ?? 0) + 1
        failures.set(source.id, n)
        logger.info(
          { source: source.id, failures: n, err: (err as Error).message },
          'a weights request failed',
        )
        if (n >= 3) drop(source, 'failed', (err as Error).message)
        else await new Promise((r) => setTimeout(r, 250 * n))
      }
    } finally {
      clearTimeout(timer)
      lifetime.signal.removeEventListener('abort', onLifetime)
      putBack(pending)
    }
  }

  const worker = async (source: ChunkSource): Promise<void> => {
    while (!lifetime.signal.aborted && !dropped.has(source.id)) {
      const batch = take(source)
      if (batch.length === 0) return
      await request(source, batch)
    }
  }

  try {
    let waitingSince: number | undefined
    for (;;) {
      options.signal?.throwIfAborted()
      if (queue.size === 0) break
      const available = (await sources()).filter((s) => !dropped.has(s.id))
      const servable = (s: ChunkSource) => [...queue].some((i) => s.holds(i) && !refused.get(i)?.has(s.id))
      const useful = available.filter(servable)
      if (useful.length === 0) {
        // Nobody left holds what is missing: wait a while for a member that does (one joining,
        // one reconnecting), then give up with what is missing.
        waitingSince ??= performance.now()
        if (performance.now() - waitingSince > waitMs) {
          const bytes = [...queue].reduce((n, i) => n + chunks.length[i]!, 0)
          throw new FetchError(
            `${queue.size} chunks (${Math.ceil(bytes / 2 ** 20)} MiB) of model ${stored.id.slice(0, 12)}… are held by no source left (${available.length} sources, ${dropped.size} dropped)`,
            { hint: 'start a member that holds the model file, or give --model a URL to fetch from' },
          )
        }
        await new Promise((r) => setTimeout(r, 250))
        continue
      }
      waitingSince = undefined
      const runs: Promise<void>[] = []
      for (const source of useful) for (let k = 0; k < perSource; k++) runs.push(worker(source))
      await Promise.all(runs)
    }
  } finally {
    options.signal?.removeEventListener('abort', onAbort)
    lifetime.abort()
  }
  progress.rate = progress.doneBytes / Math.max(1e-3, (performance.now() - started) / 1000)
  return progress
}
