import { describe, expect, it } from 'vitest'
import {
  decodeControl,
  decodeEmbedding,
  embeddingFrameBytes,
  encodeControl,
  encodeEmbedding,
  SHARD_FRAME,
  shardOpenSchema,
} from '../src/shard.ts'

// Embedding sessions of /meshnet/shard/1.0.0: the OPEN flag and the output member's EMBEDDING frames.

const OPEN = {
  v: 1,
  poolId: 'p',
  session: '00'.repeat(16),
  model: { sha256: 'ab'.repeat(32) },
  mode: 'pipeline',
  rank: 0,
  members: [{ nodeId: '12D3KooWA', addrs: [] }],
  shard: { layers: [0, 4], embed: true, head: true },
  contextSize: 64,
  maxBatch: 32,
  kvCacheType: 'f16',
  activations: 'f32',
  topK: 1,
  links: 'direct',
}

describe('embedding sessions', () => {
  it('opens a pipeline session with a pooling, and refuses one for tensor parallel or an unknown pooling', () => {
    const frame = encodeControl(SHARD_FRAME.OPEN, { ...OPEN, embedding: 'mean' })
    expect(decodeControl(frame, SHARD_FRAME.OPEN, shardOpenSchema, 'OPEN').embedding).toBe('mean')
    expect(
      decodeControl(encodeControl(SHARD_FRAME.OPEN, OPEN), SHARD_FRAME.OPEN, shardOpenSchema, 'OPEN'),
    ).not.toHaveProperty('embedding')
    const tensor = {
      ...OPEN,
      mode: 'tensor',
      shard: { heads: [0, 4], ffn: [0, 8], embed: true, head: false },
    }
    expect(() =>
      decodeControl(
        encodeControl(SHARD_FRAME.OPEN, { ...tensor, embedding: 'mean' }),
        SHARD_FRAME.OPEN,
        shardOpenSchema,
        'OPEN',
      ),
    ).toThrow(/embedding sessions are pipelines/)
    expect(() =>
      decodeControl(
        encodeControl(SHARD_FRAME.OPEN, { ...OPEN, embedding: 'max' }),
        SHARD_FRAME.OPEN,
        shardOpenSchema,
        'OPEN',
      ),
    ).toThrow(/embedding/)
  })

  it('carries the vector as f32, bit for bit, or no values for a step that wants none', () => {
    const values = Float32Array.from({ length: 256 }, (_, i) => Math.fround(Math.sin(i) / 7))
    const frame = encodeEmbedding({ seq: 7, computeUs: 12.5, linkBytes: 4096, values })
    expect(frame.byteLength).toBe(embeddingFrameBytes(256))
    const decoded = decodeEmbedding(frame, 256)
    expect(decoded).toMatchObject({ seq: 7, computeUs: 12.5, linkBytes: 4096 })
    expect(Buffer.from(decoded.values.buffer).equals(Buffer.from(values.buffer))).toBe(true)
    const empty = decodeEmbedding(
      encodeEmbedding({ seq: 8, computeUs: 0, linkBytes: 0, values: new Float32Array(0) }),
      256,
    )
    expect(empty.values).toHaveLength(0)
  })

  it('refuses a frame of another width, a cut one, and values that are not finite', () => {
    const frame = encodeEmbedding({ seq: 1, computeUs: 0, linkBytes: 0, values: new Float32Array(64) })
    expect(() => decodeEmbedding(frame, 128)).toThrow(/does not hold 128 values/)
    expect(() => decodeEmbedding(frame.subarray(0, frame.byteLength - 4), 64)).toThrow(/does not hold/)
    const nan = encodeEmbedding({
      seq: 1,
      computeUs: 0,
      linkBytes: 0,
      values: Float32Array.of(0, Number.NaN),
    })
    expect(() => decodeEmbedding(nan, 2)).toThrow(/not finite/)
    expect(() => decodeEmbedding(Uint8Array.of(SHARD_FRAME.OUTPUT, 0, 0), 2)).toThrow(/malformed EMBEDDING/)
  })
})
