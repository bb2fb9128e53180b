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
  /** The file opened (the first part of a split model). */
  readonly path: string
  /**
   * Every file of the model: the path alone, or all parts of a split model
   * (`name-00001-of-00003.gguf` …), whose tensors this reader serves as one model.
   */
  readonly parts: readonly string[]
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
  /**
   * `target.length` bytes of a tensor from `byteOffset` into it (a byte range inside each row of a
   * column slice, for example).
   */
  readTensorBytesInto(name: string, target: Uint8Array, byteOffset: number): Promise<void>
  /** Rows `[rowStart, rowEnd)` dequantized to float32 (`(rowEnd - rowStart) * dims[0]` values). */
  readTensorRowsF32(name: string, rowStart: number, rowEnd: number): Promise<Float32Array>
  close(): Promise<void>
}

/** One file of a model: its handle, size and parsed header. */
interface Part {
  path: string
  handle: FileHandle
  size: number
  header: GGUFHeader
}

async function openPart(path: string, limits: GGUFLimits): Promise<Part> {
  let handle: FileHandle
  try {
    handle = await open(path, 'r')
  } catch (err) {
    throw new FileAccessError(`could not open ${path}: ${(err as Error).message}`, { cause: err })
  }
  try {
    const { size } = await handle.stat()
    return { path, handle, size, header: await readHeader(handle, path, size, limits) }
  } catch (err) {
    await handle.close()
    throw err
  }
}

/** `name-00001-of-00003.gguf`: llama.cpp's split naming (`llama_split_path`). */
const SPLIT_NAME = /^(.*)-(\d{5})-of-(\d{5})\.gguf$/

function splitNumber(part: Part, key: string): number | undefined {
  const v = part.header.metadata.get(key)
  if (v === undefined) return undefined
  if (typeof v.value !== 'number') {
    throw new GGUFFormatError(`${part.path}: key '${key}' should be a number`, {
      details: { file: part.path },
    })
  }
  return v.value
}

/**
 * The other parts of a split model (`split.count` > 1 in the first part), opened and checked: the
 * names follow llama.cpp's `-0000i-of-0000n.gguf`, every part says which it is, and the parts hold
 * `split.tensors.count` tensors in all, no name twice.
 */
async function openSplitParts(first: Part, limits: GGUFLimits): Promise<Part[]> {
  const count = splitNumber(first, 'split.count') ?? 1
  if (count <= 1) return []
  const fail = (problem: string, hint?: string): never => {
    throw new GGUFFormatError(`${first.path}: ${problem}`, {
      details: { file: first.path },
      ...(hint === undefined ? {} : { hint }),
    })
  }
  if ((splitNumber(first, 'split.no') ?? 0) !== 0)
    fail('is not the first part of its split model', 'pass the …-00001-of-… file')
  const name = SPLIT_NAME.exec(first.path)
  if (name === null || Number(name[2]) !== 1 || Number(name[3]) !== count) {
    fail(
      `is part of a model split in ${count} files, but is not named like its first part (…-00001-of-${String(count).padStart(5, '0')}.gguf)`,
      'pass the first part of the split model, with the names llama-gguf-split gave the parts',
    )
  }
  if ((splitNumber(first, 'split.no') ?? 0) !== 0)
    fail('is not the first part of its split model', 'pass the …-00001-of-… file')
  const parts: Part[] = []
  try {
    for (let i = 2; i <= count; i++) {
      const path = `${name![1]}-${String(i).padStart(5, '0')}-of-${name![3]}.gguf`
      const part = await openPart(path, limits).catch((err: unknown) => {
        throw err instanceof FileAccessError
          ? new FileAccessError(`part ${i} of ${count} of ${first.path} is missing: ${path}`, {
              cause: err,
              hint: 'put every part of the split model in the same directory',
            })
          : err
      })
      parts.push(part)
      if (splitNumber(part, 'split.no') !== i - 1 || splitNumber(part, 'split.count') !== count) {
        throw new GGUFFormatError(
          `${path}: is not part ${i} of ${count} (its split.no / split.count say otherwise)`,
          {
            details: { file: path },
          },
        )
      }
    }
    const total = splitNumber(first, 'split.tensors.count')
    const found = [first, ...parts].reduce((n, p) => n + p.header.tensors.length, 0)
    if (total !== undefined && total !== found) {
      fail(`its split.tensors.count is ${total}, but its ${count} parts hold ${found} tensors`)
    }
    return parts
  } catch (err) {
    for (const part of parts) await part.handle.close()
    throw err
  }
}

