import type { ComponentLogger, Metrics } from '@libp2p/interface'
import { isMeshError } from '@meshnet/core'
import { type MeshNodeOptions, perfService, resolveMeshNodeOptions } from '@meshnet/discovery'
import { generateIdentity, type NodeIdentity } from '@meshnet/identity'
import type { ResolvedSDKConfig } from './config.ts'
import { SDKConfigError } from './errors.ts'

/**
 * Name of the i-th `p2pConfig.peerDiscovery` module among the node's services (factories only:
 * `{ tag, options: { endpoint } }` entries become the node option `httpDiscovery`).
 */
export const discoveryServiceName = (index: number) => `peerDiscovery${index}`

/** Where each `createMeshNode` option comes from in the SDK configuration. */
const FIELDS: Record<string, string> = {
  dataDir: 'dataDir',
  localOnly: 'p2pConfig.localOnly',
  listen: 'p2pConfig.listenAddresses',
  websockets: 'p2pConfig.transports.websocket.enabled',
  bootstrap: 'p2pConfig.bootstrapNodes',
  mdns: 'p2pConfig.enableMDNS',
  mdnsServiceTag: 'p2pConfig.mdnsOptions.serviceTag',
  mdnsIntervalMs: 'p2pConfig.mdnsOptions.interval',
  dhtMode: 'p2pConfig.dhtOptions.clientMode',
  dhtKBucketSize: 'p2pConfig.dhtOptions.kBucketSize',
  maxConnections: 'p2pConfig.connectionManager.maxConnections',
  dialTimeoutMs: 'p2pConfig.dialTimeout',
  allowPeers: 'p2pConfig.security.allowlist',
  denyPeers: 'p2pConfig.security.blocklist',
  services: 'p2pConfig.peerDiscovery',
  httpDiscovery: 'p2pConfig.peerDiscovery',
}

/**
 * The `createMeshNode` options of the SDK's node. The SDK is a client: OS-chosen ports (so that it
 * never collides with an agent on the same machine), a DHT client unless told otherwise.
 */
export function meshNodeOptionsOf(
  config: ResolvedSDKConfig,
  identity: NodeIdentity,
  extras: { metrics?: (components: never) => Metrics; componentLogger?: ComponentLogger } = {},
): MeshNodeOptions {
  const p2p = config.p2pConfig
  const services: Record<string, (components: never) => unknown> = { perf: perfService() }
  const httpDiscovery: NonNullable<MeshNodeOptions['httpDiscovery']> = []
  p2p.peerDiscovery.forEach((entry, index) => {
    if (typeof entry === 'function') services[discoveryServiceName(index)] = entry
    else if (entry.enabled) {
      httpDiscovery.push({
        endpoint: entry.options.endpoint,
        intervalMs: entry.options.interval,
        timeoutMs: entry.options.timeout,
        tag: entry.tag,
      })
    }
  })
  const listen = p2p.listenAddresses ?? [p2p.localOnly ? '/ip4/127.0.0.1/tcp/0' : '/ip4/0.0.0.0/tcp/0']
  return {
    identity,
    ...(config.dataDir === undefined ? {} : { dataDir: config.dataDir }),
    localOnly: p2p.localOnly,
    listen,
    websockets: p2p.transports.websocket.enabled,
    bootstrap: p2p.bootstrapNodes,
    ...(p2p.enableMDNS === undefined ? {} : { mdns: p2p.enableMDNS }),
    mdnsServiceTag: p2p.mdnsOptions.serviceTag,
    mdnsIntervalMs: p2p.mdnsOptions.interval,
    httpDiscovery,
    dhtMode: p2p.enableDHT ? (p2p.dhtOptions.clientMode ? 'client' : 'server') : 'off',
    dhtKBucketSize: p2p.dhtOptions.kBucketSize,
    maxConnections: p2p.connectionManager.maxConnections,
    dialTimeoutMs: p2p.dialTimeout,
    ...(p2p.security.allowlist === undefined ? {} : { allowPeers: p2p.security.allowlist }),
    denyPeers: p2p.security.blocklist,
    ...(config.logger === undefined ? {} : { logger: config.logger }),
    ...(extras.metrics === undefined ? {} : { metrics: extras.metrics }),
    ...(extras.componentLogger === undefined ? {} : { componentLogger: extras.componentLogger }),
    services: services as MeshNodeOptions['services'],
  }
}

/**
 * Runs the node factory's own validation on what the SDK would pass it (with a throwaway key), so
 * that every problem surfaces in the constructor as an SDKConfigError naming the SDK's field.
 */
export function checkMeshNodeOptions(config: ResolvedSDKConfig): void {
  try {
    resolveMeshNodeOptions(meshNodeOptionsOf(config, config.identity ?? generateIdentity()))
  } catch (err) {
    if (!isMeshError(err) || err.name !== 'InvalidArgumentError') throw err
    const field = String(err.details.field ?? '')
    const [, base = field, rest = ''] = /^([a-zA-Z]+)(.*)$/.exec(field) ?? []
    const problem = err.shortMessage.replace(/^invalid mesh node option [^:]+: /, '')
    throw new SDKConfigError(`${FIELDS[base] ?? `p2pConfig (node option ${base})`}${rest}`, problem, {
      cause: err,
    })
  }
}
