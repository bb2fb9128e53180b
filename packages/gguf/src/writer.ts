import { createHash, type Hash, randomBytes } from 'node:crypto'
import { type FileHandle, mkdir, open, rename, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { FileAccessError, InvalidArgumentError, isMeshError } from '@meshnet/core'
import { type GGMLTypeName, ggmlTypeInfo } from './ggml-types.ts'
import { alignUp } from './header.ts'
import {
  GGML_MAX_DIMS,
  GGML_MAX_NAME,
  GGUF_ALIGNMENT_KEY,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_VALUE_TYPE,
  type GGUFScalarTypeName,
  type GGUFValueInput,
} from './metadata.ts'

/** One tensor to write. */
export interface GGUFTensorInput {
  name: string
  /** Dimensions in ggml order (`dims[0]` is the row length). */
  dims: readonly number[]
  type: number | GGMLTypeName
  /**
   * The tensor's bytes, or a function the writer calls when it reaches this tensor, returning the
   * bytes in order as chunks of any size. The writer is done with a chunk before it asks for the
   * next, so a source may reuse one buffer.
   */
  data: Uint8Array | (() => Iterable<Uint8Array> | AsyncIterable<Uint8Array>)
}

export interface WriteGGUFOptions {
  /** Key/value pairs in the order to write them (a reader's `metadata` map can be passed back). */
  metadata?: ReadonlyMap<string, GGUFValueInput> | Readonly<Record<string, GGUFValueInput>>
  tensors?: readonly GGUFTensorInput[]
  /**
   * Data alignment; written as `general.alignment` when not 32. Taken from the metadata when it has
   * that key. Default 32.
   */
  alignment?: number
  /** GGUF version to write (2 and 3 differ only in big-endian support). Default 3. */
  version?: 2 | 3
  /** File mode of the new file. Default 0o644. */
  mode?: number
  /** Stops the write between chunks; the partial file is removed. */
  signal?: AbortSignal
  /** Also compute the SHA-256 of the file as it is written. */
  sha256?: boolean
}

export interface WriteGGUFResult {
  path: string
  /** Size of the written file. */
  bytes: number
  /** Absolute offset of the tensor data section. */
  dataOffset: number
  alignment: number
  /** Hex SHA-256 of the file, when asked for. */
  sha256?: string
}

const encoder = new TextEncoder()

/** A growable little-endian byte buffer for the header. */
class HeaderBytes {
  buf = new Uint8Array(1 << 16)
  view = new DataView(this.buf.buffer)
  length = 0

  /** Makes room for `n` bytes and returns their offset; may replace `buf` and `view`. */
  private reserve(n: number): number {
    const at = this.length
    if (at + n > this.buf.length) {
      let size = this.buf.length * 2
      while (size < at + n) size *= 2
      const next = new Uint8Array(size)
      next.set(this.buf.subarray(0, at))
      this.buf = next
      this.view = new DataView(next.buffer)
    }
    this.length += n
    return at
  }

  u8(v: number): void {
    const at = this.reserve(1)
    this.view.setUint8(at, v)
  }
  i8(v: number): void {
    const at = this.reserve(1)
    this.view.setInt8(at, v)
  }
  u16(v: number): void {
    const at = this.reserve(2)
    this.view.setUint16(at, v, true)
  }
  i16(v: number): void {
    const at = this.reserve(2)
    this.view.setInt16(at, v, true)
  }
  u32(v: number): void {
    const at = this.reserve(4)
    this.view.setUint32(at, v, true)
  }
  i32(v: number): void {
    const at = this.reserve(4)
    this.view.setInt32(at, v, true)
  }
  f32(v: number): void {
    const at = this.reserve(4)
    this.view.setFloat32(at, v, true)
  }
  f64(v: number): void {
    const at = this.reserve(8)
    this.view.setFloat64(at, v, true)
  }
  u64(v: bigint): void {
    const at = this.reserve(8)
    this.view.setBigUint64(at, v, true)
  }
  i64(v: bigint): void {
    const at = this.reserve(8)
    this.view.setBigInt64(at, v, true)
  }
  string(s: string): void {
    const bytes = encoder.encode(s)
    this.u64(BigInt(bytes.length))
    const at = this.reserve(bytes.length)
    this.buf.set(bytes, at)
  }
}

const INT_RANGE: Partial<Record<GGUFScalarTypeName, [number, number]>> = {
  uint8: [0, 0xff],
  int8: [-0x80, 0x7f],
  uint16: [0, 0xffff],
  int16: [-0x8000, 0x7fff],
  uint32: [0, 0xffffffff],
  int32: [-0x80000000, 0x7fffffff],
}
const BIG_RANGE: Partial<Record<GGUFScalarTypeName, [bigint, bigint]>> = {
  uint64: [0n, 0xffffffffffffffffn],
  int64: [-0x8000000000000000n, 0x7fffffffffffffffn],
}

function badValue(key: string, problem: string): never {
  throw new InvalidArgumentError(`metadata '${key}': ${problem}`)
}

function writeScalar(out: HeaderBytes, type: GGUFScalarTypeName, v: unknown, key: string): void {
  const range = INT_RANGE[type]
  if (range !== undefined) {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < range[0] || v > range[1]) {
      badValue(key, `${String(v)} is not a ${type}`)
    }
  }
  const big = BIG_RANGE[type]
  if (big !== undefined && (typeof v !== 'bigint' || v < big[0] || v > big[1])) {
    badValue(key, `${String(v)} is not a ${type} (give a bigint)`)
  }
  switch (type) {
    case 'uint8':
      out.u8(v as number)
      return
    case 'int8':
      out.i8(v as number)
      return
    case 'uint16':
      out.u16(v as number)
      return
    case 'int16':
      out.i16(v as number)
      return
    case 'uint32':
      out.u32(v as number)
      return
    case 'int32':
      out.i32(v as number)
      return
    case 'uint64':
      out.u64(v as bigint)
      return
    case 'int64':
      out.i64(v as bigint)
      return
    case 'float32':
    case 'float64':
      if (typeof v !== 'number') badValue(key, `${String(v)} is not a number`)
      if (type === 'float32') out.f32(v)
      else out.f64(v)
      return
    case 'bool':
      if (typeof v !== 'boolean') badValue(key, `${String(v)} is not a boolean`)
      out.u8(v ? 1 : 0)
      return
    case 'string':
      if (typeof v !== 'string') badValue(key, `${String(v)} is not a string`)
      out.string(v)
      return
  }
}

