import { execFile } from 'node:child_process'
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Agent, runMesh, startAgent } from './agents.ts'

// examples/sdk-app installed the way a third-party app installs it: every @meshnet package it needs
// is built (tsup) and packed (`pnpm pack`), the example is copied out of the repository and installed
// with pnpm from the npm registry plus those tarballs, then run with plain `node` (no meshnet-source
// condition, so @meshnet/sdk resolves to the packed dist) against a real agent on 127.0.0.1.

const exec = promisify(execFile)
const repo = join(import.meta.dirname, '..', '..', '..')
let root: string
let app: string
let agent: Agent

/** The workspace packages @meshnet/sdk needs, dependencies first. */
async function meshnetClosure(name: string, seen = new Set<string>()): Promise<string[]> {
  const dir = name.replace('@meshnet/', '')
  const pkg = JSON.parse(await readFile(join(repo, 'packages', dir, 'package.json'), 'utf8')) as {
    dependencies?: Record<string, string>
  }
  const order: string[] = []
  for (const dep of Object.keys(pkg.dependencies ?? {}).filter((d) => d.startsWith('@meshnet/'))) {
    if (seen.has(dep)) continue
    seen.add(dep)
    order.push(...(await meshnetClosure(dep, seen)))
  }
  return [...order, name]
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-sdk-app-'))
  const env = { ...process.env, TURBO_TELEMETRY_DISABLED: '1', TURBO_NO_UPDATE_NOTIFIER: '1' }
  const packages = await meshnetClosure('@meshnet/sdk')
  await exec(
    join(repo, 'node_modules', '.bin', 'turbo'),
    ['run', 'build', '--filter=@meshnet/sdk...', '--output-logs=errors-only'],
    {
      cwd: repo,
      env,
      timeout: 300_000,
    },
  )
  const tarballs = join(root, 'tarballs')
  await mkdir(tarballs)
  const packed: Record<string, string> = {}
  for (const name of packages) {
    const before = new Set(await readdir(tarballs))
    await exec('pnpm', ['pack', '--pack-destination', tarballs], {
      cwd: join(repo, 'packages', name.replace('@meshnet/', '')),
      env,
    })
    const file = (await readdir(tarballs)).find((f) => !before.has(f))
    if (file === undefined) throw new Error(`pnpm pack of ${name} wrote no tarball`)
    packed[name] = `file:${join(tarballs, file)}`
  }

  app = join(root, 'app')
  await mkdir(app)
  await copyFile(join(repo, 'examples', 'sdk-app', 'index.ts'), join(app, 'index.ts'))
  const pkg = JSON.parse(await readFile(join(repo, 'examples', 'sdk-app', 'package.json'), 'utf8')) as {
    dependencies: Record<string, string>
  }
  pkg.dependencies['@meshnet/sdk'] = packed['@meshnet/sdk']!
  await writeFile(join(app, 'package.json'), JSON.stringify(pkg, null, 2))
  // The packed packages depend on each other by version (^0.1.0), which the registry does not have
  // yet: point every one at its tarball. Install scripts stay off as in the repository.
  await writeFile(
    join(app, 'pnpm-workspace.yaml'),
    [
      'overrides:',
      ...Object.entries(packed).map(([name, spec]) => `  '${name}': '${spec}'`),
      'allowBuilds:',
      '  esbuild: false',
      '  node-llama-cpp: false',
      '',
    ].join('\n'),
  )
  await exec('pnpm', ['install', '--prefer-offline', '--config.confirmModulesPurge=false'], {
    cwd: app,
    env: { ...env, CI: 'true' },
    timeout: 300_000,
  })

  const model = join(root, 'tiny.gguf')
  const created = await runMesh([
    'model-create',
    '--out',
    model,
    '--layers',
    '2',
    '--embd',
    '256',
    '--heads',
    '4',
    '--kv-heads',
    '2',
    '--vocab',
    '1000',
    '--type',
    'Q8_0',
    '--seed',
    '3',
  ])
  expect(created.code, created.stderr).toBe(0)
  agent = await startAgent(join(root, 'agent'), [
    '--local-only',
    '--model',
    model,
    '--public',
    '--no-beacons',
    '--json',
  ])
}, 600_000)

afterAll(async () => {
  await agent?.stop()
  await rm(root, { recursive: true, force: true })
})

describe('examples/sdk-app from packed tarballs', () => {
  it('installs from the tarballs, connects to a local mesh, discovers and streams a completion', async () => {
    const { stdout } = await exec(
      process.execPath,
      [
        'index.ts',
        '--bootstrap',
        agent.addresses[0]!,
        '--model',
        'tiny.gguf',
        '--local-only',
        '--max-tokens',
        '12',
        '--json',
        'Hello world',
      ],
      { cwd: app, timeout: 120_000 },
    )
    const summary = JSON.parse(stdout.trim().split('\n').at(-1)!) as {
      sdk: string
      nodes: Array<{ nodeId: string; sources: string[] }>
      streamed: string[]
      result: { tokens: number[]; text: string; stats: { members: string[] } }
      bytes: { sent: number; received: number }
    }
    // The installed copy, not the workspace source.
    expect(summary.sdk.startsWith(`file://${join(app, 'node_modules')}/`)).toBe(true)
    expect(summary.sdk).toMatch(/meshnet-sdk-0\.1\.0\.tgz.*\/@meshnet\/sdk\/dist\/index\.js$/)
    expect(summary.nodes).toEqual([{ nodeId: agent.nodeId, sources: ['dht'] }])
    expect(summary.result.tokens.length).toBe(summary.streamed.length)
    expect(summary.streamed.length).toBeGreaterThan(0)
    expect(summary.result.text).toBe(summary.streamed.join(''))
    expect(summary.result.stats.members).toEqual([agent.nodeId])
    expect(summary.bytes.received).toBeGreaterThan(0)
  }, 120_000)
})
