/**
 * The compute kernels of Meshnet's llama engine: matrix × vector (decode) and matrix × matrix
 * (prompt) products over ggml-typed weights, in WebAssembly SIMD on one or more threads
 * (`createWasmKernels`), or in plain TypeScript as the reference (`createJsKernels`).
 *
 * Weights and activations live in kernel memory (`alloc`), one WebAssembly memory shared by every
 * kernel thread, so weights are held once per process. That memory is wasm32: a kernel set holds at
 * most 4 GiB of weights, activations and KV cache (less with `maxMemoryBytes`), which bounds the
 * layers one shard can take. Typed-array views from `bytes()`/`f32()` must be taken again after an
 * `alloc` (the memory may have grown).
 */

/** A range of kernel memory. Views are cached and re-created after memory growth. */
export interface KernelBuffer {
  /** Byte address in kernel memory. */
  readonly ptr: number
  readonly byteLength: number
  bytes(): Uint8Array
  /** The bytes as floats (`ptr` must be a multiple of 4; a trailing partial float is left out). */
  f32(): Float32Array
}

/**
 * Matrix kernels over ggml-typed weights. `w` holds `rows` rows of `cols` elements of ggml type
 * `type` (F32 0, F16 1, BF16 30, Q4_0 2, Q4_1 3, Q5_0 6, Q5_1 7, Q8_0 8, IQ4_NL 20, Q2_K 10, Q3_K 11,
 * Q4_K 12, Q5_K 13, Q6_K 14, IQ4_XS 23; see `KERNEL_TYPES`), each row stored as consecutive ggml
 * blocks exactly as in a GGUF file (`ne[0] = cols`). `x` holds f32 activations.
 *
 * - `matvec`: `out[r] = dot(W row r, x)` for r < rows.
 * - `matmul`: `x` is `n` rows of `cols` floats, `out[i * rows + r] = dot(W row r, x_i)`.
 *
 * `rowStride` is the distance in bytes from one row of W to the next (default: the size of a row,
 * rows packed as in GGUF). A row range is a `view` of `w` and `out`; a larger stride reads one head
 * of a KV cache: scores = K_h · q with K stored [position][kv heads · head dim] is a matvec of `ctx`
 * rows of `headDim` from `view(k, h·headDim·size)` with stride `kvHeads·headDim·size`, and V stored
 * transposed ([kv heads · head dim][max positions]) gives V_hᵀ·p the same way. `out` must not overlap
 * `w` or `x`.
 *
 * The WebAssembly kernels first round the activations as ggml's CPU backend does for the weight
 * type (its `vec_dot_type`: q8_0 blocks of 32 for Q4_0/Q5_0/Q8_0/IQ4_NL, q8_1 for Q4_1/Q5_1 — the
 * same values, plus each block's d·Σq rounded to a half for the min term —, q8_K blocks of 256 for
 * the K-quants and IQ4_XS, halves for F16, bf16s for BF16, nothing for F32) and take integer dot
 * products (f32 ones of exact products for F16 and BF16), so they give llama.cpp's results up to the
 * order of f32 additions (activations already rounded that way stay as they are). Against the exact
 * f32 reference (`createJsKernels`) they differ by at most Σ over blocks of
 * 1.07 · (max|x| / 254) · Σ|w| (plus 2^-10 · |m| · Σ|x| for Q4_1/Q5_1 blocks with min m), or
 * 2^-11 · Σ|w·x| for F16 and 2^-8 · Σ|w·x| for BF16, plus f32 rounding.
 */
export interface Kernels {
  /** 'wasm-simd' or 'js'. */
  readonly name: string
  /** Threads a kernel call runs on, the calling thread included. */
  readonly threads: number
  alloc(byteLength: number): KernelBuffer
  free(buf: KernelBuffer): void
  /** `byteLength` bytes of `buf` from `byteOffset`: a row range, an output slice. Not to be freed. */
  view(buf: KernelBuffer, byteOffset: number, byteLength: number): KernelBuffer
  matvec(
    type: number,
    w: KernelBuffer,
    rows: number,
    cols: number,
    x: KernelBuffer,
    out: KernelBuffer,
    rowStride?: number,
  ): void
  matmul(
    type: number,
    w: KernelBuffer,
    rows: number,
    cols: number,
    x: KernelBuffer,
    n: number,
    out: KernelBuffer,
    rowStride?: number,
  ): void
  /**
   * Rearranges a `rows × cols` matrix of ggml `type`, rows packed as in GGUF, in place into a layout
   * these kernels multiply faster, and returns the type id to pass to `matvec`/`matmul` from then
   * on (the same `type` when there is none: only the WebAssembly kernels pack, and only Q4_0 and
   * Q8_0 with four rows or more; every other type multiplies in the ggml layout). A packed matrix keeps its byte length, but its rows are no
   * longer ggml rows: take no row views of it and do not dequantize it.
   */
  pack?(type: number, w: KernelBuffer, rows: number, cols: number): number
  /** Stops the worker threads; the kernels and their buffers cannot be used afterwards. */
  dispose(): Promise<void>
}