function writeValue(out: HeaderBytes, key: string, value: GGUFValueInput): void {
  if (value === null || typeof value !== 'object' || !Object.hasOwn(GGUF_VALUE_TYPE, value.type)) {
    badValue(key, `unknown value type ${JSON.stringify((value as { type?: unknown } | null)?.type)}`)
  }
  out.u32(GGUF_VALUE_TYPE[value.type])
  if (value.type !== 'array') {
    writeScalar(out, value.type, value.value, key)
    return
  }
  const itemType = value.itemType
  if (!Object.hasOwn(GGUF_VALUE_TYPE, itemType) || itemType === ('array' as string)) {
    badValue(key, `arrays of ${String(itemType)} are not supported`)
  }
  out.u32(GGUF_VALUE_TYPE[itemType])
  const items = value.value as ArrayLike<unknown>
  out.u64(BigInt(items.length))
  for (let i = 0; i < items.length; i++) writeScalar(out, itemType, items[i], `${key}[${i}]`)
}

interface PlannedTensor {
  input: GGUFTensorInput
  byteLength: number
  relativeOffset: number
}

function planTensors(tensors: readonly GGUFTensorInput[], alignment: number): PlannedTensor[] {
  const seen = new Set<string>()
  let offset = 0
  return tensors.map((t) => {
    const nameBytes = typeof t.name === 'string' ? Buffer.byteLength(t.name) : 0
    if (nameBytes === 0 || nameBytes >= GGML_MAX_NAME) {
      throw new InvalidArgumentError(
        `tensor name ${JSON.stringify(t.name)} must be 1 to ${GGML_MAX_NAME - 1} bytes (ggml's limit)`,
      )
    }
    if (seen.has(t.name)) throw new InvalidArgumentError(`tensor '${t.name}' is listed twice`)
    seen.add(t.name)
    if (t.dims.length > GGML_MAX_DIMS || t.dims.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      throw new InvalidArgumentError(
        `tensor '${t.name}' has dims [${t.dims.join(', ')}]; give 0 to ${GGML_MAX_DIMS} non-negative integers`,
      )
    }
    const info = ggmlTypeInfo(t.type)
    const rowLength = t.dims[0] ?? 1
    if (rowLength % info.blockSize !== 0) {
      throw new InvalidArgumentError(
        `tensor '${t.name}' of type ${info.name} has rows of ${rowLength} elements, not a multiple of its block size ${info.blockSize}`,
      )
    }
    const rows = t.dims.slice(1).reduce((a, b) => a * b, 1)
    const byteLength = (rowLength / info.blockSize) * info.typeSize * rows
    if (!Number.isSafeInteger(byteLength)) throw new InvalidArgumentError(`tensor '${t.name}' is too large`)
    const planned = { input: t, byteLength, relativeOffset: offset }
    offset += alignUp(byteLength, alignment)
    return planned
  })
}

