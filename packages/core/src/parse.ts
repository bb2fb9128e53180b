import type { z } from 'zod'
import { InvalidArgumentError, type MeshError, type MeshErrorOptions } from './errors.ts'

/** Builds the error for a value that failed its schema; InvalidArgumentError unless a caller says. */
export type ParseErrorFactory = (message: string, options: MeshErrorOptions) => MeshError

/**
 * Parses `value` with `schema` and returns the parsed output, or throws one error that names the
 * first problem: `${what} ${path}: ${message}` (`what` alone when the problem is the whole value),
 * with every issue in `details.issues`. The one way Meshnet checks a value at a boundary.
 */
export function parseWith<S extends z.ZodType>(
  schema: S,
  value: unknown,
  what: string,
  toError: ParseErrorFactory = (message, options) => new InvalidArgumentError(message, options),
): z.output<S> {
  const parsed = schema.safeParse(value)
  if (parsed.success) return parsed.data
  const issues = parsed.error.issues
  const first = issues[0]!
  const path = first.path.map(String).join('.')
  return toThrow(
    toError(`${what}${path === '' ? '' : ` ${path}`}: ${first.message}`, {
      details: {
        issues: issues.slice(0, 8).map((i) => ({ path: i.path.map(String).join('.'), message: i.message })),
      },
    }),
  )
}

function toThrow(err: MeshError): never {
  throw err
}
