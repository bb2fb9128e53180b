import type { Connection, Stream } from '@libp2p/interface'
import { type Logger, silentLogger } from '@meshnet/core'
import { frameStream } from '@meshnet/protocols'
import { RateLimiterMemory } from 'rate-limiter-flexible'
import { z } from 'zod'
import { DirectWeightsListener, receiveDirect } from './direct.ts'
import { FetchError } from './errors.ts'
import type { ChunkSource } from './fetcher.ts'
import { MAX_CHUNK_BYTES, MAX_MANIFEST_BYTES } from './manifest.ts'
import type { ModelStore, StoredModel } from './store.ts'

// `/meshnet/weights/1.0.0`: one request per stream, a JSON frame (at most 16 KiB), answered by a
// JSON status frame and then the data:
//   {"op":"manifest","model":id}      -> {"ok":true}, the manifest's canonical bytes
//   {"op":"find","headerSha":hex}     -> {"ok":true,"model":id|null}   (which model has this header)
//   {"op":"have","model":id}          -> {"ok":true}, a bitmap of the chunks held (bit i of byte i>>3)
//   {"op":"chunks","model":id,"chunks":[i,...]} -> {"ok":true}, then per chunk held: 4-byte
//                                         big-endian index + the bytes; the stream ends after the last
// Errors: {"error":{"code","message"}}. Only pool members are answered, at most 4 streams at once
// and 64 requests a second per peer; the requester checks every chunk against the manifest (and
// the manifest against the model id), so a server can waste a requester's time, never its disk.

export const WEIGHTS_PROTOCOL = '/meshnet/weights/1.0.0'
const MAX_REQUEST_BYTES = 16 * 1024
/** Chunks one request may ask for (a 16 MiB batch of 64 KiB chunks). */
export const MAX_CHUNKS_PER_REQUEST = 256
const MAX_FRAME = Math.max(MAX_MANIFEST_BYTES, MAX_CHUNK_BYTES + 4)
const STREAMS_PER_PEER = 4
const REQUESTS_PER_SECOND = 64
const REQUEST_TIMEOUT_MS = 10_000
/** Longest one answer frame may wait for the requester to read. */
const WRITE_TIMEOUT_MS = 30_000

interface Sender {
  write(bytes: Uint8Array): Promise<void>
}

const id64 = z.string().regex(/^[0-9a-f]{64}$/)
const requestSchema = z.discriminatedUnion('op', [
  z.strictObject({ op: z.literal('manifest'), model: id64 }),
  z.strictObject({ op: z.literal('find'), headerSha: id64 }),
  z.strictObject({ op: z.literal('have'), model: id64 }),
  z.strictObject({
    op: z.literal('chunks'),
    model: id64,
    chunks: z.array(z.number().int().nonnegative()).min(1).max(MAX_CHUNKS_PER_REQUEST),
    /** Answer on a direct TCP connection when the server can (see direct.ts). */
    direct: z.literal(true).optional(),
  }),
])
type WeightsRequest = z.infer<typeof requestSchema>

const statusSchema = z.union([
  z.strictObject({
    ok: z.literal(true),
    model: id64.nullable().optional(),
    direct: z
      .strictObject({
        port: z.number().int().min(1).max(65535),
        id: z.string().regex(/^[0-9a-f]{32}$/),
        key: z.string().regex(/^[0-9a-f]{64}$/),
      })
      .optional(),
  }),
  z.strictObject({ error: z.strictObject({ code: z.string().max(64), message: z.string().max(1024) }) }),
])

/** What the weights server needs of a libp2p node. */
export interface WeightsNode {
  libp2p: {
    handle(
      protocol: string,
      handler: (stream: Stream, connection: Connection) => void,
      options?: { maxInboundStreams?: number; runOnLimitedConnection?: boolean },
    ): Promise<void>
    unhandle(protocol: string): Promise<void>
    dialProtocol(peer: unknown, protocol: string, options?: { signal?: AbortSignal }): Promise<Stream>
  }
}

