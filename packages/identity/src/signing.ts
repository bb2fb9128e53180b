import * as ed from '@noble/ed25519'
import { sha512 } from '@noble/hashes/sha2.js'

ed.hashes.sha512 = sha512

const encoder = new TextEncoder()

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

/** Signs `payload` under `domain` with a 32-byte Ed25519 seed. */
export function signWithSeed(seed: Uint8Array, domain: string, payload: Uint8Array): Uint8Array {
  return ed.sign(domainSeparated(domain, payload), seed)
}

/**
 * Verifies a signature made by {@link signWithSeed}. Returns false for any malformed input
 * (wrong lengths, non-canonical points) instead of throwing.
 */
export function verifySignature(
  publicKey: Uint8Array,
  domain: string,
  payload: Uint8Array,
  signature: Uint8Array,
): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false
  try {
    return ed.verify(signature, domainSeparated(domain, payload), publicKey)
  } catch {
    return false
  }
}

/** The Ed25519 public key of a 32-byte seed. */
export function publicKeyOfSeed(seed: Uint8Array): Uint8Array {
  return ed.getPublicKey(seed)
}

/** A fresh random 32-byte Ed25519 seed. */
export function randomSeed(): Uint8Array {
  return ed.utils.randomSecretKey()
}
