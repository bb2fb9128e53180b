import { describe, expect, it } from 'vitest'
import { ReplayCache } from '../src/replay-cache.ts'

describe('ReplayCache', () => {
  it('accepts a key once and refuses it again until it expires', () => {
    const cache = new ReplayCache({ ttlMs: 1000 })
    expect(cache.checkAndRemember('a', 0)).toBe(true)
    expect(cache.checkAndRemember('a', 999)).toBe(false)
    expect(cache.has('a', 999)).toBe(true)
    expect(cache.checkAndRemember('a', 1000)).toBe(true)
  })

  it('forgets expired keys and never holds more than maxEntries', () => {
    const cache = new ReplayCache({ ttlMs: 1000, maxEntries: 3 })
    for (const [i, key] of ['a', 'b', 'c', 'd'].entries()) expect(cache.checkAndRemember(key, i)).toBe(true)
    expect(cache.size(4)).toBe(3)
    // The oldest went first.
    expect(cache.has('a', 4)).toBe(false)
    expect(cache.has('d', 4)).toBe(true)
    expect(cache.size(2000)).toBe(0)
  })

  it('refuses nonsensical bounds', () => {
    expect(() => new ReplayCache({ ttlMs: 0 })).toThrow(RangeError)
    expect(() => new ReplayCache({ ttlMs: 10, maxEntries: 0 })).toThrow(RangeError)
  })
})
