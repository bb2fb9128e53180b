import { agentFetch, errorMessage } from './api.ts'
import { readEvents } from './sse.ts'

export interface ChatMessage {
  role: 'user' | 'assistant'
  content: string
}

/** Meshnet's own field on the last chunk of a streamed completion: who ran it and how fast. */
export interface MeshnetMeta {
  jobId: string
  mode: string
  members: string[]
  tokensPerSecond: number
  timeToFirstTokenMs: number
}

export interface ChatRequest {
  model: string
  messages: ChatMessage[]
  maxTokens: number
  temperature: number
}

/** One chunk of OpenAI's streamed chat completion, or the error that ends a stream. */
interface ChatChunk {
  choices?: Array<{ delta?: { content?: string | null }; finish_reason?: string | null }>
  meshnet?: MeshnetMeta
  error?: { message?: string }
}

/** The ids of the models the agent serves (`GET /v1/models`). */
export async function listModels(token: string, signal: AbortSignal): Promise<string[]> {
  const res = await agentFetch('/v1/models', token, { signal })
  if (!res.ok) throw new Error(await errorMessage(res))
  const body = (await res.json()) as { data?: Array<{ id?: unknown }> }
  return (body.data ?? []).flatMap((model) => (typeof model.id === 'string' ? [model.id] : []))
}

/**
 * Streams a chat completion (`POST /v1/chat/completions`, `stream: true`): each piece of text goes
 * to `onText` as it arrives. Resolves with Meshnet's figures from the last chunk (null when the
 * agent sent none); rejects with the agent's message when it refuses or fails the request.
 */
export async function streamChat(
  token: string,
  request: ChatRequest,
  onText: (text: string) => void,
  signal: AbortSignal,
): Promise<MeshnetMeta | null> {
  const res = await agentFetch('/v1/chat/completions', token, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
    body: JSON.stringify({
      model: request.model,
      messages: request.messages,
      stream: true,
      max_tokens: request.maxTokens,
      temperature: request.temperature,
    }),
    signal,
  })
  if (!res.ok || res.body === null) throw new Error(await errorMessage(res))
  let meta: MeshnetMeta | null = null
  let failure: string | null = null
  await readEvents(res.body, (event) => {
    if (event.data === '[DONE]' || failure !== null) return
    const chunk = JSON.parse(event.data) as ChatChunk
    if (chunk.error !== undefined) {
      failure = chunk.error.message ?? 'the agent failed the completion'
      return
    }
    const choice = chunk.choices?.[0]
    const text = choice?.delta?.content
    if (typeof text === 'string' && text !== '') onText(text)
    if (choice?.finish_reason != null && chunk.meshnet !== undefined) meta = chunk.meshnet
  })
  if (failure !== null) throw new Error(failure)
  return meta
}
