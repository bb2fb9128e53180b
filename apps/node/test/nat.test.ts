import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { beaconPort, createModel, eventually } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DEMO_MODEL } from '../src/commands/demo.ts'
import { poolOf } from './mesh-fixture.ts'
import {
  type BedHost,
  createNatBed,
  LINK_PROFILES,
  miniupnpdProblem,
  type NatBed,
  natBedProblem,
  shaper,
  shapingProblem,
} from './nat-bed.ts'
import { MESH, meshIn } from './netns.ts'

// Real `mesh start` and `mesh-relay` processes in network namespaces (see nat-bed.ts): a relay on
// the "internet", and members each in a home of its own behind a router that NATs with the kernel.
//
//   A, B: full-cone (endpoint-independent) NATs: they meet through the relay, then go direct.
//   C, D: symmetric NATs: they stay on the relay, and say so.
//   E: a symmetric NAT whose router runs miniupnpd: E maps its port; F, behind another symmetric
//      NAT, dials E directly.
//
// The homes' WAN links are shaped like a WAN (40 ms each way, 50 Mbit/s) and the relay sits 30 ms
// further away, so a relayed hop costs what it costs on the internet.

const RELAY_LINK = { delayMs: 30 }
/** Log lines of a relayed connection replaced by a direct one (libp2p:dcutr, meshnet:connectivity). */
const UPGRADED =
  /DCUtR to \S+ succeeded|unilateral connection upgrade to \S+ succeeded|direct connection to \S+ via \S+; closing/
const PROMPT = 'The mesh splits the model'

interface Link {
  peer: string
  address: string
  relayed: boolean
  direction: string
}
interface AgentStatus {
  nodeId: string
  libp2p: {
    addresses: string[]
    links: Link[]
    connectivity: { reservedRelays: string[]; publiclyReachable: boolean; directUpgrades: number }
  }
}
interface JobJson {
  tokens: number[]
  mode: string
  stats: { members: string[]; hopLatencyMs: number; tokensPerSecond: number }
}

/** A `mesh start` running inside a namespace of the bed. */
interface Member {
  name: string
  host: BedHost
  dir: string
  process: ChildProcess
  output(): string
  stop(): Promise<void>
}

