import { mkdtemp, rm } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateModel } from '@meshnet/gguf'
import { createEngine } from '@meshnet/llama-cpp'
import type { JobRunner } from '@meshnet/protocols'
import { eventually } from '@meshnet/test-harness'
import { buildManifest } from '@meshnet/weights'
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest'
import {
  api,
  type ControlPlaneProcess,
  engineRunner,
  jobEvents,
  sharedPool,
  startControlPlane,
  startTestAgent,
  type TestAgent,
} from './control-plane-fixture.ts'

let root: string
const roots: string[] = []
const agents: TestAgent[] = []
const planes: ControlPlaneProcess[] = []
const cleanups: Array<() => Promise<void>> = []
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-cp-agent-'))
})
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.agent.stop()))
  await Promise.all(planes.splice(0).map((p) => p.stop()))
  for (const cleanup of cleanups.splice(0)) await cleanup()
  await rm(root, { recursive: true, force: true })
  roots.push(root)
})
afterAll(async () => {
  // A stopped libp2p node still writes its own peer record into the datastore about a second later
  //: remove the temp dirs once more after that.
  await new Promise((resolve) => setTimeout(resolve, 1_500))
  await Promise.all(roots.map((dir) => rm(dir, { recursive: true, force: true })))
})

const plane = async (options: { port?: number; onlineWindowMs?: number } = {}) => {
  const started = await startControlPlane(join(root, 'plane'), { onlineWindowMs: 3_000, ...options })
  planes.push(started)
  return started
}
const agentOn = async (name: string, options: Parameters<typeof startTestAgent>[1]) => {
  const started = await startTestAgent(join(root, name), { name, ...options })
  agents.push(started)
  return started
}

const PROMPT = 'Once upon a time'
/**
 * With this prompt and model, the 23rd token leaves a character incomplete: the engine's last piece
 * only completes its text. That piece must not reach the control plane as a 24th token.
 */
const MAX_TOKENS = 23

/** A generated model, a llama.cpp engine on it, and the engine's greedy output for PROMPT. */
const model = async () => {
  const path = join(root, 'model.gguf')
  await generateModel({
    out: path,
    layers: 2,
    embd: 128,
    heads: 4,
    kvHeads: 2,
    ff: 256,
    vocab: 500,
    context: 256,
    type: 'Q8_0',
    seed: 5,
  })
  // The model id agents announce and jobs name: the SHA-256 of the model's manifest.
  const sha256 = (await buildManifest(path)).id
  const engine = await createEngine({ engine: 'llama-cpp', modelPath: path, threads: 1 })
  cleanups.push(() => engine.dispose())
  const reference = await engine.generate(PROMPT, { maxTokens: MAX_TOKENS, temperature: 0 })
  expect(reference.tokens).toHaveLength(MAX_TOKENS)
  return { path, sha256, engine, reference }
}

/** Waits until the control plane's ring of `poolId` has `size` members. */
const inRing = (p: ControlPlaneProcess, poolId: string, size: number) =>
  eventually(`${size} members in the control plane ring`, async () => {
    const topology = await api<Topology>(p, 'GET', `/v1/rings/${poolId}/topology`)
    return topology.body.members?.length === size ? topology.body : undefined
  })

interface Device {
  nodeId: string
  name: string
  addresses: string[]
  online: boolean
  lastSeen: number
  rings: string[]
}
interface Topology {
  epoch: number
  members: Array<{ nodeId: string; addresses: string[] }>
}

