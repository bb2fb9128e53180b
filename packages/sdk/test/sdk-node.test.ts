import { bootstrap } from '@libp2p/bootstrap'
import { MAX_PERF_BYTES, type Perf } from '@meshnet/discovery'
import { modelProviderKey } from '@meshnet/protocols'
import { eventually } from '@meshnet/test-harness'
import { afterEach, describe, expect, it } from 'vitest'
import type { P2PDebugEvent } from '../src/debug-log.ts'
import { FabstirSDK } from '../src/sdk.ts'
import type { PeerEvent } from '../src/types.ts'
import { Nodes } from './helpers.ts'

// Real libp2p nodes on 127.0.0.1 in this process: plain createMeshNode nodes stand in for agents
// where only libp2p behaviour is under test (DHT provider records, ping, perf, gating). Jobs and
// pool rings run against real agents in sdk-agents.test.ts.

const nodes = new Nodes()
afterEach(() => nodes.cleanup())

const local = (p2pConfig: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) =>
  new FabstirSDK({
    mode: 'development',
    ...extra,
    p2pConfig: { localOnly: true, dialTimeout: 3_000, requestTimeout: 5_000, ...p2pConfig },
  } as ConstructorParameters<typeof FabstirSDK>[0])

describe('FabstirSDK on a local libp2p network', () => {
  it('refuses network calls before connect()', async () => {
    const sdk = nodes.sdk(local())
    await expect(sdk.discoverNodes({ model: 'x' })).rejects.toMatchObject({ name: 'NotConnectedError' })
    await expect(sdk.getP2PMetrics()).rejects.toMatchObject({ name: 'NotConnectedError' })
    await expect(sdk.submitJob({ prompt: 'hi', maxTokens: 1, model: 'x' })).rejects.toMatchObject({
      name: 'NotConnectedError',
    })
    expect((await sdk.getSystemHealthReport()).status).toBe('disconnected')
  })

  it('finds nodes serving a model through DHT provider records and reports real figures', async () => {
    const a = await nodes.node()
    const b = await nodes.node({ bootstrap: a.multiaddrs().map(String) })
    await eventually('B to reach A', () => b.libp2p.getConnections(a.peerId).length > 0)
    const key = await modelProviderKey('tiny.gguf')
    await eventually('A to announce the model', () => a.libp2p.contentRouting.provide(key).then(() => true))
    await eventually('B to announce the model', () => b.libp2p.contentRouting.provide(key).then(() => true))

    const sdk = nodes.sdk(
      local(
        { bootstrapNodes: [a.multiaddrs()[0]!.toString()], dhtOptions: { kBucketSize: 8 } },
        { debug: true },
      ),
    )
    const connects: PeerEvent[] = []
    const debug: P2PDebugEvent[] = []
    sdk.on('peer:connect', (event) => connects.push(event))
    sdk.on('p2p:debug', (event) => debug.push(event))
    const announced: string[][] = []
    sdk.on('nodes:discovered', (event) => announced.push(event.nodes.map((n) => n.nodeId)))

    const connected = await sdk.connect()
    expect(connected.bootstrap).toEqual([
      expect.objectContaining({ nodeId: a.nodeId, reachable: true, attempts: 1 }),
    ])
    expect(connects.map((c) => c.peerId)).toContain(a.nodeId)
    expect(debug.some((d) => d.subsystem === 'sdk' && d.message.includes('connected as'))).toBe(true)

    const found = await eventually('both providers to be found', async () => {
      const list = await sdk.discoverNodes({ model: 'tiny.gguf', forceRefresh: true })
      return list.length === 2 ? list : undefined
    })
    expect(found.map((n) => n.nodeId).sort()).toEqual([a.nodeId, b.nodeId].sort())
    for (const node of found) {
      expect(node).toMatchObject({ sources: ['dht'], public: true })
      expect(node.addresses.length).toBeGreaterThan(0)
      for (const addr of node.addresses)
        expect(addr).toMatch(new RegExp(`^/ip4/127\\..*/p2p/${node.nodeId}$`))
    }
    expect(announced.at(-1)?.sort()).toEqual([a.nodeId, b.nodeId].sort())
    expect(await sdk.discoverNodes({ model: 'another.gguf' })).toEqual([])

    const metrics = await sdk.getP2PMetrics()
    expect(metrics.connections.total).toBeGreaterThanOrEqual(1)
    expect(metrics.connections.list.find((c) => c.peerId === a.nodeId)).toMatchObject({
      direction: 'outbound',
      encryption: '/noise',
      multiplexer: '/yamux/1.0.0',
    })
    expect(metrics.bytes?.sent).toBeGreaterThan(0)
    expect(metrics.bytes?.received).toBeGreaterThan(0)
    expect(metrics.protocols.handled).toEqual(expect.arrayContaining(['/ipfs/ping/1.0.0', '/perf/1.0.0']))
    expect(metrics.protocols.traffic['/meshnet/kad/1.0.0']?.received).toBeGreaterThan(0)
    expect(metrics.dht).toMatchObject({ enabled: true, mode: 'client' })
    expect(metrics.dht.routingTableSize).toBeGreaterThanOrEqual(1)
    expect(metrics.peers.known).toBeGreaterThanOrEqual(2)
    // kBucketSize reached kad-dht itself.
    const table = (sdk.node!.libp2p.services.dht as unknown as { routingTable: { kBucketSize: number } })
      .routingTable
    expect(table.kBucketSize).toBe(8)

    const health = await sdk.getSystemHealthReport()
    expect(health).toMatchObject({
      status: 'healthy',
      issues: [],
      p2p: { connected: true, nat: 'local-only' },
    })

    const connectivity = await sdk.testP2PConnectivity()
    expect(connectivity).toMatchObject({ bootstrap: true, discovery: true, natType: 'local-only' })
    expect(connectivity.bootstrapNodes[0]?.latencyMs).toBeGreaterThanOrEqual(0)
    expect(connectivity.discoveryDetails.dht.closestPeers).toBeGreaterThanOrEqual(1)
    // The same diagnosis as `mesh doctor`: the bootstrap node is a LAN link with a round trip.
    expect(connectivity.diagnosis).toMatchObject({ nodeId: sdk.node!.nodeId, nat: { type: 'unknown' } })
    expect(connectivity.diagnosis.peers.find((p) => p.nodeId === a.nodeId)).toMatchObject({
      link: 'lan',
      error: null,
    })
    expect(connectivity.diagnosis.peers.find((p) => p.nodeId === a.nodeId)?.rttMs).toBeGreaterThanOrEqual(0)
  })

  it('measures latency with ping and bandwidth with /perf/1.0.0, and says when a peer has no perf', async () => {
    const a = await nodes.node()
    const plain = await nodes.node({ services: {} })
    const sdk = nodes.sdk(local({ bootstrapNodes: [a.multiaddrs()[0]!.toString()] }))
    await sdk.connect()
    await sdk.node!.libp2p.dial(plain.multiaddrs()[0]!)
    await eventually('identify to record the peers protocols', async () =>
      (await sdk.node!.libp2p.peerStore.get(a.peerId)).protocols.includes('/perf/1.0.0'),
    )
    const result = await sdk.testNetworkPerformance({
      peers: [a.nodeId, plain.nodeId],
      pings: 3,
      bytes: 2 * 1024 * 1024,
    })
    const withPerf = result.peers.find((p) => p.nodeId === a.nodeId)!
    expect(withPerf.latency?.samples).toBe(3)
    expect(withPerf.bandwidth).toMatchObject({ uploadBytes: 2 * 1024 * 1024, downloadBytes: 2 * 1024 * 1024 })
    expect(withPerf.bandwidth?.uploadBitsPerSecond).toBeGreaterThan(0)
    expect(withPerf.bandwidth?.downloadBitsPerSecond).toBeGreaterThan(0)
    const without = result.peers.find((p) => p.nodeId === plain.nodeId)!
    expect(without.latency?.samples).toBe(3)
    expect(without.bandwidth).toBeUndefined()
    expect(without.errors).toEqual(['bandwidth: the peer does not run /perf/1.0.0'])
    expect(result.avgLatency).toBeGreaterThanOrEqual(0)
    expect(result.bandwidth?.downloadBitsPerSecond).toBe(withPerf.bandwidth?.downloadBitsPerSecond)
    const metrics = await sdk.getP2PMetrics()
    expect(metrics.protocols.traffic['/perf/1.0.0']?.sent).toBeGreaterThanOrEqual(2 * 1024 * 1024)
    expect(metrics.protocols.traffic['/perf/1.0.0']?.received).toBeGreaterThanOrEqual(2 * 1024 * 1024)
    expect(metrics.bytes?.received).toBeGreaterThan(2 * 1024 * 1024)

    const perf = (sdk.node!.libp2p.services as unknown as { perf: Perf }).perf
    await expect(
      perf.measure(a.peerId, { uploadBytes: 0, downloadBytes: MAX_PERF_BYTES + 1 }),
    ).rejects.toMatchObject({
      name: 'PerfError',
    })
  })

  it('throws BootstrapUnreachableError after maxRetries rounds when no bootstrap node answers', async () => {
    const gone = await nodes.node()
    const address = gone.multiaddrs()[0]!.toString()
    await gone.stop()
    const sdk = nodes.sdk(
      local({ bootstrapNodes: [address], maxRetries: 2, retryDelay: 50, dialTimeout: 1_000 }),
    )
    const err = await sdk.connect().catch((e: unknown) => e)
    expect(err).toMatchObject({ name: 'BootstrapUnreachableError', code: 'ERR_BOOTSTRAP_UNREACHABLE' })
    expect(
      (err as { details: { attempts: Array<{ attempts: number }> } }).details.attempts[0]?.attempts,
    ).toBe(3)
    expect(sdk.connected).toBe(false)
  })

  it('refuses blocklisted peers and peers the authenticate hook rejects', async () => {
    const a = await nodes.node()
    const b = await nodes.node()
    const blocked = nodes.sdk(
      local({
        bootstrapNodes: [a.multiaddrs()[0]!.toString()],
        maxRetries: 0,
        security: { blocklist: [a.nodeId] },
      }),
    )
    await expect(blocked.connect()).rejects.toMatchObject({ name: 'BootstrapUnreachableError' })

    const asked: string[] = []
    const sdk = nodes.sdk(
      local({
        bootstrapNodes: [a.multiaddrs()[0]!.toString()],
        connectionManager: { autoDial: false },
        security: {
          authenticate: async (peerId: { toString(): string }) => {
            asked.push(peerId.toString())
            return peerId.toString() !== b.nodeId
          },
        },
      }),
    )
    await sdk.connect()
    // The hook runs as the connection opens; the refusal may close it before the dial returns.
    await sdk.node!.libp2p.dial(b.multiaddrs()[0]!).catch(() => {})
    await eventually(
      'B to be refused',
      () => asked.includes(b.nodeId) && sdk.node!.libp2p.getConnections(b.peerId).length === 0,
    )
    expect(asked).toContain(a.nodeId)
    expect(sdk.node!.libp2p.getPeers().map(String)).toEqual([a.nodeId])
    await expect(sdk.node!.libp2p.dial(b.multiaddrs()[0]!)).rejects.toThrow()
  })

  it('closes the connection to a bootstrap node the authenticate hook refuses during connect()', async () => {
    const a = await nodes.node()
    const b = await nodes.node()
    const sdk = nodes.sdk(
      local({
        bootstrapNodes: [a.multiaddrs()[0]!.toString(), b.multiaddrs()[0]!.toString()],
        connectionManager: { autoDial: false },
        security: {
          authenticate: async (peerId: { toString(): string }) => peerId.toString() !== b.nodeId,
        },
      }),
    )
    const connected = await sdk.connect()
    expect(connected.bootstrap).toEqual([
      expect.objectContaining({ nodeId: a.nodeId, reachable: true }),
      expect.objectContaining({
        nodeId: b.nodeId,
        reachable: false,
        attempts: 1,
        error: `peer ${b.nodeId} was refused by security.authenticate: the hook returned false`,
      }),
    ])
    await eventually(
      'the refused bootstrap connection to be closed',
      () => sdk.node!.libp2p.getConnections(b.peerId).length === 0,
    )
    expect(sdk.node!.libp2p.getPeers().map(String)).toEqual([a.nodeId])
  })

  it('serves custom protocols and runs custom peer-discovery modules', async () => {
    const a = await nodes.node()
    const b = await nodes.node()
    const sdk = nodes.sdk(
      local({
        bootstrapNodes: [a.multiaddrs()[0]!.toString()],
        connectionManager: { minConnections: 2, autoDialInterval: 1_000 },
        // A libp2p peer-discovery module: here @libp2p/bootstrap with B as its list.
        peerDiscovery: [bootstrap({ list: [b.multiaddrs()[0]!.toString()], timeout: 10 })],
        protocols: [
          {
            id: '/myapp/echo/1.0.0',
            handler: async (
              stream: { send(d: Uint8Array): boolean; close(): Promise<void> } & AsyncIterable<Uint8Array>,
            ) => {
              for await (const chunk of stream) stream.send(chunk.subarray())
              await stream.close()
            },
          },
        ],
      }),
    )
    await sdk.connect()
    await eventually('the discovered peer B to be auto-dialed', () =>
      sdk.node!.libp2p.getPeers().some((peer) => peer.equals(b.peerId)),
    )
    const stream = await a.dialProtocol(sdk.node!.multiaddrs(), '/myapp/echo/1.0.0')
    stream.send(new TextEncoder().encode('hello'))
    await stream.close()
    let echoed = ''
    for await (const chunk of stream) echoed += new TextDecoder().decode(chunk.subarray())
    expect(echoed).toBe('hello')
  })

  it('hangs up on a peer that stops answering keep-alive pings', async () => {
    const a = await nodes.node()
    const sdk = nodes.sdk(
      local({
        bootstrapNodes: [a.multiaddrs()[0]!.toString()],
        connectionManager: { autoDial: false },
        keepAlive: { interval: 1_000, timeout: 500 },
      }),
    )
    const gone = new Promise<PeerEvent>((resolve) => sdk.on('peer:disconnect', resolve))
    await sdk.connect()
    await a.libp2p.unhandle('/ipfs/ping/1.0.0')
    expect((await gone).peerId).toBe(a.nodeId)
  })

  it('caps connections per transport', async () => {
    const a = await nodes.node()
    const b = await nodes.node()
    const sdk = nodes.sdk(
      local({
        bootstrapNodes: [a.multiaddrs()[0]!.toString()],
        connectionManager: { autoDial: false },
        transports: { tcp: { maxConnections: 1 } },
      }),
    )
    await sdk.connect()
    await sdk.node!.libp2p.dial(b.multiaddrs()[0]!).catch(() => {})
    await eventually(
      'the second TCP connection to be closed',
      () => sdk.node!.libp2p.getConnections().length === 1,
    )
    expect(sdk.node!.libp2p.getPeers().map(String)).toEqual([a.nodeId])
  })

  it('stops work when a data limit is passed', async () => {
    const a = await nodes.node()
    const sdk = nodes.sdk(
      local({
        bootstrapNodes: [a.multiaddrs()[0]!.toString()],
        connectionManager: { autoDial: false, maxReceivedData: 512 * 1024 },
      }),
    )
    await sdk.connect()
    await eventually('identify', async () =>
      (await sdk.node!.libp2p.peerStore.get(a.peerId)).protocols.includes('/perf/1.0.0'),
    )
    const result = await sdk.testNetworkPerformance({ peers: [a.nodeId], pings: 1, bytes: 2 * 1024 * 1024 })
    expect(result.peers[0]?.bandwidth).toBeUndefined()
    await expect(sdk.getP2PMetrics()).rejects.toMatchObject({
      name: 'DataLimitExceededError',
      message: expect.stringMatching(/^connectionManager\.maxReceivedData \(524288 bytes\) exceeded/),
    })
    expect(sdk.node!.libp2p.getConnections()).toHaveLength(0)
    expect((await sdk.getSystemHealthReport()).status).toBe('unhealthy')
  })

  it('turns libp2p debug logs of the chosen subsystems into p2p:debug events', async () => {
    const a = await nodes.node()
    const sdk = nodes.sdk(
      local({
        bootstrapNodes: [a.multiaddrs()[0]!.toString()],
        debug: { enabled: true, subsystems: ['connection'] },
      }),
    )
    const events: P2PDebugEvent[] = []
    sdk.on('p2p:debug', (event) => events.push(event))
    await sdk.connect()
    expect(events.length).toBeGreaterThan(0)
    expect(new Set(events.map((e) => e.subsystem))).toEqual(new Set(['connection']))
    expect(events.every((e) => e.level === 'debug' || e.level === 'error')).toBe(true)
    expect(events.some((e) => e.component.startsWith('libp2p:'))).toBe(true)
  })
})
