import { createServer, type RequestListener, type Server } from 'node:http'
import type { ComponentLogger, Logger, PeerInfo } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { generateIdentity } from '@meshnet/identity'
import { afterEach, describe, expect, it } from 'vitest'
import { type HttpPeerDiscoveryInit, httpPeerDiscovery } from '../src/node/http-discovery.ts'
import { createMeshNode } from '../src/node/mesh-node.ts'
import type { MeshNode } from '../src/node/mesh-node-types.ts'

// A real HTTP server on 127.0.0.1 answers the discovery module; real nodes on 127.0.0.1 are found
// through it and dialed.

const servers: Server[] = []
const nodes: MeshNode[] = []
const stops: Array<() => void> = []
afterEach(async () => {
  for (const stop of stops.splice(0)) stop()
  await Promise.all(nodes.splice(0).map((node) => node.stop()))
  await Promise.all(
    servers.splice(0).map(
      (server) =>
        new Promise<void>((resolve) => {
          server.closeAllConnections()
          server.close(() => resolve())
        }),
    ),
  )
})

/** An HTTP server on 127.0.0.1; returns its URL and how many requests it has had. */
async function serve(handler: RequestListener): Promise<{ url: string; requests: () => number }> {
  let requests = 0
  const server = createServer((req, res) => {
    requests++
    handler(req, res)
  })
  servers.push(server)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  return { url: `http://127.0.0.1:${port}/api/v1/peers`, requests: () => requests }
}

const json =
  (body: unknown): RequestListener =>
  (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify(body))
  }

const silentLog: Logger = Object.assign(() => {}, {
  error: () => {},
  trace: () => {},
  enabled: false,
  newScope: () => silentLog,
})
const logger: ComponentLogger = { forComponent: () => silentLog }
const self = peerIdFromString(generateIdentity().nodeId)

/** The module on its own, started, with the peers it emits collected. */
function discovery(init: HttpPeerDiscoveryInit) {
  const module = httpPeerDiscovery(init)({ peerId: self, logger }) as ReturnType<
    ReturnType<typeof httpPeerDiscovery>
  > & { start(): void; stop(): void; isStarted(): boolean }
  const found: PeerInfo[] = []
  module.addEventListener('peer', (event) => found.push(event.detail))
  stops.push(() => module.stop())
  return { module, found }
}

async function waitFor(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (condition()) return
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  throw new Error(`gave up waiting for ${what}`)
}

async function startNode(options: Record<string, unknown> = {}): Promise<MeshNode> {
  const node = await createMeshNode({
    identity: generateIdentity(),
    localOnly: true,
    websockets: false,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    dhtMode: 'off',
    ...options,
  })
  nodes.push(node)
  return node
}

