import { dequantizeRow, fp16ToFp32, fp32ToFp16, GGML_TYPE, quantizeRow, rowByteLength } from '@meshnet/gguf'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { KernelBuffer, Kernels } from '../../src/kernels/api.ts'
import { createJsKernels } from '../../src/kernels/js.ts'
import { KERNEL_TYPES, PACKED_TYPE_BASE } from '../../src/kernels/types.ts'
import { createWasmKernels, liveKernelWorkers } from '../../src/kernels/wasm.ts'

const { F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS } =
  GGML_TYPE
const NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(GGML_TYPE).map(([name, id]) => [id, name]),
)

/** How ggml's CPU backend rounds the activations for each weight type (its `vec_dot_type`). */
function activationClass(type: number): 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q8_1' | 'q8_K' {
  if (type === F32 || type === F16 || type === BF16)
    return type === F32 ? 'f32' : type === F16 ? 'f16' : 'bf16'
  if (type === Q4_1 || type === Q5_1) return 'q8_1'
  if (type === Q4_0 || type === Q5_0 || type === Q8_0 || type === IQ4_NL) return 'q8_0'
  return 'q8_K'
}

/** Deterministic values in [-1, 1) (a 32-bit LCG), so failures reproduce. */
function values(seed: number, n: number, scale = 1): Float32Array {
  let s = seed >>> 0
  const out = new Float32Array(n)
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0
    out[i] = ((s / 2 ** 32) * 2 - 1) * scale
  }
  return out
}

/** `rows` rows of `cols` random values quantized to `type` with @meshnet/gguf (ggml's quantizers). */
function weights(type: number, rows: number, cols: number, seed: number, scale = 1): Uint8Array {
  const rowBytes = rowByteLength(type, cols)
  const out = new Uint8Array(rows * rowBytes)
  for (let r = 0; r < rows; r++) {
    quantizeRow(type, values(seed * 7919 + r, cols, scale), out.subarray(r * rowBytes))
  }
  return out
}

function upload(k: Kernels, data: Uint8Array | Float32Array): KernelBuffer {
  const buf = k.alloc(data.byteLength)
  buf.bytes().set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength))
  return buf
}

const f = Math.fround
/** An activation value that every rounding the kernels apply keeps exact: 127 · 2^-7. */
const ONE_HOT = 127 / 128

function roundHalfEven(v: number): number {
  const r = Math.round(v)
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r
}

const halfOf = (v: number) => fp16ToFp32(fp32ToFp16(v))

/** v rounded to the nearest bf16, ties to even (ggml's GGML_FP32_TO_BF16, for finite v). */
function bf16Of(v: number): number {
  const u = new Uint32Array(new Float32Array([v]).buffer)
  u[0] = (u[0]! + 0x7fff + ((u[0]! >>> 16) & 1)) & 0xffff0000
  return new Float32Array(u.buffer)[0]!
}

/** q8_0 / q8_1 blocks of 32 as ggml's x86 quantize_row_q8_0/q8_1 make them: q, d and q8_1's s. */
function q8Blocks(x: Float32Array): { q: Int8Array; d: Float32Array; s: Float32Array } {
  const nb = x.length / 32
  const q = new Int8Array(x.length)
  const d = new Float32Array(nb)
  const s = new Float32Array(nb)
  for (let b = 0; b < nb; b++) {
    let amax = 0
    for (let i = b * 32; i < b * 32 + 32; i++) amax = Math.max(amax, Math.abs(x[i]!))
    const id = amax === 0 ? 0 : f(127 / amax)
    let sum = 0
    for (let i = b * 32; i < b * 32 + 32; i++) {
      q[i] = roundHalfEven(f(x[i]! * id))
      sum += q[i]!
    }
    d[b] = halfOf(f(amax / 127))
    s[b] = halfOf(f(f(amax / 127) * sum))
  }
  return { q, d, s }
}

/**
 * The activations the WebAssembly kernels multiply with, given back as floats: x rounded as ggml's
 * CPU backend rounds it for the weight type (f32 arithmetic, ties to even). q8_0 (Q8_0, Q4_0, Q5_0,
 * IQ4_NL) and q8_1 (Q4_1, Q5_1) on x86: blocks of 32 as round(x · 127 / max|x|) times the half
 * nearest max|x| / 127. q8_K (the K-quants, IQ4_XS): blocks of 256 with iscale = -127 / (the value
 * of largest magnitude). F16, BF16: the nearest halves or bf16s.
 */
function wasmActivations(type: number, x: Float32Array): Float32Array {
  const kind = activationClass(type)
  if (kind === 'f32') return x
  const out = new Float32Array(x.length)
  if (kind === 'f16' || kind === 'bf16') {
    for (let i = 0; i < x.length; i++) out[i] = kind === 'f16' ? halfOf(x[i]!) : bf16Of(x[i]!)
    return out
  }
  if (kind === 'q8_0' || kind === 'q8_1') {
    const { q, d } = q8Blocks(x)
    for (let i = 0; i < x.length; i++) out[i] = q[i]! * d[i >> 5]!
    return out
  }
  for (let b = 0; b < x.length; b += 256) {
    let extreme = 0
    for (let i = b; i < b + 256; i++) if (Math.abs(x[i]!) > Math.abs(extreme)) extreme = x[i]!
    const iscale = extreme === 0 ? 0 : f(-127 / extreme)
    const d = extreme === 0 ? 0 : f(1 / iscale)
    for (let i = b; i < b + 256; i++) out[i] = Math.min(127, roundHalfEven(f(x[i]! * iscale))) * d
  }
  return out
}

interface Expected {
  /** ggml's dot product: Σ w·x' with the activations the kernel uses (and q8_1's s), in f64. */
  value: Float64Array
  /** Σ |w·x'|: the scale of f32 rounding in the kernel's sum. */
  mass: Float64Array
  /**
   * The worst case of rounding x as the kernels do (the bound documented in src/kernels/api.ts):
   * Σ over x blocks of 1.07·(max|x| / 254)·Σ|w| (half a step, and the step rounded to a half for
   * q8_0 and q8_1), plus 2^-10·|m|·Σ|x| per block for q8_1's s (Q4_1, Q5_1, whose blocks add m);
   * 2^-11·Σ|w·x| for halves, 2^-8·Σ|w·x| for bf16s.
   */
  roundingBound: Float64Array
}

