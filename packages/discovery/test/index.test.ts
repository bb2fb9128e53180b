import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "BEACON_DOMAIN",
      "BEACON_DROP_REASONS",
      "BEACON_TYPE_PATTERN",
      "BEACON_VERSION",
      "BeaconDropError",
      "BeaconSocketError",
      "BeaconTooLargeError",
      "DEFAULT_BEACON_GROUP",
      "DEFAULT_BEACON_PORT",
      "DEFAULT_DOCTOR_PING_TIMEOUT_MS",
      "DEFAULT_HTTP_DISCOVERY_INTERVAL_MS",
      "DEFAULT_HTTP_DISCOVERY_TIMEOUT_MS",
      "DEFAULT_TCP_PORT",
      "DEFAULT_WS_PORT",
      "DialError",
      "MAX_BEACON_BYTES",
      "MAX_HTTP_DISCOVERY_PEERS",
      "MAX_HTTP_DISCOVERY_RESPONSE_BYTES",
      "MAX_PERF_BYTES",
      "NodeStartError",
      "PERF_PROTOCOL",
      "PeerTimeoutError",
      "PerfError",
      "classifyAddress",
      "classifyLink",
      "collectDiagnosis",
      "createMeshNode",
      "decodeBeacon",
      "describeUpnp",
      "diagnose",
      "encodeBeacon",
      "httpPeerDiscovery",
      "inferNat",
      "lanBeacons",
      "perfService",
      "resolveMeshNodeOptions",
    ]
  `)
})
