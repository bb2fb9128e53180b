import { describe, expect, it } from 'vitest'
import { argmax, createSampler, logSumExp, Mt19937, penalized } from '../src/sampling.ts'

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

describe('presence and frequency penalties', () => {
  it('subtract presence once and frequency per occurrence from the tokens sampled so far', () => {
    const row = Float32Array.from([0.5, -1, -1, 2, 1.5, 0])
    const s = createSampler({ presencePenalty: 0.5, frequencyPenalty: 1 })
    // 3 (2); then 3 is 2 - 1.5 = 0.5 and 4 (1.5) wins; then 4 is 0 and 0 ties 3 at 0.5: the lower
    // id, 0; then 0 is -1 and 3 (0.5) wins; then 3 (count 2) is 2 - 2.5 = -0.5 and 4, 5 tie at 0: 4.
    expect(Array.from({ length: 5 }, () => s.sample(row))).toEqual([3, 4, 0, 3, 4])
  })

  it('match the float32 arithmetic of llama.cpp', () => {
    expect(penalized(1.1, 3, 0.3, 0.7)).toBe(
      Math.fround(Math.fround(1.1) - Math.fround(Math.fround(3 * Math.fround(0.7)) + Math.fround(0.3))),
    )
    expect(penalized(1.1, 0, 0.3, 0.7)).toBe(1.1)
  })

  it('favour repeated tokens when negative', () => {
    const row = Float32Array.from([1, 0.9, 0])
    const s = createSampler({ frequencyPenalty: -2 })
    expect(Array.from({ length: 4 }, () => s.sample(row))).toEqual([0, 0, 0, 0])
  })

  it('take -2..2 and name the option outside it', () => {
    expect(() => createSampler({ presencePenalty: 2.5 })).toThrow(/presencePenalty/)
    expect(() => createSampler({ frequencyPenalty: -2.01 })).toThrow(/frequencyPenalty/)
  })
})

describe('log-probabilities', () => {
  const row = Float32Array.from([0.5, 2, -1, 2, 1.5, 0])
  const lse = Math.log([...row].reduce((sum, l) => sum + Math.exp(l), 0))

  it('are the log-softmax at temperature 1 of the row, whatever the sampling temperature', () => {
    for (const temperature of [0, 0.3, 1.7]) {
      const s = createSampler({ temperature, topK: 2, topP: 1, seed: 3 })
      const { id, logprobs } = s.sampleWithLogprobs(row, { top: 3 })
      expect([1, 3]).toContain(id)
      expect(logprobs.logprob).toBeCloseTo(row[id]! - lse, 12)
      expect(logprobs.top).toEqual([
        { id: 1, logprob: expect.closeTo(2 - lse, 12) },
        { id: 3, logprob: expect.closeTo(2 - lse, 12) },
        { id: 4, logprob: expect.closeTo(1.5 - lse, 12) },
      ])
    }
  })

  it('are those of the penalized row', () => {
    const s = createSampler({ presencePenalty: 1 })
    expect(s.sample(row)).toBe(1)
    const { id, logprobs } = s.sampleWithLogprobs(row, { top: 2 })
    expect(id).toBe(3)
    const pen = Float32Array.from([0.5, 1, -1, 2, 1.5, 0])
    const z = Math.log([...pen].reduce((sum, l) => sum + Math.exp(l), 0))
    expect(logprobs.logprob).toBeCloseTo(2 - z, 12)
    expect(logprobs.top.map((t) => t.id)).toEqual([3, 4])
    expect(logprobs.top[1]!.logprob).toBeCloseTo(1.5 - z, 12)
  })

  it('from candidates and the whole raw row’s log-sum-exp equal those of the whole row', () => {
    const whole = createSampler({ frequencyPenalty: 0.8 })
    const sparse = createSampler({ frequencyPenalty: 0.8 })
    const candidates = Float32Array.from([0.5, 2, -Infinity, 2, 1.5, -Infinity])
    for (let step = 0; step < 5; step++) {
      const a = whole.sampleWithLogprobs(row, { top: 2 })
      const b = sparse.sampleWithLogprobs(candidates, { top: 2, logSumExp: logSumExp(row) })
      expect(b.id).toBe(a.id)
      expect(b.logprobs.logprob).toBeCloseTo(a.logprobs.logprob, 12)
      expect(b.logprobs.top).toEqual(
        a.logprobs.top.map((t) => ({ id: t.id, logprob: expect.closeTo(t.logprob, 12) })),
      )
    }
  })

  it('list no alternatives for top 0, and sum to at most 1', () => {
    const s = createSampler({ temperature: 1, topK: 0, topP: 1, seed: 5 })
    expect(s.sampleWithLogprobs(row, { top: 0 }).logprobs.top).toEqual([])
    const all = s.sampleWithLogprobs(row, { top: 6 }).logprobs.top
    expect(all.reduce((sum, t) => sum + Math.exp(t.logprob), 0)).toBeCloseTo(1, 12)
  })

  it('logSumExp ignores -Infinity and is stable for large logits', () => {
    expect(logSumExp(Float32Array.from([1000, 1000, -Infinity]))).toBeCloseTo(1000 + Math.log(2), 9)
    expect(logSumExp(Float32Array.from([-Infinity]))).toBe(-Infinity)
  })
})