/**
 * ggml's dot products as dequantize-then-dot with @meshnet/gguf's dequantizeRow (bit-exact with
 * ggml) and the rounded activations, in f64. For Q4_1 and Q5_1 ggml adds m·s per block, where s
 * is d_x·Σq rounded to a half, not Σ of the rounded activations: that difference is added.
 */
function expected(
  type: number,
  w: Uint8Array,
  rows: number,
  cols: number,
  x: Float32Array,
  n: number,
): Expected {
  const rowBytes = rowByteLength(type, cols)
  const kind = activationClass(type)
  const block = kind === 'q8_K' ? 256 : 32
  const value = new Float64Array(n * rows)
  const mass = new Float64Array(n * rows)
  const roundingBound = new Float64Array(n * rows)
  const blockBytes = rowBytes / (cols / 32)
  for (let i = 0; i < n; i++) {
    const xi = x.subarray(i * cols, (i + 1) * cols)
    const xq = wasmActivations(type, xi)
    const q8 = kind === 'q8_1' ? q8Blocks(xi) : undefined
    for (let r = 0; r < rows; r++) {
      const row = w.subarray(r * rowBytes, (r + 1) * rowBytes)
      const wr = dequantizeRow(type, row, cols)
      let v = 0
      let m = 0
      let bound = 0
      for (let c = 0; c < cols; c += block) {
        let amax = 0
        let wsum = 0
        let xsum = 0
        for (let j = c; j < Math.min(c + block, cols); j++) {
          v += wr[j]! * xq[j]!
          m += Math.abs(wr[j]! * xq[j]!)
          amax = Math.max(amax, Math.abs(xi[j]!))
          wsum += Math.abs(wr[j]!)
          xsum += Math.abs(xi[j]!)
        }
        bound += 1.07 * (amax / 254) * wsum
        if (q8 !== undefined) {
          const b = c / 32
          const min = fp16ToFp32(row[b * blockBytes + 2]! | (row[b * blockBytes + 3]! << 8))
          let qsum = 0
          for (let j = c; j < c + 32; j++) qsum += q8.q[j]!
          v += min * (q8.s[b]! - q8.d[b]! * qsum)
          bound += 2 ** -10 * 1.01 * Math.abs(min) * xsum
        }
      }
      value[i * rows + r] = v
      mass[i * rows + r] = m
      roundingBound[i * rows + r] =
        kind === 'f32' ? 0 : kind === 'f16' ? 2 ** -11 * m : kind === 'bf16' ? 2 ** -8 * m : bound
    }
  }
  return { value, mass, roundingBound }
}

// Shapes that exercise the 4-block unrolled loops and their tails, odd row counts, and jobs both
// below and above the size at which a call is split across threads.
const SHAPES: ReadonlyArray<readonly [type: number, rows: number, cols: number]> = [
  [F32, 67, 100],
  [F32, 301, 768],
  [F16, 67, 77],
  [F16, 301, 512],
  [BF16, 67, 77],
  [BF16, 301, 512],
  [Q8_0, 67, 416],
  [Q8_0, 301, 768],
  [Q4_0, 67, 224],
  [Q4_0, 301, 768],
  [Q4_1, 67, 224],
  [Q4_1, 301, 768],
  [Q5_0, 67, 96],
  [Q5_0, 301, 800],
  [Q5_1, 67, 224],
  [Q5_1, 301, 768],
  [IQ4_NL, 67, 160],
  [IQ4_NL, 301, 768],
  [Q2_K, 67, 256],
  [Q2_K, 301, 768],
  [Q3_K, 67, 512],
  [Q3_K, 301, 768],
  [Q4_K, 67, 256],
  [Q4_K, 301, 768],
  [Q5_K, 67, 256],
  [Q5_K, 301, 1024],
  [Q5_K, 33, 768],
  [Q6_K, 67, 512],
  [Q6_K, 301, 768],
  [IQ4_XS, 67, 256],
  [IQ4_XS, 301, 768],
]

/** Relative f32 rounding allowed in a kernel sum, times Σ|w·x|. */
const F32_TOLERANCE = 2e-6

