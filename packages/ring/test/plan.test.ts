import { describe, expect, it } from 'vitest'
import { apportion, type PlanModel, planPipeline, planTensor } from '../src/plan.ts'

const GiB = 2 ** 30
const model: PlanModel = { layers: 22, heads: 32, kvHeads: 4, ff: 5632, bytesPerLayer: 40 * 2 ** 20 }

describe('apportion', () => {
  it('splits proportionally and sums exactly', () => {
    expect(apportion(10, [1, 1])).toEqual([5, 5])
    expect(apportion(22, [8, 16, 8])).toEqual([6, 10, 6])
    expect(apportion(7, [1, 1, 1])).toEqual([3, 2, 2])
    expect(apportion(2, [1, 1, 1])).toEqual([1, 1, 0])
    for (const total of [1, 5, 31, 100]) {
      expect(apportion(total, [3, 7, 11, 2]).reduce((a, b) => a + b)).toBe(total)
    }
  })
})

describe('planPipeline', () => {
  it('gives contiguous layer ranges weighted by memory, covering every layer once', () => {
    const plan = planPipeline(
      [
        { nodeId: 'a', capacityBytes: 8 * GiB },
        { nodeId: 'b', capacityBytes: 16 * GiB },
        { nodeId: 'c', capacityBytes: 8 * GiB },
      ],
      model,
    )
    expect(plan).toEqual([
      { nodeId: 'a', layers: [0, 6] },
      { nodeId: 'b', layers: [6, 16] },
      { nodeId: 'c', layers: [16, 22] },
    ])
  })

  it('leaves out members beyond the number of layers', () => {
    const members = ['a', 'b', 'c'].map((nodeId) => ({ nodeId, capacityBytes: GiB }))
    expect(planPipeline(members, { ...model, layers: 2 }).map((s) => s.nodeId)).toEqual(['a', 'b'])
  })

  it('says how much memory is missing when the ring is too small', () => {
    expect(() => planPipeline([{ nodeId: 'a', capacityBytes: 100 * 2 ** 20 }], model)).toThrow(
      /needs about 880 MiB \(weights 880 MiB\) but the ring offers 100 MiB, 780 MiB short: a offers 100 MiB \(room for about 2 of 22 layers\)/,
    )
  })

  it('gives no member more layers than its memory holds with their KV cache, net of its reserve', () => {
    const MiB = 2 ** 20
    const sized = {
      ...model,
      kvBytesPerLayer: 10 * MiB,
      reserveBytes: 100 * MiB,
      embedBytes: 50 * MiB,
      headBytes: 50 * MiB,
    }
    // 50 MiB a layer: a holds (600 - 100 - 50) / 50 = 9, b (2000 - 100) / 50 = 38, c (400 - 100 - 50) / 50 = 5.
    const plan = planPipeline(
      [
        { nodeId: 'a', capacityBytes: 600 * MiB },
        { nodeId: 'b', capacityBytes: 2000 * MiB },
        { nodeId: 'c', capacityBytes: 400 * MiB },
      ],
      sized,
    )
    const counts = plan.map((s) => s.layers[1] - s.layers[0])
    expect(counts.reduce((a, b) => a + b)).toBe(22)
    expect(counts[0]).toBeLessThanOrEqual(9)
    expect(counts[2]).toBeLessThanOrEqual(5)
    // Weighted by room: b, with the most, takes the most.
    expect(counts[1]).toBeGreaterThan(counts[0]!)
    expect(plan.map((s) => s.layers)).toEqual([
      [0, 4],
      [4, 19],
      [19, 22],
    ])
  })

  it('leaves out a member that cannot hold a single layer', () => {
    const MiB = 2 ** 20
    const plan = planPipeline(
      [
        { nodeId: 'a', capacityBytes: 2 * GiB },
        { nodeId: 'tiny', capacityBytes: 30 * MiB },
        { nodeId: 'c', capacityBytes: 2 * GiB },
      ],
      model,
    )
    expect(plan.map((s) => s.nodeId)).toEqual(['a', 'c'])
  })

  it('refuses a ring whose members together cannot hold the model and KV cache, naming each', () => {
    const MiB = 2 ** 20
    const sized = { ...model, kvBytesPerLayer: 20 * MiB, contextSize: 4096, reserveBytes: 64 * MiB }
    expect(() =>
      planPipeline(
        [
          { nodeId: 'a', capacityBytes: 500 * MiB },
          { nodeId: 'b', capacityBytes: 600 * MiB },
        ],
        sized,
      ),
    ).toThrow(
      /needs about 1448 MiB \(weights 880 MiB, KV cache 440 MiB for 4096 positions, 64 MiB per member for the process\) but the ring offers 1100 MiB, 348 MiB short: a offers 500 MiB \(room for about 7 of 22 layers\); b offers 600 MiB \(room for about 8 of 22 layers\)/,
    )
  })
})

describe('planTensor', () => {
  it('weights shares by memory past the reserve and embedding, and refuses a ring too small', () => {
    const MiB = 2 ** 20
    const sized = { ...model, reserveBytes: 100 * MiB, embedBytes: 100 * MiB, headBytes: 100 * MiB }
    const plan = planTensor(
      [
        { nodeId: 'a', capacityBytes: 600 * MiB },
        { nodeId: 'b', capacityBytes: 1000 * MiB },
      ],
      sized,
    )
    // 400 and 800 MiB past the fixed 200: b computes twice as many FFN columns.
    const width = (r: readonly [number, number]) => r[1] - r[0]
    expect(width(plan[1]!.ffn) / width(plan[0]!.ffn)).toBeCloseTo(2, 1)
    expect(() =>
      planTensor(
        [
          { nodeId: 'a', capacityBytes: 400 * MiB },
          { nodeId: 'b', capacityBytes: 400 * MiB },
        ],
        sized,
      ),
    ).toThrow(/the model needs about \d+ MiB .* but the ring offers 800 MiB, \d+ MiB short/)
  })

  it('splits heads and FFN columns in whole units with the KV heads each shard needs', () => {
    const plan = planTensor(
      [
        { nodeId: 'a', capacityBytes: GiB },
        { nodeId: 'b', capacityBytes: GiB },
        { nodeId: 'c', capacityBytes: GiB },
      ],
      { ...model, headUnit: 2, ffnUnit: 256 },
    )
    expect(plan.map((s) => s.heads)).toEqual([
      [0, 12],
      [12, 22],
      [22, 32],
    ])
    // 8 query heads per KV head: shards that cut a group both compute that KV head.
    expect(plan.map((s) => s.kvHeads)).toEqual([
      [0, 2],
      [1, 3],
      [2, 4],
    ])
    expect(plan.map((s) => s.ffn)).toEqual([
      [0, 2048],
      [2048, 3840],
      [3840, 5632],
    ])
  })

  it('uses at most as many members as there are units', () => {
    const members = ['a', 'b', 'c'].map((nodeId) => ({ nodeId, capacityBytes: GiB }))
    expect(planTensor(members, { ...model, heads: 2, kvHeads: 1 })).toHaveLength(2)
  })

  it('refuses shapes that do not split into whole blocks', () => {
    expect(() => planTensor([{ nodeId: 'a', capacityBytes: GiB }], { ...model, ff: 100 })).toThrow(
      /FFN width 100 is not a multiple of 32/,
    )
  })
})
