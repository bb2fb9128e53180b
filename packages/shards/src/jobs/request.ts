import type { OpenedTokenizer, TokenConstraint } from '@meshnet/engine'
import type { GrammarSpec } from '@meshnet/grammar'
import {
  compileGrammar,
  constraintVocabulary,
  createTokenConstraint,
  type Grammar,
  GrammarSchemaError,
} from '@meshnet/grammar'
import {
  type JobMessage,
  type JobTool,
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

/** A fresh constraint for one run of a job with a `grammar` (a constraint keeps the run's state). */
export type ConstraintFactory = () => TokenConstraint

/**
 * The constraint factory of a request's `grammar` over `tokenizer`'s vocabulary, or undefined
 * without one. JobRefusedError (ERR_GRAMMAR) naming the problem when its schema is not supported.
 */
export function constraintOf(
  request: Pick<ParsedJobRequest, 'grammar' | 'maxTokens'>,
  tokenizer: OpenedTokenizer['tokenizer'],
): ConstraintFactory | undefined {
  const spec = request.grammar
  if (spec === undefined) return undefined
  let grammar: Grammar
  try {
    grammar = compileGrammar(spec)
  } catch (err) {
    if (err instanceof GrammarSchemaError) {
      throw new JobRefusedError('ERR_GRAMMAR', err.message, { cause: err })
    }
    throw err
  }
  const vocabulary = constraintVocabulary(tokenizer)
  return () => createTokenConstraint(grammar, vocabulary, { maxTokens: request.maxTokens })
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
  /** Renders chat messages (and tools) with the model's chat template; absent: this node takes prompts only. */
  renderChat:
    | ((messages: readonly JobMessage[], tools: readonly JobTool[]) => string | Promise<string>)
    | undefined
  /** The grammar of a forced tool call for the served model; absent: tools are refused. */
  toolGrammar?: (tools: readonly JobTool[], choice: ForcedToolChoice) => GrammarSpec | Promise<GrammarSpec>
}

/** A tool choice that makes the model call a tool: any of them, or the one named. */
export type ForcedToolChoice = 'required' | { name: string }

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
  // toolChoice none: the model is not told of the tools.
  const tools = rest.toolChoice === 'none' ? [] : (rest.tools ?? [])
  if (tools.length > 0 && init.toolGrammar === undefined) {
    throw new JobRefusedError('ERR_NO_TOOLS', 'this node does not render tools', {
      hint: "use a Meshnet agent (mesh start), which renders tools with the model's template",
    })
  }
  const choice = rest.toolChoice ?? 'auto'
  const grammar =
    tools.length > 0 && choice !== 'auto' && choice !== 'none'
      ? await init.toolGrammar!(tools, choice)
      : rest.grammar
  const rendered = await init.renderChat(messages, tools)
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
    ...(grammar === undefined ? {} : { grammar }),
    prompt: rendered,
    parseSpecial: true,
    maxTokens: maxTokens ?? Math.min(room, MAX_JOB_TOKENS),
  }
  return { request, promptTokens }
}
