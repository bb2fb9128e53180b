import { execFile } from 'node:child_process'
import { copyFile, mkdir, mkdtemp, readFile, realpath, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createModel, packWorkspace, REPO_ROOT as repo } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Agent, startAgent } from './agents.ts'

// examples/sdk-app installed the way a third-party app installs it: every @meshnet package it needs
// is built (tsup) and packed (`pnpm pack`), the example is copied out of the repository and installed
// with pnpm from the npm registry plus those tarballs, then run with plain `node` (no meshnet-source
// condition, so @meshnet/sdk resolves to the packed dist) against a real agent on 127.0.0.1.

const exec = promisify(execFile)
let root: string
let app: string
let cli: string
let agent: Agent

const APPS = ['@meshnet/node', '@meshnet/relay', '@meshnet/control-plane']

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-sdk-app-'))
  const env = { ...process.env, TURBO_TELEMETRY_DISABLED: '1', TURBO_NO_UPDATE_NOTIFIER: '1' }
  const packed = await packWorkspace(['@meshnet/sdk', ...APPS], join(root, 'tarballs'))

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

  // The three programs, installed from their tarballs the same way (what `npm install -g` unpacks).
  cli = join(root, 'cli')
  await mkdir(cli)
  await writeFile(
    join(cli, 'package.json'),
    JSON.stringify({
      name: 'cli',
      private: true,
      dependencies: Object.fromEntries(APPS.map((n) => [n, packed[n]])),
    }),
  )
  await copyFile(join(app, 'pnpm-workspace.yaml'), join(cli, 'pnpm-workspace.yaml'))
  await exec('pnpm', ['install', '--prefer-offline', '--config.confirmModulesPurge=false'], {
    cwd: cli,
    env: { ...env, CI: 'true' },
    timeout: 300_000,
  })

  const model = join(root, 'tiny.gguf')
  await createModel(model, { layers: 2, embd: 256, heads: 4, kvHeads: 2, vocab: 1000, type: 'Q8_0', seed: 3 })
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

describe('the programs from packed tarballs', () => {
  it('mesh, mesh-relay and mesh-control-plane answer --version, and mesh init makes a node', async () => {
    const bin = (name: string) => join(cli, 'node_modules', '.bin', name)
    const version = JSON.parse(await readFile(join(repo, 'apps', 'node', 'package.json'), 'utf8')).version
    for (const name of ['mesh', 'mesh-relay', 'mesh-control-plane']) {
      const { stdout } = await exec(bin(name), ['--version'], { timeout: 60_000 })
      expect(stdout.trim()).toMatch(/^\d+\.\d+\.\d+/)
    }
    expect((await exec(bin('mesh'), ['--version'])).stdout.trim()).toBe(version)
    const data = join(root, 'cli-node')
    const init = JSON.parse(
      (await exec(bin('mesh'), ['init', '--name', 'installed', '--json', '--data-dir', data])).stdout,
    ) as { nodeId: string; created: boolean }
    expect(init.created).toBe(true)
    expect(init.nodeId).toMatch(/^12D3KooW/)
    // It ran the packed dist, not this checkout's sources.
    const real = await realpath(bin('mesh'))
    expect(real.startsWith(join(cli, 'node_modules'))).toBe(true)
  }, 120_000)
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
