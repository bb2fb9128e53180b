import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { InvalidArgumentError } from '@meshnet/core'
import { type NodeIdentity, verifySignature } from '@meshnet/identity'
import { type DecodeOptions, decode, encode } from 'cborg'
import { z } from 'zod'
import { BeaconDropError, BeaconTooLargeError } from './errors.ts'

/** Envelope version written by this module; the first item of every beacon datagram. */
export const BEACON_VERSION = 1
/** Signature domain of version-1 beacons (a later version signs under another domain). */
export const BEACON_DOMAIN = 'lan-beacon/v1'
/** Largest datagram sent or accepted; larger ones are dropped before they are parsed. */
export const MAX_BEACON_BYTES = 2048
/** What a beacon type may look like: lower case, digits, `-` and `.`, at most 64 characters. */
export const BEACON_TYPE_PATTERN = /^[a-z][a-z0-9.-]{0,63}$/
/** Bytes of random nonce in every beacon. */
export const BEACON_NONCE_BYTES = 16
/** Deepest nesting of arrays and maps allowed in a body. */
export const MAX_BODY_DEPTH = 16

/** A decoded, signature-checked beacon (freshness and replay are the receiver's business). */
export interface BeaconEnvelope {
  type: string
  /** Sender's raw 32-byte Ed25519 public key. */
  publicKey: Uint8Array
  /** Sender's node id: the PeerId of `publicKey`. */
  nodeId: string
  /** Sender's clock, ms since the Unix epoch. */
  timestamp: number
  nonce: Uint8Array
  /** Node id of the only node meant to act on it; absent for everyone. */
  to?: string
  body: unknown
}

export interface EncodeBeaconOptions {
  type: string
  body: unknown
  to?: string
  timestamp: number
  nonce: Uint8Array
  /** Default MAX_BEACON_BYTES. */
  maxBytes?: number
}

export interface DecodeBeaconOptions {
  /** Default MAX_BEACON_BYTES. */
  maxBytes?: number
  /**
   * Our node id: a beacon addressed to another node is dropped as `not-for-us` before its
   * signature is checked. Omit to accept beacons for any recipient.
   */
  self?: string
}

/**
 * The CBOR subset beacons use: definite lengths, shortest integer encodings, text map keys without
 * repeats, no tags, no undefined, NaN, infinities or integers beyond 2^53.
 */
const cborOptions: DecodeOptions = {
  strict: true,
  allowIndefinite: false,
  allowUndefined: false,
  allowInfinity: false,
  allowNaN: false,
  allowBigInt: false,
  useMaps: false,
  rejectDuplicateMapKeys: true,
}

const bytesOf = (length: number) =>
  z.instanceof(Uint8Array).refine((b) => b.length === length, `must be ${length} bytes`)
const nodeIdSchema = z.string().min(1).max(128)

const outerSchema = z.tuple([z.literal(BEACON_VERSION), z.instanceof(Uint8Array), bytesOf(64)])

const payloadSchema = z.strictObject({
  t: z.string().regex(BEACON_TYPE_PATTERN),
  k: bytesOf(32),
  n: nodeIdSchema,
  ts: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  nc: bytesOf(BEACON_NONCE_BYTES),
  to: nodeIdSchema.optional(),
  b: z.unknown().refine((b) => b !== undefined, 'is required'),
})
type Payload = z.infer<typeof payloadSchema>

/**
 * Encodes and signs a beacon with the sender's device key. Throws InvalidArgumentError for a type,
 * recipient or body that receivers would refuse, BeaconTooLargeError when it does not fit.
 */
export function encodeBeacon(identity: NodeIdentity, options: EncodeBeaconOptions): Uint8Array {
  const maxBytes = options.maxBytes ?? MAX_BEACON_BYTES
  if (!BEACON_TYPE_PATTERN.test(options.type)) {
    throw new InvalidArgumentError(`beacon type ${JSON.stringify(options.type).slice(0, 80)} is not valid`, {
      hint: `use lower-case letters, digits, '-' and '.', starting with a letter (${BEACON_TYPE_PATTERN})`,
    })
  }
  const fields: Record<string, unknown> = {
    t: options.type,
    k: identity.publicKey,
    n: identity.nodeId,
    ts: options.timestamp,
    nc: options.nonce,
    b: options.body,
  }
  if (options.to !== undefined) fields.to = options.to
  let payload: Uint8Array
  try {
    payload = encode(fields, { ignoreUndefinedProperties: true })
    // What we send must be what every receiver accepts: run the receiving checks on it.
    parsePayload(payload)
  } catch (err) {
    throw new InvalidArgumentError(
      `cannot encode a '${options.type}' beacon: ${(err as Error).message.slice(0, 200)}`,
      {
        cause: err,
        hint: `a body holds null, booleans, finite numbers, safe integers, strings, Uint8Arrays, arrays and plain objects, nested at most ${MAX_BODY_DEPTH} deep`,
      },
    )
  }
  const datagram = encode([BEACON_VERSION, payload, identity.sign(BEACON_DOMAIN, payload)])
  if (datagram.length > maxBytes) {
    throw new BeaconTooLargeError(
      `a '${options.type}' beacon is ${datagram.length} bytes, over the ${maxBytes}-byte limit`,
      { hint: 'send less (a digest or an address to fetch the rest from over libp2p)' },
    )
  }
  return datagram
}

