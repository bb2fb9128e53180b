import { createPrivateKey, createPublicKey, type KeyObject, randomBytes, sign, verify } from 'node:crypto'

const encoder = new TextEncoder()

// DER prefixes that wrap a raw 32-byte Ed25519 key as PKCS#8 (private) or SPKI (public), so that
// node:crypto (OpenSSL, ~10× faster than pure JS) signs and verifies. Both are RFC 8410.
const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex')

/**
 * Every signature Meshnet makes covers a domain string first, so that a signature made for one
 * purpose (a beacon, a certificate, a gossip message) can never be replayed as another.
 * The signed bytes are `utf8("meshnet:" + domain) || 0x00 || payload`.
 */
export function domainSeparated(domain: string, payload: Uint8Array): Uint8Array {
  if (domain.length === 0 || domain.includes('\u0000')) {
    throw new TypeError('signature domain must be a non-empty string without NUL bytes')
  }
  const prefix = encoder.encode(`meshnet:${domain}`)
  const out = new Uint8Array(prefix.length + 1 + payload.length)
  out.set(prefix, 0)
  out.set(payload, prefix.length + 1)
  return out
}

/** A signing key for a 32-byte seed, for repeated signing (see `signWithSeed`). */
export function signingKey(seed: Uint8Array): KeyObject {
  if (seed.length !== 32) throw new TypeError(`an Ed25519 seed has 32 bytes, got ${seed.length}`)
  return createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' })
}

/** Signs `payload` under `domain` with a 32-byte Ed25519 seed (or a key from `signingKey`). */
export function signWithSeed(seed: Uint8Array | KeyObject, domain: string, payload: Uint8Array): Uint8Array {
  const key = seed instanceof Uint8Array ? signingKey(seed) : seed
  return new Uint8Array(sign(null, domainSeparated(domain, payload), key))
}

const publicKeys = new Map<string, KeyObject>()

/**
 * Verifies a signature made by {@link signWithSeed}. Returns false for any malformed input
 * (wrong lengths, a point that is not on the curve) instead of throwing.
 */
export function verifySignature(
  publicKey: Uint8Array,
  domain: string,
  payload: Uint8Array,
  signature: Uint8Array,
): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false
  try {
    const id = Buffer.from(publicKey).toString('base64')
    let key = publicKeys.get(id)
    if (key === undefined) {
      key = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: 'der', type: 'spki' })
      if (publicKeys.size >= 4096) publicKeys.clear() // bounded: keys come from the network
      publicKeys.set(id, key)
    }
    return verify(null, domainSeparated(domain, payload), key, signature)
  } catch {
    return false
  }
}

/**
 * The Ed25519 public key of a 32-byte seed, by OpenSSL: the first call of a pure-JS one builds its
 * tables, 40 ms of every `mesh` command's start.
 */
export function publicKeyOfSeed(seed: Uint8Array): Uint8Array {
  const spki = createPublicKey(signingKey(seed)).export({ format: 'der', type: 'spki' })
  return new Uint8Array(spki.subarray(SPKI_PREFIX.length))
}

/** A fresh random 32-byte Ed25519 seed. */
export function randomSeed(): Uint8Array {
  return new Uint8Array(randomBytes(32))
}
