import { InvalidArgumentError, parseWith, silentLogger } from '@meshnet/core'
import type { Sampler, StopReason, TokenLogprobs } from '@meshnet/engine'
import { createSampler } from '@meshnet/engine'
import { Attempt, AttemptError } from './attempt.ts'
import { sparseLogits } from './candidates.ts'
import {
  Meter,
  type Options,
  type ShardedFailover,
  type ShardedGenerationOptions,
  type ShardedGenerationResult,
  type ShardedToken,
  type Step,
  shardedGenerationOptionsSchema,
} from './coordinator-options.ts'
import { ShardSessionError } from './errors.ts'
import { failOver, stepsFrom } from './failover.ts'
import { MembershipCheck } from './peers.ts'
import { parseShardedPlan } from './plan.ts'

/**
 * Runs one generation over ring members that each hold a shard of the model: a pipeline (layer
 * ranges in ring order; hidden states go member to member, the last returns the candidates) or
 * tensor parallel (every member a column slice; partial sums all-reduced per layer). The
 * coordinator samples (llama.cpp's chain, seeded), so the tokens equal a local engine's.
 *
 * When a member dies mid-generation, `replan(deadNodeIds)` gives a plan over the members left and
 * the generation resumes there after replaying the prompt and the tokens so far: the caller sees
 * one stream. Yields each token; the generator's return value is the result with its stats.
 */
export async function* runShardedGeneration(
  options: ShardedGenerationOptions,
): AsyncGenerator<ShardedToken, ShardedGenerationResult> {
  const {
    node,
    gate,
    plan: initialPlan,
    local,
    replan,
    constraint,
    signal,
    logger: givenLogger,
    ...rest
  } = options
  const parsed = parseWith(shardedGenerationOptionsSchema, rest, 'sharded generation option')
  const opts = parsed
  const logger = (givenLogger ?? silentLogger()).child({ component: 'sharded-run' })
  let plan = parseShardedPlan(initialPlan)
  const prompt = opts.promptTokens
  const contextSize = opts.contextSize ?? prompt.length + opts.maxTokens
  if (prompt.length > contextSize) {
    throw new InvalidArgumentError(
      `the prompt of ${prompt.length} tokens does not fit a context of ${contextSize}`,
    )
  }
  const sampler = createSampler(opts.sampling ?? {}, constraint === undefined ? {} : { constraint })
  const { temperature, topK: k, presencePenalty, frequencyPenalty } = sampler.options
  // Greedy needs only the best candidate, sampling the top k (0: the whole vocabulary). Penalties
  // apply before top-k to every token generated so far, wherever it ranks: they need the whole row,
  // and so does a constraint, which may refuse every one of the top k.
  const penalized = presencePenalty !== 0 || frequencyPenalty !== 0
  const wholeRow = penalized || constraint !== undefined
  const argmaxOnly = temperature <= 0 && !wholeRow
  const whole = 1 << 20
  const topK = Math.max(argmaxOnly ? 1 : wholeRow || k === 0 ? whole : k, opts.logprobs ?? 0)
  const stop = new Set(opts.stopTokens)
  const membership = new MembershipCheck(gate)
  const meter = new Meter()
  const failovers: ShardedFailover[] = []
  const tokens: number[] = []
  const started = performance.now()
  let openMs: number | undefined
  let first: number | undefined
  let last = started
  let stopReason: StopReason = 'maxTokens'
  let failedAt: number | undefined
  let pendingFailover: Omit<ShardedFailover, 'recoveryMs'> | undefined
  let attempt: Attempt | undefined
  let attemptNo = 0

  const result = (): ShardedGenerationResult => {
    const decodeMs = first === undefined ? 0 : last - first
    const mean = (sum: number, n: number) => (n > 0 ? sum / n : undefined)
    return {
      tokens: [...tokens],
      stopReason,
      plan,
      stats: {
        mode: plan.mode,
        members: plan.shards.length,
        links: attempt?.links ?? { direct: 0, libp2p: 0 },
        promptTokens: prompt.length,
        generatedTokens: tokens.length,
        openMs: openMs ?? 0,
        timeToFirstTokenMs: first === undefined ? 0 : first - started,
        totalMs: performance.now() - started,
        decodeMs,
        tokensPerSecond: decodeMs > 0 ? ((tokens.length - 1) * 1000) / decodeMs : 0,
        computeMsPerToken: mean(meter.decodeCompute, meter.decodeSteps),
        hopLatencyMs: mean(meter.hopSum, meter.hopSteps),
        allReduceMs: mean(meter.allReduceSum, meter.allReduceSteps),
        bytes: {
          control: meter.control + (attempt?.controlBytes() ?? 0),
          links: meter.links,
          perToken: mean(meter.decodeBytes, meter.decodeSteps),
        },
        failovers: [...failovers],
      },
    }
  }

  try {
    for (;;) {
      attemptNo++
      if (attempt) meter.control += attempt.controlBytes()
      attempt = new Attempt({
        node,
        local,
        membership,
        opts,
        contextSize,
        topK,
        meter,
        logger,
        signal,
        ...(opts.logprobs === undefined ? {} : { logSumExp: true }),
      })
      try {
        const opening = performance.now()
        await attempt.open(plan)
        openMs ??= performance.now() - opening
        const steps =
          tokens.length === 0 ? stepsFrom(prompt, opts.maxBatch) : replaySteps(prompt, tokens, opts)
        let output = await attempt.run(steps, false)
        if (pendingFailover) {
          failovers.push({ ...pendingFailover, recoveryMs: performance.now() - failedAt! })
          pendingFailover = undefined
          failedAt = undefined
        }
        for (;;) {
          if (output.ids.length === 0) throw new ShardSessionError('the output member returned no candidates')
          const picked = pick(sampler, output, attempt.vocab, argmaxOnly, opts.logprobs)
          const token = picked.id
          last = performance.now()
          if (stop.has(token)) {
            stopReason = 'eog'
            break
          }
          tokens.push(token)
          first ??= last
          yield {
            id: token,
            index: tokens.length - 1,
            ...(picked.logprobs === undefined ? {} : { logprobs: picked.logprobs }),
          }
          // When every shard runs in this process (a plan of this node alone) the steps resolve
          // without I/O: give the event loop a turn so the token reaches the caller's socket now.
          await new Promise<void>((resolve) => setImmediate(resolve))
          if (tokens.length >= opts.maxTokens) {
            stopReason = 'maxTokens'
            break
          }
          if (prompt.length + tokens.length > contextSize) {
            stopReason = 'contextFull'
            break
          }
          output = await attempt.run(
            [{ tokens: [token], pos: prompt.length + tokens.length - 1, want: true }],
            true,
          )
        }
        await attempt.close()
        return result()
      } catch (err) {
        const failed = attempt
        failedAt ??= performance.now()
        if (signal?.aborted || !(err instanceof AttemptError)) {
          await failed.abort()
          if (signal?.aborted) {
            stopReason = 'abort'
            return result()
          }
          throw err
        }
        const cause = err.cause as Error
        const next = await failOver({
          run: 'generation',
          failed,
          cause,
          attemptNo,
          plan,
          replan,
          parse: parseShardedPlan,
          taken: failovers.length + (pendingFailover ? 1 : 0),
          options: opts,
          signal,
          logger,
        })
        plan = next.plan
        if (pendingFailover) {
          failovers.push({ ...pendingFailover, recoveryMs: performance.now() - failedAt })
        }
        pendingFailover = { deadNodeIds: next.dead, atToken: tokens.length, cause: cause.message }
      }
    }
  } finally {
    await attempt?.abort()
  }
}

