import { InvalidArgumentError } from '@meshnet/core'
import { dequantizeRow } from '@meshnet/gguf'
import type { KernelBuffer, Kernels } from './api.ts'
import { KernelUnavailableError } from './errors.ts'
import { KernelHeap } from './heap.ts'
import { checkJob } from './types.ts'
import { wasmApi } from './webassembly.ts'

const PAGE = 65536
const WASM32_PAGES = 65536

/**
 * The reference kernels, in plain TypeScript on the calling thread: each weight row of any
 * `KERNEL_TYPES` type is dequantized with @meshnet/gguf (bit-exact with ggml's `dequantize_row_*`)
 * and dotted with the f32 activations in f64. They take the activations as they are: the model
 * rounds them as ggml does first (`roundActivations` in src/model/activations.ts). The WebAssembly kernels are tested against these; they also run where WebAssembly SIMD
 * does not. Their memory is a (non-shared) WebAssembly memory, so buffers behave the same way.
 */
export function createJsKernels(): Kernels {
  const memory = new wasmApi.Memory({ initial: 1, maximum: WASM32_PAGES })
  const heap = new KernelHeap(memory, 64, WASM32_PAGES * PAGE)
  let row = new Float32Array(0)
  let disposed = false

  const live = () => {
    if (disposed) throw new KernelUnavailableError('the JS kernels were disposed')
  }

  const matmul = (
    type: number,
    w: KernelBuffer,
    rows: number,
    cols: number,
    x: KernelBuffer,
    n: number,
    out: KernelBuffer,
    rowStride?: number,
  ): void => {
    live()
    const stride = checkJob(type, w, rows, cols, x, n, out, rowStride)
    if (!heap.owns(w) || !heap.owns(x) || !heap.owns(out)) {
      throw new InvalidArgumentError(
        'kernel calls take live buffers from alloc() or view() of the same kernels',
      )
    }
    if (row.length < cols) row = new Float32Array(cols)
    const wb = w.bytes()
    const xs = x.f32()
    const o = out.f32()
    for (let r = 0; r < rows; r++) {
      const values = dequantizeRow(type, wb.subarray(r * stride), cols, row)
      for (let i = 0; i < n; i++) {
        const base = i * cols
        let sum = 0
        for (let c = 0; c < cols; c++) sum += values[c]! * xs[base + c]!
        o[i * rows + r] = sum
      }
    }
  }

  return {
    name: 'js',
    threads: 1,
    alloc(byteLength) {
      live()
      return heap.alloc(byteLength)
    },
    free(buf) {
      live()
      heap.free(buf)
    },
    view(buf, byteOffset, byteLength) {
      live()
      return heap.view(buf, byteOffset, byteLength)
    },
    matvec(type, w, rows, cols, x, out, rowStride) {
      matmul(type, w, rows, cols, x, 1, out, rowStride)
    },
    matmul,
    async dispose() {
      disposed = true
    },
  }
}
