// Meshnet's WebAssembly compute kernels, written in AssemblyScript and compiled with SIMD, relaxed
// SIMD and threads (see scripts/build-wasm.ts). The host (src/kernels/wasm.ts) owns the shared
// memory: it allocates weights, activations, the quantized-activation scratch and the control
// block, and this module only reads and writes where a job tells it to. There is no AssemblyScript
// runtime, no data segment and no import but the memory, so every thread can instantiate the same
// module over the same memory without touching anything.
//
// One job is `out[i * rows + r] = dot(W row r, x_i)` for r in [0, rows), i in [0, n). As ggml's
// CPU backend does, the activations are first rounded to the weight type's `vec_dot_type`, with
// ggml's rounding, so the results are ggml's up to the order of f32 additions:
// - Q8_0, Q4_0, Q5_0, IQ4_NL: q8_0, blocks of 32 with a half scale each (plus |x| and sign(x) for
//   Q8_0 and IQ4_NL, 8·d·Σq per block for Q4_0, 16·d·Σq for Q5_0);
// - Q4_1, Q5_1: q8_1, the same values with s = d·Σq rounded to a half per block;
// - Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS: q8_K, blocks of 256 with one f32 scale and i16 sums per
//   16 and per 32 values (plus |x| and sign(x) for IQ4_XS);
// - F16: halves; BF16: bf16s; F32: as they are.
// The inner loops of the quantized types are integer dot products (relaxed i8×i7 dot, then i16×i16
// pairs), with the per-block scales applied once per block.
//
// This file holds the types of the first kernels, the activation rounding and the dispatch; the
// other weight types are in bf16.ts, legacy.ts (32-value blocks) and kquants.ts, the shared helpers
// in common.ts.

import { dot4BF16, roundToBF16, roundToBF16x4, rowsBF16 } from './bf16'
import {
  BF16,
  F16,
  F32,
  f16,
  f16x4Fast,
  hsum,
  hsum4,
  hsumLanes,
  IQ4_NL,
  IQ4_XS,
  K_BITS45,
  K_F16_MASK,
  K_F16_SCALE,
  K_F32_EXP,
  K_LOW4,
  K_ONES16,
  K_PACK_SCALE,
  PACKED,
  Q2_K,
  Q3_K,
  Q4_0,
  Q4_0X4,
  Q4_1,
  Q4_K,
  Q5_0,
  Q5_1,
  Q5_K,
  Q6_K,
  Q8_0,
  q4_KQuad,
  scales4,
  scales256x4,
  scalesMinsK4,
  splatB,
  splatW,
  superBlock,
  superBlockNoMin,
  writeConstants,
  ZERO,
} from './common'
import { dot4KQuant, rowsKQuant } from './kquants'
import { rowsLegacy } from './legacy'

// Control block, at byte offsets (mirrored in src/kernels/wasm.ts). A job is split into chunks of
// rows that threads claim one at a time from CLAIM, an i64 of (job id << 32 | next chunk): a thread
// claims with a compare-exchange that also checks the job id, so a worker that wakes up late, or
// reads the parameters of a newer job, cannot take a chunk of a job it did not read. The caller
// claims chunks too and returns once DONE counts every chunk, so a descheduled worker delays a job
// only by the chunk it holds.
const C_GEN: usize = 0 // i32, bumped for each job that wants workers; idle workers poll it
const C_CLAIM: usize = 64 // i64, on its own cache line: every claim writes it
const C_DONE: usize = 128 // i32, chunks finished; the caller waits on it
const C_QUIT: usize = 192
const C_TYPE: usize = 196
const C_W: usize = 200
const C_X: usize = 204
const C_XQ: usize = 208
const C_OUT: usize = 212
const C_ROWS: usize = 216
const C_COLS: usize = 220
const C_N: usize = 224
const C_THREADS: usize = 228 // threads for this job: 1 keeps the workers asleep
const C_SPIN: usize = 232
// 236: set by a worker whose chunk trapped (src/kernels/wasm.ts)
const C_JOB: usize = 240 // i32, id of the current job
const C_CHUNKS: usize = 244 // i32, chunks in the current job
const C_CHUNK_ROWS: usize = 248 // i32, rows per chunk
const C_ROW_STRIDE: usize = 252 // i32, bytes from one weight row to the next

// Weight rows per tile in a matmul: a tile stays in L1/L2 while every activation row passes over it.
const ROW_TILE: usize = 16

/** Writes the vector constants into the control block; the main thread calls it once. */
export function init(ctrl: usize): void {
  writeConstants(ctrl)
}

// ---------------------------------------------------------------------------------------------
// Quantized-activation layout, per activation row of `cols` values, `4 * cols` bytes in all (F16
// weights take the rounded f32 activations there instead):
//   [0, cols)            q: i8 values
//   [cols, 2 cols)       |q| (Q8_0, IQ4_NL, IQ4_XS only)
//   [2 cols, 3 cols)     sign mask of q, 0xff where q < 0 (Q8_0, IQ4_NL, IQ4_XS only)
//   3 cols               f32 scale per 32 (q8_0, q8_1: a half's value) or per 256 (q8_K)
//   3 cols + cols / 8    f32 8·d·Σq per 32 (Q4_0), 16·d·Σq (Q5_0) or s, a half's value (q8_1);
//                        or i16 Σq per 16 (q8_K)
//   3 cols + cols / 4    i16 Σq per 32 (q8_K)

function absMax(p: usize, bytes: usize): f32 {
  let m = f32x4.abs(v128.load(p))
  for (let i: usize = 16; i < bytes; i += 16) m = f32x4.max(m, f32x4.abs(v128.load(p + i)))
  return max(
    max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)),
    max(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3)),
  )
}

// Rounds 16 floats at p times `inv` to the nearest integer (ties to even) and stores them as i8 at
// q, saturated to [-128, 127].
function round16(p: usize, inv: v128, q: usize): void {
  const a = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), inv)))
  const b = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 16), inv)))
  const c = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 32), inv)))
  const d = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 48), inv)))
  v128.store(q, i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(a, b), i16x8.narrow_i32x4_s(c, d)))
}

// v rounded to the nearest half (ties to even), as a float: what ggml's fp32 -> fp16 -> fp32 gives.
function roundToHalf(v: f32): f32 {
  const bits = reinterpret<u32>(v)
  const a = bits & 0x7fffffff
  const sign = bits & 0x80000000
  if (a >= 0x477ff000) return reinterpret<f32>(sign | 0x7f800000) // 65520 and above: infinity
  // Below 2^-14 a half is a multiple of 2^-24.
  if (a < 0x38800000) return nearest<f32>(v * reinterpret<f32>(0x4b800000)) * reinterpret<f32>(0x33800000)
  return reinterpret<f32>(sign | ((a + 0xfff + ((a >> 13) & 1)) & 0xffffe000))
}

// The same for four floats.
function roundToHalf4(v: v128): v128 {
  const sign = v128.and(v, i32x4.splat(0x80000000))
  const a = v128.and(v, i32x4.splat(0x7fffffff))
  let r = v128.and(
    i32x4.add(i32x4.add(a, i32x4.splat(0xfff)), v128.and(i32x4.shr_u(a, 13), i32x4.splat(1))),
    i32x4.splat(0xffffe000),
  )
  const tiny = f32x4.mul(
    f32x4.nearest(f32x4.mul(a, f32x4.splat(reinterpret<f32>(0x4b800000)))),
    f32x4.splat(reinterpret<f32>(0x33800000)),
  )
  r = v128.bitselect(tiny, r, i32x4.lt_s(a, i32x4.splat(0x38800000)))
  r = v128.bitselect(i32x4.splat(0x7f800000), r, i32x4.gt_s(a, i32x4.splat(0x477fefff)))
  return v128.or(r, sign)
}

// Σ of the 16 i8 values in v.
function sum16(v: v128): i32 {
  const s = i32x4.extadd_pairwise_i16x8_s(i16x8.extadd_pairwise_i8x16_s(v))
  return (
    i32x4.extract_lane(s, 0) + i32x4.extract_lane(s, 1) + i32x4.extract_lane(s, 2) + i32x4.extract_lane(s, 3)
  )
}

// As ggml's quantize_row_q8_0 on x86: q = round-half-even(x · 127 / max|x|), and the block scale
// max|x| / 127 rounded to a half (ggml stores it as one). The per-block sum is `sum`·d·Σq, or for
// `sum` 0 the s of ggml's quantize_row_q8_1: (max|x| / 127)·Σq rounded to a half.
function quantizeBlocks32(x: usize, cols: usize, xq: usize, withSign: bool, sum: f32): void {
  const nb = cols >> 5
  const scales = xq + 3 * cols
  const sums = scales + (cols >> 3)
  for (let b: usize = 0; b < nb; b++) {
    const p = x + (b << 7)
    const q = xq + (b << 5)
    const amax = absMax(p, 128)
    const inv = f32x4.splat(amax !== 0 ? <f32>127 / amax : 0)
    const d = roundToHalf(amax / 127)
    round16(p, inv, q)
    round16(p + 64, inv, q + 16)
    const q0 = v128.load(q)
    const q1 = v128.load(q, 16)
    if (withSign) {
      v128.store(q + cols, i8x16.abs(q0))
      v128.store(q + cols, i8x16.abs(q1), 16)
      v128.store(q + 2 * cols, i8x16.lt_s(q0, ZERO))
      v128.store(q + 2 * cols, i8x16.lt_s(q1, ZERO), 16)
    }
    store<f32>(scales + (b << 2), d)
    const qsum = <f32>(sum16(q0) + sum16(q1))
    store<f32>(sums + (b << 2), sum !== 0 ? sum * d * qsum : roundToHalf((amax / 127) * qsum))
  }
}

