import { createHash } from 'node:crypto'
import { z } from 'zod'

// The shapes the control plane's REST API and its clients (agents, the SDK) share.

/** A libp2p PeerId string (base58btc), as every Meshnet node id is. */
export const nodeIdSchema = z.string().regex(/^[1-9A-HJ-NP-Za-km-z]{40,60}$/, 'not a node id')

/** `pool-` and 26 base32 characters: 128 bits of the hash of the pool's root key. */
export const POOL_ID_PATTERN = /^pool-[a-z2-7]{26}$/

export const poolIdSchema = z
  .string()
  .regex(POOL_ID_PATTERN, 'not a pool id (pool- and 26 base32 characters)')

export const jobIdSchema = z.uuid('not a job id')

/** Multiaddrs or host:port strings a device can be reached at. */
export const addressesSchema = z.array(z.string().min(1).max(512)).max(32)

/** A model a device holds: its file name, SHA-256 and size. */
export const modelInfoSchema = z.strictObject({
  name: z.string().min(1).max(256),
  sha256: z.string().regex(/^[0-9a-f]{64}$/, 'not a lowercase hex SHA-256'),
  bytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
})

/** What a device offers: in ring announcements and in control-plane registrations. */
export const capabilitiesSchema = z.strictObject({
  /** Memory the member offers for weights and caches; fixed for the agent's lifetime. */
  capacityBytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  /** Free memory when announced (informational; plans use capacityBytes). */
  freeMemoryBytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  /** Measured compute score (higher is faster). */
  computeScore: z.number().nonnegative().max(1e12),
  engines: z.array(z.string().min(1).max(64)).max(8),
  models: z.array(modelInfoSchema).max(32),
  /**
   * The shard this member holds for its ring's plan and how far its weights have loaded, so that
   * every member sees when the ring is ready. Not a plan input: a change starts no new epoch.
   */
  shard: z
    .strictObject({
      layers: z.tuple([
        z
          .number()
          .int()
          .min(0)
          .max(1 << 24),
        z
          .number()
          .int()
          .min(0)
          .max(1 << 24),
      ]),
      state: z.enum(['fetching', 'loading', 'ready', 'failed']),
      bytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
      loadedBytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
      error: z.string().max(512).optional(),
    })
    .optional(),
})
export type Capabilities = z.infer<typeof capabilitiesSchema>

/** A device name: printable, no surrounding spaces. */
export const deviceNameSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^\S(.*\S)?$/u, 'must not start or end with spaces')
  .refine((name) => !/\p{Cc}/u.test(name), 'must not contain control characters')

/** Standard base64 of at most `maxBytes` bytes. */
export const base64Of = (maxBytes: number) =>
  z
    .base64('not base64')
    .max(Math.ceil(maxBytes / 3) * 4, `over ${maxBytes} bytes`)
    .transform((text) => new Uint8Array(Buffer.from(text, 'base64')))

// ---- signed device requests ---------------------------------------------------------------------

/**
 * The headers of a device request (registration, heartbeat, removal, ring join and leave, job claim
 * and reports): besides the bearer token, each is signed with the node key of the device it acts
 * for, so that a token holder cannot act for another device.
 */
export const DEVICE_SIGNATURE_HEADERS = Object.freeze({
  /** The signing node (its libp2p PeerId, which holds its Ed25519 public key). */
  nodeId: 'mesh-node-id',
  /** When it was signed: milliseconds since 1970, in decimal. */
  timestamp: 'mesh-timestamp',
  /** 16–64 base64url characters, never used twice by one node. */
  nonce: 'mesh-nonce',
  /** The Ed25519 signature of {@link deviceRequestPayload}, base64url without padding. */
  signature: 'mesh-signature',
})

/** The domain a device request is signed under (`domainSeparated` of @meshnet/identity). */
export const DEVICE_REQUEST_DOMAIN = 'control-plane-request-v1'

/** The signature headers of a device request, parsed. */
export const deviceSignatureSchema = z.object({
  nodeId: nodeIdSchema,
  timestamp: z
    .string()
    .regex(/^(0|[1-9][0-9]{0,14})$/, 'not milliseconds since 1970')
    .transform(Number),
  nonce: z.string().regex(/^[A-Za-z0-9_-]{16,64}$/, 'not 16–64 base64url characters'),
  signature: z.string().regex(/^[A-Za-z0-9_-]{86}$/, 'not an Ed25519 signature in base64url (86 characters)'),
})
export type DeviceSignature = z.output<typeof deviceSignatureSchema>

/** What a device request's signature covers. */
export interface DeviceRequest {
  /** The control plane it is meant for ({@link controlPlaneId}): not valid at another one. */
  planeId: string
  method: string
  /** The path and query as sent in the request line (`/v1/devices/12D3KooW…/heartbeat`). */
  path: string
  /** SHA-256 of the body bytes as sent, in lowercase hex (of zero bytes when there is no body). */
  bodySha256: string
  timestamp: number
  nonce: string
  nodeId: string
}

/**
 * The bytes a device signs for a request: `planeId`, the upper-case method, `path`, `bodySha256`,
 * `timestamp` (decimal), `nonce` and `nodeId`, in this order, joined by `\n` (no field may hold one).
 */
export function deviceRequestPayload(request: DeviceRequest): Uint8Array {
  const fields = [
    request.planeId,
    request.method.toUpperCase(),
    request.path,
    request.bodySha256,
    String(request.timestamp),
    request.nonce,
    request.nodeId,
  ]
  if (fields.some((field) => field.includes('\n'))) {
    throw new TypeError('a field of a signed control plane request holds a line break')
  }
  return new TextEncoder().encode(fields.join('\n'))
}

/**
 * The id of the control plane whose bearer token is `token`, which device requests are signed for:
 * `cp-` and the first 32 hex characters of SHA-256 of `meshnet:control-plane-id`, a NUL byte and the
 * token. Both ends derive it from the token they share; it does not reveal the token.
 */
export function controlPlaneId(token: string): string {
  const digest = createHash('sha256').update(`meshnet:control-plane-id\u0000${token}`).digest('hex')
  return `cp-${digest.slice(0, 32)}`
}
