import { createSampler } from '@meshnet/engine'
import {
  decodeControl,
  decodeHidden,
  decodeOutput,
  decodePartial,
  decodeStep,
  encodeControl,
  encodeHidden,
  encodeOutput,
  encodePartial,
  encodeStep,
  linkModeSchema,
  roundTrip,
  SHARD_FRAME,
} from '@meshnet/protocols'
import { describe, expect, it } from 'vitest'
import { sparseLogits, topCandidates } from '../src/candidates.ts'
import { chooseShardedMode, parseShardedPlan, type ShardModelFacts } from '../src/plan.ts'

describe('shard frames', () => {
  it('round-trip steps, hidden states, partial sums and outputs, f32 exactly', () => {
    const step = { seq: 7, pos: 40, want: true, tokens: [1, 2, 31999] }
    expect(decodeStep(encodeStep(step), 8)).toEqual(step)
    const hidden = Float32Array.from({ length: 2 * 4 }, (_, i) => Math.fround(i / 3 - 1))
    const h = { seq: 3, pos: 9, n: 2, want: false, computeUs: 1234.5, linkBytes: 64, hidden }
    expect(decodeHidden(encodeHidden(h, 'f32'), 4, 8)).toEqual(h)
    const p = decodePartial(encodePartial(5, hidden, 'f32'), 8)
    expect(p).toEqual({ exchange: 5, values: hidden })
    const out = {
      seq: 11,
      computeUs: 5,
      waitUs: 6,
      exchanges: 48,
      linkBytes: 1e6,
      ids: Uint32Array.of(4, 2),
      logits: Float32Array.of(1.5, 1.25),
    }
    expect(decodeOutput(encodeOutput(out), 2, 10)).toEqual(out)
  })

  it('carries f16 activations as half floats, rounded the same way on both sides', () => {
    const values = Float32Array.of(0.1, -2.5625, 65504, 1e-8)
    const frame = encodePartial(0, values, 'f16')
    expect(frame.byteLength).toBe(12 + 2 * values.length)
    const decoded = decodePartial(frame, 4).values
    expect(decoded).toEqual(roundTrip(values, 'f16'))
    expect(Math.abs(decoded[0]! - 0.1)).toBeLessThan(1e-4)
  })

  it('rejects frames whose sizes do not match their headers or the session', () => {
    const step = encodeStep({ seq: 0, pos: 0, want: false, tokens: [1, 2, 3] })
    expect(() => decodeStep(step, 2)).toThrow(/outside 1\.\.2/)
    expect(() => decodeStep(step.subarray(0, step.length - 1), 8)).toThrow()
    const hidden = encodeHidden(
      { seq: 0, pos: 0, n: 1, want: false, computeUs: 0, linkBytes: 0, hidden: new Float32Array(4) },
      'f32',
    )
    expect(() => decodeHidden(hidden, 8, 8)).toThrow(/does not hold 1 positions of 8/)
    const output = encodeOutput({
      seq: 0,
      computeUs: 0,
      waitUs: 0,
      exchanges: 0,
      linkBytes: 0,
      ids: Uint32Array.of(12),
      logits: Float32Array.of(0),
    })
    expect(() => decodeOutput(output, 1, 10)).toThrow(/outside the vocabulary/)
    expect(() => decodeOutput(output, 0, 100)).toThrow(/at most 0/)
  })

  it('carries the log-sum-exp of the whole row after the candidates when the session asks for it', () => {
    const out = {
      seq: 2,
      computeUs: 1,
      waitUs: 0,
      exchanges: 0,
      linkBytes: 0,
      ids: Uint32Array.of(4, 2),
      logits: Float32Array.of(1.5, 1.25),
      logSumExp: Math.E,
    }
    const frame = encodeOutput(out)
    expect(frame.byteLength).toBe(40 + 2 * 8 + 8)
    expect(decodeOutput(frame, 2, 10)).toEqual(out)
    // Without it, the frame is as before (what members before it send and expect).
    const { logSumExp: _, ...plain } = out
    expect(encodeOutput(plain).byteLength).toBe(40 + 2 * 8)
    // A flag without its value, an unknown flag, a value that is not finite: malformed.
    expect(() => decodeOutput(frame.subarray(0, frame.length - 8), 2, 10)).toThrow(/does not hold/)
    const unknown = encodeOutput(plain)
    unknown[1] = 0x02
    expect(() => decodeOutput(unknown, 2, 10)).toThrow(/does not hold/)
    expect(() => decodeOutput(encodeOutput({ ...out, logSumExp: Number.NaN }), 2, 10)).toThrow(/not finite/)
  })

  it('checks control messages: kind, JSON, schema, size', () => {
    const mode = encodeControl(SHARD_FRAME.LINK_MODE, { transport: 'direct' })
    expect(decodeControl(mode, SHARD_FRAME.LINK_MODE, linkModeSchema, 'LINK_MODE')).toEqual({
      transport: 'direct',
    })
    expect(() => decodeControl(mode, SHARD_FRAME.READY, linkModeSchema, 'READY')).toThrow(/expected READY/)
    const extra = encodeControl(SHARD_FRAME.LINK_MODE, { transport: 'direct', more: 1 })
    expect(() => decodeControl(extra, SHARD_FRAME.LINK_MODE, linkModeSchema, 'LINK_MODE')).toThrow(
      /LINK_MODE frame/,
    )
    const junk = Uint8Array.of(SHARD_FRAME.LINK_MODE, 0xff, 0xfe)
    expect(() => decodeControl(junk, SHARD_FRAME.LINK_MODE, linkModeSchema, 'LINK_MODE')).toThrow(
      /not UTF-8 JSON/,
    )
    expect(() => encodeControl(SHARD_FRAME.ERROR, { message: 'x'.repeat(70_000) })).toThrow(/64 KiB/)
  })
})

