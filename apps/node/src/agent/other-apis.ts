import type { Logger } from '@meshnet/core'
import type { NodeEnv } from '@meshnet/http'
import type { Hono } from 'hono'
import { embeddingsApi } from './embeddings.ts'
import type { CompletionBackend } from './openai-types.ts'

/** What the APIs of other clients run on: the OpenAI API's backend (the agent's job runner). */
export interface OtherApiServices {
  backend: CompletionBackend
  logger: Logger
}

/**
 * The APIs of other clients, served beside the OpenAI-compatible one on the same runner and behind
 * the same key (`Authorization: Bearer <key>` or `x-api-key: <key>`): embeddings
 * (`/v1/embeddings`, Ollama's `/api/embed`).
 */
export function otherApis(services: OtherApiServices): Hono<NodeEnv>[] {
  return [embeddingsApi(services)]
}
