import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "JobRefusedError",
      "PROCESS_RESERVE_BYTES",
      "PoolAccessError",
      "ShardCapacityError",
      "ShardModelError",
      "ShardedRunError",
      "chooseShardedMode",
      "fileSha256",
      "jobService",
      "jobStats",
      "modelSha256",
      "readShardModelFacts",
      "runShardedGeneration",
      "shardServer",
      "shardServerOptionsSchema",
      "shardedGenerationOptionsSchema",
      "shardedPlanSchema",
    ]
  `)
})
