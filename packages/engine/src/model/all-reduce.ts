import type { AllReduce } from './shard-types.ts'

/**
 * An in-process all-reduce for `count` column shards of one tensor-parallel group running in this
 * process: each shard's `forward` gets its own function; a step resolves when every shard has given
 * its partial, and all of them receive the same sum (added in shard order).
 */
export function createLocalAllReduce(count: number): AllReduce[] {
  let partials: Array<Float32Array | undefined> = new Array(count).fill(undefined)
  let waiting: Array<(sum: Float32Array) => void> = []
  return Array.from({ length: count }, (_, index) => (partial: Float32Array) => {
    return new Promise<Float32Array>((resolve, reject) => {
      if (partials[index] !== undefined) {
        reject(new Error(`shard ${index} gave two partials for one all-reduce step`))
        return
      }
      partials[index] = partial
      waiting.push(resolve)
      if (waiting.length < count) return
      const sum = new Float32Array(partial.length)
      for (const p of partials) for (let i = 0; i < sum.length; i++) sum[i] = sum[i]! + p![i]!
      const resolvers = waiting
      partials = new Array(count).fill(undefined)
      waiting = []
      for (const r of resolvers) r(sum.slice())
    })
  })
}
