import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

// A small internet in network namespaces: a "public" segment with public hosts (a relay, ...), and
// homes, each a router namespace doing NAT with the kernel (nftables) in front of a LAN of hosts.
// Every namespace, veth and bridge is created here and has no link to the machine's own interfaces,
// and no namespace has a route beyond the bed: nothing can leave the machine.
//
//   public host 11.77.S.1 ─┐                    ┌─ router (wan0 11.77.S.101, lan0 192.168.11.1) ─ host 192.168.11.2, ...
//   public host 11.77.S.2 ─┼─ br0 ("internet") ─┤
//                          │                    └─ router (wan0 11.77.S.102, lan0 192.168.12.1) ─ host 192.168.12.2, ...
//
// Why 11.77.S.0/24 and not a TEST-NET block (RFC 5737): libp2p counts 192.0.2/24, 198.51.100/24,
// 203.0.113/24 and 100.64/10 as private (@libp2p/utils private-ip.ts), and AutoNAT, DCUtR and
// identify ignore private addresses; miniupnpd likewise refuses to map ports on a WAN address it
// counts as reserved. 11.0.0.0/8 is public to both, and unreachable from here anyway.

/**
 * Shaping of a link, the same in each direction (so a round trip pays `delayMs` twice): tc netem on
 * both ends where the kernel has it, else the user-space link of nat-wire.py (see `shaper`).
 */
export interface LinkShape {
  /** One-way delay. */
  delayMs?: number
  /** Varies each packet's delay by up to ± this much (netem may reorder packets; the wire does not). */
  jitterMs?: number
  lossPercent?: number
  rateMbit?: number
}

/** The links the issue names: a wired home LAN, Wi-Fi, and a WAN path between homes. */
export const LINK_PROFILES = {
  lan: { delayMs: 1, rateMbit: 1000 },
  wifi: { delayMs: 5, jitterMs: 2 },
  wan: { delayMs: 40, rateMbit: 50 },
} as const satisfies Record<string, LinkShape>

/**
 * How a home router translates (RFC 4787 terms):
 * - `full-cone`: endpoint-independent mapping and filtering. Linux has no full-cone target, so it is
 *   built from what conntrack does: `masquerade persistent` keeps a host's source port whenever it
 *   is free, so one internal ip:port maps to the same external port whatever the destination
 *   (endpoint-independent mapping); conntrack alone would then admit only replies from the host
 *   that was contacted (port-restricted filtering), so a DNAT rule sends anything that arrives on
 *   a host's listening port (`BedHost.port`) to that host, from any sender (endpoint-independent
 *   filtering). It is the NAT a host behind a full-cone router sees once its listening port is
 *   mapped; js-libp2p never sends from its listening port (no SO_REUSEPORT in Node's TCP client),
 *   so without the rule no such mapping could exist (see docs/nat.md).
 * - `symmetric`: `masquerade fully-random` (iptables: `--random-fully`): every new connection gets
 *   a random external port, so each destination sees another mapping; inbound is admitted only as
 *   replies (conntrack).
 */
export type NatMode = 'full-cone' | 'symmetric'

export interface HomeOptions {
  nat: NatMode
  /** Hosts on the home LAN (default 1). */
  hosts?: number
  /** Run miniupnpd on the router (LAN side, secure mode, nftables backend). */
  upnp?: boolean
  /** Shape each host's link to the router. */
  lan?: LinkShape
  /** Shape the router's link to the internet. */
  wan?: LinkShape
}

export interface NatBedOptions {
  homes: HomeOptions[]
  /** Hosts on the public segment (default 1, the relay's). */
  publicHosts?: number
  /** Shape each public host's link. */
  publicLink?: LinkShape
}

export interface BedHost {
  ns: string
  address: string
  /** The TCP port an agent on this host should listen on (a full-cone router forwards it). */
  port: number
  /** Prefix that runs a command inside this host's namespace. */
  exec: string[]
}

export interface UpnpMapping {
  protocol: string
  externalPort: number
  internalAddress: string
  internalPort: number
  description: string
}

