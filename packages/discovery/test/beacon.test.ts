import { type ChildProcess, spawn } from 'node:child_process'
import { randomBytes, randomInt } from 'node:crypto'
import dgram from 'node:dgram'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { generateIdentity, type NodeIdentity } from '@meshnet/identity'
import { encode } from 'cborg'
import { afterEach, describe, expect, it } from 'vitest'
import { BEACON_DOMAIN, encodeBeacon } from '../src/beacon/envelope.ts'
import type { BeaconDropReason } from '../src/beacon/errors.ts'
import {
  type BeaconMessage,
  type LanBeacons,
  type LanBeaconsInit,
  lanBeacons,
} from '../src/beacon/lan-beacons.ts'

// Every beacon and raw socket here joins and sends on 127.0.0.1 with TTL 0: nothing leaves the
// machine. Each test gets its own group and port so that parallel test files never hear each other.

const cleanup: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

async function freePort(): Promise<number> {
  const socket = dgram.createSocket('udp4')
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve))
  const { port } = socket.address()
  await new Promise<void>((resolve) => socket.close(() => resolve()))
  return port
}

async function testAddress(): Promise<{ group: string; port: number }> {
  return { group: `239.192.${randomInt(1, 255)}.${randomInt(1, 255)}`, port: await freePort() }
}

/** Polls until `condition` holds; the bound only keeps a broken test from hanging. */
async function waitFor(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    if (condition()) return
    await new Promise((resolve) => setTimeout(resolve, 2))
  }
  throw new Error(`gave up waiting for ${what}`)
}

interface Peer {
  beacons: LanBeacons
  inbox: BeaconMessage[]
}

/** A started localOnly instance with a fresh identity that records what it accepts. */
async function startPeer(
  address: { group: string; port: number },
  extra: Partial<LanBeaconsInit> = {},
): Promise<Peer> {
  const beacons = lanBeacons({ identity: generateIdentity(), localOnly: true, ...address, ...extra })
  const inbox: BeaconMessage[] = []
  beacons.onMessage((message) => {
    inbox.push(message)
  })
  cleanup.push(() => beacons.stop())
  await beacons.start()
  return { beacons, inbox }
}

const totalDropped = (b: LanBeacons) => Object.values(b.stats().dropped).reduce((sum, n) => sum + n, 0)

