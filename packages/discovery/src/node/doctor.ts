import { networkInterfaces } from 'node:os'
import type { ServiceMap } from '@libp2p/interface'
import { getNetConfig, isLinkLocal, isLoopback, isPrivate } from '@libp2p/utils'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import type { MeshNode } from './mesh-node-types.ts'

// `mesh doctor`: what a user needs to know when members cannot reach each other. `diagnose` is pure
// (plain data in, a report with advice out); `collectDiagnosis` reads it from a running MeshNode.

/** Where an address leads: this machine, a private network, the internet, or a relay circuit. */
export type AddressKind = 'loopback' | 'lan' | 'public' | 'relayed' | 'other'

/** How this node reaches a peer: a relay, a connection on a private or loopback address, any other direct one, or none. */
export type LinkKind = 'direct' | 'lan' | 'relayed' | 'none'

/**
 * - `public`: peers can dial this node's own address (confirmed by AutoNAT, or seen so by peers);
 * - `endpoint-independent`: behind a NAT that keeps one mapping per local socket ("full cone"-like):
 *   hole punching (DCUtR) can give direct links;
 * - `address-and-port-dependent`: behind a symmetric NAT, a new mapping per destination: hole
 *   punching fails, peers outside reach this node only through a relay;
 * - `unknown`: not enough evidence yet (`NatDiagnosis.evidence` says why).
 */
export type NatType = 'public' | 'endpoint-independent' | 'address-and-port-dependent' | 'unknown'

/**
 * How the NAT type was learned: `autonat` (peers dialed a public address back), `inbound-dials`
 * (peers dialed this node on a translated address), `own-address` (peers see this node's own public
 * address), `same-socket` (several peers saw one local socket), `port-preservation` (whether the NAT
 * kept each connection's local port), `none`.
 */
export type NatMethod =
  | 'autonat'
  | 'inbound-dials'
  | 'own-address'
  | 'same-socket'
  | 'port-preservation'
  | 'none'

/** The source libp2p's address manager gives an address (`transport`: a listen socket). */
export type AddressSource = 'transport' | 'announce' | 'observed' | 'dns-mapping' | 'ip-mapping'

/** One of our addresses as libp2p holds it. */
export interface AddressRecord {
  address: string
  source: AddressSource
  /** Safe to share: private and announced ones always, public ones once AutoNAT confirmed them. */
  verified: boolean
}

/** The address a peer saw this node at (identify's observed address) and the connection it was on. */
export interface AddressObservation {
  /** The peer that reported it. */
  peer: string
  /** Our address as the peer saw it. */
  observed: string
  /** The peer's address as we see it. */
  remote: string
  /** Our end of that connection (`/ip4/<ip>/tcp/<port>`), when the transport tells. */
  local?: string
  /** Who opened the connection: `outbound` ones show how a NAT maps our sockets. */
  direction: 'inbound' | 'outbound'
  /** When it was reported (ms since the epoch). */
  at: number
}

/** What UPnP found and did; all empty when the node does not run UPnP. */
export interface UpnpStatus {
  enabled: boolean
  /** Gateway searches started (SSDP M-SEARCH rounds). */
  searches: number
  /** Gateways that answered, as `host:port (IPv4)`. */
  gateways: string[]
  /** The external address the gateway reported, when it was asked. */
  externalIp: string | null
  /** Ports mapped on the gateway, as `ip:port`. */
  mappings: Array<{ internal: string; external: string; protocol: 'tcp' | 'udp' }>
  /** The last thing that failed, and why. */
  error: string | null
}

/** A peer to report on: its open connections (none for a member not connected) and a round trip. */
export interface PeerInput {
  nodeId: string
  connections: Array<{ remote: string; limited: boolean }>
  /** Round trip of a ping just now (ms), null when none was made or it failed. */
  rttMs: number | null
  /** Why there is no round trip (the ping's error). */
  error: string | null
  /** A ring or pool member this node should reach. */
  member: boolean
}

