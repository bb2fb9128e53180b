import { randomBytes } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import { setImmediate as nextTurn } from 'node:timers/promises'
import type { GrammarSpec } from '@meshnet/grammar'
import { SseWriter } from '@meshnet/http'
import type { z } from 'zod'
import { type ChatTemplate, parseChatTemplate } from './chat-template.ts'
import { ApiError, type CommonParams, type completionSchema, findModel, sendJson } from './openai-schemas.ts'
import {
  BackendUnavailableError,
  type CompletionBackend,
  type CompletionLogprobs,
  type CompletionModel,
  type CompletionRequest,
  DEFAULT_COMPLETION_MAX_TOKENS,
  type MeshnetFigures,
  type ServerState,
} from './openai-types.ts'

// ---------------------------------------------------------------------------------------------
// Completions

export type FinishReason = 'stop' | 'length' | 'tool_calls'

export interface Usage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
}

/** What a completion and a chat completion share once their prompt is text. */
export interface Generation {
  model: CompletionModel
  prompt: string
  /** `prompt` or `messages`, for errors about the prompt's length. */
  promptParam: string
  params: CommonParams
  /** max_tokens when the request gives none; undefined: the rest of the context. */
  defaultMaxTokens: number | undefined
  /** Alternatives per token to report; undefined: no log-probabilities. */
  logprobs: number | undefined
  /** What the output must be (response_format, a forced tool call). */
  grammar?: GrammarSpec
}

export async function complete(
  params: z.output<typeof completionSchema>,
  res: ServerResponse,
  state: ServerState,
  controller: AbortController,
): Promise<void> {
  const model = findModel(state.backend.models(), params.model)
  const prompt = typeof params.prompt === 'string' ? params.prompt : params.prompt[0]!
  const id = `cmpl-${randomBytes(12).toString('base64url')}`
  const created = Math.floor(Date.now() / 1000)
  const head = { id, object: 'text_completion', created, model: model.id }
  // text_offset counts code points of the prompt and the completion before the token (no echo).
  const promptChars = codePoints(prompt)
  const logprobsOf = (entries: TokenEntry[] | undefined) =>
    entries === undefined ? null : legacyLogprobs(entries, promptChars)
  const choice = (
    index: number,
    text: string,
    entries: TokenEntry[] | undefined,
    finish: FinishReason | null,
  ) => ({
    text,
    index,
    logprobs: logprobsOf(entries),
    finish_reason: finish,
  })
  await respond(
    {
      model,
      prompt,
      promptParam: 'prompt',
      params,
      defaultMaxTokens: DEFAULT_COMPLETION_MAX_TOKENS,
      logprobs: params.logprobs ?? undefined,
    },
    res,
    state,
    controller,
    {
      full: (choices, usage) => ({
        ...head,
        choices: choices.map((c, i) => choice(i, c.text, c.logprobs, c.finish)),
        usage,
      }),
      chunk: (index, text, entries) => [{ ...head, choices: [choice(index, text, entries, null)] }],
      last: (index, finish) => [{ ...head, choices: [choice(index, '', undefined, finish)] }],
      usage: (usage) => ({ ...head, choices: [], usage }),
    },
  )
}

/** OpenAI's legacy `logprobs` of a completion choice (or of a chunk's tokens). */
function legacyLogprobs(entries: readonly TokenEntry[], promptChars: number) {
  return {
    tokens: entries.map((e) => e.token),
    token_logprobs: entries.map((e) => e.logprob),
    // A map of token text to logprob: of two alternatives with the same text, the likelier stays.
    top_logprobs: entries.map((e) => {
      const top: Record<string, number> = Object.create(null)
      for (const t of e.top) if (!(t.token in top)) top[t.token] = t.logprob
      return top
    }),
    text_offset: entries.map((e) => promptChars + e.offset),
  }
}

/** One token of a chat choice's `logprobs.content`. */
export function chatLogprob(e: TokenEntry) {
  return {
    token: e.token,
    logprob: e.logprob,
    bytes: e.bytes,
    top_logprobs: e.top.map((t) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes })),
  }
}

/** Code points of `text` (as OpenAI counts text offsets). */
function codePoints(text: string): number {
  let n = 0
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    // The low half of a surrogate pair adds nothing.
    if (c < 0xdc00 || c > 0xdfff) n++
  }
  return n
}