describe('LAN beacons over loopback multicast', () => {
  it('delivers a signed beacon from one instance to another, and not back to its sender', async () => {
    const address = await testAddress()
    const a = await startPeer(address)
    const b = await startPeer(address)
    await b.beacons.send('hello', { text: 'hi', bytes: new Uint8Array([7, 8]) })
    await waitFor(
      () => a.inbox.length === 1 && b.beacons.stats().own === 1,
      'the beacon and its loopback copy',
    )
    expect(a.inbox[0]).toMatchObject({
      type: 'hello',
      from: { nodeId: b.beacons.nodeId, publicKey: expect.any(Uint8Array) },
      body: { text: 'hi', bytes: new Uint8Array([7, 8]) },
      address: '127.0.0.1',
    })
    expect(a.inbox[0]?.to).toBeUndefined()
    expect(b.inbox).toEqual([])
    expect(b.beacons.stats()).toMatchObject({ sent: 1, received: 0, accepted: 0, own: 1 })
    expect(a.beacons.stats()).toMatchObject({ sent: 0, received: 1, accepted: 1, own: 0 })
    expect(totalDropped(a.beacons) + totalDropped(b.beacons)).toBe(0)
  })

  it('lets three instances on one port each hear the other two', async () => {
    const address = await testAddress()
    const peers = [await startPeer(address), await startPeer(address), await startPeer(address)]
    for (const [i, peer] of peers.entries()) await peer.beacons.send('greeting', { from: i })
    await waitFor(
      () => peers.every((p) => p.inbox.length === 2 && p.beacons.stats().own === 1),
      'every instance to hear the other two',
    )
    for (const [i, peer] of peers.entries()) {
      const heard = peer.inbox
        .map((m) => m.body)
        .sort((x, y) => JSON.stringify(x).localeCompare(JSON.stringify(y)))
      expect(heard).toEqual([0, 1, 2].filter((j) => j !== i).map((j) => ({ from: j })))
      expect(peer.inbox.map((m) => m.from.nodeId)).not.toContain(peer.beacons.nodeId)
    }
  })

  it('delivers a directed beacon only to its recipient; the others drop it as not-for-us', async () => {
    const address = await testAddress()
    const [a, b, c] = [await startPeer(address), await startPeer(address), await startPeer(address)]
    await a!.beacons.send('pool-join-response', { ok: true }, { to: b!.beacons.nodeId })
    await waitFor(
      () => b!.inbox.length === 1 && c!.beacons.stats().dropped['not-for-us'] === 1,
      'the recipient to accept it and the bystander to drop it',
    )
    expect(b!.inbox[0]).toMatchObject({
      type: 'pool-join-response',
      to: b!.beacons.nodeId,
      body: { ok: true },
    })
    expect(c!.inbox).toEqual([])
    expect(c!.beacons.stats()).toMatchObject({ received: 1, accepted: 0 })
  })

  it('sends presence beacons at the interval with a fresh body each time', async () => {
    const address = await testAddress()
    let round = 0
    const a = await startPeer(address, { presence: () => ({ round: round++ }), intervalMs: 20 })
    const b = await startPeer(address)
    await waitFor(() => b.inbox.length >= 3, 'three presence beacons')
    const rounds = b.inbox.map((m) => (m.body as { round: number }).round)
    expect(b.inbox.every((m) => m.type === 'presence' && m.from.nodeId === a.beacons.nodeId)).toBe(true)
    expect(rounds).toEqual([...rounds].sort((x, y) => x - y))
    expect(new Set(rounds).size).toBe(rounds.length)
    expect(totalDropped(b.beacons)).toBe(0)
  })

  it('skips a presence round when the callback returns undefined or throws', async () => {
    const address = await testAddress()
    let round = 0
    const a = await startPeer(address, {
      presence: () => {
        round++
        if (round % 3 === 1) return undefined
        if (round % 3 === 2) throw new Error('not ready')
        return { round }
      },
      intervalMs: 10,
    })
    const b = await startPeer(address)
    await waitFor(() => b.inbox.length >= 2, 'two presence beacons')
    expect(b.inbox.map((m) => (m.body as { round: number }).round % 3)).toEqual(b.inbox.map(() => 0))
    expect(a.beacons.stats().sendErrors).toBe(0)
  })

  it('keeps delivering when handlers throw or reject, and counts their failures', async () => {
    const address = await testAddress()
    const a = await startPeer(address)
    const b = await startPeer(address)
    b.beacons.onMessage(() => {
      throw new Error('handler bug')
    })
    b.beacons.onMessage(async () => {
      throw new Error('async handler bug')
    })
    await a.beacons.send('one', 1)
    await a.beacons.send('two', 2)
    await waitFor(() => b.inbox.length === 2 && b.beacons.stats().handlerErrors === 4, 'both beacons')
    expect(b.inbox.map((m) => m.body)).toEqual([1, 2])
    expect(b.beacons.stats()).toMatchObject({ received: 2, accepted: 2 })
  })

  it('stops delivering to a handler once it is removed', async () => {
    const address = await testAddress()
    const a = await startPeer(address)
    const b = await startPeer(address)
    const seen: unknown[] = []
    const off = b.beacons.onMessage((m) => {
      seen.push(m.body)
    })
    await a.beacons.send('n', 1)
    await waitFor(() => b.inbox.length === 1, 'the first beacon')
    off()
    await a.beacons.send('n', 2)
    await waitFor(() => b.inbox.length === 2, 'the second beacon')
    expect(seen).toEqual([1])
  })

  it('refuses to send before start, a bad type, or a body over the size limit', async () => {
    const address = await testAddress()
    const beacons = lanBeacons({ identity: generateIdentity(), localOnly: true, ...address })
    await expect(beacons.send('presence', {})).rejects.toMatchObject({ name: 'BeaconSocketError' })
    cleanup.push(() => beacons.stop())
    await beacons.start()
    await expect(beacons.send('No Spaces', {})).rejects.toMatchObject({ name: 'InvalidArgumentError' })
    await expect(beacons.send('big', new Uint8Array(4000))).rejects.toMatchObject({
      name: 'BeaconTooLargeError',
    })
    await expect(beacons.send('x', {}, { to: '' })).rejects.toMatchObject({ name: 'InvalidArgumentError' })
    expect(beacons.stats().sent).toBe(0)
  })

  it('validates its options and does no I/O until start()', async () => {
    const identity = generateIdentity()
    const bad: Partial<LanBeaconsInit>[] = [
      { group: '10.0.0.1' },
      { port: 70_000 },
      { localOnly: true, ttl: 1 },
      { localOnly: true, interface: '192.168.1.10' },
      { intervalMs: 0 },
      { maxMessageBytes: 10 },
    ]
    for (const options of bad) {
      expect(() => lanBeacons({ identity, ...options })).toThrow(
        expect.objectContaining({ name: 'InvalidArgumentError' }),
      )
    }
    expect(() => lanBeacons({ identity, localOnly: true, typo: 1 } as LanBeaconsInit)).toThrow(/typo/)
    const sockets = () => process.getActiveResourcesInfo().filter((r) => r === 'UDPWrap').length
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
    // A closed socket's handle is released one turn of the event loop after its close callback.
    const settle = () => new Promise((resolve) => setTimeout(resolve, 0))
    const address = await testAddress()
    await settle()
    const before = { sockets: sockets(), timers: timers() }
    const beacons = lanBeacons({ identity, localOnly: true, ...address, presence: () => ({}) })
    expect(beacons.endpoint).toMatchObject({ interface: '127.0.0.1', ttl: 0 })
    expect(sockets()).toBe(before.sockets)
    await beacons.start()
    expect(beacons.isStarted()).toBe(true)
    expect(sockets()).toBe(before.sockets + 1)
    expect(timers()).toBe(before.timers + 1)
    await beacons.stop()
    await beacons.stop()
    expect(beacons.isStarted()).toBe(false)
    await settle()
    expect({ sockets: sockets(), timers: timers() }).toEqual(before)
  })

  it('reports a group it cannot join as BeaconSocketError and keeps no socket', async () => {
    // 203.0.113.77 (TEST-NET-3) is on no interface here: the join fails before anything is sent.
    const beacons = lanBeacons({
      identity: generateIdentity(),
      interface: '203.0.113.77',
      ttl: 0,
      ...(await testAddress()),
    })
    await expect(beacons.start()).rejects.toMatchObject({
      name: 'BeaconSocketError',
      message: /203\.0\.113\.77/,
    })
    expect(beacons.isStarted()).toBe(false)
    await beacons.stop()
  })

  it('can be started again after stop()', async () => {
    const address = await testAddress()
    const a = await startPeer(address)
    const b = await startPeer(address)
    await b.beacons.stop()
    await b.beacons.start()
    await a.beacons.send('again', 1)
    await waitFor(() => b.inbox.length === 1, 'a beacon after restart')
    expect(b.inbox[0]?.body).toBe(1)
  })
})

