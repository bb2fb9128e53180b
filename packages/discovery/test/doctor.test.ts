import type { Gateway, PortMapping } from '@achingbrain/nat-port-mapper'
import type { UPnPNATClient } from '@libp2p/upnp-nat'
import { generateIdentity } from '@meshnet/identity'
import { afterEach, describe, expect, it } from 'vitest'
import { classifyAddress, classifyLink, diagnose, inferNat } from '../src/node/doctor.ts'
import { collectDiagnosis } from '../src/node/doctor-collect.ts'
import type { AddressObservation, DiagnosisInput, PeerInput } from '../src/node/doctor-types.ts'
import { createMeshNode } from '../src/node/mesh-node.ts'
import type { MeshNode } from '../src/node/mesh-node-types.ts'
import { disabledUpnp, upnpRecorder } from '../src/node/nat-monitor.ts'
import type { MeshNodeOptions } from '../src/node/options.ts'

// The pure part as tables (address and link classes, NAT inference, advice), then the collecting
// part over real libp2p nodes on 127.0.0.1: LAN links with a round trip, a member not connected,
// a relayed link, and the observed addresses the NAT inference reads.

const HOME_IP = '192.168.1.10'
const ROUTER_IP = '84.17.3.9'
const PEER = (n: number) => `12D3KooWDoctorTestPeer${String(n).padStart(30, '0')}`

function observation(n: number, changes: Partial<AddressObservation>): AddressObservation {
  return {
    peer: PEER(n),
    observed: `/ip4/${ROUTER_IP}/tcp/${40000 + n}`,
    remote: `/ip4/93.184.216.${n}/tcp/4001`,
    local: `/ip4/${HOME_IP}/tcp/${40000 + n}`,
    direction: 'outbound',
    at: 1_000 + n,
    ...changes,
  }
}

function natInput(changes: Partial<DiagnosisInput> = {}): DiagnosisInput {
  return {
    nodeId: PEER(0),
    at: '2026-12-07T09:00:00.000Z',
    localOnly: false,
    localIps: ['127.0.0.1', HOME_IP],
    addresses: [{ address: `/ip4/${HOME_IP}/tcp/4001`, source: 'transport', verified: true }],
    announced: [`/ip4/${HOME_IP}/tcp/4001/p2p/${PEER(0)}`],
    observations: [],
    autoNAT: '/libp2p/autonat/1.0.0',
    upnp: disabledUpnp(),
    relays: [],
    reservedRelays: [],
    publiclyReachable: false,
    peers: [],
    pingTimeoutMs: 3000,
    ...changes,
  }
}

function peer(n: number, changes: Partial<PeerInput> = {}): PeerInput {
  return {
    nodeId: PEER(n),
    connections: [{ remote: `/ip4/192.168.1.${20 + n}/tcp/4001`, limited: false }],
    rttMs: 1.5,
    error: null,
    member: true,
    ...changes,
  }
}

const relayedVia = (relay: number) => ({
  remote: `/ip4/93.184.216.34/tcp/4001/p2p/${PEER(relay)}/p2p-circuit`,
  limited: true,
})

describe('address and link classes', () => {
  it.each([
    ['/ip4/127.0.0.1/tcp/4001', 'loopback'],
    ['/ip6/::1/tcp/4001', 'loopback'],
    ['/ip4/192.168.1.10/tcp/4001', 'lan'],
    ['/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWx', 'lan'],
    ['/ip4/172.20.0.5/tcp/4001', 'lan'],
    ['/ip4/169.254.3.4/tcp/4001', 'lan'],
    ['/ip6/fd00::5/tcp/4001', 'lan'],
    ['/ip4/84.17.3.9/tcp/4001', 'public'],
    ['/ip6/2a01:4f8::1/tcp/4001', 'public'],
    [`/ip4/84.17.3.9/tcp/4001/p2p/${PEER(1)}/p2p-circuit/p2p/${PEER(2)}`, 'relayed'],
    ['/dns4/relay.example.org/tcp/443/wss', 'other'],
    ['not a multiaddr', 'other'],
  ])('classifies %s as %s', (address, kind) => {
    expect(classifyAddress(address)).toBe(kind)
  })

  it.each([
    [[], 'none'],
    [[{ remote: '/ip4/127.0.0.1/tcp/5000', limited: false }], 'lan'],
    [[{ remote: '/ip4/192.168.1.7/tcp/5000', limited: false }], 'lan'],
    [[{ remote: '/ip4/84.17.3.9/tcp/5000', limited: false }], 'direct'],
    [[relayedVia(9)], 'relayed'],
    // A relayed connection and a direct one (after hole punching): the direct one counts.
    [[relayedVia(9), { remote: '/ip4/84.17.3.9/tcp/5000', limited: false }], 'direct'],
  ] as const)('tells the link of connections %j: %s', (connections, link) => {
    expect(classifyLink(connections).link).toBe(link)
  })
})

