import type { EventEmitter } from 'node:events'
import { type DebugLevel, type FabstirSDKConfig, parseSDKConfig, type ResolvedSDKConfig } from './config.ts'
import { levelEnabled, type P2PDebugEvent } from './debug-log.ts'
import { checkMeshNodeOptions } from './node-options.ts'
import type { ConnectResult, FabstirSDKEvents, Session } from './types.ts'

/**
 * What every action works on: the checked configuration, the connected session (if any) and where
 * events go. `FabstirSDK` holds one; an app that prefers plain functions makes one with
 * `createSDKClient` and passes it to the actions.
 */
export interface SDKClient {
  readonly config: ResolvedSDKConfig
  /** Most detailed `p2p:debug` level emitted (p2pConfig.debug.logLevel; trace when only verbose is set). */
  readonly level: DebugLevel
  session: Session | undefined
  /** A `connect()` under way, which a second caller joins. */
  connecting: Promise<ConnectResult> | undefined
  /** Emits an event; a throwing listener does not break the SDK's own work. */
  emit<K extends keyof FabstirSDKEvents>(name: K, ...args: FabstirSDKEvents[K]): void
  /** Emits `p2p:debug` from the SDK itself when debug output is on at that level. */
  debug(subsystem: P2PDebugEvent['subsystem'], level: DebugLevel, message: string): void
}

/**
 * Checks the configuration (SDKConfigError names the first bad option) and makes a client, doing no
 * I/O. Events go to `events` when given (FabstirSDK passes itself).
 */
export function createSDKClient(
  config: FabstirSDKConfig,
  events?: Pick<EventEmitter<FabstirSDKEvents>, 'emit'>,
): SDKClient {
  const resolved = parseSDKConfig(config)
  checkMeshNodeOptions(resolved)
  const { debug } = resolved.p2pConfig
  const level: DebugLevel = debug.logLevel
  const client: SDKClient = {
    config: resolved,
    level,
    session: undefined,
    connecting: undefined,
    emit(name, ...args) {
      try {
        ;(events?.emit as ((name: string, ...args: unknown[]) => boolean) | undefined)?.call(
          events,
          name,
          ...args,
        )
      } catch {}
    },
    debug(subsystem, at, message) {
      if (!resolved.debug || !levelEnabled(at, level)) return
      client.emit('p2p:debug', { subsystem, level: at, component: 'sdk', message, timestamp: Date.now() })
    },
  }
  return client
}