function quantizeBlocks256(x: usize, cols: usize, xq: usize, withSign: bool): void {
  const nb = cols >> 8
  const scales = xq + 3 * cols
  const sums16 = scales + (cols >> 3)
  const sums32 = scales + (cols >> 2)
  for (let b: usize = 0; b < nb; b++) {
    const p = x + (b << 10)
    const q = xq + (b << 8)
    // As ggml's quantize_row_q8_K: the value of largest magnitude maps to -127.
    let hi = v128.load(p)
    let lo = hi
    for (let i: usize = 16; i < 1024; i += 16) {
      hi = f32x4.max(hi, v128.load(p + i))
      lo = f32x4.min(lo, v128.load(p + i))
    }
    const top = max(
      max(f32x4.extract_lane(hi, 0), f32x4.extract_lane(hi, 1)),
      max(f32x4.extract_lane(hi, 2), f32x4.extract_lane(hi, 3)),
    )
    const bottom = min(
      min(f32x4.extract_lane(lo, 0), f32x4.extract_lane(lo, 1)),
      min(f32x4.extract_lane(lo, 2), f32x4.extract_lane(lo, 3)),
    )
    const extreme = -bottom > top ? bottom : top
    const iscale: f32 = extreme !== 0 ? -127 / extreme : 0
    const d: f32 = extreme !== 0 ? 1 / iscale : 0
    const inv = f32x4.splat(iscale)
    for (let j: usize = 0; j < 16; j += 2) {
      round16(p + (j << 6), inv, q + (j << 4))
      round16(p + (j << 6) + 64, inv, q + (j << 4) + 16)
      const s0 = sum16(v128.load(q + (j << 4)))
      const s1 = sum16(v128.load(q + (j << 4) + 16))
      store<i16>(sums16 + (b << 5) + (j << 1), <i16>s0)
      store<i16>(sums16 + (b << 5) + (j << 1) + 2, <i16>s1)
      store<i16>(sums32 + (b << 4) + j, <i16>(s0 + s1))
    }
    if (withSign) {
      for (let j: usize = 0; j < 256; j += 16) {
        const v = v128.load(q + j)
        v128.store(q + cols + j, i8x16.abs(v))
        v128.store(q + 2 * cols + j, i8x16.lt_s(v, ZERO))
      }
    }
    store<f32>(scales + (b << 2), d)
  }
}

// ---------------------------------------------------------------------------------------------
// F32 and F16 rows (f32 activations, rounded to halves for F16)

function dotF32(w: usize, x: usize, cols: usize): f32 {
  let a0 = f32x4.splat(0)
  let a1 = f32x4.splat(0)
  let a2 = f32x4.splat(0)
  let a3 = f32x4.splat(0)
  const end16 = (cols >> 4) << 6
  let o: usize = 0
  for (; o < end16; o += 64) {
    a0 = f32x4.relaxed_madd(v128.load(w + o), v128.load(x + o), a0)
    a1 = f32x4.relaxed_madd(v128.load(w + o, 16), v128.load(x + o, 16), a1)
    a2 = f32x4.relaxed_madd(v128.load(w + o, 32), v128.load(x + o, 32), a2)
    a3 = f32x4.relaxed_madd(v128.load(w + o, 48), v128.load(x + o, 48), a3)
  }
  const end4 = (cols >> 2) << 4
  for (; o < end4; o += 16) a0 = f32x4.relaxed_madd(v128.load(w + o), v128.load(x + o), a0)
  let s = hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)))
  for (; o < cols << 2; o += 4) s += load<f32>(w + o) * load<f32>(x + o)
  return s
}

// Every path sums one F16 row (and one BF16 row, bf16.ts) the same way, so that a row gives the
// same bits alone or in a batch: 16 values at a time into four accumulators (a0: values 16k..16k+3,
// a1: the next four, …), then hsum((a0 + a1) + (a2 + a3)), then the last cols % 16 products one by
// one. (Four chains of additions keep one row's matvec fast; the weights are read as one stream.)

// The four halves in the low (high) half of h as floats.
function lowF16(h: v128, mask: v128, scale: v128): v128 {
  return f16x4Fast(v128.shuffle<i16>(ZERO, h, 0, 8, 1, 9, 2, 10, 3, 11), mask, scale)
}

function highF16(h: v128, mask: v128, scale: v128): v128 {
  return f16x4Fast(v128.shuffle<i16>(ZERO, h, 4, 12, 5, 13, 6, 14, 7, 15), mask, scale)
}

function dotF16(w: usize, x: usize, cols: usize, mask: v128, scale: v128): f32 {
  let a0 = f32x4.splat(0)
  let a1 = f32x4.splat(0)
  let a2 = f32x4.splat(0)
  let a3 = f32x4.splat(0)
  const end16 = (cols >> 4) << 4
  let i: usize = 0
  for (; i < end16; i += 16) {
    const h0 = v128.load(w + (i << 1))
    const h1 = v128.load(w + (i << 1), 16)
    const xp = x + (i << 2)
    a0 = f32x4.relaxed_madd(lowF16(h0, mask, scale), v128.load(xp), a0)
    a1 = f32x4.relaxed_madd(highF16(h0, mask, scale), v128.load(xp, 16), a1)
    a2 = f32x4.relaxed_madd(lowF16(h1, mask, scale), v128.load(xp, 32), a2)
    a3 = f32x4.relaxed_madd(highF16(h1, mask, scale), v128.load(xp, 48), a3)
  }
  let s = hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)))
  for (; i < cols; i++) s += f16(load<u16>(w + (i << 1))) * load<f32>(x + (i << 2))
  return s
}

// The sums of dotF16 before its tail for one F16 row and two activation rows, as lanes 0 and 1
// (the 16-value steps, hsum((a0 + a1) + (a2 + a3))): each group of halves converted once for both.
function dot2F16(w: usize, x: usize, y: usize, end16: usize, mask: v128, scale: v128): v128 {
  let a0 = f32x4.splat(0)
  let a1 = f32x4.splat(0)
  let a2 = f32x4.splat(0)
  let a3 = f32x4.splat(0)
  let b0 = f32x4.splat(0)
  let b1 = f32x4.splat(0)
  let b2 = f32x4.splat(0)
  let b3 = f32x4.splat(0)
  for (let i: usize = 0; i < end16; i += 16) {
    const h0 = v128.load(w + (i << 1))
    const h1 = v128.load(w + (i << 1), 16)
    const o = i << 2
    let c = lowF16(h0, mask, scale)
    a0 = f32x4.relaxed_madd(c, v128.load(x + o), a0)
    b0 = f32x4.relaxed_madd(c, v128.load(y + o), b0)
    c = highF16(h0, mask, scale)
    a1 = f32x4.relaxed_madd(c, v128.load(x + o, 16), a1)
    b1 = f32x4.relaxed_madd(c, v128.load(y + o, 16), b1)
    c = lowF16(h1, mask, scale)
    a2 = f32x4.relaxed_madd(c, v128.load(x + o, 32), a2)
    b2 = f32x4.relaxed_madd(c, v128.load(y + o, 32), b2)
    c = highF16(h1, mask, scale)
    a3 = f32x4.relaxed_madd(c, v128.load(x + o, 48), a3)
    b3 = f32x4.relaxed_madd(c, v128.load(y + o, 48), b3)
  }
  const sa = f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3))
  const sb = f32x4.add(f32x4.add(b0, b1), f32x4.add(b2, b3))
  return hsumLanes(sa, sb, sa, sb)
}

// [dot(w, x), dot(w, x1), dot(w, x2), dot(w, x3)] for one F16 row and four activation rows (the
// K·q and Vᵀ·p products of the query heads that share a KV head, and matmuls): each row summed as
// dotF16 sums it, two activation rows at a time (four accumulators each) over the weight row.
function dot4F16(
  w: usize,
  x: usize,
  x1: usize,
  x2: usize,
  x3: usize,
  cols: usize,
  mask: v128,
  scale: v128,
): v128 {
  const end16 = (cols >> 4) << 4
  const p = dot2F16(w, x, x1, end16, mask, scale)
  const q = x2 === x1 ? p : dot2F16(w, x2, x3, end16, mask, scale)
  let r = v128.shuffle<f32>(p, q, 0, 1, 4, 5)
  for (let i = end16; i < cols; i++) {
    const v = f32x4.splat(f16(load<u16>(w + (i << 1))))
    let xs = f32x4.splat(load<f32>(x + (i << 2)))
    xs = f32x4.replace_lane(xs, 1, load<f32>(x1 + (i << 2)))
    xs = f32x4.replace_lane(xs, 2, load<f32>(x2 + (i << 2)))
    xs = f32x4.replace_lane(xs, 3, load<f32>(x3 + (i << 2)))
    r = f32x4.add(r, f32x4.mul(v, xs))
  }
  return r
}

