import { InvalidArgumentError } from '@meshnet/core'
import { LlamaShardImpl } from './llama-shard.ts'
import { ChainedShard } from './segments.ts'
import type { LlamaShard, LogitsWanted, ShardInput, ShardOutput } from './shard-types.ts'

/** One session's step in a batched pass: `input` at positions `[pos, pos + n)` of `shard`. */
export interface BatchStep {
  shard: LlamaShard
  input: ShardInput
  pos: number
  /** With a head: the logits of the last position (default), of every position, or none. */
  logits?: LogitsWanted
}

/** The segment sessions a shard runs, when its steps can be batched with others'; else undefined. */
export function segmentsOf(shard: LlamaShard): readonly LlamaShardImpl[] | undefined {
  const parts = shard instanceof ChainedShard ? shard.segments : [shard]
  if (!parts.every((p): p is LlamaShardImpl => p instanceof LlamaShardImpl && !p.partial)) return undefined
  return parts
}

/**
 * Whether the steps of `a` and `b` can run in one batched pass: sessions over the same weights
 * (segment by segment), neither of them a column slice (those run in lockstep with other members).
 */
export function canBatch(a: LlamaShard, b: LlamaShard): boolean {
  const sa = segmentsOf(a)
  const sb = segmentsOf(b)
  if (sa === undefined || sb === undefined || sa.length !== sb.length || a === b) return false
  return sa.every((s, i) => s.sharesWeightsWith(sb[i]!))
}

/**
 * Runs the steps of several sessions over the same weights as one pass per weight segment (see
 * `LlamaShardImpl.forwardMany`): each matrix product reads the weights once for every session's
 * rows. Every session gets the values `forward` gives it alone. Steps that cannot share a pass
 * (`canBatch`) must not be given together; one step is plain `forward`.
 */
export async function forwardBatch(
  steps: readonly BatchStep[],
  options: { signal?: AbortSignal } = {},
): Promise<ShardOutput[]> {
  if (steps.length === 0) return []
  const first = steps[0]!
  if (steps.length === 1) {
    const out = await first.shard.forward(first.input, first.pos, {
      ...(first.logits ? { logits: first.logits } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    })
    return [out]
  }
  for (const step of steps.slice(1)) {
    if (!canBatch(first.shard, step.shard)) {
      throw new InvalidArgumentError('these sessions cannot share a batched pass (see canBatch)')
    }
  }
  const chains = steps.map((s) => segmentsOf(s.shard)!)
  let inputs: ShardInput[] = steps.map((s) => s.input)
  let outputs: ShardOutput[] = []
  for (let j = 0; j < chains[0]!.length; j++) {
    outputs = await LlamaShardImpl.forwardMany(
      steps.map((step, i) => ({
        shard: chains[i]![j]!,
        input: inputs[i]!,
        pos: step.pos,
        ...(step.logits ? { logits: step.logits } : {}),
      })),
      options.signal,
    )
    inputs = outputs.map((out) =>
      out.kind === 'hidden' ? { hidden: out.hidden } : { hidden: new Float32Array(0) },
    )
  }
  return outputs
}
