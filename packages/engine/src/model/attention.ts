import { GGML_TYPE } from '@meshnet/gguf'
import type { KernelBuffer, Kernels } from '../kernels/api.ts'
import { softmaxRows } from './ops.ts'
import { type HeadViews, halfRound, type LayerState, type Scratch } from './shard-layout.ts'

/** What attention reads of a shard: its kernels, scratch, head groups and cache type. */
export interface AttentionContext {
  readonly kernels: Kernels
  /** The kernels round activations to halves themselves (WebAssembly); else they are rounded here. */
  readonly kernelsRound: boolean
  readonly scratch: Scratch
  readonly heads: readonly HeadViews[]
  /** Prompt positions per attention chunk, so that a chunk's scores fit the scores buffer. */
  readonly chunk: number
  readonly headDim: number
  /** Query heads of the shard. */
  readonly queryHeads: number
  readonly f16: boolean
  readonly scale: number
  /** tanh soft-capping of the scores (Gemma 2), 0 for none. */
  readonly softcap: number
}

/**
 * Attention of positions `[pos, pos + n)` over the layer's cache into `attn`, per KV head and
 * its query heads: scores = K·q and out = Vᵀ·p are kernel products over the cache (with an F16
 * cache the kernels round q and p to halves, as ggml does), the softmax is here. With a sliding
 * `window` a position attends to the last `window` positions only (the rest is masked, as in
 * llama.cpp's SWA layers); the scores of the masked ones are computed and dropped.
 */
export function attend(ctx: AttentionContext, L: LayerState, n: number, pos: number, window = 0): void {
  const s = ctx.scratch
  const d = ctx.headDim
  const nq = ctx.queryHeads
  const qRows = nq * d
  const f16 = ctx.f16
  const type = f16 ? GGML_TYPE.F16 : GGML_TYPE.F32
  const es = f16 ? 2 : 4
  const kStride = d * es
  const vStride = L.vCapacity * es
  const scale = ctx.scale
  const single = ctx.heads.length === 1
  for (const [h, head] of ctx.heads.entries()) {
    const gh = head.count
    for (let i0 = 0; i0 < n; i0 += ctx.chunk) {
      const m = Math.min(ctx.chunk, n - i0)
      const rows = m * gh
      const width = pos + i0 + m
      // The query rows of this KV head's heads at positions [i0, i0 + m), [position][head][dim].
      let xq: KernelBuffer
      let out: KernelBuffer
      if (n === 1) {
        xq = head.q
        out = head.attn
      } else if (single) {
        xq = ctx.kernels.view(s.q, i0 * qRows * 4, rows * d * 4)
        out = ctx.kernels.view(s.attn, i0 * qRows * 4, rows * d * 4)
      } else {
        const q = s.q.f32()
        const gathered = s.qHead.f32()
        for (let i = 0; i < m; i++) {
          const from = (i0 + i) * qRows + head.first * d
          gathered.set(q.subarray(from, from + gh * d), i * gh * d)
        }
        xq = s.qHead
        out = s.oHead
      }
      if (!ctx.kernelsRound && f16) halfRound(xq.f32(), rows * d)
      ctx.kernels.matmul(type, L.kHead[h]!, width, d, xq, rows, s.scores, kStride)
      const scores = s.scores.f32()
      softmaxRows(scores, rows, width, scale, (r) => pos + i0 + Math.floor(r / gh) + 1, window, ctx.softcap)
      if (!ctx.kernelsRound && f16) halfRound(scores, rows * width)
      ctx.kernels.matmul(type, L.vHead[h]!, d, width, s.scores, rows, out, vStride)
      if (out === s.oHead) {
        const o = s.oHead.f32()
        const attn = s.attn.f32()
        for (let i = 0; i < m; i++) {
          attn.set(o.subarray(i * gh * d, (i + 1) * gh * d), (i0 + i) * qRows + head.first * d)
        }
      }
    }
  }
}
