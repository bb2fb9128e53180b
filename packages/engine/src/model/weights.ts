import { findGGMLType, type GGUFReader, type GGUFTensorInfo, rowByteLength } from '@meshnet/gguf'
import { UnsupportedModelError, UnsupportedTensorTypeError } from '../errors.ts'
import type { KernelBuffer, Kernels } from '../kernels/api.ts'
import { KERNEL_TYPES } from '../kernels/types.ts'

/** ggml types the engine can multiply (the kernels' and `dequantizeRow`'s set). */
export const SUPPORTED_WEIGHT_TYPES: ReadonlySet<string> = new Set(
  KERNEL_TYPES.map((type) => findGGMLType(type)!.name),
)

const F32 = 0
/** Rows read per batch of positioned reads when loading a column slice. */
const ROW_BATCH = 64
/** Rows dequantized per step when a column slice cuts through blocks. */
const DEQUANT_ROWS = 256

/** A weight matrix in kernel memory: `rows` rows of `cols` elements of ggml `type`. */
export interface Matrix {
  buf: KernelBuffer
  type: number
  rows: number
  cols: number
}

/** Loads tensors (or the parts of them a shard needs) straight from the file into kernel memory. */
export class WeightLoader {
  readonly #file: GGUFReader
  readonly #kernels: Kernels
  readonly #signal: AbortSignal | undefined
  readonly #onProgress: ((bytes: number) => void) | undefined
  /** Everything allocated, so a failed load can free it. */
  readonly allocated: KernelBuffer[] = []
  bytes = 0

  /** `onProgress` hears the bytes loaded so far after each tensor (or slice of one) is read. */
  constructor(
    file: GGUFReader,
    kernels: Kernels,
    signal?: AbortSignal,
    onProgress?: (bytes: number) => void,
  ) {
    this.#file = file
    this.#kernels = kernels
    this.#signal = signal
    this.#onProgress = onProgress
  }

  /** The tensor, checked to have `dims` (ggml order) and a type the engine computes with. */
  info(name: string, dims: readonly number[]): GGUFTensorInfo {
    const t = this.#file.tensor(name)
    if (t === undefined) {
      throw new UnsupportedModelError(
        `${this.#file.path} has no tensor '${name}'; it is not a complete model`,
      )
    }
    const shape = [...t.dims]
    while (shape.length > dims.length && shape.at(-1) === 1) shape.pop()
    if (shape.length !== dims.length || shape.some((d, i) => d !== dims[i])) {
      throw new UnsupportedModelError(
        `${this.#file.path}: tensor '${name}' has shape [${t.dims.join(', ')}], expected [${dims.join(', ')}]`,
      )
    }
    if (!SUPPORTED_WEIGHT_TYPES.has(t.typeName)) {
      throw new UnsupportedTensorTypeError(
        `${this.#file.path}: tensor '${name}' is ${t.typeName}; the Meshnet engine computes with ${[...SUPPORTED_WEIGHT_TYPES].join(', ')}`,
        {
          hint: 'use --engine llama-cpp (auto runs a model that fits on one member on llama.cpp), or requantize the model to one of those types',
        },
      )
    }
    return t
  }

  /** A small tensor (a norm) dequantized into the JS heap. */
  async vector(name: string, length: number): Promise<Float32Array> {
    this.info(name, [length])
    this.#signal?.throwIfAborted()
    return await this.#file.readTensorRowsF32(name, 0, 1)
  }

  /** Rows `[start, end)` of a `[cols, rows]` tensor (output dimension slice: whole rows). */
  async rows(name: string, cols: number, totalRows: number, start: number, end: number): Promise<Matrix> {
    const t = this.info(name, [cols, totalRows])
    const rows = end - start
    const buf = this.#alloc(rows * t.rowByteLength)
    if (rows > 0) {
      this.#signal?.throwIfAborted()
      await this.#file.readTensorInto(name, buf.bytes(), { rowStart: start, rowEnd: end })
    }
    this.#onProgress?.(this.bytes)
    return { buf, type: t.type, rows, cols }
  }

  /**
   * Columns `[start, end)` of every row of a `[cols, rows]` tensor (input dimension slice). When
   * the slice starts and ends on block boundaries each row's byte range is read as it is; otherwise
   * the rows are dequantized and the slice is kept as F32.
   */
  async columns(name: string, cols: number, rows: number, start: number, end: number): Promise<Matrix> {
    const t = this.info(name, [cols, rows])
    if (start === 0 && end === cols) return await this.rows(name, cols, rows, 0, rows)
    const width = end - start
    const block = findGGMLType(t.type)!.blockSize
    if (start % block === 0 && end % block === 0) {
      const offset = rowByteLength(t.type, start)
      const sliceBytes = rowByteLength(t.type, width)
      const buf = this.#alloc(rows * sliceBytes)
      for (let r0 = 0; r0 < rows && sliceBytes > 0; r0 += ROW_BATCH) {
        this.#signal?.throwIfAborted()
        const target = buf.bytes()
        const reads: Array<Promise<unknown>> = []
        for (let r = r0; r < Math.min(rows, r0 + ROW_BATCH); r++) {
          const at = r * t.rowByteLength + offset
          reads.push(
            this.#file.readTensorBytesInto(name, target.subarray(r * sliceBytes, (r + 1) * sliceBytes), at),
          )
        }
        await Promise.all(reads)
      }
      this.#onProgress?.(this.bytes)
      return { buf, type: t.type, rows, cols: width }
    }
    const buf = this.#alloc(rows * width * 4)
    for (let r0 = 0; r0 < rows && width > 0; r0 += DEQUANT_ROWS) {
      this.#signal?.throwIfAborted()
      const r1 = Math.min(rows, r0 + DEQUANT_ROWS)
      const values = await this.#file.readTensorRowsF32(name, r0, r1)
      const out = buf.f32()
      for (let r = r0; r < r1; r++) {
        const from = (r - r0) * cols + start
        out.set(values.subarray(from, from + width), r * width)
      }
    }
    this.#onProgress?.(this.bytes)
    return { buf, type: F32, rows, cols: width }
  }

  /**
   * `m` rearranged in place into the kernels' faster layout, when they have one for its type (see
   * `Kernels.pack`): for matrices that are only multiplied, never read by row.
   */
  packed(m: Matrix): Matrix {
    const type = this.#kernels.pack?.(m.type, m.buf, m.rows, m.cols) ?? m.type
    return type === m.type ? m : { ...m, type }
  }

  #alloc(byteLength: number): KernelBuffer {
    const buf = this.#kernels.alloc(byteLength)
    this.allocated.push(buf)
    this.bytes += byteLength
    return buf
  }
}
