import { randomBytes } from 'node:crypto'
import { createSocket } from 'node:dgram'
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type BeaconMessage, encodeBeacon, type LanBeacons, lanBeacons } from '@meshnet/discovery'
import { generateIdentity } from '@meshnet/identity'
import {
  createJoinRequest,
  decodeJoinResponse,
  type JoinRequest,
  MAX_PENDING_JOIN_REQUESTS_PER_SOURCE,
} from '@meshnet/pool'
import {
  type AgentProcess,
  agentRequest,
  beaconPort,
  eventually,
  runMesh,
  startAgentProcess,
} from '@meshnet/test-harness'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'

let root: string
let port: string
const agents: AgentProcess[] = []
const sockets: LanBeacons[] = []
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-pool-'))
  port = beaconPort()
})
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.stop()))
  await Promise.all(sockets.splice(0).map((s) => s.stop()))
  await rm(root, { recursive: true, force: true })
})

const dir = (name: string) => join(root, name)
const mesh = async (name: string, ...args: string[]) => runMesh([...args, '--data-dir', dir(name)])
const json = async (name: string, ...args: string[]) => {
  const result = await mesh(name, ...args, '--json')
  if (result.code !== 0) throw new Error(`mesh ${args.join(' ')} failed: ${result.stdout}${result.stderr}`)
  return JSON.parse(result.stdout)
}

/** Admin A with a pool and its agent running on loopback beacons. */
async function adminWithPool(extra: string[] = []) {
  await mesh('A', 'init', '--name', 'DeviceA')
  const pool = await json('A', 'pool-create', '--name', 'test-pool')
  agents.push(await startAgentProcess(dir('A'), ['--local-only', '--beacon-port', port, ...extra]))
  return pool as { poolId: string; rootPublicKey: string; joinToken: string }
}

const join_ = (name: string, ...args: string[]) =>
  mesh(name, 'pool-join', '--local-only', '--beacon-port', port, '--timeout', '20', ...args)

describe('joining a pool over LAN beacons (real processes, loopback multicast)', () => {
  it('B joins with the token, holds a valid certificate, and lists the pool', async () => {
    const pool = await adminWithPool()
    await mesh('B', 'init', '--name', 'DeviceB')
    const joined = await join_(
      'B',
      '--pool-id',
      pool.poolId,
      '--pool-root-pubkey',
      pool.rootPublicKey,
      '--token',
      pool.joinToken,
      '--json',
    )
    expect(joined.code, joined.stderr).toBe(0)
    expect(JSON.parse(joined.stdout)).toMatchObject({
      poolId: pool.poolId,
      name: 'test-pool',
      role: 'member',
    })
    const list = await json('B', 'pool-list')
    expect(list.pools).toEqual([
      expect.objectContaining({
        poolId: pool.poolId,
        name: 'test-pool',
        role: 'member',
        certificateStatus: 'valid',
      }),
    ])
    expect(agents[0]!.output()).toContain('signed a certificate for a joining device')
  })

  it('without a token the request waits for pool-approve, then B gets its certificate', async () => {
    const pool = await adminWithPool()
    const b = await json('B', 'init', '--name', 'DeviceB')
    const joining = join_('B', '--pool-id', pool.poolId, '--json')
    let requests: Array<{ nodeId: string; deviceName: string }> = []
    for (let i = 0; i < 100 && requests.length === 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      requests = (await json('A', 'pool-requests', '--pool-id', pool.poolId)).requests
    }
    expect(requests).toEqual([expect.objectContaining({ nodeId: b.nodeId, deviceName: 'DeviceB' })])
    await json('A', 'pool-approve', b.nodeId, '--pool-id', pool.poolId)
    const joined = await joining
    expect(joined.code, joined.stderr).toBe(0)
    expect(JSON.parse(joined.stdout).role).toBe('member')
  })

  it('refuses a wrong token with a reason the member sees', async () => {
    const pool = await adminWithPool()
    const other = await json('C', 'pool-create', '--name', 'other')
    const forgedToken = other.joinToken.replace(other.poolId, pool.poolId)
    const joined = await join_('B', '--token', forgedToken)
    expect(joined.code).toBe(1)
    expect(joined.stderr).toMatch(/token/i)
    expect((await json('B', 'pool-list')).pools).toEqual([])
  })

  it('ends at its timeout with what to check when no admin answers', async () => {
    const pool = await json('A', 'pool-create', '--name', 'lonely')
    const joined = await mesh(
      'B',
      'pool-join',
      '--pool-id',
      pool.poolId,
      '--local-only',
      '--beacon-port',
      port,
      '--timeout',
      '1',
    )
    expect(joined.code).toBe(1)
    expect(joined.stderr).toContain(`no admin of pool ${pool.poolId} answered within 1 s`)
    expect(joined.stderr).toContain('multicast')
  })

  it('a revoked member asking again is refused as revoked, and its revocation list says so', async () => {
    const pool = await adminWithPool()
    const b = await json('B', 'init', '--name', 'DeviceB')
    await join_('B', '--token', pool.joinToken)
    const revoked = await json('A', 'pool-revoke', b.nodeId, '--pool-id', pool.poolId)
    expect(revoked.nodeIds).toEqual([b.nodeId])
    // B's own agent takes the revocation list from the admin's beacons.
    agents.push(
      await startAgentProcess(dir('B'), ['--local-only', '--beacon-port', port, '--beacon-interval', '200']),
    )
    let status = 'valid'
    for (let i = 0; i < 100 && status === 'valid'; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      status = (await json('B', 'pool-list')).pools[0].certificateStatus
    }
    expect(status).toBe('revoked')
    const again = await join_('B', '--token', pool.joinToken)
    expect(again.code).toBe(1)
    expect(again.stderr).toMatch(/revoked/)
  })
})

