import { EventEmitter } from 'node:events'
import type { MeshNode } from '@meshnet/discovery'
import type { JobResult } from '@meshnet/protocols'
import { connect, disconnect } from './actions/connect.ts'
import { discoverNodes } from './actions/discoverNodes.ts'
import { getP2PMetrics } from './actions/getP2PMetrics.ts'
import { getSystemHealthReport } from './actions/getSystemHealthReport.ts'
import { chat, streamChat } from './actions/streamChat.ts'
import { streamInference, submitJob } from './actions/streamInference.ts'
import { testNetworkPerformance } from './actions/testNetworkPerformance.ts'
import { testP2PConnectivity } from './actions/testP2PConnectivity.ts'
import { createSDKClient, type SDKClient } from './client.ts'
import type { FabstirSDKConfig, ResolvedSDKConfig } from './config.ts'
import type {
  ChatRequest,
  ConnectivityTestResult,
  ConnectResult,
  DiscoveredNode,
  DiscoverNodesOptions,
  FabstirSDKEvents,
  InferenceRequest,
  InferenceStream,
  NetworkPerformanceOptions,
  NetworkPerformanceResult,
  P2PMetrics,
  SystemHealthReport,
} from './types.ts'

/**
 * The Meshnet client for apps: a libp2p node of its own that finds nodes serving a model (DHT
 * provider records of public nodes, ring status from pool members) and streams completions from
 * them over `/meshnet/job/1.0.0`. With a data dir holding a pool certificate it exchanges
 * certificates on connect and runs jobs on that pool's ring. Construction validates the
 * configuration and does no I/O; `connect()` starts the node, `disconnect()` stops everything.
 * Each method is one action of `./actions/` on this SDK's client.
 */
export class FabstirSDK extends EventEmitter<FabstirSDKEvents> {
  readonly #client: SDKClient

  constructor(config: FabstirSDKConfig) {
    super()
    this.#client = createSDKClient(config, this)
  }

  get config(): ResolvedSDKConfig {
    return this.#client.config
  }

  get connected(): boolean {
    return this.#client.session !== undefined
  }

  /** This SDK's node id, once connected. */
  get nodeId(): string | undefined {
    return this.#client.session?.identity.nodeId
  }

  /** The SDK's libp2p node, for what the SDK does not wrap (undefined until connected). */
  get node(): MeshNode | undefined {
    return this.#client.session?.node
  }

  /** See the `connect` action. */
  connect(): Promise<ConnectResult> {
    return connect(this.#client)
  }

  /** See the `disconnect` action. */
  disconnect(): Promise<void> {
    return disconnect(this.#client)
  }

  /** See the `discoverNodes` action. */
  discoverNodes(options: DiscoverNodesOptions = {}): Promise<DiscoveredNode[]> {
    return discoverNodes(this.#client, options)
  }

  /** Runs a job and returns the finished result (tokens are also emitted as `stream:token`). */
  submitJob(request: InferenceRequest): Promise<JobResult> {
    return submitJob(this.#client, request)
  }

  /** See the `streamInference` action. */
  streamInference(request: InferenceRequest): InferenceStream {
    return streamInference(this.#client, request)
  }

  /** See the `streamChat` action: the node renders `messages` with the model's chat template. */
  streamChat(request: ChatRequest): InferenceStream {
    return streamChat(this.#client, request)
  }

  /** See the `chat` action: `streamChat`, awaited. */
  chat(request: ChatRequest): Promise<JobResult> {
    return chat(this.#client, request)
  }

  /** See the `getP2PMetrics` action. */
  getP2PMetrics(): Promise<P2PMetrics> {
    return getP2PMetrics(this.#client)
  }

  /** See the `getSystemHealthReport` action. */
  getSystemHealthReport(): Promise<SystemHealthReport> {
    return getSystemHealthReport(this.#client)
  }

  /** See the `testP2PConnectivity` action. */
  testP2PConnectivity(options: { signal?: AbortSignal } = {}): Promise<ConnectivityTestResult> {
    return testP2PConnectivity(this.#client, options)
  }

  /** See the `testNetworkPerformance` action. */
  testNetworkPerformance(options: NetworkPerformanceOptions = {}): Promise<NetworkPerformanceResult> {
    return testNetworkPerformance(this.#client, options)
  }
}
