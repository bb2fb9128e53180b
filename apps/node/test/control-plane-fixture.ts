import { type ChildProcess, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { copyFile, mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createLogger } from '@meshnet/core'
import type { InferenceEngine } from '@meshnet/engine'
import { dataDirLayout, ensureDataDir, loadOrCreateIdentity } from '@meshnet/identity'
import { createPool, loadPool, openPoolAdmin, saveCertificate } from '@meshnet/pool'
import type { JobResult, JobRunner, JobToken } from '@meshnet/protocols'
import { type RunningAgent, startAgent } from '../src/agent/agent.ts'
import { controlPlanePart } from '../src/agent/control-plane-part.ts'
import { jobsPart } from '../src/agent/jobs-part.ts'
import { type MeshPart, meshPart } from '../src/agent/mesh-part.ts'
import { ringPart } from '../src/agent/ring-part.ts'
import { weightsPart } from '../src/agent/weights-part.ts'
import type { NodeConfig } from '../src/config.ts'

const CONTROL_PLANE_BIN = join(import.meta.dirname, '..', '..', 'control-plane', 'src', 'bin.ts')

export interface ControlPlaneProcess {
  readonly url: string
  readonly port: number
  readonly token: string
  readonly process: ChildProcess
  output(): string
  /** Sends `signal` (SIGTERM: a clean stop; SIGKILL: a crash) and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<void>
}

/** Starts a real `mesh-control-plane` on 127.0.0.1 and waits until it listens. */
export async function startControlPlane(
  dataDir: string,
  options: { port?: number; onlineWindowMs?: number } = {},
): Promise<ControlPlaneProcess> {
  const args = ['--json', '--port', String(options.port ?? 0), '--data-dir', dataDir]
  if (options.onlineWindowMs !== undefined) args.push('--online-window', String(options.onlineWindowMs))
  const child = spawn(process.execPath, ['--conditions=meshnet-source', CONTROL_PLANE_BIN, ...args], {
    env: { ...process.env, MESH_LOG: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let out = ''
  child.stderr!.on('data', (chunk) => (out += chunk))
  const exited = once(child, 'exit')
  const first = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`control plane did not start within 30 s:\n${out}`))
    }, 30_000)
    child.stdout!.on('data', (chunk) => {
      stdout += chunk
      out += chunk
      const end = stdout.indexOf('\n')
      if (end === -1) return
      clearTimeout(timer)
      resolve(stdout.slice(0, end))
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`control plane exited early (code ${code}):\n${out}`))
    })
  })
  const { url, port, tokenFile } = JSON.parse(first) as { url: string; port: number; tokenFile: string }
  const token = (await readFile(tokenFile, 'utf8')).trim()
  return {
    url,
    port,
    token,
    process: child,
    output: () => out,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill(signal)
      await exited
    },
  }
}

/** Calls the control plane's API with its token. */
export async function api<T = Record<string, unknown>>(
  plane: Pick<ControlPlaneProcess, 'url' | 'token'>,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: T }> {
  const response = await fetch(`${plane.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${plane.token}`, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  })
  const text = await response.text()
  return { status: response.status, body: (text === '' ? {} : JSON.parse(text)) as T }
}

/** A job's Server-Sent Events, read with fetch until the control plane closes the stream. */
export async function jobEvents(
  plane: Pick<ControlPlaneProcess, 'url' | 'token'>,
  jobId: string,
): Promise<Array<{ event: string; data: Record<string, unknown> }>> {
  const response = await fetch(`${plane.url}/v1/jobs/${jobId}/stream`, {
    headers: { authorization: `Bearer ${plane.token}` },
  })
  const text = await response.text()
  return text
    .split('\n\n')
    .map((block) => {
      const fields = new Map<string, string>()
      for (const line of block.split('\n')) {
        const colon = line.indexOf(':')
        if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1).trimStart())
      }
      return fields
    })
    .filter((fields) => fields.has('event'))
    .map((fields) => ({ event: fields.get('event')!, data: JSON.parse(fields.get('data') ?? 'null') }))
}

/**
 * A pool created on the first data dir, with a member certificate for each other one saved in its
 * pool folder: what `mesh pool-join` leaves behind, without the LAN beacons these tests do without.
 */
