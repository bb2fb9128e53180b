import { mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import pino, { type Logger } from 'pino'
import { z } from 'zod'
import { InvalidArgumentError } from './errors.ts'

export type { Logger } from 'pino'

/** Environment variable holding the log level. */
export const LOG_LEVEL_ENV = 'MESH_LOG'
export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const
export type LogLevel = (typeof LOG_LEVELS)[number]

/** Reads `MESH_LOG`; unset means `fallback`, anything else unknown is an error naming the variable. */
export function logLevelFromEnv(
  env: Record<string, string | undefined> = process.env,
  fallback: LogLevel = 'info',
): LogLevel {
  const raw = env[LOG_LEVEL_ENV]?.trim().toLowerCase()
  if (raw === undefined || raw === '') return fallback
  if ((LOG_LEVELS as readonly string[]).includes(raw)) return raw as LogLevel
  throw new InvalidArgumentError(`${LOG_LEVEL_ENV}=${raw} is not a log level`, {
    hint: `use one of ${LOG_LEVELS.join(', ')}`,
  })
}

export interface CreateLoggerOptions {
  /** Names the log file (`<app>.log`) and tags every line. */
  app: string
  /** Log file path; omit to log to stderr only. */
  file?: string
  /** Level for the file and stderr; default from `MESH_LOG`, else info. */
  level?: LogLevel
  /** Separate, usually quieter, level for stderr (one-shot CLI commands use `warn`). */
  stderrLevel?: LogLevel
  /** Where human-readable lines go; default process.stderr. */
  stderr?: { write(chunk: string): unknown }
}

/**
 * One logger per process: JSON lines to the log file, short human lines to stderr.
 * File writes are synchronous so that nothing is lost when the process dies.
 */
export function createLogger(options: CreateLoggerOptions): Logger {
  const level = options.level ?? logLevelFromEnv()
  const stderrLevel = options.stderrLevel ?? level
  const streams: pino.StreamEntry[] = [
    { level: stderrLevel, stream: humanStream(options.stderr ?? process.stderr) },
  ]
  if (options.file !== undefined) {
    mkdirSync(dirname(options.file), { recursive: true, mode: 0o700 })
    streams.push({ level, stream: pino.destination({ dest: options.file, sync: true, mkdir: true }) })
  }
  const lowest = [level, stderrLevel].sort((a, b) => LOG_LEVELS.indexOf(b) - LOG_LEVELS.indexOf(a))[0]
  return pino({ level: lowest, base: { app: options.app } }, pino.multistream(streams))
}

/** A logger that drops everything (for libraries used without one). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' })
}

const levelNames: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO',
  40: 'WARN',
  50: 'ERROR',
  60: 'FATAL',
}
const reserved = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'app'])

function humanStream(out: { write(chunk: string): unknown }): { write(line: string): void } {
  return {
    write(line: string) {
      let entry: Record<string, unknown>
      try {
        entry = JSON.parse(line)
      } catch {
        out.write(line)
        return
      }
      const time = new Date(Number(entry.time)).toISOString().slice(11, 23)
      const level = (levelNames[Number(entry.level)] ?? 'LOG').padEnd(5)
      const extras = Object.entries(entry)
        .filter(([key]) => !reserved.has(key))
        .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`)
      out.write(
        `${time} ${level} [${String(entry.app)}] ${String(entry.msg ?? '')}${extras.length > 0 ? ` ${extras.join(' ')}` : ''}\n`,
      )
    },
  }
}

/** Checks that a value is a Logger (for option schemas that take one). */
export const loggerSchema = z.custom<Logger>(
  (value) =>
    typeof value === 'object' &&
    value !== null &&
    ['debug', 'info', 'warn', 'error', 'child'].every(
      (method) => typeof (value as unknown as Record<string, unknown>)[method] === 'function',
    ),
  { message: 'must be a logger from @meshnet/identity (createLogger)' },
)
