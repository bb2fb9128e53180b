import { generateIdentity } from '@meshnet/identity'
import { describe, expect, it } from 'vitest'
import {
  type Certificate,
  decodeCertificate,
  encodeCertificate,
  issueCertificate,
  type PoolSigner,
  type VerifyCertificateOptions,
  verifyCertificate,
} from '../src/certificate.ts'
import { CLOCK_SKEW_MS, encodeCanonical } from '../src/encoding.ts'
import type { CertificateError } from '../src/errors.ts'
import { createRevocationList } from '../src/revocation.ts'
import { certFor, reasonOf as certificateReason, newRoot, T0 } from './fixtures.ts'

const DAY = 24 * 60 * 60_000

function optionsFor(root: ReturnType<typeof newRoot>, extra: Partial<VerifyCertificateOptions> = {}) {
  return { poolId: root.poolId, rootPublicKey: root.publicKey, now: T0 + DAY, ...extra }
}

const reasonOf = (fn: () => unknown) => certificateReason('CertificateError', fn)

describe('certificates', () => {
  it('verifies a member certificate signed by the pool root and names the device by its node id', () => {
    const root = newRoot()
    const device = generateIdentity()
    const cert = certFor(root, root.poolId, { devicePublicKey: device.publicKey, ttlMs: 30 * DAY })
    expect(cert.nodeId).toBe(device.nodeId)
    expect(cert.serial).toMatch(/^[0-9a-f]{32}$/)
    expect(cert.expiresAt - cert.issuedAt).toBe(30 * DAY)
    expect(() => verifyCertificate(cert, optionsFor(root))).not.toThrow()
  })

  it('encodes the same certificate to the same bytes, and decodes back to an equal certificate', () => {
    const root = newRoot()
    const cert = certFor(root, root.poolId, { role: 'client' })
    const bytes = encodeCertificate(cert)
    // Same fields in another insertion order: same bytes.
    const shuffled = Object.fromEntries(Object.entries(cert).reverse()) as Certificate
    expect(encodeCertificate(shuffled)).toEqual(bytes)
    const decoded = decodeCertificate(bytes, optionsFor(root))
    expect(decoded).toEqual(cert)
    expect(encodeCertificate(decoded)).toEqual(bytes)
  })

  it('rejects a certificate signed by another pool root', () => {
    const root = newRoot()
    const other = newRoot()
    const device = generateIdentity()
    // Issued by another pool's root but claiming our pool id: the issuer is unknown here.
    const foreign = certFor(other, root.poolId, { devicePublicKey: device.publicKey })
    expect(reasonOf(() => verifyCertificate(foreign, optionsFor(root)))).toBe('untrusted-issuer')
    // The same, pretending our root issued it: the signature gives it away.
    const pretending = { ...foreign, issuerPublicKey: root.publicKey }
    expect(reasonOf(() => verifyCertificate(pretending, optionsFor(root)))).toBe('bad-signature')
    // A genuine certificate of the other pool is for the wrong pool.
    const otherPools = certFor(other, other.poolId, { devicePublicKey: device.publicKey })
    expect(reasonOf(() => verifyCertificate(otherPools, optionsFor(root)))).toBe('wrong-pool')
  })

  it('rejects a certificate whose fields were changed after signing', () => {
    const root = newRoot()
    const cert = certFor(root, root.poolId, { role: 'client' })
    expect(reasonOf(() => verifyCertificate({ ...cert, role: 'admin' }, optionsFor(root)))).toBe(
      'bad-signature',
    )
    expect(
      reasonOf(() => verifyCertificate({ ...cert, expiresAt: cert.expiresAt + DAY }, optionsFor(root))),
    ).toBe('bad-signature')
  })

  it('rejects a certificate whose node id is not the PeerId of its device key', () => {
    const root = newRoot()
    const cert = certFor(root, root.poolId)
    const other = generateIdentity().nodeId
    expect(reasonOf(() => verifyCertificate({ ...cert, nodeId: other }, optionsFor(root)))).toBe(
      'node-id-mismatch',
    )
  })

  it('rejects an expired certificate with a message that says when and what to do', () => {
    const root = newRoot()
    const device = generateIdentity()
    const cert = certFor(root, root.poolId, {
      devicePublicKey: device.publicKey,
      issuedAt: T0 - 30 * DAY,
      ttlMs: 30 * DAY,
    })
    // Within the clock-skew allowance it still counts as valid.
    expect(() => verifyCertificate(cert, optionsFor(root, { now: T0 + CLOCK_SKEW_MS }))).not.toThrow()
    let error: CertificateError | undefined
    try {
      verifyCertificate(cert, optionsFor(root, { now: T0 + CLOCK_SKEW_MS + 1 }))
    } catch (err) {
      error = err as CertificateError
    }
    expect(error?.name).toBe('CertificateError')
    expect(error?.reason).toBe('expired')
    expect(error?.message).toBe(
      `pool certificate for ${device.nodeId.slice(0, 12)}…${device.nodeId.slice(-4)} expired at 2026-11-20T10:00Z; ask the pool admin to renew it (mesh pool-approve)`,
    )
  })

  it('rejects a certificate that is not valid yet beyond the clock skew', () => {
    const root = newRoot()
    const cert = certFor(root, root.poolId)
    expect(() => verifyCertificate(cert, optionsFor(root, { now: T0 - CLOCK_SKEW_MS }))).not.toThrow()
    expect(reasonOf(() => verifyCertificate(cert, optionsFor(root, { now: T0 - CLOCK_SKEW_MS - 1 })))).toBe(
      'not-yet-valid',
    )
    expect(
      reasonOf(() => verifyCertificate(cert, optionsFor(root, { now: T0 - 1000, clockSkewMs: 0 }))),
    ).toBe('not-yet-valid')
  })

  it('rejects a revoked certificate, by serial or by node id', () => {
    const root = newRoot()
    const cert = certFor(root, root.poolId)
    const bySerial = createRevocationList(root, { poolId: root.poolId, version: 1, serials: [cert.serial] })
    const byNode = createRevocationList(root, { poolId: root.poolId, version: 2, nodeIds: [cert.nodeId] })
    const unrelated = createRevocationList(root, {
      poolId: root.poolId,
      version: 3,
      serials: ['0'.repeat(32)],
    })
    expect(reasonOf(() => verifyCertificate(cert, optionsFor(root, { revocations: bySerial })))).toBe(
      'revoked',
    )
    expect(reasonOf(() => verifyCertificate(cert, optionsFor(root, { revocations: byNode })))).toBe('revoked')
    expect(() => verifyCertificate(cert, optionsFor(root, { revocations: unrelated }))).not.toThrow()
  })

  it('reports malformed input as malformed, never as another error', () => {
    const root = newRoot()
    expect(reasonOf(() => decodeCertificate(new Uint8Array([0xff, 0x00]), optionsFor(root)))).toBe(
      'malformed',
    )
    expect(reasonOf(() => decodeCertificate(new Uint8Array(5000), optionsFor(root)))).toBe('malformed')
    expect(
      reasonOf(() => decodeCertificate(encodeCanonical({ type: 'pool-certificate-v1' }), optionsFor(root))),
    ).toBe('malformed')
    expect(reasonOf(() => verifyCertificate({} as Certificate, optionsFor(root)))).toBe('malformed')
  })
})