export interface WeightsServerOptions {
  node: WeightsNode
  store: ModelStore
  /** Whether a peer may fetch (a member of a pool this node is in). */
  authorize(nodeId: string): boolean
  /**
   * Host a direct TCP listener binds for bulk answers (`127.0.0.1` on a local-only node, `0.0.0.0`
   * otherwise); undefined: every answer goes over the libp2p stream.
   */
  directHost?: string | undefined
  /** Reads a chunk to send (default: `store.readChunk`); a test double may alter it. */
  readChunk?: (stored: StoredModel, index: number) => Promise<Uint8Array | undefined>
  logger?: Logger
}

export interface WeightsServerStats {
  requests: number
  bytesServed: number
  /** `chunks` requests answered on a direct TCP connection, and the chunk bytes sent on them. */
  directAnswers: number
  directBytes: number
  /** Requests refused or dropped, by reason. */
  drops: Record<string, number>
}

/** Serves the chunks this node holds to pool members over `/meshnet/weights/1.0.0`. */
export class WeightsServer {
  readonly #options: WeightsServerOptions
  readonly #logger: Logger
  readonly #open = new Map<string, number>()
  readonly #limiter = new RateLimiterMemory({ points: REQUESTS_PER_SECOND, duration: 1 })
  readonly #stats: WeightsServerStats = {
    requests: 0,
    bytesServed: 0,
    directAnswers: 0,
    directBytes: 0,
    drops: {},
  }
  readonly #direct: DirectWeightsListener | undefined
  #started = false

  constructor(options: WeightsServerOptions) {
    this.#options = options
    this.#logger = options.logger ?? silentLogger()
    this.#direct =
      options.directHost === undefined
        ? undefined
        : new DirectWeightsListener(options.directHost, this.#logger)
  }

  async start(): Promise<void> {
    await this.#options.node.libp2p.handle(
      WEIGHTS_PROTOCOL,
      (stream, connection) => void this.#serve(stream, connection),
      { maxInboundStreams: 64, runOnLimitedConnection: false },
    )
    this.#started = true
  }

  async stop(): Promise<void> {
    if (this.#started) await this.#options.node.libp2p.unhandle(WEIGHTS_PROTOCOL).catch(() => {})
    this.#started = false
    await this.#direct?.close()
  }

  stats(): WeightsServerStats {
    return { ...this.#stats, drops: { ...this.#stats.drops } }
  }

  #drop(reason: string): void {
    this.#stats.drops[reason] = (this.#stats.drops[reason] ?? 0) + 1
  }

  async #serve(stream: Stream, connection: Connection): Promise<void> {
    const nodeId = connection.remotePeer.toString()
    // The request is read with its own 16 KiB cap (checked from the length prefix, before anything
    // is buffered); answers are written with the cap of a manifest or a chunk.
    const reader = frameStream(stream, { maxFrameBytes: MAX_REQUEST_BYTES })
    let writer: Sender | undefined
    const frames = (): Sender => {
      if (writer === undefined) {
        const framed = frameStream(reader.unwrap(), { maxFrameBytes: MAX_FRAME })
        // A requester that stops reading does not hold the stream (and its slot) for ever.
        writer = { write: (bytes) => framed.write(bytes, { signal: AbortSignal.timeout(WRITE_TIMEOUT_MS) }) }
      }
      return writer
    }
    const fail = async (code: string, message: string) => {
      this.#drop(code)
      await frames()
        .write(encodeJson({ error: { code, message } }))
        .catch(() => {})
      await stream.close().catch(() => stream.abort(new Error(message)))
    }
    if (!this.#options.authorize(nodeId))
      return fail('not-a-member', 'weights are served to pool members only')
    const open = this.#open.get(nodeId) ?? 0
    if (open >= STREAMS_PER_PEER)
      return fail('too-many-streams', `at most ${STREAMS_PER_PEER} weights streams at once`)
    try {
      await this.#limiter.consume(nodeId)
    } catch {
      return fail('rate-limited', `at most ${REQUESTS_PER_SECOND} weights requests a second`)
    }
    this.#open.set(nodeId, open + 1)
    const timeout = AbortSignal.timeout(REQUEST_TIMEOUT_MS)
    try {
      let raw: Uint8Array | undefined
      try {
        raw = await reader.read({ signal: timeout })
      } catch {
        return await fail('bad-request', 'no request within 10 s, or one over 16 KiB')
      }
      if (raw === undefined) return await fail('bad-request', 'the stream ended before a request')
      let request: WeightsRequest
      try {
        request = requestSchema.parse(JSON.parse(new TextDecoder().decode(raw)))
      } catch {
        return await fail('bad-request', 'the request is not a weights request')
      }
      this.#stats.requests++
      // A relayed (limited) connection has no address to connect to directly.
      await this.#answer(request, frames(), fail, connection.limits === undefined)
      await stream.close()
    } catch (err) {
      this.#drop('stream-error')
      this.#logger.debug({ nodeId, err: (err as Error).message }, 'weights stream ended')
      stream.abort(err as Error)
    } finally {
      const n = (this.#open.get(nodeId) ?? 1) - 1
      if (n <= 0) this.#open.delete(nodeId)
      else this.#open.set(nodeId, n)
    }
  }

  async #answer(
    request: WeightsRequest,
    frames: Sender,
    fail: (code: string, message: string) => Promise<void>,
    directAllowed: boolean,
  ): Promise<void> {
    const { store } = this.#options
    if (request.op === 'find') {
      const found = await store.findByHeader(request.headerSha)
      await frames.write(encodeJson({ ok: true, model: found?.id ?? null }))
      return
    }
    const stored = await store.get(request.model)
    if (stored === undefined) return fail('unknown-model', `no model ${request.model} here`)
    if (request.op === 'manifest') {
      await frames.write(encodeJson({ ok: true }))
      await frames.write(stored.model.bytes)
      return
    }
    if (request.op === 'have') {
      const held = store.held(stored.id)
      const bits = new Uint8Array(Math.ceil(held.length / 8))
      for (let i = 0; i < held.length; i++) if (held[i] === 1) bits[i >> 3]! |= 1 << (i & 7)
      await frames.write(encodeJson({ ok: true }))
      await frames.write(bits)
      return
    }
    const read = this.#options.readChunk ?? ((s, i) => store.readChunk(s, i))
    if (request.direct === true && directAllowed && this.#direct !== undefined) {
      const offer = await this.#direct.offer(
        request.chunks,
        (index) => read(stored, index),
        (bytes) => {
          this.#stats.bytesServed += bytes
          this.#stats.directBytes += bytes
        },
      )
      this.#stats.directAnswers++
      await frames.write(encodeJson({ ok: true, direct: offer }))
      return
    }
    await frames.write(encodeJson({ ok: true }))
    for (const index of request.chunks) {
      const bytes = await read(stored, index)
      if (bytes === undefined) continue
      const frame = new Uint8Array(4 + bytes.length)
      new DataView(frame.buffer).setUint32(0, index)
      frame.set(bytes, 4)
      await frames.write(frame)
      this.#stats.bytesServed += bytes.length
    }
  }
}

