// A third-party app as its author writes it after `npm install @meshnet/sdk`: plain ESM, no build
// step, no TypeScript. Streams one completion from the public node at the bootstrap address and
// prints a JSON summary (registry-install.test.ts runs it).
//
//   node app.mjs <bootstrap multiaddr> <model name>
import { FabstirSDK } from '@meshnet/sdk'

const [bootstrap, model] = process.argv.slice(2)
const sdk = new FabstirSDK({
  mode: 'development',
  p2pConfig: { bootstrapNodes: [bootstrap], localOnly: true, requestTimeout: 60_000 },
})
try {
  await sdk.connect()
  // A public node announces its model in the DHT a moment after it starts: ask again for a while.
  let nodes = await sdk.discoverNodes({ model })
  for (let round = 0; nodes.length === 0 && round < 40; round++) {
    await new Promise((resolve) => setTimeout(resolve, 250))
    nodes = await sdk.discoverNodes({ model, forceRefresh: true })
  }
  const stream = sdk.streamInference({ prompt: 'Hello world', maxTokens: 12, temperature: 0, model })
  const streamed = []
  for await (const token of stream) streamed.push(token.text)
  const result = await stream.result
  console.log(
    JSON.stringify({
      sdk: import.meta.resolve('@meshnet/sdk'),
      nodes: nodes.map((node) => node.nodeId),
      streamed,
      text: result.text,
      tokens: result.tokens.length,
      members: result.stats.members,
    }),
  )
} finally {
  await sdk.disconnect()
}