/**
 * Opens and validates a GGUF v2/v3 file. A split model (`name-00001-of-00003.gguf`, as
 * llama-gguf-split writes it) opens from its first part as one model: the metadata of the first
 * part, the tensors of all. Throws GGUFFormatError naming the file and byte offset.
 */
export async function openGGUF(path: string, options: OpenGGUFOptions = {}): Promise<GGUFReader> {
  const parsed = parseWith(openOptionsSchema, options, 'openGGUF options')
  const limits: GGUFLimits = { ...DEFAULT_GGUF_LIMITS }
  for (const [k, v] of Object.entries(parsed.limits ?? {})) {
    if (v !== undefined) limits[k as keyof GGUFLimits] = v
  }
  const first = await openPart(path, limits)
  let rest: Part[] = []
  try {
    rest = await openSplitParts(first, limits)
    return new GGUFFile([first, ...rest])
  } catch (err) {
    for (const part of [first, ...rest]) await part.handle.close()
    throw err
  }
}

const CHUNK = 64 * 1024 * 1024

class GGUFFile implements GGUFReader {
  readonly path: string
  readonly parts: readonly string[]
  readonly version: 2 | 3
  readonly fileSize: number
  readonly alignment: number
  readonly dataOffset: number
  readonly metadata: ReadonlyMap<string, GGUFValue>
  readonly tensors: readonly GGUFTensorInfo[]
  private readonly files: readonly Part[]
  private readonly byName: Map<string, GGUFTensorInfo>
  /** The file (index into `files`) that holds each tensor. */
  private readonly partOf: Map<string, number>
  private readonly keyOffsets: Map<string, number>
  private closed = false

  constructor(files: Part[]) {
    const header = files[0]!.header
    this.files = files
    this.path = files[0]!.path
    this.parts = files.map((p) => p.path)
    this.fileSize = files[0]!.size
    this.version = header.version
    this.alignment = header.alignment
    this.dataOffset = header.dataOffset
    this.metadata = header.metadata
    this.keyOffsets = header.keyOffsets
    this.tensors = files.flatMap((p) => p.header.tensors)
    this.byName = new Map()
    this.partOf = new Map()
    for (const [i, part] of files.entries()) {
      for (const t of part.header.tensors) {
        if (this.byName.has(t.name)) {
          throw new GGUFFormatError(`${part.path}: tensor '${t.name}' is also in another part of the model`, {
            details: { file: part.path, tensor: t.name },
          })
        }
        this.byName.set(t.name, t)
        this.partOf.set(t.name, i)
      }
    }
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

  private async readAt(
    t: GGUFTensorInfo,
    target: Uint8Array,
    position: number,
    length: number,
    what: string,
  ): Promise<void> {
    if (this.closed) throw new InvalidArgumentError(`${this.path} is closed`)
    const file = this.files[this.partOf.get(t.name)!]!
    let done = 0
    while (done < length) {
      const n = Math.min(CHUNK, length - done)
      const { bytesRead } = await file.handle.read(target, done, n, position + done)
      if (bytesRead === 0) {
        throw new GGUFFormatError(
          `${file.path}: at byte ${position + done}: the file ended while reading ${what} (was it truncated after it was opened?)`,
          { details: { file: file.path, offset: position + done } },
        )
      }
      done += bytesRead
    }
  }

  async readTensor(name: string): Promise<Uint8Array> {
    const t = this.find(name)
    const out = new Uint8Array(t.byteLength)
    await this.readAt(t, out, t.offset, t.byteLength, `tensor '${name}'`)
    return out
  }

  async readTensorRows(name: string, rowStart: number, rowEnd: number): Promise<Uint8Array> {
    const t = this.find(name)
    const [position, length] = this.range(t, rowStart, rowEnd)
    const out = new Uint8Array(length)
    await this.readAt(t, out, position, length, `rows ${rowStart}..${rowEnd} of tensor '${name}'`)
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
    await this.readAt(t, target, position, length, `tensor '${name}'`)
    return length
  }

  async readTensorBytesInto(name: string, target: Uint8Array, byteOffset: number): Promise<void> {
    const t = this.find(name)
    if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || byteOffset + target.length > t.byteLength) {
      throw new InvalidArgumentError(
        `bytes [${byteOffset}, ${byteOffset + target.length}) are outside tensor '${name}' (${t.byteLength} bytes)`,
      )
    }
    await this.readAt(t, target, t.offset + byteOffset, target.length, `tensor '${name}'`)
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
    for (const file of this.files) await file.handle.close()
  }
}
