import type { AbortOptions, ComponentLogger, Logger, PeerId, Startable, Stream } from '@libp2p/interface'
import type { ConnectionManager, Registrar } from '@libp2p/interface-internal'
import { byteStream } from '@libp2p/utils'
import type { Multiaddr } from '@multiformats/multiaddr'
import { PerfError } from './errors.ts'

/** The libp2p perf protocol (libp2p/specs perf/perf.md), so go/rust/js-libp2p perf tools interoperate. */
export const PERF_PROTOCOL = '/perf/1.0.0'

/** Largest download a perf server sends, and upload it takes, per stream. */
export const MAX_PERF_BYTES = 256 * 1024 * 1024

const BLOCK_BYTES = 64 * 1024
/** The largest window a yamux stream grows to (its default `maxStreamWindowSize`). */
const MAX_YAMUX_WINDOW_BYTES = 16 * 1024 * 1024
const HEADER_BYTES = 8

export interface PerfComponents {
  registrar: Registrar
  connectionManager: ConnectionManager
  logger: ComponentLogger
}

export interface PerfServiceInit {
  /** Per-stream cap on upload and download bytes. Default 256 MiB. */
  maxBytes?: number
  /** Budget of one served measurement. Default 60 s. */
  timeoutMs?: number
  /** Concurrent measurements served per connection. Default 2. */
  maxInboundStreams?: number
}

export interface PerfOptions extends AbortOptions {
  /** Bytes we send to the peer. */
  uploadBytes: number
  /** Bytes we ask the peer to send back. */
  downloadBytes: number
}

/** One measurement: bytes moved each way and how long each direction took, in milliseconds. */
export interface PerfResult {
  uploadBytes: number
  downloadBytes: number
  /** From the first byte sent until the server started answering (it answers after reading all). */
  uploadMs: number
  /** From the first byte of the answer to the last. */
  downloadMs: number
  totalMs: number
  /** Bits per second each way (0 when nothing moved that way). */
  uploadBitsPerSecond: number
  downloadBitsPerSecond: number
}

/** The perf service: serves `/perf/1.0.0` and measures throughput to other peers that serve it. */
export interface Perf {
  measure(peer: PeerId | Multiaddr | Multiaddr[], options: PerfOptions): Promise<PerfResult>
}

class PerfService implements Perf, Startable {
  readonly #components: PerfComponents
  readonly #log: Logger
  readonly #maxBytes: number
  readonly #timeoutMs: number
  readonly #maxInboundStreams: number
  readonly #block = new Uint8Array(BLOCK_BYTES)

  constructor(components: PerfComponents, init: PerfServiceInit) {
    this.#components = components
    this.#log = components.logger.forComponent('meshnet:perf')
    this.#maxBytes = init.maxBytes ?? MAX_PERF_BYTES
    this.#timeoutMs = init.timeoutMs ?? 60_000
    this.#maxInboundStreams = init.maxInboundStreams ?? 2
  }

  readonly [Symbol.toStringTag] = '@meshnet/perf'

