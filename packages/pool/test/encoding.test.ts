import { isMeshError } from '@meshnet/core'
import { publicKeyOfSeed, randomSeed } from '@meshnet/identity'
import { describe, expect, it } from 'vitest'
import { z } from 'zod'
import { decodeCertificate, issueCertificate } from '../src/certificate.ts'
import {
  decodeCanonical,
  encodeCanonical,
  isPoolId,
  POOL_LIMITS,
  poolIdFromRootKey,
} from '../src/encoding.ts'
import { decodeJoinRequest } from '../src/join.ts'
import { decodeRevocationList } from '../src/revocation.ts'
import { newRoot } from './fixtures.ts'

const schema = z.strictObject({ a: z.number().int(), b: z.string() })

describe('pool ids', () => {
  it('derives a printable, path-safe id from the root public key, the same every time', () => {
    const key = publicKeyOfSeed(new Uint8Array(32).fill(7))
    const id = poolIdFromRootKey(key)
    expect(id).toMatch(/^pool-[a-z2-7]{26}$/)
    expect(poolIdFromRootKey(Uint8Array.from(key))).toBe(id)
    expect(isPoolId(id)).toBe(true)
    expect(poolIdFromRootKey(publicKeyOfSeed(new Uint8Array(32).fill(8)))).not.toBe(id)
    expect(isPoolId('pool-../../etc')).toBe(false)
  })
})

describe('canonical CBOR', () => {
  it('encodes maps with keys in bytewise order regardless of insertion order', () => {
    expect(encodeCanonical({ b: 'x', a: 1 })).toEqual(encodeCanonical({ a: 1, b: 'x' }))
    // {"a": 1, "b": "x"} in RFC 8949 deterministic form.
    expect(Buffer.from(encodeCanonical({ b: 'x', a: 1 })).toString('hex')).toBe('a261610161626178')
  })

  it('accepts only the canonical encoding of a value', () => {
    const good = decodeCanonical(Buffer.from('a261610161626178', 'hex'), schema, 100)
    expect(good).toEqual({ ok: true, value: { a: 1, b: 'x' } })
    const rejects: Record<string, [string, string]> = {
      'keys out of order': ['a261626178616101', 'not in canonical CBOR form'],
      'integer not in shortest form': ['a26161180161626178', 'more bytes than necessary'],
      'indefinite-length map': ['bf61610161626178ff', 'indefinite length'],
      'duplicate key': ['a361610161610161626178', 'repeat map key'],
      'trailing bytes': ['a26161016162617800', 'too many terminals'],
      'float for an integer': ['a26161f93c0061626178', 'not in canonical CBOR form'],
      'undefined value': ['a26161f761626178', 'undefined'],
      'a tag': ['a26161c10161626178', 'tag not supported'],
      'a non-text key': ['a2010161626178', 'map keys must be text'],
      'a __proto__ key': ['a3695f5f70726f746f5f5fa061610161626178', '__proto__'],
    }
    for (const [what, [hex, problem]] of Object.entries(rejects)) {
      const result = decodeCanonical(Buffer.from(hex, 'hex'), schema, 100)
      expect(result.ok ? 'accepted' : result.problem, what).toContain(problem)
    }
  })

  it('checks the size before decoding anything', () => {
    const result = decodeCanonical(new Uint8Array(101), schema, 100)
    expect(result).toEqual({ ok: false, problem: '101 bytes is over the 100-byte limit' })
  })

  it('turns arbitrary bytes into typed MeshErrors only', () => {
    const root = newRoot()
    const { poolId, publicKey: rootPublicKey } = root
    const cert = issueCertificate(root, {
      poolId,
      devicePublicKey: publicKeyOfSeed(randomSeed()),
      role: 'member',
    })
    const valid = encodeCanonical(cert)
    // Deterministic pseudo-random mutations of a valid certificate, plus deep nesting.
    let state = 12345
    const next = () => {
      state = (state * 1103515245 + 12345) >>> 0
      return state
    }
    const inputs: Uint8Array[] = [new Uint8Array(0), new Uint8Array(3000).fill(0x81)]
    for (let i = 0; i < 300; i++) {
      const copy = Uint8Array.from(valid)
      for (let j = 0; j <= i % 4; j++) copy[next() % copy.length] = next() & 0xff
      inputs.push(i % 10 === 0 ? copy.subarray(0, next() % copy.length) : copy)
    }
    for (const input of inputs) {
      for (const decode of [
        () => decodeCertificate(input, { poolId, rootPublicKey }),
        () => decodeJoinRequest(input),
        () => decodeRevocationList(input, { poolId, rootPublicKey }),
      ]) {
        try {
          decode()
        } catch (err) {
          expect(isMeshError(err), String(err)).toBe(true)
        }
      }
    }
    expect(POOL_LIMITS.certificateBytes).toBeGreaterThan(valid.length)
  })
})
