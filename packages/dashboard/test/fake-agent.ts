import {
  bearerMatches,
  type ListeningServer,
  listen,
  type NodeEnv,
  RESPONSE_ALREADY_SENT,
  SseWriter,
} from '@meshnet/http'
import { type Context, Hono } from 'hono'
import type { DashboardJob, DashboardJobEvent, DashboardMember, DashboardState } from '../src/contract.ts'
import { dashboardApp } from '../src/index.ts'

// A stand-in for an agent, for the page alone: the real dashboard routes (dashboardApp) over a
// fixed state, job events the test emits, and an OpenAI-style chat whose answer the test paces.

export const TOKEN = 'page-test-token'
export const MODEL = 'tiny-llama-q8'
export const node = (n: number) => `12D3KooWPageTestMember000000000000000000000000${n}00${n}`
export const RUNNING_JOB = 'b7e1c0de-0000-4000-8000-000000000001'
/** The advice `mesh doctor` gives behind a symmetric NAT without a relay (the state's network). */
export const SYMMETRIC_ADVICE =
  'symmetric NAT and no relay reservation: members behind another NAT cannot reach this node; add a relay (`mesh start --relay <addr>`) or enable UPnP on your router (and `mesh start --upnp`)'

const GiB = 1024 ** 3

function member(position: number, changes: Partial<DashboardMember>): DashboardMember {
  return {
    nodeId: node(position + 1),
    position,
    self: false,
    offeredBytes: 8 * GiB,
    usedBytes: 0,
    shard: null,
    trust: 0.9,
    link: { type: 'lan', rttMs: 1.4, address: `/ip4/192.168.1.${10 + position}/tcp/4001` },
    ...changes,
  }
}

function job(changes: Partial<DashboardJob> & Pick<DashboardJob, 'id'>): DashboardJob {
  return {
    poolId: 'pool-1',
    origin: 'api',
    mode: 'pipeline',
    status: 'completed',
    createdAt: new Date(Date.now() - 60_000).toISOString(),
    members: [node(1), node(2), node(3)],
    tokens: 0,
    text: '',
    tokensPerSecond: 0,
    timeToFirstTokenMs: null,
    hopLatencyMs: null,
    allReduceMs: null,
    bytesMoved: 0,
    failovers: [],
    error: null,
    ...changes,
  }
}

/** Three members splitting 24 layers (one loaded, one loading, one fetching), a running job and a finished one. */
export function fixtureState(): DashboardState {
  const now = Date.now()
  return {
    at: new Date(now).toISOString(),
    node: {
      nodeId: node(1),
      name: 'alpha',
      version: '0.1.0',
      startedAt: new Date(now - 3_600_000).toISOString(),
      api: { host: '127.0.0.1', port: 0 },
    },
    model: { id: MODEL, name: 'Tiny Llama Q8_0', layers: 24, bytes: 9 * GiB, fetch: null },
    network: {
      natType: 'address-and-port-dependent',
      natEvidence:
        'the NAT at 84.17.3.9 gave each of 2 connections a new port (local 40001 seen as 61001): it maps per destination (symmetric NAT), so hole punching will not work',
      publiclyReachable: false,
      relays: [],
      reservedRelays: [],
      upnp: null,
      advice: [{ severity: 'warning', message: SYMMETRIC_ADVICE }],
    },
    rings: [
      {
        poolId: 'pool-1',
        epoch: 3,
        converged: true,
        ready: false,
        planProblem: null,
        layers: 24,
        members: [
          member(0, {
            self: true,
            usedBytes: 3 * GiB,
            trust: 1,
            link: { type: 'self', rttMs: null, address: null },
            shard: { layers: [0, 8], load: 'ready', bytes: 3 * GiB, loadedBytes: 3 * GiB, error: null },
          }),
          member(1, {
            shard: { layers: [8, 16], load: 'loading', bytes: 3 * GiB, loadedBytes: 1.5 * GiB, error: null },
          }),
          member(2, {
            trust: 0.35,
            link: { type: 'relayed', rttMs: 48, address: '/p2p-circuit' },
            shard: {
              layers: [16, 24],
              load: 'fetching',
              bytes: 3 * GiB,
              loadedBytes: 0.5 * GiB,
              error: null,
            },
          }),
        ],
      },
    ],
    pools: [
      {
        poolId: 'pool-1',
        role: 'member',
        admin: true,
        certificateExpiresAt: new Date(now + 29 * 86_400_000 + 3_600_000).toISOString(),
        members: [{ nodeId: node(2), role: 'member', expiresAt: null, revoked: false }],
        pendingRequests: [
          { nodeId: node(4), name: 'delta', requestedAt: new Date(now - 120_000).toISOString() },
        ],
      },
    ],
    jobs: [
      job({ id: RUNNING_JOB, status: 'running', tokens: 2, text: 'Once upon', tokensPerSecond: 9.5 }),
      job({
        id: 'a11d0ne0-0000-4000-8000-000000000002',
        tokens: 64,
        tokensPerSecond: 11.2,
        bytesMoved: 4 * 1024 ** 2,
      }),
    ],
    totals: {
      jobs: 2,
      completed: 1,
      failed: 0,
      tokens: 66,
      failovers: 0,
      meanTokensPerSecond: 11.2,
      meanTimeToFirstTokenMs: 140,
    },
  }
}

