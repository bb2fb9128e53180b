/**
 * @packageDocumentation
 * One HTTP stack for Meshnet's local APIs (the agent's control API, its OpenAI-compatible API and
 * the control plane): Hono routes on Node through @hono/node-server, one loopback listener, one
 * constant-time bearer check, one capped JSON body reader and one server-sent-events writer.
 * Each server keeps its own error shape; routes that stream write to the raw Node response and
 * return `RESPONSE_ALREADY_SENT`.
 */
export { bearerMatches } from './auth.ts'
export type { BodyErrors } from './body.ts'
export { readJsonBody } from './body.ts'
export type { ListeningServer, NodeEnv } from './server.ts'
export { listen, nodeServer, RESPONSE_ALREADY_SENT } from './server.ts'
export { SseWriter, writeStreamed } from './sse.ts'
