import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('./index.ts')).sort()).toMatchInlineSnapshot(`
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
      "DEFAULT_MAX_FRAME_BYTES",
      "DEFAULT_TCP_PORT",
      "DEFAULT_WS_PORT",
      "DialError",
      "FrameTooLargeError",
      "MAX_BEACON_BYTES",
      "MAX_FRAME_BYTES_LIMIT",
      "MAX_PERF_BYTES",
      "MESHNET_DHT_PROTOCOL",
      "NodeStartError",
      "PERF_PROTOCOL",
      "PeerTimeoutError",
      "PerfError",
      "StreamEndedError",
      "createMeshNode",
      "decodeBeacon",
      "encodeBeacon",
      "frameStream",
      "isMeshnetProtocol",
      "lanBeacons",
      "meshnetProtocol",
      "perfService",
      "readFrame",
      "resolveMeshNodeOptions",
      "writeFrame",
    ]
  `)
})