const problem = natBedProblem
describe.skipIf(problem !== undefined)(
  `members behind NAT routers in network namespaces${problem ? ` (skipped: ${problem})` : ''}`,
  () => {
    let bed: NatBed
    let root: string
    let model: string
    let relay: { address: string; stop(): Promise<void> }
    const pools = new Map<string, string>()
    const members = new Map<string, Member>()

    beforeAll(async () => {
      root = await mkdtemp(join(tmpdir(), 'meshnet-nat-'))
      model = join(root, 'model.gguf')
      const wan = shapingProblem === undefined ? LINK_PROFILES.wan : undefined
      // All of it settles before anything fails, so that afterAll removes a finished tree.
      const [made, ...rest] = await Promise.allSettled([
        createNatBed({
          publicLink: shapingProblem === undefined ? RELAY_LINK : undefined,
          homes: [
            { nat: 'full-cone', wan },
            { nat: 'full-cone', wan },
            { nat: 'symmetric', wan },
            { nat: 'symmetric', wan },
            { nat: 'symmetric', upnp: miniupnpdProblem === undefined },
            { nat: 'symmetric' },
          ],
        }),
        // Pools are made on this machine's loopback (beacons), before anyone moves into a home.
        ...[
          ['A', 'B'],
          ['C', 'D'],
          ['E', 'F'],
        ].map(async (names) => {
          const { pool, admin } = await poolOf(root, names, beaconPort())
          await admin.stop()
          for (const name of names) pools.set(name, pool.poolId)
        }),
        createModel(model, DEMO_MODEL),
      ])
      if (made.status === 'fulfilled') bed = made.value as NatBed
      for (const result of [made, ...rest]) if (result.status === 'rejected') throw result.reason
      relay = await startRelayIn(bed.public[0]!, join(root, 'relay'))
      // The first member of each pair starts now, side by side; E's UPnP mapping takes a while.
      await Promise.all([start('A', 0), start('C', 2), start('E', 4, ['--upnp'])])
    }, 90_000)

    afterAll(async () => {
      await Promise.all([...members.values()].map((m) => m.stop()))
      await relay?.stop()
      await bed?.destroy()
      if (root) await rm(root, { recursive: true, force: true })
    })

    const start = async (name: string, home: number, extra: string[] = []) => {
      const host = bed.homes[home]!.hosts[0]!
      const member = await startMemberIn(name, host, join(root, name), [
        '--listen',
        `/ip4/${host.address}/tcp/${host.port}`,
        '--bootstrap',
        relay.address,
        '--relay',
        relay.address,
        '--no-mdns',
        '--no-beacons',
        '--model',
        model,
        '--threads',
        '1',
        ...extra,
      ])
      members.set(name, member)
      return member
    }
    const status = (name: string) => controlRequest<AgentStatus>(members.get(name)!, '/status')
    /** A member's address through the relay (how a member that knows only the relay reaches it). */
    const circuitOf = async (name: string) =>
      `${relay.address}/p2p-circuit/p2p/${(await status(name)).nodeId}`
    const linksTo = async (from: string, to: string) => {
      const them = (await status(to)).nodeId
      return (await status(from)).libp2p.links.filter((l) => l.peer === them)
    }
    const ringReady = (names: string[]) =>
      eventually(
        `the ring of ${names.join(' and ')} to be ready`,
        async () => {
          const views = await Promise.all(
            names.map((n) =>
              controlRequest<{ converged: boolean; ready: boolean; members: unknown[] }>(
                members.get(n)!,
                `/rings/${pools.get(n)}`,
              ),
            ),
          )
          return views.every((v) => v.converged && v.ready && v.members.length === names.length)
        },
        45_000,
        250,
      )
    const pipeline = async (name: string): Promise<JobJson> => {
      const member = members.get(name)!
      const job = await meshIn(member.host.exec, [
        'inference',
        '--prompt',
        PROMPT,
        '--mode',
        'pipeline',
        '--max-tokens',
        '12',
        '--json',
        '--data-dir',
        member.dir,
      ])
      expect(job.code, job.stderr).toBe(0)
      return JSON.parse(job.stdout) as JobJson
    }

    it('routers translate as named: full cone keeps the port and admits anyone to it, symmetric does neither', async () => {
      const pub = bed.public[0]!
      // Echoes the address a connection came from, on the public host (beside the relay).
      const echo = spawn(
        pub.exec[0]!,
        [
          ...pub.exec.slice(1),
          process.execPath,
          '-e',
          `require('net').createServer((s) => s.end(s.remoteAddress + ':' + s.remotePort)).listen(7000, '${pub.address}', () => console.log('up'))`,
        ],
        { stdio: ['ignore', 'pipe', 'ignore'] },
      )
      try {
        await new Promise((resolve) => echo.stdout!.once('data', resolve))
        const seen = async (from: BedHost, to: string, port: number, localPort?: number) =>
          (
            await runIn(from, [
              '-e',
              `const s = require('net').connect({ host: '${to}', port: ${port}${localPort ? `, localPort: ${localPort}` : ''} })
               s.setTimeout(3000, () => { console.log('timeout'); s.destroy() })
               s.on('connect', () => { if (${port} !== 7000) { console.log('open'); s.destroy() } })
               s.on('data', (d) => process.stdout.write(d))
               s.on('error', (e) => console.log(e.code))`,
            ])
          ).trim()
        const [fullCone, symmetric] = [bed.homes[0]!, bed.homes[2]!]
        expect(await seen(fullCone.hosts[0]!, pub.address, 7000, 45_000)).toBe(`${fullCone.router.wan}:45000`)
        expect(await seen(symmetric.hosts[0]!, pub.address, 7000, 45_000)).not.toBe(
          `${symmetric.router.wan}:45000`,
        )
        // A's and C's agents listen on their hosts' ports: only A's router lets the world in.
        expect(await seen(pub, fullCone.router.wan, fullCone.hosts[0]!.port)).toBe('open')
        expect(await seen(pub, symmetric.router.wan, symmetric.hosts[0]!.port)).toBe('ECONNREFUSED')
      } finally {
        echo.kill()
      }
    })

    it('behind two endpoint-independent NATs, two members meet through the relay and go direct', async () => {
      const a = members.get('A')!
      // B is told A's relayed address only: the relay is the one way they can meet.
      await start('B', 1, ['--bootstrap', await circuitOf('A')])
      const direct = await eventually(
        'a direct link between A and B',
        async () => {
          const links = await linksTo('B', 'A')
          return links.length > 0 && links.every((l) => !l.relayed) ? links : undefined
        },
        30_000,
        250,
      ).catch((err) => {
        throw new Error(`${(err as Error).message}\nA:\n${a.output()}\nrouter:\n${bed.homes[0]!.conntrack()}`)
      })
      // Over the routers' WAN addresses: whichever side dialed, B sees A at A's router.
      expect(direct.every((l) => l.address.startsWith(`/ip4/${bed.homes[0]!.router.wan}/tcp/`))).toBe(true)
      const [sa, sb] = [await status('A'), await status('B')]
      expect(sa.libp2p.connectivity.publiclyReachable).toBe(true)
      expect(sb.libp2p.connectivity.publiclyReachable).toBe(true)
      // The relayed connection they met on was replaced by a direct one: DCUtR (either side) or,
      // when a public address was confirmed only later, the member that learned it.
      const ids = { A: sa.nodeId, B: sb.nodeId }
      const upgrades = (['A', 'B'] as const).flatMap((name) => {
        const other = ids[name === 'A' ? 'B' : 'A']
        return members
          .get(name)!
          .output()
          .split('\n')
          .filter((line) => line.includes(other) && UPGRADED.test(line))
      })
      expect(upgrades.length, `${a.output()}\n${members.get('B')!.output()}`).toBeGreaterThanOrEqual(1)
      expect(
        sa.libp2p.connectivity.directUpgrades + sb.libp2p.connectivity.directUpgrades,
      ).toBeGreaterThanOrEqual(1)
      console.log(`A–B: relayed, then direct; ${upgrades.length} upgrade(s):\n${upgrades.join('\n')}`)
    }, 60_000)

    it('behind two symmetric NATs, two members stay relayed and say so', async () => {
      await start('D', 3, ['--bootstrap', await circuitOf('C')])
      await ringReady(['C', 'D'])
      const [sc, sd] = [await status('C'), await status('D')]
      for (const s of [sc, sd]) {
        expect(s.libp2p.connectivity.publiclyReachable).toBe(false)
        expect(s.libp2p.connectivity.reservedRelays.length).toBe(1)
      }
      const links = await linksTo('C', 'D')
      expect(links.length).toBeGreaterThan(0)
      expect(links.every((l) => l.relayed && l.address.includes('/p2p-circuit'))).toBe(true)
    }, 60_000)

    it('a pipeline job across two NATed homes gives the same tokens over a direct and a relayed link', async () => {
      await ringReady(['A', 'B'])
      const direct = await pipeline('A')
      const relayed = await pipeline('C')
      const explain = (name: string, job: JobJson) =>
        `${JSON.stringify(job.stats)}\n${members.get(name)!.output().slice(-6000)}`
      expect(direct.stats.members, explain('A', direct)).toHaveLength(2)
      expect(relayed.stats.members, explain('C', relayed)).toHaveLength(2)
      expect(relayed.tokens).toEqual(direct.tokens)
      expect((await linksTo('C', 'D')).every((l) => l.relayed)).toBe(true)
      expect((await linksTo('A', 'B')).every((l) => !l.relayed)).toBe(true)
      const links =
        shapingProblem === undefined
          ? `WAN ${LINK_PROFILES.wan.delayMs} ms each way, relay ${RELAY_LINK.delayMs} ms further (${shaper})`
          : `links not shaped: ${shapingProblem}`
      console.log(
        `pipeline across two homes (${links}): hop latency direct ${direct.stats.hopLatencyMs.toFixed(1)} ms, ` +
          `relayed ${relayed.stats.hopLatencyMs.toFixed(1)} ms; ` +
          `${direct.stats.tokensPerSecond.toFixed(1)} vs ${relayed.stats.tokensPerSecond.toFixed(1)} tokens/s`,
      )
      // The relay is further away than the other home: every relayed hop pays for it.
      if (shapingProblem === undefined) {
        expect(relayed.stats.hopLatencyMs).toBeGreaterThan(direct.stats.hopLatencyMs + RELAY_LINK.delayMs)
      }
    }, 90_000)

    it.skipIf(miniupnpdProblem !== undefined)(
      `with UPnP on the router, a member maps its port, is confirmed public, and is dialed directly${miniupnpdProblem ? ` (skipped: ${miniupnpdProblem})` : ''}`,
      async () => {
        // The other homes' agents are done; fewer processes, steadier timing.
        await Promise.all(['A', 'B', 'C', 'D'].map((n) => members.get(n)?.stop()))
        const home = bed.homes[4]!
        const host = home.hosts[0]!
        const e = members.get('E')!
        const mapping = await eventually(
          'miniupnpd to hold a mapping for E',
          () =>
            home
              .upnp!.mappings()
              .find((m) => m.internalAddress === host.address && m.internalPort === host.port),
          20_000,
          250,
        ).catch((err) => {
          throw new Error(`${(err as Error).message}\nminiupnpd:\n${home.upnp!.log()}\nE:\n${e.output()}`)
        })
        expect(mapping).toMatchObject({ protocol: 'TCP', description: 'meshnet' })
        const mapped = `/ip4/${home.router.wan}/tcp/${mapping.externalPort}`
        await eventually(
          'E to report itself public at its mapped address',
          async () => {
            const s = await status('E')
            return (
              s.libp2p.connectivity.publiclyReachable &&
              s.libp2p.addresses.some((a) => a.startsWith(`${mapped}/`))
            )
          },
          30_000,
          250,
        )
        await start('F', 5, ['--bootstrap', await circuitOf('E')])
        const links = await eventually(
          'F to hold a direct link to E',
          async () => {
            const l = await linksTo('F', 'E')
            return l.some((x) => !x.relayed) ? l : undefined
          },
          30_000,
          250,
        )
        expect(links.find((l) => !l.relayed)!.address.startsWith(`${mapped}/`)).toBe(true)
        expect((await status('F')).libp2p.connectivity.publiclyReachable).toBe(false)
      },
      90_000,
    )
  },
)

