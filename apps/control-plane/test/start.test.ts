import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { controlPlaneFiles, startControlPlane } from '../src/index.ts'
import { basePort } from './control-plane-process.ts'

let dir: string
const blockers: Server[] = []
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-control-plane-start-'))
})
afterEach(async () => {
  await Promise.all(blockers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))))
  await rm(dir, { recursive: true, force: true })
})

async function occupy(port: number): Promise<void> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', resolve)
  })
  blockers.push(server)
}

describe('startControlPlane', () => {
  it('gives PortsInUseError naming the range when every port tried is taken, and leaves the data dir free', async () => {
    const port = basePort()
    await occupy(port)
    await occupy(port + 1)
    await expect(startControlPlane({ dataDir: dir, port, portAttempts: 2 })).rejects.toMatchObject({
      name: 'PortsInUseError',
      message: expect.stringContaining(`ports ${port}–${port + 1} on 127.0.0.1 are all in use`),
    })
    const plane = await startControlPlane({ dataDir: dir, port: 0 })
    await plane.close()
  })

  it('refuses options that make no sense, naming them', async () => {
    await expect(startControlPlane({ dataDir: dir, port: 70_000 })).rejects.toMatchObject({
      name: 'InvalidArgumentError',
      message: expect.stringContaining('port'),
    })
  })

  it('frees the data dir on close: a second start on it works, with the same token', async () => {
    const first = await startControlPlane({ dataDir: dir, port: 0 })
    await first.close()
    await first.close()
    const second = await startControlPlane({ dataDir: dir, port: 0 })
    expect(second.token).toBe(first.token)
    expect(second.tokenFile).toBe(controlPlaneFiles(dir).token)
    await second.close()
  })

  it('tightens a token file others can read, and refuses one that holds no token', async () => {
    const { token } = controlPlaneFiles(dir)
    const first = await startControlPlane({ dataDir: dir, port: 0 })
    await first.close()
    await chmod(token, 0o644)
    const second = await startControlPlane({ dataDir: dir, port: 0 })
    await second.close()
    expect((await stat(token)).mode & 0o777).toBe(0o600)

    await writeFile(token, 'short\n')
    await expect(startControlPlane({ dataDir: dir, port: 0 })).rejects.toMatchObject({
      name: 'CorruptFileError',
    })
    expect(await readFile(token, 'utf8')).toBe('short\n')
  })
})
