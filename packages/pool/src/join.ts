import { randomBytes } from 'node:crypto'
import { InvalidArgumentError } from '@meshnet/core'
import { type NodeIdentity, publicKeyOfSeed, signWithSeed, verifySignature } from '@meshnet/identity'
import { z } from 'zod'
import {
  type Certificate,
  certificateSchema,
  type PoolSigner,
  rootIssuedCertificateSchema,
  verifyCertificate,
} from './certificate.ts'
import {
  bytesEqual,
  CLOCK_SKEW_MS,
  decodeCanonical,
  encodeCanonical,
  fromBase32,
  isPoolId,
  nameSchema,
  nodeIdFromPublicKey,
  nodeIdSchema,
  nonceSchema,
  omitFields,
  POOL_LIMITS,
  poolIdFromRootKey,
  poolIdSchema,
  publicKeySchema,
  shortNodeId,
  signatureSchema,
  timestampSchema,
  toBase32,
} from './encoding.ts'
import {
  CertificateError,
  JOIN_REFUSAL_REASONS,
  type JoinRefusalReason,
  JoinRequestError,
  JoinResponseError,
} from './errors.ts'

/** The `type` field of a join request, and the domain of the device's signature over it. */
export const JOIN_REQUEST_DOMAIN = 'pool-join-request-v1'
/** The domain of the join token's signature over the same request bytes. */
export const JOIN_TOKEN_DOMAIN = 'pool-join-token-v1'
/** The `type` field of a join response, and the domain of the admin's signature over it. */
export const JOIN_RESPONSE_DOMAIN = 'pool-join-response-v1'
/** A join request older than this (by the admin's clock) is refused as stale: 5 minutes. */
export const JOIN_REQUEST_MAX_AGE_MS = 5 * 60_000

// ---- join tokens ------------------------------------------------------------------------------

const TOKEN_PREFIX = 'meshjoin1'

/**
 * A join token is `meshjoin1.<pool id>.<base32 of a 32-byte random secret>`. The secret is an
 * Ed25519 seed: the joining device proves it holds the token by signing its request with it, so the
 * secret itself never travels (a LAN beacon can be overheard) and the admin keeps only the token's
 * public key, from which the secret cannot be recovered.
 */
export interface ParsedJoinToken {
  poolId: string
  /** Short public name of the token, as `mesh pool-invite --list` shows it. */
  tokenId: string
  publicKey: Uint8Array
}

/** The public id of a join token with this public key. */
export function joinTokenId(publicKey: Uint8Array): string {
  return `tok-${toBase32(publicKey.subarray(0, 8))}`
}

/** Makes a fresh token string for a pool (the admin side stores only `publicKey`). */
export function generateJoinToken(poolId: string): { token: string; tokenId: string; publicKey: Uint8Array } {
  const seed = randomBytes(32)
  const publicKey = publicKeyOfSeed(seed)
  return { token: `${TOKEN_PREFIX}.${poolId}.${toBase32(seed)}`, tokenId: joinTokenId(publicKey), publicKey }
}

function parseTokenSecret(token: string): { poolId: string; seed: Uint8Array } {
  const bad = (problem: string) =>
    new InvalidArgumentError(`not a Meshnet join token: ${problem}`, {
      hint: 'copy the whole token the pool admin gave you (it starts with meshjoin1.)',
    })
  const parts = token.trim().split('.')
  if (parts.length !== 3 || parts[0] !== TOKEN_PREFIX)
    throw bad(`expected ${TOKEN_PREFIX}.<pool id>.<secret>`)
  const [, poolId, secret] = parts as [string, string, string]
  if (!isPoolId(poolId)) throw bad(`"${poolId}" is not a pool id`)
  const seed = fromBase32(secret)
  if (seed === undefined || seed.length !== 32) throw bad('the secret part is damaged')
  return { poolId, seed }
}

/** Reads the pool id and token id out of a token string. Throws InvalidArgumentError. */
export function parseJoinToken(token: string): ParsedJoinToken {
  const { poolId, seed } = parseTokenSecret(token)
  const publicKey = publicKeyOfSeed(seed)
  return { poolId, tokenId: joinTokenId(publicKey), publicKey }
}

// ---- join requests ----------------------------------------------------------------------------

