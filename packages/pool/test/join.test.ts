import { generateIdentity } from '@meshnet/identity'
import { describe, expect, it } from 'vitest'
import type { PoolSigner } from '../src/certificate.ts'
import { encodeCanonical } from '../src/encoding.ts'
import { JoinRequestError } from '../src/errors.ts'
import {
  createJoinRequest,
  decodeJoinRequest,
  decodeJoinResponse,
  encodeJoinRequest,
  encodeJoinResponse,
  generateJoinToken,
  type JoinRequest,
  type JoinResponse,
  joinRequestTokenValid,
  parseJoinToken,
  signJoinResponse,
} from '../src/join.ts'
import { certFor, newRoot, reasonOf, T0 } from './fixtures.ts'

function poolOf(root: ReturnType<typeof newRoot>) {
  return { id: root.poolId, name: 'lab', rootPublicKey: root.publicKey, createdAt: T0 }
}

const responseReason = (fn: () => unknown) => reasonOf('JoinResponseError', fn)

describe('join tokens', () => {
  it('carry the pool id and a secret, and parse back to the same token id', () => {
    const root = newRoot()
    const { token, tokenId } = generateJoinToken(root.poolId)
    expect(token).toMatch(new RegExp(`^meshjoin1\\.${root.poolId}\\.[a-z2-7]{52}$`))
    expect(parseJoinToken(token)).toMatchObject({ poolId: root.poolId, tokenId })
  })

  it('refuse a damaged token with an actionable message', () => {
    const root = newRoot()
    const { token } = generateJoinToken(root.poolId)
    expect(() => parseJoinToken(token.slice(0, -3))).toThrow(/secret part is damaged/)
    expect(() => parseJoinToken('hello')).toThrow(expect.objectContaining({ name: 'InvalidArgumentError' }))
  })
})

describe('join requests', () => {
  it('are signed by the device and prove the token without carrying its secret', () => {
    const root = newRoot()
    const device = generateIdentity()
    const { token, publicKey } = generateJoinToken(root.poolId)
    const { request, bytes } = createJoinRequest(device, { token, deviceName: 'kitchen laptop', now: T0 })
    expect(request.poolId).toBe(root.poolId)
    expect(request.nodeId).toBe(device.nodeId)
    const decoded = decodeJoinRequest(bytes)
    expect(decoded).toEqual(request)
    expect(joinRequestTokenValid(decoded, publicKey)).toBe(true)
    expect(Buffer.from(bytes).includes(Buffer.from(token.split('.')[2]!))).toBe(false)
    // Two requests never share a nonce.
    const again = createJoinRequest(device, { token, deviceName: 'kitchen laptop', now: T0 })
    expect(again.request.nonce).not.toEqual(request.nonce)
  })

  it('are refused when forged: signed by another key, or altered after signing', () => {
    const root = newRoot()
    const device = generateIdentity()
    const impostor = generateIdentity()
    const { request } = createJoinRequest(impostor, { poolId: root.poolId, deviceName: 'x', now: T0 })
    const claimingDevice: JoinRequest = {
      ...request,
      nodeId: device.nodeId,
      devicePublicKey: device.publicKey,
    }
    expect(() => decodeJoinRequest(encodeJoinRequest(claimingDevice))).toThrow(
      expect.objectContaining({ name: 'JoinRequestError', reason: 'bad-signature' }),
    )
    const renamed: JoinRequest = { ...request, deviceName: 'admin laptop' }
    expect(() => decodeJoinRequest(encodeJoinRequest(renamed))).toThrow(
      expect.objectContaining({ reason: 'bad-signature' }),
    )
  })

  it('are malformed when the token proof is half there', () => {
    const root = newRoot()
    const { token } = generateJoinToken(root.poolId)
    const { request } = createJoinRequest(generateIdentity(), { token, deviceName: 'x', now: T0 })
    const { tokenSignature: _dropped, ...half } = request
    let error: unknown
    try {
      decodeJoinRequest(encodeCanonical(half))
    } catch (err) {
      error = err
    }
    expect(error).toBeInstanceOf(JoinRequestError)
    expect((error as JoinRequestError).reason).toBe('malformed')
  })

  it('refuse a device name with control characters', () => {
    expect(() =>
      createJoinRequest(generateIdentity(), {
        poolId: newRoot().poolId,
        deviceName: 'evil\u001b[2J',
        now: T0,
      }),
    ).toThrow(/device name/)
  })
})

