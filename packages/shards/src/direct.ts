import { randomBytes } from 'node:crypto'
import net from 'node:net'
import { type Channel, type FrameWaiter, waitForFrame } from './channel.ts'
import {
  ACCEPT,
  CLOSE,
  DATA,
  type DirectBinding,
  deriveKeys,
  HEADER,
  HELLO,
  ID_BYTES,
  type Opener,
  type Sealer,
  TAG,
} from './direct-seal.ts'
import { ShardSessionError } from './errors.ts'

// A direct channel between two members: a plain TCP connection whose frames are encrypted and
// authenticated with keys agreed over the (noise-encrypted, pool-gated) libp2p link stream. The
// callee draws a 32-byte secret and a 16-byte channel id and sends both over libp2p; the caller
// connects, sends the id in clear and a sealed hello, the callee answers with a sealed accept.
// The keys are bound to the link they were offered for: HKDF's salt is a hash of the wire version,
// the channel id, the pool, the coordinator, the session and both ends' node ids and ranks, so a
// caller and callee that disagree on any of them fail the hello, and nothing sealed for one link
// opens on another. Each direction has its own keys and is sealed like SSH's aes256-ctr with
// hmac-sha2-256-etm: one AES-256-CTR keystream for the life of the channel (no cipher set-up per
// frame, which costs more than the frame itself at these sizes), and an HMAC-SHA256 over the
// frame's sequence number, kind, length and ciphertext, checked before anything is decrypted. So a
// frame cannot be forged, replayed, reordered or moved to the other direction; and the stream ends
// only with a sealed close frame, so a cut (a FIN or reset without it) is an error, not an end.
// See docs/protocols.md ("Direct channel").

/** Bytes of socket read-ahead after which we stop reading (the sender then waits). */
const MIN_READ_AHEAD = 1 << 20
const HANDSHAKE_TIMEOUT_MS = 5_000
const EMPTY = new Uint8Array(0)

export interface DirectOffer {
  port: number
  id: string
  key: string
}

class DirectChannel implements Channel {
  readonly remote: string
  readonly transport = 'direct' as const
  bytesRead = 0
  bytesWritten = 0
  readonly #socket: net.Socket
  readonly #sealer: Sealer
  readonly #opener: Opener
  #maxFrameBytes: number
  #pending: Buffer = Buffer.alloc(0)
  readonly #frames: Uint8Array[] = []
  #queuedBytes = 0
  #waiter: FrameWaiter | undefined
  #ended = false
  #error: Error | undefined
  /** We sent our close frame (and the FIN after it): nothing more is written. */
  #closeSent = false
  /** The other end's close frame arrived: its direction ended cleanly. */
  #closeReceived = false

