import type { CliIo } from '@meshnet/core'
import { createLogger, type Logger } from '@meshnet/core'
import { resolveDataDir } from '@meshnet/identity'
import type { Command } from 'commander'

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

/**
 * Builds the context for one command. One-shot commands (app `cli`) keep stderr to warnings unless
 * MESH_LOG or --verbose asks for more; daemons (`agent`, ...) log at MESH_LOG's level (default info).
 */
export function commandContext(cmd: Command, io: CliIo, app = 'cli'): CommandContext {
  const globals = cmd.optsWithGlobals<GlobalOptions>()
  const dataDir = resolveDataDir({ dataDir: globals.dataDir, env: io.env })
  const logger = createLogger({
    app,
    file: `${dataDir}/logs/${app}.log`,
    level: globals.verbose && !io.env.MESH_LOG ? 'debug' : undefined,
    stderrLevel: io.env.MESH_LOG || app !== 'cli' ? undefined : globals.verbose ? 'debug' : 'warn',
    stderr: io.stderr,
  })
  return { dataDir, json: globals.json === true, verbose: globals.verbose === true, io, logger }
}
