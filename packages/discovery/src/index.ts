/**
 * @packageDocumentation
 * How Meshnet nodes find each other: LAN beacons (signed UDP multicast datagrams on
 * 239.192.0.1:42424 that carry pool joins and presence), the libp2p node factory,
 * `httpPeerDiscovery` (a libp2p peer-discovery module that polls an HTTP endpoint for peers), and
 * `collectDiagnosis`/`diagnose` (`mesh doctor`: addresses, NAT type, relays and links, with advice).
 */

export type { BeaconEnvelope, DecodeBeaconOptions, EncodeBeaconOptions } from './beacon/envelope.ts'
export {
  BEACON_DOMAIN,
  BEACON_TYPE_PATTERN,
  BEACON_VERSION,
  decodeBeacon,
  encodeBeacon,
  MAX_BEACON_BYTES,
} from './beacon/envelope.ts'
export type { BeaconDropReason } from './beacon/errors.ts'
export {
  BEACON_DROP_REASONS,
  BeaconDropError,
  BeaconSocketError,
  BeaconTooLargeError,
} from './beacon/errors.ts'
export type {
  BeaconHandler,
  BeaconMessage,
  LanBeacons,
  LanBeaconsInit,
  LanBeaconsStats,
  SendBeaconOptions,
} from './beacon/lan-beacons.ts'
export { DEFAULT_BEACON_GROUP, DEFAULT_BEACON_PORT, lanBeacons } from './beacon/lan-beacons.ts'
export type { ConnectivityStatus } from './node/connectivity.ts'
export {
  DEFAULT_TCP_PORT,
  DEFAULT_WS_PORT,
} from './node/defaults.ts'
export { classifyAddress, classifyLink, describeUpnp, diagnose, inferNat } from './node/doctor.ts'
export type { CollectDiagnosisOptions } from './node/doctor-collect.ts'
export { collectDiagnosis, DEFAULT_DOCTOR_PING_TIMEOUT_MS } from './node/doctor-collect.ts'
export type {
  AddressKind,
  AddressObservation,
  AddressRecord,
  AddressSource,
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
  PeerInput,
  UpnpStatus,
} from './node/doctor-types.ts'
export {
  DialError,
  NodeStartError,
  PeerTimeoutError,
  PerfError,
} from './node/errors.ts'
export type {
  HttpDiscoveryDropReason,
  HttpPeerDiscovery,
  HttpPeerDiscoveryComponents,
  HttpPeerDiscoveryInit,
  HttpPeerDiscoveryStats,
} from './node/http-discovery.ts'
export {
  DEFAULT_HTTP_DISCOVERY_INTERVAL_MS,
  DEFAULT_HTTP_DISCOVERY_TIMEOUT_MS,
  httpPeerDiscovery,
  MAX_HTTP_DISCOVERY_PEERS,
  MAX_HTTP_DISCOVERY_RESPONSE_BYTES,
} from './node/http-discovery.ts'
export { createMeshNode } from './node/mesh-node.ts'
export type {
  DialProtocolOptions,
  HandleRequestsOptions,
  MeshNode,
  MeshServices,
  PeerTarget,
  RequestContext,
  RequestDrops,
  RequestHandler,
  RequestOptions,
} from './node/mesh-node-types.ts'
export type { NatMonitor } from './node/nat-monitor.ts'
export type { MeshNodeOptions, ResolvedMeshNodeOptions } from './node/options.ts'
export { resolveMeshNodeOptions } from './node/options.ts'
export type { Perf, PerfComponents, PerfOptions, PerfResult, PerfServiceInit } from './node/perf.ts'
export { MAX_PERF_BYTES, PERF_PROTOCOL, perfService } from './node/perf.ts'
