import type { OpenedTokenizer } from '@meshnet/engine'
import {
  type JobMessage,
  type jobRequestSchema,
  MAX_JOB_PROMPT_CHARS,
  MAX_JOB_TOKENS,
} from '@meshnet/protocols'
import type { z } from 'zod'
import { JobRefusedError } from './errors.ts'

/** A job request as the job schema parsed it: a prompt, or chat messages. */
export type JobRequestFields = z.output<typeof jobRequestSchema>

/** A job request ready to run: its prompt as text (a chat's messages rendered) and its budget settled. */
export type ParsedJobRequest = Omit<JobRequestFields, 'prompt' | 'messages' | 'maxTokens'> & {
  prompt: string
  maxTokens: number
}

/** The sampling options of a request, without the unset ones. */
export function samplingOf(
  request: Pick<
    JobRequestFields,
    'temperature' | 'topK' | 'topP' | 'seed' | 'presencePenalty' | 'frequencyPenalty'
  >,
) {
  return {
    ...(request.temperature === undefined ? {} : { temperature: request.temperature }),
    ...(request.topK === undefined ? {} : { topK: request.topK }),
    ...(request.topP === undefined ? {} : { topP: request.topP }),
    ...(request.seed === undefined ? {} : { seed: request.seed }),
    ...(request.presencePenalty === undefined ? {} : { presencePenalty: request.presencePenalty }),
    ...(request.frequencyPenalty === undefined ? {} : { frequencyPenalty: request.frequencyPenalty }),
  }
}

export interface PrepareJobInit {
  tokenizer: OpenedTokenizer['tokenizer']
  /** Tokens of context a job has here: prompt plus completion. */
  contextSize: number
  /** Renders chat messages with the model's chat template; absent: this node takes prompts only. */
  renderChat: ((messages: readonly JobMessage[]) => string | Promise<string>) | undefined
}

/**
 * Turns a parsed request into what the runners take: a chat's `messages` rendered into the prompt
 * (with the model's chat template, control-token text parsed as those tokens, as the OpenAI API
 * does), the prompt tokenized (with BOS when the model adds it), and a chat's `maxTokens`, when
 * absent, the rest of the context (OpenAI's chat default). JobRefusedError when this node cannot
 * render chats or the chat leaves no room in the context.
 */
export async function prepareJobRequest(
  parsed: JobRequestFields,
  init: PrepareJobInit,
): Promise<{ request: ParsedJobRequest; promptTokens: number[] }> {
  const { messages, prompt, maxTokens, ...rest } = parsed
  if (messages === undefined) {
    // The schema lets no prompt job through without a prompt and its maxTokens.
    const request = { ...rest, prompt: prompt!, maxTokens: maxTokens! }
    const promptTokens = init.tokenizer.tokenize(request.prompt, {
      addSpecial: true,
      parseSpecial: request.parseSpecial,
    })
    return { request, promptTokens }
  }
  if (init.renderChat === undefined) {
    throw new JobRefusedError('ERR_NO_CHAT_TEMPLATE', 'this node takes prompts only, not chat messages', {
      hint: "send a prompt rendered with the model's chat template (with parseSpecial), or use a Meshnet agent (mesh start), which renders chats",
    })
  }
  const rendered = await init.renderChat(messages)
  if (rendered.length > MAX_JOB_PROMPT_CHARS) {
    throw new JobRefusedError(
      'ERR_PROMPT_TOO_LONG',
      `the chat renders to a prompt of ${rendered.length} characters; a job takes at most ${MAX_JOB_PROMPT_CHARS}`,
      { hint: 'send fewer or shorter messages' },
    )
  }
  const promptTokens = init.tokenizer.tokenize(rendered, { addSpecial: true, parseSpecial: true })
  const room = init.contextSize - promptTokens.length
  if (room <= 0) {
    throw new JobRefusedError(
      'ERR_CONTEXT_LENGTH',
      `the messages take ${promptTokens.length} tokens of the model's ${init.contextSize}, which leaves no room for a reply`,
      { hint: 'send fewer or shorter messages' },
    )
  }
  const request = {
    ...rest,
    prompt: rendered,
    parseSpecial: true,
    maxTokens: maxTokens ?? Math.min(room, MAX_JOB_TOKENS),
  }
  return { request, promptTokens }
}