/** Deterministic PRNG (mulberry32) so that a failure reproduces with the same garbage. */
function prng(seed: number): () => number {
  let a = seed
  return () => {
    a = (a + 0x6d2b79f5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296
  }
}
const random = prng(0x5eed)
const below = (n: number) => Math.floor(random() * n)
const garbage = (length: number) => Uint8Array.from({ length }, () => below(256))
const flipBit = (data: Uint8Array, index: number) => {
  const copy = Uint8Array.from(data)
  copy[index]! ^= 1 << below(8)
  return copy
}

type Outcome = BeaconDropReason | 'accepted'

function valid(sender: NodeIdentity, body: unknown, extra: { timestamp?: number; to?: string } = {}) {
  return encodeBeacon(sender, {
    type: 'presence',
    body,
    ...(extra.to === undefined ? {} : { to: extra.to }),
    timestamp: extra.timestamp ?? Date.now(),
    nonce: randomBytes(16),
  })
}

/** A datagram around any payload fields, signed by `signer` under `domain`, with any version. */
function craft(
  fields: Record<string, unknown>,
  options: { signer: NodeIdentity; domain?: string; version?: number },
): Uint8Array {
  const payload = encode(fields)
  return encode([
    options.version ?? 1,
    payload,
    options.signer.sign(options.domain ?? BEACON_DOMAIN, payload),
  ])
}

function fieldsOf(sender: NodeIdentity, body: unknown = null): Record<string, unknown> {
  return {
    t: 'presence',
    k: sender.publicKey,
    n: sender.nodeId,
    ts: Date.now(),
    nc: randomBytes(16),
    b: body,
  }
}

/** Arrays nested `depth` deep: more than a body may have. */
function nested(depth: number): unknown {
  let value: unknown = 1
  for (let i = 0; i < depth; i++) value = [value]
  return value
}

// A raw UDP socket throws thousands of hostile datagrams at a running instance. It must keep serving
// and account for every datagram under the reason it was crafted to hit.
describe('a beacon instance under fuzzing', () => {
  it('survives thousands of hostile datagrams and accounts for every one', async () => {
    const { group, port } = await testAddress()
    const { beacons: target, inbox } = await startPeer({ group, port })
    const raw = dgram.createSocket({ type: 'udp4', reuseAddr: true })
    await new Promise<void>((resolve) => raw.bind(0, '127.0.0.1', resolve))
    cleanup.push(() => new Promise((resolve) => raw.close(() => resolve())))
    raw.setMulticastInterface('127.0.0.1')
    raw.setMulticastTTL(0)
    raw.setMulticastLoopback(true)

    let fired = 0
    /** Sends in small batches, waiting for each to arrive so that no socket buffer overflows. */
    async function fire(datagrams: Uint8Array[], batch = 16): Promise<void> {
      for (let i = 0; i < datagrams.length; i += batch) {
        const chunk = datagrams.slice(i, i + batch)
        await Promise.all(
          chunk.map(
            (d) =>
              new Promise<void>((resolve, reject) =>
                raw.send(d, port, group, (err) => (err ? reject(err) : resolve())),
              ),
          ),
        )
        fired += chunk.length
        await waitFor(() => target.stats().received === fired, `${fired} datagrams to arrive`)
      }
    }

    const senders = [generateIdentity(), generateIdentity(), generateIdentity()]
    const [alice, bob] = senders as [NodeIdentity, NodeIdentity]
    const pick = () => senders[below(senders.length)]!
    const template = valid(alice, { blob: new Uint8Array(64).fill(0xab), note: 'template' })
    const blobAt = Buffer.from(template).indexOf(Buffer.alloc(64, 0xab))
    expect(blobAt).toBeGreaterThan(0)
    const shots: { data: Uint8Array; outcome: Outcome }[] = []
    const add = (count: number, outcome: Outcome, make: (i: number) => Uint8Array) => {
      for (let i = 0; i < count; i++) shots.push({ data: make(i), outcome })
    }

    // Phase 1: every datagram crafted to hit one known check, shuffled.
    add(600, 'malformed', () => garbage(1 + below(2048)))
    add(1, 'malformed', () => new Uint8Array(0))
    add(300, 'malformed', () => template.subarray(0, 1 + below(template.length - 1)))
    add(300, 'bad-signature', () => flipBit(template, template.length - 1 - below(64)))
    add(200, 'bad-signature', () => flipBit(template, blobAt + below(64)))
    add(100, 'bad-signature', () => craft(fieldsOf(alice, below(1000)), { signer: bob }))
    add(50, 'bad-signature', () => craft(fieldsOf(alice), { signer: alice, domain: 'ring-announcement/v1' }))
    add(100, 'bad-node-id', () => craft({ ...fieldsOf(alice), n: bob.nodeId }, { signer: alice }))
    add(50, 'bad-version', (i) => craft(fieldsOf(alice), { signer: alice, version: [0, 2, 7, 255][i % 4]! }))
    const broken: Record<string, unknown>[] = [
      { t: 'Not A Type' },
      { nc: new Uint8Array(8) },
      { k: new Uint8Array(31) },
      { ts: -5 },
      { ts: 1.5 },
      { extra: true },
      { b: nested(20) },
    ]
    add(140, 'malformed', (i) =>
      craft({ ...fieldsOf(alice), ...broken[i % broken.length] }, { signer: alice }),
    )
    add(50, 'stale', () => valid(pick(), 'old', { timestamp: Date.now() - 3_600_000 }))
    add(50, 'future', () => valid(pick(), 'early', { timestamp: Date.now() + 3_600_000 }))
    add(50, 'not-for-us', () => valid(pick(), 'private', { to: bob.nodeId }))
    add(30, 'oversized', () => garbage(2049 + below(2048)))
    add(100, 'accepted', (i) => valid(pick(), { i }))
    for (let i = shots.length - 1; i > 0; i--) {
      const j = below(i + 1)
      ;[shots[i], shots[j]] = [shots[j]!, shots[i]!]
    }
    // A valid beacon, then exact copies of it; the largest UDP datagram on its own (it fills a buffer).
    const original = valid(alice, 'once')
    await fire([original])
    await fire(Array.from({ length: 200 }, () => original))
    await fire([garbage(65_507)], 1)
    await fire(shots.map((s) => s.data))

    const expected: Record<string, number> = { accepted: 1, replayed: 200, oversized: 1 }
    for (const { outcome } of shots) expected[outcome] = (expected[outcome] ?? 0) + 1
    const afterPhase1 = target.stats()
    expect(afterPhase1.received).toBe(fired)
    expect(afterPhase1.accepted).toBe(expected.accepted)
    for (const [reason, count] of Object.entries(afterPhase1.dropped)) {
      expect({ reason, count }).toEqual({ reason, count: expected[reason] ?? 0 })
    }
    expect(inbox).toHaveLength(afterPhase1.accepted)

    // Phase 2: one bit flipped anywhere in valid beacons. Where it lands decides the check that
    // catches it, but none may be accepted and every one must be counted.
    const flips = Array.from({ length: 400 }, () => {
      const base = valid(pick(), { n: below(100) })
      return flipBit(base, below(base.length))
    })
    await fire(flips)
    const afterPhase2 = target.stats()
    expect(afterPhase2.accepted).toBe(afterPhase1.accepted)
    const grew = Object.keys(afterPhase2.dropped).filter(
      (r) => afterPhase2.dropped[r as BeaconDropReason] !== afterPhase1.dropped[r as BeaconDropReason],
    )
    expect(
      grew.filter((r) => !['malformed', 'bad-version', 'bad-node-id', 'bad-signature'].includes(r)),
    ).toEqual([])

    // Still serving: a beacon from a real instance arrives and is delivered.
    const friend = await startPeer({ group, port })
    await friend.beacons.send('hello', { after: 'the storm' })
    await waitFor(() => inbox.length === afterPhase2.accepted + 1, 'the beacon sent after the fuzzing')
    expect(inbox.at(-1)).toMatchObject({
      type: 'hello',
      from: { nodeId: friend.beacons.nodeId },
      body: { after: 'the storm' },
    })

    const final = target.stats()
    expect(final.received).toBe(fired + 1)
    expect(final.accepted + totalDropped(target)).toBe(final.received)
    expect(final.handlerErrors).toBe(0)
    expect(fired).toBeGreaterThan(2500)
  })
})

// A second OS process runs its own instance: it sends presence, answers a directed `ping` with a
// directed `pong`, and when its stdin closes stops, reports its counters and exits on its own
// (which it could not with a socket or timer left open).
const packageDir = fileURLToPath(new URL('..', import.meta.url))
const childScript = `
import { generateIdentity } from '@meshnet/identity'
import { lanBeacons } from './src/beacon/lan-beacons.ts'
const identity = generateIdentity()
const beacons = lanBeacons({
  identity,
  localOnly: true,
  group: process.env.BEACON_GROUP,
  port: Number(process.env.BEACON_PORT),
  presence: () => ({ pid: process.pid }),
  intervalMs: 25,
})
beacons.onMessage(async (m) => {
  if (m.type === 'ping' && m.to === identity.nodeId) {
    await beacons.send('pong', { echo: m.body }, { to: m.from.nodeId })
  }
})
await beacons.start()
process.stdout.write(JSON.stringify({ nodeId: identity.nodeId }) + '\\n')
process.stdin.resume()
process.stdin.on('end', async () => {
  await beacons.stop()
  process.stdout.write(JSON.stringify({ stats: beacons.stats() }) + '\\n')
})
`

/** Lines the child writes to stdout, parsed as JSON. */
function jsonLines(child: ChildProcess): Record<string, unknown>[] {
  const lines: Record<string, unknown>[] = []
  let buffered = ''
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk
    for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
      lines.push(JSON.parse(buffered.slice(0, nl)) as Record<string, unknown>)
      buffered = buffered.slice(nl + 1)
    }
  })
  return lines
}