export function chatTemplate(state: ServerState, model: CompletionModel): ChatTemplate {
  const key = model.chatTemplate ?? ''
  let template = state.templates.get(key)
  if (template === undefined) {
    try {
      template = parseChatTemplate(model.chatTemplate)
    } catch (err) {
      state.logger.error({ model: model.id, err }, 'chat template does not parse')
      throw new ApiError(500, (err as Error).message, { code: 'invalid_chat_template' })
    }
    state.templates.set(key, template)
  }
  return template
}

/** A choice's text, for the full (non-streaming) response. */
export interface ChoiceResult {
  text: string
  finish: FinishReason
  /** Undefined: the request asked for none. */
  logprobs: TokenEntry[] | undefined
}

/** The response bodies of one endpoint. */
export interface Shapes {
  full(choices: ChoiceResult[], usage: Usage): unknown
  /** Streaming: the chunk before a choice's first text (chat: the assistant role). */
  first?(index: number): unknown
  /** The chunks of a piece of a choice's text (none while it is held back, as a tool call's start). */
  chunk(index: number, text: string, logprobs: TokenEntry[] | undefined): unknown[]
  /** The chunks that end a choice (the last one with its finish reason). */
  last(index: number, finish: FinishReason): unknown[]
  usage(usage: Usage): unknown
}

type ChoiceEnd = { finish: FinishReason; usage: Usage; meshnet?: MeshnetFigures }

export async function respond(
  generation: Generation,
  res: ServerResponse,
  state: ServerState,
  controller: AbortController,
  shapes: Shapes,
): Promise<void> {
  const { model, params } = generation
  const promptTokens = await state.backend.countTokens(model.id, generation.prompt)
  if (promptTokens >= model.contextLength) {
    throw new ApiError(
      400,
      `This model's maximum context length is ${model.contextLength} tokens, but the ${generation.promptParam} ` +
        `take ${promptTokens}, which leaves no room for a completion; shorten them`,
      { param: generation.promptParam, code: 'context_length_exceeded' },
    )
  }
  const room = model.contextLength - promptTokens
  const asked = params.max_completion_tokens ?? params.max_tokens ?? generation.defaultMaxTokens ?? room
  const stops = params.stop == null ? [] : typeof params.stop === 'string' ? [params.stop] : params.stop
  const wantsLogprobs = generation.logprobs !== undefined
  // OpenAI's defaults: temperature 1 and top_p 1 over the whole vocabulary (top_k 0: no top-k).
  const request: CompletionRequest = {
    model: model.id,
    prompt: generation.prompt,
    maxTokens: Math.min(asked, room),
    temperature: params.temperature ?? 1,
    topP: params.top_p ?? 1,
    topK: params.top_k ?? 0,
    ...(params.presence_penalty == null ? {} : { presencePenalty: params.presence_penalty }),
    ...(params.frequency_penalty == null ? {} : { frequencyPenalty: params.frequency_penalty }),
    ...(generation.logprobs === undefined ? {} : { logprobs: generation.logprobs }),
    ...(generation.grammar === undefined ? {} : { grammar: generation.grammar }),
    signal: controller.signal,
  }
  // n choices, each a generation of its own (seed + i when seeded), run at once.
  const n = params.n ?? 1
  const choices = Array.from({ length: n }, (_, i) =>
    generateChoice(
      state.backend,
      { ...request, ...(params.seed == null ? {} : { seed: (params.seed + i) >>> 0 }) },
      stops,
    ),
  )
  const usageOf = (ends: readonly ChoiceEnd[]): Usage => {
    const completion = ends.reduce((sum, e) => sum + e.usage.completion_tokens, 0)
    const prompt = ends[0]!.usage.prompt_tokens
    return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
  }
  const finished = (ends: readonly ChoiceEnd[]) =>
    state.logger.debug(
      {
        model: model.id,
        stream: params.stream === true,
        n,
        finish: ends.map((e) => e.finish),
        ...usageOf(ends),
      },
      'OpenAI API request served',
    )
  const steps = concurrently(choices)
  let done = false
  try {
    // Wait for the first text before answering, so a backend that fails at once gets a real status.
    const first = await steps.next()
    const ends: ChoiceEnd[] = []
    if (params.stream !== true) {
      const texts = choices.map(() => '')
      const entries: TokenEntry[][] = choices.map(() => [])
      for (let next = first; !next.done; next = await steps.next()) {
        const { index, step } = next.value
        if (step.done) ends[index] = step.value
        else {
          texts[index] += step.value.text
          entries[index]!.push(...step.value.logprobs)
        }
      }
      const results = ends.map((end, i) => ({
        text: texts[i]!,
        finish: end.finish,
        logprobs: wantsLogprobs ? entries[i] : undefined,
      }))
      sendJson(res, 200, withFigures(shapes.full(results, usageOf(ends)), ends[0]!.meshnet))
      done = true
      finished(ends)
      return
    }
    const includeUsage = params.stream_options?.include_usage === true
    // With include_usage, every chunk carries `usage: null` but the last one (as OpenAI sends them).
    const event = (body: unknown) =>
      `data: ${JSON.stringify(includeUsage ? { ...(body as object), usage: null } : body)}\n\n`
    const sse = new SseWriter(res)
    if (shapes.first) for (let i = 0; i < n; i++) await sse.write(event(shapes.first(i)))
    // The choices' chunks interleave as their tokens come, each with its index.
    for (let next = first; !next.done; next = await steps.next()) {
      const { index, step } = next.value
      if (step.done) {
        ends[index] = step.value
        const bodies = shapes.last(index, step.value.finish)
        for (const [i, body] of bodies.entries()) {
          await sse.write(event(i === bodies.length - 1 ? withFigures(body, step.value.meshnet) : body))
        }
      } else if (step.value.text !== '' || step.value.logprobs.length > 0) {
        const logprobs = wantsLogprobs ? step.value.logprobs : undefined
        for (const body of shapes.chunk(index, step.value.text, logprobs)) await sse.write(event(body))
      }
    }
    const tail = includeUsage ? `data: ${JSON.stringify(shapes.usage(usageOf(ends)))}\n\n` : ''
    sse.end(`${tail}data: [DONE]\n\n`)
    done = true
    finished(ends)
  } finally {
    // A choice that failed (or a client gone): the others stop too.
    if (!done) controller.abort()
    await Promise.all(choices.map((c) => c.return(undefined as never)))
  }
}