describe.each([1, 2])('WebAssembly kernels on %i thread(s)', (threads) => {
  let wasm: Kernels
  const js = createJsKernels()
  beforeAll(async () => {
    wasm = await createWasmKernels({ threads, spinIterations: 1000 })
  })
  afterAll(async () => {
    await wasm.dispose()
  })

  it.each(SHAPES)(
    'matvec of ggml type %i (%i×%i) equals dequantize-then-dot with its activations',
    (type, rows, cols) => {
      const w = weights(type, rows, cols, rows + cols)
      const x = values(cols, cols, 3)
      const out = wasm.alloc(rows * 4)
      wasm.matvec(type, upload(wasm, w), rows, cols, upload(wasm, x), out)
      const want = expected(type, w, rows, cols, x, 1)
      const got = out.f32()
      for (let r = 0; r < rows; r++) {
        expect(Math.abs(got[r]! - want.value[r]!), `${NAMES[type]} row ${r}`).toBeLessThanOrEqual(
          F32_TOLERANCE * want.mass[r]! + 1e-6,
        )
      }
    },
  )

  it.each(SHAPES)(
    'matvec of ggml type %i (%i×%i) is within the 8-bit activation bound of the JS reference',
    (type, rows, cols) => {
      const w = weights(type, rows, cols, 3 * rows + cols)
      const x = values(2 * cols, cols, 2)
      const out = wasm.alloc(rows * 4)
      wasm.matvec(type, upload(wasm, w), rows, cols, upload(wasm, x), out)
      const ref = js.alloc(rows * 4)
      js.matvec(type, upload(js, w), rows, cols, upload(js, x), ref)
      const want = expected(type, w, rows, cols, x, 1)
      const got = out.f32()
      const exact = ref.f32()
      for (let r = 0; r < rows; r++) {
        const bound = want.roundingBound[r]! + F32_TOLERANCE * want.mass[r]! + 1e-6
        expect(Math.abs(got[r]! - exact[r]!), `${NAMES[type]} row ${r}`).toBeLessThanOrEqual(bound)
      }
    },
  )

  it.each(SHAPES.filter(([type]) => type !== F32))(
    'matvec of ggml type %i (%i×%i) rounds activations that are already rounded losslessly',
    (type, rows, cols) => {
      const w = weights(type, rows, cols, 2 * rows + cols)
      const x = wasmActivations(type, values(3 * cols, cols, 4))
      expect(wasmActivations(type, x)).toEqual(x)
      const out = wasm.alloc(rows * 4)
      wasm.matvec(type, upload(wasm, w), rows, cols, upload(wasm, x), out)
      const want = expected(type, w, rows, cols, x, 1)
      const got = out.f32()
      const rowBytes = rowByteLength(type, cols)
      for (let r = 0; r < rows; r++) {
        const wr = dequantizeRow(type, w.subarray(r * rowBytes, (r + 1) * rowBytes), cols)
        let exact = 0
        for (let c = 0; c < cols; c++) exact += wr[c]! * x[c]!
        // Q4_1, Q5_1: ggml's m·s term, s = d·Σq rounded to a half, is not m·Σ of the values.
        if (activationClass(type) === 'q8_1') exact = want.value[r]!
        expect(Math.abs(got[r]! - exact), `${NAMES[type]} row ${r}`).toBeLessThanOrEqual(
          F32_TOLERANCE * want.mass[r]! + 1e-6,
        )
      }
    },
  )

  it.each(SHAPES)(
    'matmul of ggml type %i (%i×%i) over 9 rows equals dequantize-then-dot with its activations',
    (type, rows, cols) => {
      // Rows go in groups of four, then one at a time: 9 takes both paths.
      const n = 9
      const w = weights(type, rows, cols, 11)
      const x = values(5, n * cols)
      const out = wasm.alloc(n * rows * 4)
      wasm.matmul(type, upload(wasm, w), rows, cols, upload(wasm, x), n, out)
      const want = expected(type, w, rows, cols, x, n)
      const got = out.f32()
      for (let j = 0; j < n * rows; j++) {
        expect(
          Math.abs(got[j]! - want.value[j]!),
          `${NAMES[type]} activation ${Math.floor(j / rows)} row ${j % rows}`,
        ).toBeLessThanOrEqual(F32_TOLERANCE * want.mass[j]! + 1e-6)
      }
    },
  )

  /** Expects each of `n` activation rows of a matmul to give what a matvec of that row gives. */
  function expectRowsAsMatvecs(type: number, rows: number, cols: number, n: number, seed: number): void {
    const w = upload(wasm, weights(type, rows, cols, seed))
    const xs = upload(wasm, values(seed + n, n * cols))
    const all = wasm.alloc(n * rows * 4)
    wasm.matmul(type, w, rows, cols, xs, n, all)
    const one = wasm.alloc(rows * 4)
    for (let i = 0; i < n; i++) {
      wasm.matvec(type, w, rows, cols, wasm.view(xs, i * cols * 4, cols * 4), one)
      for (let r = 0; r < rows; r++) {
        const a = all.f32()[i * rows + r]!
        expect(Math.abs(a - one.f32()[r]!), `${NAMES[type]} n ${n} [${i}, ${r}]`).toBeLessThanOrEqual(
          1e-5 * (1 + Math.abs(a)),
        )
      }
    }
  }

  it('gives one activation row the same result in a matmul as in a matvec, within f32 rounding', () => {
    for (const type of KERNEL_TYPES) expectRowsAsMatvecs(type, 64, 512, 4, 3)
    // F32 and F16 rows are shared by up to four activation rows at once, in groups of 2 to 4.
    for (const type of [F32, F16]) for (const n of [2, 3, 5, 6, 7]) expectRowsAsMatvecs(type, 40, 200, n, 8)
  })

  // Continuous batching runs the decode steps of several sequences as one matmul: each must get
  // exactly the tokens it gets alone, so a row's result may not depend on the batch it is in.
  it('a row multiplied in a batch gives the bits it gives alone', () => {
    const bits = (v: Float32Array) => Buffer.from(v.buffer, v.byteOffset, v.byteLength)
    const cases: Array<{ type: number; cols: number; stride: 1 | 2; pack: boolean }> = []
    for (const type of KERNEL_TYPES) {
      // Column counts with a tail after the unrolled blocks (7 blocks of 32, 77 = 9·8 + 5 values).
      const kind = activationClass(type)
      const cols = kind === 'q8_K' ? 768 : kind === 'f32' || kind === 'f16' || kind === 'bf16' ? 77 : 224
      cases.push({ type, cols, stride: 1, pack: false }, { type, cols, stride: 2, pack: false })
      if (type === Q4_0 || type === Q8_0) cases.push({ type, cols, stride: 1, pack: true })
    }
    for (const { type, cols, stride, pack } of cases) {
      // 133 rows: more than two row tiles, so that matmuls split across threads, and a packed
      // matrix keeps one row in the ggml layout.
      const rows = 133
      const rowBytes = rowByteLength(type, cols)
      const w = upload(wasm, weights(type, rows * stride, cols, type * 31 + cols))
      const as = pack ? wasm.pack!(type, w, rows, cols) : type
      expect(as, NAMES[type]).toBe(pack ? PACKED_TYPE_BASE + type : type)
      const label = `${NAMES[type]}${pack ? ' packed' : ''}${stride > 1 ? ' strided' : ''}`
      const xs = upload(wasm, values(type + cols, 9 * cols, 3))
      const one = wasm.alloc(rows * 4)
      const alone: Buffer[] = []
      for (let i = 0; i < 9; i++) {
        wasm.matvec(as, w, rows, cols, wasm.view(xs, i * cols * 4, cols * 4), one, stride * rowBytes)
        alone.push(Buffer.from(bits(one.f32())))
      }
      for (let n = 1; n <= 9; n++) {
        // Row i of the batch is activation row (i + n) % 9: each row at several positions.
        const x = wasm.alloc(n * cols * 4)
        for (let i = 0; i < n; i++)
          x.f32().set(xs.f32().subarray(((i + n) % 9) * cols, (((i + n) % 9) + 1) * cols), i * cols)
        const out = wasm.alloc(n * rows * 4)
        wasm.matmul(as, w, rows, cols, x, n, out, stride * rowBytes)
        for (let i = 0; i < n; i++) {
          const got = bits(out.f32().subarray(i * rows, (i + 1) * rows))
          expect(got.equals(alone[(i + n) % 9]!), `${label}: row ${i} of ${n}`).toBe(true)
        }
        wasm.free(x)
        wasm.free(out)
      }
      wasm.free(w)
      wasm.free(xs)
      wasm.free(one)
    }
  })

  // Q4_0 and Q8_0 weights packed four rows together (Kernels.pack): rows past the last group stay
  // in the ggml layout, and weights of 1e-4 and 1e-6 give subnormal half block scales.
  it.each([
    [Q4_0, 7, 64, 1],
    [Q4_0, 130, 256, 1e-4],
    [Q4_0, 37, 768, 1],
    [Q8_0, 4, 32, 1],
    [Q8_0, 130, 256, 1e-6],
    [Q8_0, 37, 768, 1],
  ])(
    'packs ggml type %i (%i×%i, weights of %d) and multiplies it as the ggml layout does',
    (type, rows, cols, scale) => {
      const data = weights(type, rows, cols, 17, scale)
      const plain = upload(wasm, data)
      const packed = upload(wasm, data)
      const packedType = wasm.pack!(type, packed, rows, cols)
      expect(packedType).toBe(PACKED_TYPE_BASE + type)
      expect(Buffer.from(packed.bytes()).equals(Buffer.from(data))).toBe(rows < 4)
      for (const n of [1, 3, 4, 9]) {
        const x = upload(wasm, values(n + cols, n * cols, 2))
        const want = wasm.alloc(n * rows * 4)
        const got = wasm.alloc(n * rows * 4)
        wasm.matmul(type, plain, rows, cols, x, n, want)
        wasm.matmul(packedType, packed, rows, cols, x, n, got)
        const mass = expected(type, data, rows, cols, x.f32(), n).mass
        for (let j = 0; j < n * rows; j++) {
          expect(
            Math.abs(got.f32()[j]! - want.f32()[j]!),
            `n ${n}, activation ${Math.floor(j / rows)} row ${j % rows}`,
          ).toBeLessThanOrEqual(F32_TOLERANCE * mass[j]! + 1e-12)
        }
      }
    },
  )

  it('reads weight rows rowStride bytes apart, as one head of a KV cache', () => {
    // A cache of 200 positions × 4 heads × 64 (K-quants: 60 × 4 × 256); head 2's keys are every
    // 4th row.
    const heads = 4
    for (const type of KERNEL_TYPES) {
      const d = activationClass(type) === 'q8_K' ? 256 : 64
      const positions = d === 256 ? 60 : 200
      const rowBytes = rowByteLength(type, d)
      const cache = weights(type, positions * heads, d, 8)
      const head = new Uint8Array(positions * rowBytes)
      for (let t = 0; t < positions; t++)
        head.set(cache.subarray((t * heads + 2) * rowBytes, (t * heads + 3) * rowBytes), t * rowBytes)
      const q = upload(wasm, values(4, d))
      const strided = wasm.alloc(positions * 4)
      const kc = upload(wasm, cache)
      wasm.matvec(
        type,
        wasm.view(kc, 2 * rowBytes, kc.byteLength - 2 * rowBytes),
        positions,
        d,
        q,
        strided,
        heads * rowBytes,
      )
      const packed = wasm.alloc(positions * 4)
      const hb = upload(wasm, head)
      wasm.matvec(type, hb, positions, d, q, packed)
      expect(Array.from(strided.f32()), NAMES[type]).toEqual(Array.from(packed.f32()))
      // A matmul of five activation rows reads the same strided rows.
      const xs = upload(wasm, values(6, 5 * d))
      const mStrided = wasm.alloc(5 * positions * 4)
      wasm.matmul(
        type,
        wasm.view(kc, 2 * rowBytes, kc.byteLength - 2 * rowBytes),
        positions,
        d,
        xs,
        5,
        mStrided,
        heads * rowBytes,
      )
      const mPacked = wasm.alloc(5 * positions * 4)
      wasm.matmul(type, hb, positions, d, xs, 5, mPacked)
      expect(Array.from(mStrided.f32()), NAMES[type]).toEqual(Array.from(mPacked.f32()))
      const ref = js.alloc(positions * 4)
      const jc = upload(js, cache)
      js.matvec(
        type,
        js.view(jc, 2 * rowBytes, jc.byteLength - 2 * rowBytes),
        positions,
        d,
        upload(js, values(4, d)),
        ref,
        heads * rowBytes,
      )
      const want = expected(type, head, positions, d, values(4, d), 1)
      for (let t = 0; t < positions; t++) {
        expect(Math.abs(ref.f32()[t]! - want.value[t]!)).toBeLessThanOrEqual(
          1e-6 * (1 + want.mass[t]!) + want.roundingBound[t]!,
        )
      }
    }
  })

  it('computes a row range through views of the weights and the output', () => {
    const [rows, cols] = [301, 768]
    for (const type of KERNEL_TYPES) {
      const rowBytes = rowByteLength(type, cols)
      const w = upload(wasm, weights(type, rows, cols, type))
      const x = upload(wasm, values(9, cols))
      const full = wasm.alloc(rows * 4)
      wasm.matvec(type, w, rows, cols, x, full)
      const part = wasm.alloc(rows * 4)
      const [from, to] = [37, 250]
      wasm.matvec(
        type,
        wasm.view(w, from * rowBytes, (to - from) * rowBytes),
        to - from,
        cols,
        x,
        wasm.view(part, from * 4, (to - from) * 4),
      )
      expect(Array.from(part.f32().subarray(from, to))).toEqual(Array.from(full.f32().subarray(from, to)))
      expect(part.f32()[from - 1]).toBe(0)
      expect(part.f32()[to]).toBe(0)
    }
  })
})

