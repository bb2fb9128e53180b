import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { silentLogger } from '@meshnet/core'
import { type LaunchedBrowser, launchBrowser, modelDir } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startOpenAiApi } from '../../src/agent/openai-api.ts'
import type { OpenAiApi } from '../../src/agent/openai-types.ts'
import { type EngineBackend, engineBackend } from '../openai-backend.ts'

// CORS on the OpenAI-compatible API: none by default, so a page of another site cannot read the
// answers; the listed origins get them, preflights included (answered before the key check, as
// browsers send no key in one). Checked with raw requests, and in a real Chromium where a page of
// another origin calls the API with fetch.

let models: Awaited<ReturnType<typeof modelDir>>
let backend: EngineBackend
let closed: OpenAiApi
let open: OpenAiApi
let site: Server
let siteOrigin: string
let launched: LaunchedBrowser | undefined
let skip: string | undefined
const KEY = 'sk-cors-test-key'

beforeAll(async () => {
  models = await modelDir()
  const model = await models.model('cors', {
    layers: 2,
    embd: 256,
    heads: 4,
    kvHeads: 2,
    ff: 512,
    vocab: 1000,
  })
  backend = await engineBackend([{ id: 'tiny', modelPath: model }])
  // A page of another origin: a second port on 127.0.0.1 is another origin to a browser.
  site = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' })
    res.end('<!doctype html><title>app</title><p>an app of another origin</p>')
  })
  await new Promise<void>((resolve) => site.listen(0, '127.0.0.1', resolve))
  siteOrigin = `http://127.0.0.1:${(site.address() as AddressInfo).port}`
  closed = await startOpenAiApi({ backend, port: 0, apiKey: KEY, logger: silentLogger() })
  open = await startOpenAiApi({
    backend,
    port: 0,
    apiKey: KEY,
    corsOrigins: [siteOrigin],
    logger: silentLogger(),
  })
  const browser = await launchBrowser()
  if ('skip' in browser) skip = browser.skip
  else launched = browser
})

afterAll(async () => {
  await launched?.close()
  await closed?.close()
  await open?.close()
  await new Promise((resolve) => site?.close(resolve))
  await backend?.dispose()
  await models?.cleanup()
})

const url = (api: OpenAiApi, path: string) => `http://127.0.0.1:${api.port}${path}`

describe('CORS', () => {
  it('answers a listed origin’s preflight without the key, and its requests with the origin allowed', async () => {
    const preflight = await fetch(url(open, '/v1/chat/completions'), {
      method: 'OPTIONS',
      headers: {
        origin: siteOrigin,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization, content-type',
      },
    })
    expect(preflight.status).toBe(204)
    expect(preflight.headers.get('access-control-allow-origin')).toBe(siteOrigin)
    expect(preflight.headers.get('access-control-allow-headers')).toContain('authorization')
    expect(preflight.headers.get('access-control-allow-methods')).toContain('POST')
    const models = await fetch(url(open, '/v1/models'), {
      headers: { origin: siteOrigin, authorization: `Bearer ${KEY}` },
    })
    expect(models.status).toBe(200)
    expect(models.headers.get('access-control-allow-origin')).toBe(siteOrigin)
    // The key is still needed: CORS lets a page read answers, it does not let it in.
    const refused = await fetch(url(open, '/v1/models'), { headers: { origin: siteOrigin } })
    expect(refused.status).toBe(401)
    expect(refused.headers.get('access-control-allow-origin')).toBe(siteOrigin)
  })

  it('gives no CORS header to other origins, nor to anyone when no origin is listed', async () => {
    for (const [api, origin] of [
      [open, 'http://evil.example'],
      [closed, siteOrigin],
    ] as const) {
      const response = await fetch(url(api, '/v1/models'), {
        headers: { origin, authorization: `Bearer ${KEY}` },
      })
      expect(response.headers.get('access-control-allow-origin')).toBeNull()
      const preflight = await fetch(url(api, '/v1/models'), {
        method: 'OPTIONS',
        headers: { origin, 'access-control-request-method': 'GET' },
      })
      expect(preflight.headers.get('access-control-allow-origin')).toBeNull()
    }
  })

  it('lets a page of a listed origin stream a chat in Chromium, and keeps the answer from others', async (context) => {
    if (skip) return context.skip(skip)
    const page = await launched!.browser.newPage()
    try {
      await page.goto(siteOrigin)
      const call = (api: OpenAiApi) =>
        page.evaluate(
          `fetch(${JSON.stringify(url(api, '/v1/chat/completions'))}, {
            method: 'POST',
            headers: { authorization: 'Bearer ${KEY}', 'content-type': 'application/json' },
            body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, stream: true }),
          }).then((r) => r.text()).then((text) => ({ ok: true, text }), (err) => ({ ok: false, text: String(err) }))`,
        ) as Promise<{ ok: boolean; text: string }>
      const allowed = await call(open)
      expect(allowed.ok, allowed.text).toBe(true)
      expect(allowed.text).toContain('data: [DONE]')
      const blocked = await call(closed)
      expect(blocked.ok).toBe(false)
      expect(blocked.text).toContain('TypeError')
    } finally {
      await page.close()
    }
  })
})
