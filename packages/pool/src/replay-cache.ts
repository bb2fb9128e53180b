export interface ReplayCacheOptions {
  /** Most keys remembered at once; the oldest is forgotten first. Default 10 000. */
  maxEntries?: number
  /** How long a key is remembered, in milliseconds. */
  ttlMs: number
}

/**
 * Remembers recently seen keys (such as `nodeId + nonce` of signed requests) for `ttlMs`, so that a
 * message accepted once is refused when it comes again. Bounded: at `maxEntries` the oldest key is
 * forgotten, which only matters for a replay older than the flood that pushed it out.
 * Memory only; a restart forgets everything, so pair it with a freshness window no longer than `ttlMs`.
 */
export class ReplayCache {
  readonly maxEntries: number
  readonly ttlMs: number
  /** key -> expiry time; Map keeps insertion order, so the first entry expires first. */
  readonly #seen = new Map<string, number>()

  constructor(options: ReplayCacheOptions) {
    this.maxEntries = options.maxEntries ?? 10_000
    this.ttlMs = options.ttlMs
    if (!Number.isSafeInteger(this.maxEntries) || this.maxEntries < 1) {
      throw new RangeError(`maxEntries must be a positive integer, got ${this.maxEntries}`)
    }
    if (!Number.isFinite(this.ttlMs) || this.ttlMs <= 0) {
      throw new RangeError(`ttlMs must be positive, got ${this.ttlMs}`)
    }
  }

  /** Number of keys remembered (after forgetting those expired by `now`). */
  size(now: number): number {
    this.#prune(now)
    return this.#seen.size
  }

  /** True when `key` was seen within `ttlMs` before `now`. */
  has(key: string, now: number): boolean {
    this.#prune(now)
    return this.#seen.has(key)
  }

  /**
   * Records `key` as seen at `now`. Returns true the first time, false when the key is a replay
   * (seen and not yet expired).
   */
  checkAndRemember(key: string, now: number): boolean {
    this.#prune(now)
    if (this.#seen.has(key)) return false
    this.#seen.set(key, now + this.ttlMs)
    while (this.#seen.size > this.maxEntries) {
      const oldest = this.#seen.keys().next()
      if (oldest.done === true) break
      this.#seen.delete(oldest.value)
    }
    return true
  }

  #prune(now: number): void {
    for (const [key, expiresAt] of this.#seen) {
      if (expiresAt > now) break
      this.#seen.delete(key)
    }
  }
}
