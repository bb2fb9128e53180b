import { InvalidArgumentError, printFields, printJson, waitForSignal } from '@meshnet/core'
import { ensureDataDir } from '@meshnet/identity'
import type { FetchProgress } from '@meshnet/weights'
import type { Command } from 'commander'
import { type AgentParts, type RunningAgent, startAgent } from '../agent/agent.ts'
import { apiPart } from '../agent/api-part.ts'
import { beaconsPart } from '../agent/beacons-part.ts'
import { controlPlanePart } from '../agent/control-plane-part.ts'
import { dashboardPart } from '../agent/dashboard-part.ts'
import { doctorPart } from '../agent/doctor-part.ts'
import { jobsPart } from '../agent/jobs-part.ts'
import { meshPart } from '../agent/mesh-part.ts'
import { metricsPart } from '../agent/metrics-part.ts'
import { poolFilesPart, poolPart } from '../agent/pool-part.ts'
import { ringPart } from '../agent/ring-part.ts'
import { type AgentSettings, mergeSettings, parseSettings, readSettingsFile } from '../agent/settings.ts'
import { weightsPart } from '../agent/weights-part.ts'
import { defaultNodeConfig, nodeConfigSchema, readNodeConfig } from '../config.ts'
import type { CommandContext } from '../context.ts'
import { type Progress, updateFetchProgress } from './progress.ts'

interface StartFlags {
  config?: string
  localOnly?: boolean
  listen?: string[]
  bootstrap?: string[]
  mdns?: boolean
  dht?: boolean
  beacons?: boolean
  relay?: string[]
  upnp?: boolean
  model?: string
  autoApprove?: boolean
  beaconInterface?: string
  beaconPort?: string
  beaconGroup?: string
  beaconInterval?: string
  public?: boolean
  threads?: string
  parallel?: string
  memory?: string
  disk?: string
  apiPort?: string
  apiHost?: string
  apiKey?: string
  corsOrigin?: string[]
  dashboardPort?: string
  dashboard?: boolean
  controlPlane?: string
  controlPlaneToken?: string
}

const collect = (value: string, previous: string[] = []) => [...previous, value]

/** The agent's parts, in start order. */
const agentParts: AgentParts = (context) => {
  const beacons = context.config.beacons === false ? undefined : beaconsPart(context)
  const mesh = meshPart(context, beacons)
  const pools = beacons ? poolPart(context, beacons) : undefined
  const parts = beacons && pools ? [beacons, pools] : []
  const weights = weightsPart(context, mesh)
  const ring = ringPart(context, mesh, weights)
  const jobs = jobsPart(context, mesh, ring, weights)
  const { api, controlPlane } = context.config
  const dashboard =
    context.config.dashboard === false ? undefined : dashboardPart(context, { mesh, ring, jobs, weights })
  const metrics = metricsPart(context, { mesh, ring, jobs, weights, beacons, pools })
  const extra = [
    ...(controlPlane?.url === undefined
      ? []
      : [
          controlPlanePart(context, {
            mesh,
            rings: ring.rings,
            jobs: () => jobs.runner(),
            capabilities: ring.capabilities,
            url: controlPlane.url,
            ...(controlPlane.token === undefined ? {} : { token: controlPlane.token }),
          }),
        ]),
    ...(dashboard === undefined ? [] : [dashboard]),
    ...(api?.port === undefined && dashboard === undefined
      ? []
      : [apiPart(context, jobs, { dashboard, metrics })]),
  ]
  const doctor = doctorPart({ mesh, ring })
  return [poolFilesPart(context), ...parts, mesh, weights, ring, jobs, metrics, doctor, ...extra]
}

