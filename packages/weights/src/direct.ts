import { createCipheriv, createDecipheriv, type DecipherGCM as Decipher, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import net from 'node:net'
import { type Logger, silentLogger } from '@meshnet/core'
import { FetchError } from './errors.ts'
import { MAX_CHUNK_BYTES } from './manifest.ts'

// Bulk chunks on a direct TCP connection. Over libp2p every 64 KiB message of noise sets up a
// cipher and a buffer of its own, which costs a requester more CPU than the bytes (bench/
// weights.bench.ts); chunks of megabytes need neither. So a `chunks` request over
// `/meshnet/weights/1.0.0` (noise-encrypted, pool-gated) may ask for a direct answer: the server
// draws a 16-byte offer id and a 32-byte AES-256-GCM key, sends both over that stream, and
// expects one TCP connection that presents the id within 10 s, once. It then sends each chunk as a
// frame: a 12-byte header (index, length, sequence number), the ciphertext and a 16-byte tag. The
// header is the additional data and the sequence number the nonce (a key seals one offer's frames
// only, so no nonce repeats), so a frame cannot be altered, forged, reordered or replayed; a
// sealed frame of index 0xffffffff ends the answer, so a cut is an error, not an end. The chunk's
// SHA-256 against the manifest is checked after, as on every path.

const ID_BYTES = 16
const KEY_BYTES = 32
const TAG_BYTES = 16
const HEADER_BYTES = 12
const END = 0xffffffff
const OFFER_TTL_MS = 10_000
const WRITE_TIMEOUT_MS = 30_000

/** What the requester needs to take a direct answer (sent over the noise-encrypted stream). */
export interface DirectOffer {
  port: number
  /** Hex, 16 bytes. */
  id: string
  /** Hex, 32 bytes. */
  key: string
}

interface PendingOffer {
  key: Buffer
  chunks: readonly number[]
  read: (index: number) => Promise<Uint8Array | undefined>
  onSent: (bytes: number) => void
  timer: NodeJS.Timeout
}

function nonce(seq: number): Buffer {
  const iv = Buffer.alloc(12)
  iv.writeUInt32BE(seq, 8)
  return iv
}

function header(index: number, length: number, seq: number): Buffer {
  const h = Buffer.alloc(HEADER_BYTES)
  h.writeUInt32BE(index, 0)
  h.writeUInt32BE(length, 4)
  h.writeUInt32BE(seq, 8)
  return h
}

/** The server's side: a TCP listener that answers offers made over libp2p. */
export class DirectWeightsListener {
  readonly #host: string
  readonly #logger: Logger
  readonly #offers = new Map<string, PendingOffer>()
  readonly #sockets = new Set<net.Socket>()
  #server: net.Server | undefined
  #port: Promise<number> | undefined

  constructor(host: string, logger: Logger = silentLogger()) {
    this.#host = host
    this.#logger = logger
  }

  /**
   * Offers `chunks` (read with `read`) to one connection that presents the returned id within
   * 10 s; `onSent` hears the bytes of each chunk sent.
   */
  async offer(
    chunks: readonly number[],
    read: (index: number) => Promise<Uint8Array | undefined>,
    onSent: (bytes: number) => void,
  ): Promise<DirectOffer> {
    const port = await this.#listen()
    const id = randomBytes(ID_BYTES).toString('hex')
    const key = randomBytes(KEY_BYTES)
    const timer = setTimeout(() => this.#offers.delete(id), OFFER_TTL_MS)
    timer.unref()
    this.#offers.set(id, { key, chunks, read, onSent, timer })
    return { port, id, key: key.toString('hex') }
  }

  async close(): Promise<void> {
    for (const offer of this.#offers.values()) clearTimeout(offer.timer)
    this.#offers.clear()
    for (const socket of this.#sockets) socket.destroy()
    const server = this.#server
    this.#server = undefined
    this.#port = undefined
    if (server !== undefined) await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  #listen(): Promise<number> {
    this.#port ??= new Promise<number>((resolve, reject) => {
      const server = net.createServer((socket) => void this.#accept(socket))
      server.once('error', reject)
      server.listen(0, this.#host, () => {
        this.#server = server
        resolve((server.address() as net.AddressInfo).port)
      })
    })
    return this.#port
  }

  async #accept(socket: net.Socket): Promise<void> {
    this.#sockets.add(socket)
    socket.on('error', () => {})
    socket.setTimeout(OFFER_TTL_MS, () => socket.destroy())
    try {
      const id = await readExactly(socket, ID_BYTES)
      const offer = this.#offers.get(id.toString('hex'))
      // Unknown, expired or already taken: nothing is said to whoever this is.
      if (offer === undefined) return
      this.#offers.delete(id.toString('hex'))
      clearTimeout(offer.timer)
      socket.setTimeout(0)
      socket.setNoDelay(true)
      let seq = 0
      const send = async (index: number, plain: Uint8Array) => {
        const cipher = createCipheriv('aes-256-gcm', offer.key, nonce(seq))
        const h = header(index, plain.length, seq++)
        cipher.setAAD(h)
        const body = plain.length === 0 ? Buffer.alloc(0) : cipher.update(plain)
        cipher.final()
        await write(socket, h)
        await write(socket, body)
        await write(socket, cipher.getAuthTag())
      }
      for (const index of offer.chunks) {
        const bytes = await offer.read(index)
        if (bytes === undefined) continue
        await send(index, bytes)
        offer.onSent(bytes.length)
      }
      await send(END, new Uint8Array(0))
      socket.end()
    } catch (err) {
      this.#logger.debug({ err: (err as Error).message }, 'direct weights connection ended')
      socket.destroy()
    } finally {
      this.#sockets.delete(socket)
    }
  }
}

async function write(socket: net.Socket, bytes: Uint8Array): Promise<void> {
  if (bytes.length === 0 || socket.write(bytes)) return
  await once(socket, 'drain', { signal: AbortSignal.timeout(WRITE_TIMEOUT_MS) })
}

/** Reads exactly `n` bytes from a socket that is not flowing yet (and leaves it open). */
function readExactly(socket: net.Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error, bytes?: Buffer) => {
      socket.off('readable', onReadable)
      socket.off('end', onEnd)
      socket.off('error', done)
      if (err !== undefined) reject(err)
      else resolve(bytes!)
    }
    const onReadable = () => {
      const bytes = socket.read(n) as Buffer | null
      if (bytes !== null) done(undefined, bytes)
    }
    const onEnd = () => done(new FetchError('the connection ended before the offer id'))
    socket.on('readable', onReadable)
    socket.on('end', onEnd)
    socket.on('error', done)
  })
}

