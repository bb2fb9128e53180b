import { InvalidArgumentError } from '@meshnet/core'
import type { KernelBuffer } from './api.ts'
import { KernelMemoryError } from './errors.ts'
import type { WasmMemory } from './webassembly.ts'

const PAGE = 65536
/** Every allocation starts on a cache line and takes whole cache lines. */
const ALIGN = 64
const MiB = 1024 * 1024

interface Allocation {
  readonly ptr: number
  readonly size: number
  live: boolean
}

/**
 * A range of kernel memory: an allocation, or a view into one (`Kernels.view`). Its typed-array
 * views are cached and re-created after the memory grows, when the old ones stop covering it.
 */
export class HeapBuffer implements KernelBuffer {
  readonly ptr: number
  readonly byteLength: number
  readonly allocation: Allocation
  readonly heap: KernelHeap
  /** True for a buffer made by `view()`, which `free()` does not take. */
  readonly isView: boolean
  #generation = -1
  #bytes: Uint8Array | undefined
  #f32: Float32Array | undefined

  constructor(heap: KernelHeap, allocation: Allocation, ptr: number, byteLength: number, isView: boolean) {
    this.heap = heap
    this.isView = isView
    this.allocation = allocation
    this.ptr = ptr
    this.byteLength = byteLength
  }

  bytes(): Uint8Array {
    this.#refresh()
    this.#bytes ??= new Uint8Array(this.heap.buffer, this.ptr, this.byteLength)
    return this.#bytes
  }

  f32(): Float32Array {
    this.#refresh()
    if (this.#f32 === undefined) {
      if (this.ptr % 4 !== 0) {
        throw new InvalidArgumentError(`a kernel buffer at byte ${this.ptr} cannot be viewed as floats`, {
          hint: 'views read as f32 must start on a multiple of 4 bytes',
        })
      }
      this.#f32 = new Float32Array(this.heap.buffer, this.ptr, this.byteLength >>> 2)
    }
    return this.#f32
  }

  #refresh(): void {
    if (!this.allocation.live) {
      throw new InvalidArgumentError(`kernel buffer at byte ${this.allocation.ptr} was freed`)
    }
    if (this.#generation !== this.heap.generation) {
      this.#generation = this.heap.generation
      this.#bytes = undefined
      this.#f32 = undefined
    }
  }
}

/**
 * First-fit allocator over a WebAssembly memory, from `start` up. It grows the memory page by page
 * as needed, up to its maximum, and never shrinks it. Only the thread that owns it allocates, and
 * only while no kernel job runs, so the memory never grows under a running kernel.
 */
export class KernelHeap {
  readonly #memory: WasmMemory
  readonly #maxBytes: number
  /** Free ranges as [start, end) pairs, sorted and coalesced. */
  readonly #free: Array<[number, number]> = []
  readonly #live = new Map<number, Allocation>()
  #buffer: ArrayBufferLike
  #used = 0
  /** Counts memory growths; buffers re-create their views when it moves. */
  generation = 0

  constructor(memory: WasmMemory, start: number, maxBytes: number) {
    this.#memory = memory
    this.#maxBytes = maxBytes
    this.#buffer = memory.buffer
    const end = this.#buffer.byteLength
    if (start < end) this.#free.push([start, end])
  }

  /** The memory's current buffer (a new object after each growth). */
  get buffer(): ArrayBufferLike {
    return this.#buffer
  }

  alloc(byteLength: number): HeapBuffer {
    if (!Number.isSafeInteger(byteLength) || byteLength < 0) {
      throw new InvalidArgumentError(`cannot allocate ${byteLength} bytes of kernel memory`)
    }
    const size = Math.max(ALIGN, Math.ceil(byteLength / ALIGN) * ALIGN)
    let index = this.#free.findIndex(([start, end]) => end - start >= size)
    if (index < 0) index = this.#grow(size, byteLength)
    const range = this.#free[index]!
    const ptr = range[0]
    if (range[1] - ptr === size) this.#free.splice(index, 1)
    else range[0] = ptr + size
    const allocation: Allocation = { ptr, size, live: true }
    this.#live.set(ptr, allocation)
    this.#used += size
    return new HeapBuffer(this, allocation, ptr, byteLength, false)
  }