/**
 * Multiplies `w` (ggml rows of `type`, in kernel memory as `wb`, multiplied as `multiplyAs`) with
 * one-hot activations, column by column, and expects each weight exactly as ggml dequantizes it, up
 * to the one f32 rounding of the product of the integer sum and the block scales.
 */
function expectOneHot(
  wasm: Kernels,
  type: number,
  w: Uint8Array,
  wb: KernelBuffer,
  rows: number,
  cols: number,
  multiplyAs = type,
): void {
  const x = wasm.alloc(cols * 4)
  const out = wasm.alloc(rows * 4)
  const rowBytes = rowByteLength(type, cols)
  const want = Array.from({ length: rows }, (_, r) =>
    dequantizeRow(type, w.subarray(r * rowBytes, (r + 1) * rowBytes), cols),
  )
  const largest = want.map((row) => row.reduce((m, v) => Math.max(m, Math.abs(v)), 0))
  for (let c = 0; c < cols; c++) {
    // 127/128: every rounding of activations (q8_0, q8_K, half) keeps it exactly.
    x.f32().fill(0)
    x.f32()[c] = ONE_HOT
    wasm.matvec(multiplyAs, wb, rows, cols, x, out)
    for (let r = 0; r < rows; r++) {
      expect(
        Math.abs(out.f32()[r]! / ONE_HOT - want[r]![c]!),
        `${NAMES[type]} [${r}, ${c}]`,
      ).toBeLessThanOrEqual(largest[r]! * 1e-6)
    }
  }
}

