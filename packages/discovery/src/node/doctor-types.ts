// The data `mesh doctor` works on: what is collected from a node, and the report made of it.

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