  free(buf: KernelBuffer): void {
    const allocation =
      buf instanceof HeapBuffer && buf.heap === this && !buf.isView ? buf.allocation : undefined
    if (allocation === undefined) {
      throw new InvalidArgumentError('free() takes a buffer returned by alloc() of the same kernels')
    }
    if (!allocation.live || this.#live.get(allocation.ptr) !== allocation) {
      throw new InvalidArgumentError(`kernel buffer at byte ${allocation.ptr} was already freed`)
    }
    allocation.live = false
    this.#live.delete(allocation.ptr)
    this.#used -= allocation.size
    this.#release(allocation.ptr, allocation.ptr + allocation.size)
  }

  /** A buffer over `byteLength` bytes of `buf` from `byteOffset`, sharing its allocation. */
  view(buf: KernelBuffer, byteOffset: number, byteLength: number): HeapBuffer {
    if (!(buf instanceof HeapBuffer) || buf.heap !== this) {
      throw new InvalidArgumentError('view() takes a buffer of the same kernels')
    }
    if (
      !Number.isSafeInteger(byteOffset) ||
      !Number.isSafeInteger(byteLength) ||
      byteOffset < 0 ||
      byteLength < 0 ||
      byteOffset + byteLength > buf.byteLength
    ) {
      throw new InvalidArgumentError(
        `view [${byteOffset}, ${byteOffset + byteLength}) is outside a kernel buffer of ${buf.byteLength} bytes`,
      )
    }
    return new HeapBuffer(this, buf.allocation, buf.ptr + byteOffset, byteLength, true)
  }

  /** True when `buf` is a live buffer (or view) of this heap. */
  owns(buf: KernelBuffer): buf is HeapBuffer {
    return buf instanceof HeapBuffer && buf.heap === this && buf.allocation.live
  }

  /** Grows the memory so that a free range of `size` bytes exists; returns its index. */
  #grow(size: number, requested: number): number {
    const end = this.#buffer.byteLength
    const last = this.#free.at(-1)
    const tail = last !== undefined && last[1] === end ? last[1] - last[0] : 0
    const pages = Math.ceil((size - tail) / PAGE)
    if (end + pages * PAGE > this.#maxBytes) {
      throw new KernelMemoryError(
        `kernel memory is full: ${requested} bytes requested, ${(this.#used / MiB).toFixed(1)} MiB in use, limit ${(this.#maxBytes / MiB).toFixed(0)} MiB`,
        {
          hint: 'free buffers, or give this node fewer layers (one kernel memory holds at most 4 GiB: wasm32)',
          details: { requested, used: this.#used, limit: this.#maxBytes },
        },
      )
    }
    try {
      this.#memory.grow(pages)
    } catch (cause) {
      throw new KernelMemoryError(
        `kernel memory could not grow by ${pages * 64} KiB to hold ${requested} bytes`,
        { cause, hint: 'the system is out of memory; give this node fewer layers' },
      )
    }
    this.#buffer = this.#memory.buffer
    this.generation++
    this.#release(end, end + pages * PAGE)
    return this.#free.length - 1
  }

  #release(start: number, end: number): void {
    let i = 0
    while (i < this.#free.length && this.#free[i]![0] < start) i++
    const prev = this.#free[i - 1]
    const next = this.#free[i]
    if (prev !== undefined && prev[1] === start) {
      prev[1] = end
      if (next !== undefined && next[0] === end) {
        prev[1] = next[1]
        this.#free.splice(i, 1)
      }
    } else if (next !== undefined && next[0] === end) {
      next[0] = start
    } else {
      this.#free.splice(i, 0, [start, end])
    }
  }
}
