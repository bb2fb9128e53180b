import { expect, it } from 'vitest'
import { createLocalAllReduce } from '../../src/model/all-reduce.ts'

it('gives every shard the sum of all partials, step after step', async () => {
  const [a, b, c] = createLocalAllReduce(3)
  const step = (x: number) =>
    Promise.all([a!, b!, c!].map((f, i) => f(Float32Array.of(i + x, 1), { layer: 0, kind: 'ffn' })))
  for (const s of await step(0)) expect([...s]).toEqual([3, 3])
  for (const s of await step(10)) expect([...s]).toEqual([33, 3])
})