// ---------------------------------------------------------------------------------------------
// Q8_0: block = f16 d, i8 q[32] (34 bytes). Σ w·x = Σ (w·sign(x))·|x|, an i8 × i7 dot product.

function q8_0Block(wp: usize, xa: usize, xs: usize, ones: v128): v128 {
  const m0 = v128.load(xs)
  const m1 = v128.load(xs, 16)
  // sub_sat keeps -(-128) at 127 (ggml's quantizers never write -128, whose sign cannot flip in i8).
  const s0 = i8x16.sub_sat_s(v128.xor(v128.load(wp, 2), m0), m0)
  const s1 = i8x16.sub_sat_s(v128.xor(v128.load(wp, 18), m1), m1)
  const p0 = i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(s0, v128.load(xa)), ones)
  const p1 = i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(s1, v128.load(xa, 16)), ones)
  return i32x4.add(p0, p1)
}

// The sums of blocks b..b + 3 (o = 32·b) of a Q8_0 row at wp (block b) and the activation row xq.
function q8_0Blocks4(wp: usize, xq: usize, cols: usize, o: usize, ones: v128): v128 {
  const xa = xq + cols + o
  const xs = xq + 2 * cols + o
  return hsum4(
    q8_0Block(wp, xa, xs, ones),
    q8_0Block(wp + 34, xa + 32, xs + 32, ones),
    q8_0Block(wp + 68, xa + 64, xs + 64, ones),
    q8_0Block(wp + 102, xa + 96, xs + 96, ones),
  )
}

// d_w·d_x·Σ w·q of block b (at wp) alone: the blocks after the last four.
function q8_0Tail(wp: usize, xq: usize, cols: usize, b: usize, ones: v128): f32 {
  const o = b << 5
  const s = q8_0Block(wp, xq + cols + o, xq + 2 * cols + o, ones)
  const isum =
    i32x4.extract_lane(s, 0) + i32x4.extract_lane(s, 1) + i32x4.extract_lane(s, 2) + i32x4.extract_lane(s, 3)
  return f16(load<u16>(wp)) * load<f32>(xq + 3 * cols + (b << 2)) * <f32>isum
}

function dotQ8_0(
  w: usize,
  xq: usize,
  cols: usize,
  ones: v128,
  ctrl: usize,
  mask: v128,
  expBits: v128,
  scale: v128,
): f32 {
  const nb = cols >> 5
  let acc = f32x4.splat(0)
  let b: usize = 0
  for (; b + 4 <= nb; b += 4) {
    const wp = w + b * 34
    const s = q8_0Blocks4(wp, xq, cols, b << 5, ones)
    const d = f32x4.mul(scales4(wp, 34, ctrl, mask, expBits, scale), v128.load(xq + 3 * cols + (b << 2)))
    acc = f32x4.relaxed_madd(f32x4.convert_i32x4_s(s), d, acc)
  }
  let tail: f32 = 0
  for (; b < nb; b++) tail += q8_0Tail(w + b * 34, xq, cols, b, ones)
  return hsum(acc) + tail
}

// ---------------------------------------------------------------------------------------------
// Q4_0: block = f16 d, u8 qs[16]; value j is (qs[j] & 15) - 8, value j + 16 is (qs[j] >> 4) - 8.
// Σ w·x = d_w·(d_x·Σ nibble·q - 8·d_x·Σq): an i8 × i7 dot product and the precomputed 8·d_x·Σq.

function q4_0Block(wp: usize, xp: usize, low4: v128, ones: v128): v128 {
  const q = v128.load(wp, 2)
  const lo = v128.and(q, low4)
  const hi = v128.and(i16x8.shr_u(q, 4), low4)
  const p = i16x8.add(
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp), lo),
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 16), hi),
  )
  return i32x4.dot_i16x8_s(p, ones)
}

// d_x·Σ nibble·q − 8·d_x·Σq of blocks b..b + 3 of a Q4_0 row (at wp: block b) and the activation
// row xq, the four blocks in the four lanes.
function q4_0Blocks4(wp: usize, xq: usize, cols: usize, b: usize, low4: v128, ones: v128): v128 {
  const xp = xq + (b << 5)
  const s = hsum4(
    q4_0Block(wp, xp, low4, ones),
    q4_0Block(wp + 18, xp + 32, low4, ones),
    q4_0Block(wp + 36, xp + 64, low4, ones),
    q4_0Block(wp + 54, xp + 96, low4, ones),
  )
  const o = xq + 3 * cols + (b << 2)
  return f32x4.sub(f32x4.mul(f32x4.convert_i32x4_s(s), v128.load(o)), v128.load(o + (cols >> 3)))
}

// Block b (at wp) alone: the blocks after the last four.
function q4_0Tail(wp: usize, xq: usize, cols: usize, b: usize, low4: v128, ones: v128): f32 {
  const s = q4_0Block(wp, xq + (b << 5), low4, ones)
  const isum =
    i32x4.extract_lane(s, 0) + i32x4.extract_lane(s, 1) + i32x4.extract_lane(s, 2) + i32x4.extract_lane(s, 3)
  const o = xq + 3 * cols + (b << 2)
  return f16(load<u16>(wp)) * (<f32>isum * load<f32>(o) - load<f32>(o + (cols >> 3)))
}

function dotQ4_0(
  w: usize,
  xq: usize,
  cols: usize,
  low4: v128,
  ones: v128,
  ctrl: usize,
  mask: v128,
  expBits: v128,
  scale: v128,
): f32 {
  const nb = cols >> 5
  let acc = f32x4.splat(0)
  let b: usize = 0
  for (; b + 4 <= nb; b += 4) {
    const wp = w + b * 18
    acc = f32x4.relaxed_madd(
      scales4(wp, 18, ctrl, mask, expBits, scale),
      q4_0Blocks4(wp, xq, cols, b, low4, ones),
      acc,
    )
  }
  let tail: f32 = 0
  for (; b < nb; b++) tail += q4_0Tail(w + b * 18, xq, cols, b, low4, ones)
  return hsum(acc) + tail
}

// ---------------------------------------------------------------------------------------------
// Q4_K: super-block of 256 = f16 d, f16 dmin, u8 scales[12] (eight 6-bit scales and mins), u8 qs[128].
// Values 64k..64k+31 are the low nibbles of qs[32k..32k+31] (scale 2k), values 64k+32..64k+63 the
// high nibbles (scale 2k+1); value = d·scale·nibble - dmin·min.

// Σ over 64 values of nibble·q·scale, as i32x4: low nibbles × x[0..32) × sLo, high × x[32..64) × sHi.
function q4_KChunk(qp: usize, xp: usize, sLo: v128, sHi: v128, low4: v128): v128 {
  const q0 = v128.load(qp)
  const q1 = v128.load(qp, 16)
  const lo = i16x8.add(
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp), v128.and(q0, low4)),
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 16), v128.and(q1, low4)),
  )
  const hi = i16x8.add(
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 32), v128.and(i16x8.shr_u(q0, 4), low4)),
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 48), v128.and(i16x8.shr_u(q1, 4), low4)),
  )
  return i32x4.add(i32x4.dot_i16x8_s(lo, sLo), i32x4.dot_i16x8_s(hi, sHi))
}

function dotQ4_K(w: usize, xq: usize, cols: usize, low4: v128, ctrl: usize): f32 {
  const nb = cols >> 8
  const xd = xq + 3 * cols
  const xs32 = xd + (cols >> 2)
  let acc = f32x4.splat(0)
  for (let b: usize = 0; b < nb; b++) {
    const bp = w + b * 144
    const xp = xq + (b << 8)
    const sm = scalesMinsK4(bp + 4, ctrl)
    const mn = i16x8.extend_high_i8x16_u(sm)
    let isum = q4_KChunk(bp + 16, xp, splatB(sm, ctrl, 0), splatB(sm, ctrl, 1), low4)
    isum = i32x4.add(isum, q4_KChunk(bp + 48, xp + 64, splatB(sm, ctrl, 2), splatB(sm, ctrl, 3), low4))
    isum = i32x4.add(isum, q4_KChunk(bp + 80, xp + 128, splatB(sm, ctrl, 4), splatB(sm, ctrl, 5), low4))
    isum = i32x4.add(isum, q4_KChunk(bp + 112, xp + 192, splatB(sm, ctrl, 6), splatB(sm, ctrl, 7), low4))
    const mins = i32x4.dot_i16x8_s(mn, v128.load(xs32 + (b << 4)))
    const dx = load<f32>(xd + (b << 2))
    const dh = load<u32>(bp)
    acc = superBlock(acc, isum, mins, f16(dh & 0xffff) * dx, f16(dh >> 16) * dx)
  }
  return f32x4.extract_lane(acc, 0)
}

// ---------------------------------------------------------------------------------------------
// Q6_K: super-block of 256 = u8 ql[128], u8 qh[64], i8 scales[16], f16 d (210 bytes). In each half
// of 128 values (ql += 64, qh += 32, scales += 8), value l + 32k (l < 32, k < 4) is
// ((ql[l + 32 (k & 1)] >> 4 (k >> 1)) & 15 | ((qh[l] >> 2k) & 3) << 4) - 32 with scale l / 16 + 2k.
// Σ w·x = d·(Σ scale·q6·q - 32·Σ scale·Σq per 16).

