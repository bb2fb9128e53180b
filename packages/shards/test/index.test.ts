import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "JobRefusedError",
      "MAX_EMBED_INPUTS",
      "MAX_EMBED_TOKENS",
      "PROCESS_RESERVE_BYTES",
      "PoolAccessError",
      "ShardCapacityError",
      "ShardModelError",
      "ShardedRunError",
      "chooseShardedMode",
      "embedRequestSchema",
      "fileSha256",
      "jobService",
      "jobStats",
      "modelSha256",
      "readShardModelFacts",
      "runShardedEmbedding",
      "runShardedGeneration",
      "shardServer",
      "shardServerOptionsSchema",
      "shardedEmbeddingOptionsSchema",
      "shardedGenerationOptionsSchema",
      "shardedPlanSchema",
    ]
  `)
})