/**
 * Decodes an untrusted datagram: size cap, CBOR, version, schema, recipient, node id = PeerId of
 * the key, signature. Throws BeaconDropError (with the reason it is counted under) and nothing else.
 */
export function decodeBeacon(data: Uint8Array, options: DecodeBeaconOptions = {}): BeaconEnvelope {
  const maxBytes = options.maxBytes ?? MAX_BEACON_BYTES
  if (data.length > maxBytes) {
    throw new BeaconDropError(
      'oversized',
      `beacon of ${data.length} bytes is over the ${maxBytes}-byte limit`,
    )
  }
  let outer: unknown
  try {
    outer = decode(data, cborOptions)
  } catch (err) {
    throw malformed(`not CBOR (${(err as Error).message})`)
  }
  // Every version is a CBOR array led by its version number; the rest is that version's business.
  if (Array.isArray(outer) && typeof outer[0] === 'number' && outer[0] !== BEACON_VERSION) {
    throw new BeaconDropError('bad-version', `beacon version ${outer[0]} is not supported`)
  }
  const envelope = outerSchema.safeParse(outer)
  if (!envelope.success) throw malformed(describe(envelope.error))
  const [, payloadBytes, signature] = envelope.data
  let payload: Payload
  try {
    payload = parsePayload(payloadBytes)
  } catch (err) {
    throw malformed((err as Error).message)
  }
  if (options.self !== undefined && payload.to !== undefined && payload.to !== options.self) {
    throw new BeaconDropError('not-for-us', `beacon addressed to ${payload.to}`)
  }
  if (nodeIdOf(payload.k) !== payload.n) {
    throw new BeaconDropError('bad-node-id', `beacon node id ${payload.n} is not the PeerId of its key`)
  }
  // Through node:crypto (OpenSSL) with the key object kept: a socket anyone on the LAN can fill.
  if (!verifySignature(payload.k, BEACON_DOMAIN, payloadBytes, signature)) {
    throw new BeaconDropError('bad-signature', `beacon from ${payload.n} has a bad signature`)
  }
  const beacon: BeaconEnvelope = {
    type: payload.t,
    publicKey: payload.k,
    nodeId: payload.n,
    timestamp: payload.ts,
    nonce: payload.nc,
    body: payload.b,
  }
  if (payload.to !== undefined) beacon.to = payload.to
  return beacon
}

function parsePayload(bytes: Uint8Array): Payload {
  const parsed = payloadSchema.safeParse(decode(bytes, cborOptions))
  if (!parsed.success) throw new Error(describe(parsed.error))
  if (nestedDeeperThan(parsed.data.b, MAX_BODY_DEPTH)) {
    throw new Error(`body is nested more than ${MAX_BODY_DEPTH} deep`)
  }
  return parsed.data
}

/** True when arrays and maps in `value` nest deeper than `limit` (recursion stops there). */
function nestedDeeperThan(value: unknown, limit: number): boolean {
  if (value === null || typeof value !== 'object' || value instanceof Uint8Array) return false
  if (limit === 0) return true
  const children = Array.isArray(value) ? value : Object.values(value)
  return children.some((child) => nestedDeeperThan(child, limit - 1))
}

/** Node ids of the keys beacons came from lately (bounded: keys come from the network). */
const nodeIds = new Map<string, string>()

/** The node id (PeerId string) of a raw Ed25519 public key; '' when it is not one. */
function nodeIdOf(publicKey: Uint8Array): string {
  const key = Buffer.from(publicKey).toString('base64')
  let nodeId = nodeIds.get(key)
  if (nodeId === undefined) {
    try {
      nodeId = peerIdFromPublicKey(publicKeyFromRaw(publicKey)).toString()
    } catch {
      nodeId = ''
    }
    if (nodeIds.size >= 4096) nodeIds.clear()
    nodeIds.set(key, nodeId)
  }
  return nodeId
}

function malformed(problem: string): BeaconDropError {
  return new BeaconDropError('malformed', `malformed beacon: ${problem.slice(0, 200)}`)
}

function describe(error: z.ZodError): string {
  const issue = error.issues[0]
  return `${issue?.path.join('.') || 'envelope'}: ${issue?.message ?? 'invalid'}`
}
