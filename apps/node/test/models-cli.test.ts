import { spawn } from 'node:child_process'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { MESH_BIN, modelDir, type RangeServer, runMesh, startRangeServer } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

// `mesh model-add`, `model-ls` and `model-rm` run as real processes on real data dirs; URLs are
// served by a local HTTP range server. (`mesh model-pull` needs a running agent: agent tests.)

const CHUNK_MIB = '0.0625' // 64 KiB chunks: a small model still has several per tensor

let models: Awaited<ReturnType<typeof modelDir>>
let path: string
let fileBytes: number
let http: RangeServer
let root: string

const mesh = (dataDir: string, ...args: string[]) => runMesh(['--data-dir', join(root, dataDir), ...args])

/** `mesh --json ...`, parsed; fails the test with stderr when the command fails. */
async function meshJson(dataDir: string, ...args: string[]): Promise<Record<string, unknown>> {
  const result = await mesh(dataDir, '--json', ...args)
  expect(result.code, result.stderr).toBe(0)
  return JSON.parse(result.stdout) as Record<string, unknown>
}

/**
 * A far server: answers every request like `upstream` (ranges included), `delayMs` later. (The range
 * server's throttle does not slow answers shorter than its 1 MiB reads, which chunk reads are.)
 */
async function startSlowProxy(
  upstream: string,
  delayMs: number,
): Promise<{ url: string; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    void (async () => {
      await sleep(delayMs)
      const answer = await fetch(upstream, { headers: req.headers.range ? { range: req.headers.range } : {} })
      const body = Buffer.from(await answer.arrayBuffer())
      res.writeHead(answer.status, Object.fromEntries(answer.headers)).end(body)
    })().catch(() => res.destroy())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/weights.gguf`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-models-cli-'))
  models = await modelDir()
  path = await models.model('weights', {
    layers: 6,
    embd: 256,
    heads: 4,
    kvHeads: 2,
    ff: 512,
    vocab: 1000,
    type: 'Q8_0',
  })
  fileBytes = (await stat(path)).size
  http = await startRangeServer(path)
})

afterAll(async () => {
  await http?.close()
  await models?.cleanup()
  await rm(root, { recursive: true, force: true })
})

describe('mesh model-add, model-ls, model-rm', () => {
  let fileId: string

  it('records a whole file in place and prints its id; adding it again answers with the same record', async () => {
    const added = await meshJson('a', 'model-add', path, '--chunk-mib', CHUNK_MIB)
    expect(added).toMatchObject({
      name: 'weights.gguf',
      kind: 'file',
      path,
      fileBytes,
      chunkBytes: 64 * 1024,
      layers: 6,
      complete: true,
      alreadyRecorded: false,
    })
    expect(added.id).toMatch(/^[0-9a-f]{64}$/)
    expect(added.chunks as number).toBeGreaterThan(added.pieces as number)
    fileId = added.id as string

    const again = await mesh('a', 'model-add', path, '--chunk-mib', CHUNK_MIB)
    expect(again.code, again.stderr).toBe(0)
    expect(again.stdout).toContain(`Already recorded: model ${fileId}`)
    expect(again.stdout).toContain('not copied')
    expect(await meshJson('a', 'model-add', path)).toMatchObject({ id: fileId, alreadyRecorded: true })
  })

  it('model-ls lists the file complete, with every layer', async () => {
    const { models: listed } = (await meshJson('a', 'model-ls')) as { models: unknown[] }
    expect(listed).toEqual([
      expect.objectContaining({
        id: fileId,
        kind: 'file',
        fileBytes,
        complete: true,
        completeLayers: [[0, 6]],
      }),
    ])
    const table = await mesh('a', 'model-ls')
    expect(table.code, table.stderr).toBe(0)
    const row = table.stdout.split('\n').find((line) => line.startsWith(fileId.slice(0, 12)))
    expect(row).toMatch(/weights\.gguf\s+file\s+.*\(100%\)\s+all$/)
  })

  it('records a URL as a partial model: the same id as the file at the same chunk size, nothing held', async () => {
    const before = http.bytesServed()
    const added = await meshJson('b', 'model-add', http.url, '--chunk-mib', CHUNK_MIB)
    expect(added).toMatchObject({
      id: fileId,
      name: 'weights.gguf',
      kind: 'partial',
      fileBytes,
      heldBytes: 0,
      complete: false,
      sourceUrl: http.url,
      alreadyRecorded: false,
    })
    // Read once to hash it (and the header's first megabyte once more to parse it), no more; what
    // is kept is a sparse file of the model's size.
    expect(http.bytesServed() - before).toBeLessThanOrEqual(fileBytes + 2 ** 20 + 64 * 1024)
    expect((await stat(added.path as string)).size).toBe(fileBytes)

    const table = await mesh('b', 'model-ls')
    const row = table.stdout.split('\n').find((line) => line.startsWith(fileId.slice(0, 12)))
    expect(row).toMatch(/partial\s+.*0 B \(0%\)\s+none\s+http:\/\/127\.0\.0\.1/)
  })

  it('model-rm deletes a partial model’s file, and only forgets a whole file of the user’s', async () => {
    const partial = (await meshJson('b', 'model-ls')).models as Array<{ path: string }>
    const removed = await mesh('b', 'model-rm', fileId.slice(0, 12))
    expect(removed.code, removed.stderr).toBe(0)
    expect(removed.stdout).toContain(`Removed model ${fileId.slice(0, 12)}`)
    await expect(stat(partial[0]!.path)).rejects.toThrow(/ENOENT/)
    const empty = await mesh('b', 'model-ls')
    expect(empty.stdout).toContain('mesh model-add <file.gguf|url>')

    const forgot = await meshJson('a', 'model-rm', 'weights.gguf')
    expect(forgot).toMatchObject({ id: fileId, kind: 'file', fileDeleted: false })
    expect((await stat(path)).size).toBe(fileBytes)
    expect((await meshJson('a', 'model-ls')).models).toEqual([])
    // Forgotten, not lost: adding the file again records it under the same id.
    const human = await mesh('a', 'model-add', path, '--chunk-mib', CHUNK_MIB)
    expect(human.stdout).toContain(`Recorded: model ${fileId}`)
    const gone = await mesh('a', 'model-rm', fileId)
    expect(gone.stdout).toMatch(/Forgot model .*left in place/)
  })

  it('names the problem with a missing file, a file that is not GGUF, a bad --chunk-mib, a bad URL, an unknown model', async () => {
    const text = join(root, 'notes.gguf')
    await writeFile(text, 'these are not model weights\n'.repeat(10))
    const badChunks = ['3', '32', '0.01', 'four']
    const [missing, notGguf, notFound, scheme, unknown, json, ...chunks] = await Promise.all([
      mesh('c', 'model-add', join(root, 'nope.gguf')),
      mesh('c', 'model-add', text),
      mesh('c', 'model-add', `${http.url}.missing`),
      mesh('c', 'model-add', 'ftp://example.com/m.gguf'),
      mesh('c', 'model-rm', 'no-such-model'),
      mesh('c', '--json', 'model-rm', 'no-such-model'),
      ...badChunks.map((bad) => mesh('c', 'model-add', path, '--chunk-mib', bad)),
    ])
    for (const result of [missing, notGguf, notFound, scheme, unknown, json, ...chunks])
      expect(result!.code).toBe(1)
    expect(missing!.stderr).toContain(`model file ${join(root, 'nope.gguf')} does not exist`)
    expect(notGguf!.stderr).toContain(text)
    expect(notGguf!.stderr).toMatch(/not a (valid )?GGUF/)
    expect(notFound!.stderr).toContain(`${http.url}.missing answered 404`)
    expect(scheme!.stderr).toContain('ftp:// URLs are not supported')
    expect(unknown!.stderr).toContain("no model 'no-such-model' on this node")
    expect(JSON.parse(json!.stdout).error).toMatchObject({ name: 'UnknownModelError' })
    for (const [i, bad] of badChunks.entries()) {
      expect(chunks[i]!.stderr).toContain(`--chunk-mib "${bad}": must be`)
    }
    // Nothing of the failures was recorded.
    expect((await meshJson('c', 'model-ls')).models).toEqual([])
  })

  it('prints progress lines while it reads a slow URL, and Ctrl-C stops it with nothing recorded', async () => {
    // 100 ms before every answer: about 8 s for the model's 70-odd chunks of 64 KiB.
    const slow = await startSlowProxy(http.url, 100)
    try {
      const child = spawn(
        process.execPath,
        [
          '--conditions=meshnet-source',
          MESH_BIN,
          '--data-dir',
          join(root, 'd'),
          'model-add',
          slow.url,
          '--chunk-mib',
          CHUNK_MIB,
        ],
        { env: { ...process.env, MESH_LOG: '' }, stdio: ['ignore', 'pipe', 'pipe'] },
      )
      let stderr = ''
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
      await new Promise<void>((resolve, reject) => {
        child.stderr.on('data', (chunk: Buffer) => {
          stderr += chunk.toString()
          if (/reading weights\.gguf: \d+% \(.* of .*, .*\/s, ETA .*\)/.test(stderr)) resolve()
        })
        void exited.then(() => reject(new Error(`mesh exited before showing progress: ${stderr}`)))
      })
      child.kill('SIGINT')
      expect(await exited).toBe(1)
      expect(stderr).toContain(`interrupted; ${slow.url} was not recorded`)
    } finally {
      await slow.close()
    }
    expect((await meshJson('d', 'model-ls')).models).toEqual([])
  })
})
