import { isMeshError } from './errors.ts'

// Output helpers shared by the `mesh`, `mesh-relay` and `mesh-control-plane` programs: one way to
// print JSON, aligned fields and errors (message only; stack with --verbose).

/** Where a command writes; tests pass their own. */
export interface CliIo {
  stdout: { write(chunk: string): unknown }
  stderr: { write(chunk: string): unknown }
  env: Record<string, string | undefined>
}

export const processIo: CliIo = { stdout: process.stdout, stderr: process.stderr, env: process.env }

/** Prints a value as one JSON document on stdout. */
export function printJson(io: CliIo, value: unknown): void {
  io.stdout.write(`${JSON.stringify(value, null, 2)}\n`)
}

/** Prints aligned `label: value` lines. */
export function printFields(io: CliIo, fields: Array<[string, string | number | boolean | undefined]>): void {
  const width = Math.max(...fields.map(([label]) => label.length))
  for (const [label, value] of fields) {
    if (value !== undefined) io.stdout.write(`${`${label}:`.padEnd(width + 2)}${value}\n`)
  }
}

/**
 * Prints an error for a person (message only; the stack with --verbose) or, with --json, as
 * `{"error": {...}}` on stdout. Returns the exit code.
 */
export function reportError(io: CliIo, err: unknown, options: { json: boolean; verbose: boolean }): number {
  const mesh = isMeshError(err)
  const error = err instanceof Error ? err : new Error(String(err))
  if (options.json) {
    printJson(io, {
      error: {
        name: error.name,
        code: mesh ? err.code : 'ERR_UNEXPECTED',
        message: error.message,
        ...(mesh && Object.keys(err.details).length > 0 ? { details: err.details } : {}),
      },
    })
  } else {
    io.stderr.write(`error: ${error.message}\n`)
    if (!mesh && !options.verbose)
      io.stderr.write('(an unexpected error; run again with --verbose for details)\n')
  }
  if (options.verbose && error.stack !== undefined) {
    io.stderr.write(`${error.stack}\n`)
    if (error.cause instanceof Error && error.cause.stack !== undefined) {
      io.stderr.write(`caused by: ${error.cause.stack}\n`)
    }
  }
  return 1
}

/** Resolves at the first SIGINT or SIGTERM (daemons stop cleanly on either). */
export function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const done = (signal: NodeJS.Signals) => {
      process.off('SIGINT', done)
      process.off('SIGTERM', done)
      resolve(signal)
    }
    process.on('SIGINT', done)
    process.on('SIGTERM', done)
  })
}
