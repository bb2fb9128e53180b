import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { InvalidArgumentError, type Logger, MeshError, silentLogger } from '@meshnet/core'
import { ensureDataDir } from '@meshnet/identity'
import { controlPlaneId } from '@meshnet/protocols'
import { z } from 'zod'
import pkg from '../package.json' with { type: 'json' }
import { openControlPlaneDb } from './db.ts'
import { describeIssues } from './http.ts'
import { controlPlaneFiles } from './layout.ts'
import { maintain } from './maintain.ts'
import { createControlPlaneServer } from './server.ts'
import { type ControlPlaneContext, JobEvents } from './state.ts'
import { loadOrCreateToken } from './token.ts'

/** Defaults of {@link ControlPlaneOptions}. */
export const CONTROL_PLANE_DEFAULTS = Object.freeze({
  host: '127.0.0.1',
  port: 8080,
  /** 8080 taken: 8081, ... up to 8179. */
  portAttempts: 100,
  onlineWindowMs: 15_000,
  jobLeaseMs: 60_000,
  maxJobAttempts: 3,
  /** A device request's timestamp may be this far from the control plane's clock. */
  requestSkewMs: 300_000,
  /** Requests one device may make per minute (a streaming job makes about 10 a second). */
  deviceRequestsPerMinute: 3000,
})

const optionsSchema = z.object({
  dataDir: z.string().min(1),
  host: z.string().min(1).default(CONTROL_PLANE_DEFAULTS.host),
  port: z.number().int().min(0).max(65_535).default(CONTROL_PLANE_DEFAULTS.port),
  portAttempts: z.number().int().min(1).max(1000).default(CONTROL_PLANE_DEFAULTS.portAttempts),
  onlineWindowMs: z.number().int().min(1).default(CONTROL_PLANE_DEFAULTS.onlineWindowMs),
  jobLeaseMs: z.number().int().min(1).default(CONTROL_PLANE_DEFAULTS.jobLeaseMs),
  maxJobAttempts: z.number().int().min(1).max(100).default(CONTROL_PLANE_DEFAULTS.maxJobAttempts),
  requestSkewMs: z.number().int().min(1000).max(3_600_000).default(CONTROL_PLANE_DEFAULTS.requestSkewMs),
  deviceRequestsPerMinute: z
    .number()
    .int()
    .min(1)
    .max(1_000_000)
    .default(CONTROL_PLANE_DEFAULTS.deviceRequestsPerMinute),
})

export interface ControlPlaneOptions {
  /** Where `control-plane.db`, `control-plane.token` and `logs/control-plane.log` live. */
  dataDir: string
  /** Default 127.0.0.1 (this computer only); `0.0.0.0` serves the LAN. */
  host?: string
  /** First port to try; default 8080. When taken, the next ones are tried. 0: any free port. */
  port?: number
  /** Ports tried, counting the first; default 100 (8080–8179). */
  portAttempts?: number
  /** A device is online when it sent a heartbeat this recently; default 15 000. */
  onlineWindowMs?: number
  /** A running job without a token append for this long goes back to the queue; default 60 000. */
  jobLeaseMs?: number
  /** Claims before a lapsed job fails instead of going back to the queue; default 3. */
  maxJobAttempts?: number
  /**
   * How far the timestamp of a signed device request may be from this clock; default 300 000
   * (5 minutes). Nonces are remembered this long.
   */
  requestSkewMs?: number
  /** Requests one device may make per minute (wall clock), more get 429; default 3000. */
  deviceRequestsPerMinute?: number
  logger?: Logger
  /** Clock in milliseconds; tests pass their own. */
  now?: () => number
}

/** A running control plane. */
export interface ControlPlane {
  /** Base URL for clients (`http://127.0.0.1:8080`; the loopback address when serving 0.0.0.0). */
  readonly url: string
  readonly host: string
  readonly port: number
  /** The bearer token every request but `/health` needs. */
  readonly token: string
  /** The id device requests are signed for (`controlPlaneId(token)` of @meshnet/protocols). */
  readonly planeId: string
  readonly tokenFile: string
  readonly dataDir: string
  /** Stops listening, ends open streams, closes the database and releases the data-dir lock. */
  close(): Promise<void>
}

