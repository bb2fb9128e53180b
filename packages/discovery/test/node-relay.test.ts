import { generateIdentity } from '@meshnet/identity'
import { meshnetProtocol } from '@meshnet/protocols'
import { afterEach, describe, expect, it } from 'vitest'
import { createMeshNode } from '../src/node/mesh-node.ts'
import type { MeshNode } from '../src/node/mesh-node-types.ts'
import type { MeshNodeOptions } from '../src/node/options.ts'

// A node behind a "NAT": it listens on no socket at all, only on a circuit through the relay.
// DCUtR is off here so that the connection stays relayed and the test pins the relay path.

const HELLO = meshnetProtocol('test/hello', '1.0.0')

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
    dcutr: false,
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

describe('circuit relay v2 on loopback', () => {
  it('reaches a node that listens only through a relay, and runs a protocol over the circuit', async () => {
    const relay = await startNode({ relayServer: true })
    expect(relay.libp2p.getProtocols()).toContain('/libp2p/circuit/relay/0.2.0/hop')

    const hidden = await startNode({
      listen: [],
      relays: relay.multiaddrs().map(String),
      relayReservations: 'always',
    })
    await hidden.handleRequests(
      HELLO,
      (request, context) =>
        new TextEncoder().encode(
          `hello ${new TextDecoder().decode(request)} via ${context.connection.remoteAddr.toString().includes('/p2p-circuit') ? 'relay' : 'direct'}`,
        ),
      { runOnLimitedConnection: true },
    )

    await waitFor(
      () => hidden.connectivity().reservedRelays.includes(relay.nodeId),
      'a reservation on the relay',
    )
    const circuit = hidden.multiaddrs()
    expect(circuit.length).toBeGreaterThan(0)
    for (const addr of circuit) {
      expect(addr.toString()).toMatch(
        new RegExp(`^/ip4/127\\.0\\.0\\.1/tcp/\\d+/p2p/${relay.nodeId}/p2p-circuit/p2p/${hidden.nodeId}$`),
      )
    }
    expect(relay.libp2p.services.relay?.reservations.has(hidden.peerId)).toBe(true)

    const caller = await startNode()
    const reply = await caller.request(circuit[0]!, HELLO, new TextEncoder().encode('caller'), {
      runOnLimitedConnection: true,
    })
    expect(new TextDecoder().decode(reply)).toBe('hello caller via relay')
    const [connection] = caller.libp2p.getConnections(hidden.peerId)
    expect(connection?.remoteAddr.toString()).toContain('/p2p-circuit')
    expect(connection?.encryption).toBe('/noise')
    // The relay's limits apply to the circuit (data and duration), so it is a limited connection.
    expect(connection?.limits).toBeDefined()

    // A protocol that did not opt in to limited connections is not run over the circuit.
    await expect(
      caller.request(circuit[0]!, HELLO, new Uint8Array(1), {
        runOnLimitedConnection: false,
        timeoutMs: 3_000,
      }),
    ).rejects.toMatchObject({ name: 'DialError' })
  })

  it('retries a relay that is down at start and reserves once it is up', async () => {
    const identity = generateIdentity()
    // Find a free port, then start the relay there only after the hidden node has tried it.
    const probe = await startNode()
    const port = probe.multiaddrs()[0]?.toString().split('/')[4]
    await probe.stop()
    nodes.splice(nodes.indexOf(probe), 1)
    const relayAddr = `/ip4/127.0.0.1/tcp/${port}/p2p/${identity.nodeId}`

    const hidden = await startNode({
      listen: [],
      relays: [relayAddr],
      relayReservations: 'always',
      maintenanceIntervalMs: 100,
    })
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(hidden.connectivity().reservedRelays).toEqual([])

    const relay = await startNode({ identity, relayServer: true, listen: [`/ip4/127.0.0.1/tcp/${port}`] })
    await waitFor(
      () => hidden.connectivity().reservedRelays.includes(relay.nodeId),
      'a reservation after retrying',
    )
  })
})
