/** The first rounds of pool rendezvous in the DHT, and the pace after a round that found someone new. */
export const LOOKUP_FIRST_MS = 5_000
/** The longest wait between lookups while no pool member is connected. */
export const LOOKUP_ALONE_MAX_MS = 60_000
/**
 * The longest wait between lookups once a pool member is connected. The ring's gossip then tells
 * each member of the others, and a member that arrives later looks us up itself (at the first pace):
 * our own lookups only heal a pool split into groups that know nothing of each other.
 */
export const LOOKUP_MEMBER_MAX_MS = 300_000
/**
 * When a provider record that reached a DHT server is stored again. Records live 48 hours and
 * kad-dht republishes them itself; storing again reaches servers that joined the DHT since.
 */
export const PROVIDE_AGAIN_MS = 600_000

/**
 * When an agent next stores its pools' provider records in the DHT and looks up the other members.
 *
 * Each lookup asks every DHT server near the pool's key, and each answer names up to 20 providers
 * and 20 closer peers, each of which libp2p merges into its peer store: in a ring of 16 agents,
 * lookups every 5 to 60 s were two thirds of an idle agent's CPU. So a provide that reached a server
 * is not repeated for PROVIDE_AGAIN_MS, and lookups back off further once a member is connected.
 */
export class RendezvousSchedule {
  #lookupDelayMs = LOOKUP_FIRST_MS
  /** By pool id: when its record is next due (a pool not in it is due now). */
  readonly #provideDueAt = new Map<string, number>()
  /** Whether the last provide of some pool reached no server (as at start, before any connection). */
  #provideFailed = false
  /** The wait before a provide that reached no server is tried again: doubles, as lookups do. */
  #provideRetryMs = LOOKUP_FIRST_MS

  /** Whether this round should store the pool's provider record (the pool's first round does). */
  provideDue(poolId: string, now: number): boolean {
    return now >= (this.#provideDueAt.get(poolId) ?? 0)
  }

  /** Records a provide that reached `servers` DHT servers: none means it is due again next round. */
  provided(poolId: string, servers: number, now: number): void {
    if (servers > 0) {
      this.#provideDueAt.set(poolId, now + PROVIDE_AGAIN_MS)
      this.#provideRetryMs = LOOKUP_FIRST_MS
    } else this.#provideFailed = true
  }

  /**
   * The wait before the next round, after a round whose lookups did or did not find a member we
   * were not connected to: the first pace after a find, else twice the last wait up to the cap that
   * applies. While a provide reaches no server, sooner: from the first pace, doubling up to a minute
   * (an agent with no DHT server to reach, alone on its machine, need not wake every 5 s).
   */
  nextRoundMs(foundNew: boolean, memberConnected: boolean): number {
    const cap = memberConnected ? LOOKUP_MEMBER_MAX_MS : LOOKUP_ALONE_MAX_MS
    this.#lookupDelayMs = foundNew ? LOOKUP_FIRST_MS : Math.min(this.#lookupDelayMs * 2, cap)
    if (!this.#provideFailed) return this.#lookupDelayMs
    this.#provideFailed = false
    const retryMs = this.#provideRetryMs
    this.#provideRetryMs = Math.min(retryMs * 2, LOOKUP_ALONE_MAX_MS)
    return Math.min(retryMs, this.#lookupDelayMs)
  }
}