// One l-run of 16 (lanes `l` of the half): Σ over the four k of q6 · x, times the k-th scale.
function q6_KRun(
  ql: usize,
  qh: usize,
  xp: usize,
  s0: v128,
  s1: v128,
  s2: v128,
  s3: v128,
  low4: v128,
  bits45: v128,
): v128 {
  const a = v128.load(ql)
  const b = v128.load(ql, 32)
  const h = v128.load(qh)
  const q0 = v128.or(v128.and(a, low4), v128.and(i16x8.shl(h, 4), bits45))
  const q1 = v128.or(v128.and(b, low4), v128.and(i16x8.shl(h, 2), bits45))
  const q2 = v128.or(v128.and(i16x8.shr_u(a, 4), low4), v128.and(h, bits45))
  const q3 = v128.or(v128.and(i16x8.shr_u(b, 4), low4), v128.and(i16x8.shr_u(h, 2), bits45))
  const p0 = i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp), q0), s0)
  const p1 = i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 32), q1), s1)
  const p2 = i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 64), q2), s2)
  const p3 = i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 96), q3), s3)
  return i32x4.add(i32x4.add(p0, p1), i32x4.add(p2, p3))
}

function q6_KHalf(ql: usize, qh: usize, xp: usize, s: v128, low4: v128, bits45: v128, ctrl: usize): v128 {
  const r0 = q6_KRun(
    ql,
    qh,
    xp,
    splatW(s, ctrl, 0),
    splatW(s, ctrl, 2),
    splatW(s, ctrl, 4),
    splatW(s, ctrl, 6),
    low4,
    bits45,
  )
  const r1 = q6_KRun(
    ql + 16,
    qh + 16,
    xp + 16,
    splatW(s, ctrl, 1),
    splatW(s, ctrl, 3),
    splatW(s, ctrl, 5),
    splatW(s, ctrl, 7),
    low4,
    bits45,
  )
  return i32x4.add(r0, r1)
}

function dotQ6_K(w: usize, xq: usize, cols: usize, low4: v128, bits45: v128, ctrl: usize): f32 {
  const nb = cols >> 8
  const xd = xq + 3 * cols
  const xs16 = xd + (cols >> 3)
  let acc = f32x4.splat(0)
  for (let b: usize = 0; b < nb; b++) {
    const bp = w + b * 210
    const xp = xq + (b << 8)
    const scv = v128.load(bp, 192)
    const s0 = i16x8.extend_low_i8x16_s(scv)
    const s1 = i16x8.extend_high_i8x16_s(scv)
    let isum = i32x4.add(
      q6_KHalf(bp, bp + 128, xp, s0, low4, bits45, ctrl),
      q6_KHalf(bp + 64, bp + 160, xp + 128, s1, low4, bits45, ctrl),
    )
    const bs = xs16 + (b << 5)
    const offset = i32x4.add(i32x4.dot_i16x8_s(s0, v128.load(bs)), i32x4.dot_i16x8_s(s1, v128.load(bs, 16)))
    isum = i32x4.sub(isum, i32x4.shl(offset, 5))
    acc = superBlockNoMin(acc, isum, f16(load<u16>(bp, 208)) * load<f32>(xd + (b << 2)))
  }
  return f32x4.extract_lane(acc, 0)
}

// ---------------------------------------------------------------------------------------------
// Packed rows (Q4_0x4, Q8_0x4): `pack` interleaves four weight rows block by block, so that one
// relaxed dot-add (a single vpdpbusd where the CPU has AVX-VNNI) multiplies four bytes of each of
// the four rows with the same four activations, and the four rows' sums come out in the four lanes:
// no horizontal sums, and the activations are read once per four rows. A group of four rows keeps
// its byte size (four blocks become one packed block):
//   Q4_0x4 block (72 bytes): the four rows' f16 d, then 4 × 16 bytes; 16-byte vector t holds
//     bytes [4t, 4t + 4) of each row's qs, row r at bytes [4r, 4r + 4): low nibbles are values
//     4t.., high nibbles values 16 + 4t..
//   Q8_0x4 block (136 bytes): the four f16 d, then 8 × 16 bytes; vector t holds qs[4t, 4t + 4)
//     of each row.
// Rows past the last whole group stay in the ggml layout after the groups.

// The four scales at p as floats, in four operations. `pack` stores each f16 block scale re-encoded
// as a half with its exponent 10 higher (subnormal halves normalized), so that none is a subnormal:
// each value sign-extended into an i32 lane and shifted left by 13 puts sign, exponent and mantissa
// where a float has them (copies of the sign in bits 29-31 masked off but bit 31), and × 2^102
// re-biases the exponent. Exact for every scale `pack` accepts.
function scalesX4(p: usize, mask: v128, scale: v128): v128 {
  return f32x4.mul(v128.and(i32x4.shl(v128.load16x4_s(p), 13), mask), scale)
}

// A block scale (an IEEE half) in the packed encoding of scalesX4, or -1 when it has none (a normal
// half of magnitude 128 or more: no Q4_0 or Q8_0 weights need one).
function packScale(h: u32): i32 {
  const sign = h & 0x8000
  const e = (h >> 10) & 31
  const m = h & 1023
  if (e === 0) {
    if (m === 0) return sign
    // m · 2^-24 = 2^(k - 24) · 1.f with k the top bit of m: exponent k + 1 once re-biased.
    const k = 31 - clz(m)
    return sign | ((k + 1) << 10) | ((m << (10 - k)) & 1023)
  }
  if (e > 21) return -1
  return sign | ((e + 10) << 10) | m
}

// Σ nibble · x over one packed Q4_0 block for the four rows. The eight i8 × i7 pair sums (each at
// most 2·15·127) add up in i16 (at most 30480) before one widening i16 dot with ones: three
// instructions fewer per vector than relaxed dot-adds, which V8 lowers (without AVX-VNNI) to
// pmaddubsw, pmaddwd with a ones vector it rebuilds each time, and an add.
function q4_0X4Block(bp: usize, xp: usize, low4: v128, ones: v128): v128 {
  const q0 = v128.load(bp, 8)
  const q1 = v128.load(bp, 24)
  const q2 = v128.load(bp, 40)
  const q3 = v128.load(bp, 56)
  let a = i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(xp), v128.and(q0, low4))
  let c = i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(xp, 16), v128.and(i16x8.shr_u(q0, 4), low4))
  a = i16x8.add(a, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(xp, 4), v128.and(q1, low4)))
  c = i16x8.add(
    c,
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(xp, 20), v128.and(i16x8.shr_u(q1, 4), low4)),
  )
  a = i16x8.add(a, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(xp, 8), v128.and(q2, low4)))
  c = i16x8.add(
    c,
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(xp, 24), v128.and(i16x8.shr_u(q2, 4), low4)),
  )
  a = i16x8.add(a, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(xp, 12), v128.and(q3, low4)))
  c = i16x8.add(
    c,
    i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(xp, 28), v128.and(i16x8.shr_u(q3, 4), low4)),
  )
  return i32x4.dot_i16x8_s(i16x8.add(a, c), ones)
}

// [dot(row 0, x), …, dot(row 3, x)] of one packed Q4_0 group: d_w·(d_x·Σ nibble·q − 8·d_x·Σq).
function dotQ4_0X4(w: usize, xq: usize, cols: usize, low4: v128, ones: v128, mask: v128, scale: v128): v128 {
  const nb = cols >> 5
  const xd = xq + 3 * cols
  const xs = xd + (cols >> 3)
  let acc = f32x4.splat(0)
  for (let b: usize = 0; b < nb; b++) {
    const bp = w + b * 72
    const s = q4_0X4Block(bp, xq + (b << 5), low4, ones)
    const o = b << 2
    const v = f32x4.sub(
      f32x4.mul(f32x4.convert_i32x4_s(s), v128.load32_splat(xd + o)),
      v128.load32_splat(xs + o),
    )
    acc = f32x4.relaxed_madd(scalesX4(bp, mask, scale), v, acc)
  }
  return acc
}

// Σ (w · sign(x)) · |x| of the 16 bytes at bp (four of each row) and the four activations whose
// |x| are at xa and sign masks at xs, added to acc (i16 pair sums reach 2·127², so they widen at
// once, with a ones vector kept in a register).
function q8_0X4Step(bp: usize, xa: usize, xs: usize, ones: v128, acc: v128): v128 {
  const m = v128.load32_splat(xs)
  const sw = i8x16.sub_sat_s(v128.xor(v128.load(bp), m), m)
  return i32x4.add(acc, i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(sw, v128.load32_splat(xa)), ones))
}

// Σ (w · sign(x)) · |x| over one packed Q8_0 block for the four rows (two chains of four).
function q8_0X4Block(bp: usize, xa: usize, xs: usize, ones: v128): v128 {
  let a = q8_0X4Step(bp + 8, xa, xs, ones, ZERO)
  let c = q8_0X4Step(bp + 24, xa + 4, xs + 4, ones, ZERO)
  a = q8_0X4Step(bp + 40, xa + 8, xs + 8, ones, a)
  c = q8_0X4Step(bp + 56, xa + 12, xs + 12, ones, c)
  a = q8_0X4Step(bp + 72, xa + 16, xs + 16, ones, a)
  c = q8_0X4Step(bp + 88, xa + 20, xs + 20, ones, c)
  a = q8_0X4Step(bp + 104, xa + 24, xs + 24, ones, a)
  c = q8_0X4Step(bp + 120, xa + 28, xs + 28, ones, c)
  return i32x4.add(a, c)
}

