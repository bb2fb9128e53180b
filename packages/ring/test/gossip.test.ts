import { noise } from '@chainsafe/libp2p-noise'
import { type GossipSub, gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { yamux } from '@libp2p/yamux'
import { generateIdentity, type NodeIdentity } from '@meshnet/identity'
import { createLibp2p, type Libp2p } from 'libp2p'
import { afterEach, describe, expect, it } from 'vitest'
import { RingGossip } from '../src/gossip.ts'
import type { RingView } from '../src/membership.ts'

interface TestNode {
  identity: NodeIdentity
  libp2p: Libp2p<{ pubsub: GossipSub }>
  ring: RingGossip
}

const nodes: TestNode[] = []
afterEach(async () => {
  await Promise.all(
    nodes.splice(0).map(async (n) => {
      await n.ring.stop()
      await n.libp2p.stop()
    }),
  )
})

async function startNode(trusted: Set<string>): Promise<TestNode> {
  const identity = generateIdentity()
  const libp2p = await createLibp2p({
    privateKey: identity.privateKey,
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify(), pubsub: gossipsub({ allowPublishToZeroTopicPeers: true }) },
  })
  const ring = new RingGossip(
    {
      poolId: 'pool1',
      identity,
      certificate: new Uint8Array([1, 2, 3]),
      capabilities: {
        capacityBytes: 2 ** 30,
        freeMemoryBytes: 2 ** 30,
        computeScore: 1,
        engines: [],
        models: [],
      },
      addresses: () => libp2p.getMultiaddrs().map(String),
      verifyMember: (a) => (trusted.has(a.nodeId) ? undefined : 'no certificate for this pool'),
      heartbeatMs: 500,
      fastHeartbeatMs: 100,
    },
    { pubsub: libp2p.services.pubsub },
  )
  libp2p.addEventListener('peer:disconnect', (event) => ring.peerDisconnected(event.detail.toString()))
  trusted.add(identity.nodeId)
  const node = { identity, libp2p, ring }
  nodes.push(node)
  ring.start()
  return node
}

function converged(node: TestNode, size: number): Promise<RingView> {
  return new Promise((resolve) => {
    const check = () => {
      const view = node.ring.view()
      if (view.converged && view.members.length === size) {
        node.ring.removeEventListener('view', check)
        resolve(view)
      }
    }
    node.ring.addEventListener('view', check)
    check()
  })
}

describe('ring gossip over libp2p', () => {
  it('three nodes on loopback converge on one epoch; one stops and the others re-converge', async () => {
    const trusted = new Set<string>()
    const [a, b, c] = [await startNode(trusted), await startNode(trusted), await startNode(trusted)]
    await b.libp2p.dial(a.libp2p.getMultiaddrs()[0]!)
    await c.libp2p.dial(a.libp2p.getMultiaddrs()[0]!)
    await c.libp2p.dial(b.libp2p.getMultiaddrs()[0]!)
    const views = await Promise.all([a, b, c].map((n) => converged(n, 3)))
    expect(new Set(views.map((v) => `${v.epoch}/${v.digest}`)).size).toBe(1)

    await c.ring.stop()
    await c.libp2p.stop()
    nodes.splice(nodes.indexOf(c), 1)
    const after = await Promise.all([a, b].map((n) => converged(n, 2)))
    expect(after[0]!.epoch).toBe(after[1]!.epoch)
    expect(after[0]!.epoch).toBeGreaterThan(views[0]!.epoch)
    expect(after[0]!.members.map((m) => m.nodeId)).not.toContain(c.identity.nodeId)
  })

  it('refuses announcements from a peer without a certificate and counts them', async () => {
    const trusted = new Set<string>()
    const a = await startNode(trusted)
    const outsider = await startNode(new Set())
    trusted.delete(outsider.identity.nodeId)
    await outsider.libp2p.dial(a.libp2p.getMultiaddrs()[0]!)
    await new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        if ((a.ring.stats().dropped.untrusted ?? 0) >= 2) {
          clearInterval(poll)
          resolve()
        }
      }, 50)
    })
    expect(a.ring.view().members.map((m) => m.nodeId)).toEqual([a.identity.nodeId])
  })
})