describe('WebAssembly kernels', () => {
  // Weights of 1e-4 make every block scale (and some F16 weights) a subnormal half.
  it.each([1, 1e-4])(
    'read each weight exactly as ggml dequantizes it (one-hot activations, weights of %d)',
    async (scale) => {
      const wasm = await createWasmKernels()
      try {
        const [rows, cols] = [3, 256]
        for (const type of KERNEL_TYPES) {
          const w = weights(type, rows, cols, 99, scale)
          expectOneHot(wasm, type, w, upload(wasm, w), rows, cols)
        }
      } finally {
        await wasm.dispose()
      }
    },
  )

  it('keeps buffers and their contents valid when kernel memory grows', async () => {
    const wasm = await createWasmKernels({ threads: 2, spinIterations: 0 })
    try {
      const [rows, cols] = [256, 512]
      const w = weights(Q8_0, rows, cols, 5)
      const wb = upload(wasm, w)
      const x = upload(wasm, values(1, cols))
      const before = wasm.alloc(rows * 4)
      wasm.matvec(Q8_0, wb, rows, cols, x, before)
      const viewBefore = wb.bytes()
      const big = wasm.alloc(64 * 1024 * 1024)
      big.bytes().fill(0x5a)
      expect(big.bytes().buffer.byteLength).toBeGreaterThan(viewBefore.buffer.byteLength)
      expect(wb.bytes()).toEqual(w)
      const after = wasm.alloc(rows * 4)
      wasm.matvec(Q8_0, wb, rows, cols, x, after)
      expect(Array.from(after.f32())).toEqual(Array.from(before.f32()))
      wasm.free(big)
      // The freed range is reused.
      expect(wasm.alloc(1024).ptr).toBe(big.ptr)
    } finally {
      await wasm.dispose()
    }
  })

  it('gives 4 threads the results of 1 over many back-to-back calls of mixed sizes', async () => {
    const one = await createWasmKernels()
    const four = await createWasmKernels({ threads: 4, spinIterations: 2000 })
    try {
      const cols = 512
      const shapes = [
        Q8_0,
        Q4_0,
        Q4_K,
        Q6_K,
        F16,
        BF16,
        Q4_1,
        Q5_0,
        Q5_1,
        IQ4_NL,
        Q2_K,
        Q3_K,
        Q5_K,
        IQ4_XS,
      ].map((type) => {
        const w = weights(type, 300, cols, type)
        return { type, w1: upload(one, w), w4: upload(four, w) }
      })
      const x = values(77, 8 * cols)
      const [x1, x4] = [upload(one, x), upload(four, x)]
      const [o1, o4] = [one.alloc(8 * 300 * 4), four.alloc(8 * 300 * 4)]
      for (let call = 0; call < 300; call++) {
        const { type, w1, w4 } = shapes[Math.floor(call / 4) % shapes.length]!
        const rows = [300, 17, 160, 33][call % 4]!
        const n = [1, 1, 5, 2][call % 4]!
        one.matmul(type, w1, rows, cols, x1, n, o1)
        four.matmul(type, w4, rows, cols, x4, n, o4)
        expect(o4.f32().subarray(0, n * rows)).toEqual(o1.f32().subarray(0, n * rows))
      }
    } finally {
      await Promise.all([one.dispose(), four.dispose()])
    }
  })

  it('refuses to grow past maxMemoryBytes with a KernelMemoryError', async () => {
    const wasm = await createWasmKernels({ maxMemoryBytes: 8 * 1024 * 1024 })
    try {
      const a = wasm.alloc(4 * 1024 * 1024)
      expect(() => wasm.alloc(6 * 1024 * 1024)).toThrow(
        expect.objectContaining({ name: 'KernelMemoryError' }),
      )
      wasm.free(a)
      expect(wasm.alloc(6 * 1024 * 1024).byteLength).toBe(6 * 1024 * 1024)
    } finally {
      await wasm.dispose()
    }
  })

  it('runs without a worker at 1 thread and stops every worker on dispose', async () => {
    const before = liveKernelWorkers()
    const one = await createWasmKernels({ threads: 1 })
    expect(liveKernelWorkers()).toBe(before)
    const three = await createWasmKernels({ threads: 3 })
    expect(three.threads).toBe(3)
    expect(liveKernelWorkers()).toBe(before + 2)
    const [rows, cols] = [300, 768]
    const out = three.alloc(rows * 4)
    three.matvec(
      Q4_0,
      upload(three, weights(Q4_0, rows, cols, 1)),
      rows,
      cols,
      upload(three, values(2, cols)),
      out,
    )
    await Promise.all([one.dispose(), three.dispose()])
    expect(liveKernelWorkers()).toBe(before)
    expect(() => three.alloc(16)).toThrow(expect.objectContaining({ name: 'KernelUnavailableError' }))
  })

  it('rejects unsupported types, short buffers, foreign buffers and bad frees', async () => {
    const wasm = await createWasmKernels()
    const js = createJsKernels()
    try {
      const w = wasm.alloc(34 * 4)
      const x = wasm.alloc(32 * 4)
      const out = wasm.alloc(4 * 4)
      expect(() => wasm.matvec(GGML_TYPE.IQ2_XXS, w, 4, 256, x, out)).toThrow(
        expect.objectContaining({ name: 'UnsupportedTensorTypeError' }),
      )
      expect(() => wasm.matvec(Q8_0, w, 5, 32, x, out)).toThrow(
        expect.objectContaining({ name: 'InvalidArgumentError' }),
      )
      expect(() => wasm.matvec(Q8_0, w, 4, 48, x, out)).toThrow(
        expect.objectContaining({ name: 'InvalidArgumentError' }),
      )
      expect(() => wasm.matvec(Q8_0, w, 4, 32, x, out, 33)).toThrow(
        expect.objectContaining({ name: 'InvalidArgumentError' }),
      )
      expect(() => wasm.matvec(Q8_0, w, 3, 32, x, out, 52)).toThrow(
        expect.objectContaining({ name: 'InvalidArgumentError' }),
      )
      expect(() => wasm.matvec(Q8_0, w, 4, 32, js.alloc(128), out)).toThrow(
        expect.objectContaining({ name: 'InvalidArgumentError' }),
      )
      expect(() => wasm.free(wasm.view(w, 0, 34))).toThrow(
        expect.objectContaining({ name: 'InvalidArgumentError' }),
      )
      wasm.free(w)
      expect(() => wasm.free(w)).toThrow(expect.objectContaining({ name: 'InvalidArgumentError' }))
      expect(() => w.bytes()).toThrow(expect.objectContaining({ name: 'InvalidArgumentError' }))
    } finally {
      await wasm.dispose()
    }
  })

  it.each([1, 1e-4, 1e-6])(
    'reads each packed weight exactly as ggml dequantizes it (one-hot activations, weights of %d)',
    async (scale) => {
      const wasm = await createWasmKernels()
      try {
        const [rows, cols] = [5, 64]
        for (const type of [Q4_0, Q8_0]) {
          const w = weights(type, rows, cols, 5, scale)
          const wb = upload(wasm, w)
          const packed = wasm.pack!(type, wb, rows, cols)
          expect(packed, NAMES[type]).toBe(PACKED_TYPE_BASE + type)
          expectOneHot(wasm, type, w, wb, rows, cols, packed)
        }
      } finally {
        await wasm.dispose()
      }
    },
  )

  it('packs only Q4_0 and Q8_0 matrices of four rows or more whose scales it can encode', async () => {
    const wasm = await createWasmKernels()
    const js = createJsKernels()
    try {
      for (const type of KERNEL_TYPES.filter((t) => t !== Q4_0 && t !== Q8_0)) {
        const w = upload(wasm, weights(type, 8, 256, 1))
        expect(wasm.pack!(type, w, 8, 256), NAMES[type]).toBe(type)
      }
      expect(wasm.pack!(Q4_0, upload(wasm, weights(Q4_0, 3, 64, 1)), 3, 64)).toBe(Q4_0)
      // A block scale of 256 (weights up to ±2048) has no packed encoding: the matrix stays as it is.
      const big = weights(Q8_0, 4, 32, 1)
      new DataView(big.buffer).setUint16(34, fp32ToFp16(256), true)
      const wb = upload(wasm, big)
      expect(wasm.pack!(Q8_0, wb, 4, 32)).toBe(Q8_0)
      expect(Buffer.from(wb.bytes()).equals(Buffer.from(big))).toBe(true)
      // A packed matrix is for the kernels that packed it, read with its own row stride only.
      const p = upload(wasm, weights(Q4_0, 4, 64, 2))
      const type = wasm.pack!(Q4_0, p, 4, 64)
      const x = wasm.alloc(64 * 4)
      const out = wasm.alloc(4 * 4)
      expect(() => wasm.matvec(type, p, 2, 64, x, out, 2 * 36)).toThrow(/own row stride/)
      expect(() => js.matvec(type, upload(js, p.bytes()), 4, 64, js.alloc(64 * 4), js.alloc(16))).toThrow(
        /packed layout these kernels do not multiply/,
      )
      expect(js.pack).toBeUndefined()
    } finally {
      await wasm.dispose()
      await js.dispose()
    }
  })

  it('limits a Q8_0 weight of -128 to -127 where x is negative (ggml never writes -128)', async () => {
    const wasm = await createWasmKernels()
    try {
      const block = new Uint8Array(34)
      new DataView(block.buffer).setUint16(0, fp32ToFp16(1), true)
      block.fill(0x80, 2) // -128
      const x = new Float32Array(32).fill(-ONE_HOT)
      const out = wasm.alloc(4)
      wasm.matvec(Q8_0, upload(wasm, block), 1, 32, upload(wasm, x), out)
      expect(out.f32()[0]).toBeCloseTo(127 * 32 * ONE_HOT, 2)
    } finally {
      await wasm.dispose()
    }
  })
})

