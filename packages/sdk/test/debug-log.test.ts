import { describe, expect, it } from 'vitest'
import { debugComponentLogger, format, type P2PDebugEvent, subsystemOf } from '../src/debug-log.ts'

describe('p2p:debug from libp2p logs', () => {
  it('sorts libp2p components into subsystems', () => {
    expect(subsystemOf('meshnet:dht:rpc')).toBe('dht')
    expect(subsystemOf('libp2p:tcp:listener')).toBe('transport')
    expect(subsystemOf('libp2p:connection-manager')).toBe('connection')
    expect(subsystemOf('libp2p:mdns')).toBe('discovery')
    expect(subsystemOf('libp2p:autonat')).toBe('nat')
    expect(subsystemOf('libp2p:something-else')).toBe('libp2p')
  })

  it('formats libp2p log calls the way debug does', () => {
    expect(format('dialing %s after %d ms', ['/ip4/127.0.0.1/tcp/1', 12])).toBe(
      'dialing /ip4/127.0.0.1/tcp/1 after 12 ms',
    )
    expect(format('failed - %e', [new TypeError('boom')])).toBe('failed - TypeError: boom')
    expect(format('100%% of %o', [{ a: 1 }, 'extra'])).toBe('100% of {"a":1} extra')
  })

  it('emits only the chosen subsystems, up to the chosen level', () => {
    const events: P2PDebugEvent[] = []
    const logger = debugComponentLogger({ subsystems: ['dht'], level: 'debug', emit: (e) => events.push(e) })
    const dht = logger.forComponent('meshnet:dht')
    const tcp = logger.forComponent('libp2p:tcp')
    expect([dht.enabled, tcp.enabled]).toEqual([true, false])
    dht('query %s', 'abc')
    dht.trace('too detailed')
    dht.error('lost %s', 'peer')
    tcp('not chosen')
    dht.newScope('rpc')('scoped')
    expect(events.map((e) => [e.subsystem, e.level, e.component, e.message])).toEqual([
      ['dht', 'debug', 'meshnet:dht', 'query abc'],
      ['dht', 'error', 'meshnet:dht', 'lost peer'],
      ['dht', 'debug', 'meshnet:dht:rpc', 'scoped'],
    ])
  })
})