/**
 * Runs every generator to its end at once (each pulled on its own, so that one waiting for a
 * sequence another holds cannot block it) and yields their steps as they come, each with its
 * generator's index. The first error of any ends it.
 */
async function* concurrently<T, R>(
  generators: readonly AsyncGenerator<T, R, undefined>[],
): AsyncGenerator<{ index: number; step: IteratorResult<T, R> }, void, undefined> {
  type Item = { index: number; step: IteratorResult<T, R> } | { error: unknown }
  const queue: Item[] = []
  let wake: (() => void) | undefined
  const push = (item: Item) => {
    queue.push(item)
    wake?.()
    wake = undefined
  }
  for (const [index, generator] of generators.entries()) {
    void (async () => {
      try {
        for (;;) {
          const step = await generator.next()
          push({ index, step })
          if (step.done) return
        }
      } catch (error) {
        push({ error })
      }
    })()
  }
  let running = generators.length
  while (running > 0) {
    if (queue.length === 0) await new Promise<void>((resolve) => (wake = resolve))
    const item = queue.shift()!
    if ('error' in item) throw item.error
    if (item.step.done) running--
    yield item
  }
}

/** A response body with the `meshnet` figures of its generation, when the backend gave them. */
function withFigures(body: unknown, meshnet: MeshnetFigures | undefined): unknown {
  return meshnet === undefined ? body : { ...(body as object), meshnet }
}

/** A generated token's log-probabilities, and where its text starts in the completion (code points). */
export interface TokenEntry extends CompletionLogprobs {
  offset: number
}

/** A piece of a choice's text and the log-probabilities of the tokens whose text starts in it. */
export interface ChoicePiece {
  text: string
  logprobs: TokenEntry[]
}

/**
 * Runs the backend and yields the completion's text, cut before the first stop sequence: text that
 * could be the start of a stop sequence is held back until it is known not to be one. When a stop
 * sequence appears the generation is aborted. Client disconnects abort it through `request.signal`.
 */
export async function* generateText(
  backend: CompletionBackend,
  request: CompletionRequest,
  stops: readonly string[],
): AsyncGenerator<string, ChoiceEnd, undefined> {
  const pieces = generateChoice(backend, request, stops)
  try {
    for (;;) {
      const step = await pieces.next()
      if (step.done) return step.value
      if (step.value.text !== '') yield step.value.text
    }
  } finally {
    await pieces.return(undefined as never)
  }
}