describe('JS reference kernels', () => {
  it('equal dequantize-then-dot in f64 and multiply matmul rows independently', () => {
    const js = createJsKernels()
    const [rows, cols, n] = [7, 256, 3]
    for (const type of KERNEL_TYPES) {
      const w = weights(type, rows, cols, 4)
      const x = values(8, n * cols)
      const out = js.alloc(n * rows * 4)
      js.matmul(type, upload(js, w), rows, cols, upload(js, x), n, out)
      const rowBytes = rowByteLength(type, cols)
      for (let i = 0; i < n; i++) {
        for (let r = 0; r < rows; r++) {
          const wr = dequantizeRow(type, w.subarray(r * rowBytes, (r + 1) * rowBytes), cols)
          let sum = 0
          for (let c = 0; c < cols; c++) sum += wr[c]! * x[i * cols + c]!
          expect(out.f32()[i * rows + r]).toBe(f(sum))
        }
      }
    }
  })

  it('decode ggml blocks as laid out in ggml-common.h', () => {
    const js = createJsKernels()
    // Q4_0: d = 0.5, qs[j] = j | (15 - j) << 4: value j = (j - 8) / 2, value 16 + j = (7 - j) / 2.
    const q4 = new Uint8Array(18)
    new DataView(q4.buffer).setUint16(0, fp32ToFp16(0.5), true)
    for (let j = 0; j < 16; j++) q4[2 + j] = j | ((15 - j) << 4)
    // Q4_K: d = 1, dmin = 0.25; sub-block s has scale 7s + 9 and min 63 - 5s (6-bit, packed as
    // get_scale_min_k4 reads them); every nibble of sub-block s is s + 3.
    const q4k = new Uint8Array(144)
    const dv = new DataView(q4k.buffer)
    dv.setUint16(0, fp32ToFp16(1), true)
    dv.setUint16(2, fp32ToFp16(0.25), true)
    const sc = (s: number) => 7 * s + 9
    const mn = (s: number) => 63 - 5 * s
    for (let s = 0; s < 4; s++) {
      q4k[4 + s] = sc(s) | ((sc(s + 4) >> 4) << 6)
      q4k[8 + s] = mn(s) | ((mn(s + 4) >> 4) << 6)
      q4k[12 + s] = (sc(s + 4) & 15) | ((mn(s + 4) & 15) << 4)
    }
    for (let k = 0; k < 4; k++)
      for (let l = 0; l < 32; l++) q4k[16 + 32 * k + l] = (2 * k + 3) | ((2 * k + 4) << 4)
    const cases: Array<[number, Uint8Array, number, (i: number) => number]> = [
      [Q4_0, q4, 32, (i) => (i < 16 ? (i - 8) / 2 : (7 - (i - 16)) / 2)],
      [Q4_K, q4k, 256, (i) => sc(i >> 5) * ((i >> 5) + 3) - 0.25 * mn(i >> 5)],
    ]
    for (const [type, block, cols, value] of cases) {
      const w = upload(js, block)
      const x = js.alloc(cols * 4)
      const out = js.alloc(4)
      for (let i = 0; i < cols; i++) {
        x.f32().fill(0)
        x.f32()[i] = 1
        js.matvec(type, w, 1, cols, x, out)
        expect(out.f32()[0], `${NAMES[type]} value ${i}`).toBe(value(i))
      }
    }
  })
})

