import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { GossipSub } from '@libp2p/gossipsub'
import { createMeshNode, type MeshNode } from '@meshnet/discovery'
import { generateIdentity, loadIdentity, type NodeIdentity } from '@meshnet/identity'
import {
  type Certificate,
  createPool,
  encodeCertificate,
  openPoolAdmin,
  POOL_CERT_PROTOCOL,
} from '@meshnet/pool'
import { encodeAnnouncement, ringPubsub, ringTopic } from '@meshnet/ring'
import { type AgentProcess, agentRequest, beaconPort, eventually } from '@meshnet/test-harness'
import { multiaddr } from '@multiformats/multiaddr'
import { encode } from 'cborg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { revocationTopic } from '../src/agent/ring-part.ts'
import { poolOf, ringStatus } from './mesh-fixture.ts'

let root: string
let admin: AgentProcess
let poolId: string
let dirA: string
const outsiders: Array<MeshNode<{ pubsub: GossipSub }>> = []

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-gating-'))
  const made = await poolOf(root, ['A'], beaconPort())
  admin = made.admin
  poolId = made.pool.poolId
  dirA = made.dir('A')
})
afterAll(async () => {
  await Promise.all(outsiders.map((n) => n.stop()))
  await admin?.stop()
  await rm(root, { recursive: true, force: true })
})

interface GateStats {
  libp2p: { addresses: string[]; gate: { refused: Record<string, number>; verified: number } }
}

async function outsider(identity: NodeIdentity = generateIdentity()) {
  const node = await createMeshNode({
    identity,
    localOnly: true,
    dhtMode: 'off',
    services: { pubsub: ringPubsub(() => true) },
  })
  outsiders.push(node)
  const { libp2p } = await agentRequest<GateStats>(dirA, '/status')
  await node.libp2p.dial(multiaddr(libp2p.addresses[0]!))
  const present = (certs: Certificate[]) =>
    node.request(dirANodeId(), POOL_CERT_PROTOCOL, encode({ v: 1, certs: certs.map(encodeCertificate) }), {
      timeoutMs: 10_000,
    })
  const askRing = async () =>
    JSON.parse(
      new TextDecoder().decode(
        await node.request(
          dirANodeId(),
          '/meshnet/pool-ring/1.0.0',
          new TextEncoder().encode(JSON.stringify({ poolId })),
        ),
      ),
    )
  return { node, identity, present, askRing }
}

let nodeIdA = ''
const dirANodeId = () => nodeIdA

async function refused(reason: string, at_least: number) {
  return eventually(`a gate refusal '${reason}'`, async () => {
    const { libp2p } = await agentRequest<GateStats>(dirA, '/status')
    return (libp2p.gate.refused[reason] ?? 0) >= at_least ? libp2p.gate.refused : undefined
  })
}

