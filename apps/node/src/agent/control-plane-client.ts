import { createHash, randomBytes } from 'node:crypto'
import { InvalidArgumentError, type Logger, MeshError, parseWith } from '@meshnet/core'
import type { NodeIdentity } from '@meshnet/identity'
import {
  controlPlaneId,
  DEVICE_REQUEST_DOMAIN,
  DEVICE_SIGNATURE_HEADERS,
  deviceRequestPayload,
} from '@meshnet/protocols'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import { z } from 'zod'

/** Environment variable holding the control plane's bearer token when no flag gives it. */
export const CONTROL_PLANE_TOKEN_ENV = 'MESH_CONTROL_PLANE_TOKEN'

/** Intervals and limits of the agent's side of the control plane. */
export const CLIENT = Object.freeze({
  /** Job claims while the agent has a job runner and no job. */
  claimMs: 1_000,
  /** Heartbeats go out at a third of the control plane's online window, within these bounds. */
  minHeartbeatMs: 250,
  maxHeartbeatMs: 5_000,
  /** First retry after a failure; doubles up to `maxBackoffMs`. */
  backoffMs: 1_000,
  maxBackoffMs: 15_000,
  requestTimeoutMs: 10_000,
  /** What `stop()` waits for the goodbye (ring leaves) and for a running job to wind down. */
  stopTimeoutMs: 2_000,
  responseBytes: 4 * 1024 * 1024,
  /** Tokens are sent at most this often while a job streams (one append carries all pending). */
  flushMs: 100,
  /** The control plane's limits of one token append and of an error message (JOB_LIMITS). */
  tokensPerAppend: 4096,
  textPerAppend: 60_000,
  errorChars: 4096,
  /** A listed ring member that is not connected is dialed again after this long. */
  redialMs: 10_000,
  addressesPerMember: 8,
  /** The control plane's token file, when it shares this agent's data dir. */
  tokenFile: 'control-plane.token',
})

/** The control plane did not answer, or answered something that is not its API. */
export class ControlPlaneUnavailableError extends MeshError {
  override name = 'ControlPlaneUnavailableError' as const
  constructor(url: string, what: string, cause?: unknown) {
    super('ERR_CONTROL_PLANE_UNAVAILABLE', `control plane ${url} ${what}`, {
      cause,
      hint: 'check that mesh-control-plane runs there; the agent keeps working over P2P and retries',
    })
  }
}

export const errorBodySchema = z.object({
  error: z.object({ code: z.string().max(64), message: z.string().max(4096) }),
})
export const deviceSchema = z.object({ rings: z.array(z.string().max(128)).max(10_000) })
export const devicesSchema = z.object({ onlineWindowMs: z.number().int().positive() })
export const topologySchema = z.object({
  epoch: z.number().int().nonnegative(),
  members: z
    .array(
      z.object({
        nodeId: z.string().min(1).max(128),
        addresses: z.array(z.string().max(512)).max(64),
      }),
    )
    .max(10_000),
})
export type Topology = z.infer<typeof topologySchema>
export const joinSchema = z.object({ topology: topologySchema })
export const poolSchema = z.object({ poolId: z.string() })
export const revocationsSchema = z.object({ accepted: z.boolean() })
export const finishedJobSchema = z.object({ id: z.string(), status: z.string() })
export const appendedSchema = z.object({ tokenCount: z.number() })
export const claimedJobSchema = z.object({
  id: z.uuid(),
  poolId: z.string().nullable(),
  model: z.string().nullable(),
  mode: z.string(),
  prompt: z.string(),
  maxTokens: z.number(),
  temperature: z.number().optional(),
  topK: z.number().optional(),
  topP: z.number().optional(),
  seed: z.number().optional(),
  leaseMs: z.number().int().positive(),
})
export type ClaimedJob = z.infer<typeof claimedJobSchema>

export interface Answer {
  status: number
  body: unknown
}

/** How a job's token upload ended: `gone` means the control plane took the job back. */
export type UploadEnd = { ok: true } | { ok: false; gone: boolean; reason: string }

/** One streamed piece of output; `id` undefined for text that completes the previous token. */
export interface Piece {
  id: number | undefined
  text: string
}

