import type { Logger } from '@meshnet/core'
import type { Attempt } from './attempt.ts'
import type { ReplanFunction, Step } from './coordinator-options.ts'
import { ShardedRunError } from './errors.ts'
import type { ShardedPlan } from './plan.ts'

/** `tokens` from position 0 in steps of at most `maxBatch` positions; the last one wants the answer. */
export function stepsFrom(tokens: readonly number[], maxBatch: number): Step[] {
  const steps: Step[] = []
  for (let pos = 0; pos < tokens.length; pos += maxBatch) {
    steps.push({ tokens: tokens.slice(pos, pos + maxBatch), pos, want: false })
  }
  steps.at(-1)!.want = true
  return steps
}

export interface FailoverInput<P> {
  /** What was running, as the errors name it. */
  run: 'generation' | 'embedding'
  /** The attempt that failed with an `AttemptError` whose cause is `cause`; not aborted yet. */
  failed: Attempt
  cause: Error
  /** This attempt's number in the run (1 for the first). */
  attemptNo: number
  /** The plan the attempt ran. */
  plan: ShardedPlan
  replan: ReplanFunction | undefined
  /** Checks the plan `replan` gives as the run needs it (a refusal is the ring's, like replan's). */
  parse: (plan: ShardedPlan) => P
  /** Failovers this run has taken, the one still recovering included. */
  taken: number
  /** The run's parsed options: its failover limit and liveness-ping budget. */
  options: { maxFailovers: number; pingTimeoutMs: number }
  signal: AbortSignal | undefined
  logger: Logger
}

/**
 * After an attempt failed: finds which of its members died (a liveness ping each), aborts it, and
 * asks `replan` for a plan over the members left. Throws ShardedRunError, naming the run and the
 * dead members, when none died (the failure was not a member's), when there is no `replan`, once
 * `maxFailovers` are taken, or when the ring cannot hold the model without them.
 */
export async function failOver<P>(input: FailoverInput<P>): Promise<{ dead: string[]; plan: P }> {
  const { run, failed, cause, attemptNo } = input
  const { maxFailovers, pingTimeoutMs } = input.options
  const dead = await failed.deadMembers(pingTimeoutMs)
  await failed.abort()
  input.logger.warn({ dead, err: cause.message, attempt: attemptNo }, `sharded ${run} attempt failed`)
  if (dead.length === 0) throw new ShardedRunError(`sharded ${run} failed: ${cause.message}`, { cause })
  const who = `member${dead.length > 1 ? 's' : ''} ${dead.join(', ')}`
  if (input.replan === undefined) {
    throw new ShardedRunError(`${who} stopped mid-${run} and no replan function was given`, { cause })
  }
  if (input.taken >= maxFailovers) {
    throw new ShardedRunError(`${who} stopped mid-${run} after ${maxFailovers} failovers; giving up`, {
      cause,
    })
  }
  try {
    const plan = await input.replan(dead, {
      attempt: attemptNo,
      plan: input.plan,
      cause,
      signal: input.signal ?? new AbortController().signal,
    })
    return { dead, plan: input.parse(plan) }
  } catch (replanError) {
    throw new ShardedRunError(
      `${who} stopped mid-${run} and the ring cannot hold the model without them: ${(replanError as Error).message}`,
      { cause: replanError },
    )
  }
}