export const joinRequestSchema = z
  .strictObject({
    type: z.literal(JOIN_REQUEST_DOMAIN),
    poolId: poolIdSchema,
    nodeId: nodeIdSchema,
    devicePublicKey: publicKeySchema,
    deviceName: nameSchema(POOL_LIMITS.deviceNameChars),
    createdAt: timestampSchema,
    /** 16 random bytes; with the node id, the key of the admin's replay cache. */
    nonce: nonceSchema,
    /** The public key of the join token used, if any. */
    tokenPublicKey: publicKeySchema.optional(),
    /** By the device key, under JOIN_REQUEST_DOMAIN. */
    signature: signatureSchema,
    /** By the join token's secret, under JOIN_TOKEN_DOMAIN, over the same bytes. */
    tokenSignature: signatureSchema.optional(),
  })
  .refine((r) => (r.tokenPublicKey === undefined) === (r.tokenSignature === undefined), {
    message: 'tokenPublicKey and tokenSignature come together',
    path: ['tokenSignature'],
  })

/** A device asks to join a pool. Signed by the device key; optionally proves a join token. */
export type JoinRequest = z.infer<typeof joinRequestSchema>

/** What both signatures of a join request cover: every field but the two signatures. */
export function joinRequestSigningBytes(request: JoinRequest): Uint8Array {
  return encodeCanonical(omitFields(request, ['signature', 'tokenSignature']))
}

export interface CreateJoinRequestOptions {
  /** The pool to join; may be left out when `token` is given (the token names its pool). */
  poolId?: string
  /** A join token from the pool admin; without one the request waits for `mesh pool-approve`. */
  token?: string
  /** How this device is shown to the admin. */
  deviceName: string
  /** Default: now. */
  now?: number
}

/** Creates and signs a join request with this node's identity. */
export function createJoinRequest(
  identity: Pick<NodeIdentity, 'publicKey' | 'sign'>,
  options: CreateJoinRequestOptions,
): { request: JoinRequest; bytes: Uint8Array } {
  const token = options.token === undefined ? undefined : parseTokenSecret(options.token)
  const poolId = options.poolId ?? token?.poolId
  if (poolId === undefined) {
    throw new InvalidArgumentError('a join request needs a pool id or a join token')
  }
  if (!isPoolId(poolId)) throw new InvalidArgumentError(`"${poolId}" is not a pool id`)
  if (token !== undefined && token.poolId !== poolId) {
    throw new InvalidArgumentError(`the join token is for pool ${token.poolId}, not ${poolId}`)
  }
  const name = nameSchema(POOL_LIMITS.deviceNameChars).safeParse(options.deviceName)
  if (!name.success) {
    throw new InvalidArgumentError(
      `device name "${options.deviceName}" is not usable: ${name.error.issues[0]?.message}`,
      { hint: `use 1 to ${POOL_LIMITS.deviceNameChars} printable characters` },
    )
  }
  const unsigned = {
    type: JOIN_REQUEST_DOMAIN,
    poolId,
    nodeId: nodeIdFromPublicKey(identity.publicKey),
    devicePublicKey: Uint8Array.from(identity.publicKey),
    deviceName: name.data,
    createdAt: options.now ?? Date.now(),
    nonce: new Uint8Array(randomBytes(16)),
    ...(token === undefined ? {} : { tokenPublicKey: publicKeyOfSeed(token.seed) }),
  } as const
  const body = encodeCanonical(unsigned)
  const request: JoinRequest = {
    ...unsigned,
    signature: identity.sign(JOIN_REQUEST_DOMAIN, body),
    ...(token === undefined ? {} : { tokenSignature: signWithSeed(token.seed, JOIN_TOKEN_DOMAIN, body) }),
  }
  return { request, bytes: encodeJoinRequest(request) }
}

export function encodeJoinRequest(request: JoinRequest): Uint8Array {
  return encodeCanonical(request)
}

/** Shape-only decode: a request whose signature has not been checked yet. */
export function parseJoinRequest(bytes: Uint8Array): JoinRequest {
  const decoded = decodeCanonical(bytes, joinRequestSchema, POOL_LIMITS.joinRequestBytes)
  if (!decoded.ok) {
    throw new JoinRequestError('malformed', `join request is malformed: ${decoded.problem}`)
  }
  return decoded.value
}

