/**
 * @packageDocumentation
 * FabstirSDK, the Meshnet client for apps: a libp2p node of its own that finds nodes serving a
 * model (DHT provider records of public nodes, ring status from pool members), streams completions
 * and chat replies (the serving node applies the model's chat template) from them over
 * `/meshnet/job/1.0.0`, and reports real P2P figures (connections, bytes, DHT, NAT, ping latency,
 * `/perf/1.0.0` throughput). Configuration mirrors the Fabstir P2P guide; every option either works
 * or is refused with the reason (docs/p2p-configuration.md). Each capability is an action in its
 * own file (`connect`, `discoverNodes`, `streamInference`, `streamChat`, ...) over an `SDKClient`;
 * `FabstirSDK` is a thin facade over them.
 */

export type {
  Advice,
  Diagnosis,
  PeerDiagnosis,
  Perf,
  PerfComponents,
  PerfOptions,
  PerfResult,
  PerfServiceInit,
} from '@meshnet/discovery'
export { MAX_PERF_BYTES, PERF_PROTOCOL, PerfError, perfService } from '@meshnet/discovery'
export type { JobResult, JobStats, JobToken } from '@meshnet/protocols'
export { JobFailedError, JobProtocolError } from '@meshnet/protocols'
export type {
  ConnectErrorType,
  ConnectParameters,
  ConnectReturnType,
  DisconnectReturnType,
} from './actions/connect.ts'
export { connect, disconnect } from './actions/connect.ts'
export type {
  DiscoverNodesErrorType,
  DiscoverNodesParameters,
  DiscoverNodesReturnType,
} from './actions/discoverNodes.ts'
export { discoverNodes } from './actions/discoverNodes.ts'
export type { GetP2PMetricsErrorType, GetP2PMetricsReturnType } from './actions/getP2PMetrics.ts'
export { getP2PMetrics } from './actions/getP2PMetrics.ts'
export type {
  GetSystemHealthReportErrorType,
  GetSystemHealthReportReturnType,
} from './actions/getSystemHealthReport.ts'
export { getSystemHealthReport } from './actions/getSystemHealthReport.ts'
export type {
  ChatErrorType,
  ChatParameters,
  ChatReturnType,
  StreamChatErrorType,
  StreamChatParameters,
  StreamChatReturnType,
} from './actions/streamChat.ts'
export { chat, streamChat } from './actions/streamChat.ts'
export type {
  StreamInferenceErrorType,
  StreamInferenceParameters,
  StreamInferenceReturnType,
} from './actions/streamInference.ts'
export { streamInference, submitJob } from './actions/streamInference.ts'
export type {
  TestNetworkPerformanceErrorType,
  TestNetworkPerformanceParameters,
  TestNetworkPerformanceReturnType,
} from './actions/testNetworkPerformance.ts'
export { testNetworkPerformance } from './actions/testNetworkPerformance.ts'
export type {
  TestP2PConnectivityErrorType,
  TestP2PConnectivityParameters,
  TestP2PConnectivityReturnType,
} from './actions/testP2PConnectivity.ts'
export { testP2PConnectivity } from './actions/testP2PConnectivity.ts'
export type { SDKClient } from './client.ts'
export { createSDKClient } from './client.ts'
export type {
  AuthenticateHook,
  DebugLevel,
  DebugSubsystem,
  FabstirSDKConfig,
  P2PConfig,
  PeerDiscoveryFactory,
  ProtocolHandler,
  ResolvedP2PConfig,
  ResolvedSDKConfig,
} from './config.ts'
export { DEBUG_LEVELS, DEBUG_SUBSYSTEMS, parseSDKConfig } from './config.ts'
export type { P2PDebugEvent } from './debug-log.ts'
export {
  BootstrapUnreachableError,
  DataLimitExceededError,
  InvalidRequestError,
  NoNodesFoundError,
  NotConnectedError,
  PeerRefusedError,
  PoolCertificateError,
  PoolRequestError,
  RequestTimeoutError,
  SDKConfigError,
} from './errors.ts'
export type { SDKPool } from './pool.ts'
export { FabstirSDK } from './sdk.ts'
export type { ByteCounts } from './traffic.ts'
export type {
  BootstrapResult,
  ChatMessage,
  ChatRequest,
  ConnectionInfo,
  ConnectivityTestResult,
  ConnectResult,
  DiscoveredNode,
  DiscoverNodesOptions,
  FabstirSDKEvents,
  HealthStatus,
  InferenceRequest,
  InferenceStream,
  NatType,
  NetworkPerformanceOptions,
  NetworkPerformanceResult,
  NodesDiscoveredEvent,
  P2PMetrics,
  PeerEvent,
  PeerPerformance,
  StreamEndEvent,
  StreamTokenEvent,
  SystemHealthReport,
} from './types.ts'
