import {
  type Cipheriv,
  createCipheriv,
  createDecipheriv,
  type Decipheriv,
  hash,
  hkdfSync,
  timingSafeEqual,
} from 'node:crypto'
import { ShardSessionError } from './errors.ts'

// The direct channel's sealing (see direct.ts and docs/protocols.md, "Direct channel"): keys derived
// with HKDF from the offered secret, salted with a hash of the link they are bound to, and each
// direction sealed like SSH's aes256-ctr with hmac-sha2-256-etm.

/** The direct channel's wire version: in the hello, the accept and the key derivation. */
export const VERSION = 'meshnet-shard-direct/2'
export const HELLO = new TextEncoder().encode(`${VERSION} hello`)
export const ACCEPT = new TextEncoder().encode(`${VERSION} accept`)
/** Bytes before each frame's ciphertext: `u32 LE` ciphertext-and-tag length, `u8` kind. */
export const HEADER = 5
export const DATA = 0
/** The last frame of a direction: empty, sealed like any other. */
export const CLOSE = 1
/** Bytes of the (truncated) HMAC-SHA256 tag after each frame's ciphertext. */
export const TAG = 16
export const ID_BYTES = 16

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

export function deriveKeys(
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
export class Sealer {
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
export class Opener {
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