/** True when the node id matches the device key and the device signature verifies. */
export function joinRequestSignatureValid(request: JoinRequest): boolean {
  let nodeId: string
  try {
    nodeId = nodeIdFromPublicKey(request.devicePublicKey)
  } catch {
    return false
  }
  return (
    nodeId === request.nodeId &&
    verifySignature(
      request.devicePublicKey,
      JOIN_REQUEST_DOMAIN,
      joinRequestSigningBytes(request),
      request.signature,
    )
  )
}

/** True when the request carries a valid proof for the token with this public key. */
export function joinRequestTokenValid(request: JoinRequest, tokenPublicKey: Uint8Array): boolean {
  return (
    request.tokenPublicKey !== undefined &&
    request.tokenSignature !== undefined &&
    bytesEqual(request.tokenPublicKey, tokenPublicKey) &&
    verifySignature(
      tokenPublicKey,
      JOIN_TOKEN_DOMAIN,
      joinRequestSigningBytes(request),
      request.tokenSignature,
    )
  )
}

/**
 * Decodes untrusted bytes into a join request whose device signature verifies (freshness, replay
 * and token are the admin's checks, in `PoolAdmin.handleJoinRequest`). Throws only JoinRequestError.
 */
export function decodeJoinRequest(bytes: Uint8Array): JoinRequest {
  const request = parseJoinRequest(bytes)
  if (!joinRequestSignatureValid(request)) {
    throw new JoinRequestError(
      'bad-signature',
      `join request from ${shortNodeId(request.nodeId)} is not signed by that device`,
    )
  }
  return request
}

// ---- join responses ---------------------------------------------------------------------------

const responseFields = {
  type: z.literal(JOIN_RESPONSE_DOMAIN),
  poolId: poolIdSchema,
  poolName: nameSchema(POOL_LIMITS.poolNameChars),
  poolCreatedAt: timestampSchema,
  rootPublicKey: publicKeySchema,
  /** The requesting device and its request's nonce: a response answers exactly one request. */
  nodeId: nodeIdSchema,
  requestNonce: nonceSchema,
  createdAt: timestampSchema,
  /** For people; the member shows its own text for `reason`. */
  message: z.string().max(POOL_LIMITS.responseMessageChars),
  signerPublicKey: publicKeySchema,
  /** The delegated admin's root-signed certificate, when the signer is not the root. */
  signerCertificate: rootIssuedCertificateSchema.optional(),
  signature: signatureSchema,
}

export const joinResponseSchema = z.discriminatedUnion('outcome', [
  z.strictObject({ ...responseFields, outcome: z.literal('accepted'), certificate: certificateSchema }),
  z.strictObject({ ...responseFields, outcome: z.literal('pending') }),
  z.strictObject({ ...responseFields, outcome: z.literal('refused'), reason: z.enum(JOIN_REFUSAL_REASONS) }),
])

/** The pool's signed answer to one join request: a certificate, "wait for approval", or a refusal. */
export type JoinResponse = z.infer<typeof joinResponseSchema>

export function joinResponseSigningBytes(response: JoinResponse): Uint8Array {
  return encodeCanonical(omitFields(response, ['signature', 'signerCertificate']))
}

export function encodeJoinResponse(response: JoinResponse): Uint8Array {
  return encodeCanonical(response)
}

export type JoinOutcome =
  | { outcome: 'accepted'; certificate: Certificate }
  | { outcome: 'pending' }
  | { outcome: 'refused'; reason: JoinRefusalReason }

export interface SignJoinResponseOptions {
  pool: { id: string; name: string; rootPublicKey: Uint8Array; createdAt: number }
  request: Pick<JoinRequest, 'nodeId' | 'nonce'>
  outcome: JoinOutcome
  message: string
  /** Default: now. */
  now?: number
}

