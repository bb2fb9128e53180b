import { createLogger, type Logger, resolveDataDir } from '@meshnet/identity'
import type { Command } from 'commander'
import type { CliIo } from './io.ts'

/** Global options, accepted anywhere on the command line. */
export interface GlobalOptions {
  dataDir?: string
  json?: boolean
  verbose?: boolean
}

/** What every command gets: where the data lives, how to print, and a logger. */
export interface CommandContext {
  dataDir: string
  json: boolean
  verbose: boolean
  io: CliIo
  logger: Logger
}

export function commandContext(cmd: Command, io: CliIo, app = 'cli'): CommandContext {
  const globals = cmd.optsWithGlobals<GlobalOptions>()
  const dataDir = resolveDataDir({ dataDir: globals.dataDir, env: io.env })
  // One-shot commands keep stderr to warnings unless MESH_LOG asks for more; the file gets MESH_LOG.
  const logger = createLogger({
    app,
    file: `${dataDir}/logs/${app}.log`,
    stderrLevel: io.env.MESH_LOG ? undefined : globals.verbose ? 'debug' : 'warn',
    stderr: io.stderr,
  })
  return { dataDir, json: globals.json === true, verbose: globals.verbose === true, io, logger }
}