export interface Home {
  nat: NatMode
  router: { ns: string; wan: string; lan: string; exec: string[] }
  hosts: BedHost[]
  /** miniupnpd on the router, when asked for. */
  upnp: { mappings(): UpnpMapping[]; log(): string } | undefined
  /** The router's NAT table (`conntrack -L`, when conntrack is installed), for failure messages. */
  conntrack(): string
}

export interface NatBed {
  public: BedHost[]
  homes: Home[]
  /** Stops what runs in the bed and deletes every namespace; safe to call twice. */
  destroy(): Promise<void>
}

const PREFIX = 'mnat'
/** TCP port of the first host on a LAN; the next hosts take the following ports. */
const FIRST_PORT = 4610

const run = (cmd: string, args: string[], input?: string): string =>
  execFileSync(cmd, args, { encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], input })
const ip = (...args: string[]) => run('ip', args)
const inNs = (ns: string, cmd: string, args: string[], input?: string) =>
  run('ip', ['netns', 'exec', ns, cmd, ...args], input)
const has = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0

/**
 * Why the bed cannot be built on this machine, or undefined when it can: it needs root, network
 * namespaces, nftables with NAT in a namespace, and tc (conntrack only for failure messages).
 */
export const natBedProblem: string | undefined = (() => {
  if (process.platform !== 'linux') return 'network namespaces exist only on Linux'
  if (process.getuid?.() !== 0) return 'network namespaces need root'
  for (const cmd of ['ip', 'nft', 'tc']) {
    if (!has(cmd)) return `${cmd} is not installed (apt-get install iproute2 nftables)`
  }
  const probe = `${PREFIX}probe${randomBytes(3).toString('hex')}`
  try {
    ip('netns', 'add', probe)
  } catch (err) {
    return `cannot create a network namespace: ${(err as Error).message.trim()}`
  }
  try {
    const rules = 'table ip p {\n chain n {\n type nat hook postrouting priority srcnat; masquerade\n }\n}\n'
    inNs(probe, 'nft', ['-f', '-'], rules)
    return undefined
  } catch (err) {
    return `nftables cannot NAT in a network namespace: ${String((err as { stderr?: string }).stderr ?? err).trim()}`
  } finally {
    spawnSync('ip', ['netns', 'del', probe])
  }
})()

/**
 * How links are shaped here: `netem` (tc, in the kernel), `wire` (nat-wire.py, a user-space link
 * between two TAP devices, for kernels built without sch_netem), or undefined when neither works.
 */
export const shaper: 'netem' | 'wire' | undefined = (() => {
  if (natBedProblem !== undefined) return undefined
  const probe = `${PREFIX}probe${randomBytes(3).toString('hex')}`
  try {
    ip('netns', 'add', probe)
    inNs(probe, 'tc', ['qdisc', 'add', 'dev', 'lo', 'root', 'netem', 'delay', '1ms'])
    return 'netem'
  } catch {
    return has('python3') ? 'wire' : undefined
  } finally {
    spawnSync('ip', ['netns', 'del', probe])
  }
})()

/** Why links cannot be shaped here, or undefined when they can. */
export const shapingProblem: string | undefined =
  natBedProblem ??
  (shaper === undefined
    ? 'this kernel has no tc netem (sch_netem) and python3, which runs the user-space link, is missing'
    : undefined)

/** Why a router cannot run miniupnpd here, or undefined when it can. */
export const miniupnpdProblem: string | undefined = (() => {
  if (!has('miniupnpd')) return 'miniupnpd is not installed (apt-get install miniupnpd miniupnpd-nftables)'
  const version = spawnSync('miniupnpd', ['--version'], { encoding: 'utf8' })
  return /nftables/.test(`${version.stdout}${version.stderr}`)
    ? undefined
    : 'miniupnpd here is not built with the nftables backend (install miniupnpd-nftables)'
})()