/** A deterministic byte pattern. */
const pattern = (i: number, mul: number) => (i * mul + 11) & 0xff

/** ggml's kvalues_iq4nl. */
const KVALUES = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]

/**
 * One hand-built block per new type, with its values computed straight from the block layout of
 * ggml-common.h and ggml's dequantize_row_* (not through @meshnet/gguf): d = 1 (and dmin or m =
 * 0.25 or -0.5), so every value is exact in f32.
 */
function handBuiltBlocks(): Array<
  [type: number, block: Uint8Array, cols: number, value: (i: number) => number]
> {
  const half = (b: Uint8Array, at: number, v: number) =>
    new DataView(b.buffer).setUint16(at, fp32ToFp16(v), true)
  const cases: Array<[number, Uint8Array, number, (i: number) => number]> = []

  // BF16: the top half of a float.
  const bf = new Uint8Array(64)
  for (let i = 0; i < 32; i++) new DataView(bf.buffer).setUint16(2 * i, 0x3f80 + 17 * i - 200 * (i & 1), true)
  cases.push([
    BF16,
    bf,
    32,
    (i) => new Float32Array(new Uint32Array([(0x3f80 + 17 * i - 200 * (i & 1)) << 16]).buffer)[0]!,
  ])

  // Q4_1: d = 1, m = -0.5; value j = (qs[j] & 15) - 0.5, j + 16 = (qs[j] >> 4) - 0.5.
  const q41 = new Uint8Array(20)
  half(q41, 0, 1)
  half(q41, 2, -0.5)
  for (let j = 0; j < 16; j++) q41[4 + j] = pattern(j, 37)
  cases.push([Q4_1, q41, 32, (i) => (i < 16 ? q41[4 + i]! & 15 : q41[4 + i - 16]! >> 4) - 0.5])

  // Q5_0: d = 1, qh a u32 of fifth bits; value j = (nibble | bit j << 4) - 16.
  const q50 = new Uint8Array(22)
  half(q50, 0, 1)
  new DataView(q50.buffer).setUint32(2, 0x9e3779b9, true)
  for (let j = 0; j < 16; j++) q50[6 + j] = pattern(j, 53)
  const qh50 = 0x9e3779b9
  cases.push([
    Q5_0,
    q50,
    32,
    (i) => ((i < 16 ? q50[6 + i]! & 15 : q50[6 + i - 16]! >> 4) | (((qh50 >>> i) & 1) << 4)) - 16,
  ])

  // Q5_1: d = 1, m = 0.25; value j = (nibble | bit j << 4) + 0.25.
  const q51 = new Uint8Array(24)
  half(q51, 0, 1)
  half(q51, 2, 0.25)
  new DataView(q51.buffer).setUint32(4, 0x7f4a7c15, true)
  for (let j = 0; j < 16; j++) q51[8 + j] = pattern(j, 29)
  cases.push([
    Q5_1,
    q51,
    32,
    (i) => ((i < 16 ? q51[8 + i]! & 15 : q51[8 + i - 16]! >> 4) | (((0x7f4a7c15 >>> i) & 1) << 4)) + 0.25,
  ])

  // IQ4_NL: d = 1; value j = kvalues[nibble].
  const nl = new Uint8Array(18)
  half(nl, 0, 1)
  for (let j = 0; j < 16; j++) nl[2 + j] = pattern(j, 71)
  cases.push([IQ4_NL, nl, 32, (i) => KVALUES[i < 16 ? nl[2 + i]! & 15 : nl[2 + i - 16]! >> 4]!])

  // Q2_K: scales[16] (scale | min << 4), qs[64], d = 1, dmin = 0.25. In half k, value 32j + l is
  // bits 2j, 2j + 1 of qs[32k + l], with the scale and min of its 16-value group.
  const q2 = new Uint8Array(84)
  for (let s = 0; s < 16; s++) q2[s] = ((3 * s + 1) & 15) | (((15 - s) & 15) << 4)
  for (let j = 0; j < 64; j++) q2[16 + j] = pattern(j, 97)
  half(q2, 80, 1)
  half(q2, 82, 0.25)
  cases.push([
    Q2_K,
    q2,
    256,
    (i) => {
      const q = (q2[16 + 32 * (i >> 7) + (i & 31)]! >> (2 * ((i >> 5) & 3))) & 3
      const s = i >> 4
      return (q2[s]! & 15) * q - 0.25 * (q2[s]! >> 4)
    },
  ])

  // Q3_K: hmask[32], qs[64], scales[12] (sixteen 6-bit scales: low nibbles in bytes 0-7, low then
  // high nibbles; top two bits in bytes 8-11, field j >> 2 of byte 8 + (j & 3)), d = 1. Value:
  // q2 - 4 unless bit 4k + j of hmask[l] is set, times its group's scale - 32.
  const q3 = new Uint8Array(110)
  const ls3 = (s: number) => (s * 13 + 5) & 63
  for (let l = 0; l < 32; l++) q3[l] = pattern(l, 151)
  for (let j = 0; j < 64; j++) q3[32 + j] = pattern(j, 43)
  for (let s = 0; s < 16; s++) {
    q3[96 + (s & 7)]! |= (ls3(s) & 15) << (s < 8 ? 0 : 4)
    q3[104 + (s & 3)]! |= (ls3(s) >> 4) << (2 * (s >> 2))
  }
  half(q3, 108, 1)
  cases.push([
    Q3_K,
    q3,
    256,
    (i) => {
      const [k, j, l] = [i >> 7, (i >> 5) & 3, i & 31]
      const q2bits = (q3[32 + 32 * k + l]! >> (2 * j)) & 3
      const high = (q3[l]! >> (4 * k + j)) & 1
      return (ls3(i >> 4) - 32) * (q2bits - (high ? 0 : 4))
    },
  ])

  // Q5_K: d = 1, dmin = 0.25, scales as Q4_K (scale 7s + 9, min 63 - 5s), qh[32], qs[128]. Value
  // 64j + l: the low nibble of qs[32j + l] with bit 2j of qh[l] as fifth bit; 64j + 32 + l: the high
  // nibble with bit 2j + 1.
  const q5 = new Uint8Array(176)
  half(q5, 0, 1)
  half(q5, 2, 0.25)
  const sc = (s: number) => 7 * s + 9
  const mn = (s: number) => 63 - 5 * s
  for (let s = 0; s < 4; s++) {
    q5[4 + s] = sc(s) | ((sc(s + 4) >> 4) << 6)
    q5[8 + s] = mn(s) | ((mn(s + 4) >> 4) << 6)
    q5[12 + s] = (sc(s + 4) & 15) | ((mn(s + 4) & 15) << 4)
  }
  for (let l = 0; l < 32; l++) q5[16 + l] = pattern(l, 89)
  for (let j = 0; j < 128; j++) q5[48 + j] = pattern(j, 61)
  cases.push([
    Q5_K,
    q5,
    256,
    (i) => {
      const [j, hi, l] = [i >> 6, (i >> 5) & 1, i & 31]
      const byte = q5[48 + 32 * j + l]!
      const q = (hi ? byte >> 4 : byte & 15) | (((q5[16 + l]! >> (2 * j + hi)) & 1) << 4)
      return sc(i >> 5) * q - 0.25 * mn(i >> 5)
    },
  ])

  // IQ4_XS: d = 1, scales_h (bits 2i, 2i + 1: the top of sub-block i's scale), scales_l[4] (nibble i),
  // qs[128]; value 32i + j is (ls - 32)·kvalues[low nibble of qs[16i + j]], 32i + 16 + j the high.
  const xs = new Uint8Array(136)
  half(xs, 0, 1)
  new DataView(xs.buffer).setUint16(2, 0xb38d, true)
  for (let b = 0; b < 4; b++) xs[4 + b] = pattern(b, 113)
  for (let j = 0; j < 128; j++) xs[8 + j] = pattern(j, 19)
  cases.push([
    IQ4_XS,
    xs,
    256,
    (i) => {
      const [ib, j] = [i >> 5, i & 31]
      const ls = ((xs[4 + (ib >> 1)]! >> (4 * (ib & 1))) & 15) | (((0xb38d >> (2 * ib)) & 3) << 4)
      const byte = xs[8 + 16 * ib + (j & 15)]!
      return (ls - 32) * KVALUES[j < 16 ? byte & 15 : byte >> 4]!
    },
  ])
  return cases
}