export function registerStart(
  program: Command,
  context: (cmd: Command, app?: string) => CommandContext,
): void {
  program
    .command('start')
    .description('run the agent: beacons, pools, the libp2p node and the local control API, until stopped')
    .option('--config <file.yaml>', 'settings file (same fields as config.yaml in the data dir)')
    .option(
      '--local-only',
      'keep every packet on this machine: 127.0.0.1 only, beacons on loopback, no mDNS/UPnP/AutoNAT',
    )
    .option('--listen <multiaddr>', 'address to listen on (repeatable)', collect)
    .option('--bootstrap <multiaddr>', 'peer to connect to first, ending in /p2p/<id> (repeatable)', collect)
    .option('--no-mdns', 'turn mDNS discovery off')
    .option('--no-dht', 'turn the Kademlia DHT off')
    .option('--no-beacons', 'turn LAN beacons off (no pool joins over the LAN, no beacon discovery)')
    .option('--relay <multiaddr>', 'circuit relay to reserve a slot on (repeatable)', collect)
    .option('--upnp', 'ask the router to forward our TCP port (UPnP IGD), so that others can dial us')
    .option(
      '--model <file|id|url>',
      'model this node serves: a GGUF file, a model id (this member fetches only its shard from pool members) or an http(s) URL answering range requests',
    )
    .option(
      '--auto-approve',
      'sign every LAN join request for pools this node administers (unsafe on shared LANs)',
    )
    .option('--beacon-interface <ip>', 'IPv4 address of the interface LAN beacons use')
    .option('--beacon-port <port>', 'UDP port of LAN beacons (default 42424)')
    .option('--beacon-group <ip>', 'multicast group of LAN beacons (default 239.192.0.1)')
    .option('--beacon-interval <ms>', 'milliseconds between presence beacons (default 5000)')
    .option('--public', 'advertise the model in the DHT and run jobs for anyone, rate-limited per peer')
    .option('--threads <n>', 'CPU threads for inference (default: every core)')
    .option('--parallel <n>', 'generations decoded at once on one member, batched (default 4)')
    .option('--memory <MiB>', 'memory offered for model shards and KV caches (default: half of RAM)')
    .option('--disk <MiB>', 'disk fetched model chunks may take (default: the free space of the data dir)')
    .option('--api-port <port>', 'serve the OpenAI-compatible API on this port (0 = any free port)')
    .option('--api-host <ip>', 'address the OpenAI-compatible API binds (default 127.0.0.1)')
    .option('--api-key <key>', 'bearer key the OpenAI-compatible API requires (default: none)')
    .option(
      '--dashboard-port <port>',
      'serve the dashboard on this port too (default: on the API port, else any free port)',
    )
    .option('--no-dashboard', 'serve no dashboard (and no HTTP API unless --api-port)')
    .option(
      '--control-plane <url>',
      'mesh-control-plane to register with, join rings through and take jobs from',
    )
    .option('--control-plane-token <token>', 'write token of the control plane (or MESH_CONTROL_PLANE_TOKEN)')
    .action(async (flags: StartFlags, cmd: Command) => {
      const ctx = context(cmd, 'agent')
      const layout = await ensureDataDir(ctx.dataDir)
      const stored = (await readNodeConfig(layout.config)) ?? defaultNodeConfig()
      const fromFile = flags.config === undefined ? {} : await readSettingsFile(flags.config)
      const config = parseSettings(nodeConfigSchema, {
        ...stored,
        ...mergeSettings(stored, fromFile, settingsFromFlags(flags)),
      })

      // Listen for the stop signal before announcing readiness, so an early SIGTERM stops cleanly.
      const stopping = waitForSignal()
      const agent = await startAgent({ dataDir: ctx.dataDir, config, logger: ctx.logger, parts: agentParts })
      const status = agent.status()
      const api = status.api as { host: string; port: number } | null | undefined
      if (ctx.json)
        printJson(ctx.io, {
          event: 'started',
          ...status,
          controlPort: agent.controlPort,
          ...(api ? { apiPort: api.port } : {}),
        })
      else {
        ctx.io.stdout.write('Meshnet agent running (Ctrl+C to stop)\n')
        printFields(ctx.io, [
          ['Node ID', agent.identity.nodeId],
          ['Name', config.name],
          ['Data dir', ctx.dataDir],
          ['Control API', `127.0.0.1:${agent.controlPort}`],
          [
            'OpenAI API',
            api && config.api?.port !== undefined ? `http://${api.host}:${api.port}/v1` : undefined,
          ],
          ['Dashboard', dashboardUrl(status)],
          ['Local only', config.localOnly === true ? 'yes' : undefined],
        ])
      }
      ctx.logger.info({ nodeId: agent.identity.nodeId, controlPort: agent.controlPort }, 'agent started')
      const unwatch = showFetches(agent, ctx)
      await stopping
      unwatch()
      ctx.logger.info('stopping')
      await agent.stop()
      ctx.logger.info('agent stopped')
      if (ctx.json) printJson(ctx.io, { event: 'stopped' })
      else ctx.io.stdout.write('Agent stopped\n')
    })
}

