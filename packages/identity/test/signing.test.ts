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

  it('keeps domain and payload apart with a NUL separator', () => {
    expect(domainSeparated('ab', bytes('c'))).not.toEqual(domainSeparated('a', bytes('bc')))
    expect(() => domainSeparated('', bytes('x'))).toThrow(TypeError)
    expect(() => domainSeparated('a\u0000b', bytes('x'))).toThrow(TypeError)
  })
})
