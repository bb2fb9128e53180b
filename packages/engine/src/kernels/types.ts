import { InvalidArgumentError } from '@meshnet/core'
import { findGGMLType, GGML_TYPE, rowByteLength } from '@meshnet/gguf'
import { UnsupportedTensorTypeError } from '../errors.ts'
import type { KernelBuffer } from './api.ts'

/**
 * The ggml types the kernels multiply: F32, F16, BF16, the 32-value blocks Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0 and IQ4_NL, and the 256-value super-blocks Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and IQ4_XS.
 */
export const KERNEL_TYPES: readonly number[] = Object.freeze([
  GGML_TYPE.F32,
  GGML_TYPE.F16,
  GGML_TYPE.BF16,
  GGML_TYPE.Q4_0,
  GGML_TYPE.Q4_1,
  GGML_TYPE.Q5_0,
  GGML_TYPE.Q5_1,
  GGML_TYPE.Q8_0,
  GGML_TYPE.IQ4_NL,
  GGML_TYPE.Q2_K,
  GGML_TYPE.Q3_K,
  GGML_TYPE.Q4_K,
  GGML_TYPE.Q5_K,
  GGML_TYPE.Q6_K,
  GGML_TYPE.IQ4_XS,
])

/**
 * Type ids of the WebAssembly kernels' packed layouts (`Kernels.pack`): 256 + the ggml type, for
 * Q4_0 and Q8_0, four rows interleaved block by block. Only the kernels that packed a matrix
 * multiply it; its rows are no longer readable as ggml rows.
 */
export const PACKED_TYPE_BASE = 256

/** The ggml type of a kernel type id: itself, or the type a packed layout was made from. */
export function ggmlTypeOf(type: number): number {
  return type >= PACKED_TYPE_BASE ? type - PACKED_TYPE_BASE : type
}

/**
 * Checks one kernel call's arguments and returns the bytes from one weight row to the next
 * (`rowStride`, by default the bytes of a row). Throws UnsupportedTensorTypeError for a type
 * without a kernel and InvalidArgumentError for a shape that does not fit the buffers.
 */
export function checkJob(
  type: number,
  w: KernelBuffer,
  rows: number,
  cols: number,
  x: KernelBuffer,
  n: number,
  out: KernelBuffer,
  rowStride?: number,
  packed: readonly number[] = [],
): number {
  if (type >= PACKED_TYPE_BASE && !packed.includes(type)) {
    throw new UnsupportedTensorTypeError(
      `kernel type ${type} is a packed layout these kernels do not multiply`,
      { hint: 'pass a matrix packed by the same kernels (Kernels.pack), or its ggml type unpacked' },
    )
  }
  const ggmlType = ggmlTypeOf(type)
  if (!KERNEL_TYPES.includes(ggmlType)) {
    const name = findGGMLType(ggmlType)?.name ?? `ggml type ${type}`
    throw new UnsupportedTensorTypeError(`the kernels cannot multiply ${name} weights`, {
      hint: 'use F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K or IQ4_XS, or dequantize the tensor to F32 when loading it',
    })
  }
  if (!Number.isSafeInteger(rows) || rows < 0 || !Number.isSafeInteger(cols) || cols <= 0) {
    throw new InvalidArgumentError(`a ${rows}×${cols} weight matrix is not a valid shape`)
  }
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new InvalidArgumentError(`a matmul needs at least one activation row, got ${n}`)
  }
  const rowBytes = rowByteLength(ggmlType, cols)
  const stride = rowStride ?? rowBytes
  if (type !== ggmlType && stride !== rowBytes) {
    throw new InvalidArgumentError('a packed matrix is read with its own row stride only')
  }
  if (!Number.isSafeInteger(stride) || stride < rowBytes || stride > 2 ** 31 - 1) {
    throw new InvalidArgumentError(`a row stride of ${stride} bytes does not fit rows of ${rowBytes} bytes`, {
      hint: 'rowStride is the distance in bytes from one weight row to the next',
    })
  }
  const need = (what: string, buf: KernelBuffer, bytes: number) => {
    if (buf.byteLength < bytes) {
      throw new InvalidArgumentError(
        `${what} holds ${buf.byteLength} bytes, a ${rows}×${cols} ${findGGMLType(ggmlType)?.name} product of ${n} needs ${bytes}`,
      )
    }
  }
  need('the weight buffer', w, rows === 0 ? 0 : (rows - 1) * stride + rowBytes)
  need('the activation buffer', x, n * cols * 4)
  need('the output buffer', out, n * rows * 4)
  return stride
}
