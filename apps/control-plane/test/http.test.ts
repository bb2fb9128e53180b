import { request } from 'node:http'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { MAX_BODY_BYTES } from '../src/index.ts'
import { startTestPlane, type TestPlane } from './helpers.ts'

let t: TestPlane
beforeEach(async () => {
  t = await startTestPlane()
})
afterEach(async () => {
  await t.stop()
})

type ErrorBody = { error: { code: string; message: string } }

describe('auth', () => {
  it('answers /health without a token', async () => {
    t.clock.advance(1234)
    const health = await t.api('GET', '/health', undefined, { token: null })
    expect(health.status).toBe(200)
    expect(health.body).toEqual({ ok: true, version: '0.1.0', uptimeMs: 1234 })
  })

  it('refuses reads and writes with a missing or wrong token (401), even on unknown routes', async () => {
    for (const [method, path] of [
      ['GET', '/v1/devices'],
      ['GET', '/v1/stats'],
      ['POST', '/v1/jobs'],
      ['GET', '/v1/nowhere'],
    ] as const) {
      const body = method === 'POST' ? {} : undefined
      const missing = await t.api<ErrorBody>(method, path, body, { token: null })
      expect(missing.status).toBe(401)
      expect(missing.body.error.code).toBe('ERR_UNAUTHORIZED')
      expect(missing.headers.get('www-authenticate')).toMatch(/^Bearer/)
      const wrong = await t.api<ErrorBody>(method, path, body, { token: `${t.plane.token.slice(0, -1)}x` })
      expect(wrong.status).toBe(401)
    }
  })

  it('answers 404 for an unknown route and 405 with Allow for a known path and wrong method', async () => {
    expect((await t.api<ErrorBody>('GET', '/v1/nowhere')).body.error.code).toBe('ERR_NOT_FOUND')
    const wrong = await t.api<ErrorBody>('DELETE', '/v1/stats')
    expect(wrong.status).toBe(405)
    expect(wrong.headers.get('allow')).toBe('GET')
  })
})

describe('request bodies', () => {
  it('refuses a body over 64 KiB with 413', async () => {
    const big = await t.api<ErrorBody>('POST', '/v1/jobs', {
      prompt: 'x'.repeat(MAX_BODY_BYTES),
      maxTokens: 1,
    })
    expect(big.status).toBe(413)
    expect(big.body.error.code).toBe('ERR_TOO_LARGE')
  })

  it('refuses a chunked body that grows over 64 KiB with 413', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(
        `${t.plane.url}/v1/jobs`,
        { method: 'POST', headers: { authorization: `Bearer ${t.plane.token}` } },
        (res) => {
          res.resume()
          resolve(res.statusCode!)
        },
      )
      req.on('error', reject)
      for (let i = 0; i < 5; i++) req.write('x'.repeat(16 * 1024))
      req.end()
    })
    expect(status).toBe(413)
  })

  it('refuses a body that is not JSON with 400 saying so', async () => {
    const bad = await t.api<ErrorBody>('POST', '/v1/jobs', undefined, { raw: '{"prompt": "hi",' })
    expect(bad.status).toBe(400)
    expect(bad.body.error.code).toBe('ERR_BAD_JSON')
    expect(bad.body.error.message).toMatch(/^request body is not valid JSON: .+/)
  })

  it('refuses a missing body with 400 naming what was expected', async () => {
    const none = await t.api<ErrorBody>('POST', '/v1/jobs')
    expect(none.status).toBe(400)
    expect(none.body.error.message).toMatch(/^invalid request body: .*expected object/)
  })
})