describe('across processes', () => {
  it('exchanges signed beacons with a beacon instance in another process', async () => {
    const address = await testAddress()
    const local = await startPeer(address)
    const child = spawn(
      process.execPath,
      ['--conditions=meshnet-source', '--input-type=module', '--eval', childScript],
      {
        cwd: packageDir,
        env: { ...process.env, BEACON_GROUP: address.group, BEACON_PORT: String(address.port) },
        stdio: ['pipe', 'pipe', 'inherit'],
      },
    )
    const exited = once(child, 'exit')
    cleanup.push(async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL')
        await exited
      }
    })
    const lines = jsonLines(child)
    await waitFor(() => lines.length >= 1 || child.exitCode !== null, 'the child to start its beacons')
    const childId = lines[0]?.nodeId as string
    expect(childId).toMatch(/^12D3KooW/)

    const presence = () => local.inbox.filter((m) => m.type === 'presence')
    await waitFor(() => presence().length >= 2, 'presence from the child')
    expect(presence().every((m) => m.from.nodeId === childId)).toBe(true)
    expect(presence()[0]?.body).toEqual({ pid: child.pid })

    await local.beacons.send('ping', { seq: 42 }, { to: childId })
    await waitFor(() => local.inbox.some((m) => m.type === 'pong'), 'the pong')
    expect(local.inbox.find((m) => m.type === 'pong')).toMatchObject({
      from: { nodeId: childId },
      to: local.beacons.nodeId,
      body: { echo: { seq: 42 } },
      address: '127.0.0.1',
    })

    child.stdin?.end()
    const [code] = await exited
    expect(code).toBe(0)
    const childStats = lines[1]?.stats as { accepted: number; sent: number; dropped: Record<string, number> }
    expect(childStats.accepted).toBe(1)
    expect(childStats.sent).toBeGreaterThanOrEqual(3)
    expect(Object.values(childStats.dropped).every((n) => n === 0)).toBe(true)
    expect(totalDropped(local.beacons)).toBe(0)
  })
})
