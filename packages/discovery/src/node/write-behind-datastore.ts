import type { Logger } from '@meshnet/core'
import { MemoryDatastore } from 'datastore-core'
import type { FsDatastore } from 'datastore-fs'
import { Key } from 'interface-datastore'

/** How long a change waits in memory before it is written to disk with the others. */
const FLUSH_MS = 2_000

/**
 * libp2p's datastore for a node with a data dir: every read and write in memory, and the disk
 * brought up to date in the background (every 2 s, and on close). libp2p's peer store reads a
 * peer's record before each update and writes it back whenever it changed; on disk that is a file
 * opened, written and renamed each time, which was the largest cost of an agent while a ring of 16
 * formed. What is on disk lets a restarted node find its peers again, so it may lag a little. A
 * write that fails (a full disk) is logged and tried again at the next flush; nothing is lost from
 * memory.
 */
export class WriteBehindDatastore extends MemoryDatastore {
  readonly path: string
  readonly #disk: FsDatastore
  readonly #log: Logger | undefined
  /** Changed keys and their new value (undefined: deleted) not yet on disk. */
  #dirty = new Map<string, Uint8Array | undefined>()
  #timer: NodeJS.Timeout | undefined
  #flushing: Promise<void> = Promise.resolve()
  /** Whether the last flush failed (one warning per run of failures, not one per flush). */
  #failing = false

  constructor(disk: FsDatastore, log?: Logger) {
    super()
    this.#disk = disk
    this.path = disk.path
    this.#log = log
  }

  /** Opens the disk store and reads everything in it into memory. */
  async open(): Promise<void> {
    await this.#disk.open()
    for await (const { key, value } of this.#disk.query({})) super.put(key, value)
  }

  /** Writes what is pending (once more: what the disk still refuses is not written) and closes it. */
  async close(): Promise<void> {
    clearTimeout(this.#timer)
    await this.flush()
    // A write the disk refused re-armed the timer: nothing may write after close.
    clearTimeout(this.#timer)
    this.#timer = undefined
    await this.#disk.close()
  }

  override put(key: Key, value: Uint8Array): Key {
    super.put(key, value)
    this.#changed(key.toString(), value)
    return key
  }

  override delete(key: Key): void {
    super.delete(key)
    this.#changed(key.toString(), undefined)
  }

  /** Brings the disk up to date with memory (one flush at a time). */
  flush(): Promise<void> {
    this.#flushing = this.#flushing.then(() => this.#write())
    return this.#flushing
  }

  #changed(key: string, value: Uint8Array | undefined): void {
    this.#dirty.set(key, value)
    this.#timer ??= setTimeout(() => {
      this.#timer = undefined
      void this.flush()
    }, FLUSH_MS).unref()
  }

  async #write(): Promise<void> {
    const pending = this.#dirty
    this.#dirty = new Map()
    let failed = 0
    let firstError: Error | undefined
    for (const [name, value] of pending) {
      try {
        if (value === undefined) await this.#disk.delete(new Key(name))
        else await this.#disk.put(new Key(name), value)
      } catch (err) {
        failed++
        firstError ??= err as Error
        // Keep it for the next flush unless something newer replaced it meanwhile.
        if (!this.#dirty.has(name)) this.#changed(name, value)
      }
    }
    if (firstError !== undefined && !this.#failing) {
      this.#log?.warn(
        { err: firstError.message, failed, path: this.path },
        'could not write the peer store to disk; kept in memory, trying again every 2 s',
      )
    } else if (firstError === undefined && this.#failing && pending.size > 0) {
      this.#log?.info({ path: this.path }, 'the peer store is written to disk again')
    }
    if (pending.size > 0) this.#failing = firstError !== undefined
  }
}
