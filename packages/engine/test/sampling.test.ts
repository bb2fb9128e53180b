import { describe, expect, it } from 'vitest'
import { argmax, createSampler, Mt19937 } from '../src/sampling.ts'

describe('Mt19937', () => {
  it('matches std::mt19937: the 10000th output of the default seed 5489 is 4123659995', () => {
    const rng = new Mt19937(5489)
    let v = 0
    for (let i = 0; i < 10000; i++) v = rng.next()
    expect(v).toBe(4123659995)
  })

  it('draws doubles in [0, 1) from two outputs, as libstdc++ generate_canonical does', () => {
    const a = new Mt19937(42)
    const b = new Mt19937(42)
    const lo = b.next()
    const hi = b.next()
    expect(a.nextDouble()).toBe((lo + hi * 2 ** 32) / 2 ** 64)
  })
})

describe('createSampler', () => {
  const logits = Float32Array.from([0.5, 2, -1, 2, 1.5, 0])

  it('is greedy at temperature 0 and takes the first of equal maxima', () => {
    expect(createSampler().sample(logits)).toBe(1)
    expect(argmax(logits)).toBe(1)
  })

  it('repeats itself from the same seed and keeps its random state between tokens', () => {
    const opts = { temperature: 1, topK: 0, topP: 1, seed: 7 }
    const a = createSampler(opts)
    const b = createSampler(opts)
    const first = Array.from({ length: 50 }, () => a.sample(logits))
    expect(Array.from({ length: 50 }, () => b.sample(logits))).toEqual(first)
    expect(new Set(first).size).toBeGreaterThan(2)
  })

  it('only ever picks among the top k, and top-p keeps the smallest set reaching p', () => {
    const k2 = createSampler({ temperature: 2, topK: 2, topP: 1, seed: 1 })
    for (let i = 0; i < 100; i++) expect([1, 3]).toContain(k2.sample(logits))
    // softmax(logits): the two 2s hold ~0.66 of the mass; p = 0.5 keeps just them.
    const p = createSampler({ temperature: 1, topK: 0, topP: 0.5, seed: 1 })
    for (let i = 0; i < 100; i++) expect([1, 3]).toContain(p.sample(logits))
  })

  it('follows the distribution at temperature 1', () => {
    const s = createSampler({ temperature: 1, topK: 0, topP: 1, seed: 99 })
    const counts = new Array(6).fill(0)
    const n = 20000
    for (let i = 0; i < n; i++) counts[s.sample(logits)]++
    const z = [...logits].reduce((sum, l) => sum + Math.exp(l), 0)
    for (const [i, l] of [...logits].entries()) expect(counts[i] / n).toBeCloseTo(Math.exp(l) / z, 1)
  })

  it('names a bad option', () => {
    expect(() => createSampler({ topP: 0 })).toThrow(/topP/)
    expect(() => createSampler({ temperature: -1 })).toThrow(
      expect.objectContaining({ name: 'InvalidArgumentError' }),
    )
  })
})
