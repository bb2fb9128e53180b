import { randomBytes } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { SseWriter } from '@meshnet/http'
import type { z } from 'zod'
import { type ChatMessage, type ChatTemplate, parseChatTemplate } from './chat-template.ts'
import {
  ApiError,
  type CommonParams,
  type chatSchema,
  type completionSchema,
  findModel,
  sendJson,
} from './openai-schemas.ts'
import {
  BackendUnavailableError,
  type CompletionBackend,
  type CompletionModel,
  type CompletionRequest,
  DEFAULT_COMPLETION_MAX_TOKENS,
  type MeshnetFigures,
  type ServerState,
} from './openai-types.ts'

// ---------------------------------------------------------------------------------------------
// Completions

type FinishReason = 'stop' | 'length'

interface Usage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
}

/** What a completion and a chat completion share once their prompt is text. */
interface Generation {
  model: CompletionModel
  prompt: string
  /** `prompt` or `messages`, for errors about the prompt's length. */
  promptParam: string
  params: CommonParams
  /** max_tokens when the request gives none; undefined: the rest of the context. */
  defaultMaxTokens: number | undefined
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
  const choice = (text: string, finish: FinishReason | null) => ({
    text,
    index: 0,
    logprobs: null,
    finish_reason: finish,
  })
  await respond(
    { model, prompt, promptParam: 'prompt', params, defaultMaxTokens: DEFAULT_COMPLETION_MAX_TOKENS },
    res,
    state,
    controller,
    {
      full: (text, finish, usage) => ({ ...head, choices: [choice(text, finish)], usage }),
      chunk: (text) => ({ ...head, choices: [choice(text, null)] }),
      last: (finish) => ({ ...head, choices: [choice('', finish)] }),
      usage: (usage) => ({ ...head, choices: [], usage }),
    },
  )
}

export async function chat(
  params: z.output<typeof chatSchema>,
  res: ServerResponse,
  state: ServerState,
  controller: AbortController,
): Promise<void> {
  const model = findModel(state.backend.models(), params.model)
  const messages: ChatMessage[] = params.messages.map((m) => {
    const content =
      typeof m.content === 'string'
        ? m.content
        : (m.content ?? []).map((part) => (typeof part.text === 'string' ? part.text : '')).join('\n')
    return {
      role: m.role === 'developer' ? 'system' : m.role,
      content,
      ...(m.name === undefined ? {} : { name: m.name }),
    }
  })
  const prompt = chatTemplate(state, model).render({
    messages,
    addGenerationPrompt: true,
    ...(model.bosToken === undefined ? {} : { bosToken: model.bosToken }),
    ...(model.eosToken === undefined ? {} : { eosToken: model.eosToken }),
    ...(model.addBosToken === undefined ? {} : { addBosToken: model.addBosToken }),
  })
  const id = `chatcmpl-${randomBytes(12).toString('base64url')}`
  const created = Math.floor(Date.now() / 1000)
  const head = { id, object: 'chat.completion.chunk', created, model: model.id }
  const delta = (content: Record<string, string>, finish: FinishReason | null) => ({
    index: 0,
    delta: content,
    logprobs: null,
    finish_reason: finish,
  })
  await respond(
    { model, prompt, promptParam: 'messages', params, defaultMaxTokens: undefined },
    res,
    state,
    controller,
    {
      full: (text, finish, usage) => ({
        ...head,
        object: 'chat.completion',
        choices: [
          {
            index: 0,
            message: { role: 'assistant', content: text, refusal: null },
            logprobs: null,
            finish_reason: finish,
          },
        ],
        usage,
      }),
      first: () => ({ ...head, choices: [delta({ role: 'assistant', content: '' }, null)] }),
      chunk: (text) => ({ ...head, choices: [delta({ content: text }, null)] }),
      last: (finish) => ({ ...head, choices: [delta({}, finish)] }),
      usage: (usage) => ({ ...head, choices: [], usage }),
    },
  )
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

/** The response bodies of one endpoint. */
interface Shapes {
  full(text: string, finish: FinishReason, usage: Usage): unknown
  /** Streaming: the chunk before the first text (chat: the assistant role). */
  first?(): unknown
  chunk(text: string): unknown
  last(finish: FinishReason): unknown
  usage(usage: Usage): unknown
}

async function respond(
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
  const texts = generateText(
    state.backend,
    {
      model: model.id,
      prompt: generation.prompt,
      maxTokens: Math.min(asked, room),
      ...(params.temperature == null ? {} : { temperature: params.temperature }),
      ...(params.top_p == null ? {} : { topP: params.top_p }),
      ...(params.top_k == null ? {} : { topK: params.top_k }),
      ...(params.seed == null ? {} : { seed: params.seed }),
      signal: controller.signal,
    },
    stops,
  )
  const finished = (outcome: { finish: FinishReason; usage: Usage }) =>
    state.logger.debug(
      { model: model.id, stream: params.stream === true, finish: outcome.finish, ...outcome.usage },
      'OpenAI API request served',
    )
  try {
    // Wait for the first text before answering, so a backend that fails at once gets a real status.
    let step = await texts.next()
    if (params.stream !== true) {
      let text = ''
      while (!step.done) {
        text += step.value
        step = await texts.next()
      }
      sendJson(
        res,
        200,
        withFigures(shapes.full(text, step.value.finish, step.value.usage), step.value.meshnet),
      )
      finished(step.value)
      return
    }
    const includeUsage = params.stream_options?.include_usage === true
    // With include_usage, every chunk carries `usage: null` but the last one (as OpenAI sends them).
    const event = (body: unknown) =>
      `data: ${JSON.stringify(includeUsage ? { ...(body as object), usage: null } : body)}\n\n`
    const sse = new SseWriter(res)
    if (shapes.first) await sse.write(event(shapes.first()))
    while (!step.done) {
      if (step.value !== '') await sse.write(event(shapes.chunk(step.value)))
      step = await texts.next()
    }
    let tail = event(withFigures(shapes.last(step.value.finish), step.value.meshnet))
    if (includeUsage) tail += `data: ${JSON.stringify(shapes.usage(step.value.usage))}\n\n`
    sse.end(`${tail}data: [DONE]\n\n`)
    finished(step.value)
  } finally {
    await texts.return(undefined as never)
  }
}

/** A response body with the `meshnet` figures of its generation, when the backend gave them. */
function withFigures(body: unknown, meshnet: MeshnetFigures | undefined): unknown {
  return meshnet === undefined ? body : { ...(body as object), meshnet }
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
): AsyncGenerator<string, { finish: FinishReason; usage: Usage; meshnet?: MeshnetFigures }, undefined> {
  const own = new AbortController()
  const abort = () => own.abort()
  request.signal.addEventListener('abort', abort, { once: true })
  const tokens = backend.generate({ ...request, signal: own.signal })
  let finished = false
  try {
    let held = ''
    let stopped = false
    for (;;) {
      const step = await tokens.next()
      if (step.done) {
        finished = true
        const outcome = step.value
        if (outcome.stopReason === 'abort' && !stopped) {
          throw new BackendUnavailableError('the generation was aborted before it finished')
        }
        if (!stopped && held !== '') yield held
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
      const text = held + step.value.text
      const cut = firstStop(text, stops)
      if (cut !== undefined) {
        stopped = true
        own.abort()
        if (cut > 0) yield text.slice(0, cut)
        continue
      }
      const keep = heldBack(text, stops)
      held = text.slice(text.length - keep)
      if (keep < text.length) yield text.slice(0, text.length - keep)
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