/** Builds the bed; on any failure everything built so far is removed before the error is thrown. */
export async function createNatBed(options: NatBedOptions): Promise<NatBed> {
  if (natBedProblem !== undefined) throw new Error(`cannot build the NAT bed: ${natBedProblem}`)
  removeStaleBeds()
  const id = `${PREFIX}${process.pid}-${randomBytes(3).toString('hex')}`
  const subnet = 1 + (randomBytes(1)[0]! % 250)
  const spaces: string[] = []
  const daemons: ChildProcess[] = []
  const dirs: string[] = []
  let destroyed = false
  const destroy = async () => {
    if (destroyed) return
    destroyed = true
    // miniupnpd removes its rules on SIGTERM; whatever has not gone after 3 s is killed.
    await Promise.all(daemons.map((daemon) => stopDaemon(daemon)))
    for (const ns of spaces) killAndDelete(ns)
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
  }
  const namespace = (role: string) => {
    const ns = `${id}-${role}`
    ip('netns', 'add', ns)
    spaces.push(ns)
    inNs(ns, 'ip', ['link', 'set', 'lo', 'up'])
    return ns
  }

  try {
    const internet = namespace('inet')
    inNs(internet, 'ip', ['link', 'add', 'br0', 'type', 'bridge'])
    inNs(internet, 'ip', ['link', 'set', 'br0', 'up'])
    const link = (
      ns: string,
      name: string,
      otherNs: string,
      peer: string,
      bridge: string,
      shape?: LinkShape,
    ) => connect(ns, name, otherNs, peer, bridge, shape, daemons)

    const publicHosts: BedHost[] = []
    for (let j = 0; j < (options.publicHosts ?? 1); j++) {
      const ns = namespace(`pub${j}`)
      const address = `11.77.${subnet}.${j + 1}`
      await link(ns, 'eth0', internet, `p${j}`, 'br0', options.publicLink)
      inNs(ns, 'ip', ['addr', 'add', `${address}/24`, 'dev', 'eth0'])
      inNs(ns, 'ip', ['link', 'set', 'eth0', 'up'])
      publicHosts.push({ ns, address, port: FIRST_PORT, exec: ['ip', 'netns', 'exec', ns] })
    }

    const homes: Home[] = []
    for (const [i, home] of options.homes.entries()) {
      const router = namespace(`r${i}`)
      const wan = `11.77.${subnet}.${101 + i}`
      const lanNet = `192.168.${11 + i}`
      const lan = `${lanNet}.1`
      await link(router, 'wan0', internet, `w${i}`, 'br0', home.wan)
      inNs(router, 'ip', ['addr', 'add', `${wan}/24`, 'dev', 'wan0'])
      inNs(router, 'ip', ['link', 'set', 'wan0', 'up'])
      inNs(router, 'ip', ['link', 'add', 'lan0', 'type', 'bridge'])
      inNs(router, 'ip', ['addr', 'add', `${lan}/24`, 'dev', 'lan0'])
      inNs(router, 'ip', ['link', 'set', 'lan0', 'up'])
      inNs(router, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1'])

      const hosts: BedHost[] = []
      for (let k = 0; k < (home.hosts ?? 1); k++) {
        const ns = namespace(`h${i}-${k}`)
        const address = `${lanNet}.${k + 2}`
        await link(ns, 'eth0', router, `h${k}`, 'lan0', home.lan)
        inNs(ns, 'ip', ['addr', 'add', `${address}/24`, 'dev', 'eth0'])
        inNs(ns, 'ip', ['link', 'set', 'eth0', 'up'])
        inNs(ns, 'ip', ['route', 'add', 'default', 'via', lan])
        hosts.push({ ns, address, port: FIRST_PORT + k, exec: ['ip', 'netns', 'exec', ns] })
      }

      inNs(router, 'nft', ['-f', '-'], routerRules(home.nat, hosts))
      let upnp: Home['upnp']
      if (home.upnp) {
        if (miniupnpdProblem !== undefined) throw new Error(`cannot run UPnP: ${miniupnpdProblem}`)
        const dir = mkdtempSync(join(tmpdir(), `${id}-upnp${i}-`))
        dirs.push(dir)
        upnp = startMiniupnpd(router, dir, `${lanNet}.0/24`, daemons)
      }
      homes.push({
        nat: home.nat,
        router: { ns: router, wan, lan, exec: ['ip', 'netns', 'exec', router] },
        hosts,
        upnp,
        conntrack: () => {
          try {
            return inNs(router, 'conntrack', ['-L'])
          } catch (err) {
            return String((err as { stderr?: string }).stderr ?? err)
          }
        },
      })
    }
    return { public: publicHosts, homes, destroy }
  } catch (err) {
    await destroy()
    throw err
  }
}

const WIRE = join(import.meta.dirname, 'nat-wire.py')

/**
 * A link from `ns`/`name` to `otherNs`/`peer`, the peer end a port of bridge `bridge` there: a
 * veth, with netem on both ends (each end shapes what it sends) when shaped; or, when the kernel
 * has no netem, a user-space wire (nat-wire.py) between two TAP devices.
 */
async function connect(
  ns: string,
  name: string,
  otherNs: string,
  peer: string,
  bridge: string,
  shape: LinkShape | undefined,
  daemons: ChildProcess[],
): Promise<void> {
  const shaped =
    shape !== undefined && Object.values(shape).some((value) => value !== undefined && value !== 0)
  if (!shaped || shaper === 'netem') {
    inNs(ns, 'ip', ['link', 'add', name, 'type', 'veth', 'peer', 'name', peer, 'netns', otherNs])
    if (shaped) {
      const args = netemArgs(shape)
      inNs(ns, 'tc', ['qdisc', 'add', 'dev', name, 'root', 'netem', 'limit', '100000', ...args])
      inNs(otherNs, 'tc', ['qdisc', 'add', 'dev', peer, 'root', 'netem', 'limit', '100000', ...args])
    }
  } else {
    if (shaper === undefined) throw new Error(`cannot shape a link: ${shapingProblem}`)
    const values = [shape.delayMs, shape.jitterMs, shape.lossPercent, shape.rateMbit].map((v) =>
      String(v ?? 0),
    )
    const wire = spawn('ip', ['netns', 'exec', ns, 'python3', WIRE, name, otherNs, peer, ...values], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    daemons.push(wire)
    let out = ''
    wire.stdout!.on('data', (chunk) => (out += chunk))
    wire.stderr!.on('data', (chunk) => (out += chunk))
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`the user-space link ${name} did not start:\n${out}`)),
        10_000,
      )
      const check = () => {
        if (out.includes('ready')) {
          clearTimeout(timer)
          resolve()
        }
      }
      wire.stdout!.on('data', check)
      wire.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`the user-space link ${name} exited (code ${code}):\n${out}`))
      })
    })
  }
  inNs(otherNs, 'ip', ['link', 'set', peer, 'master', bridge])
  inNs(otherNs, 'ip', ['link', 'set', peer, 'up'])
}

