import { describe, expect, it } from 'vitest'
import {
  domainSeparated,
  publicKeyOfSeed,
  randomSeed,
  signWithSeed,
  verifySignature,
} from '../src/signing.ts'

const bytes = (text: string) => new TextEncoder().encode(text)

describe('domain-separated signatures', () => {
  const seed = randomSeed()
  const publicKey = publicKeyOfSeed(seed)

  it('verifies what it signed', () => {
    expect(verifySignature(publicKey, 'beacon', bytes('x'), signWithSeed(seed, 'beacon', bytes('x')))).toBe(
      true,
    )
  })

  it('rejects a signature made for another domain', () => {
    const signature = signWithSeed(seed, 'beacon', bytes('x'))
    expect(verifySignature(publicKey, 'certificate', bytes('x'), signature)).toBe(false)
  })

  it('rejects a changed payload, another key, and malformed input without throwing', () => {
    const signature = signWithSeed(seed, 'beacon', bytes('x'))
    expect(verifySignature(publicKey, 'beacon', bytes('y'), signature)).toBe(false)
    expect(verifySignature(publicKeyOfSeed(randomSeed()), 'beacon', bytes('x'), signature)).toBe(false)
    expect(verifySignature(publicKey.subarray(1), 'beacon', bytes('x'), signature)).toBe(false)
    expect(verifySignature(publicKey, 'beacon', bytes('x'), signature.subarray(1))).toBe(false)
    expect(verifySignature(new Uint8Array(32).fill(255), 'beacon', bytes('x'), signature)).toBe(false)
  })

  it('derives the public key of a seed as RFC 8032 does, and as libp2p does', async () => {
    const hex = (h: string) => new Uint8Array(Buffer.from(h, 'hex'))
    // RFC 8032, section 7.1, test 1.
    const rfcSeed = hex('9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60')
    expect(publicKeyOfSeed(rfcSeed)).toEqual(
      hex('d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a'),
    )
    const { generateKeyPairFromSeed } = await import('@libp2p/crypto/keys')
    const libp2pKey = await generateKeyPairFromSeed('Ed25519', seed)
    expect(publicKeyOfSeed(seed)).toEqual(libp2pKey.publicKey.raw)
    expect(randomSeed()).toHaveLength(32)
    expect(randomSeed()).not.toEqual(randomSeed())
  })

  it('keeps domain and payload apart with a NUL separator', () => {
    expect(domainSeparated('ab', bytes('c'))).not.toEqual(domainSeparated('a', bytes('bc')))
    expect(() => domainSeparated('', bytes('x'))).toThrow(TypeError)
    expect(() => domainSeparated('a\u0000b', bytes('x'))).toThrow(TypeError)
  })
})
