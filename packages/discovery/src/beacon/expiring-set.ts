/**
 * A bounded set of keys that each expire at a given time: the replay cache (sender + nonce) and the
 * record of datagrams we sent ourselves. Keys are kept in insertion order, which is close to expiry
 * order, so expired keys are swept from the front in amortised O(1). When the set is full of keys
 * that have not expired, the oldest is evicted (and counted): memory stays bounded under a flood,
 * at the price of forgetting the oldest nonces early.
 */
export class ExpiringSet {
  readonly #maxSize: number
  readonly #expiries = new Map<string, number>()
  #evicted = 0

  constructor(maxSize: number) {
    if (!Number.isInteger(maxSize) || maxSize < 1) throw new RangeError('maxSize must be a positive integer')
    this.#maxSize = maxSize
  }

  get size(): number {
    return this.#expiries.size
  }

  /** Keys forgotten before they expired because the set was full. */
  get evicted(): number {
    return this.#evicted
  }

  /** True when `key` is present and has not expired at `now`. */
  has(key: string, now: number): boolean {
    const expiry = this.#expiries.get(key)
    return expiry !== undefined && expiry > now
  }

  /**
   * Adds `key` until `expiresAt` unless it is already present and unexpired. Returns true when it
   * was added, false when it was already there.
   */
  add(key: string, expiresAt: number, now: number): boolean {
    this.#sweep(now)
    if (this.has(key, now)) return false
    this.#expiries.delete(key)
    while (this.#expiries.size >= this.#maxSize) {
      const oldest = this.#expiries.keys().next().value as string
      this.#expiries.delete(oldest)
      this.#evicted++
    }
    this.#expiries.set(key, expiresAt)
    return true
  }

  clear(): void {
    this.#expiries.clear()
  }

  #sweep(now: number): void {
    for (const [key, expiry] of this.#expiries) {
      if (expiry > now) return
      this.#expiries.delete(key)
    }
  }
}