describe('join responses', () => {
  function setup() {
    const root = newRoot()
    const device = generateIdentity()
    const { request } = createJoinRequest(device, { poolId: root.poolId, deviceName: 'laptop', now: T0 })
    const certificate = certFor(root, root.poolId, { devicePublicKey: device.publicKey })
    return { root, device, request, certificate }
  }

  it('are accepted from the pool root for our request, certificate included', () => {
    const { root, request, certificate } = setup()
    const response = signJoinResponse(root, {
      pool: poolOf(root),
      request,
      outcome: { outcome: 'accepted', certificate },
      message: 'welcome',
      now: T0,
    })
    const bytes = encodeJoinResponse(response)
    const decoded = decodeJoinResponse(bytes, { request, now: T0 })
    expect(decoded).toEqual(response)
    expect(encodeJoinResponse(decoded)).toEqual(bytes)
  })

  it('are accepted from a delegated admin with a root-signed admin certificate', () => {
    const { root, request, certificate } = setup()
    const admin = generateIdentity()
    const adminCert = certFor(root, root.poolId, { devicePublicKey: admin.publicKey, role: 'admin' })
    const signer = { publicKey: admin.publicKey, sign: admin.sign, certificate: adminCert }
    const response = signJoinResponse(signer, {
      pool: poolOf(root),
      request,
      outcome: { outcome: 'accepted', certificate },
      message: '',
      now: T0,
    })
    expect(decodeJoinResponse(encodeJoinResponse(response), { request, now: T0 }).outcome).toBe('accepted')
    const unvouched = { ...response, signerCertificate: undefined }
    delete unvouched.signerCertificate
    expect(
      responseReason(() => decodeJoinResponse(encodeJoinResponse(unvouched), { request, now: T0 })),
    ).toBe('untrusted-signer')
  })

  it('are refused when they answer another request, come from another pool, or were altered', () => {
    const { root, request } = setup()
    const sign = (signer: PoolSigner, pool = poolOf(root), forRequest = request) =>
      encodeJoinResponse(
        signJoinResponse(signer, {
          pool,
          request: forRequest,
          outcome: { outcome: 'pending' },
          message: '',
          now: T0,
        }),
      )
    const other = newRoot()
    expect(responseReason(() => decodeJoinResponse(sign(other, poolOf(other)), { request, now: T0 }))).toBe(
      'wrong-pool',
    )
    // Another pool's root pretending to be ours: the root key does not hash to our pool id.
    expect(
      responseReason(() =>
        decodeJoinResponse(sign(other, { ...poolOf(other), id: root.poolId }), { request, now: T0 }),
      ),
    ).toBe('wrong-pool')
    // Our root key quoted, but signed by someone else.
    expect(responseReason(() => decodeJoinResponse(sign(other, poolOf(root)), { request, now: T0 }))).toBe(
      'untrusted-signer',
    )
    const earlier = createJoinRequest(generateIdentity(), {
      poolId: root.poolId,
      deviceName: 'x',
      now: T0,
    }).request
    expect(
      responseReason(() => decodeJoinResponse(sign(root, poolOf(root), earlier), { request, now: T0 })),
    ).toBe('not-for-this-request')
    const good = signJoinResponse(root, {
      pool: poolOf(root),
      request,
      outcome: { outcome: 'pending' },
      message: '',
    })
    const refused: JoinResponse = { ...good, outcome: 'refused', reason: 'denied' }
    expect(responseReason(() => decodeJoinResponse(encodeJoinResponse(refused), { request, now: T0 }))).toBe(
      'bad-signature',
    )
  })

  it('are refused when the certificate inside is for another device', () => {
    const { root, request } = setup()
    const someoneElse = certFor(root, root.poolId)
    const response = signJoinResponse(root, {
      pool: poolOf(root),
      request,
      outcome: { outcome: 'accepted', certificate: someoneElse },
      message: '',
      now: T0,
    })
    expect(responseReason(() => decodeJoinResponse(encodeJoinResponse(response), { request, now: T0 }))).toBe(
      'bad-certificate',
    )
  })
})