// [dot(row 0, x), …, dot(row 3, x)] of one packed Q8_0 group: Σ over blocks of (d_w·d_x)·Σ w·q.
function dotQ8_0X4(w: usize, xq: usize, cols: usize, ones: v128, mask: v128, scale: v128): v128 {
  const nb = cols >> 5
  const xa = xq + cols
  const xs = xq + 2 * cols
  const xd = xq + 3 * cols
  let acc = f32x4.splat(0)
  for (let b: usize = 0; b < nb; b++) {
    const bp = w + b * 136
    const o = b << 5
    const s = q8_0X4Block(bp, xa + o, xs + o, ones)
    const d = f32x4.mul(scalesX4(bp, mask, scale), v128.load32_splat(xd + (b << 2)))
    acc = f32x4.relaxed_madd(f32x4.convert_i32x4_s(s), d, acc)
  }
  return acc
}

// dotQ4_0X4 for four activation rows at once (x, x + xStride, …), each weight vector unpacked once;
// writes the four results to out, out + outStride, … (four rows of output each). The same integer
// sums and the same f32 operations per row as dotQ4_0X4.
function quadQ4_0X4(
  w: usize,
  x: usize,
  xStride: usize,
  cols: usize,
  out: usize,
  outStride: usize,
  low4: v128,
  ones: v128,
  mask: v128,
  scale: v128,
): void {
  const nb = cols >> 5
  const xd = 3 * cols
  const xs = xd + (cols >> 3)
  const x1 = x + xStride
  const x2 = x1 + xStride
  const x3 = x2 + xStride
  let f0 = f32x4.splat(0)
  let f1 = f32x4.splat(0)
  let f2 = f32x4.splat(0)
  let f3 = f32x4.splat(0)
  for (let b: usize = 0; b < nb; b++) {
    const bp = w + b * 72
    const o = b << 5
    // i16 pair sums of the eight nibble vectors (at most 8·2·15·127 < 2^15).
    let a0 = ZERO
    let a1 = ZERO
    let a2 = ZERO
    let a3 = ZERO
    for (let t: usize = 0; t < 16; t += 4) {
      const q = v128.load(bp + (t << 2), 8)
      const lo = v128.and(q, low4)
      const hi = v128.and(i16x8.shr_u(q, 4), low4)
      const p = o + t
      a0 = i16x8.add(a0, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x + p), lo))
      a1 = i16x8.add(a1, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x1 + p), lo))
      a2 = i16x8.add(a2, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x2 + p), lo))
      a3 = i16x8.add(a3, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x3 + p), lo))
      a0 = i16x8.add(a0, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x + p, 16), hi))
      a1 = i16x8.add(a1, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x1 + p, 16), hi))
      a2 = i16x8.add(a2, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x2 + p, 16), hi))
      a3 = i16x8.add(a3, i16x8.relaxed_dot_i8x16_i7x16_s(v128.load32_splat(x3 + p, 16), hi))
    }
    const d = scalesX4(bp, mask, scale)
    const sd = xd + (b << 2)
    const ss = xs + (b << 2)
    f0 = f32x4.relaxed_madd(d, q4_0X4Term(a0, x + sd, x + ss, ones), f0)
    f1 = f32x4.relaxed_madd(d, q4_0X4Term(a1, x1 + sd, x1 + ss, ones), f1)
    f2 = f32x4.relaxed_madd(d, q4_0X4Term(a2, x2 + sd, x2 + ss, ones), f2)
    f3 = f32x4.relaxed_madd(d, q4_0X4Term(a3, x3 + sd, x3 + ss, ones), f3)
  }
  v128.store(out, f0)
  v128.store(out + outStride, f1)
  v128.store(out + 2 * outStride, f2)
  v128.store(out + 3 * outStride, f3)
}

// d_x·Σ nibble·q − 8·d_x·Σq of one packed block for the four weight rows, from its i16 pair sums.
function q4_0X4Term(a: v128, pd: usize, ps: usize, ones: v128): v128 {
  const s = i32x4.dot_i16x8_s(a, ones)
  return f32x4.sub(f32x4.mul(f32x4.convert_i32x4_s(s), v128.load32_splat(pd)), v128.load32_splat(ps))
}

// dotQ8_0X4 for four activation rows at once; see quadQ4_0X4.
function quadQ8_0X4(
  w: usize,
  x: usize,
  xStride: usize,
  cols: usize,
  out: usize,
  outStride: usize,
  ones: v128,
  mask: v128,
  scale: v128,
): void {
  const nb = cols >> 5
  const x1 = x + xStride
  const x2 = x1 + xStride
  const x3 = x2 + xStride
  let f0 = f32x4.splat(0)
  let f1 = f32x4.splat(0)
  let f2 = f32x4.splat(0)
  let f3 = f32x4.splat(0)
  for (let b: usize = 0; b < nb; b++) {
    const bp = w + b * 136
    let a0 = ZERO
    let a1 = ZERO
    let a2 = ZERO
    let a3 = ZERO
    const pa = cols + (b << 5) // |x|
    const ps = pa + cols // sign mask of x
    for (let t: usize = 0; t < 32; t += 4) {
      const wt = bp + 8 + (t << 2)
      a0 = q8_0X4Step(wt, x + pa + t, x + ps + t, ones, a0)
      a1 = q8_0X4Step(wt, x1 + pa + t, x1 + ps + t, ones, a1)
      a2 = q8_0X4Step(wt, x2 + pa + t, x2 + ps + t, ones, a2)
      a3 = q8_0X4Step(wt, x3 + pa + t, x3 + ps + t, ones, a3)
    }
    const d = scalesX4(bp, mask, scale)
    const sd = 3 * cols + (b << 2)
    f0 = f32x4.relaxed_madd(f32x4.convert_i32x4_s(a0), f32x4.mul(d, v128.load32_splat(x + sd)), f0)
    f1 = f32x4.relaxed_madd(f32x4.convert_i32x4_s(a1), f32x4.mul(d, v128.load32_splat(x1 + sd)), f1)
    f2 = f32x4.relaxed_madd(f32x4.convert_i32x4_s(a2), f32x4.mul(d, v128.load32_splat(x2 + sd)), f2)
    f3 = f32x4.relaxed_madd(f32x4.convert_i32x4_s(a3), f32x4.mul(d, v128.load32_splat(x3 + sd)), f3)
  }
  v128.store(out, f0)
  v128.store(out + outStride, f1)
  v128.store(out + 2 * outStride, f2)
  v128.store(out + 3 * outStride, f3)
}

// out[i·rows + r] for r in the packed groups [g0, g1) (row 4g at w + 4g·rb) and every activation
// row i < n (rows `xStride` bytes apart in the quantized scratch): four rows of output per store.
function packedRange(
  ctrl: usize,
  type: i32,
  w: usize,
  rb: usize,
  x: usize,
  xStride: usize,
  n: usize,
  out: usize,
  outStride: usize,
  g0: usize,
  g1: usize,
  cols: usize,
): void {
  const low4 = v128.load(ctrl, K_LOW4)
  const ones = v128.load(ctrl, K_ONES16)
  const mask = v128.load(ctrl, K_F16_MASK)
  const scale = v128.load(ctrl, K_PACK_SCALE)
  for (let g = g0; g < g1; g++) {
    const wg = w + g * (rb << 2)
    let i: usize = 0
    for (; i + 4 <= n; i += 4) {
      const xi = x + i * xStride
      const o = out + i * outStride + (g << 4)
      if (type === Q4_0X4) quadQ4_0X4(wg, xi, xStride, cols, o, outStride, low4, ones, mask, scale)
      else quadQ8_0X4(wg, xi, xStride, cols, o, outStride, ones, mask, scale)
    }
    for (; i < n; i++) {
      const xi = x + i * xStride
      const v =
        type === Q4_0X4
          ? dotQ4_0X4(wg, xi, cols, low4, ones, mask, scale)
          : dotQ8_0X4(wg, xi, cols, ones, mask, scale)
      v128.store(out + i * outStride + (g << 4), v)
    }
  }
}

/**
 * Rearranges the first `rows - rows % 4` rows of a Q4_0 or Q8_0 matrix at w (rows packed as in
 * GGUF) into the interleaved layout above, in place; `tmp` holds four rows of scratch. Returns false
 * and changes nothing when a block scale has no packed encoding (see packScale).
 */