function encodeJson(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value))
}

async function ask(
  node: WeightsNode,
  peer: unknown,
  request: WeightsRequest,
  signal: AbortSignal,
): Promise<{ frames: ReturnType<typeof frameStream>; stream: Stream; status: z.infer<typeof statusSchema> }> {
  const stream = await node.libp2p.dialProtocol(peer, WEIGHTS_PROTOCOL, { signal })
  const frames = frameStream(stream, { maxFrameBytes: MAX_FRAME })
  try {
    await frames.write(encodeJson(request), { signal })
    const raw = await frames.read({ signal })
    if (raw === undefined) throw new FetchError('the peer closed the weights stream without an answer')
    const status = statusSchema.parse(JSON.parse(new TextDecoder().decode(raw)))
    if ('error' in status)
      throw new FetchError(`the peer refused: ${status.error.message} (${status.error.code})`)
    return { frames, stream, status }
  } catch (err) {
    stream.abort(err as Error)
    throw err
  }
}

/** The model id whose header hashes to `headerSha` at a peer, if it has one. */
export async function findModel(
  node: WeightsNode,
  peer: unknown,
  headerSha: string,
  signal: AbortSignal,
): Promise<string | undefined> {
  const { stream, status } = await ask(node, peer, { op: 'find', headerSha }, signal)
  await stream.close().catch(() => {})
  return 'ok' in status ? (status.model ?? undefined) : undefined
}

