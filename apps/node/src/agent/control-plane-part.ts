import { readFile } from 'node:fs/promises'
import { freemem, totalmem } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { InvalidArgumentError, MeshError } from '@meshnet/core'
import { encodeRevocationList, formatRootPublicKey, type Pool } from '@meshnet/pool'
import {
  type JobRequest,
  type JobResult,
  type JobRunner,
  type JobToken,
  jobRequestSchema,
} from '@meshnet/protocols'
import type { Capabilities, RingGossip } from '@meshnet/ring'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import { z } from 'zod'
import type { AgentContext, AgentPart } from './agent.ts'
import type { MeshPart } from './mesh-part.ts'

/** Environment variable holding the control plane's bearer token when no flag gives it. */
export const CONTROL_PLANE_TOKEN_ENV = 'MESH_CONTROL_PLANE_TOKEN'

/** Intervals and limits of the agent's side of the control plane. */
const CLIENT = Object.freeze({
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

const errorBodySchema = z.object({
  error: z.object({ code: z.string().max(64), message: z.string().max(4096) }),
})
const deviceSchema = z.object({ rings: z.array(z.string().max(128)).max(10_000) })
const devicesSchema = z.object({ onlineWindowMs: z.number().int().positive() })
const topologySchema = z.object({
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
type Topology = z.infer<typeof topologySchema>
const joinSchema = z.object({ topology: topologySchema })
const poolSchema = z.object({ poolId: z.string() })
const revocationsSchema = z.object({ accepted: z.boolean() })
const finishedJobSchema = z.object({ id: z.string(), status: z.string() })
const appendedSchema = z.object({ tokenCount: z.number() })
const claimedJobSchema = z.object({
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
type ClaimedJob = z.infer<typeof claimedJobSchema>

interface Answer {
  status: number
  body: unknown
}

/** How a job's token upload ended: `gone` means the control plane took the job back. */
type UploadEnd = { ok: true } | { ok: false; gone: boolean; reason: string }

/** One streamed piece of output; `id` undefined for text that completes the previous token. */
interface Piece {
  id: number | undefined
  text: string
}

export interface ControlPlaneStatus {
  url: string
  /** The control plane knows this device now (false before the first registration and during outages). */
  registered: boolean
  /** When the last registration or heartbeat was acknowledged (ISO 8601), or null. */
  lastHeartbeat: string | null
  /** Requests that failed: no answer, garbage, or a refusal the agent did not expect. */
  failures: number
  /** Jobs from the control plane this agent completed. */
  jobsRun: number
}

export interface ControlPlanePartDeps {
  mesh: MeshPart
  rings: () => Map<string, RingGossip>
  /** The agent's job runner; undefined while it has none (then no job is claimed). */
  jobs: () => JobRunner | undefined
  /** Base URL of `mesh-control-plane`, such as `http://192.168.1.10:8080`. */
  url: string
  /** Bearer token; default `$MESH_CONTROL_PLANE_TOKEN`, else `control-plane.token` in the data dir. */
  token?: string
  /** What this node offers (the ring part's `capabilities`); default: what its rings announce. */
  capabilities?: () => Capabilities
}

/**
 * The agent's side of `mesh-control-plane`: registers this device and sends heartbeats; joins the
 * control plane's ring of every pool this node holds a certificate for (registering the pool by its
 * public root key when the control plane does not know it) and dials the members it lists that P2P
 * discovery has not found, so that gossip takes over; and claims queued jobs, runs them on the
 * agent's job runner and streams their tokens back. The control plane being down or answering
 * garbage never stops the agent: it warns once per outage, retries with backoff and counts failures.
 */
export function controlPlanePart(
  context: AgentContext,
  deps: ControlPlanePartDeps,
): AgentPart & { status(): ControlPlaneStatus } {
  const { identity, logger, config, layout } = context
  const { mesh } = deps
  const base = baseUrl(deps.url)
  const nodeId = identity.nodeId
  const name = config.name.trim() || 'meshnet-node'

  let life = new AbortController()
  let token: string | undefined
  let registered = false
  let lastHeartbeat: number | undefined
  let failures = 0
  let jobsRun = 0
  let outage = false
  let heartbeatMs: number = CLIENT.maxHeartbeatMs
  let backoffMs: number = CLIENT.backoffMs
  let syncTimer: NodeJS.Timeout | undefined
  let claimTimer: NodeJS.Timeout | undefined
  let syncing: Promise<void> | undefined
  let claiming: Promise<void> | undefined
  let running: Promise<void> | undefined
  let fallbackCapabilities: Capabilities | undefined
  /** Pools whose ring the control plane lists this device in (from its last answer). */
  let planeRings = new Set<string>()
  /** Pools joined on the control plane, with the certificate (base64) they were joined with. */
  const joined = new Map<string, string>()
  /** Certificates the control plane refused, by pool: not sent again until the certificate changes. */
  const refusedCertificates = new Map<string, string>()
  const postedRevocations = new Map<string, number>()
  const lastDial = new Map<string, number>()
  /** Warnings already given; cleared when the control plane answers as expected again. */
  const warned = new Set<string>()

  const warnOnce = (key: string, fields: Record<string, unknown>, message: string) => {
    if (warned.has(key)) logger.debug(fields, message)
    else {
      warned.add(key)
      logger.warn(fields, message)
    }
  }

  /** A request went unanswered or came back as garbage: an outage until the next good answer. */
  const failed = (err: unknown) => {
    if (life.signal.aborted) return
    failures++
    registered = false
    const message = (err as Error).message
    if (outage) logger.debug({ url: base, err: message }, 'control plane still unavailable')
    else {
      outage = true
      logger.warn({ url: base, err: message }, `control plane unavailable: ${message}`)
    }
  }

  const reached = () => {
    if (!outage) return
    outage = false
    logger.info({ url: base }, 'control plane reachable again; registering this device')
  }

  /**
   * The `{ error: { code, message } }` of a refusal. An answer without one is not the control
   * plane's (a proxy's page, another server): ControlPlaneUnavailableError.
   */
  const refusal = (answer: Answer, what: string): { code: string; message: string } => {
    const parsed = errorBodySchema.safeParse(answer.body)
    if (!parsed.success) {
      throw new ControlPlaneUnavailableError(
        base,
        `refused ${what} with HTTP ${answer.status} and no API error`,
      )
    }
    reached()
    return parsed.data.error
  }

  /** The control plane answered with a refusal the agent cannot fix by itself. */
  const refused = (answer: Answer, what: string, key = '') => {
    const { code, message } = refusal(answer, what)
    failures++
    const hint =
      answer.status === 401
        ? `; give the token in control-plane.token of its data dir (--control-plane-token or ${CONTROL_PLANE_TOKEN_ENV})`
        : ''
    warnOnce(`${code}${key}`, { url: base, code }, `control plane refused ${what}: ${message}${hint}`)
  }

  const request = async (
    method: 'GET' | 'POST',
    path: string,
    body?: unknown,
    signal = AbortSignal.any([life.signal, AbortSignal.timeout(CLIENT.requestTimeoutMs)]),
  ): Promise<Answer> => {
    const headers: Record<string, string> = {}
    if (token !== undefined) headers.authorization = `Bearer ${token}`
    if (body !== undefined) headers['content-type'] = 'application/json'
    const what = `${method} ${path}`
    let response: Response
    let text: string
    try {
      response = await fetch(`${base}${path}`, {
        method,
        headers,
        signal,
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      })
      text = await readCapped(response, CLIENT.responseBytes)
    } catch (err) {
      throw new ControlPlaneUnavailableError(base, `did not answer ${what}: ${causeText(err)}`, err)
    }
    if (response.status >= 500) {
      throw new ControlPlaneUnavailableError(base, `answered ${what} with HTTP ${response.status}`)
    }
    if (text === '') return { status: response.status, body: undefined }
    try {
      return { status: response.status, body: JSON.parse(text) }
    } catch (err) {
      throw new ControlPlaneUnavailableError(
        base,
        `answered ${what} with something that is not JSON (HTTP ${response.status})`,
        err,
      )
    }
  }

  const parse = <T>(schema: z.ZodType<T>, answer: Answer, what: string): T => {
    const parsed = schema.safeParse(answer.body)
    if (parsed.success) {
      reached()
      return parsed.data
    }
    const issue = parsed.error.issues[0]!
    throw new ControlPlaneUnavailableError(
      base,
      `answered ${what} with a body that is not the control plane API's (${issue.path.join('.') || 'body'}: ${issue.message})`,
    )
  }

  const addresses = () =>
    mesh
      .node()
      .multiaddrs()
      .map(String)
      .filter((a) => a.length <= 512)
      .slice(0, 32)

  /** What this node announces to its rings, else a plain estimate (the device in no pool yet). */
  const capabilities = (): Capabilities => {
    if (deps.capabilities !== undefined) return deps.capabilities()
    const ring: RingGossip | undefined = deps.rings().values().next().value
    const self = ring?.view().members.find((m) => m.nodeId === nodeId)
    if (self !== undefined) return self.capabilities
    fallbackCapabilities ??= {
      capacityBytes: Math.floor((totalmem() * 0.5) / 2 ** 26) * 2 ** 26,
      freeMemoryBytes: freemem(),
      computeScore: 0,
      engines: ['meshnet', 'llama-cpp'],
      models: [],
    }
    return fallbackCapabilities
  }

  // ---- device ----

  const register = async () => {
    const answer = await request('POST', '/v1/devices', {
      nodeId,
      name,
      addresses: addresses(),
      capabilities: capabilities(),
    })
    if (answer.status !== 200 && answer.status !== 201) {
      refused(answer, 'the device registration')
      return
    }
    planeRings = new Set(parse(deviceSchema, answer, 'POST /v1/devices').rings)
    registered = true
    lastHeartbeat = Date.now()
    warned.clear()
    logger.info(
      { url: base, nodeId },
      answer.status === 201 ? 'registered with the control plane' : 'registered again with the control plane',
    )
    const devices = await request('GET', '/v1/devices')
    if (devices.status === 200) {
      const { onlineWindowMs } = parse(devicesSchema, devices, 'GET /v1/devices')
      heartbeatMs = Math.min(
        CLIENT.maxHeartbeatMs,
        Math.max(CLIENT.minHeartbeatMs, Math.floor(onlineWindowMs / 3)),
      )
    }
  }

  const heartbeat = async () => {
    const answer = await request('POST', `/v1/devices/${nodeId}/heartbeat`, {
      addresses: addresses(),
      capabilities: capabilities(),
    })
    if (answer.status === 404 && refusal(answer, 'a heartbeat').code === 'ERR_DEVICE_NOT_FOUND') {
      registered = false
      logger.info({ url: base }, 'the control plane no longer knows this device; registering it again')
      await register()
      return
    }
    if (answer.status !== 200) {
      refused(answer, 'a heartbeat')
      return
    }
    planeRings = new Set(parse(deviceSchema, answer, 'a heartbeat').rings)
    lastHeartbeat = Date.now()
  }

  // ---- rings ----

  const registerPool = async (pool: Pool): Promise<boolean> => {
    const answer = await request('POST', '/v1/pools', {
      poolId: pool.id,
      rootPublicKey: formatRootPublicKey(pool.rootPublicKey),
    })
    if (answer.status !== 200 && answer.status !== 201) {
      refused(answer, `pool ${pool.id}`, pool.id)
      return false
    }
    parse(poolSchema, answer, 'POST /v1/pools')
    if (answer.status === 201) {
      postedRevocations.delete(pool.id)
      logger.info({ poolId: pool.id }, 'registered the pool with the control plane')
    }
    return true
  }

  /** Gives the control plane the pool's newest root-signed revocation list, so it drops revoked members. */
  const postRevocations = async (poolId: string) => {
    const list = mesh.gate().revocations(poolId)
    if (list === undefined || list.version <= (postedRevocations.get(poolId) ?? 0)) return
    const answer = await request('POST', `/v1/rings/${poolId}/revocations`, {
      list: Buffer.from(encodeRevocationList(list)).toString('base64'),
    })
    if (answer.status !== 200) {
      refused(answer, `the revocation list of ${poolId}`, poolId)
      return
    }
    parse(revocationsSchema, answer, 'a revocation list')
    postedRevocations.set(poolId, list.version)
  }

  const joinRing = async (pool: Pool, certificate: string, retry = true): Promise<Topology | undefined> => {
    const answer = await request('POST', `/v1/rings/${pool.id}/join`, {
      nodeId,
      name,
      addresses: addresses(),
      capabilities: capabilities(),
      certificate,
    })
    const code = answer.status === 200 ? undefined : refusal(answer, 'a ring join').code
    if (code === 'ERR_POOL_NOT_FOUND' && retry) {
      return (await registerPool(pool)) ? joinRing(pool, certificate, false) : undefined
    }
    if (answer.status !== 200) {
      if (answer.status === 403) refusedCertificates.set(pool.id, certificate)
      refused(answer, `this node in the ring of ${pool.id}`, pool.id)
      return undefined
    }
    const { topology } = parse(joinSchema, answer, `the ring join of ${pool.id}`)
    joined.set(pool.id, certificate)
    planeRings.add(pool.id)
    logger.info(
      { poolId: pool.id, epoch: topology.epoch, members: topology.members.length },
      'joined the ring of the pool on the control plane',
    )
    return topology
  }

  const readTopology = async (poolId: string): Promise<Topology | undefined> => {
    const answer = await request('GET', `/v1/rings/${poolId}/topology`)
    if (answer.status === 200) return parse(topologySchema, answer, `the topology of ${poolId}`)
    joined.delete(poolId) // the control plane lost the pool or the membership: join again next round
    if (answer.status === 404) refusal(answer, `the topology of ${poolId}`)
    else refused(answer, `the topology of ${poolId}`, poolId)
    return undefined
  }

  /**
   * Dials the members the control plane lists that this node's gossip ring does not have and that
   * are not connected: after the connection, certificates are exchanged and gossip takes over.
   */
  const dialMissing = (poolId: string, topology: Topology) => {
    const node = mesh.node()
    const gossip = new Set(
      deps
        .rings()
        .get(poolId)
        ?.view()
        .members.map((m) => m.nodeId) ?? [],
    )
    const connected = new Set(node.libp2p.getConnections().map((c) => c.remotePeer.toString()))
    const now = Date.now()
    for (const [id, at] of lastDial) if (now - at >= CLIENT.redialMs) lastDial.delete(id)
    for (const member of topology.members) {
      const id = member.nodeId
      if (id === nodeId || gossip.has(id) || connected.has(id) || lastDial.has(id)) continue
      const targets = member.addresses
        .map((address) => dialTarget(address, id))
        .filter((target) => target !== undefined)
        .slice(0, CLIENT.addressesPerMember)
      if (targets.length === 0) continue
      lastDial.set(id, now)
      node.libp2p
        .dial(targets, {
          signal: AbortSignal.any([life.signal, AbortSignal.timeout(CLIENT.requestTimeoutMs)]),
        })
        .then(
          () => logger.info({ poolId, nodeId: id }, 'connected to a ring member listed by the control plane'),
          (err: Error) =>
            logger.debug({ poolId, nodeId: id, err: err.message }, 'dial of a listed member failed'),
        )
    }
  }

  const syncRings = async () => {
    const gate = mesh.gate()
    const held = new Map<string, { pool: Pool; certificate: string }>()
    for (const pool of gate.pools()) {
      const bytes = gate.certificateBytes(pool.id)
      if (bytes !== undefined) held.set(pool.id, { pool, certificate: Buffer.from(bytes).toString('base64') })
    }
    for (const [poolId, { pool, certificate }] of held) {
      if (refusedCertificates.get(poolId) === certificate) continue
      const topology =
        joined.get(poolId) === certificate && planeRings.has(poolId)
          ? await readTopology(poolId)
          : await joinRing(pool, certificate)
      if (topology === undefined) continue
      await postRevocations(poolId)
      dialMissing(poolId, topology)
    }
    for (const poolId of [...joined.keys()]) {
      if (held.has(poolId)) continue
      await leaveRing(poolId)
      logger.info({ poolId }, 'left the ring on the control plane: no valid certificate for the pool')
    }
  }

  const leaveRing = async (poolId: string, signal?: AbortSignal) => {
    joined.delete(poolId)
    planeRings.delete(poolId)
    await request('POST', `/v1/rings/${poolId}/leave`, { nodeId }, signal)
  }

  // ---- jobs ----

  /** The runner's request for a claimed job, or why this node cannot run it. */
  const jobRequest = (job: ClaimedJob): JobRequest | string => {
    const parsed = jobRequestSchema.safeParse({
      ...(job.poolId === null ? {} : { poolId: job.poolId }),
      ...(job.model === null ? {} : { model: job.model }),
      prompt: job.prompt,
      maxTokens: job.maxTokens,
      temperature: job.temperature,
      topK: job.topK,
      topP: job.topP,
      seed: job.seed,
      mode: job.mode,
    })
    if (parsed.success) return parsed.data
    const issue = parsed.error.issues[0]!
    return `node ${nodeId} cannot run this job: ${issue.path.join('.') || 'request'}: ${issue.message}`
  }

  /** Posts `complete` or `fail`, retrying through an outage while the job's lease could still hold. */
  const report = async (
    job: Pick<ClaimedJob, 'id' | 'leaseMs'>,
    action: 'complete' | 'fail',
    body: object,
  ): Promise<boolean> => {
    const deadline = Date.now() + job.leaseMs
    let delay: number = CLIENT.backoffMs
    for (;;) {
      try {
        const answer = await request('POST', `/v1/jobs/${job.id}/${action}`, { nodeId, ...body })
        const what = `the ${action} of job ${job.id}`
        if (answer.status === 200) {
          parse(finishedJobSchema, answer, what)
          return true
        }
        if (answer.status !== 409) refused(answer, what)
        else
          logger.info(
            { jobId: job.id, reason: refusal(answer, what).message },
            'the control plane took the job back',
          )
        return false
      } catch (err) {
        failed(err)
        if (life.signal.aborted || Date.now() + delay > deadline) return false
        await sleep(delay, undefined, { signal: life.signal }).catch(() => {})
        delay = Math.min(delay * 2, CLIENT.maxBackoffMs)
      }
    }
  }

  /**
   * Appends a job's output as it streams: everything pending goes in one append (within the control
   * plane's per-append limits) at most every `flushMs`; an empty append renews the lease while the
   * runner is still on the prompt. Ends when the output is all sent, or when the control plane takes
   * the job back (409) or refuses the output.
   */
  const startUpload = (job: ClaimedJob, signal: AbortSignal) => {
    const pending: Piece[] = []
    let finished = false
    let wake: (() => void) | undefined
    const renewMs = Math.max(1_000, Math.floor(job.leaseMs / 3))
    const pause = (ms: number) =>
      new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer)
          signal.removeEventListener('abort', done)
          wake = undefined
          resolve()
        }
        const timer = setTimeout(done, ms)
        signal.addEventListener('abort', done, { once: true })
        wake = done
      })
    const batch = () => {
      let count = 0
      let tokens = 0
      let chars = 0
      for (const piece of pending) {
        if (piece.id !== undefined && tokens === CLIENT.tokensPerAppend) break
        if (count > 0 && chars + piece.text.length > CLIENT.textPerAppend) break
        count++
        chars += piece.text.length
        if (piece.id !== undefined) tokens++
      }
      const taken = pending.slice(0, count)
      return {
        count,
        tokens: taken.flatMap((p) => (p.id === undefined ? [] : [p.id])),
        text: taken.map((p) => p.text).join(''),
      }
    }
    const loop = async (): Promise<UploadEnd> => {
      let lastAck = Date.now()
      let delay: number = CLIENT.flushMs
      for (;;) {
        if (signal.aborted) return { ok: false, gone: true, reason: 'stopped' }
        const next = batch()
        if (next.count === 0 && (finished || Date.now() - lastAck < renewMs)) {
          if (finished) return { ok: true }
          await pause(CLIENT.flushMs)
          continue
        }
        try {
          const answer = await request('POST', `/v1/jobs/${job.id}/tokens`, {
            nodeId,
            tokens: next.tokens,
            text: next.text,
          })
          const what = `the output of job ${job.id}`
          if (answer.status !== 200) {
            const { code, message } = refusal(answer, what)
            const gone = code === 'ERR_JOB_NOT_RUNNING' || code === 'ERR_NOT_ASSIGNED'
            return { ok: false, gone, reason: message }
          }
          parse(appendedSchema, answer, what)
          pending.splice(0, next.count)
          lastAck = Date.now()
          delay = CLIENT.flushMs
          if (!finished) await pause(CLIENT.flushMs)
        } catch (err) {
          failed(err)
          if (Date.now() - lastAck > job.leaseMs) {
            return {
              ok: false,
              gone: true,
              reason: `the control plane was unavailable for longer than the job's ${job.leaseMs} ms lease`,
            }
          }
          await pause(delay)
          delay = Math.min(delay * 2, CLIENT.maxBackoffMs)
        }
      }
    }
    // A runner's last piece may only complete the text of the token before it (llama.cpp's tail):
    // each piece is held until the next one or the result shows whether it is a token of its own.
    let held: JobToken | undefined
    let lastIndex = -1
    let queuedTokens = 0
    const enqueue = (piece: JobToken, textOnly: boolean) => {
      const fresh = !textOnly && piece.index > lastIndex
      if (fresh) {
        lastIndex = piece.index
        queuedTokens++
      }
      pending.push({ id: fresh ? piece.id : undefined, text: piece.text })
      if (pending.length >= CLIENT.tokensPerAppend) wake?.()
    }
    return {
      push(token: JobToken) {
        if (held !== undefined) enqueue(held, false)
        held = token
      },
      /** The output is complete: `result` tells whether the held piece is a token. */
      finish(result: JobResult | undefined) {
        if (held !== undefined) enqueue(held, result !== undefined && queuedTokens >= result.tokens.length)
        held = undefined
        finished = true
        wake?.()
      },
      ended: loop(),
    }
  }

  const runJob = async (runner: JobRunner, job: ClaimedJob) => {
    const request = jobRequest(job)
    if (typeof request === 'string') {
      logger.warn({ jobId: job.id }, request)
      await report(job, 'fail', { error: request.slice(0, CLIENT.errorChars) })
      return
    }
    logger.info({ jobId: job.id, poolId: job.poolId }, 'running a job from the control plane')
    const abort = new AbortController()
    const signal = AbortSignal.any([abort.signal, life.signal])
    const upload = startUpload(job, signal)
    void upload.ended.then((end) => {
      if (!end.ok) abort.abort()
    })
    let result: JobResult | undefined
    let error: unknown
    try {
      const stream = runner.run(request, { origin: 'control-plane', signal })
      for (;;) {
        const step = await stream.next()
        if (step.done) {
          result = step.value
          break
        }
        upload.push(step.value)
      }
    } catch (err) {
      error = err
    }
    upload.finish(result)
    const end = await upload.ended
    if (life.signal.aborted) return // stopping: the lease lapses and the job goes back to the queue
    if (!end.ok && end.gone) {
      logger.info({ jobId: job.id, reason: end.reason }, 'stopped a job the control plane took back')
      return
    }
    if (!end.ok || result === undefined) {
      const why = !end.ok ? `the control plane refused its output: ${end.reason}` : causeText(error)
      logger.warn({ jobId: job.id, err: why }, 'a job from the control plane failed')
      await report(job, 'fail', { error: (why || 'the job failed').slice(0, CLIENT.errorChars) })
      return
    }
    const stats = { ...result.stats, mode: result.mode, model: result.model, stopReason: result.stopReason }
    if (await report(job, 'complete', { stats })) {
      jobsRun++
      logger.info({ jobId: job.id, tokens: result.tokens.length }, 'completed a job from the control plane')
    }
  }

  const claim = async () => {
    const runner = deps.jobs()
    if (runner === undefined || !registered || outage || running !== undefined) return
    // Jobs without a pool too, unless the runner would have to guess which of several pools runs them.
    const pools: Array<string | undefined> = [...joined.keys()]
    if (deps.rings().size <= 1) pools.push(undefined)
    for (const poolId of pools) {
      const answer = await request(
        'POST',
        '/v1/jobs/claim',
        poolId === undefined ? { nodeId } : { nodeId, poolId },
      )
      const code =
        answer.status === 200 || answer.status === 204 ? undefined : refusal(answer, 'a claim').code
      if (answer.status === 204) {
        reached()
        continue
      }
      if (code === 'ERR_NOT_RING_MEMBER' && poolId !== undefined) {
        joined.delete(poolId) // no longer in the control plane's ring: the next round joins again
        continue
      }
      if (code === 'ERR_DEVICE_NOT_FOUND') {
        registered = false
        return
      }
      if (answer.status !== 200) {
        refused(answer, 'a job claim')
        return
      }
      const parsed = claimedJobSchema.safeParse(answer.body)
      if (!parsed.success) {
        const id = z.object({ id: z.uuid() }).safeParse(answer.body)
        if (id.success) {
          const job = { id: id.data.id, leaseMs: CLIENT.requestTimeoutMs }
          await report(job, 'fail', { error: `node ${nodeId} could not read the claimed job` })
        }
        parse(claimedJobSchema, answer, 'a job claim') // throws: counted as garbage
        return
      }
      reached()
      running = runJob(runner, parsed.data)
        .catch((err: Error) => logger.warn({ err: err.message }, 'running a control plane job failed'))
        .finally(() => {
          running = undefined
        })
      return
    }
  }

  // ---- loops ----

  const guarded = async (round: () => Promise<void>) => {
    try {
      await round()
    } catch (err) {
      if (life.signal.aborted) return
      if (err instanceof ControlPlaneUnavailableError) failed(err)
      else {
        failures++
        warnOnce(
          `internal:${(err as Error).message}`,
          { err: (err as Error).message },
          'control plane round failed',
        )
      }
    }
  }

  const syncLoop = async () => {
    syncing = guarded(async () => {
      if (registered) await heartbeat()
      else await register()
      if (registered) await syncRings()
    })
    await syncing
    if (life.signal.aborted) return
    let delay = heartbeatMs
    if (!registered || outage) {
      delay = backoffMs
      backoffMs = Math.min(backoffMs * 2, CLIENT.maxBackoffMs)
    } else backoffMs = CLIENT.backoffMs
    syncTimer = setTimeout(() => void syncLoop(), delay)
  }

  const claimLoop = async () => {
    claiming = guarded(claim)
    await claiming
    if (!life.signal.aborted) claimTimer = setTimeout(() => void claimLoop(), CLIENT.claimMs)
  }

  return {
    name: 'controlPlane',
    async start() {
      life = new AbortController()
      token = deps.token ?? process.env[CONTROL_PLANE_TOKEN_ENV]
      token ??= await readFile(join(layout.root, CLIENT.tokenFile), 'utf8')
        .then((text) => text.trim() || undefined)
        .catch(() => undefined)
      if (token === undefined) {
        logger.warn(
          { url: base },
          `no control plane token: it will refuse every request; pass --control-plane-token or set ${CONTROL_PLANE_TOKEN_ENV}`,
        )
      }
      logger.info({ url: base }, 'using the control plane')
      syncTimer = setTimeout(() => void syncLoop(), 0)
      claimTimer = setTimeout(() => void claimLoop(), CLIENT.claimMs)
    },
    async stop() {
      clearTimeout(syncTimer)
      clearTimeout(claimTimer)
      const goodbye = registered && !outage
      life.abort()
      const settled = Promise.allSettled([syncing, claiming, running])
      await Promise.race([settled, sleep(CLIENT.stopTimeoutMs)])
      if (goodbye) {
        const signal = AbortSignal.timeout(CLIENT.stopTimeoutMs)
        await Promise.allSettled([...joined.keys()].map((poolId) => leaveRing(poolId, signal)))
      }
      registered = false
    },
    status: () => ({
      url: base,
      registered,
      lastHeartbeat: lastHeartbeat === undefined ? null : new Date(lastHeartbeat).toISOString(),
      failures,
      jobsRun,
    }),
  }
}

/** The control plane's base URL without a trailing slash; InvalidArgumentError when it is not http(s). */
function baseUrl(url: string): string {
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
function dialTarget(address: string, nodeId: string): Multiaddr | undefined {
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
async function readCapped(response: Response, max: number): Promise<string> {
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

function causeText(err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  const cause = err.cause instanceof Error ? `: ${err.cause.message}` : ''
  return `${err.message}${cause}`
}
