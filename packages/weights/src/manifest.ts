import { createHash } from 'node:crypto'
import { open } from 'node:fs/promises'
import { DEFAULT_GGUF_LIMITS, type GGUFHeader, type HeaderSource, readGGUFHeader } from '@meshnet/gguf'
import { z } from 'zod'
import { ManifestError } from './errors.ts'

// A model as content. The manifest lists the pieces of a GGUF file a member may need: the header
// (magic, metadata, vocabulary, tensor table: everything before the tensor data) and every tensor,
// each at its offset, cut into fixed-size chunks with a SHA-256 each. The model id is the SHA-256
// of the manifest's canonical bytes, so an id pins every byte a member can load: two members that
// agree on the id agree on the model, with no whole-file hash, and a chunk from anyone is checked
// against its hash before it is written. Alignment padding between tensors is not a piece: nothing
// reads it (a partial file has zeros there, which is what GGUF writers put).

/** Manifest format tag; a new layout gets a new tag (and so new ids). */
export const MANIFEST_FORMAT = 'meshnet-model/1'
/** Default chunk size: 4 MiB, 32 bytes of hash per 4 MiB (320 KB of hashes for a 40 GB model). */
export const DEFAULT_CHUNK_BYTES = 4 * 2 ** 20
/** Largest manifest accepted from anyone (a 40 GB model at 4 MiB chunks is about 1 MB). */
export const MAX_MANIFEST_BYTES = 32 * 2 ** 20
/** Chunk sizes allowed: 64 KiB to 16 MiB, a power of two. */
const MIN_CHUNK_BYTES = 2 ** 16
export const MAX_CHUNK_BYTES = 2 ** 24
/** The header piece's name (no tensor may be called this: GGUF tensor names have no angle brackets). */
export const HEADER_PIECE = '<header>'

export interface ManifestPiece {
  /** `<header>`, or a tensor's name. */
  name: string
  /** File offset of the first byte. */
  offset: number
  bytes: number
  /** Hex SHA-256 of each chunk of `chunkBytes` (the last may be shorter). */
  chunks: string[]
}

export interface ModelManifest {
  format: typeof MANIFEST_FORMAT
  fileBytes: number
  chunkBytes: number
  /** The header, then every tensor in file order. */
  pieces: ManifestPiece[]
}

const hex64 = z.string().regex(/^[0-9a-f]{64}$/)
const manifestSchema = z.strictObject({
  format: z.literal(MANIFEST_FORMAT),
  fileBytes: z
    .number()
    .int()
    .positive()
    .max(2 ** 50),
  chunkBytes: z
    .number()
    .int()
    .min(MIN_CHUNK_BYTES)
    .max(MAX_CHUNK_BYTES)
    .refine((n) => (n & (n - 1)) === 0, 'a power of two'),
  pieces: z
    .array(
      z.strictObject({
        name: z.string().min(1).max(256),
        offset: z.number().int().nonnegative(),
        bytes: z.number().int().nonnegative(),
        chunks: z.array(hex64),
      }),
    )
    .min(1)
    .max(1_000_000),
})

/** A manifest and what is derived from it: the id and the flat table of chunks. */
export interface Manifest {
  readonly id: string
  readonly manifest: ModelManifest
  /** Its canonical bytes (what `id` hashes, and what peers send). */
  readonly bytes: Uint8Array
  readonly chunks: ChunkTable
}

/** Every chunk of a manifest, numbered in file order (the header's first). */
export interface ChunkTable {
  readonly count: number
  readonly offset: Float64Array
  readonly length: Uint32Array
  /** Index into `manifest.pieces` of each chunk. */
  readonly piece: Uint32Array
  readonly hash: readonly string[]
  /** First chunk index of each piece. */
  readonly firstOfPiece: Uint32Array
}

