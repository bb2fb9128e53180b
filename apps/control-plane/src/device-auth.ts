import { peerIdFromString } from '@libp2p/peer-id'
import { verifySignature } from '@meshnet/identity'
import {
  DEVICE_REQUEST_DOMAIN,
  DEVICE_SIGNATURE_HEADERS,
  type DeviceSignature,
  deviceRequestPayload,
  deviceSignatureSchema,
} from '@meshnet/protocols'
import { RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible'
import { HttpError } from './http.ts'

/** Most nonces remembered at once; past it the oldest are forgotten and older requests refused. */
const NONCES_REMEMBERED = 100_000

export interface DeviceAuthInit {
  /** This control plane's id (`controlPlaneId` of its token): requests signed for another are refused. */
  planeId: string
  /** How far a request's timestamp may be from this control plane's clock. */
  skewMs: number
  /** Requests one device may make per minute; more get 429. */
  requestsPerMinute: number
  now: () => number
  /** Nonces remembered; default 100 000. */
  maxNonces?: number
}

/** A device request as the server received it. */
export interface ReceivedRequest {
  method: string
  /** The path and query of the request line. */
  path: string
  bodySha256: string
  header(name: string): string | undefined
  /** The node id the request acts for (the route's `nodeId`), whatever the body held. */
  actsFor: unknown
}

/**
 * Checks that a device request comes from the device it acts for: signed with that node's key
 * (the key its node id holds) for this control plane, fresh (timestamp within `skewMs`, nonce not
 * seen before), and within the device's rate limit. Resolves to the node id; refuses with 401 (no,
 * malformed, stale, replayed or wrong signature), 403 (signed by another device) or 429.
 */
export function deviceAuth(init: DeviceAuthInit): (request: ReceivedRequest) => Promise<string> {
  // Nonces live in memory: a request signed before this start could have been seen by the process
  // before it, so it is refused as too old to check.
  const nonces = new NonceCache(init.maxNonces ?? NONCES_REMEMBERED, init.skewMs, init.now() - 1)
  const limiter = new RateLimiterMemory({ points: init.requestsPerMinute, duration: 60 })

  return async (request) => {
    const what = `${request.method} ${request.path}`
    const signature = readHeaders(request, what)
    const { nodeId, timestamp, nonce } = signature
    const now = init.now()
    const off = Math.abs(now - timestamp)
    if (off > init.skewMs) {
      throw new HttpError(
        401,
        'ERR_STALE_REQUEST',
        `${what} was signed at ${iso(timestamp)}, ${Math.round(off / 1000)} s from this control plane's clock (${iso(now)}); at most ${init.skewMs / 1000} s are allowed`,
        { hint: "set the device's clock (NTP) and sign the request again", details: { timestamp, now } },
      )
    }
    const publicKey = ed25519KeyOf(nodeId)
    const payload = deviceRequestPayload({
      planeId: init.planeId,
      method: request.method,
      path: request.path,
      bodySha256: request.bodySha256,
      timestamp,
      nonce,
      nodeId,
    })
    if (
      publicKey === undefined ||
      !verifySignature(
        publicKey,
        DEVICE_REQUEST_DOMAIN,
        payload,
        Buffer.from(signature.signature, 'base64url'),
      )
    ) {
      throw new HttpError(
        401,
        'ERR_BAD_SIGNATURE',
        `the signature of ${what} does not verify with the key of node ${nodeId}`,
        {
          hint: 'sign this control plane id (from its token), the method, path, body SHA-256, timestamp, nonce and node id with the node key (docs/control-plane.md, "Device signatures"); a body or path changed on the way fails too',
          details: { nodeId },
        },
      )
    }
    if (request.actsFor !== nodeId) {
      if (typeof request.actsFor !== 'string') {
        throw new HttpError(400, 'ERR_INVALID_REQUEST', `invalid request body: nodeId: ${what} names no node`)
      }
      throw new HttpError(
        403,
        'ERR_WRONG_DEVICE',
        `${what} is signed by node ${nodeId} but acts for node ${request.actsFor}: a device may act only for itself`,
        {
          hint: 'sign the request with the key of the node it names',
          details: { signedBy: nodeId, actsFor: request.actsFor },
        },
      )
    }
    const seen = nonces.remember(`${nodeId} ${nonce}`, timestamp, now)
    if (seen !== 'new') {
      throw new HttpError(
        401,
        seen === 'replayed' ? 'ERR_REPLAYED_REQUEST' : 'ERR_STALE_REQUEST',
        seen === 'replayed'
          ? `${what} by node ${nodeId} was already received (nonce ${nonce}): a signed request is accepted once`
          : `${what} was signed at ${iso(timestamp)}, before this control plane started or before the oldest request it still remembers, so it cannot tell it from a replay`,
        { hint: 'sign every request anew, with a fresh nonce', details: { nodeId, nonce } },
      )
    }
    try {
      await limiter.consume(nodeId)
    } catch (err) {
      if (!(err instanceof RateLimiterRes)) throw err
      const retryAfterMs = Math.max(1, err.msBeforeNext)
      throw new HttpError(
        429,
        'ERR_RATE_LIMITED',
        `node ${nodeId} sent more than ${init.requestsPerMinute} requests within a minute; retry in ${Math.ceil(retryAfterMs / 1000)} s`,
        {
          hint: 'slow down; see Retry-After',
          details: { nodeId, limit: init.requestsPerMinute, retryAfterMs },
        },
      )
    }
    return nodeId
  }
}

function readHeaders(request: ReceivedRequest, what: string): DeviceSignature {
  const raw = {
    nodeId: request.header(DEVICE_SIGNATURE_HEADERS.nodeId),
    timestamp: request.header(DEVICE_SIGNATURE_HEADERS.timestamp),
    nonce: request.header(DEVICE_SIGNATURE_HEADERS.nonce),
    signature: request.header(DEVICE_SIGNATURE_HEADERS.signature),
  }
  const missing = (Object.keys(raw) as Array<keyof typeof raw>).filter((key) => raw[key] === undefined)
  if (missing.length > 0) {
    throw new HttpError(
      401,
      'ERR_SIGNATURE_REQUIRED',
      `${what} acts for a device and must be signed with its node key; missing ${missing.map((key) => DEVICE_SIGNATURE_HEADERS[key]).join(', ')}`,
      {
        hint: 'send the mesh-node-id, mesh-timestamp, mesh-nonce and mesh-signature headers (docs/control-plane.md, "Device signatures")',
      },
    )
  }
  const parsed = deviceSignatureSchema.safeParse(raw)
  if (parsed.success) return parsed.data
  const issue = parsed.error.issues[0]!
  const header = DEVICE_SIGNATURE_HEADERS[issue.path[0] as keyof typeof raw]
  throw new HttpError(401, 'ERR_BAD_SIGNATURE', `${what}: header ${header}: ${issue.message}`, {
    hint: 'see docs/control-plane.md, "Device signatures"',
  })
}

/** The raw Ed25519 public key a node id holds; undefined for another kind of key. */
function ed25519KeyOf(nodeId: string): Uint8Array | undefined {
  try {
    const peerId = peerIdFromString(nodeId)
    return peerId.type === 'Ed25519' ? peerId.publicKey.raw : undefined
  } catch {
    return undefined
  }
}

const iso = (ms: number) => new Date(ms).toISOString()

/**
 * The nonces of the signed requests seen within the freshness window. Bounded: past `max` the
 * earliest received is forgotten and `floor` rises to its timestamp, so that a request signed at or
 * before the floor is refused as too old to check (never accepted twice); under a flood the window
 * shrinks instead of memory growing.
 */
class NonceCache {
  /** key -> the timestamp it was signed at; Map keeps the order they came in. */
  readonly #seen = new Map<string, number>()
  #floor: number
  readonly #max: number
  readonly #skewMs: number

  /** Requests signed at or before `floor` are refused from the start. */
  constructor(max: number, skewMs: number, floor: number) {
    this.#max = max
    this.#skewMs = skewMs
    this.#floor = floor
  }

  remember(key: string, timestamp: number, now: number): 'new' | 'replayed' | 'too-old' {
    for (const [seenKey, at] of this.#seen) {
      // Past the window a request is refused as stale anyway: forgetting it raises no floor.
      if (at >= now - this.#skewMs) break
      this.#seen.delete(seenKey)
    }
    if (this.#seen.has(key)) return 'replayed'
    if (timestamp <= this.#floor) return 'too-old'
    this.#seen.set(key, timestamp)
    while (this.#seen.size > this.#max) {
      const [oldest, at] = this.#seen.entries().next().value!
      this.#seen.delete(oldest)
      this.#floor = Math.max(this.#floor, at)
    }
    return 'new'
  }
}