/** Signs the answer to a join request (admin side). */
export function signJoinResponse(signer: PoolSigner, options: SignJoinResponseOptions): JoinResponse {
  const { pool, request, outcome } = options
  const unsigned = {
    type: JOIN_RESPONSE_DOMAIN,
    poolId: pool.id,
    poolName: pool.name,
    poolCreatedAt: pool.createdAt,
    rootPublicKey: Uint8Array.from(pool.rootPublicKey),
    nodeId: request.nodeId,
    requestNonce: Uint8Array.from(request.nonce),
    createdAt: options.now ?? Date.now(),
    message: options.message.slice(0, POOL_LIMITS.responseMessageChars),
    signerPublicKey: Uint8Array.from(signer.publicKey),
    ...outcome,
  }
  const signature = signer.sign(JOIN_RESPONSE_DOMAIN, encodeCanonical(unsigned))
  const signerCertificate =
    signer.certificate === undefined
      ? {}
      : { signerCertificate: omitFields(signer.certificate, ['issuerCertificate']) }
  return { ...unsigned, ...signerCertificate, signature } as JoinResponse
}

export interface DecodeJoinResponseOptions {
  /** The request this answers (the member's own). */
  request: JoinRequest
  /** Default: now. */
  now?: number
  /** Default {@link CLOCK_SKEW_MS}. */
  clockSkewMs?: number
}

/**
 * Member side: decodes untrusted bytes into a join response and checks that it comes from the
 * pool the request was for (root key hashes to the pool id; signed by the root or by an admin
 * certificate the root signed), answers this very request (node id and nonce), and, when
 * accepted, carries a valid certificate for this device. Throws only JoinResponseError.
 */
export function decodeJoinResponse(bytes: Uint8Array, options: DecodeJoinResponseOptions): JoinResponse {
  const decoded = decodeCanonical(bytes, joinResponseSchema, POOL_LIMITS.joinResponseBytes)
  if (!decoded.ok) {
    throw new JoinResponseError('malformed', `join response is malformed: ${decoded.problem}`)
  }
  const response = decoded.value
  const { request } = options
  const verify = { now: options.now, clockSkewMs: options.clockSkewMs }
  if (response.poolId !== request.poolId || poolIdFromRootKey(response.rootPublicKey) !== request.poolId) {
    throw new JoinResponseError(
      'wrong-pool',
      `join response claims to be from pool ${response.poolId} but the request went to ${request.poolId}`,
      { hint: 'another pool answered on this network; it has been ignored' },
    )
  }
  if (response.nodeId !== request.nodeId || !bytesEqual(response.requestNonce, request.nonce)) {
    throw new JoinResponseError(
      'not-for-this-request',
      `join response from pool ${request.poolId} answers another request`,
    )
  }
  if (bytesEqual(response.signerPublicKey, response.rootPublicKey)) {
    if (response.signerCertificate !== undefined) {
      throw new JoinResponseError(
        'malformed',
        'join response signed by the pool root carries a signer certificate',
      )
    }
  } else {
    const signerCert = response.signerCertificate
    const untrusted = (why: string, cause?: unknown) =>
      new JoinResponseError('untrusted-signer', `join response for pool ${request.poolId} ${why}`, { cause })
    if (signerCert === undefined) throw untrusted('is signed by a key the pool root did not certify')
    if (signerCert.role !== 'admin' || !bytesEqual(signerCert.devicePublicKey, response.signerPublicKey)) {
      throw untrusted('is signed by a device that is not a pool admin')
    }
    try {
      verifyCertificate(signerCert, {
        poolId: request.poolId,
        rootPublicKey: response.rootPublicKey,
        ...verify,
      })
    } catch (err) {
      throw untrusted(
        `is signed by an admin whose certificate is not valid (${(err as CertificateError).reason})`,
        err,
      )
    }
  }
  if (
    !verifySignature(
      response.signerPublicKey,
      JOIN_RESPONSE_DOMAIN,
      joinResponseSigningBytes(response),
      response.signature,
    )
  ) {
    throw new JoinResponseError(
      'bad-signature',
      `join response for pool ${request.poolId} has an invalid signature`,
    )
  }
  if (response.outcome === 'accepted') {
    const cert = response.certificate
    if (!bytesEqual(cert.devicePublicKey, request.devicePublicKey)) {
      throw new JoinResponseError(
        'bad-certificate',
        'the certificate in the join response is for another device',
      )
    }
    try {
      verifyCertificate(cert, { poolId: request.poolId, rootPublicKey: response.rootPublicKey, ...verify })
    } catch (err) {
      if (!(err instanceof CertificateError)) throw err
      throw new JoinResponseError(
        'bad-certificate',
        `the certificate in the join response is not valid: ${err.message}`,
        {
          cause: err,
        },
      )
    }
  }
  return response
}