/** The canonical bytes of a manifest: its JSON with keys in schema order and no spaces. */
export function encodeManifest(manifest: ModelManifest): Uint8Array {
  const canonical: ModelManifest = {
    format: manifest.format,
    fileBytes: manifest.fileBytes,
    chunkBytes: manifest.chunkBytes,
    pieces: manifest.pieces.map((p) => ({
      name: p.name,
      offset: p.offset,
      bytes: p.bytes,
      chunks: p.chunks,
    })),
  }
  return new TextEncoder().encode(JSON.stringify(canonical))
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

/** A manifest built here (from a file or a URL): checked, and given its id. */
export function manifestOf(manifest: ModelManifest): Manifest {
  const bytes = encodeManifest(manifest)
  return decodeManifest(bytes)
}

/**
 * Parses and checks manifest bytes from anywhere (disk, a peer): the schema, pieces in order inside
 * the file, chunk counts that match piece sizes, canonical encoding; and, given `expectedId`, that
 * the bytes hash to it. ManifestError names the first problem.
 */
export function decodeManifest(bytes: Uint8Array, expectedId?: string): Manifest {
  if (bytes.length > MAX_MANIFEST_BYTES) {
    throw new ManifestError(`manifest of ${bytes.length} bytes is over the ${MAX_MANIFEST_BYTES}-byte limit`)
  }
  const id = sha256Hex(bytes)
  if (expectedId !== undefined && id !== expectedId) {
    throw new ManifestError(`manifest hashes to ${id}, not to the model id ${expectedId}`, {
      hint: 'the sender holds another model under that id, or the bytes were altered; ask another peer',
    })
  }
  let json: unknown
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes))
  } catch (err) {
    throw new ManifestError(`manifest is not JSON: ${(err as Error).message}`)
  }
  const parsed = manifestSchema.safeParse(json)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!
    throw new ManifestError(`manifest: ${issue.path.join('.') || 'root'}: ${issue.message}`)
  }
  const manifest = parsed.data as ModelManifest
  if (sha256Hex(encodeManifest(manifest)) !== id) {
    throw new ManifestError('manifest is not in canonical form (key order or spacing differs)')
  }
  if (manifest.pieces[0]!.name !== HEADER_PIECE || manifest.pieces[0]!.offset !== 0) {
    throw new ManifestError(`manifest: the first piece must be ${HEADER_PIECE} at offset 0`)
  }
  let end = 0
  let count = 0
  const names = new Set<string>()
  for (const [i, piece] of manifest.pieces.entries()) {
    if (i > 0 && piece.name === HEADER_PIECE) throw new ManifestError(`manifest: a second ${HEADER_PIECE}`)
    if (names.has(piece.name)) throw new ManifestError(`manifest: piece '${piece.name}' twice`)
    names.add(piece.name)
    if (piece.offset < end) throw new ManifestError(`manifest: piece '${piece.name}' overlaps the one before`)
    end = piece.offset + piece.bytes
    if (end > manifest.fileBytes) {
      throw new ManifestError(
        `manifest: piece '${piece.name}' ends at ${end}, past the file's ${manifest.fileBytes} bytes`,
      )
    }
    const want = Math.ceil(piece.bytes / manifest.chunkBytes)
    if (piece.chunks.length !== want) {
      throw new ManifestError(
        `manifest: piece '${piece.name}' of ${piece.bytes} bytes has ${piece.chunks.length} chunk hashes, not ${want}`,
      )
    }
    count += want
  }
  return { id, manifest, bytes, chunks: chunkTable(manifest, count) }
}

function chunkTable(manifest: ModelManifest, count: number): ChunkTable {
  const offset = new Float64Array(count)
  const length = new Uint32Array(count)
  const piece = new Uint32Array(count)
  const firstOfPiece = new Uint32Array(manifest.pieces.length)
  const hash: string[] = []
  let n = 0
  for (const [p, info] of manifest.pieces.entries()) {
    firstOfPiece[p] = n
    for (const [c, h] of info.chunks.entries()) {
      offset[n] = info.offset + c * manifest.chunkBytes
      length[n] = Math.min(manifest.chunkBytes, info.bytes - c * manifest.chunkBytes)
      piece[n] = p
      hash.push(h)
      n++
    }
  }
  return { count, offset, length, piece, hash, firstOfPiece }
}

export interface BuildManifestOptions {
  chunkBytes?: number
  signal?: AbortSignal | undefined
  /** Hears the bytes hashed so far. */
  onProgress?: ((hashedBytes: number, totalBytes: number) => void) | undefined
}

/** Reads a local GGUF file once and builds its manifest (hashing every piece's chunks). */
export async function buildManifest(path: string, options: BuildManifestOptions = {}): Promise<Manifest> {
  const handle = await open(path, 'r')
  try {
    const { size } = await handle.stat()
    const header = await readGGUFHeader(handle, path, size, DEFAULT_GGUF_LIMITS)
    return await hashPieces(piecesOf(header), size, (buf, offset) => readFully(handle, buf, offset), options)
  } finally {
    await handle.close()
  }
}

