import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "PoolAccessError",
      "ShardCapacityError",
      "ShardModelError",
      "ShardedRunError",
      "chooseShardedMode",
      "readShardModelFacts",
      "runShardedGeneration",
      "shardServer",
      "shardServerOptionsSchema",
      "shardedGenerationOptionsSchema",
      "shardedPlanSchema",
    ]
  `)
})
