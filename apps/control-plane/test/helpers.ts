import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateIdentity, type NodeIdentity } from '@meshnet/identity'
import {
  createPool,
  encodeCertificate,
  formatRootPublicKey,
  openPoolAdmin,
  type Pool,
  type PoolRole,
} from '@meshnet/pool'
import { DEVICE_REQUEST_DOMAIN, DEVICE_SIGNATURE_HEADERS, deviceRequestPayload } from '@meshnet/protocols'
import { type ControlPlane, type ControlPlaneOptions, startControlPlane } from '../src/index.ts'

/** A clock the test moves by hand. */
export interface TestClock {
  now(): number
  advance(ms: number): void
}

export function testClock(start = Date.now()): TestClock {
  let t = start
  return {
    now: () => t,
    advance(ms) {
      t += ms
    },
  }
}

export interface ApiResponse<T = Record<string, unknown>> {
  status: number
  body: T
  headers: Headers
}

export interface ApiOptions {
  /** Bearer token; default the plane's, `null` for none. */
  token?: string | null
  /** The body as sent, instead of `body` as JSON. */
  raw?: string
  /**
   * The node key that signs the request; default the key of the node the request names (the
   * `:nodeId` of the path, else `nodeId` of the body) when the test made it with `t.identity()`;
   * `null`: not signed.
   */
  as?: NodeIdentity | null
  /** Signature fields to use instead of fresh ones (a replay, a stale timestamp). */
  signature?: Partial<SignatureFields>
  /** More headers; they replace the signature's. */
  headers?: Record<string, string>
}

export interface SignatureFields {
  planeId: string
  timestamp: number
  nonce: string
}

export interface TestPlane {
  plane: ControlPlane
  clock: TestClock
  dataDir: string
  /** A new node identity whose requests `api` signs by default. */
  identity(): NodeIdentity
  /** The headers that sign a request for this plane with `as` (see `deviceRequestPayload`). */
  sign(
    as: NodeIdentity,
    method: string,
    path: string,
    body: string,
    fields?: Partial<SignatureFields>,
  ): Record<string, string>
  /** Calls the API with the plane's token, signed as `ApiOptions.as` says. */
  api<T = Record<string, unknown>>(
    method: string,
    path: string,
    body?: unknown,
    options?: ApiOptions,
  ): Promise<ApiResponse<T>>
  stop(): Promise<void>
}

/** The node a request names: the `:nodeId` of `/v1/devices/:nodeId…`, else the body's `nodeId`. */
function namedNode(path: string, body: unknown): string | undefined {
  const match = /^\/v1\/devices\/([^/?]+)/.exec(path)
  if (match !== null) return match[1]
  const nodeId = (body as { nodeId?: unknown } | undefined)?.nodeId
  return typeof nodeId === 'string' ? nodeId : undefined
}

/** Starts an in-process control plane on 127.0.0.1 (a free port) in a fresh temp data dir. */
export async function startTestPlane(options: Partial<ControlPlaneOptions> = {}): Promise<TestPlane> {
  const dataDir = await mkdtemp(join(tmpdir(), 'meshnet-control-plane-'))
  const clock = testClock()
  const plane = await startControlPlane({ dataDir, port: 0, now: clock.now, ...options })
  const keys = new Map<string, NodeIdentity>()
  const sign: TestPlane['sign'] = (as, method, path, body, fields = {}) => {
    const timestamp = fields.timestamp ?? clock.now()
    const nonce = fields.nonce ?? randomBytes(16).toString('base64url')
    const payload = deviceRequestPayload({
      planeId: fields.planeId ?? plane.planeId,
      method,
      path,
      bodySha256: createHash('sha256').update(body).digest('hex'),
      timestamp,
      nonce,
      nodeId: as.nodeId,
    })
    return {
      [DEVICE_SIGNATURE_HEADERS.nodeId]: as.nodeId,
      [DEVICE_SIGNATURE_HEADERS.timestamp]: String(timestamp),
      [DEVICE_SIGNATURE_HEADERS.nonce]: nonce,
      [DEVICE_SIGNATURE_HEADERS.signature]: Buffer.from(as.sign(DEVICE_REQUEST_DOMAIN, payload)).toString(
        'base64url',
      ),
    }
  }
  return {
    plane,
    clock,
    dataDir,
    identity() {
      const identity = generateIdentity()
      keys.set(identity.nodeId, identity)
      return identity
    },
    sign,
    async api<T>(
      method: string,
      path: string,
      body?: unknown,
      opts: ApiOptions = {},
    ): Promise<ApiResponse<T>> {
      const token = opts.token === undefined ? plane.token : opts.token
      const text = opts.raw ?? (body === undefined ? undefined : JSON.stringify(body))
      const headers: Record<string, string> = { 'content-type': 'application/json' }
      if (token !== null) headers.authorization = `Bearer ${token}`
      const named = namedNode(path, body)
      const as = opts.as === undefined ? (named === undefined ? undefined : keys.get(named)) : opts.as
      if (as !== undefined && as !== null)
        Object.assign(headers, sign(as, method, path, text ?? '', opts.signature))
      Object.assign(headers, opts.headers)
      const response = await fetch(`${plane.url}${path}`, { method, headers, body: text })
      const answer = await response.text()
      return {
        status: response.status,
        body: (answer === '' ? {} : JSON.parse(answer)) as T,
        headers: response.headers,
      }
    },
    async stop() {
      await plane.close()
      await rm(dataDir, { recursive: true, force: true })
    },
  }
}