/** Everything `diagnose` reads: plain data, as `collectDiagnosis` gathers it from a node. */
export interface DiagnosisInput {
  nodeId: string
  /** ISO 8601; default now. */
  at?: string
  /** The node keeps to loopback (`--local-only`). */
  localOnly: boolean
  /** IP addresses of this machine's interfaces. */
  localIps: string[]
  addresses: AddressRecord[]
  /** What the node tells others (its multiaddrs). */
  announced: string[]
  observations: AddressObservation[]
  /** The AutoNAT protocol the node runs (e.g. `/libp2p/autonat/1.0.0`), null when AutoNAT is off. */
  autoNAT: string | null
  upnp: UpnpStatus
  /** Relays the node was given (node ids) and those it holds a reservation on. */
  relays: string[]
  reservedRelays: string[]
  publiclyReachable: boolean
  peers: PeerInput[]
  /** The ping budget, to word the advice about peers that did not answer. */
  pingTimeoutMs?: number
}

export interface ClassifiedAddress {
  address: string
  kind: AddressKind
  /** How libp2p learned it (`null` when it does not hold it, e.g. a relay circuit). */
  source: AddressSource | null
  verified: boolean
}

export interface NatDiagnosis {
  type: NatType
  method: NatMethod
  /** How it was learned, or why nothing is known yet, in a sentence. */
  evidence: string
  /** True when peers see this node at an address that is not its own; null when nobody said. */
  behindNat: boolean | null
  /** This node's addresses as peers outside saw them (after the NAT). */
  external: string[]
  /** Peers whose report of our address the inference used. */
  reporters: number
  autoNAT: string | null
}

export interface PeerDiagnosis {
  nodeId: string
  link: LinkKind
  /** The remote address of the connection the link type is for. */
  address: string | null
  rttMs: number | null
  error: string | null
  member: boolean
  /** One of the relays this node was given. */
  relay: boolean
  connections: number
}

/** What each piece of advice is about, for programs (the message is for people). */
export type AdviceCode =
  | 'local-only'
  | 'no-peers'
  | 'members-unreachable'
  | 'symmetric-nat-no-relay'
  | 'nat-no-relay'
  | 'relay-not-reserved'
  | 'all-relayed'
  | 'some-relayed'
  | 'ping-failed'
  | 'upnp-no-gateway'
  | 'upnp-double-nat'
  | 'upnp-failed'

export interface Advice {
  code: AdviceCode
  /** `warning`: members may not reach each other; `info`: worth knowing. */
  severity: 'warning' | 'info'
  message: string
}

/** The report of `mesh doctor`, `GET /doctor` and the SDK's `testP2PConnectivity().diagnosis`. */
export interface Diagnosis {
  at: string
  nodeId: string
  /** The sockets this node listens on (wildcards expanded to each interface). */
  listen: ClassifiedAddress[]
  /** What it tells others. */
  announced: ClassifiedAddress[]
  nat: NatDiagnosis
  upnp: UpnpStatus
  relays: { configured: string[]; reserved: string[] }
  /** A public, non-relayed address of ours has been confirmed. */
  publiclyReachable: boolean
  /** Connected peers, then members that are not connected. */
  peers: PeerDiagnosis[]
  /** Plain-language next steps, warnings first; empty when nothing looks wrong. */
  advice: Advice[]
}

/** Classifies a multiaddr: `/p2p-circuit` is relayed; then by its IP (a DNS name is `other`). */
export function classifyAddress(address: string | Multiaddr): AddressKind {
  const text = address.toString()
  if (text.includes('/p2p-circuit')) return 'relayed'
  const ma = parse(text)
  if (ma === undefined) return 'other'
  const config = netConfig(ma)
  if (config === undefined || (config.type !== 'ip4' && config.type !== 'ip6')) return 'other'
  if (isLoopback(ma)) return 'loopback'
  if (isPrivate(ma) || isLinkLocal(ma)) return 'lan'
  return 'public'
}

/**
 * The link to a peer from its open connections: none without one; else the best connection (not
 * relayed, without relay limits) decides: relayed, LAN (a loopback or private address) or direct.
 */
export function classifyLink(connections: ReadonlyArray<{ remote: string; limited: boolean }>): {
  link: LinkKind
  address: string | null
} {
  const relayed = (c: { remote: string; limited: boolean }) => c.limited || c.remote.includes('/p2p-circuit')
  const best = connections.find((c) => !relayed(c)) ?? connections[0]
  if (best === undefined) return { link: 'none', address: null }
  if (relayed(best)) return { link: 'relayed', address: best.remote }
  const kind = classifyAddress(best.remote)
  return { link: kind === 'lan' || kind === 'loopback' ? 'lan' : 'direct', address: best.remote }
}