function netemArgs(link: LinkShape): string[] {
  const args: string[] = []
  if (link.delayMs !== undefined || link.jitterMs !== undefined) {
    args.push('delay', `${link.delayMs ?? 0}ms`)
    if (link.jitterMs !== undefined) args.push(`${link.jitterMs}ms`)
  }
  if (link.lossPercent !== undefined) args.push('loss', `${link.lossPercent}%`)
  if (link.rateMbit !== undefined) args.push('rate', `${link.rateMbit}mbit`)
  return args
}

/**
 * The router's nftables: NAT (see NatMode) and a forward filter that admits LAN-to-WAN traffic,
 * replies, and what a DNAT rule (ours or miniupnpd's) let in. The table and chain names are the
 * ones Debian's miniupnpd (nftables backend) uses by default, so that its rules land in them.
 * Unsolicited packets to the router itself meet no listener and are answered with a reset.
 */
function routerRules(nat: NatMode, hosts: BedHost[]): string {
  const forwards =
    nat === 'full-cone'
      ? hosts.map((h) => `iifname "wan0" tcp dport ${h.port} dnat ip to ${h.address}:${h.port}`)
      : []
  return `
table inet filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan0" oifname "wan0" accept
    ct status dnat accept
    jump miniupnpd
  }
  chain miniupnpd {
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    jump prerouting_miniupnpd
    ${forwards.join('\n    ')}
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    jump postrouting_miniupnpd
    oifname "wan0" masquerade ${nat === 'symmetric' ? 'fully-random' : 'persistent'}
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
}
`
}

