import { describe, expect, it } from 'vitest'
import { applyRope, expInPlace, rmsNorm, ropeCache, softmaxRows, swiglu } from '../../src/model/ops.ts'

describe('RoPE', () => {
  const d = 8
  const x = Float32Array.from({ length: 2 * d }, (_, i) => Math.sin(i + 1))

  /** Reference rotation in f64: pairs (i, i + 1) for normal, (i, i + d/2) for NeoX. */
  function reference(pos: number, neox: boolean): number[] {
    const out = [...x]
    for (let h = 0; h < 2; h++) {
      for (let i = 0; i < d / 2; i++) {
        const theta = pos * 10000 ** ((-2 * i) / d)
        const a = h * d + (neox ? i : 2 * i)
        const b = neox ? a + d / 2 : a + 1
        out[a] = x[a]! * Math.cos(theta) - x[b]! * Math.sin(theta)
        out[b] = x[a]! * Math.sin(theta) + x[b]! * Math.cos(theta)
      }
    }
    return out
  }

  it.each([
    ['normal', false],
    ['neox', true],
  ] as const)('rotates %s pairs by pos·base^(-2i/d)', (type, neox) => {
    const cache = new Float32Array(d)
    ropeCache(5, d, 10000, 1, undefined, cache)
    const y = x.slice()
    applyRope(y, 0, 2, d, cache, type)
    const want = reference(5, neox)
    for (let i = 0; i < y.length; i++) expect(y[i]).toBeCloseTo(want[i]!, 5)
  })

  it('leaves position 0 unchanged and applies frequency factors and linear scaling', () => {
    const cache = new Float32Array(d)
    ropeCache(0, d, 10000, 1, undefined, cache)
    const y = x.slice()
    applyRope(y, 0, 2, d, cache, 'normal')
    expect(y).toEqual(x)
    const scaled = new Float32Array(d)
    const factors = new Float32Array(d / 2).fill(2)
    ropeCache(6, d, 10000, 1, factors, scaled)
    ropeCache(3, d, 10000, 1, undefined, cache)
    for (let i = 0; i < d; i++) expect(scaled[i]).toBeCloseTo(cache[i]!, 5)
    ropeCache(6, d, 10000, 0.5, undefined, scaled)
    for (let i = 0; i < d; i++) expect(scaled[i]).toBeCloseTo(cache[i]!, 5)
  })
})

describe('RMSNorm and SwiGLU', () => {
  it('normalizes to unit RMS times the weight', () => {
    const x = Float32Array.from([1, -2, 3, -4])
    const out = new Float32Array(4)
    rmsNorm(x, 0, 4, Float32Array.from([1, 1, 2, 2]), 0, out, 0)
    const rms = Math.sqrt((1 + 4 + 9 + 16) / 4)
    expect([...out].map((v) => +v.toFixed(5))).toEqual([1, -2, 6, -8].map((v) => +(v / rms).toFixed(5)))
  })

  it('gates up by silu(gate)', () => {
    const gate = Float32Array.from([0, 1, -2])
    swiglu(gate, Float32Array.from([5, 2, 3]), 3, new Float32Array(3))
    expect(gate[0]).toBe(0)
    expect(gate[1]).toBeCloseTo(2 / (1 + Math.exp(-1)), 6)
    expect(gate[2]).toBeCloseTo((3 * -2) / (1 + Math.exp(2)), 6)
  })
})

describe('exp and softmax', () => {
  it('rounds e^x to f32 exactly as Math.fround(Math.exp(x)) does', () => {
    const x = Float32Array.from({ length: 400_000 }, (_, i) => -110 + i * 0.0005)
    const want = x.map((v) => Math.fround(Math.exp(v)))
    expInPlace(x, 0, x.length)
    expect(x).toEqual(want)
    const special = Float32Array.from([Number.NaN, Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY, 0])
    expInPlace(special, 0, 4)
    expect([...special]).toEqual([Number.NaN, 0, Number.POSITIVE_INFINITY, 1])
  })

  it('turns scaled scores into attention weights, zero past each row’s visible positions', () => {
    const scores = Float32Array.from([1, 2, 3, 9, 0.5, -1, 4, 9])
    softmaxRows(scores, 2, 4, 0.5, (r) => r + 2)
    const row = (v: number[]) => {
      const e = v.map((s) => Math.exp(s * 0.5 - Math.max(...v) * 0.5))
      const sum = e.reduce((a, b) => a + b)
      return e.map((x) => x / sum)
    }
    const want = [...row([1, 2]), 0, 0, ...row([0.5, -1, 4]), 0]
    for (let i = 0; i < 8; i++) expect(scores[i]).toBeCloseTo(want[i]!, 6)
  })
})