describe('NAT type inference', () => {
  it.each<[string, Partial<DiagnosisInput>, { type: string; method: string; behindNat: boolean | null }]>([
    [
      'nothing for a loopback-only node',
      { localOnly: true, observations: [observation(1, {}), observation(2, {})] },
      { type: 'unknown', method: 'none', behindNat: null },
    ],
    [
      'public from an address AutoNAT confirmed',
      {
        addresses: [
          { address: `/ip4/${HOME_IP}/tcp/4001`, source: 'transport', verified: true },
          { address: `/ip4/${ROUTER_IP}/tcp/4001`, source: 'observed', verified: true },
        ],
      },
      { type: 'public', method: 'autonat', behindNat: true },
    ],
    [
      'nothing from an announced address (configured, not confirmed)',
      { addresses: [{ address: `/ip4/${ROUTER_IP}/tcp/4001`, source: 'announce', verified: true }] },
      { type: 'unknown', method: 'none', behindNat: null },
    ],
    [
      'nothing from an observed address AutoNAT has not confirmed, with one reporter',
      { observations: [observation(1, {})] },
      { type: 'unknown', method: 'none', behindNat: true },
    ],
    [
      'endpoint-independent when the NAT kept the local port of every connection',
      { observations: [observation(1, {}), observation(2, {}), observation(3, {})] },
      { type: 'endpoint-independent', method: 'port-preservation', behindNat: true },
    ],
    [
      'symmetric when the NAT gave every connection a new port',
      {
        observations: [
          observation(1, { observed: `/ip4/${ROUTER_IP}/tcp/61001` }),
          observation(2, { observed: `/ip4/${ROUTER_IP}/tcp/52877` }),
        ],
      },
      { type: 'address-and-port-dependent', method: 'port-preservation', behindNat: true },
    ],
    [
      'nothing yet when the NAT kept some ports and changed others',
      {
        observations: [observation(1, {}), observation(2, { observed: `/ip4/${ROUTER_IP}/tcp/52877` })],
      },
      { type: 'unknown', method: 'none', behindNat: true },
    ],
    [
      'endpoint-independent when two peers saw one local socket at one mapping',
      {
        observations: [
          observation(1, { local: `/ip4/${HOME_IP}/tcp/4001`, observed: `/ip4/${ROUTER_IP}/tcp/31000` }),
          observation(2, { local: `/ip4/${HOME_IP}/tcp/4001`, observed: `/ip4/${ROUTER_IP}/tcp/31000` }),
        ],
      },
      { type: 'endpoint-independent', method: 'same-socket', behindNat: true },
    ],
    [
      'symmetric when two peers saw one local socket at two mappings',
      {
        observations: [
          observation(1, { local: `/ip4/${HOME_IP}/tcp/4001`, observed: `/ip4/${ROUTER_IP}/tcp/31000` }),
          observation(2, { local: `/ip4/${HOME_IP}/tcp/4001`, observed: `/ip4/${ROUTER_IP}/tcp/31077` }),
        ],
      },
      { type: 'address-and-port-dependent', method: 'same-socket', behindNat: true },
    ],
    [
      'public when a peer outside dialed this node through the router',
      {
        observations: [
          observation(1, { direction: 'inbound', observed: `/ip4/${ROUTER_IP}/tcp/4001`, local: undefined }),
        ],
      },
      { type: 'public', method: 'inbound-dials', behindNat: true },
    ],
    [
      'public when peers see the node at its own public address',
      {
        localIps: [ROUTER_IP],
        observations: [observation(1, { local: `/ip4/${ROUTER_IP}/tcp/40001` })],
      },
      { type: 'public', method: 'own-address', behindNat: false },
    ],
    [
      'nothing when only LAN peers told us our (untranslated) address',
      {
        observations: [
          observation(1, { observed: `/ip4/${HOME_IP}/tcp/40001`, remote: '/ip4/192.168.1.21/tcp/4001' }),
          observation(2, { observed: `/ip4/${HOME_IP}/tcp/40002`, remote: '/ip4/192.168.1.22/tcp/4001' }),
        ],
      },
      { type: 'unknown', method: 'none', behindNat: false },
    ],
    [
      'nothing from relayed connections or loopback',
      {
        observations: [
          observation(1, { remote: relayedVia(9).remote }),
          observation(2, { observed: '/ip4/127.0.0.1/tcp/40002' }),
        ],
      },
      { type: 'unknown', method: 'none', behindNat: null },
    ],
  ])('infers %s', (_name, input, expected) => {
    expect(inferNat(natInput(input))).toMatchObject(expected)
  })

  it('uses the newest report of each peer', () => {
    const nat = inferNat(
      natInput({
        observations: [
          observation(1, { observed: `/ip4/${ROUTER_IP}/tcp/61001`, at: 1 }),
          observation(1, { at: 2 }),
          observation(2, {}),
        ],
      }),
    )
    expect(nat).toMatchObject({ type: 'endpoint-independent', reporters: 2 })
  })

  it('says why the type is unknown, and how a known one was learned', () => {
    expect(inferNat(natInput()).evidence).toMatch(/no peer outside this machine has told us our address/)
    expect(inferNat(natInput({ observations: [observation(1, {})] })).evidence).toMatch(
      /fewer than two peers outside have told us our address/,
    )
    const upnp = {
      ...disabledUpnp(),
      enabled: true,
      mappings: [{ internal: `${HOME_IP}:4001`, external: `${ROUTER_IP}:4001`, protocol: 'tcp' as const }],
    }
    expect(
      inferNat(
        natInput({
          addresses: [{ address: `/ip4/${ROUTER_IP}/tcp/4001`, source: 'ip-mapping', verified: true }],
          upnp,
        }),
      ).evidence,
    ).toBe(
      `AutoNAT (/libp2p/autonat/1.0.0): peers dialed back /ip4/${ROUTER_IP}/tcp/4001, a UPnP port mapping on the router`,
    )
    // A mapping guessed from what peers saw (not UPnP's) is just an address that was dialed back.
    expect(
      inferNat(
        natInput({
          addresses: [{ address: `/ip4/${ROUTER_IP}/tcp/4001`, source: 'ip-mapping', verified: true }],
        }),
      ).evidence,
    ).toBe(`AutoNAT (/libp2p/autonat/1.0.0): peers dialed back /ip4/${ROUTER_IP}/tcp/4001`)
  })
})