/** Infers the NAT type from AutoNAT's confirmations and from the addresses peers saw us at. */
export function inferNat(
  input: Pick<DiagnosisInput, 'localOnly' | 'localIps' | 'addresses' | 'observations' | 'autoNAT'> &
    Partial<Pick<DiagnosisInput, 'upnp'>>,
): NatDiagnosis {
  const autoNAT = input.autoNAT
  const result = (
    type: NatType,
    method: NatMethod,
    evidence: string,
    behindNat: boolean | null,
    external: string[] = [],
    reporters = 0,
  ): NatDiagnosis => ({ type, method, evidence, behindNat, external: unique(external), reporters, autoNAT })

  if (input.localOnly) {
    return result('unknown', 'none', 'this node keeps to loopback (local-only): no NAT is in the way', null)
  }

  // AutoNAT v1 confirms an address once several peers in different networks dialed it back.
  const confirmed = input.addresses.filter(
    (a) => a.verified && a.source !== 'announce' && classifyAddress(a.address) === 'public',
  )
  if (confirmed.length > 0) {
    // An address UPnP mapped, as opposed to one guessed from what peers saw.
    const upnpExternal = new Set(input.upnp?.mappings.map((m) => m.external) ?? [])
    const mapped = confirmed.find((a) => {
      const at = endpoint(a.address)
      return at !== undefined && upnpExternal.has(`${at.ip}:${at.port}`)
    })
    const first = mapped ?? confirmed[0]!
    const by = autoNAT === null ? 'AutoNAT' : `AutoNAT (${autoNAT})`
    return result(
      'public',
      'autonat',
      mapped
        ? `${by}: peers dialed back ${first.address}, a UPnP port mapping on the router`
        : `${by}: peers dialed back ${first.address}`,
      confirmed.some((a) => a.source !== 'transport'),
      confirmed.map((a) => a.address),
    )
  }

  const own = new Set(input.localIps.map(normalizeIp))
  const usable = latestPerPeer(input.observations).filter((o) => {
    if (o.observed.includes('/p2p-circuit') || o.remote.includes('/p2p-circuit')) return false
    const at = endpoint(o.observed)
    return at !== undefined && !isLoopbackIp(at.ip)
  })
  const translated = usable.filter((o) => !own.has(endpoint(o.observed)!.ip))
  const untranslated = usable.filter((o) => own.has(endpoint(o.observed)!.ip))
  const externalOf = (list: AddressObservation[]) => list.map((o) => o.observed)
  const wait = autoNAT === null ? 'AutoNAT is off' : 'AutoNAT has not confirmed it yet'

  // A peer that opened a connection to a translated address of ours got through the NAT.
  const forwarded = translated.filter(
    (o) => o.direction === 'inbound' && classifyAddress(o.observed) === 'public',
  )
  if (forwarded.length > 0) {
    return result(
      'public',
      'inbound-dials',
      `${count(forwarded.length, 'peer')} dialed this node at ${forwarded[0]!.observed}, through the router (a port forward or UPnP mapping); ${wait}`,
      true,
      externalOf(forwarded),
      forwarded.length,
    )
  }

  const ownPublic = untranslated.filter((o) => classifyAddress(o.observed) === 'public')
  if (ownPublic.length > 0 && translated.length === 0) {
    return result(
      'public',
      'own-address',
      `${count(ownPublic.length, 'peer')} see${ownPublic.length === 1 ? 's' : ''} this node at its own address ${ownPublic[0]!.observed} (no NAT in between); ${wait}`,
      false,
      externalOf(ownPublic),
      ownPublic.length,
    )
  }

  if (translated.length === 0) {
    if (usable.length === 0) {
      return result(
        'unknown',
        'none',
        'no peer outside this machine has told us our address yet (each connection reports it)',
        null,
      )
    }
    return result(
      'unknown',
      'none',
      `the ${count(usable.length, 'peer')} that told us our address ${usable.length === 1 ? 'is' : 'are'} on this network and see${usable.length === 1 ? 's' : ''} it untranslated; a NAT toward the internet shows only to a peer outside`,
      false,
      [],
      usable.length,
    )
  }

  // Behind a NAT: how does it map our sockets? Only connections we opened tell (inbound ones
  // arrive on the listen socket through whatever forward exists).
  const outbound = translated.filter((o) => o.direction === 'outbound')
  const external = externalOf(translated)
  const seenAs = endpoint(translated[0]!.observed)!.ip

  const bySocket = new Map<string, AddressObservation[]>()
  for (const o of outbound) {
    if (o.local === undefined) continue
    bySocket.set(o.local, [...(bySocket.get(o.local) ?? []), o])
  }
  const shared = [...bySocket.entries()].filter(([, list]) => list.length >= 2)
  if (shared.length > 0) {
    const split = shared.find(([, list]) => unique(list.map((o) => o.observed)).length > 1)
    if (split !== undefined) {
      const [socket, list] = split
      return result(
        'address-and-port-dependent',
        'same-socket',
        `${count(list.length, 'peer')} saw the one local socket ${socket} as ${unique(list.map((o) => o.observed)).join(', ')}: a new mapping per destination (symmetric NAT)`,
        true,
        external,
        list.length,
      )
    }
    const [socket, list] = shared[0]!
    return result(
      'endpoint-independent',
      'same-socket',
      `${count(list.length, 'peer')} saw the one local socket ${socket} as ${list[0]!.observed}: one mapping for every destination`,
      true,
      external,
      list.length,
    )
  }

  // TCP opens every connection from its own local port, so one socket is never seen twice: compare
  // each connection's local port with the port the peer saw instead.
  const compared = outbound.filter((o) => o.local !== undefined && endpoint(o.local) !== undefined)
  if (compared.length < 2) {
    return result(
      'unknown',
      'none',
      `behind a NAT (peers see ${seenAs}), but fewer than two peers outside have told us our address on a connection we opened with a known local port; two are needed to tell how the NAT maps ports`,
      true,
      external,
      compared.length,
    )
  }
  const kept = compared.filter((o) => endpoint(o.observed)!.port === endpoint(o.local!)!.port)
  const example = compared.find((o) => !kept.includes(o)) ?? compared[0]!
  if (kept.length === compared.length) {
    return result(
      'endpoint-independent',
      'port-preservation',
      `${count(compared.length, 'peer')} saw each of our connections on its own local port behind ${seenAs}: the NAT keeps ports, so one mapping serves every destination (hole punching can work)`,
      true,
      external,
      compared.length,
    )
  }
  if (kept.length === 0) {
    return result(
      'address-and-port-dependent',
      'port-preservation',
      `the NAT at ${seenAs} gave each of ${count(compared.length, 'connection')} a new port (local ${endpoint(example.local!)!.port} seen as ${endpoint(example.observed)!.port}): it maps per destination (symmetric NAT), so hole punching will not work`,
      true,
      external,
      compared.length,
    )
  }
  return result(
    'unknown',
    'none',
    `behind a NAT (peers see ${seenAs}) that kept the local port on ${kept.length} of ${count(compared.length, 'connection')}: its mapping behaviour is not clear yet`,
    true,
    external,
    compared.length,
  )
}

