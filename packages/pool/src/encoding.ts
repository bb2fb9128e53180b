import { createHash } from 'node:crypto'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { InvalidArgumentError } from '@meshnet/core'
import { domainSeparated } from '@meshnet/identity'
import { POOL_ID_PATTERN } from '@meshnet/protocols'
import { decode, encode, rfc8949EncodeOptions } from 'cborg'
import { base32 } from 'multiformats/bases/base32'
import { z } from 'zod'

/**
 * Size caps for every pool object, checked before any parsing. Strings and lists inside the objects
 * have their own caps in the schemas.
 */
export const POOL_LIMITS = Object.freeze({
  /** An encoded certificate, including a delegated issuer's certificate. */
  certificateBytes: 4096,
  /** An encoded join request (fits one LAN beacon datagram). */
  joinRequestBytes: 2048,
  /** An encoded join response, including the certificate and the signer's certificate. */
  joinResponseBytes: 4096,
  /** An encoded revocation list. */
  revocationListBytes: 131_072,
  /** Revoked serials, and separately revoked node ids, in one list. */
  revocationEntries: 1000,
  /** Characters in a pool name. */
  poolNameChars: 64,
  /** Characters in a device name. */
  deviceNameChars: 64,
  /** Characters in the human message of a join response. */
  responseMessageChars: 512,
})

/** Allowed difference between two computers' clocks, in both directions: 5 minutes. */
export const CLOCK_SKEW_MS = 5 * 60_000

const POOL_ID_PREFIX = 'pool-'
/** 16 bytes of the hash: 128 bits, 26 base32 characters. */
const POOL_ID_HASH_BYTES = 16

/**
 * A pool's id, derived from its root public key:
 * `"pool-" + base32(sha256(utf8("meshnet:pool-id-v1") || 0x00 || rootPublicKey)[0..16])`,
 * with RFC 4648 lowercase base32 and no padding (26 characters).
 */
export function poolIdFromRootKey(rootPublicKey: Uint8Array): string {
  const digest = createHash('sha256').update(domainSeparated('pool-id-v1', rootPublicKey)).digest()
  return `${POOL_ID_PREFIX}${base32.baseEncode(digest.subarray(0, POOL_ID_HASH_BYTES))}`
}

/** True when `value` has the form of a pool id (it is also safe as a directory name). */
export function isPoolId(value: unknown): value is string {
  return typeof value === 'string' && POOL_ID_PATTERN.test(value)
}

/** The node id (libp2p PeerId string) of a raw 32-byte Ed25519 public key. */
export function nodeIdFromPublicKey(publicKey: Uint8Array): string {
  return peerIdFromPublicKey(publicKeyFromRaw(publicKey)).toString()
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

export function toBase32(bytes: Uint8Array): string {
  return base32.baseEncode(bytes)
}

/** Decodes lowercase unpadded base32; undefined when the text is not that. */
export function fromBase32(text: string): Uint8Array | undefined {
  if (!/^[a-z2-7]*$/.test(text)) return undefined
  try {
    return base32.baseDecode(text)
  } catch {
    return undefined
  }
}

/** The form messages use for a node id: `12D3KooWAbCd…wxyz`. */
export function shortNodeId(nodeId: string): string {
  return nodeId.length <= 20 ? nodeId : `${nodeId.slice(0, 12)}…${nodeId.slice(-4)}`
}

/** `2026-11-20T10:00Z` (seconds only when they are not zero). */
export function formatTime(ms: number): string {
  const iso = new Date(ms).toISOString()
  return iso.endsWith(':00.000Z') ? `${iso.slice(0, 16)}Z` : `${iso.slice(0, 19)}Z`
}

// ---- schema building blocks -------------------------------------------------------------------

const bytesOf = (length: number, what: string) =>
  z
    .custom<Uint8Array>((value) => value instanceof Uint8Array, 'expected a byte string')
    .refine((b) => b.length === length, `${what} must be ${length} bytes`)

export const publicKeySchema = bytesOf(32, 'an Ed25519 public key')
export const signatureSchema = bytesOf(64, 'an Ed25519 signature')
export const nonceSchema = bytesOf(16, 'a nonce')
export const poolIdSchema = z.string().regex(POOL_ID_PATTERN, 'not a pool id')
/** Ed25519 PeerIds are 52 base58btc characters; the exact value is checked against the key. */
export const nodeIdSchema = z.string().regex(/^[1-9A-HJ-NP-Za-km-z]{40,60}$/, 'not a node id')
/** Milliseconds since 1970, a non-negative safe integer (CBOR unsigned integer). */
export const timestampSchema = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER)
/** 16 random bytes as 32 lowercase hex characters. */
export const serialSchema = z.string().regex(/^[0-9a-f]{32}$/, 'not a certificate serial')
/** Printable text: no control characters, no leading or trailing spaces. */
export const nameSchema = (maxChars: number) =>
  z
    .string()
    .min(1)
    .max(maxChars)
    .regex(/^[^\p{Cc}\p{Zl}\p{Zp}]*$/u, 'must not contain control characters')
    .refine((s) => s.trim() === s, 'must not start or end with spaces')