describe('hand-built blocks of the other types', () => {
  it.each(handBuiltBlocks())(
    'ggml type %i: both kernels read each value as ggml-common.h lays it out',
    async (type, block, cols, value) => {
      const js = createJsKernels()
      const wasm = await createWasmKernels()
      try {
        const wj = upload(js, block)
        const xj = js.alloc(cols * 4)
        const oj = js.alloc(4)
        for (let i = 0; i < cols; i++) {
          xj.f32().fill(0)
          xj.f32()[i] = 1
          js.matvec(type, wj, 1, cols, xj, oj)
          // (+ 0: a zero scale times a negative value is -0 in the formula.)
          expect(oj.f32()[0]! + 0, `${NAMES[type]} value ${i}`).toBe(value(i) + 0)
        }
        const want = Float32Array.from({ length: cols }, (_, i) => value(i))
        const largest = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0)
        const ww = upload(wasm, block)
        const xw = wasm.alloc(cols * 4)
        const ow = wasm.alloc(4)
        for (let i = 0; i < cols; i++) {
          xw.f32().fill(0)
          xw.f32()[i] = ONE_HOT
          wasm.matvec(type, ww, 1, cols, xw, ow)
          expect(
            Math.abs(ow.f32()[0]! / ONE_HOT - want[i]!),
            `${NAMES[type]} value ${i}`,
          ).toBeLessThanOrEqual(largest * 1e-6)
        }
      } finally {
        await wasm.dispose()
        await js.dispose()
      }
    },
  )
})

describe('integer sums at the extremes', () => {
  // Every quantized field at its largest (all bytes 0xff) but the f16 scales, which are set to 1:
  // the largest unsigned values meet the largest activations, q = ±127, over 16 super-blocks.
  const SCALES: Record<number, number[]> = {
    [Q4_0]: [0],
    [Q4_1]: [0, 2],
    [Q5_0]: [0],
    [Q5_1]: [0, 2],
    [Q8_0]: [0],
    [IQ4_NL]: [0],
    [Q2_K]: [80, 82],
    [Q3_K]: [108],
    [Q4_K]: [0, 2],
    [Q5_K]: [0, 2],
    [Q6_K]: [208],
    [IQ4_XS]: [0],
  }
  it.each(Object.keys(SCALES).map(Number))('ggml type %i', async (type) => {
    const cols = 4096
    const rowBytes = rowByteLength(type, cols)
    const blockBytes = (rowBytes * (activationClass(type) === 'q8_K' ? 256 : 32)) / cols
    const rows = 3
    const w = new Uint8Array(rows * rowBytes).fill(0xff)
    for (let b = 0; b < w.length; b += blockBytes) {
      for (const at of SCALES[type]!) new DataView(w.buffer).setUint16(b + at, fp32ToFp16(1), true)
    }
    const wasm = await createWasmKernels({ threads: 1 })
    try {
      const wb = upload(wasm, w)
      // All +1 (q = 127, or -127 for q8_K's sign convention), then alternating ±1.
      for (const x of [
        new Float32Array(cols).fill(1),
        Float32Array.from({ length: cols }, (_, i) => (i & 1 ? -1 : 1)),
      ]) {
        for (const n of [1, 4]) {
          const xs = new Float32Array(n * cols)
          for (let i = 0; i < n; i++) xs.set(x, i * cols)
          const out = wasm.alloc(n * rows * 4)
          wasm.matmul(type, wb, rows, cols, upload(wasm, xs), n, out)
          const want = expected(type, w, rows, cols, xs, n)
          for (let j = 0; j < n * rows; j++) {
            expect(
              Math.abs(out.f32()[j]! - want.value[j]!),
              `${NAMES[type]} n ${n} [${j}]`,
            ).toBeLessThanOrEqual(F32_TOLERANCE * want.mass[j]! + 1e-6)
          }
        }
      }
    } finally {
      await wasm.dispose()
    }
  })
})
