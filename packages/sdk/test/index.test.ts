import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "BootstrapUnreachableError",
      "DEBUG_LEVELS",
      "DEBUG_SUBSYSTEMS",
      "DataLimitExceededError",
      "FabstirSDK",
      "InvalidRequestError",
      "JobFailedError",
      "JobProtocolError",
      "MAX_PERF_BYTES",
      "NoNodesFoundError",
      "NotConnectedError",
      "PERF_PROTOCOL",
      "PeerRefusedError",
      "PerfError",
      "PoolCertificateError",
      "PoolRequestError",
      "RequestTimeoutError",
      "SDKConfigError",
      "chat",
      "connect",
      "createSDKClient",
      "disconnect",
      "discoverNodes",
      "getP2PMetrics",
      "getSystemHealthReport",
      "parseSDKConfig",
      "perfService",
      "streamChat",
      "streamInference",
      "submitJob",
      "testNetworkPerformance",
      "testP2PConnectivity",
    ]
  `)
})
