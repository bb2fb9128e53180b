import { generateIdentity } from '@meshnet/identity'
import { describe, expect, it } from 'vitest'
import { parseSDKConfig } from '../src/config.ts'
import { meshNodeOptionsOf } from '../src/node-options.ts'
import { FabstirSDK } from '../src/sdk.ts'

const peer = generateIdentity().nodeId
const bootstrap = `/ip4/127.0.0.1/tcp/4610/p2p/${peer}`

/** The SDKConfigError message `new FabstirSDK(config)` throws. */
function refusal(config: unknown): string {
  try {
    new FabstirSDK(config as ConstructorParameters<typeof FabstirSDK>[0])
  } catch (err) {
    expect(err).toMatchObject({ name: 'SDKConfigError', code: 'ERR_SDK_CONFIG' })
    return (err as Error).message
  }
  throw new Error('the configuration was accepted')
}

const dev = (p2pConfig: Record<string, unknown>) => ({ mode: 'development', p2pConfig })

describe('SDK configuration', () => {
  it('fills in the documented defaults', () => {
    const { p2pConfig } = parseSDKConfig({ mode: 'production', p2pConfig: { bootstrapNodes: [bootstrap] } })
    expect(p2pConfig).toMatchObject({
      enableDHT: true,
      dialTimeout: 30_000,
      requestTimeout: 60_000,
      maxRetries: 3,
      retryDelay: 1_000,
      dhtOptions: { clientMode: true, kBucketSize: 20, refreshInterval: 900_000 },
      mdnsOptions: { interval: 10_000, serviceTag: '_meshnet._udp.local' },
      connectionManager: { maxConnections: 100, minConnections: 1, autoDial: true, autoDialInterval: 10_000 },
      transports: { tcp: { enabled: true }, websocket: { enabled: true }, webrtc: { enabled: false } },
      metrics: { enabled: true, movingAverageInterval: 60_000 },
      security: { blocklist: [], enableEncryption: true },
      keepAlive: { enabled: true, interval: 30_000, timeout: 10_000 },
      discoveryOptions: { interval: 30_000, timeout: 10_000, maxPeers: 50, forceRefresh: false },
    })
  })

  it('names the field path and what is wrong', () => {
    expect(refusal(dev({ dhtOptions: { kBucketSize: 0 } }))).toMatch(
      /^p2pConfig\.dhtOptions\.kBucketSize: must be at least 1; see docs\/p2p-configuration\.md/,
    )
    expect(refusal(dev({ dialTimeout: 'slow' }))).toMatch(/^p2pConfig\.dialTimeout: must be a number/)
    expect(refusal(dev({ listenAddresses: ['/ip4/127.0.0.1/tcp/0', 'nonsense'] }))).toMatch(
      /^p2pConfig\.listenAddresses\[1\]: "nonsense" is not a multiaddr/,
    )
    expect(refusal(dev({ bootstrapNodes: ['/ip4/127.0.0.1/tcp/4001'] }))).toMatch(
      /^p2pConfig\.bootstrapNodes\[0\]: .* must end in \/p2p\/<node id>/,
    )
    expect(refusal(dev({ enableDTH: true }))).toMatch(
      /^p2pConfig\.enableDTH: is not an option \(misspelt\?\)/,
    )
    expect(refusal({ mode: 'staging' })).toMatch(/^mode: must be one of "production", "development"/)
  })

  it('needs a bootstrap node in production mode', () => {
    expect(refusal({ mode: 'production', p2pConfig: {} })).toMatch(
      /^p2pConfig\.bootstrapNodes: production mode needs at least one bootstrap node/,
    )
    expect(() => new FabstirSDK({ mode: 'development', p2pConfig: { localOnly: true } })).not.toThrow()
  })

  it('refuses to turn encryption off, and says why', () => {
    expect(refusal(dev({ security: { enableEncryption: false } }))).toMatch(
      /^p2pConfig\.security\.enableEncryption: cannot be false: every Meshnet connection is encrypted and authenticated with noise/,
    )
  })

  it('refuses transports Node or the mesh cannot use, with the reason', () => {
    expect(refusal(dev({ transports: { webrtc: { enabled: true } } }))).toMatch(
      /^p2pConfig\.transports\.webrtc\.enabled: cannot be enabled: Meshnet agents listen on TCP and WebSocket only.*node-datachannel/,
    )
    expect(refusal(dev({ transports: { tcp: { enabled: false } } }))).toMatch(
      /^p2pConfig\.transports\.tcp\.enabled: cannot be disabled: TCP is the transport every Meshnet agent listens on/,
    )
    expect(
      refusal(
        dev({ transports: { websocket: { enabled: false } }, listenAddresses: ['/ip4/127.0.0.1/tcp/0/ws'] }),
      ),
    ).toMatch(
      /^p2pConfig\.listenAddresses\[0\]: is a WebSocket address but transports\.websocket\.enabled is false/,
    )
  })

  it("accepts the guide's libp2p 0.x options with the meaning they have here", () => {
    const { p2pConfig } = parseSDKConfig(
      dev({
        connectionManager: { maxEventLoopDelay: 150, pollInterval: 2000 },
        metrics: {
          enabled: true,
          computeThrottleMaxQueueSize: 1000,
          computeThrottleTimeout: 2000,
          movingAverageInterval: 60000,
          maxOldPeersRetention: 50,
        },
      }),
    )
    expect(p2pConfig.connectionManager).toMatchObject({ maxEventLoopDelay: 150, pollInterval: 2000 })
    expect(parseSDKConfig(dev({})).p2pConfig.connectionManager).toMatchObject({ pollInterval: 2000 })
    expect(parseSDKConfig(dev({})).p2pConfig.connectionManager.maxEventLoopDelay).toBeUndefined()
    expect(refusal(dev({ connectionManager: { pollInterval: 10 } }))).toMatch(
      /^p2pConfig\.connectionManager\.pollInterval: must be at least 100/,
    )
    expect(refusal(dev({ metrics: { computeThrottleTimeout: -1 } }))).toMatch(
      /^p2pConfig\.metrics\.computeThrottleTimeout: must be at least 0/,
    )
  })

  it('maps a bare mDNS service tag to a service name', () => {
    const tag = (serviceTag: string) =>
      parseSDKConfig(dev({ mdnsOptions: { serviceTag } })).p2pConfig.mdnsOptions.serviceTag
    expect(tag('fabstir')).toBe('_fabstir._udp.local')
    expect(tag('_Fabstir')).toBe('_fabstir._udp.local')
    expect(tag('_meshnet._udp.local')).toBe('_meshnet._udp.local')
    expect(tag('_ipp._tcp.local')).toBe('_ipp._tcp.local')
    expect(refusal(dev({ mdnsOptions: { serviceTag: 'fab stir' } }))).toMatch(
      /^p2pConfig\.mdnsOptions\.serviceTag: must be a name like "fabstir" \(used as _fabstir\._udp\.local\)/,
    )
  })

  it('takes HTTP endpoint discovery entries and hands them to the node', () => {
    const config = parseSDKConfig(
      dev({
        peerDiscovery: [
          {
            tag: 'custom-discovery',
            enabled: true,
            options: { endpoint: 'https://peers.example.org/v1', interval: 30000 },
          },
          { tag: 'off', enabled: false, options: { endpoint: 'https://peers.example.org/v2' } },
        ],
      }),
    )
    expect(meshNodeOptionsOf(config, generateIdentity()).httpDiscovery).toEqual([
      {
        endpoint: 'https://peers.example.org/v1',
        intervalMs: 30_000,
        timeoutMs: 10_000,
        tag: 'custom-discovery',
      },
    ])
    expect(
      refusal(dev({ peerDiscovery: [{ tag: 'x', options: { endpoint: 'ftp://peers.example.org' } }] })),
    ).toMatch(/^p2pConfig\.peerDiscovery\[0\]\.options\.endpoint: must be an http: or https: URL/)
    expect(
      refusal(
        dev({ peerDiscovery: [{ tag: 'x', options: { endpoint: 'https://a.example', intervall: 1 } }] }),
      ),
    ).toMatch(/^p2pConfig\.peerDiscovery\[0\]\.options\.intervall: is not an option \(misspelt\?\)/)
    expect(
      refusal(
        dev({ localOnly: true, peerDiscovery: [{ tag: 'x', options: { endpoint: 'https://a.example' } }] }),
      ),
    ).toMatch(
      /^p2pConfig\.peerDiscovery\[0\]\.options\.endpoint: https:\/\/a\.example is not on this machine/,
    )
  })

  it('lets logLevel win over verbose, and verbose alone mean trace', () => {
    const debug = (value: Record<string, unknown>) => parseSDKConfig(dev({ debug: value })).p2pConfig.debug
    expect(debug({ enabled: true, verbose: true, logLevel: 'debug' })).toMatchObject({
      verbose: true,
      logLevel: 'debug',
    })
    expect(debug({ verbose: true }).logLevel).toBe('trace')
    expect(debug({}).logLevel).toBe('debug')
  })

  it('keeps localOnly on this machine', () => {
    expect(refusal(dev({ localOnly: true, enableMDNS: true }))).toMatch(
      /^p2pConfig\.enableMDNS: cannot be true with localOnly/,
    )
    expect(refusal(dev({ localOnly: true, bootstrapNodes: [`/ip4/10.0.0.1/tcp/4610/p2p/${peer}`] }))).toMatch(
      /^p2pConfig\.bootstrapNodes\[0\]: .* is not a loopback address/,
    )
    expect(
      refusal({ mode: 'production', p2pConfig: { localOnly: true, bootstrapNodes: [bootstrap] } }),
    ).toMatch(/^p2pConfig\.localOnly: is for tests and demos/)
  })

  it('checks shapes of hooks, modules and protocols', () => {
    expect(refusal(dev({ peerDiscovery: ['custom'] }))).toMatch(
      /^p2pConfig\.peerDiscovery\[0\]: must be a libp2p peer-discovery factory/,
    )
    expect(refusal(dev({ peerDiscovery: [{ tag: 'custom', enabled: true }] }))).toMatch(
      /^p2pConfig\.peerDiscovery\[0\]\.options: must be an object/,
    )
    expect(refusal(dev({ protocols: [{ id: '/meshnet/job/1.0.0', handler: () => {} }] }))).toMatch(
      /^p2pConfig\.protocols\[0\]\.id: is reserved/,
    )
    expect(refusal(dev({ security: { authenticate: true } }))).toMatch(
      /^p2pConfig\.security\.authenticate: must be a function/,
    )
    expect(refusal(dev({ security: { blocklist: ['bad'] } }))).toMatch(
      /^p2pConfig\.security\.blocklist\[0\]: "bad" is not a node id/,
    )
    expect(refusal(dev({ debug: { subsystems: ['dns'] } }))).toMatch(
      /^p2pConfig\.debug\.subsystems\[0\]: must be one of "connection", "transport"/,
    )
    expect(refusal(dev({ keepAlive: { interval: 5_000, timeout: 5_000 } }))).toMatch(
      /^p2pConfig\.keepAlive\.timeout: must be shorter than keepAlive\.interval/,
    )
    expect(refusal({ mode: 'development', poolId: 'abc' })).toMatch(/^dataDir: is required with poolId/)
  })
})
