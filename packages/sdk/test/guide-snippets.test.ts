import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import { createServer as createTcpServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { format } from 'node:util'
import { resolveMeshNodeOptions } from '@meshnet/discovery'
import { generateIdentity } from '@meshnet/identity'
import { type AgentProcess, agentRequest, eventually, startAgentProcess } from '@meshnet/test-harness'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { type FabstirSDKConfig, parseSDKConfig } from '../src/config.ts'
import { format as formatLog, type P2PDebugEvent } from '../src/debug-log.ts'
import { meshNodeOptionsOf } from '../src/node-options.ts'
import { FabstirSDK } from '../src/sdk.ts'
import { Nodes } from './helpers.ts'

// Every code snippet of the public Fabstir P2P guide (docs/reference/fabstir-p2p-configuration.md,
// copied verbatim), extracted from the document and run. How each kind runs:
//
// - TypeScript snippets that build an SDK run as written, as JavaScript (they hold no type syntax),
//   with the guide's two placeholders filled in: `[...]` becomes a list with the address of a real
//   node on 127.0.0.1, and elided node ids (`12D3KooW...`, `12D3KooWTrustedPeer1...`) become real
//   ids. Each `new FabstirSDK(config)` first builds the SDK from the guide's config exactly as
//   given (validation, node options; no I/O), then a twin that starts against the local node: the
//   same config with mode "development", localOnly, bootstrapNodes set to the local node, mDNS and
//   fixed listen ports dropped and an HTTP discovery endpoint pointed at a local server. The twin
//   is what the snippet's own code then uses; `await sdk.connect()` (which the guide never writes)
//   is inserted before the snippet's first network call, or appended at its end. A block that
//   declares `const sdk` twice (two alternatives) runs as two programs.
// - The `interface P2PConfig` snippet: each field must be an option here with the guide's default.
// - Multiaddr snippets: the format, filled in with a real node's address, and the example are
//   accepted as bootstrap nodes.
// - Shell snippets: `fabstir-node init | start --config | info` are `mesh init | start --config |
//   status` here; `mesh --help` and `mesh start --help` must list them. `npm install -g` and `ufw`
//   are not run (they change this machine); the YAML settings file starts an agent.

const here = dirname(fileURLToPath(import.meta.url))
const GUIDE = join(here, '../../../docs/reference/fabstir-p2p-configuration.md')

interface Snippet {
  heading: string
  /** Position among the snippets under the same heading. */
  index: number
  lang: string
  code: string
  line: number
}

function extractSnippets(markdown: string): Snippet[] {
  const snippets: Snippet[] = []
  const lines = markdown.split('\n')
  let heading = ''
  const seen = new Map<string, number>()
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!
    const title = /^#{1,6} (.+)$/.exec(line)
    if (title) heading = title[1]!.trim()
    const fence = /^( *)```(\w*)$/.exec(line)
    if (!fence) continue
    const indent = fence[1]!.length
    const body: string[] = []
    let j = i + 1
    for (; j < lines.length && lines[j]!.trim() !== '```'; j++) body.push(lines[j]!.slice(indent))
    const index = seen.get(heading) ?? 0
    seen.set(heading, index + 1)
    snippets.push({ heading, index, lang: fence[2] ?? '', code: body.join('\n'), line: i + 1 })
    i = j
  }
  return snippets
}

const snippets = extractSnippets(readFileSync(GUIDE, 'utf8'))
const snippet = (heading: string, index = 0): Snippet => {
  const found = snippets.find((s) => s.heading === heading && s.index === index)
  if (found === undefined) throw new Error(`the guide has no snippet ${index} under "${heading}"`)
  used.add(found)
  return found
}
const used = new Set<Snippet>()

const nodes = new Nodes()
const servers: Server[] = []
afterEach(async () => {
  await nodes.cleanup()
  await Promise.all(
    servers.splice(0).map(
      (server) =>
        new Promise<void>((resolve) => {
          server.closeAllConnections()
          server.close(() => resolve())
        }),
    ),
  )
})

/** An HTTP endpoint on 127.0.0.1 that lists peers as the HTTP discovery module expects. */
async function peersEndpoint(addresses: string[]): Promise<string> {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ peers: addresses }))
  })
  servers.push(server)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return `http://127.0.0.1:${(server.address() as { port: number }).port}/api/v1/peers`
}

interface Run {
  /** SDKs built from the guide's configs as written. */
  verbatim: FabstirSDK[]
  /** Their twins, started on 127.0.0.1. */
  local: FabstirSDK[]
  /** What the snippet printed with console.log. */
  printed: string[]
}

