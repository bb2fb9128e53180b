import { randomBytes } from 'node:crypto'
import { InvalidArgumentError } from '@meshnet/core'
import { verifySignature } from '@meshnet/identity'
import { z } from 'zod'
import {
  bytesEqual,
  CLOCK_SKEW_MS,
  checkSchema,
  decodeCanonical,
  encodeCanonical,
  formatTime,
  nodeIdFromPublicKey,
  nodeIdSchema,
  omitFields,
  POOL_LIMITS,
  poolIdFromRootKey,
  poolIdSchema,
  publicKeySchema,
  serialSchema,
  shortNodeId,
  signatureSchema,
  timestampSchema,
} from './encoding.ts'
import { CertificateError } from './errors.ts'
import type { RevocationList } from './revocation.ts'

/** The `type` field of a certificate, and the domain its signature is made under. */
export const CERTIFICATE_DOMAIN = 'pool-certificate-v1'

/** Validity of a certificate issued without an explicit `ttlMs`: 30 days. */
export const DEFAULT_CERTIFICATE_TTL_MS = 30 * 24 * 60 * 60_000

export const POOL_ROLES = ['admin', 'member', 'client'] as const
/**
 * `admin` may approve joins and (with a root-signed certificate) issue member and client
 * certificates; `member` contributes memory and compute; `client` only submits jobs.
 */
export type PoolRole = (typeof POOL_ROLES)[number]

const certificateFields = {
  type: z.literal(CERTIFICATE_DOMAIN),
  poolId: poolIdSchema,
  nodeId: nodeIdSchema,
  devicePublicKey: publicKeySchema,
  role: z.enum(POOL_ROLES),
  serial: serialSchema,
  issuedAt: timestampSchema,
  expiresAt: timestampSchema,
  issuerPublicKey: publicKeySchema,
  signature: signatureSchema,
}

/** A certificate signed by the pool root: the only kind that may appear as an issuer certificate. */
export const rootIssuedCertificateSchema = z.strictObject(certificateFields)

export const certificateSchema = z.strictObject({
  ...certificateFields,
  /** The delegated admin's own certificate, present when `issuerPublicKey` is not the root key. */
  issuerCertificate: rootIssuedCertificateSchema.optional(),
})

/**
 * A device's membership in a pool. Signed by the pool root, or by a delegated admin whose own
 * root-signed admin certificate travels along in `issuerCertificate` (one level, no deeper).
 */
export type Certificate = z.infer<typeof certificateSchema>

/** Who signs pool objects: the pool root key, or a delegated admin's device key plus its certificate. */
export interface PoolSigner {
  readonly publicKey: Uint8Array
  sign(domain: string, payload: Uint8Array): Uint8Array
  /** The signer's root-signed admin certificate; absent when the signer is the root itself. */
  readonly certificate?: Certificate | undefined
}

/** The bytes a certificate's signature covers: the canonical CBOR of every field but the signature and issuer certificate. */
export function certificateSigningBytes(cert: Certificate): Uint8Array {
  return encodeCanonical(omitFields(cert, ['signature', 'issuerCertificate']))
}

export interface IssueCertificateOptions {
  poolId: string
  devicePublicKey: Uint8Array
  role: PoolRole
  /** Default: now. */
  issuedAt?: number
  /** Default {@link DEFAULT_CERTIFICATE_TTL_MS}. */
  ttlMs?: number
}

/**
 * Signs a certificate for a device. A delegated signer (one with a `certificate`) may only issue
 * member and client certificates; the certificate carries the signer's admin certificate.
 */
