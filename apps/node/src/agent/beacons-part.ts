import { type LanBeacons, lanBeacons } from '@meshnet/discovery'
import type { AgentContext, AgentPart } from './agent.ts'
import { BEACON_DEFAULTS } from './settings.ts'

/** The agent's LAN beacons: one multicast socket shared by pool joins and presence. */
export interface BeaconsPart extends AgentPart {
  readonly beacons: LanBeacons
  /** Adds a source of fields for the periodic presence beacon. */
  addPresence(source: () => Record<string, unknown>): void
}

/** Beacon options for a node's settings (`localOnly` keeps them on the loopback interface). */
export function beaconOptions(config: AgentContext['config']) {
  return {
    group: config.beacon?.group ?? BEACON_DEFAULTS.group,
    port: config.beacon?.port ?? BEACON_DEFAULTS.port,
    intervalMs: config.beacon?.intervalMs ?? BEACON_DEFAULTS.intervalMs,
    ...(config.localOnly ? { localOnly: true } : {}),
    ...(config.beacon?.interface && !config.localOnly ? { interface: config.beacon.interface } : {}),
  }
}

export function beaconsPart(context: AgentContext): BeaconsPart {
  const sources: Array<() => Record<string, unknown>> = []
  const beacons = lanBeacons({
    identity: context.identity,
    ...beaconOptions(context.config),
    logger: context.logger,
    presence: () => Object.assign({ name: context.config.name }, ...sources.map((source) => source())),
  })
  return {
    name: 'beacons',
    beacons,
    addPresence: (source) => sources.push(source),
    start: async () => {
      await beacons.start()
      context.logger.info(
        { endpoint: beacons.endpoint, localOnly: context.config.localOnly === true },
        'LAN beacons on',
      )
    },
    stop: () => beacons.stop(),
    status: () => ({ endpoint: beacons.endpoint, ...beacons.stats() }),
  }
}
