import type { GGMLTypeName } from './ggml-types.ts'
import { rowByteLength } from './ggml-types.ts'
import { fillTriangular, seededUint32 } from './prng.ts'
import { quantizeRow } from './quants.ts'

// How the generator fills a weight matrix: `tensorChunks` draws and quantizes every row (the
// `random` fill), `tiledChunks` assembles rows from a small pool of such rows (the `tiled` fill,
// disk-bound for multi-GB models). Both stream a chunk of rows at a time.

/** A tensor the generator writes: its name, ggml shape and type, and how its values are drawn. */
export interface TensorPlan {
  name: string
  dims: [number] | [number, number]
  type: GGMLTypeName
  /** Values are drawn with this mean and standard deviation. */
  mean: number
  std: number
}

const CHUNK_BYTES = 1 << 20

/** Streams one tensor's rows: values from its own PRNG stream, quantized a chunk of rows at a time. */
export function* tensorChunks(t: TensorPlan, seed: number): Generator<Uint8Array> {
  const next = seededUint32(seed, t.name)
  const n = t.dims[0]
  const rows = t.dims[1] ?? 1
  const rowBytes = rowByteLength(t.type, n)
  const rowsPerChunk = Math.max(1, Math.floor(CHUNK_BYTES / rowBytes))
  const values = new Float32Array(n)
  const chunk = new Uint8Array(rowsPerChunk * rowBytes)
  for (let r = 0; r < rows; r += rowsPerChunk) {
    const count = Math.min(rowsPerChunk, rows - r)
    for (let k = 0; k < count; k++) {
      fillTriangular(next, values, t.mean, t.std)
      quantizeRow(t.type, values, chunk.subarray(k * rowBytes, (k + 1) * rowBytes))
    }
    yield chunk.subarray(0, count * rowBytes)
  }
}

/** Rows in each pool of a `tiled` fill. */
export const TILE_POOL_ROWS = 64
/** Elements per tile: one K-quant super-block, a whole number of blocks of every type. */
const TILE_ELEMENTS = 256

/** A pool of quantized rows, cut into tiles: `tiles[p * perRow + s]` is tile `s` of pool row `p`. */
export interface TilePool {
  tiles: Uint8Array[]
  perRow: number
}

/**
 * The pool of a (type, row width, distribution): `TILE_POOL_ROWS` rows drawn and quantized as
 * `tensorChunks` does, from a stream of their own.
 */
export function tilePool(t: TensorPlan, seed: number): TilePool {
  const n = t.dims[0]
  const next = seededUint32(seed, `tile-pool\0${t.type}\0${n}\0${t.mean}\0${t.std}`)
  const rowBytes = rowByteLength(t.type, n)
  const bytes = new Uint8Array(TILE_POOL_ROWS * rowBytes)
  const values = new Float32Array(n)
  const perRow = Math.ceil(n / TILE_ELEMENTS)
  const tiles: Uint8Array[] = []
  for (let p = 0; p < TILE_POOL_ROWS; p++) {
    const row = bytes.subarray(p * rowBytes, (p + 1) * rowBytes)
    fillTriangular(next, values, t.mean, t.std)
    quantizeRow(t.type, values, row)
    for (let s = 0, at = 0; s < perRow; s++) {
      // Tiles are whole blocks: the width and TILE_ELEMENTS are both multiples of the block size.
      const length = rowByteLength(t.type, Math.min(TILE_ELEMENTS, n - s * TILE_ELEMENTS))
      tiles.push(row.subarray(at, at + length))
      at += length
    }
  }
  return { tiles, perRow }
}

/**
 * Streams one tensor's rows for a `tiled` fill: tile `s` of each row is tile `s` of a pool row that
 * the tensor's own stream picks. Blocks are quantized independently, so every tile is a row segment
 * drawn as `random` draws it, and rows of many tiles are all but never equal (an output matrix of
 * repeated rows would tie logits).
 */
export function* tiledChunks(t: TensorPlan, seed: number, pool: TilePool): Generator<Uint8Array> {
  const next = seededUint32(seed, `tiled\0${t.name}`)
  const rows = t.dims[1] ?? 1
  const rowBytes = rowByteLength(t.type, t.dims[0])
  const rowsPerChunk = Math.max(1, Math.floor(CHUNK_BYTES / rowBytes))
  const chunk = new Uint8Array(rowsPerChunk * rowBytes)
  const { tiles, perRow } = pool
  for (let r = 0; r < rows; r += rowsPerChunk) {
    const count = Math.min(rowsPerChunk, rows - r)
    let at = 0
    for (let k = 0; k < count; k++) {
      for (let s = 0; s < perRow; s++) {
        const tile = tiles[(next() % TILE_POOL_ROWS) * perRow + s]!
        chunk.set(tile, at)
        at += tile.length
      }
    }
    yield chunk.subarray(0, at)
  }
}