/** Every port from the first to the last one tried was in use. */
export class PortsInUseError extends MeshError {
  override name = 'PortsInUseError' as const
  constructor(host: string, first: number, last: number) {
    super('ERR_PORTS_IN_USE', `ports ${first}–${last} on ${host} are all in use`, {
      details: { host, first, last },
      hint: 'stop what uses them, or start at another port with --port',
    })
  }
}

/**
 * Starts a control plane: locks the data dir (DataDirInUseError when another control plane holds
 * it), opens or recovers `control-plane.db`, creates or reuses the token, and listens on the first
 * free port from `port`.
 */
export async function startControlPlane(options: ControlPlaneOptions): Promise<ControlPlane> {
  const parsed = optionsSchema.safeParse(options)
  if (!parsed.success) {
    throw new InvalidArgumentError(`invalid control plane options: ${describeIssues(parsed.error).text}`)
  }
  const settings = parsed.data
  const logger = options.logger ?? silentLogger()
  const now = options.now ?? Date.now
  const layout = await ensureDataDir(settings.dataDir)
  const files = controlPlaneFiles(layout.root)
  const db = openControlPlaneDb({ path: files.db, lockPath: files.lock, dataDir: layout.root, logger, now })
  let server: Server | undefined
  try {
    const { token } = await loadOrCreateToken(files.token, logger)
    const ctx: ControlPlaneContext = {
      db,
      events: new JobEvents(),
      logger,
      now,
      startedAt: now(),
      version: pkg.version,
      onlineWindowMs: settings.onlineWindowMs,
      jobLeaseMs: settings.jobLeaseMs,
      maxJobAttempts: settings.maxJobAttempts,
    }
    server = createControlPlaneServer(ctx, token, settings)
    const port = await listen(server, settings.host, settings.port, settings.portAttempts)
    const sweepMs = Math.min(
      5000,
      Math.max(250, Math.floor(Math.min(settings.onlineWindowMs, settings.jobLeaseMs) / 4)),
    )
    const sweep = setInterval(() => {
      try {
        maintain(ctx)
      } catch (err) {
        logger.error({ err }, 'maintenance failed')
      }
    }, sweepMs)
    sweep.unref()
    const url = `http://${dialableHost(settings.host)}:${port}`
    logger.info(
      { url, host: settings.host, port, dataDir: layout.root, schemaVersion: db.report.schemaVersion },
      'control plane listening',
    )
    let closing: Promise<void> | undefined
    const running = server
    return {
      url,
      host: settings.host,
      port,
      token,
      planeId: controlPlaneId(token),
      tokenFile: files.token,
      dataDir: layout.root,
      close() {
        closing ??= (async () => {
          clearInterval(sweep)
          await closeServer(running)
          db.close()
          logger.info('control plane stopped')
        })()
        return closing
      },
    }
  } catch (err) {
    if (server?.listening) await closeServer(server)
    db.close()
    throw err
  }
}

async function listen(server: Server, host: string, first: number, attempts: number): Promise<number> {
  const last = first === 0 ? 0 : Math.min(65_535, first + attempts - 1)
  for (let port = first; port <= last; port++) {
    try {
      await new Promise<void>((resolve, reject) => {
        const onError = (err: Error) => {
          server.off('listening', onListening)
          reject(err)
        }
        const onListening = () => {
          server.off('error', onError)
          resolve()
        }
        server.once('error', onError)
        server.once('listening', onListening)
        server.listen(port, host)
      })
      return (server.address() as AddressInfo).port
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') continue
      throw new InvalidArgumentError(`cannot listen on ${host}:${port}: ${(err as Error).message}`, {
        cause: err,
        hint: 'check --host (an address of this computer) and --port',
      })
    }
  }
  throw new PortsInUseError(host, first, last)
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  })
}

/** The host part of a URL that reaches `host` from this computer. */
function dialableHost(host: string): string {
  if (host === '0.0.0.0') return '127.0.0.1'
  if (host === '::') return '[::1]'
  return host.includes(':') ? `[${host}]` : host
}