/** The pieces (without hashes) of a GGUF file: its header, then its tensors in file order. */
export function piecesOf(header: GGUFHeader): Array<Omit<ManifestPiece, 'chunks'>> {
  const tensors = [...header.tensors].sort((a, b) => a.offset - b.offset)
  return [
    { name: HEADER_PIECE, offset: 0, bytes: header.dataOffset },
    ...tensors.map((t) => ({ name: t.name, offset: t.offset, bytes: t.byteLength })),
  ]
}

/**
 * Hashes each piece's chunks with `read` (positioned reads into a buffer), in file order, and
 * returns the manifest (what `buildManifest` does for a file).
 */
export async function hashPieces(
  pieces: ReadonlyArray<Omit<ManifestPiece, 'chunks'>>,
  fileBytes: number,
  read: (target: Uint8Array, offset: number) => Promise<void>,
  options: BuildManifestOptions = {},
): Promise<Manifest> {
  const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES
  const total = pieces.reduce((n, p) => n + p.bytes, 0)
  const buffer = new Uint8Array(chunkBytes)
  let hashed = 0
  const out: ManifestPiece[] = []
  for (const piece of pieces) {
    const chunks: string[] = []
    for (let at = 0; at < piece.bytes; at += chunkBytes) {
      options.signal?.throwIfAborted()
      const view = buffer.subarray(0, Math.min(chunkBytes, piece.bytes - at))
      await read(view, piece.offset + at)
      chunks.push(sha256Hex(view))
      hashed += view.length
      options.onProgress?.(hashed, total)
    }
    out.push({ ...piece, chunks })
  }
  return manifestOf({ format: MANIFEST_FORMAT, fileBytes, chunkBytes, pieces: out })
}

export async function readFully(handle: HeaderSource, target: Uint8Array, offset: number): Promise<void> {
  let got = 0
  while (got < target.length) {
    const { bytesRead } = await handle.read(target, got, target.length - got, offset + got)
    if (bytesRead === 0) throw new ManifestError(`unexpected end of file at ${offset + got}`)
    got += bytesRead
  }
}

/** What part of a model a member loads: mirrors the engine's `ShardSpec` (layers, embedding, head). */
export interface PieceSelection {
  layers: readonly [number, number]
  /** First member: the token embedding. */
  embed: boolean
  /** Last member: the output norm and projection (the embedding when the output is tied). */
  head: boolean
  /** Tensor parallel: a vocabulary range of the output projection. */
  vocab?: readonly [number, number] | undefined
}

const LAYER = /^blk\.(\d+)\./

/**
 * The pieces a member needs for its part of the model: the header, its layers' tensors, the
 * embedding when first, the output norm and projection when last (or with a vocabulary range), and
 * every other tensor outside the layers (small: `rope_freqs` and the like).
 */
export function piecesFor(manifest: ModelManifest, selection: PieceSelection): number[] {
  const names = new Set(manifest.pieces.map((p) => p.name))
  const tied = !names.has('output.weight')
  const head = selection.head || selection.vocab !== undefined
  const wanted: number[] = []
  for (const [i, piece] of manifest.pieces.entries()) {
    const layer = LAYER.exec(piece.name)
    let keep: boolean
    if (layer !== null) {
      const n = Number(layer[1])
      keep = n >= selection.layers[0] && n < selection.layers[1]
    } else if (piece.name.startsWith('token_embd.')) keep = selection.embed || (head && tied)
    else if (piece.name.startsWith('output.') || piece.name.startsWith('output_norm.')) keep = head
    else keep = true
    if (keep) wanted.push(i)
  }
  return wanted
}

/** The chunk indices of the pieces `piecesFor` picks. */
export function chunksFor(model: Manifest, selection: PieceSelection): number[] {
  const out: number[] = []
  for (const p of piecesFor(model.manifest, selection)) {
    const first = model.chunks.firstOfPiece[p]!
    for (let c = 0; c < model.manifest.pieces[p]!.chunks.length; c++) out.push(first + c)
  }
  return out
}

/** The chunk indices of the header piece. */
export function headerChunks(model: Manifest): number[] {
  return Array.from({ length: model.manifest.pieces[0]!.chunks.length }, (_, i) => i)
}

/** Layers of the model (1 + the highest `blk.N`), from its piece names. */
export function layerCount(manifest: ModelManifest): number {
  let n = 0
  for (const piece of manifest.pieces) {
    const layer = LAYER.exec(piece.name)
    if (layer !== null) n = Math.max(n, Number(layer[1]) + 1)
  }
  return n
}