  constructor(
    socket: net.Socket,
    remote: string,
    keys: { send: Sealer; receive: Opener },
    maxFrameBytes: number,
    leftover: Buffer,
  ) {
    this.#socket = socket
    this.remote = remote
    this.#sealer = keys.send
    this.#opener = keys.receive
    this.#maxFrameBytes = maxFrameBytes
    socket.setNoDelay(true)
    socket.on('data', (chunk: Buffer) => this.#onData(chunk))
    socket.on('end', () => this.#finish(this.#cut('ended')))
    socket.on('error', (err) => this.#finish(err))
    socket.on('close', () => this.#finish(this.#cut('closed')))
    if (leftover.byteLength > 0) this.#onData(leftover)
  }

  read(signal?: AbortSignal): Promise<Uint8Array | undefined> {
    const frame = this.#frames.shift()
    if (frame !== undefined) {
      this.#queuedBytes -= frame.byteLength
      if (this.#socket.isPaused() && this.#queuedBytes < this.#readAhead()) this.#socket.resume()
      return Promise.resolve(frame)
    }
    if (this.#error) return Promise.reject(this.#error)
    if (this.#ended) return Promise.resolve(undefined)
    if (this.#waiter) return Promise.reject(new ShardSessionError('two reads at once on one channel'))
    return waitForFrame(signal, (waiter) => (this.#waiter = waiter))
  }

  async write(frame: Uint8Array): Promise<void> {
    if (this.#error) throw this.#error
    if (this.#ended || this.#closeSent || this.#socket.destroyed)
      throw new ShardSessionError(`direct channel to ${this.remote} is closed`)
    if (frame.byteLength > this.#maxFrameBytes) {
      throw new ShardSessionError(
        `refusing to send a ${frame.byteLength}-byte frame: the cap is ${this.#maxFrameBytes}`,
      )
    }
    const sealed = this.#sealer.seal(frame)
    this.bytesWritten += frame.byteLength
    if (!this.#socket.write(sealed)) {
      await new Promise<void>((resolve, reject) => {
        const done = (err?: Error) => {
          this.#socket.off('drain', onDrain)
          this.#socket.off('close', onClose)
          if (err) reject(err)
          else resolve()
        }
        const onDrain = () => done()
        const onClose = () =>
          done(new ShardSessionError(`direct channel to ${this.remote} closed while sending`))
        this.#socket.once('drain', onDrain)
        this.#socket.once('close', onClose)
      })
    }
  }

  setMaxFrameBytes(bytes: number): void {
    this.#maxFrameBytes = bytes
  }

  async close(): Promise<void> {
    this.#sendClose()
  }

  abort(err: Error): void {
    this.#finish(err)
    this.#socket.destroy()
  }

  #sendClose(): void {
    if (this.#closeSent || this.#socket.destroyed) return
    this.#closeSent = true
    this.#socket.end(this.#sealer.seal(EMPTY, CLOSE))
  }

  /** The error for a TCP end or close: none after the close frame, else the stream was cut. */
  #cut(how: 'ended' | 'closed'): Error | undefined {
    if (this.#closeReceived) return undefined
    return new ShardSessionError(
      `direct channel to ${this.remote} ${how} without a close frame: the connection was cut or the member failed`,
    )
  }

  #readAhead(): number {
    return Math.max(MIN_READ_AHEAD, 2 * this.#maxFrameBytes)
  }

  #onData(chunk: Buffer): void {
    if (this.#closeReceived) return // nothing follows a close frame; what does is ignored
    this.#pending = this.#pending.byteLength === 0 ? chunk : Buffer.concat([this.#pending, chunk])
    try {
      for (;;) {
        if (this.#pending.byteLength < HEADER) break
        const length = this.#pending.readUInt32LE(0)
        const kind = this.#pending[4]!
        if (kind !== DATA && kind !== CLOSE) {
          throw new ShardSessionError(`direct frame of unknown kind ${kind} from ${this.remote}`)
        }
        if (length < TAG || length - TAG > (kind === CLOSE ? 0 : this.#maxFrameBytes)) {
          throw new ShardSessionError(
            kind === CLOSE
              ? `direct close frame from ${this.remote} has a body`
              : `direct frame of ${length - TAG} bytes from ${this.remote} is over the ${this.#maxFrameBytes}-byte cap`,
          )
        }
        if (this.#pending.byteLength < HEADER + length) break
        const sealed = this.#pending.subarray(HEADER, HEADER + length)
        this.#pending = this.#pending.subarray(HEADER + length)
        const frame = this.#opener.open(kind, sealed)
        if (kind === CLOSE) {
          this.#closeReceived = true
          this.#pending = Buffer.alloc(0)
          this.#sendClose()
          this.#finish(undefined)
          return
        }
        this.bytesRead += frame.byteLength
        const waiter = this.#waiter
        if (waiter) {
          this.#waiter = undefined
          waiter.resolve(frame)
        } else {
          this.#frames.push(frame)
          this.#queuedBytes += frame.byteLength
        }
      }
    } catch (err) {
      this.abort(err as Error)
      return
    }
    if (this.#queuedBytes >= this.#readAhead()) this.#socket.pause()
  }

  #finish(err: Error | undefined): void {
    if (this.#ended) return
    this.#ended = true
    if (err) this.#error ??= err
    const waiter = this.#waiter
    this.#waiter = undefined
    if (waiter === undefined) return
    if (this.#error) waiter.reject(this.#error)
    else waiter.resolve(undefined)
  }
}

interface PendingOffer {
  secret: Buffer
  binding: DirectBinding
  maxFrameBytes: number
  resolve: (channel: Channel) => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
}

/**
 * The TCP listener of one shard server: accepts the direct channels it offered over libp2p. A
 * connection that does not open with a known id and a hello sealed under that offer's keys (its
 * secret and its binding) is dropped before anything else is read.
 */
export class DirectListener {
  readonly #host: string
  #server: net.Server | undefined
  #listening: Promise<number> | undefined
  readonly #offers = new Map<string, PendingOffer>()
  readonly #sockets = new Set<net.Socket>()

  constructor(host: string) {
    this.#host = host
  }

  /**
   * Offers a channel for one link (we are `binding.callee`); `accepted` resolves when the caller
   * connects and proves the keys.
   */
  async offer(
    binding: DirectBinding,
    maxFrameBytes: number,
  ): Promise<{ offer: DirectOffer; accepted: Promise<Channel> }> {
    const remote = binding.caller.nodeId
    const port = await this.#listen()
    const id = randomBytes(ID_BYTES)
    const secret = randomBytes(32)
    const hex = id.toString('hex')
    const accepted = new Promise<Channel>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#offers.delete(hex)
        reject(new ShardSessionError(`${remote} did not open the offered direct channel in time`))
      }, HANDSHAKE_TIMEOUT_MS * 2)
      this.#offers.set(hex, { secret, binding, maxFrameBytes, resolve, reject, timer })
    })
    accepted.catch(() => {})
    return { offer: { port, id: hex, key: secret.toString('hex') }, accepted }
  }

  /** Withdraws an offer that will not be used. */
  withdraw(id: string): void {
    const offer = this.#offers.get(id)
    if (offer === undefined) return
    this.#offers.delete(id)
    clearTimeout(offer.timer)
    offer.reject(new ShardSessionError('direct channel offer withdrawn'))
  }

  async close(): Promise<void> {
    for (const id of [...this.#offers.keys()]) this.withdraw(id)
    for (const socket of this.#sockets) socket.destroy()
    this.#sockets.clear()
    const server = this.#server
    this.#server = undefined
    this.#listening = undefined
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  #listen(): Promise<number> {
    if (this.#listening) return this.#listening
    const server = net.createServer((socket) => this.#accept(socket))
    this.#server = server
    this.#listening = new Promise<number>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, this.#host, () => {
        server.off('error', reject)
        server.on('error', () => {})
        resolve((server.address() as net.AddressInfo).port)
      })
    })
    this.#listening.catch(() => {
      this.#listening = undefined
      this.#server = undefined
    })
    return this.#listening
  }

  #accept(socket: net.Socket): void {
    this.#sockets.add(socket)
    socket.once('close', () => this.#sockets.delete(socket))
    socket.on('error', () => {})
    const timer = setTimeout(() => socket.destroy(), HANDSHAKE_TIMEOUT_MS)
    let buffered = Buffer.alloc(0)
    const helloBytes = ID_BYTES + HEADER + HELLO.byteLength + TAG
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk])
      if (buffered.byteLength < helloBytes) return
      socket.off('data', onData)
      clearTimeout(timer)
      const id = buffered.subarray(0, ID_BYTES).toString('hex')
      const offer = this.#offers.get(id)
      try {
        if (offer === undefined) throw new ShardSessionError('unknown direct channel id')
        const length = buffered.readUInt32LE(ID_BYTES)
        if (length !== HELLO.byteLength + TAG || buffered[ID_BYTES + 4] !== DATA)
          throw new ShardSessionError('bad direct hello')
        const keys = deriveKeys(offer.secret, Buffer.from(id, 'hex'), offer.binding, 'callee')
        const hello = keys.receive.open(DATA, buffered.subarray(ID_BYTES + HEADER, helloBytes))
        if (Buffer.compare(Buffer.from(hello), Buffer.from(HELLO)) !== 0) {
          throw new ShardSessionError('bad direct hello')
        }
        this.#offers.delete(id)
        clearTimeout(offer.timer)
        socket.pause()
        socket.write(keys.send.seal(ACCEPT))
        const channel = new DirectChannel(
          socket,
          offer.binding.caller.nodeId,
          keys,
          offer.maxFrameBytes,
          buffered.subarray(helloBytes),
        )
        socket.resume()
        offer.resolve(channel)
      } catch {
        socket.destroy()
      }
    }
    socket.on('data', onData)
  }
}

/**
 * Connects to a member's offered direct channel for one link (we are `binding.caller`) and proves
 * the keys.
 */
export async function connectDirect(
  host: string,
  binding: DirectBinding,
  offer: DirectOffer,
  maxFrameBytes: number,
  signal?: AbortSignal,
): Promise<Channel> {
  const remote = binding.callee.nodeId
  const id = Buffer.from(offer.id, 'hex')
  const keys = deriveKeys(Buffer.from(offer.key, 'hex'), id, binding, 'caller')
  const socket = net.connect({ host, port: offer.port })
  socket.on('error', () => {})
  const acceptBytes = HEADER + ACCEPT.byteLength + TAG
  try {
    return await new Promise<Channel>((resolve, reject) => {
      let buffered = Buffer.alloc(0)
      const fail = (err: Error) => {
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        socket.destroy()
        reject(err)
      }
      const onAbort = () => fail(signal!.reason as Error)
      const timer = setTimeout(
        () => fail(new ShardSessionError(`direct channel to ${remote} at ${host}:${offer.port} timed out`)),
        HANDSHAKE_TIMEOUT_MS,
      )
      signal?.addEventListener('abort', onAbort, { once: true })
      socket.once('error', (err) => fail(err))
      socket.once('close', () =>
        fail(
          new ShardSessionError(
            `${remote} closed the direct channel during the handshake: it refused our hello (a wrong key, or keys for another link, session or member)`,
          ),
        ),
      )
      socket.once('connect', () => {
        socket.setNoDelay(true)
        socket.write(Buffer.concat([id, keys.send.seal(HELLO)]))
      })
      const onData = (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk])
        if (buffered.byteLength < acceptBytes) return
        socket.off('data', onData)
        socket.pause()
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        try {
          if (buffered.readUInt32LE(0) !== ACCEPT.byteLength + TAG || buffered[4] !== DATA)
            throw new ShardSessionError('bad direct accept')
          const accept = keys.receive.open(DATA, buffered.subarray(HEADER, acceptBytes))
          if (Buffer.compare(Buffer.from(accept), Buffer.from(ACCEPT)) !== 0) {
            throw new ShardSessionError('bad direct accept')
          }
          socket.removeAllListeners('error')
          socket.removeAllListeners('close')
          socket.removeAllListeners('connect')
          const channel = new DirectChannel(
            socket,
            remote,
            keys,
            maxFrameBytes,
            buffered.subarray(acceptBytes),
          )
          socket.resume()
          resolve(channel)
        } catch (err) {
          fail(err as Error)
        }
      }
      socket.on('data', onData)
    })
  } catch (err) {
    socket.destroy()
    throw err
  }
}
