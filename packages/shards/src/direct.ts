import {
  type Cipheriv,
  createCipheriv,
  createDecipheriv,
  type Decipheriv,
  hash,
  hkdfSync,
  randomBytes,
  timingSafeEqual,
} from 'node:crypto'
import net from 'node:net'
import { type Channel, type FrameWaiter, waitForFrame } from './channel.ts'
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

/** The direct channel's wire version: in the hello, the accept and the key derivation. */
const VERSION = 'meshnet-shard-direct/2'
const HELLO = new TextEncoder().encode(`${VERSION} hello`)
const ACCEPT = new TextEncoder().encode(`${VERSION} accept`)
/** Bytes before each frame's ciphertext: `u32 LE` ciphertext-and-tag length, `u8` kind. */
const HEADER = 5
const DATA = 0
/** The last frame of a direction: empty, sealed like any other. */
const CLOSE = 1
/** Bytes of the (truncated) HMAC-SHA256 tag after each frame's ciphertext. */
const TAG = 16
const ID_BYTES = 16
/** Bytes of socket read-ahead after which we stop reading (the sender then waits). */
const MIN_READ_AHEAD = 1 << 20
const HANDSHAKE_TIMEOUT_MS = 5_000
const EMPTY = new Uint8Array(0)

export interface DirectOffer {
  port: number
  id: string
  key: string
}

/** One end of a direct channel: a member's node id and its rank in the session. */
export interface DirectEnd {
  nodeId: string
  rank: number
}

/**
 * The link a direct channel's keys are bound to. Both ends build it from what they know (their
 * own node id, the noise-proven id of the other end, the session's `OPEN`); if they disagree on any
 * field the hello fails authentication.
 */
export interface DirectBinding {
  poolId: string
  coordinator: string
  session: string
  /** The member that dials (and connects to the offered port). */
  caller: DirectEnd
  /** The member that accepts the link and offers the channel. */
  callee: DirectEnd
}

/** One direction's keys: AES-256-CTR key and initial counter block, HMAC key. */
interface DirectionKeys {
  enc: Buffer
  iv: Buffer
  mac: Buffer
}

/** SHA-256 of the channel id, version and binding; each string length-prefixed (so unambiguous). */
function transcript(id: Buffer, binding: DirectBinding): Buffer {
  const { poolId, coordinator, session, caller, callee } = binding
  const fields = [VERSION, poolId, coordinator, session, caller.nodeId, callee.nodeId].map((f) =>
    Buffer.from(f, 'utf8'),
  )
  const parts: Buffer[] = [id]
  for (const field of fields) {
    const length = Buffer.alloc(4)
    length.writeUInt32BE(field.byteLength)
    parts.push(length, field)
  }
  const ranks = Buffer.alloc(8)
  ranks.writeUInt32BE(caller.rank, 0)
  ranks.writeUInt32BE(callee.rank, 4)
  parts.push(ranks)
  return hash('sha256', Buffer.concat(parts), 'buffer')
}

function deriveKeys(
  secret: Buffer,
  id: Buffer,
  binding: DirectBinding,
  side: 'caller' | 'callee',
): { send: Sealer; receive: Opener } {
  const salt = transcript(id, binding)
  const keys = (label: string): DirectionKeys => {
    const okm = Buffer.from(hkdfSync('sha256', secret, salt, `${VERSION} ${label}`, 80))
    return { enc: okm.subarray(0, 32), mac: okm.subarray(32, 64), iv: okm.subarray(64, 80) }
  }
  const c2s = keys('caller-to-callee')
  const s2c = keys('callee-to-caller')
  return side === 'caller'
    ? { send: new Sealer(c2s), receive: new Opener(s2c) }
    : { send: new Sealer(s2c), receive: new Opener(c2s) }
}

/** HMAC-SHA256 (RFC 2104) of `parts`, from the padded key halves (two one-shot hashes). */
class Mac {
  readonly #inner: Buffer
  readonly #outer: Buffer

  constructor(key: Buffer) {
    const block = Buffer.alloc(64)
    key.copy(block)
    this.#inner = Buffer.from(block.map((b) => b ^ 0x36))
    this.#outer = Buffer.from(block.map((b) => b ^ 0x5c))
  }

  tag(seq: bigint, kind: number, ciphertext: Uint8Array): Buffer {
    const head = Buffer.alloc(13)
    head.writeBigUInt64BE(seq, 0)
    head.writeUInt8(kind, 8)
    head.writeUInt32BE(ciphertext.byteLength, 9)
    const inner = hash('sha256', Buffer.concat([this.#inner, head, ciphertext]), 'buffer')
    return hash('sha256', Buffer.concat([this.#outer, inner]), 'buffer').subarray(0, TAG)
  }
}

/** Seals one direction's frames: `u32 LE length`, `u8 kind`, ciphertext, tag. */
class Sealer {
  readonly #cipher: Cipheriv
  readonly #mac: Mac
  #seq = 0n

  constructor(keys: DirectionKeys) {
    this.#cipher = createCipheriv('aes-256-ctr', keys.enc, keys.iv)
    this.#mac = new Mac(keys.mac)
  }

  seal(plain: Uint8Array, kind = DATA): Buffer {
    const ciphertext = this.#cipher.update(plain)
    const head = Buffer.alloc(HEADER)
    head.writeUInt32LE(plain.byteLength + TAG, 0)
    head.writeUInt8(kind, 4)
    return Buffer.concat([head, ciphertext, this.#mac.tag(this.#seq++, kind, ciphertext)])
  }
}

/** Opens one direction's frames in order; a bad tag is fatal (the keystream cannot resync). */
class Opener {
  readonly #decipher: Decipheriv
  readonly #mac: Mac
  #seq = 0n

  constructor(keys: DirectionKeys) {
    this.#decipher = createDecipheriv('aes-256-ctr', keys.enc, keys.iv)
    this.#mac = new Mac(keys.mac)
  }

  /** `sealed` is the ciphertext and tag of one frame (without the header), `kind` its kind. */
  open(kind: number, sealed: Buffer): Uint8Array {
    const ciphertext = sealed.subarray(0, sealed.byteLength - TAG)
    const expected = this.#mac.tag(this.#seq++, kind, ciphertext)
    if (!timingSafeEqual(expected, sealed.subarray(sealed.byteLength - TAG))) {
      throw new ShardSessionError(
        'a direct-channel frame failed authentication (forged, replayed, reordered, or sealed for another link)',
      )
    }
    const plain = this.#decipher.update(ciphertext)
    return new Uint8Array(plain.buffer, plain.byteOffset, plain.byteLength)
  }
}

/**
 * A framed, sealed channel over a connected socket. `close()` sends a sealed close frame, and a
 * channel that receives one answers with its own, so both ends see a clean end; an end of the TCP
 * stream (or an error) without a close frame is a broken channel.
 */
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
