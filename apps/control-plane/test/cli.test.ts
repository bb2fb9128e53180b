import { mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import {
  basePort,
  type ControlPlaneProcess,
  runControlPlane,
  startControlPlaneProcess,
} from './control-plane-process.ts'

let dir: string
const running: ControlPlaneProcess[] = []
const blockers: Server[] = []

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-control-plane-cli-'))
})
afterEach(async () => {
  await Promise.all(running.splice(0).map((p) => p.stop('SIGKILL')))
  await Promise.all(blockers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))))
  await rm(dir, { recursive: true, force: true })
})

async function start(args: string[]): Promise<ControlPlaneProcess> {
  const plane = await startControlPlaneProcess(args)
  running.push(plane)
  return plane
}

/** Holds a TCP port on 127.0.0.1 so that the control plane finds it taken. */
async function occupy(port: number): Promise<void> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', resolve)
  })
  blockers.push(server)
}

interface Started {
  url: string
  port: number
  tokenFile: string
}

describe('mesh-control-plane', () => {
  it('prints help that names the defaults and how to serve the LAN', async () => {
    const help = await runControlPlane(['--help'])
    expect(help.code).toBe(0)
    expect(help.stdout).toContain('Usage: mesh-control-plane [options]')
    for (const text of [
      '--port <port>',
      'default 8080',
      '--host <address>',
      '127.0.0.1',
      '0.0.0.0',
      '--data-dir',
    ]) {
      expect(help.stdout).toContain(text)
    }
  })

  it('prints its version', async () => {
    const version = await runControlPlane(['--version'])
    expect(version).toMatchObject({ code: 0, stdout: '0.1.0\n' })
  })

  it('refuses a bad flag naming it, without a stack trace', async () => {
    const bad = await runControlPlane(['--port', 'eighty', '--data-dir', dir])
    expect(bad.code).toBe(1)
    expect(bad.stderr).toContain('--port must be a number')
    expect(bad.stderr).not.toMatch(/\n\s+at /)
  })

  it('serves on 127.0.0.1, keeps one 0600 token across restarts, logs to its file and stops on SIGTERM', async () => {
    const port = basePort()
    const first = await start(['--data-dir', dir, '--port', String(port), '--json'])
    const info = JSON.parse(first.firstLine) as Started
    expect(info).toEqual({
      url: `http://127.0.0.1:${info.port}`,
      port: info.port,
      tokenFile: join(dir, 'control-plane.token'),
    })
    expect(info.port).toBeGreaterThanOrEqual(port)
    expect((await stat(info.tokenFile)).mode & 0o777).toBe(0o600)
    const token = (await readFile(info.tokenFile, 'utf8')).trim()
    const health = await fetch(`${info.url}/health`)
    expect(await health.json()).toMatchObject({ ok: true, version: '0.1.0' })
    const devices = await fetch(`${info.url}/v1/devices`, { headers: { authorization: `Bearer ${token}` } })
    expect(devices.status).toBe(200)
    expect((await fetch(`${info.url}/v1/devices`)).status).toBe(401)

    expect(await first.stop('SIGTERM')).toBe(0)
    expect(await readFile(join(dir, 'logs', 'control-plane.log'), 'utf8')).toContain('control plane stopped')

    const second = await start(['--data-dir', dir, '--port', String(port), '--json'])
    expect(JSON.parse(second.firstLine).tokenFile).toBe(info.tokenFile)
    expect((await readFile(info.tokenFile, 'utf8')).trim()).toBe(token)
    expect(await second.stop('SIGINT')).toBe(0)
  })

  it('refuses a second control plane on the same data dir', async () => {
    const port = basePort()
    const first = await start(['--data-dir', dir, '--port', String(port), '--json'])
    const second = await runControlPlane(['--data-dir', dir, '--port', String(port), '--json'])
    expect(second.code).toBe(1)
    expect(JSON.parse(second.stdout)).toMatchObject({
      error: { name: 'DataDirInUseError', code: 'ERR_DATA_DIR_IN_USE' },
    })
    expect(JSON.parse(second.stdout).error.message).toContain(`in use by pid ${first.process.pid}`)
    // The first one is unharmed.
    expect((await fetch(`${JSON.parse(first.firstLine).url}/health`)).status).toBe(200)
  })

  it('moves to the next free port when its port is taken, and says so', async () => {
    const port = basePort()
    await occupy(port)
    const a = await start(['--data-dir', join(dir, 'a'), '--port', String(port)])
    const aPort = Number(/Port:\s+(\d+)/.exec(a.output().stdout)![1])
    expect(aPort).toBeGreaterThan(port)
    expect(aPort).toBeLessThanOrEqual(port + 99)
    expect(a.firstLine).toBe(
      `Meshnet control plane listening on http://127.0.0.1:${aPort} (${port} was taken) (Ctrl+C to stop)`,
    )
    const b = await start(['--data-dir', join(dir, 'b'), '--port', String(port), '--json'])
    const bPort = (JSON.parse(b.firstLine) as Started).port
    expect(bPort).toBeGreaterThan(aPort)
    expect((await fetch(`http://127.0.0.1:${bPort}/health`)).status).toBe(200)
    expect(await a.stop()).toBe(0)
    expect(a.output().stdout).toContain('Control plane stopped')
  })
})
