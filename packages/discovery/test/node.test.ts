import { randomBytes } from 'node:crypto'
import { mkdtemp, rm, stat } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { dataDirLayout, generateIdentity } from '@meshnet/identity'
import { frameStream, meshnetProtocol } from '@meshnet/protocols'
import type { Multiaddr } from '@multiformats/multiaddr'
import { afterEach, describe, expect, it } from 'vitest'
import { createMeshNode } from '../src/node/mesh-node.ts'
import type { MeshNode } from '../src/node/mesh-node-types.ts'
import type { MeshNodeOptions } from '../src/node/options.ts'

// Real libp2p nodes over real TCP/WebSocket sockets on 127.0.0.1. Every node is localOnly: it
// listens and dials only on loopback, with mDNS, UPnP and AutoNAT off.

const ECHO = meshnetProtocol('test/echo', '1.0.0')
const STREAM = meshnetProtocol('test/stream', '1.0.0')

const nodes: MeshNode[] = []
const cleanups: Array<() => Promise<void> | void> = []
afterEach(async () => {
  await Promise.all(nodes.splice(0).map((node) => node.stop()))
  for (const cleanup of cleanups.splice(0)) await cleanup()
})

async function startNode(options: Partial<MeshNodeOptions> = {}): Promise<MeshNode> {
  const node = await createMeshNode({ identity: generateIdentity(), localOnly: true, ...options })
  nodes.push(node)
  return node
}

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'meshnet-node-'))
  cleanups.push(() => rm(dir, { recursive: true, force: true }))
  return dir
}

/** Polls until `condition` holds; the bound only keeps a broken test from hanging. */
async function waitFor(condition: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (await condition()) return
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  throw new Error(`gave up waiting for ${what}`)
}

const tcpAddr = (node: MeshNode): Multiaddr =>
  node.multiaddrs().find((addr) => !addr.toString().includes('/ws'))!
const wsAddr = (node: MeshNode): Multiaddr =>
  node.multiaddrs().find((addr) => addr.toString().includes('/ws'))!
const portOf = (addr: Multiaddr): number =>
  Number(addr.getComponents().find((component) => component.name === 'tcp')?.value)
const text = (value: string) => new TextEncoder().encode(value)
const untext = (bytes: Uint8Array) => new TextDecoder().decode(bytes)

