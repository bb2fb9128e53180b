import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type Logger, silentLogger } from '@meshnet/core'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { type RunningAgent, startAgent } from '../../src/agent/agent.ts'
import type { NodeConfig } from '../../src/config.ts'

// The control API over a real socket: status codes for what clients get wrong, and no stack traces
// in the log for them.
let dir: string
let agent: RunningAgent
let token: string
const errors: unknown[] = []

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-control-api-'))
  const config: NodeConfig = {
    networkId: 'meshnet',
    name: 'api',
    localOnly: true,
    beacons: false,
    mdns: false,
    dht: false,
  }
  const logger = silentLogger()
  logger.error = ((fields: unknown) => {
    errors.push(fields)
  }) as Logger['error']
  agent = await startAgent({
    dataDir: dir,
    config,
    logger,
    parts: () => [
      {
        name: 'echo',
        async start() {},
        async stop() {},
        status: () => ({ echoes: 0 }),
        routes: {
          'POST /echo': (body) => ({ body }),
          'GET /things/:id': (_body, params) => ({ id: params.id }),
        },
      },
    ],
  })
  token = (await readFile(join(dir, 'control.token'), 'utf8')).trim()
})

afterAll(async () => {
  await agent?.stop()
  await rm(dir, { recursive: true, force: true })
})

const call = (path: string, init: RequestInit = {}) =>
  fetch(`http://127.0.0.1:${agent.controlPort}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...init.headers },
  })

it('answers 413 to a body over 64 KiB, and 400 to one that is not JSON', async () => {
  const big = await call('/echo', { method: 'POST', body: JSON.stringify({ pad: 'x'.repeat(70 * 1024) }) })
  expect(big.status).toBe(413)
  expect(((await big.json()) as { error: { code: string } }).error.code).toBe('ERR_TOO_LARGE')
  const bad = await call('/echo', { method: 'POST', body: '{not json' })
  expect(bad.status).toBe(400)
  expect((await call('/echo', { method: 'POST', body: '{"a":1}' })).status).toBe(200)
})

it('passes a path parameter with malformed percent-encoding on as it came, without an error', async () => {
  // Hono decodes what decodes and leaves the rest as sent; the route's own checks (pool ids, node
  // ids) then refuse it. Nothing reaches the error log.
  const res = await call('/things/%E0%A4%A')
  expect(res.status).toBe(200)
  expect(((await res.json()) as { id: string }).id).toBe('%E0%A4%A')
  expect(await (await call('/things/caf%C3%A9')).json()).toEqual({ id: 'café' })
  expect(errors).toEqual([])
})

it("gives one part's status alone, as the whole status has it", () => {
  expect(agent.partStatus('echo')).toEqual({ echoes: 0 })
  expect(agent.status().echo).toEqual(agent.partStatus('echo'))
  expect(agent.partStatus('no-such-part')).toBeUndefined()
})
