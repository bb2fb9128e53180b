// BF16 weights. ggml multiplies them with activations rounded to bf16 (`vec_dot_type` BF16) and
// sums the products in f32: a bf16 × bf16 product is exact in f32, so only the order of the f32
// additions differs from ggml's. A bf16 is the top half of a float, so widening one is a shuffle
// with zeros, exact for every value (subnormals included, though f32 subnormals are slow).

import { hsum, hsumLanes } from './common'

// The f32 bits of bf16 values: v rounded to the nearest bf16 (ties to even), as ggml's
// GGML_FP32_TO_BF16 does, with NaNs kept quiet NaNs.
export function roundToBF16(v: f32): f32 {
  const u = reinterpret<u32>(v)
  if ((u & 0x7fffffff) > 0x7f800000) return reinterpret<f32>((u | 0x400000) & 0xffff0000)
  return reinterpret<f32>((u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000)
}

// The same for four floats.
export function roundToBF16x4(v: v128): v128 {
  const top = i32x4.splat(0xffff0000)
  const r = v128.and(
    i32x4.add(i32x4.add(v, i32x4.splat(0x7fff)), v128.and(i32x4.shr_u(v, 16), i32x4.splat(1))),
    top,
  )
  const nan = i32x4.gt_s(v128.and(v, i32x4.splat(0x7fffffff)), i32x4.splat(0x7f800000))
  return v128.bitselect(v128.and(v128.or(v, i32x4.splat(0x400000)), top), r, nan)
}

// Four bf16 weights (the low or high four of h) as floats.
function lowBF16(h: v128): v128 {
  return v128.shuffle<i16>(i32x4.splat(0), h, 0, 8, 1, 9, 2, 10, 3, 11)
}

function highBF16(h: v128): v128 {
  return v128.shuffle<i16>(i32x4.splat(0), h, 4, 12, 5, 13, 6, 14, 7, 15)
}

// One row's dot product, the same way on every path (see dotF16 in kernels.ts): 16 values at a
// time into four accumulators, hsum((a0 + a1) + (a2 + a3)), then the last cols % 16 products one
// by one.
function dotBF16(w: usize, x: usize, cols: usize): f32 {
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
    a0 = f32x4.relaxed_madd(lowBF16(h0), v128.load(xp), a0)
    a1 = f32x4.relaxed_madd(highBF16(h0), v128.load(xp, 16), a1)
    a2 = f32x4.relaxed_madd(lowBF16(h1), v128.load(xp, 32), a2)
    a3 = f32x4.relaxed_madd(highBF16(h1), v128.load(xp, 48), a3)
  }
  let s = hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)))
  for (; i < cols; i++) s += bf16At(w, i) * load<f32>(x + (i << 2))
  return s
}

// Weight i of the row at w as a float.
function bf16At(w: usize, i: usize): f32 {
  return reinterpret<f32>((<u32>load<u16>(w + (i << 1))) << 16)
}

// out[r] for r in [r0, r1): BF16 rows `rb` bytes apart, x the bf16-rounded activations as floats.
export function rowsBF16(w: usize, rb: usize, x: usize, out: usize, r0: usize, r1: usize, cols: usize): void {
  for (let r = r0; r < r1; r++) store<f32>(out + (r << 2), dotBF16(w + r * rb, x, cols))
}

// dotBF16 before its tail for one row and two activation rows, in lanes 0 and 1.
function dot2BF16(w: usize, x: usize, y: usize, end16: usize): v128 {
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
    let c = lowBF16(h0)
    a0 = f32x4.relaxed_madd(c, v128.load(x + o), a0)
    b0 = f32x4.relaxed_madd(c, v128.load(y + o), b0)
    c = highBF16(h0)
    a1 = f32x4.relaxed_madd(c, v128.load(x + o, 16), a1)
    b1 = f32x4.relaxed_madd(c, v128.load(y + o, 16), b1)
    c = lowBF16(h1)
    a2 = f32x4.relaxed_madd(c, v128.load(x + o, 32), a2)
    b2 = f32x4.relaxed_madd(c, v128.load(y + o, 32), b2)
    c = highBF16(h1)
    a3 = f32x4.relaxed_madd(c, v128.load(x + o, 48), a3)
    b3 = f32x4.relaxed_madd(c, v128.load(y + o, 48), b3)
  }
  const sa = f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3))
  const sb = f32x4.add(f32x4.add(b0, b1), f32x4.add(b2, b3))
  return hsumLanes(sa, sb, sa, sb)
}

// [dot(w, x0), …, dot(w, x3)] for one BF16 row and four activation rows, each summed as dotBF16
// sums it, two activation rows at a time over the weight row.
export function dot4BF16(w: usize, x0: usize, x1: usize, x2: usize, x3: usize, cols: usize): v128 {
  const end16 = (cols >> 4) << 4
  const p = dot2BF16(w, x0, x1, end16)
  const q = x2 === x1 ? p : dot2BF16(w, x2, x3, end16)
  let r = v128.shuffle<f32>(p, q, 0, 1, 4, 5)
  for (let i = end16; i < cols; i++) {
    const v = f32x4.splat(bf16At(w, i))
    let xs = f32x4.splat(load<f32>(x0 + (i << 2)))
    xs = f32x4.replace_lane(xs, 1, load<f32>(x1 + (i << 2)))
    xs = f32x4.replace_lane(xs, 2, load<f32>(x2 + (i << 2)))
    xs = f32x4.replace_lane(xs, 3, load<f32>(x3 + (i << 2)))
    r = f32x4.add(r, f32x4.mul(v, xs))
  }
  return r
}