/** Sequential writes through a 4 MiB buffer; large chunks go straight to the file. */
class FileSink {
  private readonly handle: FileHandle
  private readonly buf = new Uint8Array(4 * 1024 * 1024)
  private used = 0
  private readonly hash: Hash | undefined
  /** Bytes accepted so far (written or buffered). */
  written = 0

  constructor(handle: FileHandle, hash: Hash | undefined) {
    this.handle = handle
    this.hash = hash
  }

  async write(chunk: Uint8Array): Promise<void> {
    this.written += chunk.length
    if (chunk.length >= this.buf.length / 4) {
      await this.flush()
      await this.writeFully(chunk)
      return
    }
    if (this.used + chunk.length > this.buf.length) await this.flush()
    this.buf.set(chunk, this.used)
    this.used += chunk.length
  }

  async zeros(n: number): Promise<void> {
    if (n > 0) await this.write(new Uint8Array(n))
  }

  async flush(): Promise<void> {
    if (this.used === 0) return
    await this.writeFully(this.buf.subarray(0, this.used))
    this.used = 0
  }

  private async writeFully(bytes: Uint8Array): Promise<void> {
    this.hash?.update(bytes)
    let done = 0
    while (done < bytes.length) {
      const { bytesWritten } = await this.handle.write(bytes, done, bytes.length - done)
      done += bytesWritten
    }
  }
}

/**
 * Writes a GGUF file atomically: metadata, tensor infos and aligned tensor data go to a temporary
 * file next to `path`, which is flushed and renamed over `path`. Tensor data is streamed tensor by
 * tensor (and chunk by chunk when a tensor's `data` is a function), so a model larger than memory
 * can be written.
 */
