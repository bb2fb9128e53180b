import { parseWith } from '@meshnet/core'
import type { JobFailedError, JobProtocolError, JobResult } from '@meshnet/protocols'
import { jobRequestSchema } from '@meshnet/protocols'
import type { SDKClient } from '../client.ts'
import type {
  DataLimitExceededError,
  NoNodesFoundError,
  NotConnectedError,
  RequestTimeoutError,
} from '../errors.ts'
import { InvalidRequestError } from '../errors.ts'
import type { ChatRequest, InferenceStream } from '../types.ts'
import { streamJob } from './streamInference.ts'

export type StreamChatParameters = ChatRequest
export type StreamChatReturnType = InferenceStream
/**
 * What the action throws (by `name`); stream errors arrive through the stream and `.result`. A
 * template that refuses the messages is a JobFailedError with `remoteName` `ChatTemplateRenderError`
 * (code ERR_CHAT_TEMPLATE_RENDER); one that does not parse, `ChatTemplateSyntaxError`.
 */
export type StreamChatErrorType =
  | InvalidRequestError
  | NotConnectedError
  | NoNodesFoundError
  | RequestTimeoutError
  | DataLimitExceededError
  | JobFailedError
  | JobProtocolError

export type ChatParameters = ChatRequest
export type ChatReturnType = JobResult
export type ChatErrorType = StreamChatErrorType

/**
 * Streams the assistant's reply to a chat: the node that runs it renders `messages` into the prompt
 * with the model's chat template (with the generation prompt and the model's BOS handling, as its
 * OpenAI API does), so the app needs to know no template. Iterate the returned object for tokens
 * (a token's text is whole characters: a character split over tokens comes with its last one), or
 * await `.result`. Events, retries and cancellation are those of `streamInference`. The messages are
 * checked before anything is sent (InvalidRequestError).
 */
export function streamChat(client: SDKClient, request: StreamChatParameters): StreamChatReturnType {
  const { messages, target, poolId, nodeId, signal, responseFormat, ...job } = request
  // A copy, which the schema checks (from JavaScript, `messages` may be missing).
  const chat = {
    ...job,
    messages: Array.from(messages ?? []),
    ...(responseFormat?.type === 'json'
      ? {
          grammar: {
            parts: [
              {
                type: 'json' as const,
                ...(responseFormat.schema === undefined ? {} : { schema: responseFormat.schema }),
              },
            ],
          },
        }
      : {}),
  }
  return streamJob(
    client,
    {
      ...chat,
      ...(target === undefined ? {} : { target }),
      ...(poolId === undefined ? {} : { poolId }),
      ...(nodeId === undefined ? {} : { nodeId }),
      ...(signal === undefined ? {} : { signal }),
    },
    {
      caller: 'streamChat()',
      check: () => {
        parseWith(
          jobRequestSchema,
          chat,
          'chat request',
          (message, options) =>
            new InvalidRequestError(message, {
              ...options,
              hint: 'messages: 1 to 1024 of { role: system | user | assistant | tool, content: string }',
            }),
        )
      },
    },
  )
}

/** Answers a chat and returns the finished job (its `text` is the reply); see `streamChat`. */
export function chat(client: SDKClient, request: ChatParameters): Promise<ChatReturnType> {
  return streamChat(client, request).result
}