// ---- canonical CBOR ----------------------------------------------------------------------------

/**
 * The one encoding of every pool object: CBOR with RFC 8949 §4.2.1 core deterministic encoding
 * (shortest integers and lengths, definite lengths, map keys sorted bytewise), via cborg's
 * `rfc8949EncodeOptions`. Objects hold only text and byte strings, unsigned integers, arrays and
 * maps with text keys: no floats, no tags.
 */
export function encodeCanonical(value: unknown): Uint8Array {
  return encode(value, rfc8949EncodeOptions)
}

const STRICT_DECODE = {
  strict: true,
  allowIndefinite: false,
  allowUndefined: false,
  allowInfinity: false,
  allowNaN: false,
  allowBigInt: false,
  rejectDuplicateMapKeys: true,
  useMaps: true,
} as const

export type CanonicalDecodeResult<T> = { ok: true; value: T } | { ok: false; problem: string }

/**
 * Decodes untrusted bytes into a schema's output: size cap, strict CBOR decode, map conversion
 * (text keys only), schema check, and finally a byte comparison with the canonical re-encoding,
 * so that every accepted object has exactly one encoding. Never throws.
 */
export function decodeCanonical<T>(
  bytes: unknown,
  schema: z.ZodType<T>,
  maxBytes: number,
): CanonicalDecodeResult<T> {
  if (!(bytes instanceof Uint8Array)) return { ok: false, problem: 'not a byte array' }
  if (bytes.length > maxBytes) {
    return { ok: false, problem: `${bytes.length} bytes is over the ${maxBytes}-byte limit` }
  }
  let raw: unknown
  try {
    raw = plainValue(decode(bytes, STRICT_DECODE), 0)
  } catch (err) {
    return { ok: false, problem: `not valid CBOR (${(err as Error).message})` }
  }
  const parsed = schema.safeParse(raw)
  if (!parsed.success) return { ok: false, problem: describeIssue(parsed.error) }
  let again: Uint8Array
  try {
    again = encodeCanonical(parsed.data)
  } catch (err) {
    return { ok: false, problem: `cannot be re-encoded (${(err as Error).message})` }
  }
  if (!bytesEqual(again, bytes)) return { ok: false, problem: 'not in canonical CBOR form' }
  return { ok: true, value: parsed.data }
}

/** Checks a value against a schema (for objects handed over in memory). */
export function checkSchema<T>(value: unknown, schema: z.ZodType<T>): CanonicalDecodeResult<T> {
  const parsed = schema.safeParse(value)
  return parsed.success
    ? { ok: true, value: parsed.data }
    : { ok: false, problem: describeIssue(parsed.error) }
}

export function describeIssue(error: z.ZodError): string {
  const issue = error.issues[0]
  if (issue === undefined) return 'invalid'
  const path = issue.path.join('.')
  return path === '' ? issue.message : `${path}: ${issue.message}`
}

const MAX_DEPTH = 8

/** Maps (from `useMaps`) become plain objects; only text keys, never `__proto__`. */
function plainValue(value: unknown, depth: number): unknown {
  if (depth > MAX_DEPTH) throw new Error(`nested deeper than ${MAX_DEPTH} levels`)
  if (value instanceof Map) {
    const entries: [string, unknown][] = []
    for (const [key, item] of value) {
      if (typeof key !== 'string') throw new Error('map keys must be text')
      if (key === '__proto__') throw new Error('map key __proto__ is not allowed')
      entries.push([key, plainValue(item, depth + 1)])
    }
    return Object.fromEntries(entries)
  }
  if (Array.isArray(value)) return value.map((item) => plainValue(item, depth + 1))
  return value
}

/** A copy of `value` without the named fields (the bytes a signature covers leave them out). */
export function omitFields<T extends object, K extends keyof T>(value: T, keys: readonly K[]): Omit<T, K> {
  const out: Record<string, unknown> = {}
  for (const [key, item] of Object.entries(value)) {
    if (!(keys as readonly string[]).includes(key) && item !== undefined) out[key] = item
  }
  return out as Omit<T, K>
}

/** The printable form of a pool root public key (lowercase base32, 52 characters). */
export function formatRootPublicKey(publicKey: Uint8Array): string {
  return toBase32(publicKey)
}

/** Parses `formatRootPublicKey` output; InvalidArgumentError names what is wrong. */
export function parseRootPublicKey(text: string): Uint8Array {
  const bytes = fromBase32(text.trim().toLowerCase())
  if (bytes === undefined || bytes.length !== 32) {
    throw new InvalidArgumentError(`pool root public key ${JSON.stringify(text)} is not 32 bytes of base32`, {
      hint: 'copy the "Pool Root Public Key" line that `mesh pool-create` printed',
    })
  }
  return bytes
}