/** Starts `mesh start` in `host`'s namespace; resolves once its control API is up. */
async function startMemberIn(name: string, host: BedHost, dir: string, args: string[]): Promise<Member> {
  const [cmd, ...rest] = [...host.exec, ...MESH, 'start', '--data-dir', dir, ...args]
  // The DCUtR and connectivity logs say when and how a relayed connection went direct.
  const child = spawn(cmd!, rest, {
    env: { ...process.env, MESH_LOG: 'info', DEBUG: 'libp2p:dcutr,meshnet:connectivity' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  child.stdout!.on('data', (chunk) => (output += chunk))
  child.stderr!.on('data', (chunk) => (output += chunk))
  const exited = new Promise((resolve) => child.once('exit', resolve))
  const member: Member = {
    name,
    host,
    dir,
    process: child,
    output: () => output,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      await exited
    },
  }
  await eventually(
    `${name}'s agent to start`,
    async () => {
      if (child.exitCode !== null) throw new Error(`${name} exited (code ${child.exitCode}):\n${output}`)
      // `ip netns exec` execs the command: the agent's pid is the child's.
      const info = JSON.parse(await readFile(join(dir, 'agent.json'), 'utf8')) as { pid?: number }
      return info.pid === child.pid
    },
    30_000,
    50,
  ).catch(async (err) => {
    await member.stop()
    throw new Error(`${(err as Error).message}\n${output}`)
  })
  return member
}

/** Runs `node <args>` inside a host's namespace; resolves to what it printed. */
function runIn(host: BedHost, args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(
      'ip',
      [...host.exec.slice(1), process.execPath, ...args],
      { timeout: 10_000 },
      (error, stdout) => (error ? reject(error) : resolve(stdout)),
    ),
  )
}

/** `GET <path>` on a member's control API, which listens on its namespace's loopback. */
async function controlRequest<T>(member: Member, path: string): Promise<T> {
  const info = JSON.parse(await readFile(join(member.dir, 'agent.json'), 'utf8')) as { port: number }
  const token = (await readFile(join(member.dir, 'control.token'), 'utf8')).trim()
  const body = await new Promise<string>((resolve, reject) =>
    execFile(
      'ip',
      [
        ...member.host.exec.slice(1),
        'curl',
        '-sf',
        '-m',
        '5',
        '-H',
        `authorization: Bearer ${token}`,
        `http://127.0.0.1:${info.port}${path}`,
      ],
      (error, stdout) => (error ? reject(error) : resolve(stdout)),
    ),
  )
  return JSON.parse(body) as T
}

/** `mesh-relay` on a public host of the bed, listening on its public address. */
async function startRelayIn(
  host: BedHost,
  dataDir: string,
): Promise<{ address: string; stop(): Promise<void> }> {
  const bin = join(import.meta.dirname, '..', '..', 'relay', 'src', 'bin.ts')
  const child = spawn(
    host.exec[0]!,
    [
      ...host.exec.slice(1),
      process.execPath,
      '--conditions=meshnet-source',
      bin,
      '--host',
      host.address,
      '--port',
      '4001',
      // A public address is handed out only once confirmed; a relay says its own.
      '--announce',
      `/ip4/${host.address}/tcp/4001`,
      '--json',
      '--data-dir',
      dataDir,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  let out = ''
  child.stdout!.on('data', (c) => (out += c))
  child.stderr!.on('data', (c) => (out += c))
  const address = await eventually('the relay to start', () => {
    const match = new RegExp(`"(/ip4/${host.address.replaceAll('.', '\\.')}/tcp/4001/p2p/\\w+)"`).exec(out)
    return match?.[1]
  }).catch((err) => {
    child.kill('SIGKILL')
    throw new Error(`${(err as Error).message}:\n${out}`)
  })
  return {
    address,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      await new Promise((resolve) => child.once('exit', resolve))
    },
  }
}
