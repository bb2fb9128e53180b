// One ring member of the sharded benches (started by bench/sharded/run.ts), in its own process: a
// libp2p node on 127.0.0.1, the pool gate over a data dir the bench enrolled, WebAssembly kernels
// on `threads` threads and a shard server over one local model file. Started with
// child_process.fork; reports `{ nodeId, addrs }` once serving, `{ stats }` when asked, and exits
// on 'stop' (or when the bench goes away).
import { createMeshNode } from '@meshnet/discovery'
import { createWasmKernels } from '@meshnet/engine'
import { identityFromSeed } from '@meshnet/identity'
import { PoolGate } from '@meshnet/pool'
import { shardServer } from '@meshnet/shards'

interface MemberConfig {
  seed: string
  dataDir: string
  model: string
  threads: number
  memoryBytes: number
}

const config = JSON.parse(process.env.SHARDED_BENCH_MEMBER ?? '{}') as MemberConfig
const identity = identityFromSeed(Buffer.from(config.seed, 'hex'))
const node = await createMeshNode({
  identity,
  localOnly: true,
  listen: ['/ip4/127.0.0.1/tcp/0'],
  websockets: false,
  dhtMode: 'off',
})
const gate = new PoolGate({ node, dataDir: config.dataDir })
await gate.start()
const kernels = await createWasmKernels({ threads: config.threads })
const server = shardServer({
  node,
  gate,
  kernels,
  models: () => config.model,
  memoryBytes: config.memoryBytes,
  idleTimeoutMs: 600_000,
})
await server.start()

let stopping = false
async function stop(): Promise<void> {
  if (stopping) return
  stopping = true
  await server.stop()
  await gate.stop()
  await node.stop()
  await kernels.dispose()
  process.exit(0)
}

process.on('message', (message) => {
  if (message === 'stop') void stop()
  if (message === 'stats') process.send?.({ stats: server.stats() })
})
process.on('disconnect', () => void stop())
process.send?.({ nodeId: node.nodeId, addrs: node.multiaddrs().map(String) })