/** A peer's manifest bytes for `model` (the caller checks them against the id). */
export async function fetchManifest(
  node: WeightsNode,
  peer: unknown,
  model: string,
  signal: AbortSignal,
): Promise<Uint8Array> {
  const { frames, stream } = await ask(node, peer, { op: 'manifest', model }, signal)
  const bytes = await frames.read({ signal })
  await stream.close().catch(() => {})
  if (bytes === undefined) throw new FetchError('the peer sent no manifest')
  return bytes
}

/** Which chunks a peer holds, as a 0/1 array of `count`. */
export async function fetchHave(
  node: WeightsNode,
  peer: unknown,
  model: string,
  count: number,
  signal: AbortSignal,
): Promise<Uint8Array> {
  const { frames, stream } = await ask(node, peer, { op: 'have', model }, signal)
  const bits = await frames.read({ signal })
  await stream.close().catch(() => {})
  const held = new Uint8Array(count)
  if (bits === undefined) return held
  for (let i = 0; i < count; i++) held[i] = ((bits[i >> 3] ?? 0) >> (i & 7)) & 1
  return held
}

/**
 * A pool member as a chunk source: `held` is what it said it has (`fetchHave`). Given `host` (the
 * IP of a direct, not relayed, connection to it), chunks are asked for on a direct TCP connection
 * when the member offers one, and over the libp2p stream otherwise (or when that connection fails).
 */
export function peerSource(
  node: WeightsNode,
  peer: { id: string; dial: unknown; host?: string | undefined },
  model: string,
  held: Uint8Array,
): ChunkSource {
  let direct = peer.host !== undefined
  return {
    id: peer.id,
    kind: 'peer',
    holds: (index) => held[index] === 1,
    async *fetch(indices, signal) {
      for (let at = 0; at < indices.length; at += MAX_CHUNKS_PER_REQUEST) {
        const batch = indices.slice(at, at + MAX_CHUNKS_PER_REQUEST)
        const request = {
          op: 'chunks' as const,
          model,
          chunks: [...batch],
          ...(direct ? { direct: true as const } : {}),
        }
        const { frames, stream, status } = await ask(node, peer.dial, request, signal)
        if ('ok' in status && status.direct !== undefined) {
          await stream.close().catch(() => {})
          let got = 0
          try {
            for await (const chunk of receiveDirect(peer.host!, status.direct, signal)) {
              got++
              yield chunk
            }
            continue
          } catch (err) {
            // Nothing came: that address does not reach the member; libp2p from now on.
            if (got > 0 || signal.aborted) throw err
            direct = false
            at -= MAX_CHUNKS_PER_REQUEST
            continue
          }
        }
        try {
          for (;;) {
            const frame = await frames.read({ signal })
            if (frame === undefined) break
            if (frame.length < 4) throw new FetchError('a weights frame shorter than its index')
            const index = new DataView(frame.buffer, frame.byteOffset, 4).getUint32(0)
            yield { index, bytes: frame.subarray(4) }
          }
        } finally {
          await stream.close().catch(() => stream.abort(new Error('closed')))
        }
      }
    },
  }
}