describe('an agent with --control-plane', () => {
  it('registers the device and keeps its heartbeats coming', async () => {
    const p = await plane()
    const a = await agentOn('a', { url: p.url, token: p.token })
    const nodeId = a.agent.identity.nodeId

    const first = await eventually('the device to register', async () => {
      const device = await api<Device>(p, 'GET', `/v1/devices/${nodeId}`)
      return device.status === 200 ? device.body : undefined
    })
    expect(first).toMatchObject({ nodeId, name: 'a', online: true, rings: [] })
    expect(first.addresses).toEqual(a.mesh.node().multiaddrs().map(String))

    // The online window is 3 s: heartbeats come every second and move lastSeen on.
    const later = await eventually('a later heartbeat', async () => {
      const device = (await api<Device>(p, 'GET', `/v1/devices/${nodeId}`)).body
      return device.lastSeen >= first.lastSeen + 1_500 ? device : undefined
    })
    expect(later.online).toBe(true)
    const status = a.agent.status().controlPlane as Record<string, unknown>
    expect(status).toMatchObject({ url: p.url, registered: true, failures: 0, jobsRun: 0 })
    expect(Date.parse(String(status.lastHeartbeat))).toBeGreaterThan(Date.now() - 3_000)
  })

  it('joins two agents that cannot find each other by P2P into one ring through the control plane', async () => {
    const p = await plane()
    const poolId = await sharedPool([join(root, 'a'), join(root, 'b')])
    const a = await agentOn('a', { url: p.url, token: p.token })
    const b = await agentOn('b', { url: p.url, token: p.token })
    const ids = [a.agent.identity.nodeId, b.agent.identity.nodeId].sort()

    // The agents registered the pool by its public root key and joined its ring over HTTP ...
    // (Each agent registers its pools once it has started: a moment after `agentOn` returns.)
    const pools = await eventually('the pool to be registered', async () => {
      const listed = await api<{ pools: Array<{ poolId: string }> }>(p, 'GET', '/v1/pools')
      return listed.body.pools.length > 0 ? listed.body.pools : undefined
    })
    expect(pools.map((x) => x.poolId)).toEqual([poolId])
    const listed = await inRing(p, poolId, 2)
    expect(listed.members.map((m) => m.nodeId)).toEqual(ids)

    // ... then dialed each other from the listed addresses, and gossip converged on one ring.
    const views = await eventually('one converged gossip ring of two', async () => {
      const va = a.rings.rings().get(poolId)!.view()
      const vb = b.rings.rings().get(poolId)!.view()
      const same = va.epoch === vb.epoch && va.digest === vb.digest
      return same && va.converged && vb.converged && va.members.length === 2 ? va : undefined
    })
    expect(views.members.map((m) => m.nodeId)).toEqual(ids)
    const peers = a.mesh
      .node()
      .libp2p.getConnections()
      .map((c) => c.remotePeer.toString())
    expect(peers).toContain(b.agent.identity.nodeId)
    expect(a.agent.status().libp2p).toMatchObject({ discovery: { beaconDials: 0, dhtDials: 0 } })

    // Stopping says goodbye: b leaves the control plane's ring at once.
    await b.agent.stop()
    agents.splice(agents.indexOf(b), 1)
    const after = (await api<Topology>(p, 'GET', `/v1/rings/${poolId}/topology`)).body
    expect(after.members.map((m) => m.nodeId)).toEqual([a.agent.identity.nodeId])
  })

  it('claims a job submitted over HTTP, runs it and streams the engine’s own greedy output', async () => {
    const { engine, sha256, reference } = await model()
    const p = await plane()
    const poolId = await sharedPool([join(root, 'a')])
    let pieces = 0
    const runner = engineRunner(engine, sha256)
    const counting: JobRunner = {
      async *run(request, options) {
        const job = runner.run(request, options)
        for (;;) {
          const step = await job.next()
          if (step.done) return step.value
          pieces++
          yield step.value
        }
      },
    }
    const a = await agentOn('a', { url: p.url, token: p.token, runner: counting })
    await inRing(p, poolId, 1)

    const submitted = await api<{ jobId: string }>(p, 'POST', '/v1/jobs', {
      poolId,
      prompt: PROMPT,
      maxTokens: MAX_TOKENS,
      temperature: 0,
    })
    expect(submitted.status).toBe(201)
    const events = await jobEvents(p, submitted.body.jobId)
    const tokens = events.filter((e) => e.event === 'token')
    expect(tokens.flatMap((e) => e.data.tokens as number[])).toEqual(reference.tokens)
    expect(tokens.map((e) => e.data.text).join('')).toBe(reference.text)
    expect(pieces).toBe(reference.tokens.length + 1)
    expect(events.at(-1)).toMatchObject({
      event: 'end',
      data: {
        status: 'completed',
        tokenCount: reference.tokens.length,
        stats: { mode: 'single', model: sha256, completionTokens: reference.tokens.length },
      },
    })
    const job = (await api<Record<string, unknown>>(p, 'GET', `/v1/jobs/${submitted.body.jobId}`)).body
    expect(job).toMatchObject({ status: 'completed', nodeId: a.agent.identity.nodeId, text: reference.text })

    // A job without a pool is claimed too; one the runner cannot take is failed with the reason.
    const loose = await api<{ jobId: string }>(p, 'POST', '/v1/jobs', { prompt: PROMPT, maxTokens: 4 })
    expect((await jobEvents(p, loose.body.jobId)).at(-1)?.event).toBe('end')
    const unfit = await api<{ jobId: string }>(p, 'POST', '/v1/jobs', {
      prompt: PROMPT,
      maxTokens: 4,
      seed: 2 ** 40,
    })
    expect((await jobEvents(p, unfit.body.jobId)).at(-1)).toMatchObject({
      event: 'error',
      data: { status: 'failed', error: expect.stringContaining('seed') },
    })
    expect(a.agent.status().controlPlane).toMatchObject({ jobsRun: 2, failures: 0 })
  }, 90_000)

  it('runs control plane jobs on the agent’s own runner (--model), token for token', async () => {
    const { path, sha256, reference } = await model()
    const p = await plane()
    const poolId = await sharedPool([join(root, 'a')])
    const a = await agentOn('a', { url: p.url, token: p.token, model: path })
    await inRing(p, poolId, 1)
    const submitted = await api<{ jobId: string }>(p, 'POST', '/v1/jobs', {
      poolId,
      model: sha256,
      prompt: PROMPT,
      maxTokens: MAX_TOKENS,
      temperature: 0,
    })
    const events = await jobEvents(p, submitted.body.jobId)
    const tokens = events.filter((e) => e.event === 'token')
    expect(tokens.flatMap((e) => e.data.tokens as number[])).toEqual(reference.tokens)
    expect(tokens.map((e) => e.data.text).join('')).toBe(reference.text)
    expect(events.at(-1)).toMatchObject({ event: 'end', data: { status: 'completed' } })

    // The runner refuses a model this node does not serve: the job fails and says why.
    const other = await api<{ jobId: string }>(p, 'POST', '/v1/jobs', {
      poolId,
      model: 'llama-70b.gguf',
      prompt: PROMPT,
      maxTokens: 4,
    })
    expect((await jobEvents(p, other.body.jobId)).at(-1)).toMatchObject({
      event: 'error',
      data: { status: 'failed', error: expect.stringContaining('not llama-70b.gguf') },
    })
    expect(a.agent.status().controlPlane).toMatchObject({ jobsRun: 1 })
  }, 120_000)

  it('keeps running while the control plane is killed, and registers again when it returns', async () => {
    const p = await plane()
    const poolId = await sharedPool([join(root, 'a')])
    const a = await agentOn('a', { url: p.url, token: p.token })
    const nodeId = a.agent.identity.nodeId
    await inRing(p, poolId, 1)

    await p.stop('SIGKILL')
    planes.splice(planes.indexOf(p), 1)
    // The control plane comes back with its state lost (the database moved aside after a crash).
    await rm(join(root, 'plane', 'control-plane.db'), { force: true })
    await rm(join(root, 'plane', 'control-plane.db-wal'), { force: true })
    await rm(join(root, 'plane', 'control-plane.db-shm'), { force: true })
    const down = await eventually('failures to be counted', async () => {
      const status = a.agent.status().controlPlane as { registered: boolean; failures: number }
      return status.failures >= 2 ? status : undefined
    })
    expect(down.registered).toBe(false)
    const warnings = a.log.filter(
      (line) => line.includes('WARN') && line.includes('control plane unavailable'),
    )
    expect(warnings).toHaveLength(1)
    expect(a.agent.status()).toMatchObject({ nodeId, rings: { [poolId]: { members: 1 } } })

    const back = await plane({ port: p.port })
    expect(back.port).toBe(p.port)
    const device = await eventually(
      'the device registered again',
      async () => {
        const answer = await api<Device>(back, 'GET', `/v1/devices/${nodeId}`)
        return answer.status === 200 && answer.body.rings.includes(poolId) ? answer.body : undefined
      },
      40_000,
    )
    expect(device.online).toBe(true)
    const topology = (await api<Topology>(back, 'GET', `/v1/rings/${poolId}/topology`)).body
    expect(topology.members.map((m) => m.nodeId)).toEqual([nodeId])
    expect(a.agent.status().controlPlane).toMatchObject({ registered: true })
    expect(a.log.some((line) => line.includes('control plane reachable again'))).toBe(true)
  }, 60_000)

  it('counts answers that are not the control plane API as failures and keeps running', async () => {
    let requests = 0
    const server: Server = createServer((_req, res) => {
      requests++
      if (requests % 2 === 0) res.writeHead(200, { 'content-type': 'text/html' }).end('<html>hello</html>')
      else res.writeHead(200, { 'content-type': 'application/json' }).end('{"nodeId":42}')
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    cleanups.push(async () => {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    })
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    const a = await startTestAgent(join(root, 'a'), { url, token: 'x'.repeat(43), name: 'a' })
    agents.push(a)
    const status = await eventually('three failures', async () => {
      const s = a.agent.status().controlPlane as { failures: number; registered: boolean }
      return s.failures >= 3 ? s : undefined
    })
    expect(status.registered).toBe(false)
    expect(a.log.filter((line) => line.includes('control plane unavailable'))).toHaveLength(1)
    expect(a.agent.status().nodeId).toBe(a.agent.identity.nodeId)
  }, 30_000)
})