describe('advice', () => {
  const codes = (input: Partial<DiagnosisInput>) => diagnose(natInput(input)).advice.map((a) => a.code)

  it('has nothing to say about a node with two LAN peers that answer', () => {
    const report = diagnose(natInput({ peers: [peer(1), peer(2)] }))
    expect(report.advice).toEqual([])
    expect(report.peers.map((p) => [p.link, p.rttMs])).toEqual([
      ['lan', 1.5],
      ['lan', 1.5],
    ])
  })

  it('tells a node with no peers where members are found', () => {
    const [advice] = diagnose(natInput()).advice
    expect(advice).toEqual({
      code: 'no-peers',
      severity: 'warning',
      message:
        "no peers: check that the pool's members share a LAN (mDNS and beacons find them there) or a bootstrap node (`mesh start --bootstrap <addr>`)",
    })
  })

  it('asks for a relay or UPnP behind a symmetric NAT without a reservation', () => {
    const symmetric = [
      observation(1, { observed: `/ip4/${ROUTER_IP}/tcp/61001` }),
      observation(2, { observed: `/ip4/${ROUTER_IP}/tcp/52877` }),
    ]
    const report = diagnose(natInput({ observations: symmetric, peers: [peer(1)] }))
    expect(report.advice[0]).toMatchObject({ code: 'symmetric-nat-no-relay', severity: 'warning' })
    expect(report.advice[0]!.message).toContain('add a relay (`mesh start --relay <addr>`) or enable UPnP')
    // With a reservation members reach it through the relay: nothing to add.
    expect(
      codes({ observations: symmetric, peers: [peer(1)], relays: [PEER(9)], reservedRelays: [PEER(9)] }),
    ).toEqual([])
  })

  it('prices a mesh reached only through a relay, not counting the relay itself', () => {
    const report = diagnose(
      natInput({
        relays: [PEER(9)],
        reservedRelays: [PEER(9)],
        peers: [
          peer(9, {
            member: false,
            connections: [{ remote: '/ip4/93.184.216.34/tcp/4001', limited: false }],
          }),
          peer(1, { connections: [relayedVia(9)], rttMs: 40 }),
          peer(2, { connections: [relayedVia(9)], rttMs: 60 }),
        ],
      }),
    )
    expect(report.peers.map((p) => [p.link, p.relay])).toEqual([
      ['direct', true],
      ['relayed', false],
      ['relayed', false],
    ])
    expect(report.advice.map((a) => a.code)).toEqual(['all-relayed'])
    expect(report.advice[0]!.message).toMatch(
      /^all 2 peers are reached through a relay: expect ~50 ms per hop;/,
    )
    expect(report.advice[0]!.message).toContain('pipeline')
  })

  it('names members that are not connected, and peers that did not answer a ping', () => {
    const report = diagnose(
      natInput({
        peers: [
          peer(1),
          peer(2, { rttMs: null, error: 'could not ping within 3000 ms' }),
          peer(3, { connections: [], rttMs: null, error: 'not connected' }),
        ],
      }),
    )
    expect(report.advice.map((a) => a.code)).toEqual(['members-unreachable', 'ping-failed'])
    expect(report.advice[0]!.message).toContain('12D3KooW…0003')
    expect(report.advice[1]!.message).toContain('within 3000 ms (12D3KooW…0002)')
  })

  it('warns that a reservation is missing when relays were given', () => {
    expect(codes({ peers: [peer(1)], relays: [PEER(9)] })).toEqual(['relay-not-reserved'])
  })

  it('reports what UPnP found: no gateway, a double NAT, a mapping that failed', () => {
    const upnp = { ...disabledUpnp(), enabled: true, searches: 2 }
    expect(codes({ peers: [peer(1)], upnp })).toEqual(['upnp-no-gateway'])
    expect(
      codes({
        peers: [peer(1)],
        upnp: { ...upnp, gateways: ['192.168.1.1:5000 (IPv4)'], externalIp: '100.64.7.1' },
      }),
    ).toEqual(['upnp-double-nat'])
    expect(
      codes({
        peers: [peer(1)],
        upnp: {
          ...upnp,
          gateways: ['192.168.1.1:5000 (IPv4)'],
          error: 'mapping port 4001: 718 ConflictInMappingEntry',
        },
      }),
    ).toEqual(['upnp-failed'])
  })

  it('classifies the listen and announced addresses with where libp2p got them', () => {
    const report = diagnose(
      natInput({
        addresses: [
          { address: '/ip4/127.0.0.1/tcp/4001', source: 'transport', verified: true },
          { address: `/ip4/${HOME_IP}/tcp/4001`, source: 'transport', verified: true },
          { address: `/ip4/${ROUTER_IP}/tcp/4001`, source: 'ip-mapping', verified: false },
        ],
        announced: [`/ip4/${HOME_IP}/tcp/4001/p2p/${PEER(0)}`, `${relayedVia(9).remote}/p2p/${PEER(0)}`],
      }),
    )
    expect(report.listen.map((a) => [a.kind, a.source])).toEqual([
      ['loopback', 'transport'],
      ['lan', 'transport'],
    ])
    expect(report.announced.map((a) => [a.kind, a.source])).toEqual([
      ['lan', 'transport'],
      ['relayed', null],
    ])
  })
})