describe('the admin agent answers hostile join requests with signed refusals', () => {
  async function probe() {
    const identity = generateIdentity()
    const beacons = lanBeacons({ identity, localOnly: true, port: Number(port) })
    sockets.push(beacons)
    await beacons.start()
    const responses: BeaconMessage[] = []
    beacons.onMessage((m) => {
      if (m.type === 'pool-join-response') responses.push(m)
    })
    const ask = async (bytes: Uint8Array, request: JoinRequest) => {
      const before = responses.length
      await beacons.send('pool-join-request', bytes)
      for (let i = 0; i < 100 && responses.length === before; i++) await new Promise((r) => setTimeout(r, 20))
      const message = responses[before]
      if (message === undefined) throw new Error('no answer')
      return decodeJoinResponse(message.body as Uint8Array, { request })
    }
    return { identity, ask }
  }

  it('names the reason: forged signature, stale request, replayed request', async () => {
    const pool = await adminWithPool()
    const { identity, ask } = await probe()

    const forged = createJoinRequest(identity, { token: pool.joinToken, deviceName: 'mallory' })
    const bytes = Uint8Array.from(forged.bytes)
    bytes[bytes.length - 5]! ^= 0x01 // inside the device signature
    expect(await ask(bytes, forged.request)).toMatchObject({ outcome: 'refused', reason: 'bad-signature' })

    const stale = createJoinRequest(identity, {
      token: pool.joinToken,
      deviceName: 'late',
      now: Date.now() - 6 * 60_000,
    })
    expect(await ask(stale.bytes, stale.request)).toMatchObject({
      outcome: 'refused',
      reason: 'stale-request',
    })

    const fresh = createJoinRequest(identity, { token: pool.joinToken, deviceName: 'ok' })
    expect(await ask(fresh.bytes, fresh.request)).toMatchObject({ outcome: 'accepted' })
    expect(await ask(fresh.bytes, fresh.request)).toMatchObject({ outcome: 'refused', reason: 'replayed' })
  })
})

