import type { Logger } from '@meshnet/core'
import type { NodeEnv } from '@meshnet/http'
import type { Hono } from 'hono'
import { anthropicApi } from './anthropic-api.ts'
import { embeddingsApi } from './embeddings.ts'
import { ollamaApi } from './ollama-api.ts'
import type { CompletionBackend } from './openai-types.ts'

/** What the APIs of other clients run on: the OpenAI API's backend (the agent's job runner). */
export interface OtherApiServices {
  backend: CompletionBackend
  logger: Logger
}

/**
 * The APIs of other clients, served beside the OpenAI-compatible one on the same runner and behind
 * the same key (`Authorization: Bearer <key>` or `x-api-key: <key>`): Ollama's (`/api/*`) and
 * Anthropic's Messages API (`/v1/messages`). See docs/other-apis.md.
 */
export function otherApis(services: OtherApiServices): Hono<NodeEnv>[] {
  return [ollamaApi(services), anthropicApi(services), embeddingsApi(services)]
}
