import type { ComponentLogger, Logger } from '@libp2p/interface'
import { DEBUG_LEVELS, type DebugLevel, type DebugSubsystem } from './config.ts'

/** One `p2p:debug` event. */
export interface P2PDebugEvent {
  /** A libp2p subsystem (`dht`, `connection`, ...) or an SDK one (`sdk`, `pool`, `job`, `perf`). */
  subsystem: DebugSubsystem | 'sdk' | 'pool' | 'job' | 'perf'
  level: DebugLevel
  /** The libp2p component (`libp2p:tcp`, `meshnet:dht:rpc`, ...) or `sdk`. */
  component: string
  message: string
  timestamp: number
}

/** libp2p components, by name, sorted into the subsystems `p2pConfig.debug.subsystems` offers. */
const SUBSYSTEM_PATTERNS: ReadonlyArray<[DebugSubsystem, RegExp]> = [
  ['dht', /kad|dht/],
  ['nat', /autonat|upnp|dcutr|connectivity|nat/],
  ['identify', /identify/],
  ['ping', /ping|connection-monitor/],
  ['discovery', /bootstrap|mdns|discovery|peer-store|address-manager/],
  ['transport', /tcp|websocket|circuit|transport|webrtc|listener/],
  ['connection', /connection|upgrader|dial|yamux|noise|multistream|registrar|gater/],
]

export function subsystemOf(component: string): DebugSubsystem {
  return SUBSYSTEM_PATTERNS.find(([, pattern]) => pattern.test(component))?.[0] ?? 'libp2p'
}

export function levelEnabled(level: DebugLevel, threshold: DebugLevel): boolean {
  return DEBUG_LEVELS.indexOf(level) <= DEBUG_LEVELS.indexOf(threshold)
}

/**
 * A libp2p ComponentLogger that turns libp2p's own debug lines into `p2p:debug` events, for the
 * chosen subsystems and up to the chosen level (`log` is debug, `error` is error, `trace` is trace).
 * Loggers of subsystems that are off report `enabled: false`, so libp2p skips formatting for them.
 * `verbose` (p2pConfig.debug.verbose) writes errors in full: code, cause chain and top stack frames.
 */
export function debugComponentLogger(init: {
  subsystems: readonly DebugSubsystem[]
  level: DebugLevel
  verbose?: boolean
  emit(event: P2PDebugEvent): void
}): ComponentLogger {
  const verbose = init.verbose ?? false
  const make = (component: string): Logger => {
    const subsystem = subsystemOf(component)
    const on = init.subsystems.includes(subsystem)
    const write =
      (level: DebugLevel) =>
      (formatter: unknown, ...args: unknown[]) => {
        if (!on || !levelEnabled(level, init.level)) return
        init.emit({
          subsystem,
          level,
          component,
          message: format(formatter, args, verbose),
          timestamp: Date.now(),
        })
      }
    const logger = Object.assign(write('debug'), {
      error: write('error'),
      trace: write('trace'),
      enabled: on && levelEnabled('debug', init.level),
      newScope: (name: string) => make(`${component}:${name}`),
    })
    return logger
  }
  return { forComponent: make }
}

/**
 * printf-style formatting of libp2p log calls: %s %d %o %p (peer) %a (multiaddr) %e (error) ...
 * Errors are `Name: message`; `verbose` adds their code, causes and top stack frames.
 */
export function format(formatter: unknown, args: unknown[], verbose = false): string {
  const show = verbose ? showVerbose : showBrief
  if (typeof formatter !== 'string') return [formatter, ...args].map(show).join(' ')
  let next = 0
  const text = formatter.replace(/%([a-zA-Z%])/g, (match, letter: string) => {
    if (letter === '%') return '%'
    if (next >= args.length) return match
    const arg = args[next++]
    if (letter === 'e') return show(arg)
    if (letter === 'd' || letter === 'i') return String(Number(arg))
    return show(arg)
  })
  const rest = args.slice(next).map(show)
  return rest.length === 0 ? text : `${text} ${rest.join(' ')}`
}

/** Stack frames of an error kept in verbose output. */
const VERBOSE_STACK_FRAMES = 3
/** Causes followed in verbose output. */
const VERBOSE_CAUSES = 4

function showVerbose(value: unknown): string {
  if (!(value instanceof Error)) return showBrief(value)
  const parts: string[] = []
  let error: unknown = value
  for (let depth = 0; error instanceof Error && depth <= VERBOSE_CAUSES; depth++) {
    const code = (error as Error & { code?: unknown }).code
    const frames = (error.stack ?? '')
      .split('\n')
      .filter((line) => line.trimStart().startsWith('at '))
      .slice(0, VERBOSE_STACK_FRAMES)
      .map((line) => line.trim())
    parts.push(
      `${error.name}: ${error.message}${typeof code === 'string' ? ` [${code}]` : ''}` +
        (frames.length > 0 ? ` (${frames.join(' < ')})` : ''),
    )
    error = error.cause
  }
  return parts.join(' <- caused by ')
}

function showBrief(value: unknown): string {
  if (typeof value === 'string') return value
  if (value instanceof Error) return `${value.name}: ${value.message}`
  if (value instanceof Uint8Array) return `<${value.byteLength} bytes>`
  if (value !== null && typeof value === 'object') {
    const text = String(value)
    if (text !== '[object Object]') return text
    try {
      return JSON.stringify(value, (_key, v) => (typeof v === 'bigint' ? v.toString() : v))
    } catch {
      return text
    }
  }
  return String(value)
}