describe('the admin agent keeps its join queue fair under a flood', () => {
  it('keeps the real requests waiting through 300 join beacons from fresh keys, and counts the ones it turned away', async () => {
    const pool = await adminWithPool()
    const socket = createSocket({ type: 'udp4', reuseAddr: true })
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve))
    socket.setMulticastInterface('127.0.0.1')
    socket.setMulticastTTL(0)
    /** A join request beacon from a fresh device key, signed by a fresh beacon key, as the probe sent. */
    const ask = (deviceName: string) => {
      const { request, bytes } = createJoinRequest(generateIdentity(), { poolId: pool.poolId, deviceName })
      const datagram = encodeBeacon(generateIdentity(), {
        type: 'pool-join-request',
        body: bytes,
        timestamp: Date.now(),
        nonce: randomBytes(16),
      })
      return new Promise<JoinRequest>((resolve, reject) =>
        socket.send(datagram, Number(port), '239.192.0.1', (err) => (err ? reject(err) : resolve(request))),
      )
    }
    type Joins = { pending: number; notQueued: Record<string, number> }
    const handled = async () => {
      const { joins } = (await agentRequest<{ pools: { joins: Joins } }>(dir('A'), '/status')).pools
      return joins.pending + Object.values(joins.notQueued).reduce((a, b) => a + b, 0)
    }
    try {
      const real = [await ask('real-1'), await ask('real-2'), await ask('real-3')]
      await eventually('the real requests are handled', async () => (await handled()) === 3)
      // A batch at a time, so that the kernel drops none from a full socket buffer.
      for (let sent = 0; sent < 300; ) {
        for (const end = sent + 25; sent < end; ) await ask(`flood-${sent++}`)
        await eventually(`${sent} flood requests are handled`, async () => (await handled()) === 3 + sent)
      }

      const listed = await json('A', 'pool-requests', '--pool-id', pool.poolId)
      const waiting = listed.requests.map((r: { nodeId: string }) => r.nodeId)
      expect(waiting).toEqual(expect.arrayContaining(real.map((r) => r.nodeId)))
      expect(waiting).toHaveLength(MAX_PENDING_JOIN_REQUESTS_PER_SOURCE) // every beacon came from 127.0.0.1
      const turnedAway = 303 - MAX_PENDING_JOIN_REQUESTS_PER_SOURCE
      expect(listed.queue.notQueued).toEqual({ 'queue-full': 0, 'source-full': turnedAway })
      const status = await agentRequest<{ pools: { joins: Joins } }>(dir('A'), '/status')
      expect(status.pools.joins.notQueued).toEqual({ 'queue-full': 0, 'source-full': turnedAway })
      const text = await mesh('A', 'pool-requests', '--pool-id', pool.poolId)
      expect(text.stdout).toContain(`Turned away since the agent started: ${turnedAway} source-full`)
      expect(text.stdout).toContain('from 127.0.0.1')
    } finally {
      socket.close()
    }
  })
})

describe('pool files the agent does not take as they are', () => {
  it('logs a damaged pool.json once, with its path and the parse error, and starts without that pool', async () => {
    const pool = await json('A', 'pool-create', '--name', 'damaged')
    const file = join(dir('A'), 'pools', pool.poolId, 'pool.json')
    await writeFile(file, '{ damaged')
    const agent = await startAgentProcess(dir('A'), ['--local-only', '--beacon-port', port])
    agents.push(agent)
    const lines = await eventually('the damaged pool is logged', () => {
      const found = agent
        .output()
        .split('\n')
        .filter((line) => line.includes('pool skipped'))
      return found.length > 0 && found
    })
    expect(lines).toHaveLength(1)
    expect(lines[0]).toContain(file)
    expect(lines[0]).toMatch(/not valid JSON \(.+\)/)
  })

  it("refuses to start with another node's certificate in its data dir, naming the file", async () => {
    const a = await json('A', 'init')
    const b = await json('B', 'init')
    const theirs = await json('B', 'pool-create', '--name', 'theirs')
    // B's pool folder, without its root key, copied into A's data dir.
    const from = join(dir('B'), 'pools', theirs.poolId)
    const to = join(dir('A'), 'pools', theirs.poolId)
    await mkdir(to, { recursive: true })
    for (const file of ['pool.json', 'certificate.cbor']) await copyFile(join(from, file), join(to, file))

    const started = await mesh('A', 'start', '--local-only', '--no-beacons')
    expect(started.code).toBe(1)
    expect(started.stderr).toContain(
      `${join(to, 'certificate.cbor')} is the certificate of node ${b.nodeId}, not of this node ${a.nodeId}`,
    )
    expect(started.stderr).toContain('mesh pool-join')
    const listed = await json('A', 'pool-list')
    expect(listed.pools).toEqual([expect.objectContaining({ certificateStatus: 'node-id-mismatch' })])
  })
})