export function pack(type: i32, w: usize, rows: usize, cols: usize, tmp: usize): bool {
  const bb: usize = type === Q4_0 ? 18 : 34
  const vectors = (bb - 2) >> 2
  const nb = cols >> 5
  const rb = nb * bb
  for (let p = w; p < w + (rows & ~3) * rb; p += bb) {
    if (packScale(load<u16>(p)) < 0) return false
  }
  for (let g: usize = 0; g + 4 <= rows; g += 4) {
    const base = w + g * rb
    memory.copy(tmp, base, rb << 2)
    for (let b: usize = 0; b < nb; b++) {
      const dst = base + b * (bb << 2)
      for (let r: usize = 0; r < 4; r++) {
        const src = tmp + r * rb + b * bb
        store<u16>(dst + (r << 1), <u16>packScale(load<u16>(src)))
        for (let t: usize = 0; t < vectors; t++) {
          store<u32>(dst + 8 + (t << 4) + (r << 2), load<u32>(src + 2 + (t << 2)))
        }
      }
    }
  }
  return true
}

// ---------------------------------------------------------------------------------------------
// Four activation rows at once (matmul): each weight block is loaded (and for the K-quants
// unpacked) once for four activation rows `xStride` bytes apart. Returns [dot(w, x_0), …,
// dot(w, x_3)], each bit for bit what the one-row dot gives that activation row: a row's f32
// operations (block sums' conversions, scale products, fused multiply-adds, the horizontal sum and
// the tail) are the same, in the same order, whether it is multiplied alone or in a batch, so that
// batched decoding gives every sequence the tokens it gets alone. (Integer sums are exact in any
// order.)

// Q8_0 and Q4_0: as dotQ8_0 / dotQ4_0, lane j of a row's accumulator takes blocks b ≡ j (mod 4)
// and the blocks after the last four go through the scalar tail.
function dot4Q8_0(
  w: usize,
  x: usize,
  xStride: usize,
  cols: usize,
  ones: v128,
  ctrl: usize,
  mask: v128,
  expBits: v128,
  scale: v128,
): v128 {
  const nb = cols >> 5
  const x1 = x + xStride
  const x2 = x1 + xStride
  const x3 = x2 + xStride
  let a0 = f32x4.splat(0)
  let a1 = f32x4.splat(0)
  let a2 = f32x4.splat(0)
  let a3 = f32x4.splat(0)
  let b: usize = 0
  for (; b + 4 <= nb; b += 4) {
    const wp = w + b * 34
    const o = b << 5
    const dw = scales4(wp, 34, ctrl, mask, expBits, scale)
    const xd = 3 * cols + (b << 2)
    a0 = f32x4.relaxed_madd(
      f32x4.convert_i32x4_s(q8_0Blocks4(wp, x, cols, o, ones)),
      f32x4.mul(dw, v128.load(x + xd)),
      a0,
    )
    a1 = f32x4.relaxed_madd(
      f32x4.convert_i32x4_s(q8_0Blocks4(wp, x1, cols, o, ones)),
      f32x4.mul(dw, v128.load(x1 + xd)),
      a1,
    )
    a2 = f32x4.relaxed_madd(
      f32x4.convert_i32x4_s(q8_0Blocks4(wp, x2, cols, o, ones)),
      f32x4.mul(dw, v128.load(x2 + xd)),
      a2,
    )
    a3 = f32x4.relaxed_madd(
      f32x4.convert_i32x4_s(q8_0Blocks4(wp, x3, cols, o, ones)),
      f32x4.mul(dw, v128.load(x3 + xd)),
      a3,
    )
  }
  let t0: f32 = 0
  let t1: f32 = 0
  let t2: f32 = 0
  let t3: f32 = 0
  for (; b < nb; b++) {
    const wp = w + b * 34
    t0 += q8_0Tail(wp, x, cols, b, ones)
    t1 += q8_0Tail(wp, x1, cols, b, ones)
    t2 += q8_0Tail(wp, x2, cols, b, ones)
    t3 += q8_0Tail(wp, x3, cols, b, ones)
  }
  return lanes4(hsum(a0) + t0, hsum(a1) + t1, hsum(a2) + t2, hsum(a3) + t3)
}

function dot4Q4_0(
  w: usize,
  x: usize,
  xStride: usize,
  cols: usize,
  low4: v128,
  ones: v128,
  ctrl: usize,
  mask: v128,
  expBits: v128,
  scale: v128,
): v128 {
  const nb = cols >> 5
  const x1 = x + xStride
  const x2 = x1 + xStride
  const x3 = x2 + xStride
  let a0 = f32x4.splat(0)
  let a1 = f32x4.splat(0)
  let a2 = f32x4.splat(0)
  let a3 = f32x4.splat(0)
  let b: usize = 0
  for (; b + 4 <= nb; b += 4) {
    const wp = w + b * 18
    const dw = scales4(wp, 18, ctrl, mask, expBits, scale)
    a0 = f32x4.relaxed_madd(dw, q4_0Blocks4(wp, x, cols, b, low4, ones), a0)
    a1 = f32x4.relaxed_madd(dw, q4_0Blocks4(wp, x1, cols, b, low4, ones), a1)
    a2 = f32x4.relaxed_madd(dw, q4_0Blocks4(wp, x2, cols, b, low4, ones), a2)
    a3 = f32x4.relaxed_madd(dw, q4_0Blocks4(wp, x3, cols, b, low4, ones), a3)
  }
  let t0: f32 = 0
  let t1: f32 = 0
  let t2: f32 = 0
  let t3: f32 = 0
  for (; b < nb; b++) {
    const wp = w + b * 18
    t0 += q4_0Tail(wp, x, cols, b, low4, ones)
    t1 += q4_0Tail(wp, x1, cols, b, low4, ones)
    t2 += q4_0Tail(wp, x2, cols, b, low4, ones)
    t3 += q4_0Tail(wp, x3, cols, b, low4, ones)
  }
  return lanes4(hsum(a0) + t0, hsum(a1) + t1, hsum(a2) + t2, hsum(a3) + t3)
}

// [a, b, c, d].
function lanes4(a: f32, b: f32, c: f32, d: f32): v128 {
  return f32x4.replace_lane(f32x4.replace_lane(f32x4.replace_lane(f32x4.splat(a), 1, b), 2, c), 3, d)
}

function dot4Q4_K(w: usize, x: usize, xStride: usize, cols: usize, low4: v128): v128 {
  const nb = cols >> 8
  const xs32 = cols * 3 + (cols >> 2)
  let acc = f32x4.splat(0)
  for (let b: usize = 0; b < nb; b++) {
    const bp = w + b * 144
    const a = load<u32>(bp, 4)
    const m = load<u32>(bp, 8)
    const c = load<u32>(bp, 12)
    const sc03 = a & 0x3f3f3f3f
    const sc47 = (c & 0x0f0f0f0f) | (((a >> 6) & 0x03030303) << 4)
    let mins = i32x4.splat(m & 0x3f3f3f3f)
    mins = i32x4.replace_lane(mins, 1, ((c >> 4) & 0x0f0f0f0f) | (((m >> 6) & 0x03030303) << 4))
    const mn = i16x8.extend_low_i8x16_u(mins)
    const x0 = x + (b << 8)
    const x1 = x0 + xStride
    const x2 = x1 + xStride
    const x3 = x2 + xStride
    let i0 = i32x4.splat(0)
    let i1 = i32x4.splat(0)
    let i2 = i32x4.splat(0)
    let i3 = i32x4.splat(0)
    for (let k: usize = 0; k < 4; k++) {
      const word = k < 2 ? sc03 : sc47
      const shift = (<u32>(k & 1)) << 4
      const sLo = i16x8.splat(<i16>((word >> shift) & 0xff))
      const sHi = i16x8.splat(<i16>((word >> (shift + 8)) & 0xff))
      const q0 = v128.load(bp + 16 + (k << 5))
      const q1 = v128.load(bp + 16 + (k << 5), 16)
      const l0 = v128.and(q0, low4)
      const l1 = v128.and(q1, low4)
      const h0 = v128.and(i16x8.shr_u(q0, 4), low4)
      const h1 = v128.and(i16x8.shr_u(q1, 4), low4)
      const o = k << 6
      i0 = i32x4.add(i0, q4_KQuad(x0 + o, l0, l1, h0, h1, sLo, sHi))
      i1 = i32x4.add(i1, q4_KQuad(x1 + o, l0, l1, h0, h1, sLo, sHi))
      i2 = i32x4.add(i2, q4_KQuad(x2 + o, l0, l1, h0, h1, sLo, sHi))
      i3 = i32x4.add(i3, q4_KQuad(x3 + o, l0, l1, h0, h1, sLo, sHi))
    }
    const bs = xs32 + (b << 4)
    const mn4 = hsum4(
      i32x4.dot_i16x8_s(mn, v128.load(x + bs)),
      i32x4.dot_i16x8_s(mn, v128.load(x + xStride + bs)),
      i32x4.dot_i16x8_s(mn, v128.load(x + 2 * xStride + bs)),
      i32x4.dot_i16x8_s(mn, v128.load(x + 3 * xStride + bs)),
    )
    const dx = scales256x4(x, xStride, cols, b)
    const dh = load<u32>(bp)
    acc = f32x4.relaxed_madd(
      f32x4.convert_i32x4_s(hsum4(i0, i1, i2, i3)),
      f32x4.mul(dx, f32x4.splat(f16(dh & 0xffff))),
      acc,
    )
    acc = f32x4.relaxed_nmadd(f32x4.convert_i32x4_s(mn4), f32x4.mul(dx, f32x4.splat(f16(dh >> 16))), acc)
  }
  return acc
}

