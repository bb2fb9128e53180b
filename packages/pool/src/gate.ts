import type { Connection, PeerId } from '@libp2p/interface'
import { type Logger, MeshError, silentLogger } from '@meshnet/core'
import type { MeshNode } from '@meshnet/discovery'
import { decode, encode } from 'cborg'
import { z } from 'zod'
import {
  type Certificate,
  decodeCertificate,
  encodeCertificate,
  type PoolRole,
  verifyCertificate,
} from './certificate.ts'
import { CLOCK_SKEW_MS } from './encoding.ts'
import { CertificateError } from './errors.ts'
import type { RevocationList } from './revocation.ts'
import { listPools, loadCertificate, loadRevocationList, type Pool } from './store.ts'

/** Certificate exchange: both sides send the certificates of every pool they belong to. */
export const POOL_CERT_PROTOCOL = '/meshnet/pool-cert/1.0.0'
/** Largest certificate-exchange message (16 pools' certificates with delegation chains). */
export const MAX_CERT_EXCHANGE_BYTES = 64 * 1024

const exchangeSchema = z.strictObject({
  v: z.literal(1),
  certs: z.array(z.custom<Uint8Array>((v) => v instanceof Uint8Array)).max(16),
})

/** Roles that take part in a pool's ring, shards and weights. `client` certificates run jobs only. */
export const MEMBER_ROLES: readonly PoolRole[] = ['admin', 'member']
/** Every role: what the job protocol accepts. */
export const ANY_ROLE: readonly PoolRole[] = ['admin', 'member', 'client']

/** What the gate tells listeners of `revoked` when a peer loses a pool (revocation, expiry). */
export interface MembershipLost {
  nodeId: string
  poolId: string
  reason: string
}

/** A peer asked for a pool protocol without a valid certificate for that pool. */
export class PoolAccessError extends MeshError {
  override name = 'PoolAccessError' as const
  constructor(nodeId: string, poolId: string, why: string) {
    super('ERR_POOL_ACCESS', `peer ${nodeId} may not use pool ${poolId}: ${why}`, {
      hint: 'the peer needs a valid, unexpired, unrevoked certificate of that pool (mesh pool-join)',
    })
  }
}

interface LocalPool {
  pool: Pool
  certificate: Certificate
  certificateBytes: Uint8Array
  revocations: RevocationList | undefined
}

export interface PoolGateStats {
  exchanges: number
  verified: number
  refused: Record<string, number>
  /** Peers that lost a pool while connected (revocation or expiry), and connections closed for it. */
  lost: number
  connectionsClosed: number
}

/**
 * Which connected peers have proved membership of which of this node's pools. On every outbound
 * connection the two sides exchange certificates over `/meshnet/pool-cert/1.0.0`; each verifies
 * the other's against the pool root and its current revocation list, and that the certificate's
 * node id is the peer's PeerId (which noise proved). Pool protocols ask `isMember` / `requireMember`.
 */
