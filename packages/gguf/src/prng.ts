import { createHash } from 'node:crypto'

/**
 * A deterministic 32-bit generator (xoshiro128**) whose state is the SHA-256 of `(seed, label)`, so
 * every label (a tensor name) gets its own independent stream that any process can reproduce.
 */
export function seededUint32(seed: number, label: string): () => number {
  const digest = createHash('sha256').update(`meshnet-gguf\0${seed}\0${label}`).digest()
  let s0 = digest.readUInt32LE(0)
  let s1 = digest.readUInt32LE(4)
  let s2 = digest.readUInt32LE(8)
  let s3 = digest.readUInt32LE(12)
  if ((s0 | s1 | s2 | s3) === 0) s0 = 1
  return () => {
    const m = Math.imul(s1, 5)
    const result = Math.imul((m << 7) | (m >>> 25), 9) >>> 0
    const t = s1 << 9
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = (s3 << 11) | (s3 >>> 21)
    return result
  }
}

/**
 * Fills `out` with values of mean `mean` and standard deviation `std`, drawn from a triangular
 * distribution (the sum of two 16-bit uniforms): bell-shaped, bounded by ±std·√6, and computed with
 * exact integer arithmetic and one float multiply, so every platform gets the same floats.
 */
export function fillTriangular(next: () => number, out: Float32Array, mean: number, std: number): void {
  const k = (std * Math.sqrt(6)) / 65536
  for (let i = 0; i < out.length; i++) {
    const r = next()
    out[i] = mean + ((r & 0xffff) + (r >>> 16) - 65535) * k
  }
}
