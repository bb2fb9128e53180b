/**
 * @packageDocumentation
 * The `mesh` command line. `main(argv)` runs one invocation and resolves to its exit code.
 */

import { type CliIo, processIo, reportError } from '@meshnet/core'
import { Command, CommanderError } from 'commander'
import pkg from '../package.json' with { type: 'json' }
import { registerDashboard } from './commands/dashboard.ts'
import { registerDemo } from './commands/demo.ts'
import { registerDoctor } from './commands/doctor.ts'
import { registerInference, registerInferenceStats } from './commands/inference.ts'
import { registerInit } from './commands/init.ts'
import { registerModelCreate } from './commands/model-create.ts'
import { registerModelPull } from './commands/model-pull.ts'
import { registerModels } from './commands/models.ts'
import { registerPool } from './commands/pool.ts'
import { registerRing } from './commands/ring.ts'
import { registerStart } from './commands/start.ts'
import { registerStatus } from './commands/status.ts'
import { commandContext, type GlobalOptions } from './context.ts'

export type { CliIo } from '@meshnet/core'

export function createProgram(io: CliIo = processIo): Command {
  const program = new Command('mesh')
    .description('Meshnet node: pool computers on a private peer-to-peer mesh and run LLMs across them')
    .version(pkg.version, '-V, --version', 'print the version')
    .option('--data-dir <path>', 'where this node keeps its files (default: $MESH_DATA_DIR or ~/.meshnet)')
    .option('--json', 'print machine-readable JSON')
    .option('--verbose', 'print debug logs and stack traces')
    .showHelpAfterError('(run `mesh --help` for usage)')
    .exitOverride()
    .configureOutput({
      writeOut: (text) => io.stdout.write(text),
      writeErr: (text) => io.stderr.write(text),
    })
  const context = (cmd: Command, app?: string) => commandContext(cmd, io, app)
  registerInit(program, context)
  registerModelCreate(program, context)
  registerModels(program, context)
  registerModelPull(program, context)
  registerInference(program, context)
  registerInferenceStats(program, context)
  registerDemo(program, context)
  registerStart(program, context)
  registerPool(program, context)
  registerRing(program, context)
  registerStatus(program, context)
  registerDashboard(program, context)
  registerDoctor(program, context)
  for (const sub of program.commands) sub.exitOverride().configureOutput(program.configureOutput())
  return program
}

/** Runs one `mesh` invocation; resolves to the process exit code. */
export async function main(argv: string[], io: CliIo = processIo): Promise<number> {
  const program = createProgram(io)
  try {
    await program.parseAsync(argv, { from: 'user' })
    return 0
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version exit with 0; usage errors were already printed by commander.
      return err.exitCode === 0 ? 0 : 2
    }
    const globals = program.opts<GlobalOptions>()
    const json = globals.json === true || argv.includes('--json')
    const verbose = globals.verbose === true || argv.includes('--verbose')
    return reportError(io, err, { json, verbose })
  }
}