export async function sharedPool(dataDirs: string[]): Promise<string> {
  const identities = []
  for (const dir of dataDirs) {
    const layout = await ensureDataDir(dir)
    identities.push((await loadOrCreateIdentity(layout.identityKey)).identity)
  }
  const { pool } = await createPool(dataDirs[0]!, { name: 'control-plane-pool' }, identities[0]!)
  const admin = await openPoolAdmin(dataDirs[0]!, pool.id, identities[0]!)
  for (const [i, dir] of dataDirs.entries()) {
    if (i === 0) continue
    const certificate = await admin.issueCertificate({
      devicePublicKey: identities[i]!.publicKey,
      role: 'member',
    })
    const poolDir = dataDirLayout(dir).poolDir(pool.id)
    await mkdir(poolDir, { recursive: true, mode: 0o700 })
    await copyFile(join(pool.dir, 'pool.json'), join(poolDir, 'pool.json'))
    await saveCertificate(await loadPool(dir, pool.id), certificate)
  }
  return pool.id
}

/**
 * A JobRunner over one engine, as the agent's runs a job on its own llama.cpp: every piece the engine
 * streams is a JobToken with the next index, the last one possibly only completing the text of the
 * token before it.
 */
export function engineRunner(engine: InferenceEngine, modelSha256: string): JobRunner {
  return {
    async *run(request, options): AsyncGenerator<JobToken, JobResult, undefined> {
      const started = performance.now()
      if (request.prompt === undefined) throw new Error('engineRunner runs prompts only, not chats')
      const stream = engine.stream(request.prompt, {
        maxTokens: request.maxTokens,
        ...(request.temperature === undefined ? {} : { temperature: request.temperature }),
        ...(request.topK === undefined ? {} : { topK: request.topK }),
        ...(request.topP === undefined ? {} : { topP: request.topP }),
        ...(request.seed === undefined ? {} : { seed: request.seed }),
        ...(options.signal ? { signal: options.signal } : {}),
      })
      let index = 0
      for (;;) {
        const step = await stream.next()
        if (!step.done) {
          yield { id: step.value.id, text: step.value.text, index: index++ }
          continue
        }
        const result = step.value
        return {
          jobId: randomUUID(),
          mode: 'single',
          model: modelSha256,
          tokens: result.tokens,
          text: result.text,
          stopReason: result.stopReason,
          stats: {
            tokensPerSecond: result.timings.tokensPerSecond,
            timeToFirstTokenMs: result.timings.promptMs,
            totalMs: performance.now() - started,
            promptTokens: result.timings.promptTokens,
            completionTokens: result.tokens.length,
            hopLatencyMs: 0,
            bytesMoved: 0,
            failovers: 0,
            members: [],
          },
        }
      }
    },
  }
}

export interface TestAgent {
  agent: RunningAgent
  mesh: MeshPart
  rings: ReturnType<typeof ringPart>
  controlPlane: ReturnType<typeof controlPlanePart>
  /** Every line the agent logged (human format). */
  log: string[]
}

/**
 * An in-process agent assembled as `mesh start` assembles it, with the control plane part added
 * last. `--local-only`, no beacons, no mDNS and no DHT: it cannot find other agents by itself. Jobs
 * run on `runner` when given, else on the agent's own (which needs `model`).
 */
export async function startTestAgent(
  dataDir: string,
  options: { url: string; token?: string; runner?: JobRunner; name?: string; model?: string },
): Promise<TestAgent> {
  const log: string[] = []
  const logger = createLogger({
    app: 'agent',
    level: 'info',
    stderr: { write: (line: string) => log.push(line) },
  })
  const config: NodeConfig = {
    networkId: 'meshnet',
    name: options.name ?? 'cp-test',
    threads: 1,
    ...(options.model === undefined ? {} : { model: options.model }),
    localOnly: true,
    beacons: false,
    mdns: false,
    dht: false,
  }
  let parts: Omit<TestAgent, 'agent' | 'log'> | undefined
  const agent = await startAgent({
    dataDir,
    config,
    logger,
    parts: (context) => {
      const mesh = meshPart(context, undefined)
      const weights = weightsPart(context, mesh)
      const rings = ringPart(context, mesh, weights)
      const jobs = jobsPart(context, mesh, rings, weights)
      const controlPlane = controlPlanePart(context, {
        mesh,
        rings: rings.rings,
        jobs: () => options.runner ?? jobs.runner(),
        capabilities: rings.capabilities,
        url: options.url,
        ...(options.token === undefined ? {} : { token: options.token }),
      })
      parts = { mesh, rings, controlPlane }
      return [mesh, weights, rings, jobs, controlPlane]
    },
  })
  return { agent, log, ...parts! }
}