/**
 * miniupnpd on the router: UPnP IGD (and NAT-PMP) answered on the LAN bridge only, secure mode (a
 * host may map ports to itself only), ports 1024-65535 for the LAN and nothing else. Mappings are
 * read back from its lease file.
 */
function startMiniupnpd(router: string, dir: string, lanNet: string, daemons: ChildProcess[]): Home['upnp'] {
  const leases = join(dir, 'upnp.leases')
  const conf = join(dir, 'miniupnpd.conf')
  writeFileSync(
    conf,
    [
      'ext_ifname=wan0',
      'listening_ip=lan0',
      'http_port=0',
      'enable_upnp=yes',
      'enable_natpmp=yes',
      'secure_mode=yes',
      'system_uptime=yes',
      `uuid=${randomUUID()}`,
      `lease_file=${leases}`,
      'upnp_table_name=filter',
      'upnp_nat_table_name=filter',
      'upnp_forward_chain=miniupnpd',
      'upnp_nat_chain=prerouting_miniupnpd',
      'upnp_nat_postrouting_chain=postrouting_miniupnpd',
      `allow 1024-65535 ${lanNet} 1024-65535`,
      'deny 0-65535 0.0.0.0/0 0-65535',
      '',
    ].join('\n'),
  )
  const daemon = spawn(
    'ip',
    ['netns', 'exec', router, 'miniupnpd', '-d', '-f', conf, '-P', join(dir, 'pid')],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  daemons.push(daemon)
  let log = ''
  daemon.stdout!.on('data', (chunk) => (log += chunk))
  daemon.stderr!.on('data', (chunk) => (log += chunk))
  return {
    log: () => log,
    mappings: () => {
      let text = ''
      try {
        text = readFileSync(leases, 'utf8')
      } catch {}
      // PROTO:EXT_PORT:INT_ADDR:INT_PORT:TIMESTAMP:DESCRIPTION
      return text
        .split('\n')
        .filter((line) => line.length > 0)
        .map((line) => {
          const [protocol, ext, address, int, , ...description] = line.split(':')
          return {
            protocol: protocol!,
            externalPort: Number(ext),
            internalAddress: address!,
            internalPort: Number(int),
            description: description.join(':'),
          }
        })
    },
  }
}

async function stopDaemon(daemon: ChildProcess): Promise<void> {
  if (daemon.exitCode !== null || daemon.signalCode !== null) return
  const exited = new Promise((resolve) => daemon.once('exit', resolve))
  daemon.kill('SIGTERM')
  const timer = setTimeout(() => daemon.kill('SIGKILL'), 3_000)
  await exited
  clearTimeout(timer)
}

/** Kills what still runs in a namespace of the bed (processes the tests started there) and deletes it. */
function killAndDelete(ns: string): void {
  const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout ?? ''
  for (const pid of pids.split(/\s+/).filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL')
    } catch {}
  }
  spawnSync('ip', ['netns', 'del', ns])
}

/** Beds left by test processes that died before their cleanup ran (the pid is in the name). */
function removeStaleBeds(): void {
  const list = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout ?? ''
  for (const line of list.split('\n')) {
    const ns = line.split(' ')[0] ?? ''
    const owner = new RegExp(`^${PREFIX}(\\d+)-`).exec(ns)
    if (owner === null || isAlive(Number(owner[1]))) continue
    killAndDelete(ns)
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}