describe('candidates', () => {
  it('orders as llama.cpp’s top-k (ties to the lower id), and a sampler over them draws as over the whole row', () => {
    const vocab = 500
    let state = 12345
    const rand = () => {
      state = (Math.imul(state, 1103515245) + 12345) >>> 0
      return state / 2 ** 32
    }
    const logits = Float32Array.from({ length: vocab }, () => Math.fround(rand() * 8 - 4))
    logits[17] = logits[3] = 9 // a tie at the top
    const top = topCandidates(logits, 40)
    expect([...top.ids.subarray(0, 2)]).toEqual([3, 17])
    expect(topCandidates(logits, 1).ids[0]).toBe(3)
    for (const seed of [1, 2, 3]) {
      const options = { temperature: 0.9, topK: 40, topP: 0.95, seed }
      const full = createSampler(options)
      const sparse = createSampler(options)
      for (let i = 0; i < 20; i++) {
        expect(sparse.sample(sparseLogits(vocab, top.ids, top.logits))).toBe(full.sample(logits))
      }
    }
  })
})

describe('plans and modes', () => {
  const facts: ShardModelFacts = {
    layers: 24,
    heads: 20,
    kvHeads: 4,
    ff: 3584,
    embd: 1280,
    vocab: 32000,
    headDim: 64,
    trainContext: 2048,
    bytesPerLayer: 18 * 2 ** 20,
    bytesOutsideLayers: 83 * 2 ** 20,
    totalBytes: 514 * 2 ** 20,
    headUnit: 1,
    ffnUnit: 32,
    kvBytesPerPosition: 4 * 64 * 24 * 4,
    embedBytes: 41 * 2 ** 20,
    headBytes: 42 * 2 ** 20,
    contextSize: 2048,
    kvBytesPerLayer: 4 * 64 * 4 * 2048,
    reserveBytes: 64 * 2 ** 20,
  }

  it('runs on one member when one holds the whole model, else splits by layers (tensor when asked)', () => {
    const big = { nodeId: 'big', capacityBytes: 2 ** 30 }
    const small = { nodeId: 'small', capacityBytes: 300 * 2 ** 20 }
    expect(chooseShardedMode({ members: [small, big], model: facts, contextSize: 2048 })).toMatchObject({
      mode: 'single',
      nodeId: 'big',
    })
    expect(chooseShardedMode({ members: [small, small], model: facts, contextSize: 2048 }).mode).toBe(
      'pipeline',
    )
    expect(
      chooseShardedMode({ members: [small, big], model: facts, contextSize: 2048, mode: 'tensor' }).mode,
    ).toBe('tensor')
  })

  it('runs a model the Meshnet engine cannot split on one member only, and says why otherwise', () => {
    const big = { nodeId: 'big', capacityBytes: 2 ** 30 }
    const small = { nodeId: 'small', capacityBytes: 300 * 2 ** 20 }
    const moe = { ...facts, unsplittable: "'qwen3moe' is not an architecture the Meshnet engine runs" }
    expect(chooseShardedMode({ members: [small, big], model: moe, contextSize: 2048 })).toMatchObject({
      mode: 'single',
      nodeId: 'big',
    })
    expect(chooseShardedMode({ members: [small, small], model: moe, contextSize: 2048 })).toEqual({
      mode: 'none',
      reason: `no single member offers the 683 MiB the whole model needs, and it cannot be split: ${moe.unsplittable}`,
    })
    expect(chooseShardedMode({ members: [big], model: moe, contextSize: 2048, mode: 'pipeline' })).toEqual({
      mode: 'none',
      reason: `cannot run pipeline: ${moe.unsplittable}`,
    })
  })

  it('refuses plans with gaps, overlaps or a member twice', () => {
    expect(() =>
      parseShardedPlan({
        mode: 'pipeline',
        shards: [
          { nodeId: 'a', layers: [0, 10] },
          { nodeId: 'b', layers: [11, 24] },
        ],
      }),
    ).toThrow(/gap or overlap at 10/)
    expect(() =>
      parseShardedPlan({
        mode: 'tensor',
        shards: [
          { nodeId: 'a', heads: [0, 10], ffn: [0, 1792] },
          { nodeId: 'a', heads: [10, 20], ffn: [1792, 3584] },
        ],
      }),
    ).toThrow(/names a member twice/)
  })
})