/**
 * `generateText`, with the log-probabilities of the tokens (when the request asks for them): each
 * piece carries those of the tokens whose text starts in it (a token cut off by a stop sequence, or
 * starting after it, is not reported).
 */
export async function* generateChoice(
  backend: CompletionBackend,
  request: CompletionRequest,
  stops: readonly string[],
): AsyncGenerator<ChoicePiece, ChoiceEnd, undefined> {
  const own = new AbortController()
  const abort = () => own.abort()
  request.signal.addEventListener('abort', abort, { once: true })
  const tokens = backend.generate({ ...request, signal: own.signal })
  let finished = false
  try {
    /** All the text so far, what of it was yielded (UTF-16 units), and its code points. */
    let text = ''
    let emitted = 0
    let points = 0
    const pending: Array<{ at: number; entry: TokenEntry }> = []
    /** The entries of the tokens whose text starts before `end`. */
    const upTo = (end: number) => {
      let n = 0
      while (n < pending.length && pending[n]!.at < end) n++
      return pending.splice(0, n).map((p) => p.entry)
    }
    let stopped = false
    for (;;) {
      const step = await tokens.next()
      if (step.done) {
        finished = true
        const outcome = step.value
        if (outcome.stopReason === 'abort' && !stopped) {
          throw new BackendUnavailableError('the generation was aborted before it finished')
        }
        if (!stopped) {
          const rest = text.slice(emitted)
          const entries = upTo(Number.POSITIVE_INFINITY)
          if (rest !== '' || entries.length > 0) yield { text: rest, logprobs: entries }
        }
        const usage = {
          prompt_tokens: outcome.promptTokens,
          completion_tokens: outcome.completionTokens,
          total_tokens: outcome.promptTokens + outcome.completionTokens,
        }
        return {
          finish: stopped || outcome.stopReason === 'eog' ? 'stop' : 'length',
          usage,
          ...(outcome.meshnet === undefined ? {} : { meshnet: outcome.meshnet }),
        }
      }
      // An engine in this process may compute token after token in microtasks alone; a turn of the
      // event loop per token lets the response flush and a disconnect be seen (and abort it).
      await nextTurn()
      if (stopped) continue
      const { text: piece, logprobs } = step.value
      text += piece
      points += codePoints(piece)
      if (logprobs !== undefined) {
        // The token's own text ends the piece; a piece also holds the text of the tokens before it
        // that ended inside a character (their bytes held back), which start where the piece does.
        const own = logprobs.token !== '' && piece.endsWith(logprobs.token) ? logprobs.token : piece
        pending.push({
          at: text.length - own.length,
          entry: { ...logprobs, offset: points - codePoints(own) },
        })
      }
      const unsent = text.slice(emitted)
      const cut = firstStop(unsent, stops)
      if (cut !== undefined) {
        stopped = true
        own.abort()
        const entries = upTo(emitted + cut)
        if (cut > 0 || entries.length > 0) yield { text: unsent.slice(0, cut), logprobs: entries }
        emitted += cut
        continue
      }
      const keep = heldBack(unsent, stops)
      if (keep < unsent.length) {
        const end = text.length - keep
        const entries = upTo(end)
        yield { text: text.slice(emitted, end), logprobs: entries }
        emitted = end
      }
    }
  } finally {
    request.signal.removeEventListener('abort', abort)
    if (!finished) {
      own.abort()
      await tokens.return(undefined as never)
    }
  }
}

/** Index where the earliest stop sequence in `text` starts. */
function firstStop(text: string, stops: readonly string[]): number | undefined {
  let first: number | undefined
  for (const stop of stops) {
    const at = text.indexOf(stop)
    if (at >= 0 && (first === undefined || at < first)) first = at
  }
  return first
}

/** Length of the longest end of `text` that is the beginning of a stop sequence. */
function heldBack(text: string, stops: readonly string[]): number {
  let longest = 0
  for (const stop of stops) {
    for (let n = Math.min(stop.length - 1, text.length); n > longest; n--) {
      if (text.endsWith(stop.slice(0, n))) {
        longest = n
        break
      }
    }
  }
  return longest
}