/** The report, with advice, from plain data. */
export function diagnose(input: DiagnosisInput): Diagnosis {
  const sourceOf = new Map(input.addresses.map((a) => [stripPeer(a.address), a]))
  const classified = (address: string): ClassifiedAddress => {
    const record = sourceOf.get(stripPeer(address))
    return {
      address,
      kind: classifyAddress(address),
      source: record?.source ?? null,
      verified: record?.verified ?? classifyAddress(address) !== 'public',
    }
  }
  const relays = new Set(input.relays)
  const peers = input.peers.map((peer): PeerDiagnosis => {
    const { link, address } = classifyLink(peer.connections)
    return {
      nodeId: peer.nodeId,
      link,
      address,
      rttMs: peer.rttMs,
      error: peer.error,
      member: peer.member,
      relay: relays.has(peer.nodeId),
      connections: peer.connections.length,
    }
  })
  const report: Diagnosis = {
    at: input.at ?? new Date().toISOString(),
    nodeId: input.nodeId,
    listen: input.addresses.filter((a) => a.source === 'transport').map((a) => classified(a.address)),
    announced: input.announced.map(classified),
    nat: inferNat(input),
    upnp: input.upnp,
    relays: { configured: [...input.relays], reserved: [...input.reservedRelays] },
    publiclyReachable: input.publiclyReachable,
    peers,
    advice: [],
  }
  report.advice = advise(report, input)
  return report
}

