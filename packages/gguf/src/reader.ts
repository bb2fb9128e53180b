import { type FileHandle, open } from 'node:fs/promises'
import { FileAccessError, InvalidArgumentError, parseWith } from '@meshnet/core'
import { z } from 'zod'
import { GGUFFormatError, TensorNotFoundError } from './errors.ts'
import {
  DEFAULT_GGUF_LIMITS,
  type GGUFHeader,
  type GGUFLimits,
  type GGUFTensorInfo,
  readHeader,
} from './header.ts'
import type { GGUFValue } from './metadata.ts'
import { dequantizeRow } from './quants.ts'

export interface OpenGGUFOptions {
  /** Caps on what a header may claim; see `DEFAULT_GGUF_LIMITS`. */
  limits?: Partial<GGUFLimits>
}

const positive = z.number().int().positive().max(Number.MAX_SAFE_INTEGER)
const openOptionsSchema = z.strictObject({
  limits: z
    .strictObject({
      maxHeaderBytes: positive.optional(),
      maxStringLength: positive.optional(),
      maxArrayLength: positive.optional(),
      maxMetadataEntries: positive.optional(),
      maxTensors: positive.optional(),
    })
    .optional(),
})

/** Which rows of a tensor to read: `[rowStart, rowEnd)`, rows being indices along `dims[1..]`. */
export interface TensorRowRange {
  rowStart?: number
  rowEnd?: number
}

/**
 * An open GGUF file. The header (metadata and tensor infos) is parsed on open; tensor data is read
 * on demand with positioned reads, so only what is asked for is ever in memory.
 */
export interface GGUFReader {
  readonly path: string
  readonly version: 2 | 3
  readonly fileSize: number
  readonly alignment: number
  /** Absolute offset of the tensor data section. */
  readonly dataOffset: number
  /** Every key/value pair, in file order. */
  readonly metadata: ReadonlyMap<string, GGUFValue>
  /** Every tensor, in file order. */
  readonly tensors: readonly GGUFTensorInfo[]
  tensor(name: string): GGUFTensorInfo | undefined
  /** A string value; undefined when absent; GGUFFormatError when the key holds another type. */
  getString(key: string): string | undefined
  /** Any numeric value (64-bit ones must fit a JS number); undefined when absent. */
  getNumber(key: string): number | undefined
  getBoolean(key: string): boolean | undefined
  /** The raw bytes of a whole tensor. */
  readTensor(name: string): Promise<Uint8Array>
  /** The raw bytes of rows `[rowStart, rowEnd)` of a tensor; each row is `rowByteLength` bytes. */
  readTensorRows(name: string, rowStart: number, rowEnd: number): Promise<Uint8Array>
  /**
   * Reads a tensor (or a row range of it) straight into `target` from its start, e.g. a view of
   * WebAssembly memory. Resolves to the number of bytes written.
   */
  readTensorInto(name: string, target: Uint8Array, range?: TensorRowRange): Promise<number>
  /** Rows `[rowStart, rowEnd)` dequantized to float32 (`(rowEnd - rowStart) * dims[0]` values). */
  readTensorRowsF32(name: string, rowStart: number, rowEnd: number): Promise<Float32Array>
  close(): Promise<void>
}

/** Opens and validates a GGUF v2/v3 file. Throws GGUFFormatError naming the file and byte offset. */
export async function openGGUF(path: string, options: OpenGGUFOptions = {}): Promise<GGUFReader> {
  const parsed = parseWith(openOptionsSchema, options, 'openGGUF options')
  const limits: GGUFLimits = { ...DEFAULT_GGUF_LIMITS }
  for (const [k, v] of Object.entries(parsed.limits ?? {})) {
    if (v !== undefined) limits[k as keyof GGUFLimits] = v
  }
  let handle: FileHandle
  try {
    handle = await open(path, 'r')
  } catch (err) {
    throw new FileAccessError(`could not open ${path}: ${(err as Error).message}`, { cause: err })
  }
  try {
    const { size } = await handle.stat()
    const header = await readHeader(handle, path, size, limits)
    return new GGUFFile(handle, path, size, header)
  } catch (err) {
    await handle.close()
    throw err
  }
}

const CHUNK = 64 * 1024 * 1024

class GGUFFile implements GGUFReader {
  readonly path: string
  readonly version: 2 | 3
  readonly fileSize: number
  readonly alignment: number
  readonly dataOffset: number
  readonly metadata: ReadonlyMap<string, GGUFValue>
  readonly tensors: readonly GGUFTensorInfo[]
  private readonly handle: FileHandle
  private readonly byName: Map<string, GGUFTensorInfo>
  private readonly keyOffsets: Map<string, number>
  private closed = false

  constructor(handle: FileHandle, path: string, fileSize: number, header: GGUFHeader) {
    this.handle = handle
    this.path = path
    this.fileSize = fileSize
    this.version = header.version
    this.alignment = header.alignment
    this.dataOffset = header.dataOffset
    this.metadata = header.metadata
    this.tensors = header.tensors
    this.keyOffsets = header.keyOffsets
    this.byName = new Map(header.tensors.map((t) => [t.name, t]))
  }