interface LocalEnv {
  bootstrap: string[]
  endpoint?: string
  /** Given to snippets that use `sdk` without declaring it. */
  sdk?: FabstirSDK
}

const ELIDED_ID = /12D3KooW\w*\.\.\./g

/** Runs a TypeScript snippet of the guide as described at the top of this file. */
async function runSnippet(source: Snippet, env: LocalEnv): Promise<Run> {
  const ids = new Map<string, string>()
  const code = source.code.replaceAll('[...]', '__bootstrap__').replace(ELIDED_ID, (elided) => {
    if (!ids.has(elided)) ids.set(elided, generateIdentity().nodeId)
    return ids.get(elided)!
  })
  const run: Run = { verbatim: [], local: [], printed: [] }
  function GuideSDK(config: FabstirSDKConfig): FabstirSDK {
    run.verbatim.push(new FabstirSDK(config))
    const local = nodes.sdk(new FabstirSDK(localTwin(config, env)))
    run.local.push(local)
    return local
  }
  const console = { log: (...args: unknown[]) => run.printed.push(format(...args)) }
  for (const program of alternatives(code)) {
    const declares = /\bconst sdk\b/.test(program)
    const body = declares ? withConnect(program) : program
    const AsyncFunction = (async () => {}).constructor as new (
      ...args: string[]
    ) => (...args: unknown[]) => Promise<void>
    const params = ['FabstirSDK', '__bootstrap__', 'console', ...(declares ? [] : ['sdk'])]
    await new AsyncFunction(...params, body)(GuideSDK, env.bootstrap, console, env.sdk)
  }
  return run
}

