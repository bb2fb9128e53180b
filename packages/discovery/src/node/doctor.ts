import { getNetConfig, isLinkLocal, isLoopback, isPrivate } from '@libp2p/utils'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import type {
  AddressKind,
  AddressObservation,
  Advice,
  AdviceCode,
  ClassifiedAddress,
  Diagnosis,
  DiagnosisInput,
  LinkKind,
  NatDiagnosis,
  NatMethod,
  NatType,
  PeerDiagnosis,
  UpnpStatus,
} from './doctor-types.ts'

// `mesh doctor`: what a user needs to know when members cannot reach each other. `diagnose` is pure
// (plain data in, a report with advice out); `collectDiagnosis` (doctor-collect.ts) reads that data
// from a running MeshNode, and doctor-types.ts declares it.

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
export function endpoint(address: string): { ip: string; port: number } | undefined {
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
