import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "BootstrapUnreachableError",
      "DEBUG_LEVELS",
      "DEBUG_SUBSYSTEMS",
      "DataLimitExceededError",
      "FabstirSDK",
      "JobFailedError",
      "JobProtocolError",
      "MAX_PERF_BYTES",
      "NoNodesFoundError",
      "NotConnectedError",
      "PERF_PROTOCOL",
      "POOL_RING_PROTOCOL",
      "PeerRefusedError",
      "PerfError",
      "PoolCertificateError",
      "PoolRequestError",
      "RequestTimeoutError",
      "SDKConfigError",
      "parseSDKConfig",
      "perfService",
      "poolRendezvousKey",
    ]
  `)
})