/** The final chunk's `meshnet` field of every answer. */
export const ANSWER_META = {
  jobId: 'c4a7-job',
  mode: 'pipeline',
  members: [node(1), node(2), node(3)],
  tokensPerSecond: 12.5,
  timeToFirstTokenMs: 80,
}

export interface FakeAgent {
  url: string
  /** Sends a job event to every open events stream. */
  emit(event: DashboardJobEvent): void
  /** Ends every open events stream (the page reconnects). */
  dropStreams(): void
  /** The bodies of the chat requests so far. */
  chats: unknown[]
  /** Lets the chat answer waiting after its first piece go on. */
  releaseAnswer(): void
  /** Chat streams the client closed before the end (the stop button). */
  abandoned: number
  close(): Promise<void>
}

/**
 * Serves the page from `assets` with the dashboard routes, `GET /v1/models` and a streaming
 * `POST /v1/chat/completions`: "Hello" first, the rest once `releaseAnswer()` is called; a message
 * with "fail" in it ends in an error event, one with "forever" never ends.
 */
export async function startFakeAgent(assets: string): Promise<FakeAgent> {
  const listeners = new Set<(event: DashboardJobEvent) => void>()
  const dashboard = dashboardApp({
    state: fixtureState,
    subscribe(listener) {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
    token: TOKEN,
    assets,
  })
  let release = () => {}
  const app = new Hono<NodeEnv>()
  const fake: Omit<FakeAgent, 'url' | 'close'> = {
    emit: (event) => {
      for (const listener of listeners) listener(event)
    },
    dropStreams: () => dashboard.close(),
    chats: [],
    releaseAnswer: () => release(),
    abandoned: 0,
  }
  const refuse = (c: Context<NodeEnv>) =>
    bearerMatches(c.req.header('authorization'), TOKEN)
      ? undefined
      : c.json({ error: { message: 'Incorrect API key provided.', code: 'invalid_api_key' } }, 401)

  app.get(
    '/v1/models',
    (c) => refuse(c) ?? c.json({ object: 'list', data: [{ id: MODEL, object: 'model' }] }),
  )
  app.post('/v1/chat/completions', async (c) => {
    const refused = refuse(c)
    if (refused) return refused
    const body = (await c.req.json()) as { messages: Array<{ content: string }> }
    fake.chats.push(body)
    const question = body.messages.at(-1)?.content ?? ''
    const sse = new SseWriter(c.env.outgoing)
    c.env.outgoing.on('close', () => {
      if (!c.env.outgoing.writableFinished) fake.abandoned++
    })
    const chunk = (content: string | null, finish: string | null, extra = {}) => ({
      id: 'chatcmpl-1',
      object: 'chat.completion.chunk',
      model: MODEL,
      choices: [{ index: 0, delta: content === null ? {} : { content }, finish_reason: finish }],
      ...extra,
    })
    await sse.send(chunk('Hello', null))
    if (question.includes('forever')) return RESPONSE_ALREADY_SENT
    if (question.includes('fail')) {
      sse.end(
        `data: ${JSON.stringify({ error: { message: 'member 12D3KooW…0003 went away', type: 'server_error' } })}\n\n`,
      )
      return RESPONSE_ALREADY_SENT
    }
    void new Promise<void>((resolve) => {
      release = resolve
    }).then(async () => {
      await sse.send(chunk(' from', null))
      await sse.send(chunk(' the ring.', null))
      await sse.send(chunk(null, 'stop', { meshnet: ANSWER_META }))
      sse.end('data: [DONE]\n\n')
    })
    return RESPONSE_ALREADY_SENT
  })
  app.route('/', dashboard.app)

  const server: ListeningServer = await listen(app)
  return Object.assign(fake, {
    url: `http://127.0.0.1:${server.port}`,
    close: async () => {
      dashboard.close()
      await server.close()
    },
  })
}