export async function writeGGUF(path: string, options: WriteGGUFOptions): Promise<WriteGGUFResult> {
  const version = options.version ?? 3
  if (version !== 2 && version !== 3)
    throw new InvalidArgumentError(`GGUF version ${version} cannot be written`)
  const entries: Array<[string, GGUFValueInput]> =
    options.metadata === undefined
      ? []
      : options.metadata instanceof Map
        ? [...(options.metadata as ReadonlyMap<string, GGUFValueInput>)]
        : Object.entries(options.metadata as Record<string, GGUFValueInput>)

  let alignment = options.alignment ?? GGUF_DEFAULT_ALIGNMENT
  const stored = entries.find(([k]) => k === GGUF_ALIGNMENT_KEY)?.[1]
  if (stored !== undefined) {
    if (stored.type !== 'uint32') throw new InvalidArgumentError(`${GGUF_ALIGNMENT_KEY} must be a uint32`)
    if (options.alignment !== undefined && options.alignment !== stored.value) {
      throw new InvalidArgumentError(
        `alignment ${options.alignment} disagrees with ${GGUF_ALIGNMENT_KEY} = ${stored.value} in the metadata`,
      )
    }
    alignment = stored.value
  } else if (alignment !== GGUF_DEFAULT_ALIGNMENT) {
    entries.push([GGUF_ALIGNMENT_KEY, { type: 'uint32', value: alignment }])
  }
  if (
    !Number.isInteger(alignment) ||
    alignment <= 0 ||
    alignment > 0x80000000 ||
    (alignment & (alignment - 1)) !== 0
  ) {
    throw new InvalidArgumentError(`alignment ${alignment} is not a power of 2`)
  }

  const tensors = planTensors(options.tensors ?? [], alignment)
  const header = new HeaderBytes()
  header.u32(0x46554747) // "GGUF"
  header.u32(version)
  header.u64(BigInt(tensors.length))
  header.u64(BigInt(entries.length))
  const keys = new Set<string>()
  for (const [key, value] of entries) {
    if (key.length === 0) throw new InvalidArgumentError('metadata keys must not be empty')
    if (keys.has(key)) throw new InvalidArgumentError(`metadata key '${key}' is given twice`)
    keys.add(key)
    header.string(key)
    writeValue(header, key, value)
  }
  for (const t of tensors) {
    header.string(t.input.name)
    header.u32(t.input.dims.length)
    for (const d of t.input.dims) header.u64(BigInt(d))
    header.u32(ggmlTypeInfo(t.input.type).type)
    header.u64(BigInt(t.relativeOffset))
  }
  const dataOffset = alignUp(header.length, alignment)

  const dir = dirname(path)
  await mkdir(dir, { recursive: true })
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`)
  let handle: FileHandle | undefined
  try {
    handle = await open(tmp, 'wx', options.mode ?? 0o644)
    const hash = options.sha256 === true ? createHash('sha256') : undefined
    const sink = new FileSink(handle, hash)
    await sink.write(header.buf.subarray(0, header.length))
    await sink.zeros(dataOffset - header.length)
    for (const t of tensors) {
      options.signal?.throwIfAborted()
      const data = t.input.data
      let produced = 0
      if (data instanceof Uint8Array) {
        produced = data.length
        if (produced === t.byteLength) await sink.write(data)
      } else {
        for await (const chunk of data()) {
          options.signal?.throwIfAborted()
          produced += chunk.length
          if (produced > t.byteLength) break
          await sink.write(chunk)
        }
      }
      if (produced !== t.byteLength) {
        throw new InvalidArgumentError(
          `tensor '${t.input.name}' gave ${produced > t.byteLength ? 'more than ' : ''}${produced} bytes of data, its shape and type need ${t.byteLength}`,
        )
      }
      await sink.zeros(alignUp(t.byteLength, alignment) - t.byteLength)
    }
    await sink.flush()
    await handle.sync()
    await handle.close()
    handle = undefined
    await rename(tmp, path)
    return {
      path,
      bytes: sink.written,
      dataOffset,
      alignment,
      ...(hash ? { sha256: hash.digest('hex') } : {}),
    }
  } catch (err) {
    await handle?.close().catch(() => {})
    await rm(tmp, { force: true })
    if (isMeshError(err) || (options.signal?.aborted === true && err === options.signal.reason)) throw err
    throw new FileAccessError(`could not write ${path}: ${(err as Error).message}`, { cause: err })
  }
}