/** The next steps for a report, warnings first. */
function advise(report: Diagnosis, input: Pick<DiagnosisInput, 'localOnly' | 'pingTimeoutMs'>): Advice[] {
  const advice: Advice[] = []
  const add = (code: AdviceCode, severity: Advice['severity'], message: string) =>
    advice.push({ code, severity, message })
  const connected = report.peers.filter((p) => p.link !== 'none')
  const others = connected.filter((p) => !p.relay)
  const absent = report.peers.filter((p) => p.link === 'none' && p.member)
  const { nat, relays, upnp } = report
  const reserved = relays.reserved.length > 0
  const reachable = report.publiclyReachable || nat.type === 'public'

  if (input.localOnly) {
    add(
      'local-only',
      'info',
      'this node keeps to 127.0.0.1 (--local-only): only agents on this machine can reach it',
    )
  }
  if (connected.length === 0) {
    add(
      'no-peers',
      'warning',
      input.localOnly
        ? 'no peers: start the other agents on this machine with --local-only too, and give them this node as --bootstrap'
        : "no peers: check that the pool's members share a LAN (mDNS and beacons find them there) or a bootstrap node (`mesh start --bootstrap <addr>`)",
    )
  }
  if (absent.length > 0) {
    add(
      'members-unreachable',
      'warning',
      `${count(absent.length, 'member')} of this node's rings and pools ${absent.length === 1 ? 'is' : 'are'} not connected (${absent
        .slice(0, 3)
        .map((p) => short(p.nodeId))
        .join(', ')}${absent.length > 3 ? ', …' : ''}): offline, or behind a NAT this node cannot cross; ${
        reserved
          ? 'give them the relay this node holds a reservation on (`mesh start --relay <addr>`)'
          : 'a relay both can reach connects them (`mesh start --relay <addr>`)'
      }`,
    )
  }
  if (!input.localOnly && !reachable && !reserved) {
    if (nat.type === 'address-and-port-dependent') {
      add(
        'symmetric-nat-no-relay',
        'warning',
        'symmetric NAT and no relay reservation: members behind another NAT cannot reach this node; add a relay (`mesh start --relay <addr>`) or enable UPnP on your router (and `mesh start --upnp`)',
      )
    } else if (nat.behindNat === true) {
      add(
        'nat-no-relay',
        'warning',
        'behind a NAT and no relay reservation: members outside this network cannot dial this node; add a relay (`mesh start --relay <addr>`), through which hole punching can then upgrade to a direct link',
      )
    }
  }
  if (relays.configured.length > 0 && !reserved && !reachable && !input.localOnly) {
    add(
      'relay-not-reserved',
      'warning',
      `no reservation on the ${count(relays.configured.length, 'relay')} given (${relays.configured.map(short).join(', ')}): check that the relay runs (mesh-relay) and that this node can reach it`,
    )
  }
  const relayed = others.filter((p) => p.link === 'relayed')
  if (others.length > 0 && relayed.length === others.length) {
    const rtt = median(relayed.map((p) => p.rttMs).filter((ms): ms is number => ms !== null))
    const cost = rtt === undefined ? '' : `: expect ~${Math.round(rtt)} ms per hop`
    add(
      'all-relayed',
      'warning',
      `${others.length === 1 ? 'the one peer is' : `all ${others.length} peers are`} reached through a relay${cost}; jobs split by layers (pipeline) suffer less than tensor parallel, which crosses the link at every layer${nat.type === 'endpoint-independent' ? '; hole punching (DCUtR) should upgrade them to direct links' : ''}`,
    )
  } else if (relayed.length > 0) {
    add(
      'some-relayed',
      'info',
      `${count(relayed.length, 'peer')} of ${others.length} ${relayed.length === 1 ? 'is' : 'are'} reached through a relay (${relayed
        .slice(0, 3)
        .map((p) => short(p.nodeId))
        .join(', ')}): place pipeline stages so that relayed hops are few`,
    )
  }
  const silent = connected.filter((p) => p.rttMs === null && p.error !== null)
  if (silent.length > 0) {
    add(
      'ping-failed',
      'warning',
      `${count(silent.length, 'connected peer')} did not answer a ping${input.pingTimeoutMs === undefined ? '' : ` within ${input.pingTimeoutMs} ms`} (${silent
        .slice(0, 3)
        .map((p) => short(p.nodeId))
        .join(', ')}): the link is congested or the connection is half dead`,
    )
  }
  if (upnp.enabled) {
    if (upnp.externalIp !== null && classifyAddress(`/ip4/${upnp.externalIp}`) !== 'public') {
      add(
        'upnp-double-nat',
        'warning',
        `the router's external address ${upnp.externalIp} is private: this node is behind two NATs, which UPnP cannot open; use a relay (\`mesh start --relay <addr>\`)`,
      )
    } else if (upnp.gateways.length === 0 && upnp.searches > 0) {
      add(
        'upnp-no-gateway',
        'info',
        'UPnP is on but no gateway answered: enable UPnP on your router, or forward a port to this node by hand',
      )
    } else if (upnp.gateways.length > 0 && upnp.mappings.length === 0 && upnp.error !== null) {
      add(
        'upnp-failed',
        'warning',
        `UPnP found ${upnp.gateways.join(', ')} but mapped no port: ${upnp.error}`,
      )
    }
  }
  return [...advice.filter((a) => a.severity === 'warning'), ...advice.filter((a) => a.severity === 'info')]
}

