import { createHash } from 'node:crypto'
import { DEFAULT_GGUF_LIMITS, type GGUFHeader, type HeaderSource, readGGUFHeader } from '@meshnet/gguf'
import { FetchError } from './errors.ts'
import type { ChunkSource } from './fetcher.ts'
import {
  type BuildManifestOptions,
  DEFAULT_CHUNK_BYTES,
  MANIFEST_FORMAT,
  type Manifest,
  type ManifestPiece,
  manifestOf,
  piecesOf,
  sha256Hex,
} from './manifest.ts'

// A model at an HTTP(S) URL: any server that answers range requests (Hugging Face `resolve` URLs,
// nginx, `python -m http.server` does not). Only byte ranges are read: the header to plan and to
// find the pool's manifest, then a member's own chunks, each checked against the manifest.

const HEADER_TIMEOUT_MS = 30_000

/** What a URL's first bytes say: the file size, the GGUF header and its hash (to find the manifest). */
export interface UrlHeader {
  url: string
  fileBytes: number
  header: GGUFHeader
  /** Bytes `[0, dataOffset)`: magic, metadata, vocabulary and tensor table. */
  headerBytes: Uint8Array
  headerSha: string
}

/** Reads `[offset, offset + length)` of `url`; FetchError unless the server answers 206 with those bytes. */
export async function readRange(
  url: string,
  offset: number,
  length: number,
  signal?: AbortSignal,
): Promise<Response> {
  const response = await fetch(url, {
    headers: { range: `bytes=${offset}-${offset + length - 1}` },
    redirect: 'follow',
    ...(signal === undefined ? {} : { signal }),
  })
  if (response.status !== 206) {
    await response.body?.cancel().catch(() => {})
    throw new FetchError(
      response.status === 200
        ? `${url} ignored a range request (answered 200 with the whole file)`
        : `${url} answered ${response.status} ${response.statusText} to a range request`,
      { hint: 'the server must support HTTP range requests (Hugging Face resolve URLs do)' },
    )
  }
  return response
}

async function readBytes(
  url: string,
  target: Uint8Array,
  offset: number,
  signal?: AbortSignal,
): Promise<void> {
  const response = await readRange(url, offset, target.length, signal)
  const body = new Uint8Array(await response.arrayBuffer())
  if (body.length !== target.length) {
    throw new FetchError(`${url} sent ${body.length} bytes for a range of ${target.length} at ${offset}`)
  }
  target.set(body)
}

/** The file's size, from the Content-Range of a one-byte range request. */
async function remoteSize(url: string, signal?: AbortSignal): Promise<number> {
  const response = await readRange(url, 0, 1, signal)
  await response.body?.cancel().catch(() => {})
  const total = /\/(\d+)$/.exec(response.headers.get('content-range') ?? '')
  if (total === null) throw new FetchError(`${url} gave no file size in its Content-Range header`)
  return Number(total[1])
}

/** Reads a URL's GGUF header with range requests (a megabyte at a time), nothing else. */
export async function readUrlHeader(url: string, signal?: AbortSignal): Promise<UrlHeader> {
  const limit = AbortSignal.any([AbortSignal.timeout(HEADER_TIMEOUT_MS), ...(signal ? [signal] : [])])
  const fileBytes = await remoteSize(url, limit)
  const source: HeaderSource = {
    read: (async (buffer: Uint8Array, offset: number, length: number, position: number) => {
      const n = Math.max(0, Math.min(length, fileBytes - position))
      if (n > 0) await readBytes(url, buffer.subarray(offset, offset + n), position, limit)
      return { bytesRead: n, buffer }
    }) as HeaderSource['read'],
  }
  const header = await readGGUFHeader(source, url, fileBytes, DEFAULT_GGUF_LIMITS)
  const headerBytes = new Uint8Array(header.dataOffset)
  await readBytes(url, headerBytes, 0, limit)
  return { url, fileBytes, header, headerBytes, headerSha: sha256Hex(headerBytes) }
}

/**
 * Builds the manifest of a model at a URL by reading every piece once (`mesh model-add <url>`):
 * what a pool with no copy of the file does once, so that members can then fetch and verify only
 * their own ranges. One range request per piece, hashed as it streams; only the manifest is kept.
 */
export async function buildUrlManifest(
  url: string,
  options: BuildManifestOptions = {},
): Promise<{ model: Manifest; header: UrlHeader }> {
  const header = await readUrlHeader(url, options.signal)
  const pieces = piecesOf(header.header)
  const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES
  const total = pieces.reduce((n, p) => n + p.bytes, 0)
  let hashed = 0
  const out: ManifestPiece[] = []
  for (const piece of pieces) {
    const chunks: string[] = []
    if (piece.bytes > 0) {
      const response = await readRange(url, piece.offset, piece.bytes, options.signal)
      let hash = createHash('sha256')
      let inChunk = 0
      for await (const part of response.body as unknown as AsyncIterable<Uint8Array>) {
        for (let at = 0; at < part.length; ) {
          const n = Math.min(chunkBytes - inChunk, part.length - at)
          hash.update(part.subarray(at, at + n))
          inChunk += n
          at += n
          hashed += n
          if (inChunk === chunkBytes) {
            chunks.push(hash.digest('hex'))
            hash = createHash('sha256')
            inChunk = 0
          }
        }
        options.onProgress?.(hashed, total)
      }
      if (inChunk > 0) chunks.push(hash.digest('hex'))
      if (chunks.length !== Math.ceil(piece.bytes / chunkBytes)) {
        throw new FetchError(`${url} ended the range of '${piece.name}' early`)
      }
    }
    out.push({ ...piece, chunks })
  }
  const model = manifestOf({ format: MANIFEST_FORMAT, fileBytes: header.fileBytes, chunkBytes, pieces: out })
  return { model, header }
}

/** Chunks of a model from its URL: contiguous chunks in one range request each, cut as they arrive. */
export function urlSource(url: string, model: Manifest): ChunkSource {
  const { chunks } = model
  return {
    id: url,
    kind: 'url',
    holds: () => true,
    async *fetch(indices, signal) {
      const sorted = [...indices].sort((a, b) => a - b)
      let i = 0
      while (i < sorted.length) {
        // A run of chunks that lie back to back in the file (a tensor's chunks, and tensors
        // separated by no padding).
        let j = i
        while (
          j + 1 < sorted.length &&
          chunks.offset[sorted[j + 1]!] === chunks.offset[sorted[j]!]! + chunks.length[sorted[j]!]!
        )
          j++
        const first = sorted[i]!
        const last = sorted[j]!
        const start = chunks.offset[first]!
        const end = chunks.offset[last]! + chunks.length[last]!
        const response = await readRange(url, start, end - start, signal)
        const reader = response.body!.getReader()
        let index = i
        let buffer = new Uint8Array(chunks.length[sorted[index]!]!)
        let filled = 0
        try {
          for (;;) {
            const { value, done } = await reader.read()
            if (done) break
            let at = 0
            while (at < value.length && index <= j) {
              const n = Math.min(buffer.length - filled, value.length - at)
              buffer.set(value.subarray(at, at + n), filled)
              filled += n
              at += n
              if (filled === buffer.length) {
                yield { index: sorted[index]!, bytes: buffer }
                index++
                if (index <= j) buffer = new Uint8Array(chunks.length[sorted[index]!]!)
                filled = 0
              }
            }
          }
        } finally {
          reader.releaseLock()
          await response.body?.cancel().catch(() => {})
        }
        if (index <= j) throw new FetchError(`${url} ended the range ${start}-${end - 1} early`)
        i = j + 1
      }
    },
  }
}