describe('delegation', () => {
  function delegate(root: ReturnType<typeof newRoot>) {
    const admin = generateIdentity()
    const adminCert = certFor(root, root.poolId, { devicePublicKey: admin.publicKey, role: 'admin' })
    const signer: PoolSigner = { publicKey: admin.publicKey, sign: admin.sign, certificate: adminCert }
    return { admin, adminCert, signer }
  }

  it('accepts a member certificate signed by an admin whose certificate the root signed', () => {
    const root = newRoot()
    const { signer, adminCert } = delegate(root)
    const cert = certFor(signer, root.poolId)
    expect(cert.issuerCertificate).toEqual(adminCert)
    expect(() => verifyCertificate(cert, optionsFor(root))).not.toThrow()
    const bytes = encodeCertificate(cert)
    expect(decodeCertificate(bytes, optionsFor(root))).toEqual(cert)
  })

  it('does not let a delegated admin issue admin certificates', () => {
    const root = newRoot()
    const { signer, adminCert, admin } = delegate(root)
    expect(() =>
      issueCertificate(signer, {
        poolId: root.poolId,
        devicePublicKey: generateIdentity().publicKey,
        role: 'admin',
      }),
    ).toThrow(/cannot issue admin/)
    // Built by hand, such a certificate is refused.
    const forged = issueCertificate(
      { publicKey: admin.publicKey, sign: admin.sign },
      { poolId: root.poolId, devicePublicKey: generateIdentity().publicKey, role: 'admin', issuedAt: T0 },
    )
    expect(
      reasonOf(() => verifyCertificate({ ...forged, issuerCertificate: adminCert }, optionsFor(root))),
    ).toBe('untrusted-issuer')
  })

  it('refuses certificates issued by a member, or by an admin certificate from another pool', () => {
    const root = newRoot()
    const memberDevice = generateIdentity()
    const memberCert = certFor(root, root.poolId, { devicePublicKey: memberDevice.publicKey })
    const byMember = issueCertificate(
      { publicKey: memberDevice.publicKey, sign: memberDevice.sign },
      { poolId: root.poolId, devicePublicKey: generateIdentity().publicKey, role: 'client', issuedAt: T0 },
    )
    expect(
      reasonOf(() => verifyCertificate({ ...byMember, issuerCertificate: memberCert }, optionsFor(root))),
    ).toBe('untrusted-issuer')

    const other = newRoot()
    const { signer } = delegate(other)
    const byForeignAdmin = certFor(signer, root.poolId)
    expect(reasonOf(() => verifyCertificate(byForeignAdmin, optionsFor(root)))).toBe('untrusted-issuer')
  })

  it('refuses certificates from an admin whose own certificate was revoked or expired', () => {
    const root = newRoot()
    const { signer, adminCert } = delegate(root)
    const cert = certFor(signer, root.poolId, { ttlMs: 365 * DAY })
    const revocations = createRevocationList(root, {
      poolId: root.poolId,
      version: 1,
      serials: [adminCert.serial],
    })
    let error: CertificateError | undefined
    try {
      verifyCertificate(cert, optionsFor(root, { revocations }))
    } catch (err) {
      error = err as CertificateError
    }
    expect(error?.reason).toBe('untrusted-issuer')
    expect((error?.cause as CertificateError | undefined)?.reason).toBe('revoked')
    expect(reasonOf(() => verifyCertificate(cert, optionsFor(root, { now: T0 + 60 * DAY })))).toBe(
      'untrusted-issuer',
    )
  })
})