/** What UPnP found and did, in a few words: `off`, `no gateway answered`, `gateway …; mapped tcp … → …`. */
export function describeUpnp(upnp: UpnpStatus): string {
  if (!upnp.enabled) return 'off'
  const parts: string[] = []
  if (upnp.gateways.length === 0)
    parts.push(upnp.searches === 0 ? 'searching for a gateway' : 'no gateway answered')
  else parts.push(`gateway ${upnp.gateways.join(', ')}`)
  if (upnp.externalIp !== null) parts.push(`external address ${upnp.externalIp}`)
  for (const m of upnp.mappings) parts.push(`mapped ${m.protocol} ${m.internal} → ${m.external}`)
  if (upnp.error !== null && upnp.mappings.length === 0) parts.push(`last error: ${upnp.error}`)
  return parts.join('; ')
}

export interface CollectDiagnosisOptions {
  signal?: AbortSignal
  /** Budget of each peer's ping. Default 3000 ms. */
  pingTimeoutMs?: number
  /** `false` measures nothing: RTTs come from libp2p's connection monitor when it has one. */
  ping?: boolean
  /** Ring and pool members this node should reach; those not connected are listed with link `none`. */
  members?: Iterable<string>
  /** At most this many peers are listed and pinged (members first). Default 64. */
  maxPeers?: number
}

export const DEFAULT_DOCTOR_PING_TIMEOUT_MS = 3_000
const DEFAULT_DOCTOR_MAX_PEERS = 64

/**
 * Diagnoses a running node: its addresses, NAT type, UPnP, relay reservations, and each connected
 * peer and known member with its link type and a round trip measured now (pings run in parallel,
 * each within `pingTimeoutMs`).
 */