describe('libp2p mesh node over loopback TCP', () => {
  it('uses the node identity as its key and announces only loopback addresses with /p2p/<node id>', async () => {
    const identity = generateIdentity()
    const node = await startNode({ identity })
    expect(node.nodeId).toBe(identity.nodeId)
    expect(node.libp2p.peerId.toString()).toBe(identity.nodeId)
    expect(node.multiaddrs().length).toBeGreaterThanOrEqual(2)
    for (const addr of node.multiaddrs()) {
      expect(addr.toString()).toMatch(
        new RegExp(`^/ip4/127\\.0\\.0\\.1/tcp/\\d+(/ws)?/p2p/${identity.nodeId}$`),
      )
    }
    expect(node.libp2p.getProtocols()).toContain('/meshnet/kad/1.0.0')
    expect(node.libp2p.getProtocols()).not.toContain('/ipfs/kad/1.0.0')
  })

  it('dials another node with noise and yamux and pings it both ways', async () => {
    const a = await startNode()
    const b = await startNode()
    const rtt = await a.ping(tcpAddr(b))
    expect(rtt).toBeGreaterThanOrEqual(0)
    const [connection] = a.libp2p.getConnections(b.peerId)
    expect(connection?.encryption).toBe('/noise')
    expect(connection?.multiplexer).toBe('/yamux/1.0.0')
    expect(connection?.remoteAddr.toString()).toMatch(/^\/ip4\/127\.0\.0\.1\/tcp\//)
    // The dialed node now knows us and reaches us by node id over the same connection.
    expect(await b.ping(a.nodeId)).toBeGreaterThanOrEqual(0)
  })

  it('dials over WebSockets', async () => {
    const a = await startNode()
    const b = await startNode()
    await a.ping(wsAddr(b))
    expect(a.libp2p.getConnections(b.peerId)[0]?.remoteAddr.toString()).toContain('/ws')
  })

  it('runs a request/response protocol round trip with size-capped frames', async () => {
    const a = await startNode()
    const b = await startNode()
    await b.handleRequests(
      ECHO,
      (request, context) => text(`${context.nodeId}:${untext(request).toUpperCase()}`),
      {
        maxRequestBytes: 64,
      },
    )
    const reply = await a.request(tcpAddr(b), ECHO, text('hello mesh'))
    expect(untext(reply)).toBe(`${a.nodeId}:HELLO MESH`)

    // Over the cap on the serving side: the stream is reset, nothing is answered, the drop is counted.
    await expect(a.request(b.nodeId, ECHO, new Uint8Array(65))).rejects.toThrow()
    await waitFor(() => b.requestDrops().FrameTooLargeError === 1, 'the oversized request to be counted')
    // Over the cap on the requesting side: refused before anything is sent.
    await expect(
      a.request(b.nodeId, ECHO, new Uint8Array(65), { maxRequestBytes: 64 }),
    ).rejects.toMatchObject({
      name: 'FrameTooLargeError',
    })
    // A reply larger than the requester accepts.
    await expect(
      a.request(b.nodeId, ECHO, text('x'.repeat(40)), { maxResponseBytes: 16 }),
    ).rejects.toMatchObject({ name: 'FrameTooLargeError' })
  })

  it('carries many frames both ways on one stream', async () => {
    const a = await startNode()
    const b = await startNode()
    await b.libp2p.handle(STREAM, async (stream) => {
      const frames = frameStream(stream)
      for (let frame = await frames.read(); frame !== undefined; frame = await frames.read()) {
        await frames.write(Uint8Array.from(frame).reverse())
      }
      await stream.close()
    })
    const stream = await a.dialProtocol(tcpAddr(b), STREAM)
    const frames = frameStream(stream)
    const sent = Array.from({ length: 20 }, (_, i) => randomBytes(1 + i * 997))
    for (const frame of sent) await frames.write(frame)
    await stream.close()
    const received: Uint8Array[] = []
    for (let frame = await frames.read(); frame !== undefined; frame = await frames.read())
      received.push(frame)
    expect(received).toEqual(sent.map((frame) => Uint8Array.from(frame).reverse()))
  })

  it('gives up on a peer that never answers within the timeout', async () => {
    const a = await startNode()
    // A socket that accepts and then says nothing: no multistream, no noise.
    const sockets = new Set<net.Socket>()
    const blackHole = net.createServer((socket) => {
      sockets.add(socket)
      socket.on('error', () => {})
    })
    await new Promise<void>((resolve) => blackHole.listen(0, '127.0.0.1', resolve))
    cleanups.push(async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => blackHole.close(resolve))
    })
    const { port } = blackHole.address() as net.AddressInfo
    const silent = generateIdentity().nodeId
    const started = Date.now()
    await expect(
      a.dialProtocol(`/ip4/127.0.0.1/tcp/${port}/p2p/${silent}`, ECHO, { timeoutMs: 300 }),
    ).rejects.toMatchObject({ name: 'PeerTimeoutError', message: /within 300 ms/ })
    expect(Date.now() - started).toBeLessThan(5_000)
  })

  it('refuses a peer on its deny list, in both directions, and can deny at run time', async () => {
    const b = await startNode()
    const a = await startNode({ denyPeers: [b.nodeId] })
    await expect(b.ping(tcpAddr(a))).rejects.toMatchObject({ name: 'DialError' })
    await expect(a.ping(tcpAddr(b))).rejects.toMatchObject({ name: 'DialError' })
    expect(a.libp2p.getConnections(b.peerId)).toHaveLength(0)

    const c = await startNode()
    await c.ping(tcpAddr(a))
    expect(a.libp2p.getConnections(c.peerId).length).toBeGreaterThan(0)
    await a.denyPeer(c.nodeId)
    expect(a.libp2p.getConnections(c.peerId)).toHaveLength(0)
    await expect(c.ping(tcpAddr(a))).rejects.toMatchObject({ name: 'DialError' })
    a.undenyPeer(c.nodeId)
    await c.ping(tcpAddr(a))
  })

  it('admits only the peers on its allow list when one is given', async () => {
    const friend = await startNode()
    const stranger = await startNode()
    const a = await startNode({ allowPeers: [friend.nodeId] })
    await friend.ping(tcpAddr(a))
    await expect(stranger.ping(tcpAddr(a))).rejects.toMatchObject({ name: 'DialError' })
  })

  it('refuses invalid options with an error naming the field, before opening anything', async () => {
    await expect(
      createMeshNode({
        identity: generateIdentity(),
        localOnly: true,
        listen: ['/ip4/127.0.0.1/tcp/0', 'tcp:4610'],
      }),
    ).rejects.toMatchObject({ name: 'InvalidArgumentError', message: /listen\[1\]/ })
    await expect(
      createMeshNode({ identity: generateIdentity(), localOnly: true, maxConnections: -5 }),
    ).rejects.toMatchObject({ name: 'InvalidArgumentError', message: /maxConnections/ })
    await expect(
      createMeshNode({ identity: generateIdentity(), localOnly: true, mdns: true }),
    ).rejects.toMatchObject({
      name: 'InvalidArgumentError',
      message: /option mdns/,
    })
  })

  it('reports a port that is already taken as a NodeStartError', async () => {
    const a = await startNode()
    await expect(
      createMeshNode({
        identity: generateIdentity(),
        localOnly: true,
        listen: [tcpAddr(a).decapsulate('/p2p').toString()],
      }),
    ).rejects.toMatchObject({ name: 'NodeStartError' })
  })

  it('keeps its peer store in the data dir across a restart', async () => {
    const dataDir = await tempDir()
    const identity = generateIdentity()
    const b = await startNode()
    const first = await startNode({ identity, dataDir })
    await first.ping(tcpAddr(b))
    await waitFor(async () => {
      const peer = await first.libp2p.peerStore.get(b.peerId).catch(() => undefined)
      return peer?.protocols.includes(ECHO) === false && (peer?.addresses.length ?? 0) >= 2
    }, 'identify to store the peer')
    await first.stop()
    nodes.splice(nodes.indexOf(first), 1)
    expect((await stat(dataDirLayout(dataDir).datastoreDir)).isDirectory()).toBe(true)

    const second = await startNode({ identity, dataDir })
    const peer = await second.libp2p.peerStore.get(b.peerId)
    expect(peer.addresses.map(({ multiaddr }) => multiaddr.toString())).toEqual(
      expect.arrayContaining([tcpAddr(b).decapsulate('/p2p').toString()]),
    )
    // Dialed by node id alone: the address comes from the restored peer store.
    expect(await second.ping(b.nodeId)).toBeGreaterThanOrEqual(0)
  })

  it('survives garbage, resets and half-open handshakes on its TCP and WebSocket ports', async () => {
    // Every socket comes from 127.0.0.1: lift the per-host rate limit so that the pings after
    // the abuse are not refused by it (being refused by it is fine too, just not what we test).
    const a = await startNode({ inboundConnectionsPerSecond: 1_000 })
    const b = await startNode()
    const abuse = async (port: number, payload: Uint8Array | string | undefined, reset: boolean) => {
      const socket = net.connect(port, '127.0.0.1')
      const connected = await new Promise<boolean>((resolve) => {
        socket.once('connect', () => resolve(true))
        socket.once('error', () => resolve(false))
      })
      socket.on('error', () => {})
      if (!connected) return
      if (payload !== undefined) socket.write(payload)
      await new Promise((resolve) => setTimeout(resolve, 20))
      if (reset) socket.resetAndDestroy()
      else socket.end()
    }
    for (const port of [portOf(tcpAddr(a)), portOf(wsAddr(a))]) {
      await abuse(port, randomBytes(64 * 1024), false)
      await abuse(port, undefined, true)
      await abuse(port, '/multistream/1.0.0\n', true)
      await abuse(port, '\x13/multistream/1.0.0\n\x07/noise\n\x00\x20', true)
      await abuse(port, 'GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n', true)
      await abuse(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', false)
    }
    expect(await b.ping(tcpAddr(a))).toBeGreaterThanOrEqual(0)
    expect(await b.ping(wsAddr(a))).toBeGreaterThanOrEqual(0)
  })

  it('with a pre-shared key, connects only to nodes holding the same key', async () => {
    const swarmKey = () => `/key/swarm/psk/1.0.0/\n/base16/\n${randomBytes(32).toString('hex')}\n`
    const key = swarmKey()
    const a = await startNode({ preSharedKey: key, websockets: false, listen: ['/ip4/127.0.0.1/tcp/0'] })
    const b = await startNode({ preSharedKey: key, websockets: false, listen: ['/ip4/127.0.0.1/tcp/0'] })
    const outsider = await startNode({ preSharedKey: swarmKey() })
    const open = await startNode()
    await a.ping(tcpAddr(b))
    await expect(outsider.ping(tcpAddr(a), { timeoutMs: 2_000 })).rejects.toThrow()
    await expect(open.ping(tcpAddr(a), { timeoutMs: 2_000 })).rejects.toThrow()
  })

  it('wires a LAN node with AutoNAT, DCUtR and the DHT and without UPnP, opening nothing until started', async () => {
    // Not localOnly, so never started here: it would listen on every interface and multicast.
    const node = await createMeshNode({ identity: generateIdentity(), start: false })
    nodes.push(node)
    expect(node.libp2p.status).toBe('stopped')
    expect(node.options).toMatchObject({ mdns: true, autoNAT: true, upnp: false, dhtMode: 'server' })
    expect(node.libp2p.services.autoNAT).toBeDefined()
    expect(node.libp2p.services.dcutr).toBeDefined()
    expect(node.libp2p.services.dht?.getMode()).toBe('server')
    expect(node.libp2p.services.upnp).toBeUndefined()
    expect(node.libp2p.services.relay).toBeUndefined()
    expect(node.multiaddrs()).toEqual([])
  })

  it('closes its listeners on stop', async () => {
    const a = await startNode()
    const port = portOf(tcpAddr(a))
    await a.stop()
    await a.stop()
    const refused = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1')
      socket.once('connect', () => {
        socket.destroy()
        resolve(false)
      })
      socket.once('error', () => resolve(true))
    })
    expect(refused).toBe(true)
  })
})