describe('a peer without a valid certificate is refused on every pool protocol', () => {
  beforeAll(async () => {
    nodeIdA = (await loadIdentity(join(dirA, 'identity.key'))).identity.nodeId
  })

  it('with no certificate: no ring view, no announcement accepted, none received', async () => {
    const { node, identity, askRing } = await outsider()
    const answer = await askRing()
    expect(answer.error.code).toBe('ERR_POOL_ACCESS')
    expect(answer.error.message).toContain('no certificate presented')

    const received: unknown[] = []
    const topic = ringTopic(poolId)
    node.libp2p.services.pubsub.subscribe(topic)
    node.libp2p.services.pubsub.addEventListener('message', (e) => received.push(e.detail))
    const announce = encodeAnnouncement(identity, {
      v: 1,
      poolId,
      nodeId: identity.nodeId,
      publicKey: identity.publicKey,
      addresses: [],
      certificate: new Uint8Array(8),
      capabilities: { capacityBytes: 1 << 30, freeMemoryBytes: 0, computeScore: 1, engines: [], models: [] },
      seq: Date.now(),
      view: { epoch: 1, digest: 'x' },
      leaving: false,
    })
    // 3 s: longer than the agent's 2 s heartbeat, so it would have published to us if it could.
    for (let i = 0; i < 10; i++) {
      await node.libp2p.services.pubsub.publish(topic, announce).catch(() => {})
      await new Promise((resolve) => setTimeout(resolve, 300))
    }
    const view = await ringStatus(dirA, poolId)
    expect(view.members.map((m) => m.nodeId)).toEqual([nodeIdA])
    expect(received).toEqual([]) // scored below the publish threshold: the agent sends it nothing
    const { rings } = await agentRequest<{
      rings: Record<string, { gossip: { dropped: Record<string, number> } }>
    }>(dirA, '/status')
    expect(rings[poolId]!.gossip.dropped.untrusted).toBeGreaterThanOrEqual(1)
  })

  it('a client certificate reads the ring but takes no part in it', async () => {
    const { identity: adminIdentity } = await loadIdentity(join(dirA, 'identity.key'))
    const pool = await openPoolAdmin(dirA, poolId, adminIdentity)
    const app = await outsider()
    const cert = await pool.issueCertificate({ devicePublicKey: app.identity.publicKey, role: 'client' })
    await app.present([cert])
    // Reading the ring's status is allowed (SDK apps do it).
    expect((await app.askRing()).members).toBeDefined()
    const before =
      (
        await agentRequest<{ rings: Record<string, { gossip: { dropped: Record<string, number> } }> }>(
          dirA,
          '/status',
        )
      ).rings[poolId]!.gossip.dropped.untrusted ?? 0
    const topic = ringTopic(poolId)
    app.node.libp2p.services.pubsub.subscribe(topic)
    await new Promise((resolve) => setTimeout(resolve, 1_000))
    for (let i = 0; i < 5; i++) {
      const announce = encodeAnnouncement(app.identity, {
        v: 1,
        poolId,
        nodeId: app.identity.nodeId,
        publicKey: app.identity.publicKey,
        addresses: [],
        certificate: encodeCertificate(cert),
        capabilities: {
          capacityBytes: 1 << 30,
          freeMemoryBytes: 0,
          computeScore: 1,
          engines: [],
          models: [],
        },
        seq: Date.now() + i,
        view: { epoch: 1, digest: 'x' },
        leaving: false,
      })
      await app.node.libp2p.services.pubsub.publish(topic, announce).catch(() => {})
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
    await eventually('the client announcement to be refused', async () => {
      const { rings } = await agentRequest<{
        rings: Record<string, { gossip: { dropped: Record<string, number> } }>
      }>(dirA, '/status')
      return (rings[poolId]!.gossip.dropped.untrusted ?? 0) > before ? true : undefined
    })
    const view = await ringStatus(dirA, poolId)
    expect(view.members.map((m) => m.nodeId)).not.toContain(app.identity.nodeId)
  })

  it('drops garbage on the revocation topic where it arrived: not delivered, not forwarded, counted', async () => {
    const { identity: adminIdentity } = await loadIdentity(join(dirA, 'identity.key'))
    const pool = await openPoolAdmin(dirA, poolId, adminIdentity)
    // A real member subscribed to the topic, and an outsider that floods it through A.
    const member = await outsider()
    const cert = await pool.issueCertificate({ devicePublicKey: member.identity.publicKey, role: 'member' })
    await member.present([cert])
    const topic = revocationTopic(poolId)
    const received: unknown[] = []
    member.node.libp2p.services.pubsub.subscribe(topic)
    member.node.libp2p.services.pubsub.addEventListener('message', (e) => {
      if (e.detail.topic === topic) received.push(e.detail)
    })
    const flooder = await outsider()
    flooder.node.libp2p.services.pubsub.subscribe(topic)
    await new Promise((resolve) => setTimeout(resolve, 1_500)) // subscriptions and meshes form
    for (let i = 0; i < 50; i++) {
      const garbage = new Uint8Array(8_000).map(() => Math.floor(Math.random() * 256))
      await flooder.node.libp2p.services.pubsub.publish(topic, garbage).catch(() => {})
    }
    const drops = await eventually('A to count the garbage', async () => {
      const { rings } = await agentRequest<{
        rings: Record<string, { revocationDrops: Record<string, number> }>
      }>(dirA, '/status')
      const counted = rings[poolId]!.revocationDrops
      return (counted.malformed ?? 0) >= 1 ? counted : undefined
    })
    expect(drops.malformed).toBeGreaterThanOrEqual(1)
    await new Promise((resolve) => setTimeout(resolve, 1_000))
    expect(received).toEqual([])
  })

  it('refuses a certificate signed by another pool’s root, an expired one and a revoked one', async () => {
    const { identity, present, askRing } = await outsider()
    // Another pool's root signs a certificate that claims this pool.
    const otherDir = join(root, 'other')
    const other = generateIdentity()
    const { pool: otherPool } = await createPool(otherDir, { name: 'other' }, other)
    const foreignAdmin = await openPoolAdmin(otherDir, otherPool.id, other)
    const foreign = await foreignAdmin.issueCertificate({
      devicePublicKey: identity.publicKey,
      role: 'member',
    })
    await present([{ ...foreign, poolId }])
    const forged = await eventually('the forged certificate to be refused', async () => {
      const { libp2p } = await agentRequest<GateStats>(dirA, '/status')
      const r = libp2p.gate.refused
      return (r['untrusted-issuer'] ?? 0) + (r['bad-signature'] ?? 0) >= 1 ? r : undefined
    })
    expect(forged).toBeDefined()
    await present([foreign])
    await refused('not-our-pool', 1)

    const { identity: adminIdentity } = await loadIdentity(join(dirA, 'identity.key'))
    const pool = await openPoolAdmin(dirA, poolId, adminIdentity)
    const expired = await pool.issueCertificate({
      devicePublicKey: identity.publicKey,
      role: 'member',
      ttlMs: 60_000,
      now: Date.now() - 3_600_000,
    })
    await present([expired])
    await refused('expired', 1)
    expect((await askRing()).error.message).toMatch(/expired/)

    const valid = await pool.issueCertificate({ devicePublicKey: identity.publicKey, role: 'member' })
    await present([valid])
    expect((await askRing()).members).toBeDefined() // a real member gets the ring view
    await pool.revoke({ nodeIds: [identity.nodeId] })
    await eventually('the agent to take the revocation', async () => {
      const answer = await askRing()
      return answer.error?.message.includes('revoked') ? answer : undefined
    })
    await present([valid])
    await refused('revoked', 1)
    // A peer that presents an already-revoked certificate (never held before) is told why it is
    // refused, not "no certificate presented" (#20 item 9).
    const late = await outsider()
    const lateCert = await pool.issueCertificate({ devicePublicKey: late.identity.publicKey, role: 'member' })
    await pool.revoke({ nodeIds: [identity.nodeId, late.identity.nodeId] })
    await eventually('the agent to take the second revocation', async () => {
      await late.present([lateCert])
      const answer = await late.askRing()
      return answer.error?.message.includes('revoked') ? answer : undefined
    })
    expect((await late.askRing()).error.message).not.toMatch(/no certificate presented/)
  })
})
