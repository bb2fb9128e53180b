import { describe, expect, it } from 'vitest'
import { agentSettingsSchema, mergeSettings, parseSettings } from '../../src/agent/settings.ts'

describe('agent settings', () => {
  it('lets later sources win field by field and merges beacon options key by key', () => {
    const merged = mergeSettings(
      { mdns: true, listen: ['/ip4/0.0.0.0/tcp/4610'], beacon: { port: 1, intervalMs: 5000 } },
      { mdns: false, beacon: { port: 2, intervalMs: undefined } }, // an unset flag must not clear the file's value
      { listen: undefined, beacon: { interface: '10.0.0.2' } },
    )
    expect(merged).toEqual({
      mdns: false,
      listen: ['/ip4/0.0.0.0/tcp/4610'],
      beacon: { port: 2, intervalMs: 5000, interface: '10.0.0.2' },
    })
  })

  it('names the field of a bad value', () => {
    expect(() => parseSettings(agentSettingsSchema, { listen: ['tcp:4001'] })).toThrow(
      /setting listen\.0: a multiaddr/,
    )
    expect(() => parseSettings(agentSettingsSchema, { beacon: { port: 70000 } })).toThrow(
      /setting beacon\.port/,
    )
    expect(() => parseSettings(agentSettingsSchema, { lsten: [] })).toThrow(/lsten/)
    expect(parseSettings(agentSettingsSchema, { listen: ['/p2p-circuit'] })).toEqual({
      listen: ['/p2p-circuit'],
    })
  })
})
