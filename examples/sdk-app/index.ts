// Connects to a Meshnet mesh, finds the nodes serving a model and streams a completion from one.
//
//   node index.ts --bootstrap /ip4/127.0.0.1/tcp/4610/p2p/12D3KooW... --model tiny.gguf "Hello world"
//
// --data-dir <dir>  a data dir that joined a pool (mesh pool-join --token <client token>): jobs run
//                   on that pool's ring; without it they go to public nodes (mesh start --public).
// --local-only      stay on 127.0.0.1 (a mesh of agents started with --local-only).
// --json            print one JSON summary line instead of the token stream.
import { parseArgs } from 'node:util'
import { FabstirSDK } from '@meshnet/sdk'

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    bootstrap: { type: 'string', multiple: true, default: [] },
    model: { type: 'string' },
    'data-dir': { type: 'string' },
    'max-tokens': { type: 'string', default: '32' },
    'local-only': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
})
const prompt = positionals.join(' ') || 'Hello world'
const model = values.model
const localOnly = values['local-only']

const sdk = new FabstirSDK({
  mode: localOnly ? 'development' : 'production',
  p2pConfig: { bootstrapNodes: values.bootstrap, localOnly, requestTimeout: 60_000 },
  ...(values['data-dir'] ? { dataDir: values['data-dir'] } : {}),
})
const log = (line: string) => {
  if (!values.json) process.stderr.write(`${line}\n`)
}
sdk.on('peer:connect', ({ peerId }) => log(`connected to ${peerId}`))

const controller = new AbortController()
process.once('SIGINT', () => controller.abort())

try {
  const { nodeId, pool } = await sdk.connect()
  log(`this app is ${nodeId}${pool ? ` in pool ${pool.name} (${pool.role})` : ''}`)

  // A public node renews its DHT provider record every few seconds: ask again for a short while.
  let nodes = await sdk.discoverNodes({ ...(model ? { model } : {}) })
  for (let round = 0; nodes.length === 0 && round < 20; round++) {
    await new Promise((resolve) => setTimeout(resolve, 500))
    nodes = await sdk.discoverNodes({ ...(model ? { model } : {}), forceRefresh: true })
  }
  for (const node of nodes) log(`found ${node.nodeId} (${node.sources.join(', ')})`)

  const stream = sdk.streamInference({
    prompt,
    maxTokens: Number(values['max-tokens']),
    temperature: 0,
    signal: controller.signal,
    ...(model ? { model } : {}),
  })
  const texts: string[] = []
  for await (const token of stream) {
    texts.push(token.text)
    if (!values.json) process.stdout.write(token.text)
  }
  const result = await stream.result
  const metrics = await sdk.getP2PMetrics()
  if (values.json) {
    console.log(
      JSON.stringify({
        sdk: import.meta.resolve('@meshnet/sdk'),
        nodeId,
        nodes: nodes.map((n) => ({ nodeId: n.nodeId, sources: n.sources })),
        streamed: texts,
        result: { jobId: result.jobId, tokens: result.tokens, text: result.text, stats: result.stats },
        bytes: metrics.bytes,
        connections: metrics.connections.total,
      }),
    )
  } else {
    log(
      `\n${result.tokens.length} tokens at ${result.stats.tokensPerSecond.toFixed(1)} tokens/s on ${result.stats.members.join(', ')}`,
    )
  }
} finally {
  await sdk.disconnect()
}
