import { MESHNET_DHT_PROTOCOL } from '@meshnet/protocols'

/**
 * Every default of the libp2p node in one place. docs/p2p-configuration.md explains each one and
 * docs/LIMITS.md lists the limits; change them here and there together.
 */

/** TCP port a node listens on unless told otherwise; below the Linux ephemeral range (32768+). */
export const DEFAULT_TCP_PORT = 4610
/** WebSocket port (plain `ws`; put TLS in front with a reverse proxy when needed). */
export const DEFAULT_WS_PORT = 4611

/** Listen on every interface, IPv4 and IPv6, TCP and WebSocket. */
export const DEFAULT_LISTEN: readonly string[] = [
  `/ip4/0.0.0.0/tcp/${DEFAULT_TCP_PORT}`,
  `/ip6/::/tcp/${DEFAULT_TCP_PORT}`,
  `/ip4/0.0.0.0/tcp/${DEFAULT_WS_PORT}/ws`,
]
/** `localOnly`: loopback, ports chosen by the OS. */
export const DEFAULT_LOCAL_LISTEN: readonly string[] = ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/tcp/0/ws']

/** Kademlia protocol id: a Meshnet-only DHT, never merged with the public IPFS DHT. */
export const DEFAULT_DHT_PROTOCOL = MESHNET_DHT_PROTOCOL
/** Meshnet is LAN-first: every node answers DHT queries unless it is told to be a client. */
export const DEFAULT_DHT_MODE = 'server'
/** Addresses handed out through the DHT: everything but loopback (LAN and public). */
export const DEFAULT_DHT_ADDRESSES = 'routable'

/** mDNS service name; our own so that we neither find nor answer IPFS nodes. */
export const DEFAULT_MDNS_SERVICE_TAG = '_meshnet._udp.local'
export const DEFAULT_MDNS_INTERVAL_MS = 10_000

/** Wait this long after start before dialing bootstrap peers (lets listeners settle). */
export const DEFAULT_BOOTSTRAP_DELAY_MS = 1_000

export const DEFAULT_RELAY_RESERVATIONS = 'auto'
/** `auto` mode: how long AutoNAT/UPnP get to find a public address before we reserve on relays. */
export const DEFAULT_RELAY_AUTO_DELAY_MS = 15_000
/** How often the node checks its relay reservations and bootstrap connections. */
export const DEFAULT_MAINTENANCE_INTERVAL_MS = 30_000
/** Back-off after a failed reservation or bootstrap dial: doubles from the interval to this cap. */
export const DEFAULT_MAINTENANCE_MAX_BACKOFF_MS = 600_000

/** Relay server (`mesh-relay`): peers that may hold a reservation at once. */
export const DEFAULT_RELAY_MAX_RESERVATIONS = 128
/** Relay server: a reservation lasts this long unless refreshed (clients refresh before expiry). */
export const DEFAULT_RELAY_RESERVATION_TTL_MS = 2 * 60 * 60_000
/** Relay server: a relayed connection is closed after this long. */
export const DEFAULT_RELAY_CONNECTION_DURATION_MS = 10 * 60_000
/** Relay server: a relayed connection is closed after this many bytes, both directions together. */
export const DEFAULT_RELAY_CONNECTION_DATA_BYTES = 64 * 1024 * 1024
/** Relay server: how long a relay waits for the target to accept a relayed connection. */
export const DEFAULT_RELAY_HOP_TIMEOUT_MS = 30_000

export const DEFAULT_MAX_CONNECTIONS = 200
/** Connections still in the noise/yamux handshake at once. */
export const DEFAULT_MAX_INCOMING_PENDING_CONNECTIONS = 10
/** Inbound connections per second from one IP before further ones are refused. */
export const DEFAULT_INBOUND_CONNECTIONS_PER_SECOND = 5
/**
 * With `localOnly` every peer dials from 127.0.0.1, so a per-IP limit is a limit on the whole
 * machine: a few dozen agents starting together would refuse each other. These apply there instead.
 */
export const LOCAL_INBOUND_CONNECTIONS_PER_SECOND = 200
export const LOCAL_MAX_INCOMING_PENDING_CONNECTIONS = 64
export const DEFAULT_MAX_PARALLEL_DIALS = 50
/** Whole dial budget: DNS, socket, noise and yamux. */
export const DEFAULT_DIAL_TIMEOUT_MS = 10_000
/** Budget of `dialProtocol`/`request` when the caller gives none: dial plus protocol negotiation. */
export const DEFAULT_PROTOCOL_TIMEOUT_MS = 10_000

/** Yamux: streams the remote may open on one connection. */
export const DEFAULT_MAX_STREAMS_PER_CONNECTION = 1_000
/** Unread bytes buffered per stream before it is reset. */
export const DEFAULT_STREAM_READ_BUFFER_BYTES = 4 * 1024 * 1024

/** Peer store: addresses of a peer are forgotten after this long without confirmation. */
export const DEFAULT_PEER_ADDRESS_TTL_MS = 60 * 60_000