export class PoolGate extends EventTarget {
  readonly #node: MeshNode
  readonly #dataDir: string
  readonly #logger: Logger
  #local = new Map<string, LocalPool>()
  readonly #peers = new Map<string, Map<string, Certificate>>()
  /** Why a peer's certificate of a pool was refused (expired, revoked, …), for its PoolAccessError. */
  readonly #rejected = new Map<string, Map<string, string>>()
  readonly #verdicts = new Map<string, { cert?: Certificate; reason?: string }>()
  /** The pools and revocation-list versions the verdicts were made under. */
  #verdictInputs = ''
  /** Peers' certificates proven valid, under which inputs and until when (see #whyInvalid). */
  readonly #proven = new WeakMap<Certificate, { inputs: string; until: number }>()
  readonly #stats: PoolGateStats = { exchanges: 0, verified: 0, refused: {}, lost: 0, connectionsClosed: 0 }
  /** Fires when the earliest certificate held expires, to take it away from its peer. */
  #expiryTimer: NodeJS.Timeout | undefined
  readonly #onConnection = (event: CustomEvent<Connection>) => {
    if (event.detail.direction !== 'outbound') return
    const peer = event.detail.remotePeer
    this.exchange(peer).catch((err: Error) =>
      this.#logger.debug({ peer: peer.toString(), err: err.message }, 'certificate exchange failed'),
    )
  }
  readonly #onDisconnect = (event: CustomEvent<PeerId>) => {
    this.#peers.delete(event.detail.toString())
    this.#rejected.delete(event.detail.toString())
  }

  constructor(init: { node: MeshNode; dataDir: string; logger?: Logger }) {
    super()
    this.#node = init.node
    this.#dataDir = init.dataDir
    this.#logger = init.logger ?? silentLogger()
  }

  /** This node's pools, as loaded by the last `reload()`. */
  pools(): Pool[] {
    return [...this.#local.values()].map((l) => l.pool)
  }

  certificateBytes(poolId: string): Uint8Array | undefined {
    return this.#local.get(poolId)?.certificateBytes
  }

  stats(): PoolGateStats {
    return structuredClone(this.#stats)
  }

  async start(): Promise<void> {
    await this.reload()
    await this.#node.handleRequests(
      POOL_CERT_PROTOCOL,
      (request, context) => {
        // Our certificates go only to a peer that proved it is in the same pools: an outsider
        // learns nothing about this node's pools, roles or keys.
        return this.#ourMessage(this.#accept(context.peerId, request))
      },
      {
        maxRequestBytes: MAX_CERT_EXCHANGE_BYTES,
        maxResponseBytes: MAX_CERT_EXCHANGE_BYTES,
        runOnLimitedConnection: true,
      },
    )
    this.#node.libp2p.addEventListener('connection:open', this.#onConnection)
    this.#node.libp2p.addEventListener('peer:disconnect', this.#onDisconnect)
    // Discovery (mDNS, bootstrap) may have connected peers while the node started, before the
    // listener above existed: exchange with them now.
    for (const peer of this.#node.libp2p.getPeers()) {
      this.exchange(peer).catch((err: Error) =>
        this.#logger.debug({ peer: peer.toString(), err: err.message }, 'certificate exchange failed'),
      )
    }
  }

  async stop(): Promise<void> {
    clearTimeout(this.#expiryTimer)
    this.#expiryTimer = undefined
    this.#node.libp2p.removeEventListener('connection:open', this.#onConnection)
    this.#node.libp2p.removeEventListener('peer:disconnect', this.#onDisconnect)
    await this.#node.libp2p.unhandle(POOL_CERT_PROTOCOL).catch(() => {})
  }

  /** Re-reads this node's pools, certificates and revocation lists from the data dir. */
  async reload(): Promise<void> {
    // A damaged pool.json is logged (once) by listPools; a certificate for another node id is
    // refused by loadCertificate, and that pool skipped with a warning.
    const { pools } = await listPools(this.#dataDir, { logger: this.#logger })
    const local = new Map<string, LocalPool>()
    for (const pool of pools) {
      let certificate: Certificate | undefined
      let revocations: RevocationList | undefined
      try {
        certificate = await loadCertificate(pool, { nodeId: this.#node.nodeId })
        if (certificate === undefined) continue
        revocations = await loadRevocationList(pool)
        verifyCertificate(certificate, { poolId: pool.id, rootPublicKey: pool.rootPublicKey, revocations })
      } catch (err) {
        this.#logger.warn(
          { poolId: pool.id, err: (err as Error).message },
          'own certificate is not valid; pool skipped',
        )
        continue
      }
      local.set(pool.id, { pool, certificate, certificateBytes: encodeCertificate(certificate), revocations })
    }
    this.#local = local
    // A verdict holds until the pools or their revocation lists change: the 3 s pool scan reloads
    // far more often than that happens, and verifying again costs a signature per certificate.
    const inputs = [...local].map(([id, l]) => `${id}/${l.revocations?.version ?? 0}`).join(',')
    if (inputs !== this.#verdictInputs) this.#verdicts.clear()
    this.#verdictInputs = inputs
    this.#revalidate()
  }

  /** Sends our certificates to a peer and takes in theirs. */
  async exchange(peer: PeerId): Promise<string[]> {
    if (this.#local.size === 0) return []
    const response = await this.#node.request(peer, POOL_CERT_PROTOCOL, this.#ourMessage(undefined), {
      timeoutMs: 10_000,
      maxResponseBytes: MAX_CERT_EXCHANGE_BYTES,
      runOnLimitedConnection: true,
    })
    return this.#accept(peer, response)
  }

  /**
   * True when `peer` holds a certificate of `poolId` that is valid now (expiry and revocation), of
   * one of `roles` (default: member or admin; pass `ANY_ROLE` where a client may come too).
   */
  isMember(peer: PeerId | string, poolId: string, roles: readonly PoolRole[] = MEMBER_ROLES): boolean {
    return this.#check(peer.toString(), poolId, roles) === undefined
  }

  /** Throws PoolAccessError saying why when `peer` may not use `poolId`'s protocols (see `isMember`). */
  requireMember(peer: PeerId | string, poolId: string, roles: readonly PoolRole[] = MEMBER_ROLES): void {
    const why = this.#check(peer.toString(), poolId, roles)
    if (why !== undefined) throw new PoolAccessError(peer.toString(), poolId, why)
  }

  /**
   * Checks certificate bytes some message carries (a ring announcement) for `poolId` and `nodeId`.
   * Returns why it is refused, or undefined when it is valid now.
   */
  verifyCertificateBytes(
    poolId: string,
    bytes: Uint8Array,
    nodeId: string,
    roles: readonly PoolRole[] = MEMBER_ROLES,
  ): string | undefined {
    const local = this.#local.get(poolId)
    if (local === undefined) return 'this node is not a member of that pool'
    // Every announcement of a member carries the same certificate: verify it once (until the next
    // reload, which brings new revocation lists) and only re-check its validity window after that.
    const key = `${poolId}:${Buffer.from(bytes).toString('base64')}`
    let verdict = this.#verdicts.get(key)
    if (verdict === undefined) {
      try {
        const cert = decodeCertificate(bytes, {
          poolId,
          rootPublicKey: local.pool.rootPublicKey,
          revocations: local.revocations,
        })
        verdict = { cert }
      } catch (err) {
        verdict = { reason: err instanceof CertificateError ? err.reason : 'malformed' }
      }
      if (this.#verdicts.size >= 1024) this.#verdicts.clear()
      this.#verdicts.set(key, verdict)
    }
    if (verdict.cert === undefined) return verdict.reason
    if (Date.now() > verdict.cert.expiresAt + CLOCK_SKEW_MS) return 'expired'
    if (verdict.cert.nodeId !== nodeId) return 'node-id-mismatch'
    return roles.includes(verdict.cert.role) ? undefined : `role-${verdict.cert.role}`
  }

  /** The current revocation list of one of our pools. */
  revocations(poolId: string): RevocationList | undefined {
    return this.#local.get(poolId)?.revocations
  }

  /** Connected peers that proved membership of `poolId`. */
  members(poolId: string): string[] {
    return [...this.#peers.keys()].filter((peer) => this.isMember(peer, poolId))
  }

  /** True when the peer proved membership of any of our pools (used for gossip scoring). */
  isMemberOfAny(peer: PeerId | string): boolean {
    return [...this.#local.keys()].some((poolId) => this.isMember(peer, poolId))
  }

  /**
   * Why a certificate a peer holds is not valid now, or undefined. A certificate proven valid stays
   * so, without verifying its signatures again, until it expires or the pools or their revocation
   * lists change: peers' rights are checked on every request and gossip score.
   */
  #whyInvalid(cert: Certificate, local: LocalPool): string | undefined {
    const proof = this.#proven.get(cert)
    if (proof !== undefined && proof.inputs === this.#verdictInputs && Date.now() <= proof.until) {
      return undefined
    }
    try {
      verifyCertificate(cert, {
        poolId: local.pool.id,
        rootPublicKey: local.pool.rootPublicKey,
        revocations: local.revocations,
      })
    } catch (err) {
      return err instanceof CertificateError ? err.shortMessage : 'invalid certificate'
    }
    const until = Math.min(cert.expiresAt, cert.issuerCertificate?.expiresAt ?? Number.POSITIVE_INFINITY)
    this.#proven.set(cert, { inputs: this.#verdictInputs, until: until + CLOCK_SKEW_MS })
    return undefined
  }

  #check(peer: string, poolId: string, roles: readonly PoolRole[]): string | undefined {
    const local = this.#local.get(poolId)
    if (local === undefined) return 'this node is not a member of that pool'
    const cert = this.#peers.get(peer)?.get(poolId)
    if (cert === undefined) return this.#rejected.get(peer)?.get(poolId) ?? 'no certificate presented'
    const invalid = this.#whyInvalid(cert, local)
    if (invalid !== undefined) return invalid
    return roles.includes(cert.role)
      ? undefined
      : `its certificate is for the ${cert.role} role, which may not use this (${roles.join(' or ')} only)`
  }

  /**
   * Re-checks every certificate peers hold against our current pools and revocation lists, and the
   * clock: a peer whose certificate was revoked or expired loses that pool (its PoolAccessError says
   * why), listeners of `revoked` end what it had open, and a peer left in none of our pools is
   * disconnected. Runs after every `reload` and when the earliest certificate held expires.
   */
  #revalidate(): void {
    clearTimeout(this.#expiryTimer)
    this.#expiryTimer = undefined
    const lost: MembershipLost[] = []
    let nextExpiry = Number.POSITIVE_INFINITY
    for (const [peer, held] of this.#peers) {
      for (const [poolId, cert] of held) {
        const local = this.#local.get(poolId)
        const reason = local === undefined ? 'this node left the pool' : this.#whyInvalid(cert, local)
        if (reason === undefined) {
          nextExpiry = Math.min(nextExpiry, cert.expiresAt + CLOCK_SKEW_MS)
          continue
        }
        held.delete(poolId)
        this.#rejectedOf(peer).set(poolId, reason)
        if (local !== undefined) lost.push({ nodeId: peer, poolId, reason })
      }
    }
    if (Number.isFinite(nextExpiry)) {
      // setTimeout holds at most ~24.8 days; a later expiry is looked at again then.
      const wait = Math.min(Math.max(0, nextExpiry - Date.now()) + 1, 2 ** 31 - 1)
      this.#expiryTimer = setTimeout(() => this.#revalidate(), wait)
      this.#expiryTimer.unref()
    }
    for (const event of lost) {
      this.#stats.lost++
      this.#logger.warn(event, 'a peer lost its pool certificate; ending what it had open')
      this.dispatchEvent(new CustomEvent<MembershipLost>('revoked', { detail: event }))
    }
    for (const nodeId of new Set(lost.map((l) => l.nodeId))) {
      if ((this.#peers.get(nodeId)?.size ?? 0) > 0) continue
      const peer = this.#node.libp2p
        .getConnections()
        .find((c) => c.remotePeer.toString() === nodeId)?.remotePeer
      if (peer === undefined) continue
      this.#stats.connectionsClosed++
      void this.#node.libp2p.hangUp(peer).catch(() => {})
    }
  }

  #rejectedOf(peer: string): Map<string, string> {
    let map = this.#rejected.get(peer)
    if (map === undefined) {
      if (this.#rejected.size >= 4096) this.#rejected.delete(this.#rejected.keys().next().value!)
      map = new Map()
      this.#rejected.set(peer, map)
    }
    return map
  }

  /** Our certificates: all of them (we dialled), or only those of `pools` (the peer proved them). */
  #ourMessage(pools: readonly string[] | undefined): Uint8Array {
    const shown = [...this.#local.values()].filter((l) => pools === undefined || pools.includes(l.pool.id))
    return encode({ v: 1, certs: shown.map((l) => l.certificateBytes) })
  }

  /** Verifies a peer's exchange message; returns the pools it proved. Never throws on bad input. */
  #accept(peer: PeerId, data: Uint8Array): string[] {
    this.#stats.exchanges++
    let message: z.infer<typeof exchangeSchema>
    try {
      message = exchangeSchema.parse(decode(data, { strict: true, useMaps: false }))
    } catch {
      this.#refuse('malformed')
      return []
    }
    const proved: string[] = []
    const held = this.#peers.get(peer.toString()) ?? new Map<string, Certificate>()
    for (const bytes of message.certs) {
      let matched = false
      for (const local of this.#local.values()) {
        try {
          const cert = decodeCertificate(bytes, {
            poolId: local.pool.id,
            rootPublicKey: local.pool.rootPublicKey,
            revocations: local.revocations,
          })
          matched = true
          if (cert.nodeId !== peer.toString()) {
            this.#refuse('node-id-mismatch')
            break
          }
          held.set(local.pool.id, cert)
          this.#rejected.get(peer.toString())?.delete(local.pool.id)
          proved.push(local.pool.id)
          this.#stats.verified++
          break
        } catch (err) {
          const reason = err instanceof CertificateError ? err.reason : 'malformed'
          if (reason !== 'wrong-pool') {
            this.#refuse(reason)
            // Kept so that the peer's PoolAccessError says why (expired, revoked, not yet valid).
            this.#rejectedOf(peer.toString()).set(
              local.pool.id,
              err instanceof CertificateError ? err.shortMessage : 'malformed certificate',
            )
            held.delete(local.pool.id)
            matched = true
            break
          }
        }
      }
      // A certificate of a pool we are not in proves nothing here; it is counted, not an error.
      if (!matched) this.#refuse('not-our-pool')
    }
    this.#peers.set(peer.toString(), held)
    if (proved.length > 0) {
      this.dispatchEvent(new CustomEvent('member', { detail: { nodeId: peer.toString(), pools: proved } }))
      this.#revalidate()
    }
    return proved
  }

  #refuse(reason: string): void {
    this.#stats.refused[reason] = (this.#stats.refused[reason] ?? 0) + 1
  }
}
