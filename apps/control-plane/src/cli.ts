/**
 * @packageDocumentation
 * The `mesh-control-plane` command line. `main(argv)` runs the server until SIGINT or SIGTERM and
 * resolves to the exit code.
 */
import {
  type CliIo,
  createLogger,
  InvalidArgumentError,
  processIo,
  reportError,
  waitForSignal,
} from '@meshnet/core'
import { resolveDataDir } from '@meshnet/identity'
import { Command, CommanderError } from 'commander'
import { z } from 'zod'
import pkg from '../package.json' with { type: 'json' }
import { CONTROL_PLANE_DEFAULTS, startControlPlane } from './control-plane.ts'
import { describeIssues } from './http.ts'
import { controlPlaneFiles } from './layout.ts'

export type { CliIo } from '@meshnet/core'

const whole = (flag: string, min: number, max: number) =>
  z.coerce
    .number({ error: `${flag} must be a number` })
    .int(`${flag} must be a whole number`)
    .min(min, `${flag} must be at least ${min}`)
    .max(max, `${flag} must be at most ${max}`)

const flagsSchema = z.object({
  port: whole('--port', 0, 65_535).default(CONTROL_PLANE_DEFAULTS.port),
  host: z.string().min(1, '--host must not be empty').default(CONTROL_PLANE_DEFAULTS.host),
  dataDir: z.string().optional(),
  onlineWindow: whole('--online-window', 1, 86_400_000).default(CONTROL_PLANE_DEFAULTS.onlineWindowMs),
  jobLease: whole('--job-lease', 1, 86_400_000).default(CONTROL_PLANE_DEFAULTS.jobLeaseMs),
  deviceRate: whole('--device-rate', 1, 1_000_000).default(CONTROL_PLANE_DEFAULTS.deviceRequestsPerMinute),
  json: z.boolean().default(false),
  verbose: z.boolean().default(false),
})

export function createProgram(io: CliIo = processIo): Command {
  return new Command('mesh-control-plane')
    .description(
      'Meshnet control plane: an HTTP registry of devices, pools and rings, and a job queue, for when the peer-to-peer mesh cannot do it alone',
    )
    .version(pkg.version, '-V, --version', 'print the version')
    .option(
      '--port <port>',
      `first port to try (default ${CONTROL_PLANE_DEFAULTS.port}); when it is taken the next ${CONTROL_PLANE_DEFAULTS.portAttempts - 1} are tried and the one used is printed`,
    )
    .option(
      '--host <address>',
      'address to listen on (default 127.0.0.1: this computer only); 0.0.0.0 serves the LAN, and every request but /health still needs the token',
    )
    .option(
      '--data-dir <path>',
      'where the database, token and log live (default: $MESH_DATA_DIR or ~/.meshnet)',
    )
    .option(
      '--online-window <ms>',
      `a device is online, and stays in its rings, while its last heartbeat is this recent (default ${CONTROL_PLANE_DEFAULTS.onlineWindowMs})`,
    )
    .option(
      '--job-lease <ms>',
      `a running job with no token for this long goes back to the queue (default ${CONTROL_PLANE_DEFAULTS.jobLeaseMs})`,
    )
    .option(
      '--device-rate <requests>',
      `requests one device may make per minute; more are answered 429 (default ${CONTROL_PLANE_DEFAULTS.deviceRequestsPerMinute})`,
    )
    .option('--json', 'print {"url","port","tokenFile"} as one JSON line once listening')
    .option('--verbose', 'log every request, and print stack traces on errors')
    .addHelpText(
      'after',
      '\nFiles in the data dir: control-plane.db, control-plane.token (mode 0600; clients send it as\n"Authorization: Bearer <token>"), logs/control-plane.log. See docs/control-plane.md.\n',
    )
    .showHelpAfterError('(run `mesh-control-plane --help` for usage)')
    .exitOverride()
    .configureOutput({
      writeOut: (text) => io.stdout.write(text),
      writeErr: (text) => io.stderr.write(text),
    })
    .action(async (raw: Record<string, unknown>) => {
      const parsed = flagsSchema.safeParse(raw)
      if (!parsed.success) throw new InvalidArgumentError(describeIssues(parsed.error).text)
      await serve(parsed.data, io)
    })
}

async function serve(flags: z.infer<typeof flagsSchema>, io: CliIo): Promise<void> {
  const dataDir = resolveDataDir({ dataDir: flags.dataDir, env: io.env })
  const logger = createLogger({
    app: 'control-plane',
    file: controlPlaneFiles(dataDir).log,
    level: flags.verbose && !io.env.MESH_LOG ? 'debug' : undefined,
    stderr: io.stderr,
  })
  // Listen for the stop signal before announcing readiness, so an early SIGINT stops cleanly.
  const stopping = waitForSignal()
  const plane = await startControlPlane({
    dataDir,
    host: flags.host,
    port: flags.port,
    onlineWindowMs: flags.onlineWindow,
    jobLeaseMs: flags.jobLease,
    deviceRequestsPerMinute: flags.deviceRate,
    logger,
  })
  if (flags.json) {
    io.stdout.write(`${JSON.stringify({ url: plane.url, port: plane.port, tokenFile: plane.tokenFile })}\n`)
  } else {
    const moved = flags.port !== 0 && plane.port !== flags.port ? ` (${flags.port} was taken)` : ''
    io.stdout.write(
      [
        `Meshnet control plane listening on ${plane.url}${moved} (Ctrl+C to stop)`,
        `Port:       ${plane.port}`,
        `Host:       ${plane.host}${hostNote(plane.host)}`,
        `Data dir:   ${plane.dataDir}`,
        `Token file: ${plane.tokenFile}`,
        '',
      ].join('\n'),
    )
  }
  await stopping
  await plane.close()
  if (!flags.json) io.stdout.write('Control plane stopped\n')
}

function hostNote(host: string): string {
  if (host === '127.0.0.1' || host === '::1') return ' (this computer only; --host 0.0.0.0 serves the LAN)'
  if (host === '0.0.0.0' || host === '::') return ' (every interface: reachable from the LAN)'
  return ''
}

/** Runs `mesh-control-plane` once; resolves to the exit code after a signal stops it. */
export async function main(argv: string[], io: CliIo = processIo): Promise<number> {
  const program = createProgram(io)
  try {
    await program.parseAsync(argv, { from: 'user' })
    return 0
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2
    return reportError(io, err, { json: argv.includes('--json'), verbose: argv.includes('--verbose') })
  }
}