describe('the UPnP recorder', () => {
  function fakeGateway(options: { externalIp?: string; mapFails?: boolean } = {}): Gateway {
    return {
      id: 'gw-1',
      host: '192.168.1.1',
      port: 5000,
      family: 'IPv4',
      stop: async () => {},
      map: async (internalPort: number, internalHost: string): Promise<PortMapping> => {
        if (options.mapFails) throw new Error('718 ConflictInMappingEntry')
        return {
          internalHost,
          internalPort,
          externalHost: options.externalIp ?? ROUTER_IP,
          externalPort: internalPort,
          protocol: 'TCP',
        }
      },
      mapAll: async function* () {},
      unmap: async () => {},
      externalIp: async () => options.externalIp ?? ROUTER_IP,
    }
  }
  const client = (gateway: Gateway): UPnPNATClient => ({
    findGateways: async function* () {
      yield gateway
    },
    getGateway: async () => gateway,
  })

  it('records the gateways a search found, their external address and each mapping', async () => {
    const recorder = upnpRecorder(client(fakeGateway()))
    for await (const gateway of recorder.client.findGateways()) {
      await gateway.externalIp()
      await gateway.map(4001, HOME_IP, { protocol: 'TCP' })
    }
    expect(recorder.status()).toEqual({
      enabled: true,
      searches: 1,
      gateways: ['192.168.1.1:5000 (IPv4)'],
      externalIp: ROUTER_IP,
      mappings: [{ internal: `${HOME_IP}:4001`, external: `${ROUTER_IP}:4001`, protocol: 'tcp' }],
      error: null,
    })
  })

  it('records why a mapping failed', async () => {
    const recorder = upnpRecorder(client(fakeGateway({ mapFails: true })))
    const gateway = await recorder.client.getGateway(new URL('http://192.168.1.1:5000/rootDesc.xml'))
    await expect(gateway.map(4001, HOME_IP)).rejects.toThrow('718')
    expect(recorder.status()).toMatchObject({
      mappings: [],
      error: 'mapping port 4001 on gateway 192.168.1.1:5000 (IPv4): 718 ConflictInMappingEntry',
    })
  })
})