export function issueCertificate(signer: PoolSigner, options: IssueCertificateOptions): Certificate {
  const issuedAt = options.issuedAt ?? Date.now()
  const ttlMs = options.ttlMs ?? DEFAULT_CERTIFICATE_TTL_MS
  if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0) {
    throw new InvalidArgumentError(
      `certificate lifetime must be a positive number of milliseconds, got ${ttlMs}`,
    )
  }
  if (signer.certificate !== undefined && options.role === 'admin') {
    throw new InvalidArgumentError('a delegated admin cannot issue admin certificates', {
      hint: 'issue admin certificates on the node that holds the pool root key',
    })
  }
  const unsigned = {
    type: CERTIFICATE_DOMAIN,
    poolId: options.poolId,
    nodeId: nodeIdFromPublicKey(options.devicePublicKey),
    devicePublicKey: Uint8Array.from(options.devicePublicKey),
    role: options.role,
    serial: randomBytes(16).toString('hex'),
    issuedAt,
    expiresAt: issuedAt + ttlMs,
    issuerPublicKey: Uint8Array.from(signer.publicKey),
  } as const
  const signature = signer.sign(CERTIFICATE_DOMAIN, encodeCanonical(unsigned))
  const cert: Certificate = { ...unsigned, signature }
  if (signer.certificate !== undefined) {
    cert.issuerCertificate = omitFields(signer.certificate, ['issuerCertificate'])
  }
  return cert
}

/** The canonical bytes of a certificate (what travels and what is stored). */
export function encodeCertificate(cert: Certificate): Uint8Array {
  return encodeCanonical(cert)
}

export interface VerifyCertificateOptions {
  poolId: string
  rootPublicKey: Uint8Array
  /** Default: now. */
  now?: number
  /** The pool's current (verified) revocation list, if any. */
  revocations?: RevocationList | undefined
  /** Default {@link CLOCK_SKEW_MS} (5 minutes). */
  clockSkewMs?: number
}

/**
 * Decodes untrusted certificate bytes and verifies them (see {@link verifyCertificate}).
 * Throws only CertificateError (or InvalidArgumentError for inconsistent options).
 */
export function decodeCertificate(bytes: Uint8Array, options: VerifyCertificateOptions): Certificate {
  const decoded = decodeCanonical(bytes, certificateSchema, POOL_LIMITS.certificateBytes)
  if (!decoded.ok) {
    throw new CertificateError('malformed', `pool certificate is malformed: ${decoded.problem}`, {
      hint: "the sender's software may be incompatible, or the data was damaged",
    })
  }
  verifyCertificate(decoded.value, options)
  return decoded.value
}

/**
 * Checks, in this order: shape ('malformed'), pool id ('wrong-pool'), node id against the device
 * key ('node-id-mismatch'), issuer chain ('untrusted-issuer'), signature ('bad-signature'),
 * revocation ('revoked'), validity window with `clockSkewMs` allowance each way
 * ('not-yet-valid', 'expired'). Throws CertificateError naming the first failed check.
 */
export function verifyCertificate(cert: Certificate, options: VerifyCertificateOptions): void {
  if (poolIdFromRootKey(options.rootPublicKey) !== options.poolId) {
    throw new InvalidArgumentError(`the root public key given does not belong to pool ${options.poolId}`)
  }
  if (options.revocations !== undefined && options.revocations.poolId !== options.poolId) {
    throw new InvalidArgumentError(
      `the revocation list given belongs to pool ${options.revocations.poolId}, not ${options.poolId}`,
    )
  }
  const checked = checkSchema(cert, certificateSchema)
  if (!checked.ok) {
    throw new CertificateError('malformed', `pool certificate is malformed: ${checked.problem}`, {
      hint: "the sender's software may be incompatible, or the data was damaged",
    })
  }
  verifyChecked(checked.value, options, false)
}

