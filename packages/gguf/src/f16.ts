// IEEE half precision, converted the way ggml does it (round to nearest, ties to even; NaN becomes
// 0x7e00 with its sign; overflow becomes infinity).

const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)

/** The IEEE binary16 bits of `x` (first rounded to float32), as ggml's GGML_FP32_TO_FP16. */
export function fp32ToFp16(x: number): number {
  f32[0] = x
  const w = u32[0]!
  const sign = (w >>> 16) & 0x8000
  const exp = (w >>> 23) & 0xff
  const mant = w & 0x7fffff
  if (exp === 0xff) return sign | (mant === 0 ? 0x7c00 : 0x7e00)
  const e = exp - 112 // re-biased for binary16
  if (e >= 0x1f) return sign | 0x7c00
  if (e <= 0) {
    if (e < -10) return sign
    const full = mant | 0x800000
    const shift = 14 - e
    let h = full >>> shift
    const rem = full & ((1 << shift) - 1)
    const half = 1 << (shift - 1)
    if (rem > half || (rem === half && (h & 1) === 1)) h++
    return sign | h
  }
  let h = (e << 10) | (mant >>> 13)
  const rem = mant & 0x1fff
  // A carry out of the mantissa moves to the next exponent (or to infinity), which is right.
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++
  return sign | h
}

let table: Float32Array | undefined

function buildTable(): Float32Array {
  const out = new Float32Array(65536)
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1
    const exp = (h >>> 10) & 0x1f
    const mant = h & 0x3ff
    if (exp === 0) out[h] = sign * mant * 2 ** -24
    else if (exp === 0x1f) out[h] = mant === 0 ? sign * Number.POSITIVE_INFINITY : Number.NaN
    else out[h] = sign * (1024 + mant) * 2 ** (exp - 25)
  }
  return out
}

/** The float value of IEEE binary16 bits `h` (exact). */
export function fp16ToFp32(h: number): number {
  table ??= buildTable()
  return table[h & 0xffff]!
}

/** The shared lookup table from binary16 bits to float (65536 entries, built once). */
export function fp16Table(): Float32Array {
  table ??= buildTable()
  return table
}