export async function collectDiagnosis<T extends ServiceMap>(
  node: MeshNode<T>,
  options: CollectDiagnosisOptions = {},
): Promise<Diagnosis> {
  const pingTimeoutMs = options.pingTimeoutMs ?? DEFAULT_DOCTOR_PING_TIMEOUT_MS
  const maxPeers = options.maxPeers ?? DEFAULT_DOCTOR_MAX_PEERS
  const { libp2p } = node
  const monitor = libp2p.services.natMonitor
  const members = new Set(options.members ?? [])
  members.delete(node.nodeId)

  const open = new Map<string, Array<{ remote: string; limited: boolean; rtt: number | undefined }>>()
  for (const connection of libp2p.getConnections()) {
    if (connection.status !== 'open') continue
    const nodeId = connection.remotePeer.toString()
    open.set(nodeId, [
      ...(open.get(nodeId) ?? []),
      {
        remote: connection.remoteAddr.toString(),
        limited: connection.limits !== undefined || !connection.direct,
        rtt: connection.rtt,
      },
    ])
  }
  const connected = [...open.keys()].sort((a, b) => Number(members.has(b)) - Number(members.has(a)))
  const listed = [...connected, ...[...members].filter((id) => !open.has(id)).sort()].slice(0, maxPeers)

  const peers = await Promise.all(
    listed.map(async (nodeId): Promise<PeerInput> => {
      const connections = (open.get(nodeId) ?? []).map(({ remote, limited }) => ({ remote, limited }))
      const peer = { nodeId, connections, member: members.has(nodeId) }
      if (connections.length === 0) return { ...peer, rttMs: null, error: 'not connected' }
      if (options.ping === false) {
        const rtt = open.get(nodeId)?.find((c) => typeof c.rtt === 'number')?.rtt
        return { ...peer, rttMs: rtt ?? null, error: null }
      }
      try {
        const rttMs = await node.ping(nodeId, {
          timeoutMs: pingTimeoutMs,
          runOnLimitedConnection: true,
          ...(options.signal ? { signal: options.signal } : {}),
        })
        return { ...peer, rttMs, error: null }
      } catch (err) {
        if (options.signal?.aborted === true) throw err
        return { ...peer, rttMs: null, error: (err as Error).message }
      }
    }),
  )

  const addresses = monitor.addresses()
  const connectivity = node.connectivity()
  return diagnose({
    nodeId: node.nodeId,
    localOnly: node.options.localOnly,
    localIps: localIps(addresses),
    addresses,
    announced: node.multiaddrs().map(String),
    observations: monitor.observations(),
    autoNAT: libp2p.getProtocols().find((p) => p.includes('/autonat/')) ?? null,
    upnp: monitor.upnp(),
    relays: node.options.relays.map(
      (addr) => addr.getComponents().findLast((c) => c.name === 'p2p')?.value ?? addr.toString(),
    ),
    reservedRelays: connectivity.reservedRelays,
    publiclyReachable: connectivity.publiclyReachable,
    peers,
    pingTimeoutMs,
  })
}

/** This machine's IPs: every interface's, and the ones libp2p listens on. */
function localIps(addresses: AddressRecord[]): string[] {
  const ips = new Set<string>()
  for (const list of Object.values(networkInterfaces())) {
    for (const entry of list ?? []) ips.add(entry.address)
  }
  for (const a of addresses) {
    if (a.source !== 'transport') continue
    const at = endpoint(a.address)
    if (at !== undefined) ips.add(at.ip)
  }
  return [...ips]
}

function parse(text: string): Multiaddr | undefined {
  try {
    return multiaddr(text)
  } catch {
    return undefined
  }
}

function netConfig(ma: Multiaddr): ReturnType<typeof getNetConfig> | undefined {
  try {
    return getNetConfig(ma)
  } catch {
    return undefined
  }
}

/** The IP and port of a multiaddr that starts with ip4/ip6 and a tcp/udp port. */
function endpoint(address: string): { ip: string; port: number } | undefined {
  const ma = parse(address)
  const config = ma === undefined ? undefined : netConfig(ma)
  if (config === undefined || (config.type !== 'ip4' && config.type !== 'ip6') || config.port === undefined)
    return undefined
  return { ip: normalizeIp(config.host), port: config.port }
}

function normalizeIp(ip: string): string {
  return ip.replace(/^::ffff:/i, '').toLowerCase()
}

function isLoopbackIp(ip: string): boolean {
  return ip === '::1' || ip.startsWith('127.')
}

function stripPeer(address: string): string {
  return address.replace(/\/p2p\/[^/]+$/, '')
}

function latestPerPeer(observations: AddressObservation[]): AddressObservation[] {
  const latest = new Map<string, AddressObservation>()
  for (const o of observations) {
    const seen = latest.get(o.peer)
    if (seen === undefined || seen.at <= o.at) latest.set(o.peer, o)
  }
  return [...latest.values()]
}

function unique(values: string[]): string[] {
  return [...new Set(values)]
}

function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`
}

function median(values: number[]): number | undefined {
  if (values.length === 0) return undefined
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** `12D3KooW…abcd`: enough of a node id to tell peers apart in a sentence. */
function short(nodeId: string): string {
  return nodeId.length > 16 ? `${nodeId.slice(0, 8)}…${nodeId.slice(-4)}` : nodeId
}