  tensor(name: string): GGUFTensorInfo | undefined {
    return this.byName.get(name)
  }

  private wrongType(key: string, want: string, got: GGUFValue): GGUFFormatError {
    const at = this.keyOffsets.get(key) ?? 0
    const found = got.type === 'array' ? `an array of ${got.itemType}` : got.type
    return new GGUFFormatError(
      `${this.path}: at byte ${at}: key '${key}' should be ${want}, found ${found}`,
      {
        details: { file: this.path, offset: at, key },
      },
    )
  }

  getString(key: string): string | undefined {
    const v = this.metadata.get(key)
    if (v === undefined) return undefined
    if (v.type !== 'string') throw this.wrongType(key, 'a string', v)
    return v.value
  }

  getNumber(key: string): number | undefined {
    const v = this.metadata.get(key)
    if (v === undefined) return undefined
    if (typeof v.value === 'number') return v.value
    if (typeof v.value === 'bigint') {
      if (v.value > BigInt(Number.MAX_SAFE_INTEGER) || v.value < -BigInt(Number.MAX_SAFE_INTEGER)) {
        throw this.wrongType(key, 'a number that fits 53 bits', v)
      }
      return Number(v.value)
    }
    throw this.wrongType(key, 'a number', v)
  }

  getBoolean(key: string): boolean | undefined {
    const v = this.metadata.get(key)
    if (v === undefined) return undefined
    if (v.type !== 'bool') throw this.wrongType(key, 'a bool', v)
    return v.value
  }

  private find(name: string): GGUFTensorInfo {
    const t = this.byName.get(name)
    if (t === undefined) {
      throw new TensorNotFoundError(`${this.path} has no tensor '${name}'`, {
        details: { file: this.path, tensor: name },
      })
    }
    return t
  }

  private range(t: GGUFTensorInfo, rowStart: number, rowEnd: number): [number, number] {
    if (
      !Number.isSafeInteger(rowStart) ||
      !Number.isSafeInteger(rowEnd) ||
      rowStart < 0 ||
      rowEnd < rowStart
    ) {
      throw new InvalidArgumentError(
        `rows [${rowStart}, ${rowEnd}) of tensor '${t.name}' are not a valid range`,
      )
    }
    if (rowEnd > t.rows) {
      throw new InvalidArgumentError(
        `rows [${rowStart}, ${rowEnd}) are out of range for tensor '${t.name}', which has ${t.rows} rows`,
      )
    }
    return [t.offset + rowStart * t.rowByteLength, (rowEnd - rowStart) * t.rowByteLength]
  }

  private async readAt(target: Uint8Array, position: number, length: number, what: string): Promise<void> {
    if (this.closed) throw new InvalidArgumentError(`${this.path} is closed`)
    let done = 0
    while (done < length) {
      const n = Math.min(CHUNK, length - done)
      const { bytesRead } = await this.handle.read(target, done, n, position + done)
      if (bytesRead === 0) {
        throw new GGUFFormatError(
          `${this.path}: at byte ${position + done}: the file ended while reading ${what} (was it truncated after it was opened?)`,
          { details: { file: this.path, offset: position + done } },
        )
      }
      done += bytesRead
    }
  }

  async readTensor(name: string): Promise<Uint8Array> {
    const t = this.find(name)
    const out = new Uint8Array(t.byteLength)
    await this.readAt(out, t.offset, t.byteLength, `tensor '${name}'`)
    return out
  }

  async readTensorRows(name: string, rowStart: number, rowEnd: number): Promise<Uint8Array> {
    const t = this.find(name)
    const [position, length] = this.range(t, rowStart, rowEnd)
    const out = new Uint8Array(length)
    await this.readAt(out, position, length, `rows ${rowStart}..${rowEnd} of tensor '${name}'`)
    return out
  }

  async readTensorInto(name: string, target: Uint8Array, range: TensorRowRange = {}): Promise<number> {
    const t = this.find(name)
    const [position, length] = this.range(t, range.rowStart ?? 0, range.rowEnd ?? t.rows)
    if (target.length < length) {
      throw new InvalidArgumentError(
        `target of ${target.length} bytes is too small for ${length} bytes of tensor '${name}'`,
      )
    }
    await this.readAt(target, position, length, `tensor '${name}'`)
    return length
  }

  async readTensorRowsF32(name: string, rowStart: number, rowEnd: number): Promise<Float32Array> {
    const t = this.find(name)
    const bytes = await this.readTensorRows(name, rowStart, rowEnd)
    const n = t.dims[0] ?? 1
    const out = new Float32Array((rowEnd - rowStart) * n)
    for (let r = 0; r < rowEnd - rowStart; r++) {
      dequantizeRow(t.type, bytes.subarray(r * t.rowByteLength), n, out.subarray(r * n, (r + 1) * n))
    }
    return out
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.handle.close()
  }
}