// Σ over one 16-lane run of a Q6_K half for one activation row (q0..q3 unpacked, s0..s3 scales).
function q6_KQuad(
  xp: usize,
  q0: v128,
  q1: v128,
  q2: v128,
  q3: v128,
  s0: v128,
  s1: v128,
  s2: v128,
  s3: v128,
): v128 {
  const p0 = i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp), q0), s0)
  const p1 = i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 32), q1), s1)
  const p2 = i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 64), q2), s2)
  const p3 = i32x4.dot_i16x8_s(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(xp, 96), q3), s3)
  return i32x4.add(i32x4.add(p0, p1), i32x4.add(p2, p3))
}

function dot4Q6_K(w: usize, x: usize, xStride: usize, cols: usize, low4: v128, bits45: v128): v128 {
  const nb = cols >> 8
  const xs16 = cols * 3 + (cols >> 3)
  let acc = f32x4.splat(0)
  for (let b: usize = 0; b < nb; b++) {
    const bp = w + b * 210
    const x0 = x + (b << 8)
    let i0 = i32x4.splat(0)
    let i1 = i32x4.splat(0)
    let i2 = i32x4.splat(0)
    let i3 = i32x4.splat(0)
    for (let run: usize = 0; run < 4; run++) {
      // Half `run >> 1` (ql += 64, qh += 32, scales += 8, x += 128), lanes 16·(run & 1) onwards.
      const half = run >> 1
      const l = (run & 1) << 4
      const ql = bp + (half << 6) + l
      const qh = bp + 128 + (half << 5) + l
      const sp = bp + 192 + (half << 3) + (run & 1)
      const a = v128.load(ql)
      const c = v128.load(ql, 32)
      const h = v128.load(qh)
      const q0 = v128.or(v128.and(a, low4), v128.and(i16x8.shl(h, 4), bits45))
      const q1 = v128.or(v128.and(c, low4), v128.and(i16x8.shl(h, 2), bits45))
      const q2 = v128.or(v128.and(i16x8.shr_u(a, 4), low4), v128.and(h, bits45))
      const q3 = v128.or(v128.and(i16x8.shr_u(c, 4), low4), v128.and(i16x8.shr_u(h, 2), bits45))
      const s0 = i16x8.splat(<i16>load<i8>(sp))
      const s1 = i16x8.splat(<i16>load<i8>(sp, 2))
      const s2 = i16x8.splat(<i16>load<i8>(sp, 4))
      const s3 = i16x8.splat(<i16>load<i8>(sp, 6))
      const o = (half << 7) + l
      i0 = i32x4.add(i0, q6_KQuad(x0 + o, q0, q1, q2, q3, s0, s1, s2, s3))
      i1 = i32x4.add(i1, q6_KQuad(x0 + xStride + o, q0, q1, q2, q3, s0, s1, s2, s3))
      i2 = i32x4.add(i2, q6_KQuad(x0 + 2 * xStride + o, q0, q1, q2, q3, s0, s1, s2, s3))
      i3 = i32x4.add(i3, q6_KQuad(x0 + 3 * xStride + o, q0, q1, q2, q3, s0, s1, s2, s3))
    }
    const scv = v128.load(bp, 192)
    const sLo = i16x8.extend_low_i8x16_s(scv)
    const sHi = i16x8.extend_high_i8x16_s(scv)
    const bs = x + xs16 + (b << 5)
    const offsets = hsum4(
      i32x4.add(i32x4.dot_i16x8_s(sLo, v128.load(bs)), i32x4.dot_i16x8_s(sHi, v128.load(bs, 16))),
      i32x4.add(
        i32x4.dot_i16x8_s(sLo, v128.load(bs + xStride)),
        i32x4.dot_i16x8_s(sHi, v128.load(bs + xStride, 16)),
      ),
      i32x4.add(
        i32x4.dot_i16x8_s(sLo, v128.load(bs + 2 * xStride)),
        i32x4.dot_i16x8_s(sHi, v128.load(bs + 2 * xStride, 16)),
      ),
      i32x4.add(
        i32x4.dot_i16x8_s(sLo, v128.load(bs + 3 * xStride)),
        i32x4.dot_i16x8_s(sHi, v128.load(bs + 3 * xStride, 16)),
      ),
    )
    const isum = i32x4.sub(hsum4(i0, i1, i2, i3), i32x4.shl(offsets, 5))
    const d = f32x4.mul(scales256x4(x, xStride, cols, b), f32x4.splat(f16(load<u16>(bp, 208))))
    acc = f32x4.relaxed_madd(f32x4.convert_i32x4_s(isum), d, acc)
  }
  return acc
}

// out[i·rows + r] for the four activation rows from x and r in [r0, r1).
function rowRange4(
  ctrl: usize,
  type: i32,
  w: usize,
  rb: usize,
  x: usize,
  xStride: usize,
  out: usize,
  outStride: usize,
  r0: usize,
  r1: usize,
  cols: usize,
): void {
  const low4 = v128.load(ctrl, K_LOW4)
  const bits45 = v128.load(ctrl, K_BITS45)
  const ones = v128.load(ctrl, K_ONES16)
  const mask = v128.load(ctrl, K_F16_MASK)
  const scale = v128.load(ctrl, K_F16_SCALE)
  const expBits = v128.load(ctrl, K_F32_EXP)
  for (let r = r0; r < r1; r++) {
    let v: v128
    if (type === Q8_0) v = dot4Q8_0(w + r * rb, x, xStride, cols, ones, ctrl, mask, expBits, scale)
    else if (type === Q4_0) v = dot4Q4_0(w + r * rb, x, xStride, cols, low4, ones, ctrl, mask, expBits, scale)
    else if (type === Q4_K) v = dot4Q4_K(w + r * rb, x, xStride, cols, low4)
    else if (type === Q6_K) v = dot4Q6_K(w + r * rb, x, xStride, cols, low4, bits45)
    else v = dot4KQuant(ctrl, w + r * rb, x, xStride, cols)
    const o = out + (r << 2)
    v128.store_lane<f32>(o, v, 0)
    v128.store_lane<f32>(o + outStride, v, 1)
    v128.store_lane<f32>(o + 2 * outStride, v, 2)
    v128.store_lane<f32>(o + 3 * outStride, v, 3)
  }
}

// ---------------------------------------------------------------------------------------------
// Rows

// The dispatch: out[r] = dot(W row r, x) for r in [r0, r1), W rows `rb` bytes apart; x is f32 (F32,
// F16, BF16) or quantized.
function rowRange(
  ctrl: usize,
  type: i32,
  w: usize,
  rb: usize,
  x: usize,
  out: usize,
  r0: usize,
  r1: usize,
  cols: usize,
): void {
  const low4 = v128.load(ctrl, K_LOW4)
  const bits45 = v128.load(ctrl, K_BITS45)
  const ones = v128.load(ctrl, K_ONES16)
  const mask = v128.load(ctrl, K_F16_MASK)
  const scale = v128.load(ctrl, K_F16_SCALE)
  const expBits = v128.load(ctrl, K_F32_EXP)
  if (type === F32) {
    for (let r = r0; r < r1; r++) store<f32>(out + (r << 2), dotF32(w + r * rb, x, cols))
  } else if (type === F16) {
    for (let r = r0; r < r1; r++) store<f32>(out + (r << 2), dotF16(w + r * rb, x, cols, mask, scale))
  } else if (type === Q8_0) {
    for (let r = r0; r < r1; r++)
      store<f32>(out + (r << 2), dotQ8_0(w + r * rb, x, cols, ones, ctrl, mask, expBits, scale))
  } else if (type === Q4_0) {
    for (let r = r0; r < r1; r++)
      store<f32>(out + (r << 2), dotQ4_0(w + r * rb, x, cols, low4, ones, ctrl, mask, expBits, scale))
  } else if (type === Q4_K) {
    for (let r = r0; r < r1; r++) store<f32>(out + (r << 2), dotQ4_K(w + r * rb, x, cols, low4, ctrl))
  } else if (type === Q6_K) {
    for (let r = r0; r < r1; r++) store<f32>(out + (r << 2), dotQ6_K(w + r * rb, x, cols, low4, bits45, ctrl))
  } else if (type === Q5_K || type === Q3_K || type === Q2_K || type === IQ4_XS) {
    rowsKQuant(ctrl, type, w, rb, x, out, r0, r1, cols)
  } else if (type === Q4_1 || type === Q5_0 || type === Q5_1 || type === IQ4_NL) {
    rowsLegacy(ctrl, type, w, rb, x, out, r0, r1, cols)
  } else if (type === BF16) {
    rowsBF16(w, rb, x, out, r0, r1, cols)
  }
}

// Whether rowRange4 multiplies weights of `type` with four activation rows at once.
function hasQuad(type: i32): bool {
  return type === Q8_0 || type === Q4_0 || type === Q4_K || type === Q6_K || type === Q5_K
}

