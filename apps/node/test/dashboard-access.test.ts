import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { DashboardJobEvent, DashboardState } from '@meshnet/dashboard'
import { type AgentProcess, createModel, runMesh, startAgentProcess } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

// Who may read the dashboard, and what its events stream carries, on a real `mesh start` process
// without a browser: the page's data and (without --api-port) the OpenAI API need the token that
// `mesh dashboard` prints; the stream sends the state, then a job's events as it runs.

let root: string
let model: string
let agent: AgentProcess
let links: { url: string; chat: string; token: string }
let base: string

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-dashboard-access-'))
  model = join(root, 'model.gguf')
  await createModel(model, { layers: 2, embd: 256, heads: 4, vocab: 1000, type: 'Q8_0', seed: 3 })
  agent = await startAgentProcess(join(root, 'A'), [
    '--local-only',
    '--no-beacons',
    '--model',
    model,
    '--threads',
    '1',
  ])
  const printed = await runMesh(['dashboard', '--json', '--data-dir', join(root, 'A')])
  expect(printed.code, printed.stderr).toBe(0)
  links = JSON.parse(printed.stdout)
  base = new URL(links.url).origin
}, 60_000)

afterAll(async () => {
  await agent?.stop()
  await rm(root, { recursive: true, force: true })
})

const bearer = (token: string) => ({ headers: { authorization: `Bearer ${token}` } })

describe('dashboard access', () => {
  it('prints a loopback link whose fragment carries the token', () => {
    const url = new URL(links.url)
    expect(url.hostname).toBe('127.0.0.1')
    expect(url.hash).toBe(`#token=${links.token}`)
    expect(new URL(links.chat).pathname).toBe('/chat')
  })

  it('serves the page to anyone on this machine and its data only with the token', async () => {
    expect((await fetch(`${base}/api/dashboard/state`)).status).toBe(401)
    expect((await fetch(`${base}/api/dashboard/state`, bearer('not-the-token'))).status).toBe(401)
    const state = (await (
      await fetch(`${base}/api/dashboard/state`, bearer(links.token))
    ).json()) as DashboardState
    expect(state.model?.name).toBe('model.gguf')
    expect(state.node.api?.port).toBe(Number(new URL(base).port))
    // Without --api-port nobody asked for an open API: it takes the dashboard's token too.
    expect((await fetch(`${base}/v1/models`)).status).toBe(401)
    expect((await fetch(`${base}/v1/models`, bearer(links.token))).status).toBe(200)
    expect((await fetch(`${base}/events`, bearer(links.token))).status).toBe(404)
  })

  it('streams the state, then each event of a job as it runs', async () => {
    const controller = new AbortController()
    const response = await fetch(`${base}/api/dashboard/events`, {
      ...bearer(links.token),
      signal: controller.signal,
    })
    expect(response.headers.get('content-type')).toContain('text/event-stream')
    const events: Array<{ event: string; data: unknown }> = []
    const reading = (async () => {
      const decoder = new TextDecoder()
      let buffer = ''
      for await (const chunk of response.body!) {
        buffer += decoder.decode(chunk as Uint8Array, { stream: true })
        for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
          const block = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          const event = /^event: (.*)$/m.exec(block)?.[1] ?? 'message'
          const data = /^data: (.*)$/m.exec(block)?.[1]
          if (data !== undefined) events.push({ event, data: JSON.parse(data) })
          if (events.some((e) => e.event === 'job' && (e.data as DashboardJobEvent).type === 'end')) return
        }
      }
    })()
    const job = await runMesh([
      'inference',
      '--prompt',
      'Hello there',
      '--max-tokens',
      '6',
      '--json',
      '--data-dir',
      join(root, 'A'),
    ])
    expect(job.code, job.stderr).toBe(0)
    const result = JSON.parse(job.stdout) as { jobId: string; tokens: number[]; text: string }
    await reading
    controller.abort()
    expect(events[0]!.event).toBe('state')
    const ofJob = events
      .filter((e) => e.event === 'job')
      .map((e) => e.data as DashboardJobEvent)
      .filter((e) => ('job' in e ? e.job.id : e.jobId) === result.jobId)
    expect(ofJob.map((e) => e.type)).toEqual(['start', 'members', ...result.tokens.map(() => 'token'), 'end'])
    const tokens = ofJob.filter((e) => e.type === 'token')
    expect(tokens.map((e) => e.text).join('')).toBe(result.text)
    const end = ofJob.at(-1) as Extract<DashboardJobEvent, { type: 'end' }>
    expect(end.job).toMatchObject({
      status: 'completed',
      tokens: result.tokens.length,
      origin: 'cli',
      mode: 'single',
    })
  })

  it('serves no dashboard with --no-dashboard, and says so', async () => {
    const other = await startAgentProcess(join(root, 'B'), ['--local-only', '--no-beacons', '--no-dashboard'])
    try {
      const printed = await runMesh(['dashboard', '--data-dir', join(root, 'B')])
      expect(printed.code).not.toBe(0)
      expect(printed.stderr).toContain('--no-dashboard')
    } finally {
      await other.stop()
    }
  })
})
