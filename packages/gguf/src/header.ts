import type { FileHandle } from 'node:fs/promises'
import { GGUFFormatError } from './errors.ts'
import { findGGMLType, type GGMLType, type GGMLTypeName } from './ggml-types.ts'
import {
  FIXED_SIZE,
  GGML_MAX_DIMS,
  GGML_MAX_NAME,
  GGUF_ALIGNMENT_KEY,
  GGUF_DEFAULT_ALIGNMENT,
  type GGUFScalarTypeName,
  type GGUFValue,
  valueTypeName,
} from './metadata.ts'

/** Caps that keep a hostile header from making the reader allocate without bound. */
export interface GGUFLimits {
  /** Bytes from the start of the file to the end of the tensor infos. Default 256 MiB. */
  maxHeaderBytes: number
  /** Bytes in one string (key, value, tensor name, array item). Default 16 MiB. */
  maxStringLength: number
  /** Items in one metadata array. Default 16 Mi. */
  maxArrayLength: number
  /** Metadata key/value pairs. Default 1 Mi. */
  maxMetadataEntries: number
  /** Tensors. Default 1 Mi. */
  maxTensors: number
}

export const DEFAULT_GGUF_LIMITS: Readonly<GGUFLimits> = Object.freeze({
  maxHeaderBytes: 256 * 1024 * 1024,
  maxStringLength: 16 * 1024 * 1024,
  maxArrayLength: 16 * 1024 * 1024,
  maxMetadataEntries: 1024 * 1024,
  maxTensors: 1024 * 1024,
})

/** One tensor as described by the file. Offsets and lengths are in bytes. */
export interface GGUFTensorInfo {
  name: string
  /** Dimensions in ggml order: `dims[0]` (ne[0]) varies fastest and is the row length. */
  dims: readonly number[]
  type: GGMLType
  typeName: GGMLTypeName
  /** Absolute file offset of the first byte of data. */
  offset: number
  /** Offset relative to the start of the data section, as stored in the file. */
  relativeOffset: number
  byteLength: number
  elements: number
  /** Number of rows: the product of `dims[1..]` (1 for a vector). */
  rows: number
  /** Bytes per row (`dims[0]` elements). */
  rowByteLength: number
}

export interface GGUFHeader {
  version: 2 | 3
  metadata: Map<string, GGUFValue>
  /** The file offset of each key/value pair, for error messages. */
  keyOffsets: Map<string, number>
  tensors: GGUFTensorInfo[]
  alignment: number
  /** Absolute offset of the (aligned) tensor data section. */
  dataOffset: number
}

const WINDOW = 1 << 20
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER)
const decoder = new TextDecoder('utf-8')

/** Buffered positioned reads over the header; only the header region is ever held in memory. */
class Cursor {
  pos = 0
  private buf = new Uint8Array(0)
  private view = new DataView(this.buf.buffer)
  private start = 0

  private readonly handle: HeaderSource
  readonly path: string
  readonly fileSize: number
  readonly limits: GGUFLimits

  constructor(handle: HeaderSource, path: string, fileSize: number, limits: GGUFLimits) {
    this.handle = handle
    this.path = path
    this.fileSize = fileSize
    this.limits = limits
  }

  fail(offset: number, problem: string, hint?: string): never {
    throw new GGUFFormatError(`${this.path}: at byte ${offset}: ${problem}`, {
      details: { file: this.path, offset },
      hint: hint ?? 'the file is not a valid GGUF model or is damaged; re-create or re-download it',
    })
  }

  get remaining(): number {
    return this.fileSize - this.pos
  }

  /** Makes `n` bytes at `pos` available, failing with a message about `what` if the file ends. */
  async need(n: number, what: string): Promise<void> {
    const end = this.pos + n
    if (end > this.fileSize) {
      this.fail(
        this.pos,
        `${what} needs ${n} bytes but the file ends at byte ${this.fileSize}`,
        'the file is truncated; re-create or re-download it',
      )
    }
    if (end > this.limits.maxHeaderBytes) {
      this.fail(
        this.pos,
        `the header is larger than the ${this.limits.maxHeaderBytes}-byte limit while reading ${what}`,
        'raise limits.maxHeaderBytes if this file is trusted',
      )
    }
    if (this.pos >= this.start && end <= this.start + this.buf.length) return
    const size = Math.max(n, Math.min(WINDOW, this.fileSize - this.pos))
    const buf = new Uint8Array(size)
    let got = 0
    while (got < size) {
      const { bytesRead } = await this.handle.read(buf, got, size - got, this.pos + got)
      if (bytesRead === 0) {
        this.fail(this.pos + got, `${what}: the file ended early (did it change while being read?)`)
      }
      got += bytesRead
    }
    this.buf = buf
    this.view = new DataView(buf.buffer)
    this.start = this.pos
  }