/**
 * The next token from the output member's candidates (and its log-probabilities when asked: exact
 * with the member's log-sum-exp of the whole row, or when the candidates are the whole row).
 */
function pick(
  sampler: Sampler,
  output: { ids: Uint32Array; logits: Float32Array; logSumExp?: number },
  vocab: number,
  argmaxOnly: boolean,
  logprobs: number | undefined,
): { id: number; logprobs?: TokenLogprobs } {
  if (logprobs === undefined && argmaxOnly) return { id: output.ids[0]! }
  const row = sparseLogits(vocab, output.ids, output.logits)
  if (logprobs === undefined) return { id: sampler.sample(row) }
  return sampler.sampleWithLogprobs(row, {
    top: logprobs,
    ...(output.logSumExp === undefined || output.ids.length >= vocab ? {} : { logSumExp: output.logSumExp }),
  })
}

/** What a fresh plan evaluates to reach where the failed one was (see the `replay` option). */
function replaySteps(prompt: readonly number[], tokens: readonly number[], opts: Options): Step[] {
  if (opts.replay === 'batched') return stepsFrom([...prompt, ...tokens], opts.maxBatch)
  const steps = stepsFrom(prompt, opts.maxBatch)
  steps.at(-1)!.want = false
  tokens.forEach((token, i) => {
    steps.push({ tokens: [token], pos: prompt.length + i, want: false })
  })
  steps.at(-1)!.want = true
  return steps
}