/** Capabilities of a test device. */
export function capabilities(capacityBytes = 8 * 2 ** 30) {
  return {
    capacityBytes,
    freeMemoryBytes: capacityBytes,
    computeScore: 10,
    engines: ['llama.cpp'],
    models: [],
  }
}

export interface TestPool {
  pool: Pool
  /** A real certificate for `device`: base64 of its canonical bytes. */
  certify(device: NodeIdentity, options?: { role?: PoolRole; now?: number; ttlMs?: number }): Promise<string>
  /** Signs the next revocation list; base64 of its bytes. */
  revoke(options: { serials?: string[]; nodeIds?: string[] }): Promise<string>
}

/** A real pool, its root key in `adminDir`, administered with @meshnet/pool. */
export async function makeTestPool(adminDir: string, name: string): Promise<TestPool> {
  const adminIdentity = generateIdentity()
  const { pool } = await createPool(adminDir, { name }, adminIdentity)
  const admin = await openPoolAdmin(adminDir, pool.id, adminIdentity)
  const base64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64')
  return {
    pool,
    async certify(device, options = {}) {
      const cert = await admin.issueCertificate({
        devicePublicKey: device.publicKey,
        role: options.role ?? 'member',
        ...(options.now === undefined ? {} : { now: options.now }),
        ...(options.ttlMs === undefined ? {} : { ttlMs: options.ttlMs }),
      })
      return base64(encodeCertificate(cert))
    },
    async revoke(options) {
      return base64((await admin.revoke(options)).bytes)
    },
  }
}

export function registerPool(t: TestPlane, p: TestPool): Promise<ApiResponse> {
  return t.api('POST', '/v1/pools', {
    poolId: p.pool.id,
    rootPublicKey: formatRootPublicKey(p.pool.rootPublicKey),
  })
}

export interface SseEvent {
  event: string
  data: unknown
  id?: string
}

/** Opens a job's event stream with fetch; `events` resolves when the server closes it. */
export async function openStream(
  t: TestPlane,
  jobId: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; contentType: string | null; events: Promise<SseEvent[]> }> {
  const response = await fetch(`${t.plane.url}/v1/jobs/${jobId}/stream`, {
    headers: { authorization: `Bearer ${t.plane.token}`, ...headers },
  })
  const read = async () => {
    const events: SseEvent[] = []
    let buffer = ''
    const decoder = new TextDecoder()
    for await (const chunk of response.body!) {
      buffer += decoder.decode(chunk as Uint8Array, { stream: true })
      let end = buffer.indexOf('\n\n')
      while (end !== -1) {
        const block = buffer.slice(0, end)
        buffer = buffer.slice(end + 2)
        end = buffer.indexOf('\n\n')
        const fields = new Map<string, string>()
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue
          const colon = line.indexOf(':')
          fields.set(line.slice(0, colon), line.slice(colon + 1).trimStart())
        }
        if (!fields.has('event')) continue
        events.push({
          event: fields.get('event')!,
          data: JSON.parse(fields.get('data') ?? 'null'),
          ...(fields.has('id') ? { id: fields.get('id')! } : {}),
        })
      }
    }
    return events
  }
  return { status: response.status, contentType: response.headers.get('content-type'), events: read() }
}
