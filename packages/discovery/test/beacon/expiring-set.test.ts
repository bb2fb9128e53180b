import { describe, expect, it } from 'vitest'
import { ExpiringSet } from '../../src/beacon/expiring-set.ts'

describe('ExpiringSet', () => {
  it('refuses a key it holds until the key expires', () => {
    const set = new ExpiringSet(10)
    expect(set.add('a', 100, 0)).toBe(true)
    expect(set.add('a', 100, 50)).toBe(false)
    expect(set.has('a', 99)).toBe(true)
    expect(set.has('a', 100)).toBe(false)
    expect(set.add('a', 300, 100)).toBe(true)
    expect(set.has('a', 200)).toBe(true)
  })

  it('sweeps expired keys and evicts the oldest when full, counting evictions', () => {
    const set = new ExpiringSet(3)
    set.add('a', 10, 0)
    set.add('b', 20, 0)
    set.add('c', 30, 0)
    set.add('d', 40, 15)
    expect(set.size).toBe(3)
    expect(set.evicted).toBe(0)
    set.add('e', 50, 15)
    expect(set.evicted).toBe(1)
    expect(set.has('b', 15)).toBe(false)
    expect(['c', 'd', 'e'].every((k) => set.has(k, 15))).toBe(true)
  })

  it('rejects a size that is not a positive integer', () => {
    expect(() => new ExpiringSet(0)).toThrow(RangeError)
  })
})