  private at(): number {
    return this.pos - this.start
  }

  async u32(what: string): Promise<number> {
    if (!this.has(4)) await this.need(4, what)
    const v = this.view.getUint32(this.at(), true)
    this.pos += 4
    return v
  }

  async u64(what: string): Promise<bigint> {
    if (!this.has(8)) await this.need(8, what)
    const v = this.view.getBigUint64(this.at(), true)
    this.pos += 8
    return v
  }

  /** A uint64 that must fit a JS number below `max`. */
  async count(what: string, max: number): Promise<number> {
    const at = this.pos
    const v = await this.u64(what)
    if (v > BigInt(max)) this.fail(at, `${what} is ${v}, more than the limit of ${max}`)
    return Number(v)
  }

  has(n: number): boolean {
    return this.pos >= this.start && this.pos + n <= this.start + this.buf.length
  }

  async string(what: string): Promise<string> {
    const at = this.pos
    const len = await this.u64(`the length of ${what}`)
    if (len > BigInt(this.limits.maxStringLength)) {
      this.fail(at, `${what} has length ${len}, more than the ${this.limits.maxStringLength}-byte limit`)
    }
    const n = Number(len)
    if (n > this.remaining) {
      this.fail(at, `${what} has length ${n}, past the end of the file (${this.remaining} bytes remain)`)
    }
    if (!this.has(n)) await this.need(n, what)
    const s = decodeUtf8(this.buf, this.at(), n)
    this.pos += n
    return s
  }

  /** `n` raw bytes copied out of the file. */
  async bytes(n: number, what: string): Promise<Uint8Array> {
    if (!this.has(n)) await this.need(n, what)
    const out = this.buf.slice(this.at(), this.at() + n)
    this.pos += n
    return out
  }

  async scalar(type: GGUFScalarTypeName, what: string): Promise<GGUFValue> {
    if (type === 'string') return { type, value: await this.string(what) }
    const size = FIXED_SIZE[type]
    if (!this.has(size)) await this.need(size, what)
    const v = this.view
    const o = this.at()
    this.pos += size
    switch (type) {
      case 'uint8':
        return { type, value: v.getUint8(o) }
      case 'int8':
        return { type, value: v.getInt8(o) }
      case 'uint16':
        return { type, value: v.getUint16(o, true) }
      case 'int16':
        return { type, value: v.getInt16(o, true) }
      case 'uint32':
        return { type, value: v.getUint32(o, true) }
      case 'int32':
        return { type, value: v.getInt32(o, true) }
      case 'float32':
        return { type, value: v.getFloat32(o, true) }
      case 'float64':
        return { type, value: v.getFloat64(o, true) }
      case 'uint64':
        return { type, value: v.getBigUint64(o, true) }
      case 'int64':
        return { type, value: v.getBigInt64(o, true) }
      case 'bool': {
        const b = v.getUint8(o)
        if (b > 1) this.fail(o + this.start, `${what} is a bool stored as ${b}, not 0 or 1`)
        return { type, value: b === 1 }
      }
    }
  }
}