/** A block with `const sdk` declared more than once holds alternatives: one program each. */
function alternatives(code: string): string[] {
  const starts = [...code.matchAll(/^(?:\/\/.*\n)*const sdk = new FabstirSDK\(/gm)].map((m) => m.index)
  if (starts.length <= 1) return [code]
  return starts.map((start, i) => code.slice(i === 0 ? 0 : start, starts[i + 1] ?? code.length))
}

/** Inserts `await sdk.connect()` before the first network call, or at the end. */
function withConnect(program: string): string {
  const start = program.indexOf('new FabstirSDK(')
  let depth = 0
  let end = start
  for (let i = program.indexOf('(', start); i < program.length; i++) {
    if (program[i] === '(') depth++
    if (program[i] === ')' && --depth === 0) {
      end = program[i + 1] === ';' ? i + 2 : i + 1
      break
    }
  }
  if (/await sdk\./.test(program.slice(end))) {
    return `${program.slice(0, end)}\nawait sdk.connect();\n${program.slice(end)}`
  }
  return `${program}\nawait sdk.connect();\n`
}

/** The guide's config, made to start on 127.0.0.1 against the local node. */
function localTwin(config: FabstirSDKConfig, env: LocalEnv): FabstirSDKConfig {
  const {
    enableMDNS: _mdns,
    listenAddresses: _listen,
    peerDiscovery,
    ...p2p
  } = config.p2pConfig ?? ({} as NonNullable<FabstirSDKConfig['p2pConfig']>)
  return {
    ...config,
    mode: 'development',
    p2pConfig: {
      ...p2p,
      localOnly: true,
      bootstrapNodes: env.bootstrap,
      ...(peerDiscovery === undefined
        ? {}
        : {
            peerDiscovery: peerDiscovery.map((entry) =>
              typeof entry === 'function' || env.endpoint === undefined
                ? entry
                : { ...entry, options: { ...entry.options, endpoint: env.endpoint } },
            ),
          }),
    },
  }
}

describe('the Fabstir P2P guide, snippet by snippet', () => {
  let bootstrap: string[]
  beforeAll(async () => {
    bootstrap = [(await bootstrapNode()).multiaddrs()[0]!.toString()]
  })
  const keep = new Nodes()
  afterAll(() => keep.cleanup())
  /** A node for every snippet to bootstrap from (kept across tests). */
  const bootstrapNode = () => keep.node()

  it('Basic P2P Configuration: runs as written and connects', async () => {
    const run = await runSnippet(snippet('Basic P2P Configuration'), { bootstrap })
    const guide = run.verbatim[0]!.config.p2pConfig
    expect(guide).toMatchObject({ enableDHT: true, dialTimeout: 30_000, requestTimeout: 60_000 })
    expect(guide.bootstrapNodes).toHaveLength(2)
    expect(guide.listenAddresses).toEqual(['/ip4/0.0.0.0/tcp/4002', '/ip4/0.0.0.0/tcp/4003/ws'])
    expect(run.local[0]!.connected).toBe(true)
  })

  it("Complete Configuration Interface: every field is an option, with the guide's default", () => {
    const { code } = snippet('Complete Configuration Interface')
    const fields = [...code.matchAll(/^\s+(\w+)(\??): ([\w[\]]+);\s*\/\/ (.*)$/gm)].map((m) => ({
      name: m[1]!,
      optional: m[2] === '?',
      comment: m[4]!,
    }))
    expect(fields.map((f) => f.name)).toEqual([
      'bootstrapNodes',
      'enableDHT',
      'enableMDNS',
      'listenAddresses',
      'dialTimeout',
      'requestTimeout',
      'maxRetries',
      'retryDelay',
    ])
    const config = parseSDKConfig({ mode: 'production', p2pConfig: { bootstrapNodes: bootstrap } })
    const node = resolveMeshNodeOptions(meshNodeOptionsOf(config, generateIdentity()))
    const resolved: Record<string, unknown> = { ...config.p2pConfig, enableMDNS: node.mdns }
    for (const field of fields) {
      const fallback = /defaults to (\w+)/.exec(field.comment)?.[1]
      if (fallback !== undefined)
        expect([field.name, resolved[field.name]]).toEqual([field.name, JSON.parse(fallback)])
    }
    // "Required, must have at least one"
    expect(() => new FabstirSDK({ mode: 'production', p2pConfig: {} })).toThrow(
      /^p2pConfig\.bootstrapNodes: production mode needs at least one bootstrap node/,
    )
    expect(
      parseSDKConfig({ mode: 'development', p2pConfig: { listenAddresses: ['/ip4/0.0.0.0/tcp/4002'] } }),
    ).toBeDefined()
  })

  it('Bootstrap node format and example: accepted as bootstrap nodes', async () => {
    const node = await bootstrapNode()
    const [ip, port] = node
      .multiaddrs()[0]!
      .toString()
      .split('/')
      .filter(Boolean)
      .filter((_, i) => i === 1 || i === 3)
    const filled = snippet('Format', 0)
      .code.trim()
      .replace('<IP_ADDRESS>', ip!)
      .replace('<PORT>', port!)
      .replace('<PEER_ID>', node.nodeId)
    expect(filled).toBe(node.multiaddrs()[0]!.toString())
    const sdk = nodes.sdk(
      new FabstirSDK({ mode: 'development', p2pConfig: { localOnly: true, bootstrapNodes: [filled] } }),
    )
    expect((await sdk.connect()).bootstrap[0]).toMatchObject({ reachable: true })
    const example = snippet('Format', 1).code.trim()
    expect(
      parseSDKConfig({ mode: 'production', p2pConfig: { bootstrapNodes: [example] } }).p2pConfig
        .bootstrapNodes,
    ).toEqual([example])
  })

  it("DHT: a full DHT node with the guide's bucket size", async () => {
    const run = await runSnippet(snippet('DHT (Distributed Hash Table)'), { bootstrap })
    expect(run.verbatim[0]!.config.p2pConfig.dhtOptions).toEqual({
      clientMode: false,
      kBucketSize: 20,
      refreshInterval: 900_000,
    })
    expect((await run.local[0]!.getP2PMetrics()).dht).toMatchObject({ enabled: true, mode: 'server' })
  })

  it('mDNS: "fabstir" is the service _fabstir._udp.local', async () => {
    const run = await runSnippet(snippet('mDNS (Multicast DNS)'), { bootstrap })
    const options = meshNodeOptionsOf(run.verbatim[0]!.config, generateIdentity())
    expect(options).toMatchObject({
      mdns: true,
      mdnsServiceTag: '_fabstir._udp.local',
      mdnsIntervalMs: 10_000,
    })
  })

  it('Custom Discovery: peers listed by the HTTP endpoint are found and connected to', async () => {
    const served = await nodes.node()
    const endpoint = await peersEndpoint(served.multiaddrs().map(String))
    const run = await runSnippet(snippet('Custom Discovery'), { bootstrap, endpoint })
    expect(meshNodeOptionsOf(run.verbatim[0]!.config, generateIdentity()).httpDiscovery).toEqual([
      {
        endpoint: 'https://peers.fabstir.com/api/v1/peers',
        intervalMs: 30_000,
        timeoutMs: 10_000,
        tag: 'custom-discovery',
      },
    ])
    const sdk = run.local[0]!
    await eventually('the SDK to connect to the peer the endpoint lists', () =>
      sdk.node!.libp2p.getPeers().some((peer) => peer.equals(served.peerId)),
    )
  })

  it('Connection Limits: accepted, with the event-loop guard and data limits armed', async () => {
    const run = await runSnippet(snippet('Connection Limits'), { bootstrap })
    expect(run.verbatim[0]!.config.p2pConfig.connectionManager).toMatchObject({
      maxConnections: 100,
      minConnections: 10,
      maxData: 1_000_000_000,
      maxEventLoopDelay: 150,
      pollInterval: 2000,
    })
    expect(run.local[0]!.connected).toBe(true)
  })

  it('Transport Configuration: runs as written and connects over TCP', async () => {
    const run = await runSnippet(snippet('Transport Configuration'), { bootstrap })
    expect(run.verbatim[0]!.config.p2pConfig.transports).toEqual({
      tcp: { enabled: true, maxConnections: 50 },
      websocket: { enabled: true, maxConnections: 30 },
      webrtc: { enabled: false },
    })
    expect(run.local[0]!.connected).toBe(true)
  })

  it('Custom Protocols: the handler is registered on the node', async () => {
    const run = await runSnippet(snippet('Custom Protocols'), { bootstrap })
    expect(run.local[0]!.node!.libp2p.getProtocols()).toContain('/fabstir/custom/1.0.0')
  })

  it('Metrics and Monitoring: getP2PMetrics() reports peers and protocols', async () => {
    const run = await runSnippet(snippet('Metrics and Monitoring'), { bootstrap })
    expect(run.verbatim[0]!.config.p2pConfig.metrics).toMatchObject({
      computeThrottleMaxQueueSize: 1000,
      computeThrottleTimeout: 2000,
      maxOldPeersRetention: 50,
    })
    expect(run.printed[0]).toMatch(/^Connected peers: \{ connected: 1, known: \d+ \}$/)
    expect(run.printed[1]).toMatch(/^Protocol stats: .*\/ipfs\/id\/1\.0\.0/s)
  })

  it('Security Configuration: lists and the authenticate hook are in force', async () => {
    const run = await runSnippet(snippet('Security Configuration'), { bootstrap })
    const { security } = run.verbatim[0]!.config.p2pConfig
    expect(security.allowlist).toHaveLength(2)
    expect(security.blocklist).toHaveLength(1)
    expect(run.local[0]!.connected).toBe(true)
  })

  it('Troubleshooting: each alternative runs as written', async () => {
    const timeouts = await runSnippet(snippet('1. Cannot Connect to Bootstrap Nodes'), { bootstrap })
    expect(timeouts.verbatim.map((sdk) => sdk.config.p2pConfig.dialTimeout)).toEqual([60_000, 30_000])
    expect(timeouts.verbatim[1]!.config.p2pConfig.bootstrapNodes).toHaveLength(3)
    expect(timeouts.local.every((sdk) => sdk.connected)).toBe(true)

    const discovery = await runSnippet(snippet('2. Poor Discovery Performance'), { bootstrap })
    expect(discovery.verbatim[0]!.config.p2pConfig.discoveryOptions).toEqual({
      interval: 5000,
      timeout: 30_000,
      maxPeers: 100,
      forceRefresh: true,
    })
    const drops = await runSnippet(snippet('3. Connection Drops'), { bootstrap })
    expect(drops.verbatim[0]!.config.p2pConfig).toMatchObject({
      keepAlive: { interval: 30_000, timeout: 10_000 },
      connectionManager: { maxConnections: 50, minConnections: 5, autoDial: true, autoDialInterval: 5000 },
    })
    expect([...discovery.local, ...drops.local].every((sdk) => sdk.connected)).toBe(true)
  })

  it('Debug Mode: p2p:debug events of the chosen subsystems reach the listener', async () => {
    const run = await runSnippet(snippet('Debug Mode'), { bootstrap })
    expect(run.verbatim[0]!.config.p2pConfig.debug).toEqual({
      enabled: true,
      verbose: true,
      logLevel: 'debug',
      subsystems: ['dht', 'discovery', 'connection', 'transport'],
    })
    const subsystems = new Set(run.printed.map((line) => /^\[P2P (\w+)\]/.exec(line)?.[1]))
    expect(
      [...subsystems].every((s) => ['dht', 'discovery', 'connection', 'transport', 'sdk'].includes(s!)),
    ).toBe(true)
    expect(subsystems.has('connection')).toBe(true)
  })

  it('Debug Mode: verbose writes libp2p errors with their code, causes and top stack frames', () => {
    const cause = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' })
    const err = new Error('dial failed', { cause })
    expect(formatLog('dial %e', [err])).toBe('dial Error: dial failed')
    expect(formatLog('dial %e', [err], true)).toMatch(
      /^dial Error: dial failed \(at .*\) <- caused by Error: connect ECONNREFUSED 127\.0\.0\.1:1 \[ECONNREFUSED\] \(at /,
    )
  })

  it('Network Diagnostics: runs on a connected SDK', async () => {
    const sdk = nodes.sdk(
      new FabstirSDK({ mode: 'development', p2pConfig: { localOnly: true, bootstrapNodes: bootstrap } }),
    )
    await sdk.connect()
    const run = await runSnippet(snippet('Network Diagnostics'), { bootstrap, sdk })
    expect(run.printed).toEqual([
      expect.stringMatching(/^P2P Status: \{/),
      'Can reach bootstrap nodes: true',
      'Can discover peers: true',
      'NAT type: local-only',
      expect.stringMatching(/^Average latency: \d/),
      expect.stringMatching(/^Bandwidth: /),
    ])
  })

  it('Setting up a bootstrap node: the fabstir-node commands exist as mesh commands', async () => {
    const [install, init, _yaml, start, info] = [0, 1, 2, 3, 4].map((i) =>
      snippet('Setting Up Your Own Bootstrap Node', i).code.trim(),
    )
    expect(install).toBe('npm install -g @fabstir/node') // not run: installs globally
    const mesh = (args: string[]) =>
      new Promise<string>((resolve, reject) =>
        execFile(
          process.execPath,
          ['--conditions=meshnet-source', join(here, '../../../apps/node/src/bin.ts'), ...args],
          { timeout: 60_000 },
          (err, stdout) => (err ? reject(err) : resolve(stdout)),
        ),
      )
    const [help, startHelp] = await Promise.all([mesh(['--help']), mesh(['start', '--help'])])
    const commands = { init: 'init', start: 'start', info: 'status' } as const
    for (const line of [init, start, info]) {
      const [, command, ...flags] = line!.split(/\s+/)
      expect(line).toMatch(/^fabstir-node /)
      expect(help).toMatch(new RegExp(`^  ${commands[command as keyof typeof commands]}\\b`, 'm'))
      for (const flag of flags.filter((f) => f.startsWith('--'))) expect(startHelp).toContain(`${flag} `)
    }
    // Firewall rules are not run: they change this machine's firewall and need root.
    expect(snippet('Firewall Configuration').code).toMatch(/^sudo ufw allow/m)
  })

  it('config.yaml of a bootstrap node: mesh start --config takes it as written and serves as a bootstrap node', async () => {
    const yaml = snippet('Setting Up Your Own Bootstrap Node', 2).code
    expect(yaml).toMatch(/^bootstrap: true$/m)
    const dir = await mkdtemp(join(tmpdir(), 'meshnet-guide-yaml-'))
    let agent: AgentProcess | undefined
    try {
      await writeFile(join(dir, 'config.yaml'), yaml)
      // The guide's file as written; the test listens on loopback instead of every interface
      // (flags win over --config), and keeps its packets on this machine.
      agent = await startAgentProcess(join(dir, 'data'), [
        '--config',
        join(dir, 'config.yaml'),
        '--listen',
        '/ip4/127.0.0.1/tcp/0',
        '--listen',
        '/ip4/127.0.0.1/tcp/0/ws',
        '--local-only',
      ])
      // Listening on TCP and WebSockets, as the file says, and dialing no bootstrap peer itself.
      const status = await agentRequest<{ libp2p: { addresses: string[]; connections: number } }>(
        join(dir, 'data'),
        '/status',
      )
      expect(status.libp2p.addresses.some((a) => /\/tcp\/\d+\/p2p\//.test(a))).toBe(true)
      expect(status.libp2p.addresses.some((a) => a.includes('/ws/'))).toBe(true)
      expect(status.libp2p.connections).toBe(0)
    } finally {
      await agent?.stop()
      await rm(dir, { recursive: true, force: true })
    }
  }, 60_000)

  it('has a plan for every snippet of the guide', () => {
    snippet('Setting Up Your Own Bootstrap Node', 2)
    expect(snippets.filter((s) => !used.has(s)).map((s) => `${s.heading} (line ${s.line})`)).toEqual([])
  })
})

describe('the guide\'s troubleshooting: "Failed to connect to any bootstrap node"', () => {
  it('lists each address with its real reason: refused, timed out, refused by the blocklist or the hook', async () => {
    const closed = createTcpServer()
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
    const refusedPort = (closed.address() as { port: number }).port
    await new Promise((resolve) => closed.close(resolve))
    // Accepts TCP and never says a word: libp2p's handshake waits until dialTimeout.
    const silent = createTcpServer((socket) => socket.on('error', () => {}))
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
    const sockets = new Set<import('node:net').Socket>()
    silent.on('connection', (socket) => sockets.add(socket))
    try {
      const blocked = await nodes.node()
      const distrusted = await nodes.node()
      // Two ids: libp2p joins dials to the same peer into one.
      const refusedAddr = `/ip4/127.0.0.1/tcp/${refusedPort}/p2p/${generateIdentity().nodeId}`
      const silentAddr = `/ip4/127.0.0.1/tcp/${(silent.address() as { port: number }).port}/p2p/${generateIdentity().nodeId}`
      const sdk = nodes.sdk(
        new FabstirSDK({
          mode: 'development',
          p2pConfig: {
            localOnly: true,
            bootstrapNodes: [
              refusedAddr,
              silentAddr,
              blocked.multiaddrs()[0]!.toString(),
              distrusted.multiaddrs()[0]!.toString(),
            ],
            maxRetries: 0,
            dialTimeout: 1_000,
            security: {
              blocklist: [blocked.nodeId],
              authenticate: (peerId) => peerId.toString() !== distrusted.nodeId,
            },
          },
        }),
      )
      const err = (await sdk.connect().catch((e: unknown) => e)) as Error
      expect(err).toMatchObject({ name: 'BootstrapUnreachableError' })
      const lines = err.message.split('; ')
      expect(lines[0]).toBe(
        `Failed to connect to any bootstrap node in 1 round: ${refusedAddr}: connection refused: nothing listens on that address and port (1 attempt)`,
      )
      expect(lines[1]).toBe(
        `${silentAddr}: timed out: no libp2p answer within 1000 ms (p2pConfig.dialTimeout) (1 attempt)`,
      )
      expect(lines[2]).toMatch(
        new RegExp(
          `^${blocked.multiaddrs()[0]}: refused by p2pConfig\\.security\\.blocklist / allowlist \\(`,
        ),
      )
      expect(lines[3]).toBe(
        `${distrusted.multiaddrs()[0]}: peer ${distrusted.nodeId} was refused by security.authenticate: the hook returned false (1 attempt)`,
      )
    } finally {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => silent.close(resolve))
    }
  })
})

describe('connectionManager.maxEventLoopDelay', () => {
  it('refuses new inbound connections while the event loop is held, and accepts them again after', async () => {
    const a = await nodes.node()
    const c = await nodes.node()
    const sdk = nodes.sdk(
      new FabstirSDK({
        mode: 'development',
        debug: true,
        p2pConfig: {
          localOnly: true,
          bootstrapNodes: [a.multiaddrs()[0]!.toString()],
          connectionManager: { maxEventLoopDelay: 100, pollInterval: 500, autoDial: false },
        },
      }),
    )
    const events: P2PDebugEvent[] = []
    sdk.on('p2p:debug', (event) => events.push(event))
    await sdk.connect()
    const busy = new Promise<void>((resolve) =>
      sdk.on('p2p:debug', (event) => event.message.startsWith('event loop held') && resolve()),
    )
    const calm = new Promise<void>((resolve) =>
      sdk.on('p2p:debug', (event) => event.message.startsWith('event loop delay back under') && resolve()),
    )
    const until = Date.now() + 300
    while (Date.now() < until) {} // an app busy for 300 ms
    await busy
    await c.libp2p.dial(sdk.node!.multiaddrs()).catch(() => {})
    await eventually('the inbound connection to be refused', () =>
      events.some((e) => e.message.startsWith(`closing inbound connection from ${c.nodeId}`)),
    )
    await eventually(
      'the inbound connection to be closed',
      () => sdk.node!.libp2p.getConnections(c.peerId).length === 0,
    )
    await calm
    await c.libp2p.dial(sdk.node!.multiaddrs())
    await new Promise((resolve) => setTimeout(resolve, 200))
    expect(sdk.node!.libp2p.getConnections(c.peerId).length).toBeGreaterThan(0)
  })
})