/** Where the dashboard is (its token: `mesh dashboard`). */
function dashboardUrl(status: Record<string, unknown>): string | undefined {
  const url = (status.dashboard as { url?: string | null } | undefined)?.url
  return url ? `${url}  (mesh dashboard prints the link with its token)` : undefined
}

/** How often `mesh start` looks at the agent's fetch of model chunks to redraw its progress. */
const FETCH_WATCH_MS = 500

/**
 * Shows the agent's fetches of model chunks (its shard's, when the ring plans) as a progress bar on
 * a terminal and plain lines otherwise; nothing with `--json`. Returns the function that stops it.
 */
function showFetches(agent: RunningAgent, ctx: CommandContext): () => void {
  let progress: Progress | undefined
  let model: string | undefined
  const timer = setInterval(() => {
    // The weights part's status alone: the whole status (links, rings, jobs) every half second
    // was 7% of the CPU of an agent at rest in a ring of 16.
    const weights = agent.partStatus('weights') as
      | { fetch?: { current?: { model: string; progress: FetchProgress } } }
      | undefined
    const current = weights?.fetch?.current
    if (current === undefined || current.model !== model) {
      progress?.stop()
      progress = undefined
      model = undefined
    }
    if (current === undefined) return
    model = current.model
    progress = updateFetchProgress(progress, `model ${current.model.slice(0, 12)}`, current.progress, {
      out: ctx.io.stderr,
      silent: ctx.json,
    })
  }, FETCH_WATCH_MS)
  timer.unref()
  return () => {
    clearInterval(timer)
    progress?.stop()
  }
}

function settingsFromFlags(flags: StartFlags): AgentSettings {
  const number = (flag: string, value: string | undefined, min = 1) => {
    if (value === undefined) return undefined
    const n = Number(value)
    if (!Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(
        `${flag} ${JSON.stringify(value)}: not a ${min === 0 ? 'whole number' : 'positive whole number'}`,
      )
    return n
  }
  const api = {
    port: number('--api-port', flags.apiPort, 0),
    host: flags.apiHost,
    key: flags.apiKey,
    corsOrigins: flags.corsOrigin,
  }
  const dashboard =
    flags.dashboard === false ? false : { port: number('--dashboard-port', flags.dashboardPort, 0) }
  const controlPlane = {
    url: flags.controlPlane,
    token: flags.controlPlaneToken ?? (flags.controlPlane ? process.env.MESH_CONTROL_PLANE_TOKEN : undefined),
  }
  const beacon = {
    interface: flags.beaconInterface,
    port: number('--beacon-port', flags.beaconPort),
    group: flags.beaconGroup,
    intervalMs: number('--beacon-interval', flags.beaconInterval),
  }
  return {
    listen: flags.listen,
    bootstrap: flags.bootstrap,
    relay: flags.relay,
    upnp: flags.upnp,
    model: flags.model,
    localOnly: flags.localOnly,
    autoApprove: flags.autoApprove,
    public: flags.public,
    threads: number('--threads', flags.threads),
    parallel: number('--parallel', flags.parallel),
    memoryMb: number('--memory', flags.memory),
    diskMb: number('--disk', flags.disk),
    api: Object.values(api).some((v) => v !== undefined) ? api : undefined,
    dashboard: dashboard === false || dashboard.port !== undefined ? dashboard : undefined,
    controlPlane: Object.values(controlPlane).some((v) => v !== undefined) ? controlPlane : undefined,
    // commander sets --no-x flags to true by default; only an explicit --no-x means false.
    mdns: flags.mdns === false ? false : undefined,
    dht: flags.dht === false ? false : undefined,
    beacons: flags.beacons === false ? false : undefined,
    beacon: Object.values(beacon).some((v) => v !== undefined) ? beacon : undefined,
  }
}
