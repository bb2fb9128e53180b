import { generateIdentity } from '@meshnet/identity'
import { afterEach, describe, expect, it } from 'vitest'
import { createMeshNode } from '../src/node/mesh-node.ts'
import type { MeshNode } from '../src/node/mesh-node-types.ts'
import type { MeshNodeOptions } from '../src/node/options.ts'

// Discovery without multicast: mDNS is off (localOnly), so the only way C can learn B's address
// is through the bootstrap node A and the Meshnet DHT. Everything runs on 127.0.0.1.

const nodes: MeshNode[] = []
afterEach(async () => {
  await Promise.all(nodes.splice(0).map((node) => node.stop()))
})

async function startNode(options: Partial<MeshNodeOptions> = {}): Promise<MeshNode> {
  const node = await createMeshNode({
    identity: generateIdentity(),
    localOnly: true,
    websockets: false,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    bootstrapDelayMs: 0,
    ...options,
  })
  nodes.push(node)
  return node
}

async function waitFor(condition: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (await condition()) return
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  throw new Error(`gave up waiting for ${what}`)
}

describe('discovery through a bootstrap node and the Meshnet DHT', () => {
  it('C finds B through bootstrap node A and dials it by node id', async () => {
    const a = await startNode()
    const bootstrap = a.multiaddrs().map(String)
    const b = await startNode({ bootstrap })
    const c = await startNode({ bootstrap })
    expect(c.options.mdns).toBe(false)

    // Both reach A on their own, from the bootstrap list alone.
    await waitFor(
      () => b.libp2p.getConnections(a.peerId).length > 0 && c.libp2p.getConnections(a.peerId).length > 0,
      'B and C to connect to the bootstrap node',
    )
    expect(c.libp2p.getConnections(b.peerId)).toHaveLength(0)
    expect(await c.libp2p.peerStore.has(b.peerId)).toBe(false)

    // A learns B's DHT role through identify; until then a lookup may come back empty. Each
    // attempt is bounded by its own timeout.
    let found: Awaited<ReturnType<MeshNode['findPeer']>> | undefined
    await waitFor(async () => {
      found = await c.findPeer(b.nodeId, { timeoutMs: 2_000 }).catch(() => undefined)
      return found !== undefined
    }, 'a DHT lookup of B to succeed')
    expect(found?.id.toString()).toBe(b.nodeId)
    expect(found?.multiaddrs.map(String)).toEqual(
      expect.arrayContaining(b.multiaddrs().map((addr) => addr.decapsulate('/p2p').toString())),
    )
    for (const addr of found?.multiaddrs ?? []) expect(addr.toString()).toMatch(/^\/ip4\/127\./)

    expect(await c.ping(b.nodeId)).toBeGreaterThanOrEqual(0)
    expect(c.libp2p.getConnections(b.peerId).length).toBeGreaterThan(0)
  })

  it('redials the bootstrap node when it comes back after the node lost every connection', async () => {
    const identity = generateIdentity()
    const first = await startNode({ identity })
    const port = first.multiaddrs()[0]?.toString().split('/')[4]
    const bootstrap = first.multiaddrs().map(String)
    const b = await startNode({ bootstrap, maintenanceIntervalMs: 200 })
    await waitFor(() => b.libp2p.getConnections(first.peerId).length > 0, 'B to reach the bootstrap node')

    await first.stop()
    nodes.splice(nodes.indexOf(first), 1)
    await waitFor(() => b.libp2p.getConnections().length === 0, 'B to notice the bootstrap node is gone')

    const again = await startNode({ identity, listen: [`/ip4/127.0.0.1/tcp/${port}`] })
    await waitFor(() => b.libp2p.getConnections(again.peerId).length > 0, 'B to redial the bootstrap node')
  })
})
