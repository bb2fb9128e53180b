import { randomBytes } from 'node:crypto'
import { generateIdentity, verifySignature } from '@meshnet/identity'
import { decode, encode } from 'cborg'
import { describe, expect, it } from 'vitest'
import { BEACON_DOMAIN, decodeBeacon, encodeBeacon, MAX_BEACON_BYTES } from '../../src/beacon/envelope.ts'
import type { BeaconDropReason } from '../../src/beacon/errors.ts'

const alice = generateIdentity()
const bob = generateIdentity()

function beacon(body: unknown, extra: { to?: string; type?: string } = {}) {
  return encodeBeacon(alice, {
    type: extra.type ?? 'presence',
    body,
    ...(extra.to === undefined ? {} : { to: extra.to }),
    timestamp: 1_700_000_000_000,
    nonce: randomBytes(16),
  })
}

/** A version-1 datagram around any payload fields, signed by `signer` under `domain`. */
function craft(fields: Record<string, unknown>, signer = alice, domain = BEACON_DOMAIN): Uint8Array {
  const payload = encode(fields)
  return encode([1, payload, signer.sign(domain, payload)])
}

function validFields(): Record<string, unknown> {
  return { t: 'presence', k: alice.publicKey, n: alice.nodeId, ts: 1, nc: randomBytes(16), b: null }
}

function dropReason(data: Uint8Array, self?: string): BeaconDropReason | 'accepted' {
  try {
    decodeBeacon(data, self === undefined ? {} : { self })
    return 'accepted'
  } catch (err) {
    expect((err as Error).name).toBe('BeaconDropError')
    return (err as { reason: BeaconDropReason }).reason
  }
}