/**
 * The agent's HTTP client of the control plane: requests with the bearer token, signed with the
 * node key (device requests must be), with a size cap; answers checked against the API's shapes,
 * and outages told apart from refusals (an outage is logged once until the next good answer; a
 * refusal once per kind). A 429 counts as an outage, so that the agent backs off.
 */
export class ControlPlaneClient {
  readonly base: string
  token: string | undefined
  /** Requests that failed or were refused since the agent started. */
  failures = 0
  /** The last request went unanswered; true until the next good answer. */
  outage = false
  readonly #identity: Pick<NodeIdentity, 'nodeId' | 'sign'>
  readonly #logger: Logger
  readonly #signal: () => AbortSignal
  readonly #onOutage: () => void
  readonly #warned = new Set<string>()

  constructor(init: {
    url: string
    /** The node key that signs every request (the control plane checks it on device requests). */
    identity: Pick<NodeIdentity, 'nodeId' | 'sign'>
    logger: Logger
    signal: () => AbortSignal
    onOutage: () => void
  }) {
    this.base = baseUrl(init.url)
    this.#identity = init.identity
    this.#logger = init.logger
    this.#signal = init.signal
    this.#onOutage = init.onOutage
  }

  /** Warns once per `key` (then at debug level) until `resetWarnings()`. */
  warnOnce(key: string, fields: Record<string, unknown>, message: string): void {
    if (this.#warned.has(key)) this.#logger.debug(fields, message)
    else {
      this.#warned.add(key)
      this.#logger.warn(fields, message)
    }
  }

  resetWarnings(): void {
    this.#warned.clear()
  }

  /** A request went unanswered or came back as garbage: an outage until the next good answer. */
  failed(err: unknown): void {
    if (this.#signal().aborted) return
    this.failures++
    this.#onOutage()
    const message = (err as Error).message
    if (this.outage) this.#logger.debug({ url: this.base, err: message }, 'control plane still unavailable')
    else {
      this.outage = true
      this.#logger.warn({ url: this.base, err: message }, `control plane unavailable: ${message}`)
    }
  }

  reached(): void {
    if (!this.outage) return
    this.outage = false
    this.#logger.info({ url: this.base }, 'control plane reachable again; registering this device')
  }

  /**
   * The `{ error: { code, message } }` of a refusal. An answer without one is not the control
   * plane's (a proxy's page, another server): ControlPlaneUnavailableError.
   */
  refusal(answer: Answer, what: string): { code: string; message: string } {
    const parsed = errorBodySchema.safeParse(answer.body)
    if (!parsed.success) {
      throw new ControlPlaneUnavailableError(
        this.base,
        `refused ${what} with HTTP ${answer.status} and no API error`,
      )
    }
    this.reached()
    return parsed.data.error
  }

  /** The control plane answered with a refusal the agent cannot fix by itself. */
  refused(answer: Answer, what: string, key = ''): void {
    const { code, message } = this.refusal(answer, what)
    this.failures++
    const hint =
      code === 'ERR_UNAUTHORIZED'
        ? `; give the token in control-plane.token of its data dir (--control-plane-token or ${CONTROL_PLANE_TOKEN_ENV})`
        : ''
    this.warnOnce(
      `${code}${key}`,
      { url: this.base, code },
      `control plane refused ${what}: ${message}${hint}`,
    )
  }

  async request(
    method: 'GET' | 'POST',
    path: string,
    body?: unknown,
    signal = AbortSignal.any([this.#signal(), AbortSignal.timeout(CLIENT.requestTimeoutMs)]),
  ): Promise<Answer> {
    const json = body === undefined ? undefined : JSON.stringify(body)
    const headers: Record<string, string> = {}
    if (this.token !== undefined) {
      headers.authorization = `Bearer ${this.token}`
      Object.assign(headers, this.#signature(this.token, method, path, json ?? ''))
    }
    if (json !== undefined) headers['content-type'] = 'application/json'
    const what = `${method} ${path}`
    let response: Response
    let text: string
    try {
      response = await fetch(`${this.base}${path}`, {
        method,
        headers,
        signal,
        ...(json === undefined ? {} : { body: json }),
      })
      text = await readCapped(response, CLIENT.responseBytes)
    } catch (err) {
      throw new ControlPlaneUnavailableError(this.base, `did not answer ${what}: ${causeText(err)}`, err)
    }
    if (response.status >= 500) {
      throw new ControlPlaneUnavailableError(this.base, `answered ${what} with HTTP ${response.status}`)
    }
    if (response.status === 429) {
      const after = response.headers.get('retry-after')
      throw new ControlPlaneUnavailableError(
        this.base,
        `refused ${what}: too many requests from this node (429${after === null ? '' : `, retry after ${after} s`})`,
      )
    }
    if (text === '') return { status: response.status, body: undefined }
    try {
      return { status: response.status, body: JSON.parse(text) }
    } catch (err) {
      throw new ControlPlaneUnavailableError(
        this.base,
        `answered ${what} with something that is not JSON (HTTP ${response.status})`,
        err,
      )
    }
  }

  /**
   * The headers that sign a request with the node key for the control plane of `token`
   * (`deviceRequestPayload` of @meshnet/protocols), with a fresh nonce.
   */
  #signature(token: string, method: string, path: string, body: string): Record<string, string> {
    const timestamp = Date.now()
    const nonce = randomBytes(16).toString('base64url')
    const { nodeId } = this.#identity
    const payload = deviceRequestPayload({
      planeId: controlPlaneId(token),
      method,
      path,
      bodySha256: createHash('sha256').update(body).digest('hex'),
      timestamp,
      nonce,
      nodeId,
    })
    return {
      [DEVICE_SIGNATURE_HEADERS.nodeId]: nodeId,
      [DEVICE_SIGNATURE_HEADERS.timestamp]: String(timestamp),
      [DEVICE_SIGNATURE_HEADERS.nonce]: nonce,
      [DEVICE_SIGNATURE_HEADERS.signature]: Buffer.from(
        this.#identity.sign(DEVICE_REQUEST_DOMAIN, payload),
      ).toString('base64url'),
    }
  }

  /** The answer's body in the shape the API promises, else ControlPlaneUnavailableError. */
  parse<T>(schema: z.ZodType<T>, answer: Answer, what: string): T {
    const body = parseWith(
      schema,
      answer.body,
      `answered ${what} with a body that is not the control plane API's:`,
      (message, options) => new ControlPlaneUnavailableError(this.base, message, options.cause),
    )
    this.reached()
    return body
  }
}

/** The control plane's base URL without a trailing slash; InvalidArgumentError when it is not http(s). */
export function baseUrl(url: string): string {
  let parsed: URL | undefined
  try {
    parsed = new URL(url)
  } catch {}
  if (parsed === undefined || (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')) {
    throw new InvalidArgumentError(
      `--control-plane ${JSON.stringify(url)} is not an http:// or https:// URL`,
      {
        hint: 'give the URL mesh-control-plane printed, such as http://192.168.1.10:8080',
      },
    )
  }
  return `${parsed.origin}${parsed.pathname.replace(/\/+$/, '')}`
}

/** A member's address as a dial target ending in its own `/p2p/<node id>`; undefined when unusable. */
export function dialTarget(address: string, nodeId: string): Multiaddr | undefined {
  const peer = address.lastIndexOf('/p2p/')
  let text = `${address}/p2p/${nodeId}`
  if (address.endsWith(`/p2p/${nodeId}`)) text = address
  else if (peer !== -1 && !address.endsWith('/p2p-circuit')) return undefined // another peer's address
  try {
    return multiaddr(text)
  } catch {
    return undefined
  }
}

/** Reads a response body of at most `max` bytes. */
export async function readCapped(response: Response, max: number): Promise<string> {
  const declared = Number(response.headers.get('content-length'))
  if (Number.isFinite(declared) && declared > max) {
    await response.body?.cancel()
    throw new Error(`a response of ${declared} bytes, over the ${max}-byte limit`)
  }
  if (response.body === null) return ''
  const chunks: Uint8Array[] = []
  let size = 0
  for await (const chunk of response.body) {
    size += chunk.length
    if (size > max) throw new Error(`a response over the ${max}-byte limit`)
    chunks.push(chunk)
  }
  return Buffer.concat(chunks).toString('utf8')
}

export function causeText(err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  const cause = err.cause instanceof Error ? `: ${err.cause.message}` : ''
  return `${err.message}${cause}`
}