describe('httpPeerDiscovery', () => {
  it('a node dials the peers an HTTP endpoint lists, and asks again every interval', async () => {
    const a = await startNode()
    const endpoint = await serve(json({ peers: a.multiaddrs().map(String) }))
    const b = await startNode({ httpDiscovery: [{ endpoint: endpoint.url, intervalMs: 100, tag: 'test' }] })
    await waitFor(() => b.libp2p.getConnections(a.peerId).length > 0, 'B to dial A, found over HTTP')
    await waitFor(() => endpoint.requests() >= 3, 'the endpoint to be asked again')
    expect((await b.libp2p.peerStore.get(a.peerId)).addresses.map((x) => x.multiaddr.toString())).toContain(
      a.multiaddrs()[0]!.toString().replace(`/p2p/${a.nodeId}`, ''),
    )
  })

  it('emits well-formed peers and drops and counts every bad entry', async () => {
    const [p1, p2, p3] = [generateIdentity().nodeId, generateIdentity().nodeId, generateIdentity().nodeId]
    const endpoint = await serve(
      json([
        `/ip4/127.0.0.1/tcp/4001/p2p/${p1}`,
        `/ip4/127.0.0.1/tcp/4002/p2p/${p1}`,
        { id: p2, multiaddrs: ['/ip4/127.0.0.1/tcp/4003', `/ip4/127.0.0.1/tcp/4004/p2p/${p3}`] },
        '/ip4/127.0.0.1/tcp/4005',
        'not a multiaddr',
        `/ip4/127.0.0.1/tcp/4006/p2p/${self.toString()}`,
        { id: 'nonsense', multiaddrs: ['/ip4/127.0.0.1/tcp/4007'] },
        42,
        { id: p3 },
      ]),
    )
    const { module, found } = discovery({ endpoint: endpoint.url })
    expect(await module.refresh()).toBe(2)
    expect(found.map((p) => [p.id.toString(), p.multiaddrs.map(String)])).toEqual([
      [p1, [`/ip4/127.0.0.1/tcp/4001/p2p/${p1}`, `/ip4/127.0.0.1/tcp/4002/p2p/${p1}`]],
      [p2, ['/ip4/127.0.0.1/tcp/4003']],
    ])
    expect(module.stats()).toEqual({
      requests: 1,
      responses: 1,
      peers: 2,
      dropped: { 'mismatched-peer-id': 1, 'no-peer-id': 2, 'bad-multiaddr': 1, self: 1, 'bad-entry': 2 },
      lastError: undefined,
    })
  })

  it('takes at most maxPeers peers from one answer', async () => {
    const ids = Array.from({ length: 5 }, () => generateIdentity().nodeId)
    const endpoint = await serve(json(ids.map((id, i) => `/ip4/127.0.0.1/tcp/${4000 + i}/p2p/${id}`)))
    const { module, found } = discovery({ endpoint: endpoint.url, maxPeers: 3 })
    expect(await module.refresh()).toBe(3)
    expect(found).toHaveLength(3)
    expect(module.stats().dropped).toEqual({ 'over-limit': 2 })
  })

  it('refuses answers that are too large, not 200, not JSON or not a peer list', async () => {
    const big = JSON.stringify(Array.from({ length: 2000 }, () => '/ip4/127.0.0.1/tcp/1'))
    const cases: Array<[RequestListener, string]> = [
      [json(JSON.parse(big)), 'too-large'],
      [
        (_req, res) => {
          // No content-length: the cap is applied while reading.
          res.writeHead(200)
          res.write(big.slice(0, 20_000))
          res.end(big.slice(20_000))
        },
        'too-large',
      ],
      [(_req, res) => res.writeHead(503).end(), 'http-status'],
      [(_req, res) => res.writeHead(200).end('<html>'), 'not-json'],
      [json({ nodes: [] }), 'bad-schema'],
    ]
    for (const [handler, reason] of cases) {
      const endpoint = await serve(handler)
      const { module, found } = discovery({ endpoint: endpoint.url, maxResponseBytes: 16 * 1024 })
      await expect(module.refresh()).rejects.toThrow()
      expect(found).toEqual([])
      expect(module.stats()).toMatchObject({ requests: 1, responses: 0, dropped: { [reason]: 1 } })
      expect(module.stats().lastError).toContain(endpoint.url)
    }
  })

  it('gives up on a silent endpoint after timeoutMs, honours an AbortSignal, and stop() leaves no timer', async () => {
    const endpoint = await serve(() => {})
    const { module } = discovery({ endpoint: endpoint.url, timeoutMs: 200, intervalMs: 100 })
    await expect(module.refresh()).rejects.toThrow(/no complete answer within 200 ms/)
    expect(module.stats().dropped).toEqual({ timeout: 1 })

    const controller = new AbortController()
    const asked = module.refresh({ signal: controller.signal })
    controller.abort(new Error('caller gave up'))
    await expect(asked).rejects.toThrow()

    module.start()
    expect(module.isStarted()).toBe(true)
    await waitFor(() => endpoint.requests() >= 3, 'the first timed request')
    module.stop()
    expect(module.isStarted()).toBe(false)
    const after = endpoint.requests()
    await new Promise((resolve) => setTimeout(resolve, 400))
    expect(endpoint.requests()).toBe(after)
  })

  it('refuses endpoints that are not http(s), and non-loopback ones with localOnly', async () => {
    expect(() => httpPeerDiscovery({ endpoint: 'ftp://example.org/peers' })).toThrow(
      /endpoint: must be an http: or https: URL/,
    )
    await expect(
      startNode({ httpDiscovery: [{ endpoint: 'https://peers.example.org/v1' }] }),
    ).rejects.toThrow(
      /httpDiscovery\[0\]\.endpoint: https:\/\/peers\.example\.org\/v1 is not on this machine/,
    )
  })
})