// Claims and runs chunks of job `job` until none is left (or the job is no longer current).
function runChunks(ctrl: usize, job: i32): void {
  const type = load<i32>(ctrl, C_TYPE)
  const rows = <usize>load<i32>(ctrl, C_ROWS)
  const cols = <usize>load<i32>(ctrl, C_COLS)
  const n = <usize>load<i32>(ctrl, C_N)
  const w = <usize>load<i32>(ctrl, C_W)
  const rb = <usize>load<i32>(ctrl, C_ROW_STRIDE)
  const x = type === F32 ? <usize>load<i32>(ctrl, C_X) : <usize>load<i32>(ctrl, C_XQ)
  const out = <usize>load<i32>(ctrl, C_OUT)
  const chunks = load<i32>(ctrl, C_CHUNKS)
  const chunkRows = <usize>load<i32>(ctrl, C_CHUNK_ROWS)
  // Activation rows are 4·cols bytes apart as f32 and as rounded in the scratch.
  const xStride = cols << 2
  const outStride = rows << 2
  // Quantized activations go four rows at a time.
  const quad = hasQuad(type)
  while (true) {
    const claim = atomic.load<i64>(ctrl, C_CLAIM)
    const chunk = <i32>claim
    if (<i32>(claim >> 32) !== job || chunk >= chunks) return
    if (atomic.cmpxchg<i64>(ctrl, claim, claim + 1, C_CLAIM) !== claim) continue
    const r0 = <usize>chunk * chunkRows
    const r1 = min(r0 + chunkRows, rows)
    for (let t = r0; t < r1; t += ROW_TILE) {
      const te = min(t + ROW_TILE, r1)
      if (type >= PACKED) {
        // Whole groups of four rows packed; the rows after the last group in the ggml layout.
        const ge = min(te, rows & ~3)
        if (ge > t) packedRange(ctrl, type, w, rb, x, xStride, n, out, outStride, t >> 2, ge >> 2, cols)
        if (te === ge) continue
        const tail = max(t, ge)
        for (let i: usize = 0; i < n; i++) {
          rowRange(ctrl, type - PACKED, w, rb, x + i * xStride, out + i * outStride, tail, te, cols)
        }
        continue
      }
      let i: usize = 0
      if ((type === F16 || type === BF16) && n > 1) {
        const mask = v128.load(ctrl, K_F16_MASK)
        const scale = v128.load(ctrl, K_F16_SCALE)
        for (; i + 1 < n; i += 4) {
          // A group of two or three rows reads its last row again in the unused lanes.
          const m = min(n - i, 4)
          const x0 = x + i * xStride
          const x1 = x0 + xStride
          const x2 = m > 2 ? x1 + xStride : x1
          const x3 = m > 3 ? x2 + xStride : x2
          for (let r = t; r < te; r++) {
            const v =
              type === F16
                ? dot4F16(w + r * rb, x0, x1, x2, x3, cols, mask, scale)
                : dot4BF16(w + r * rb, x0, x1, x2, x3, cols)
            const o = out + i * outStride + (r << 2)
            v128.store_lane<f32>(o, v, 0)
            v128.store_lane<f32>(o + outStride, v, 1)
            if (m > 2) v128.store_lane<f32>(o + 2 * outStride, v, 2)
            if (m > 3) v128.store_lane<f32>(o + 3 * outStride, v, 3)
          }
        }
      }
      if (quad) {
        for (; i + 4 <= n; i += 4) {
          rowRange4(ctrl, type, w, rb, x + i * xStride, xStride, out + i * outStride, outStride, t, te, cols)
        }
      }
      for (; i < n; i++) rowRange(ctrl, type, w, rb, x + i * xStride, out + i * outStride, t, te, cols)
    }
    if (atomic.add<i32>(ctrl, 1, C_DONE) + 1 === chunks) atomic.notify(ctrl + C_DONE, 1)
  }
}

// Rounds the job's activations into the scratch at C_XQ as ggml does for the weight type: 8-bit
// blocks for quantized weights, halves for F16 (F32 weights take them as they are).
function prepare(ctrl: usize): void {
  let type = load<i32>(ctrl, C_TYPE)
  // Packed weights: q8_0 activations (with |q| and sign(q) for Q8_0).
  if (type >= PACKED) {
    type -= PACKED
    const cols = <usize>load<i32>(ctrl, C_COLS)
    const n = <usize>load<i32>(ctrl, C_N)
    const x = <usize>load<i32>(ctrl, C_X)
    const xq = <usize>load<i32>(ctrl, C_XQ)
    for (let i: usize = 0; i < n; i++) {
      quantizeBlocks32(x + i * (cols << 2), cols, xq + i * (cols << 2), type === Q8_0, 8)
    }
    return
  }
  if (type === F32) return
  const cols = <usize>load<i32>(ctrl, C_COLS)
  const n = <usize>load<i32>(ctrl, C_N)
  const x = <usize>load<i32>(ctrl, C_X)
  const xq = <usize>load<i32>(ctrl, C_XQ)
  const stride = cols << 2
  if (type === F16) {
    // ggml multiplies F16 weights with activations converted to F16.
    const bytes = n * stride
    let o: usize = 0
    for (; o + 16 <= bytes; o += 16) v128.store(xq + o, roundToHalf4(v128.load(x + o)))
    for (; o < bytes; o += 4) store<f32>(xq + o, roundToHalf(load<f32>(x + o)))
    return
  }
  if (type === BF16) {
    // And BF16 weights with activations converted to BF16.
    const bytes = n * stride
    let o: usize = 0
    for (; o + 16 <= bytes; o += 16) v128.store(xq + o, roundToBF16x4(v128.load(x + o)))
    for (; o < bytes; o += 4) store<f32>(xq + o, roundToBF16(load<f32>(x + o)))
    return
  }
  for (let i: usize = 0; i < n; i++) {
    const xi = x + i * stride
    const qi = xq + i * stride
    if (type === Q8_0 || type === IQ4_NL) quantizeBlocks32(xi, cols, qi, true, 8)
    else if (type === Q4_0) quantizeBlocks32(xi, cols, qi, false, 8)
    else if (type === Q5_0) quantizeBlocks32(xi, cols, qi, false, 16)
    else if (type === Q4_1 || type === Q5_1) quantizeBlocks32(xi, cols, qi, false, 0)
    else quantizeBlocks256(xi, cols, qi, type === IQ4_XS)
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points

/**
 * Runs the job in the control block: quantizes its activations, publishes it to the workers when
 * C_THREADS > 1, claims chunks alongside them and returns when every chunk is done.
 */
export function dispatch(ctrl: usize): void {
  prepare(ctrl)
  const threads = load<i32>(ctrl, C_THREADS)
  const rows = load<i32>(ctrl, C_ROWS)
  // About four chunks per thread (whole row tiles) balance uneven threads at little claiming cost.
  let chunkRows = rows
  if (threads > 1) {
    const per = (rows + threads * 4 - 1) / (threads * 4)
    chunkRows = max(<i32>ROW_TILE, (per + <i32>ROW_TILE - 1) & ~(<i32>ROW_TILE - 1))
  }
  const chunks = (rows + chunkRows - 1) / chunkRows
  const job = load<i32>(ctrl, C_JOB) + 1
  store<i32>(ctrl, job, C_JOB)
  store<i32>(ctrl, chunks, C_CHUNKS)
  store<i32>(ctrl, chunkRows, C_CHUNK_ROWS)
  atomic.store<i32>(ctrl, 0, C_DONE)
  atomic.store<i64>(ctrl, (<i64>job) << 32, C_CLAIM)
  if (threads > 1) {
    atomic.add<i32>(ctrl, 1, C_GEN)
    atomic.notify(ctrl + C_GEN, threads - 1)
  }
  runChunks(ctrl, job)
  let spin = load<i32>(ctrl, C_SPIN)
  let done = atomic.load<i32>(ctrl, C_DONE)
  while (done !== chunks) {
    if (spin > 0) spin--
    else memory.atomic.wait32(ctrl + C_DONE, done, -1)
    done = atomic.load<i32>(ctrl, C_DONE)
  }
}

/**
 * A worker's life: wait for C_GEN to move past `seen`, claim chunks of the current job, until
 * C_QUIT is set. Spins C_SPIN times before sleeping, so that back-to-back jobs (the matvecs of a
 * decode step) start without a futex wake-up.
 */
export function workerLoop(ctrl: usize, seen: i32): void {
  while (true) {
    let spin = load<i32>(ctrl, C_SPIN)
    let gen = atomic.load<i32>(ctrl, C_GEN)
    while (gen === seen) {
      if (spin > 0) spin--
      else memory.atomic.wait32(ctrl + C_GEN, seen, -1)
      gen = atomic.load<i32>(ctrl, C_GEN)
    }
    seen = gen
    if (atomic.load<i32>(ctrl, C_QUIT) !== 0) return
    runChunks(ctrl, atomic.load<i32>(ctrl, C_JOB))
  }
}

/** Σ of `n` floats at `p` (n a multiple of 16): the memory-bandwidth reference in bench/kernels.ts. */
export function sumF32(p: usize, n: usize): f32 {
  let a0 = f32x4.splat(0)
  let a1 = f32x4.splat(0)
  let a2 = f32x4.splat(0)
  let a3 = f32x4.splat(0)
  for (let o: usize = 0; o < n << 2; o += 64) {
    a0 = f32x4.add(a0, v128.load(p + o))
    a1 = f32x4.add(a1, v128.load(p + o, 16))
    a2 = f32x4.add(a2, v128.load(p + o, 32))
    a3 = f32x4.add(a3, v128.load(p + o, 48))
  }
  return hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)))
}