/**
 * The requester's side: connects to `host:offer.port`, presents the offer id and yields each chunk
 * as it is opened. FetchError when a frame fails its tag, is too large, or the answer is cut.
 */
export async function* receiveDirect(
  host: string,
  offer: DirectOffer,
  signal: AbortSignal,
): AsyncGenerator<{ index: number; bytes: Uint8Array[] }> {
  const key = Buffer.from(offer.key, 'hex')
  const socket = net.connect({ host, port: offer.port, noDelay: true })
  const onAbort = () => socket.destroy(signal.reason instanceof Error ? signal.reason : new Error('aborted'))
  signal.addEventListener('abort', onAbort, { once: true })
  try {
    await once(socket, 'connect', { signal })
    socket.write(Buffer.from(offer.id, 'hex'))
    // Each frame is opened as it streams in: ciphertext pieces decrypted as they arrive (no
    // frame-sized buffer to fill and free), the tag checked before any of its bytes are yielded.
    let pending: Buffer = Buffer.alloc(0)
    let expected = 0
    let frame:
      | {
          index: number
          length: number
          seq: number
          got: number
          decipher: Decipher
          parts: Buffer[]
          tag: Buffer[]
        }
      | undefined
    for await (const piece of socket as AsyncIterable<Buffer>) {
      let data = pending.length === 0 ? piece : Buffer.concat([pending, piece])
      pending = Buffer.alloc(0)
      while (data.length > 0) {
        if (frame === undefined) {
          if (data.length < HEADER_BYTES) {
            pending = data
            break
          }
          const index = data.readUInt32BE(0)
          const length = data.readUInt32BE(4)
          const seq = data.readUInt32BE(8)
          if (length > MAX_CHUNK_BYTES || seq !== expected)
            throw new FetchError('a direct weights frame is malformed')
          const decipher = createDecipheriv('aes-256-gcm', key, nonce(seq))
          decipher.setAAD(data.subarray(0, HEADER_BYTES))
          frame = { index, length, seq, got: 0, decipher, parts: [], tag: [] }
          data = data.subarray(HEADER_BYTES)
        }
        const total = frame.length + TAG_BYTES
        const n = Math.min(total - frame.got, data.length)
        const body = Math.max(0, Math.min(n, frame.length - frame.got))
        if (body > 0) frame.parts.push(frame.decipher.update(data.subarray(0, body)))
        if (n > body) frame.tag.push(data.subarray(body, n))
        frame.got += n
        data = data.subarray(n)
        if (frame.got < total) continue
        try {
          frame.decipher.setAuthTag(Buffer.concat(frame.tag))
          frame.decipher.final()
        } catch {
          throw new FetchError('a direct weights frame failed its authentication tag')
        }
        expected++
        const { index, parts } = frame
        frame = undefined
        if (index === END) return
        yield { index, bytes: parts }
      }
    }
    throw new FetchError('the direct weights connection was cut before its end frame')
  } finally {
    signal.removeEventListener('abort', onAbort)
    socket.destroy()
  }
}