function verifyChecked(cert: Certificate, options: VerifyCertificateOptions, asIssuer: boolean): void {
  const now = options.now ?? Date.now()
  const skew = options.clockSkewMs ?? CLOCK_SKEW_MS
  const who = `pool certificate for ${shortNodeId(cert.nodeId)}`
  const details = { nodeId: cert.nodeId, poolId: cert.poolId, serial: cert.serial }
  const fail = (reason: CertificateError['reason'], message: string, hint: string, cause?: unknown) =>
    new CertificateError(reason, message, { hint, details, cause })

  if (cert.expiresAt < cert.issuedAt) {
    throw fail('malformed', `${who} expires before it is issued`, 'ask the pool admin for a new certificate')
  }
  if (cert.poolId !== options.poolId) {
    throw fail(
      'wrong-pool',
      `${who} belongs to pool ${cert.poolId}, not ${options.poolId}`,
      'use the certificate for this pool, or join it (mesh pool-join)',
    )
  }
  let actualNodeId: string
  try {
    actualNodeId = nodeIdFromPublicKey(cert.devicePublicKey)
  } catch (err) {
    throw fail(
      'malformed',
      `${who} has an unusable device key`,
      'ask the pool admin for a new certificate',
      err,
    )
  }
  if (actualNodeId !== cert.nodeId) {
    throw fail(
      'node-id-mismatch',
      `${who} names node ${cert.nodeId} but its device key belongs to ${actualNodeId}`,
      'the certificate was altered; ask the pool admin for a new one',
    )
  }

  const byRoot = bytesEqual(cert.issuerPublicKey, options.rootPublicKey)
  if (byRoot) {
    if (cert.issuerCertificate !== undefined) {
      throw fail(
        'malformed',
        `${who} is signed by the pool root but carries an issuer certificate`,
        'ask the pool admin for a new certificate',
      )
    }
  } else {
    const issuer = cert.issuerCertificate
    const untrusted = (why: string, cause?: unknown) =>
      fail(
        'untrusted-issuer',
        `${who} was not issued by pool ${options.poolId}'s root or one of its admins: ${why}`,
        'ask the pool admin for a certificate (mesh pool-approve)',
        cause,
      )
    if (asIssuer) throw untrusted('an issuer certificate must be signed by the pool root')
    if (issuer === undefined) throw untrusted('the issuer key is unknown to this pool')
    if (!bytesEqual(issuer.devicePublicKey, cert.issuerPublicKey)) {
      throw untrusted('the issuer certificate is for a different key')
    }
    if (issuer.role !== 'admin') throw untrusted(`the issuer holds a ${issuer.role} certificate, not admin`)
    if (cert.role === 'admin') throw untrusted('a delegated admin cannot issue admin certificates')
    try {
      verifyChecked(issuer, options, true)
    } catch (err) {
      if (err instanceof CertificateError) {
        throw fail(
          'untrusted-issuer',
          `${who} was issued by an admin whose own certificate is not valid (${err.reason})`,
          'ask the pool admin for a new certificate (mesh pool-approve)',
          err,
        )
      }
      throw err
    }
  }

  if (
    !verifySignature(cert.issuerPublicKey, CERTIFICATE_DOMAIN, certificateSigningBytes(cert), cert.signature)
  ) {
    throw fail(
      'bad-signature',
      `${who} has an invalid signature`,
      `it was altered or not issued by pool ${options.poolId}; ask the pool admin for a new one`,
    )
  }

  const revoked = options.revocations
  if (
    revoked !== undefined &&
    (revoked.serials.includes(cert.serial) || revoked.nodeIds.includes(cert.nodeId))
  ) {
    throw fail(
      'revoked',
      `${who} (serial ${cert.serial}) has been revoked from pool ${options.poolId}`,
      'the device must be let back in by the pool admin',
    )
  }
  if (now + skew < cert.issuedAt) {
    throw fail(
      'not-yet-valid',
      `${who} is not valid until ${formatTime(cert.issuedAt)}`,
      "check the clocks of this computer and the admin's",
    )
  }
  if (now - skew > cert.expiresAt) {
    throw fail(
      'expired',
      `${who} expired at ${formatTime(cert.expiresAt)}`,
      'ask the pool admin to renew it (mesh pool-approve)',
    )
  }
}