  async start(): Promise<void> {
    await this.#components.registrar.handle(PERF_PROTOCOL, (stream) => this.#serve(stream), {
      maxInboundStreams: this.#maxInboundStreams,
      runOnLimitedConnection: false,
    })
  }

  async stop(): Promise<void> {
    await this.#components.registrar.unhandle(PERF_PROTOCOL)
  }

  async #serve(stream: Stream): Promise<void> {
    const signal = AbortSignal.timeout(this.#timeoutMs)
    const onTimeout = () => stream.abort(new PerfError(`perf stream took longer than ${this.#timeoutMs} ms`))
    signal.addEventListener('abort', onTimeout, { once: true })
    try {
      const header = new Uint8Array(HEADER_BYTES)
      let received = 0
      for await (const chunk of readAll(stream, signal)) {
        const bytes = chunk.subarray()
        if (received < HEADER_BYTES) header.set(bytes.subarray(0, HEADER_BYTES - received), received)
        received += bytes.byteLength
        if (received - HEADER_BYTES > this.#maxBytes) {
          throw new PerfError(`perf upload over the ${this.#maxBytes}-byte cap`)
        }
      }
      if (received < HEADER_BYTES) throw new PerfError('perf stream ended before its 8-byte header')
      const wanted = new DataView(header.buffer).getBigUint64(0, false)
      if (wanted > BigInt(this.#maxBytes)) {
        throw new PerfError(`perf download of ${wanted} bytes asked; the cap is ${this.#maxBytes}`)
      }
      await this.#send(stream, Number(wanted), { signal })
      await stream.close({ signal })
    } catch (err) {
      this.#log.error('perf measurement failed - %e', err)
      stream.abort(err as Error)
    } finally {
      signal.removeEventListener('abort', onTimeout)
    }
  }

  async measure(peer: PeerId | Multiaddr | Multiaddr[], options: PerfOptions): Promise<PerfResult> {
    const { uploadBytes, downloadBytes, signal } = options
    for (const [name, value] of [
      ['uploadBytes', uploadBytes],
      ['downloadBytes', downloadBytes],
    ] as const) {
      if (!Number.isSafeInteger(value) || value < 0 || value > this.#maxBytes) {
        throw new PerfError(`${name} must be a whole number from 0 to ${this.#maxBytes}`)
      }
    }
    const stream = await this.#components.connectionManager.openStream(peer, PERF_PROTOCOL, {
      ...(signal ? { signal } : {}),
    })
    const onAbort = () => stream.abort(new PerfError('perf measurement cancelled'))
    signal?.addEventListener('abort', onAbort, { once: true })
    try {
      const started = performance.now()
      const header = new Uint8Array(HEADER_BYTES)
      new DataView(header.buffer).setBigUint64(0, BigInt(downloadBytes), false)
      if (!stream.send(header)) await stream.onDrain(signal ? { signal } : {})
      await this.#send(stream, uploadBytes, signal ? { signal } : {})
      await stream.close(signal ? { signal } : {})
      let firstByteAt: number | undefined
      let received = 0
      for await (const chunk of readAll(stream, signal)) {
        firstByteAt ??= performance.now()
        received += chunk.byteLength
        if (received > downloadBytes)
          throw new PerfError(`the peer sent more than the ${downloadBytes} bytes asked`)
      }
      const ended = performance.now()
      if (received !== downloadBytes) {
        throw new PerfError(`the peer sent ${received} of the ${downloadBytes} bytes asked`)
      }
      const uploadMs = (firstByteAt ?? ended) - started
      const downloadMs = firstByteAt === undefined ? 0 : ended - firstByteAt
      return {
        uploadBytes,
        downloadBytes,
        uploadMs,
        downloadMs,
        totalMs: ended - started,
        uploadBitsPerSecond: rate(uploadBytes, uploadMs),
        downloadBitsPerSecond: rate(downloadBytes, downloadMs),
      }
    } catch (err) {
      stream.abort(err as Error)
      throw err
    } finally {
      signal?.removeEventListener('abort', onAbort)
    }
  }

  /** Sends `bytes` zero bytes in 64 KiB blocks, waiting whenever the send buffer is full. */
  async #send(stream: Stream, bytes: number, options: AbortOptions): Promise<void> {
    let left = bytes
    while (left > 0) {
      const size = Math.min(left, BLOCK_BYTES)
      left -= size
      if (!stream.send(this.#block.subarray(0, size))) await stream.onDrain(options)
    }
  }
}

/**
 * Every chunk until the remote closes its end. Not `for await (const chunk of stream)`: a stream's
 * own iterator never ends when the remote's data and close arrived before it was created (a small
 * upload can), while byteStream checks for the end itself.
 */
async function* readAll(stream: Stream, signal: AbortSignal | undefined) {
  // Unread bytes held at most: a whole yamux window (which grows to 16 MiB on a fast link) and
  // what arrived before the first read, with room. At 4 MiB a 256 MiB download on loopback
  // overflowed every time.
  const bytes = byteStream(stream, { maxBufferSize: MAX_YAMUX_WINDOW_BYTES + 1024 * 1024 })
  for (;;) {
    const chunk = await bytes.read(signal ? { signal } : {})
    if (chunk === null) return
    yield chunk
  }
}

function rate(bytes: number, ms: number): number {
  return bytes === 0 || ms <= 0 ? 0 : Math.round((bytes * 8 * 1000) / ms)
}

/**
 * The perf service, for `createMeshNode({ services: { perf: perfService() } })`. Agents that want
 * `testNetworkPerformance()` bandwidth figures run it; it serves at most `maxBytes` each way.
 */
export function perfService(init: PerfServiceInit = {}): (components: PerfComponents) => Perf {
  return (components) => new PerfService(components, init)
}