describe('collectDiagnosis on real nodes over loopback TCP', () => {
  const nodes: MeshNode[] = []
  afterEach(async () => {
    await Promise.all(nodes.splice(0).map((node) => node.stop()))
  })

  async function startNode(options: Partial<MeshNodeOptions> = {}): Promise<MeshNode> {
    const node = await createMeshNode({
      identity: generateIdentity(),
      localOnly: true,
      websockets: false,
      dhtMode: 'off',
      listen: ['/ip4/127.0.0.1/tcp/0'],
      dcutr: false,
      ...options,
    })
    nodes.push(node)
    return node
  }

  async function waitFor(condition: () => boolean, what: string): Promise<void> {
    for (let i = 0; i < 400 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 25))
    if (!condition()) throw new Error(`gave up waiting for ${what}`)
  }

  it('lists connected peers as LAN with a round trip, and a member that is not connected as none', async () => {
    const [a, b, c] = [await startNode(), await startNode(), await startNode()]
    await a.libp2p.dial(b.multiaddrs()[0]!)
    await a.libp2p.dial(c.multiaddrs()[0]!)
    const absent = generateIdentity().nodeId
    const report = await collectDiagnosis(a, { members: [b.nodeId, c.nodeId, absent], pingTimeoutMs: 5_000 })

    expect(report.nodeId).toBe(a.nodeId)
    expect(report.listen).toEqual([
      expect.objectContaining({ kind: 'loopback', source: 'transport', verified: true }),
    ])
    expect(report.announced.map((x) => x.kind)).toEqual(['loopback'])
    expect(report.peers.map((p) => [p.nodeId, p.link, p.member])).toEqual(
      expect.arrayContaining([
        [b.nodeId, 'lan', true],
        [c.nodeId, 'lan', true],
        [absent, 'none', true],
      ]),
    )
    for (const p of report.peers.filter((x) => x.link === 'lan')) {
      expect(p.rttMs).toBeGreaterThanOrEqual(0)
      expect(p.rttMs).toBeLessThan(5_000)
    }
    expect(report.peers.at(-1)).toMatchObject({ nodeId: absent, rttMs: null, error: 'not connected' })
    expect(report.nat).toMatchObject({ type: 'unknown', autoNAT: null })
    expect(report.upnp.enabled).toBe(false)
    expect(report.advice.map((x) => x.code)).toEqual(['members-unreachable', 'local-only'])
    expect(JSON.parse(JSON.stringify(report))).toEqual(report)
  })

  it('records the address each peer saw, with our end of the connection', async () => {
    const [a, b, c] = [await startNode(), await startNode(), await startNode()]
    await a.libp2p.dial(b.multiaddrs()[0]!)
    await c.libp2p.dial(a.multiaddrs()[0]!)
    const monitor = a.libp2p.services.natMonitor
    await waitFor(() => monitor.observations().length === 2, 'identify from both peers')
    const fromB = monitor.observations().find((o) => o.peer === b.nodeId)!
    // Outbound: b saw the ephemeral socket a dialed from, which a knows as its local end.
    expect(fromB.direction).toBe('outbound')
    expect(fromB.local).toMatch(/^\/ip4\/127\.0\.0\.1\/tcp\/\d+$/)
    expect(fromB.observed).toBe(fromB.local)
    // Inbound: c saw the listen socket it dialed.
    const fromC = monitor.observations().find((o) => o.peer === c.nodeId)!
    expect(fromC.direction).toBe('inbound')
    expect(`${fromC.observed}/p2p/${a.nodeId}`).toBe(a.multiaddrs()[0]!.toString())
  })

  it('advises a node with no peers, and measures nothing with ping: false', async () => {
    const alone = await startNode()
    const report = await collectDiagnosis(alone, { ping: false })
    expect(report.peers).toEqual([])
    expect(report.advice[0]).toMatchObject({ code: 'no-peers', severity: 'warning' })
  })

  it('reports a peer behind a relay as relayed, pinged over the circuit', async () => {
    const relay = await startNode({ relayServer: true })
    const hidden = await startNode({
      listen: [],
      relays: relay.multiaddrs().map(String),
      relayReservations: 'always',
    })
    await waitFor(() => hidden.connectivity().reservedRelays.includes(relay.nodeId), 'a reservation')
    const caller = await startNode()
    await caller.libp2p.dial(hidden.multiaddrs()[0]!, { signal: AbortSignal.timeout(10_000) })

    const seen = await collectDiagnosis(caller, { members: [hidden.nodeId] })
    expect(seen.peers.find((p) => p.nodeId === hidden.nodeId)).toMatchObject({ link: 'relayed', error: null })
    expect(seen.peers.find((p) => p.nodeId === hidden.nodeId)?.rttMs).toBeGreaterThanOrEqual(0)
    expect(seen.peers.find((p) => p.nodeId === relay.nodeId)).toMatchObject({ link: 'lan', relay: false })

    const self = await collectDiagnosis(hidden)
    expect(self.relays).toEqual({ configured: [relay.nodeId], reserved: [relay.nodeId] })
    expect(self.listen.map((a) => a.kind)).toEqual(['relayed'])
    expect(self.peers.find((p) => p.nodeId === relay.nodeId)).toMatchObject({ relay: true, link: 'lan' })
  })
})
