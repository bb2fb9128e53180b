import { dequantizeRow, fp16ToFp32, fp32ToFp16, GGML_TYPE, quantizeRow, rowByteLength } from '@meshnet/gguf'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { KernelBuffer, Kernels } from '../../src/kernels/api.ts'
import { createJsKernels } from '../../src/kernels/js.ts'
import { KERNEL_TYPES, PACKED_TYPE_BASE } from '../../src/kernels/types.ts'
import { createWasmKernels, liveKernelWorkers } from '../../src/kernels/wasm.ts'

const { F32, F16, Q4_0, Q8_0, Q4_K, Q6_K } = GGML_TYPE
const NAMES: Record<number, string> = {
  [F32]: 'F32',
  [F16]: 'F16',
  [Q4_0]: 'Q4_0',
  [Q8_0]: 'Q8_0',
  [Q4_K]: 'Q4_K',
  [Q6_K]: 'Q6_K',
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

/**
 * The activations the WebAssembly kernels multiply with, given back as floats: x rounded as ggml's
 * CPU backend rounds it for the weight type (f32 arithmetic, ties to even). Q8_0, Q4_0: q8_0 on x86,
 * blocks of 32 as round(x · 127 / max|x|) times the half nearest max|x| / 127. Q4_K, Q6_K: q8_K,
 * blocks of 256 with iscale = -127 / (the value of largest magnitude). F16: the nearest halves.
 */
function wasmActivations(type: number, x: Float32Array): Float32Array {
  if (type === F32) return x
  const out = new Float32Array(x.length)
  if (type === F16) {
    for (let i = 0; i < x.length; i++) out[i] = fp16ToFp32(fp32ToFp16(x[i]!))
    return out
  }
  if (type === Q8_0 || type === Q4_0) {
    for (let b = 0; b < x.length; b += 32) {
      let amax = 0
      for (let i = b; i < b + 32; i++) amax = Math.max(amax, Math.abs(x[i]!))
      const id = amax === 0 ? 0 : f(127 / amax)
      const d = fp16ToFp32(fp32ToFp16(f(amax / 127)))
      for (let i = b; i < b + 32; i++) out[i] = roundHalfEven(f(x[i]! * id)) * d
    }
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
  /** Σ w·x' with the activations the kernel uses, in f64. */
  value: Float64Array
  /** Σ |w·x'|: the scale of f32 rounding in the kernel's sum. */
  mass: Float64Array
  /**
   * The worst case of rounding x as the kernels do: Σ over x blocks of 1.07·(max|x| / 254)·Σ|w|
   * (half a step, and the step rounded to a half for q8_0), or 2^-11·Σ|w·x| for halves.
   */
  roundingBound: Float64Array
}

/** Dequantize-then-dot with @meshnet/gguf's dequantizeRow (bit-exact with ggml), in f64. */
function expected(
  type: number,
  w: Uint8Array,
  rows: number,
  cols: number,
  x: Float32Array,
  n: number,
): Expected {
  const rowBytes = rowByteLength(type, cols)
  const block = type === Q8_0 || type === Q4_0 ? 32 : 256
  const value = new Float64Array(n * rows)
  const mass = new Float64Array(n * rows)
  const roundingBound = new Float64Array(n * rows)
  for (let i = 0; i < n; i++) {
    const xi = x.subarray(i * cols, (i + 1) * cols)
    const xq = wasmActivations(type, xi)
    for (let r = 0; r < rows; r++) {
      const wr = dequantizeRow(type, w.subarray(r * rowBytes, (r + 1) * rowBytes), cols)
      let v = 0
      let m = 0
      let bound = 0
      for (let c = 0; c < cols; c += block) {
        let amax = 0
        let wsum = 0
        for (let j = c; j < Math.min(c + block, cols); j++) {
          v += wr[j]! * xq[j]!
          m += Math.abs(wr[j]! * xq[j]!)
          amax = Math.max(amax, Math.abs(xi[j]!))
          wsum += Math.abs(wr[j]!)
        }
        bound += 1.07 * (amax / 254) * wsum
      }
      value[i * rows + r] = v
      mass[i * rows + r] = m
      roundingBound[i * rows + r] = type === F32 ? 0 : type === F16 ? 2 ** -11 * m : bound
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
  [Q8_0, 67, 416],
  [Q8_0, 301, 768],
  [Q4_0, 67, 224],
  [Q4_0, 301, 768],
  [Q4_K, 67, 256],
  [Q4_K, 301, 768],
  [Q6_K, 67, 512],
  [Q6_K, 301, 768],
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

  it.each(SHAPES.filter(([type]) => type !== F32 && type !== F16))(
    'matvec of ggml type %i (%i×%i) rounds activations that are already 8-bit values losslessly',
    (type, rows, cols) => {
      const w = weights(type, rows, cols, 2 * rows + cols)
      const x = wasmActivations(type, values(3 * cols, cols, 4))
      const out = wasm.alloc(rows * 4)
      wasm.matvec(type, upload(wasm, w), rows, cols, upload(wasm, x), out)
      const want = expected(type, w, rows, cols, x, 1)
      const got = out.f32()
      const rowBytes = rowByteLength(type, cols)
      for (let r = 0; r < rows; r++) {
        const wr = dequantizeRow(type, w.subarray(r * rowBytes, (r + 1) * rowBytes), cols)
        let exact = 0
        for (let c = 0; c < cols; c++) exact += wr[c]! * x[c]!
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
    // A cache of 200 positions × 4 heads × 64; head 2's keys are every 4th run of 64.
    const [positions, heads, d] = [200, 4, 64]
    for (const type of [F32, F16, Q8_0]) {
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
      wasm.matvec(type, upload(wasm, head), positions, d, q, packed)
      expect(Array.from(strided.f32())).toEqual(Array.from(packed.f32()))
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
      const shapes = [Q8_0, Q4_0, Q4_K, Q6_K, F16].map((type) => {
        const w = weights(type, 300, cols, type)
        return { type, w1: upload(one, w), w4: upload(four, w) }
      })
      const x = values(77, 8 * cols)
      const [x1, x4] = [upload(one, x), upload(four, x)]
      const [o1, o4] = [one.alloc(8 * 300 * 4), four.alloc(8 * 300 * 4)]
      for (let call = 0; call < 300; call++) {
        const { type, w1, w4 } = shapes[call % shapes.length]!
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
      expect(() => wasm.matvec(GGML_TYPE.Q5_K, w, 4, 256, x, out)).toThrow(
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
      for (const type of [F32, F16, Q4_K, Q6_K]) {
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