function decodeUtf8(buf: Uint8Array, start: number, n: number): string {
  // Most keys, names and tokens are ASCII; skip TextDecoder for those.
  if (n <= 64) {
    let ascii = true
    for (let i = start; i < start + n; i++) {
      if (buf[i]! >= 0x80) {
        ascii = false
        break
      }
    }
    if (ascii) return String.fromCharCode(...buf.subarray(start, start + n))
  }
  return decoder.decode(buf.subarray(start, start + n))
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1

function numericArray(type: Exclude<GGUFScalarTypeName, 'string' | 'bool'>, bytes: Uint8Array, n: number) {
  // `bytes` is a fresh copy at offset 0, so it is aligned for any element size.
  if (!LITTLE_ENDIAN) throw new Error('reading GGUF on a big-endian host is not supported')
  const b = bytes.buffer
  switch (type) {
    case 'uint8':
      return new Uint8Array(b, 0, n)
    case 'int8':
      return new Int8Array(b, 0, n)
    case 'uint16':
      return new Uint16Array(b, 0, n)
    case 'int16':
      return new Int16Array(b, 0, n)
    case 'uint32':
      return new Uint32Array(b, 0, n)
    case 'int32':
      return new Int32Array(b, 0, n)
    case 'float32':
      return new Float32Array(b, 0, n)
    case 'float64':
      return new Float64Array(b, 0, n)
    case 'uint64':
      return new BigUint64Array(b, 0, n)
    case 'int64':
      return new BigInt64Array(b, 0, n)
  }
}

async function readValue(cur: Cursor, typeId: number, typeAt: number, key: string): Promise<GGUFValue> {
  const type = valueTypeName(typeId)
  if (type === undefined) cur.fail(typeAt, `key '${key}' has unknown value type ${typeId}`)
  if (type !== 'array') return cur.scalar(type, `the value of '${key}'`)

  const itemAt = cur.pos
  const itemId = await cur.u32(`the item type of array '${key}'`)
  const itemType = valueTypeName(itemId)
  if (itemType === undefined) cur.fail(itemAt, `array '${key}' has unknown item type ${itemId}`)
  if (itemType === 'array') {
    cur.fail(itemAt, `array '${key}' holds arrays, which are not supported`, 'ggml does not load them either')
  }
  const lenAt = cur.pos
  const n = await cur.count(`the length of array '${key}'`, cur.limits.maxArrayLength)
  // Every item takes at least one byte (strings at least eight), so a count larger than what is
  // left of the file is a lie: refuse it before allocating anything.
  const minItem = itemType === 'string' ? 8 : FIXED_SIZE[itemType]
  if (n * minItem > cur.remaining) {
    cur.fail(lenAt, `array '${key}' claims ${n} ${itemType} items, past the end of the file`)
  }
  if (itemType === 'string') {
    const items: string[] = new Array(n)
    for (let i = 0; i < n; i++) items[i] = await cur.string(`item ${i} of array '${key}'`)
    return { type: 'array', itemType, value: items }
  }
  if (itemType === 'bool') {
    const raw = await cur.bytes(n, `array '${key}'`)
    const items: boolean[] = new Array(n)
    for (let i = 0; i < n; i++) {
      if (raw[i]! > 1) cur.fail(lenAt + 8 + i, `item ${i} of bool array '${key}' is ${raw[i]}, not 0 or 1`)
      items[i] = raw[i] === 1
    }
    return { type: 'array', itemType, value: items }
  }
  const raw = await cur.bytes(n * FIXED_SIZE[itemType], `array '${key}'`)
  return { type: 'array', itemType, value: numericArray(itemType, raw, n) } as GGUFValue
}

/**
 * Positioned reads of a GGUF file: a `FileHandle`, or anything else that answers them (the byte
 * ranges of a model served over HTTP, for example).
 */
export type HeaderSource = Pick<FileHandle, 'read'>

/** Reads and checks everything before the tensor data. */
export async function readHeader(
  handle: HeaderSource,
  path: string,
  fileSize: number,
  limits: GGUFLimits,
): Promise<GGUFHeader> {
  const cur: Cursor = new Cursor(handle, path, fileSize, limits)

  if (fileSize < 4) cur.fail(0, `the file has ${fileSize} bytes, too short for the GGUF magic`)
  const magic = await cur.bytes(4, 'the magic')
  if (magic[0] !== 0x47 || magic[1] !== 0x47 || magic[2] !== 0x55 || magic[3] !== 0x46) {
    const shown = Array.from(magic, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('')
    const hex = Array.from(magic, (b) => b.toString(16).padStart(2, '0')).join(' ')
    cur.fail(0, `bad magic "${shown}" (${hex}), expected "GGUF"`, 'this is not a GGUF file')
  }
  const version = await cur.u32('the version')
  if (version !== 2 && version !== 3) {
    // A big-endian file stores 3 as 00 00 00 03.
    const swapped =
      (((version & 0xff) << 24) |
        (((version >>> 8) & 0xff) << 16) |
        (((version >>> 16) & 0xff) << 8) |
        (version >>> 24)) >>>
      0
    if (version === 1) {
      cur.fail(4, 'unsupported GGUF version 1', 'convert the model to GGUF v3 with a current llama.cpp')
    }
    if (swapped === 2 || swapped === 3) {
      cur.fail(
        4,
        'this is a big-endian GGUF file, which is not supported',
        'use a little-endian build of the model',
      )
    }
    cur.fail(4, `unsupported GGUF version ${version} (supported: 2 and 3)`)
  }

  const tensorCount = await cur.count('the tensor count', limits.maxTensors)
  const kvCount = await cur.count('the metadata entry count', limits.maxMetadataEntries)
  // Each pair takes at least 13 bytes and each tensor info at least 24; refuse impossible counts.
  if (kvCount * 13 + tensorCount * 24 > cur.remaining) {
    cur.fail(
      8,
      `${tensorCount} tensors and ${kvCount} metadata entries cannot fit in a file of ${fileSize} bytes`,
    )
  }

  const metadata = new Map<string, GGUFValue>()
  const keyOffsets = new Map<string, number>()
  for (let i = 0; i < kvCount; i++) {
    const at = cur.pos
    const key = await cur.string(`key ${i}`)
    if (key.length === 0) cur.fail(at, `key ${i} is empty`)
    if (metadata.has(key)) cur.fail(at, `duplicate key '${key}' (first at byte ${keyOffsets.get(key)})`)
    const typeAt = cur.pos
    const typeId = await cur.u32(`the value type of '${key}'`)
    metadata.set(key, await readValue(cur, typeId, typeAt, key))
    keyOffsets.set(key, at)
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT
  const align = metadata.get(GGUF_ALIGNMENT_KEY)
  if (align !== undefined) {
    const at = keyOffsets.get(GGUF_ALIGNMENT_KEY)!
    if (align.type !== 'uint32') cur.fail(at, `${GGUF_ALIGNMENT_KEY} must be uint32, found ${align.type}`)
    if (align.value === 0 || (align.value & (align.value - 1)) !== 0) {
      cur.fail(at, `${GGUF_ALIGNMENT_KEY} is ${align.value}, not a power of 2`)
    }
    alignment = align.value
  }

  type Pending = Omit<GGUFTensorInfo, 'offset'> & { infoAt: number }
  const pending: Pending[] = []
  const names = new Map<string, number>()
  for (let i = 0; i < tensorCount; i++) {
    const at = cur.pos
    const name = await cur.string(`the name of tensor ${i}`)
    if (Buffer.byteLength(name) >= GGML_MAX_NAME) {
      cur.fail(
        at,
        `tensor name '${name.slice(0, 80)}' is ${Buffer.byteLength(name)} bytes, ggml allows at most ${GGML_MAX_NAME - 1}`,
      )
    }
    if (names.has(name)) cur.fail(at, `duplicate tensor name '${name}' (tensors ${names.get(name)} and ${i})`)
    names.set(name, i)
    const dimsAt = cur.pos
    const nDims = await cur.u32(`the dimension count of '${name}'`)
    if (nDims > GGML_MAX_DIMS)
      cur.fail(dimsAt, `tensor '${name}' has ${nDims} dimensions, ggml allows at most ${GGML_MAX_DIMS}`)
    const dims: number[] = []
    let elements = 1
    for (let d = 0; d < nDims; d++) {
      const dAt = cur.pos
      const ne = await cur.u64(`dimension ${d} of '${name}'`)
      if (ne > MAX_SAFE) cur.fail(dAt, `dimension ${d} of tensor '${name}' is ${ne}, too large`)
      dims.push(Number(ne))
      elements *= Number(ne)
      if (!Number.isSafeInteger(elements)) cur.fail(dAt, `tensor '${name}' has more than 2^53 elements`)
    }
    const typeAt = cur.pos
    const typeId = await cur.u32(`the type of '${name}'`)
    const info = findGGMLType(typeId)
    if (info === undefined) cur.fail(typeAt, `tensor '${name}' has unknown ggml type ${typeId}`)
    const rowLength = dims[0] ?? 1
    if (rowLength % info.blockSize !== 0) {
      cur.fail(
        typeAt,
        `tensor '${name}' of type ${info.name} has rows of ${rowLength} elements, not a multiple of its block size ${info.blockSize}`,
      )
    }
    const offAt = cur.pos
    const rel = await cur.u64(`the data offset of '${name}'`)
    if (rel > MAX_SAFE) cur.fail(offAt, `tensor '${name}' has data offset ${rel}, too large`)
    const rowByteLength = (rowLength / info.blockSize) * info.typeSize
    const rows = dims.slice(1).reduce((a, b) => a * b, 1)
    const byteLength = rowByteLength * rows
    if (!Number.isSafeInteger(byteLength)) cur.fail(dimsAt, `tensor '${name}' is larger than 2^53 bytes`)
    pending.push({
      name,
      dims,
      type: info.type,
      typeName: info.name,
      relativeOffset: Number(rel),
      byteLength,
      elements,
      rows,
      rowByteLength,
      infoAt: offAt,
    })
  }

  const dataOffset = alignUp(cur.pos, alignment)
  let expected = 0
  const tensors: GGUFTensorInfo[] = []
  for (const t of pending) {
    if (t.relativeOffset !== expected) {
      cur.fail(
        t.infoAt,
        `tensor '${t.name}' has data offset ${t.relativeOffset}, expected ${expected} (tensor data must follow in order, each aligned to ${alignment} bytes)`,
      )
    }
    const offset = dataOffset + t.relativeOffset
    if (offset + t.byteLength > fileSize) {
      cur.fail(
        offset,
        `the data of tensor '${t.name}' (${t.byteLength} bytes at byte ${offset}) runs past the end of the file (${fileSize} bytes)`,
        'the file is truncated; re-create or re-download it',
      )
    }
    const { infoAt: _, ...rest } = t
    tensors.push({ ...rest, offset })
    expected += alignUp(t.byteLength, alignment)
  }

  return { version, metadata, keyOffsets, tensors, alignment, dataOffset }
}

export function alignUp(n: number, alignment: number): number {
  const r = n % alignment
  return r === 0 ? n : n + alignment - r
}