describe('encodeBeacon / decodeBeacon', () => {
  it('round-trips type, sender, timestamp, nonce, recipient and a CBOR body', () => {
    const nonce = randomBytes(16)
    const body = { addrs: ['/ip4/127.0.0.1/tcp/4001'], bytes: new Uint8Array([1, 2, 3]), n: 1.5, ok: true }
    const data = encodeBeacon(alice, {
      type: 'pool-join-request',
      body,
      to: bob.nodeId,
      timestamp: 1_700_000_000_123,
      nonce,
    })
    const decoded = decodeBeacon(data, { self: bob.nodeId })
    expect(decoded).toEqual({
      type: 'pool-join-request',
      publicKey: alice.publicKey,
      nodeId: alice.nodeId,
      timestamp: 1_700_000_000_123,
      nonce: new Uint8Array(nonce),
      to: bob.nodeId,
      body,
    })
  })

  it('is a CBOR array [1, payload, signature] whose signature the identity package verifies', () => {
    const [version, payload, signature] = decode(beacon({ hello: 'world' })) as [
      number,
      Uint8Array,
      Uint8Array,
    ]
    expect(version).toBe(1)
    expect(verifySignature(alice.publicKey, 'lan-beacon/v1', payload, signature)).toBe(true)
    expect(verifySignature(alice.publicKey, 'ring-announcement/v1', payload, signature)).toBe(false)
    expect(Object.keys(decode(payload) as object).sort()).toEqual(['b', 'k', 'n', 'nc', 't', 'ts'])
  })

  it('omits undefined object properties and keeps __proto__ as plain data', () => {
    const data = beacon({ a: 1, gone: undefined })
    expect(decodeBeacon(data).body).toEqual({ a: 1 })
    const sneaky = craft({ ...validFields(), b: JSON.parse('{"__proto__": {"polluted": true}}') })
    const body = decodeBeacon(sneaky).body as Record<string, unknown>
    expect(Object.getPrototypeOf(body)).toBe(Object.prototype)
    expect(({} as Record<string, unknown>).polluted).toBeUndefined()
  })

  it('refuses to encode what receivers would drop', () => {
    expect(() => beacon(undefined)).toThrow(/cannot encode/)
    expect(() => beacon({ f: () => 1 })).toThrow(/cannot encode/)
    expect(() => beacon({ x: Number.NaN })).toThrow(/cannot encode/)
    expect(() => beacon({ x: 2n ** 70n })).toThrow(/cannot encode/)
    let deep: unknown = 1
    for (let i = 0; i < 17; i++) deep = [deep]
    expect(() => beacon(deep)).toThrow(/nested more than 16 deep/)
    expect(() => beacon({}, { type: 'Presence' })).toThrow(
      expect.objectContaining({ name: 'InvalidArgumentError' }),
    )
    expect(() => beacon({}, { type: '' })).toThrow(expect.objectContaining({ name: 'InvalidArgumentError' }))
    expect(() => beacon(new Uint8Array(MAX_BEACON_BYTES))).toThrow(
      expect.objectContaining({ name: 'BeaconTooLargeError' }),
    )
  })

  it('drops datagrams over the size limit before parsing them', () => {
    expect(dropReason(new Uint8Array(MAX_BEACON_BYTES + 1))).toBe('oversized')
    expect(decodeBeacon(beacon({ hello: 'world' }), { maxBytes: 4096 }).nodeId).toBe(alice.nodeId)
    expect(() => decodeBeacon(beacon(new Uint8Array(300)), { maxBytes: 256 })).toThrow(/over the 256-byte/)
  })

  it('drops garbage, truncated and wrongly shaped datagrams as malformed', () => {
    const good = beacon({ hello: 'world' })
    expect(dropReason(new Uint8Array(0))).toBe('malformed')
    expect(dropReason(randomBytes(100))).toBe('malformed')
    for (let cut = 1; cut < good.length; cut += 7) expect(dropReason(good.subarray(0, cut))).toBe('malformed')
    expect(dropReason(new Uint8Array([...good, 0]))).toBe('malformed')
    expect(dropReason(encode({ v: 1 }))).toBe('malformed')
    expect(dropReason(encode([1, new Uint8Array(10), new Uint8Array(63)]))).toBe('malformed')
    expect(dropReason(craft({ ...validFields(), t: 'UPPER' }))).toBe('malformed')
    expect(dropReason(craft({ ...validFields(), nc: new Uint8Array(8) }))).toBe('malformed')
    expect(dropReason(craft({ ...validFields(), extra: 1 }))).toBe('malformed')
    expect(dropReason(craft({ ...validFields(), ts: -1 }))).toBe('malformed')
    const { b: _body, ...noBody } = validFields()
    expect(dropReason(craft(noBody))).toBe('malformed')
  })

  it('drops other versions as bad-version', () => {
    const [, payload, signature] = decode(beacon({ hello: 'world' })) as [number, Uint8Array, Uint8Array]
    expect(dropReason(encode([2, payload, signature]))).toBe('bad-version')
    expect(dropReason(encode([0]))).toBe('bad-version')
  })

  it('drops a beacon for another node only when told who we are', () => {
    const data = beacon({}, { to: bob.nodeId })
    expect(dropReason(data, alice.nodeId)).toBe('not-for-us')
    expect(dropReason(data, bob.nodeId)).toBe('accepted')
    expect(dropReason(data)).toBe('accepted')
  })

  it('drops a node id that is not the PeerId of the key', () => {
    expect(dropReason(craft({ ...validFields(), n: bob.nodeId }))).toBe('bad-node-id')
    expect(dropReason(craft({ ...validFields(), n: 'not-a-peer-id' }))).toBe('bad-node-id')
  })

  it('drops signatures by another key, under another domain, or over other bytes', () => {
    expect(dropReason(craft(validFields()))).toBe('accepted')
    expect(dropReason(craft(validFields(), bob))).toBe('bad-signature')
    expect(dropReason(craft(validFields(), alice, 'ring-announcement/v1'))).toBe('bad-signature')
    const flipped = beacon({ hello: 'world' })
    flipped[flipped.length - 1]! ^= 0x01
    expect(dropReason(flipped)).toBe('bad-signature')
  })
})
