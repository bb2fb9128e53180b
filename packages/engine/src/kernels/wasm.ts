import { once } from 'node:events'
import { Worker } from 'node:worker_threads'
import { InvalidArgumentError, MeshError } from '@meshnet/core'
import { rowByteLength } from '@meshnet/gguf'
import type { KernelBuffer, Kernels } from './api.ts'
import { KernelUnavailableError } from './errors.ts'
import { type HeapBuffer, KernelHeap } from './heap.ts'
import { checkJob, PACKED_TYPE_BASE } from './types.ts'
import { KERNELS_WASM_BASE64 } from './wasm-binary.ts'
import { type WasmMemory, type WasmModule, wasmApi } from './webassembly.ts'

export interface CreateWasmKernelsOptions {
  /** Threads per kernel call, the calling thread included (default 1: no worker at all). */
  threads?: number
  /** Upper bound of kernel memory (default and maximum 4 GiB, the wasm32 limit). */
  maxMemoryBytes?: number
  /**
   * How long an idle thread polls for the next job before it sleeps on a futex, in poll rounds of
   * about 0.7 ns (default 100000: ~70 µs). Polling lets the back-to-back matvecs of a decode step
   * start without a futex wake-up (tens of µs each); 0 makes idle threads sleep at once, which is
   * better when other processes compete for the cores.
   */
  spinIterations?: number
}

export interface KernelsExports {
  init(ctrl: number): void
  dispatch(ctrl: number): void
  workerLoop(ctrl: number, seen: number): void
  pack(type: number, w: number, rows: number, cols: number, tmp: number): number
  sumF32(ptr: number, n: number): number
}

const PAGE = 65536
const WASM32_PAGES = 65536
const MAX_THREADS = 256
/** Jobs with fewer multiply-adds than this run on the calling thread alone. */
const SMALL_JOB = 1 << 16
/** Rows per tile in assembly/kernels.ts; a job is split only when it has at least two. */
const ROW_TILE = 16
const DEFAULT_SPIN = 100_000
/** ggml types with a packed layout (assembly/kernels.ts, `pack`): Q4_0 and Q8_0. */
const PACKABLE: readonly number[] = [2, 8]
const PACKED_TYPES: readonly number[] = PACKABLE.map((t) => PACKED_TYPE_BASE + t)

// The control block, mirrored from assembly/kernels.ts: i32 fields at these byte offsets / 4 from
// CTRL. The heap starts after it; address 0 is never handed out.
const CTRL = 1024
const HEAP_START = 4096
const I_GEN = 0
const I_DONE = 32
const I_QUIT = 48
const I_TYPE = 49
const I_W = 50
const I_X = 51
const I_XQ = 52
const I_OUT = 53
const I_ROWS = 54
const I_COLS = 55
const I_N = 56
const I_THREADS = 57
const I_SPIN = 58
/** Set by a worker whose chunk trapped (its thread id); read by the calling thread. */
const I_ERROR = 59
const I_CHUNKS = 61
const I_ROW_STRIDE = 63

/**
 * The worker: instantiate the module over the shared memory and run `workerLoop` until it returns
 * (dispose). Evaluated from a string so that it needs no file next to the bundle. A trap in a chunk
 * is reported through I_ERROR and still counts that chunk done, so the calling thread never hangs.
 */
const WORKER_SOURCE = `'use strict'
const { workerData, parentPort } = require('node:worker_threads')
const { module, memory, ctrl, tid } = workerData
const { exports } = new WebAssembly.Instance(module, { env: { memory } })
const c = new Int32Array(memory.buffer, ctrl, 64)
parentPort.postMessage('ready')
let seen = workerData.seen
for (;;) {
  try {
    exports.workerLoop(ctrl, seen)
    break
  } catch {
    seen = Atomics.load(c, ${I_GEN})
    Atomics.store(c, ${I_ERROR}, tid)
    if (Atomics.add(c, ${I_DONE}, 1) + 1 === c[${I_CHUNKS}]) Atomics.notify(c, ${I_DONE}, 1)
  }
}
`

let compiled: Promise<WasmModule> | undefined
let liveWorkers = 0

/** Kernel worker threads of this process that have not exited (for tests). */
export function liveKernelWorkers(): number {
  return liveWorkers
}

/** The compiled kernels module (compiled once per process). */
export function kernelsModule(): Promise<WasmModule> {
  compiled ??= (async () => {
    const bytes = Buffer.from(KERNELS_WASM_BASE64, 'base64')
    if (!wasmApi.validate(bytes)) {
      throw new KernelUnavailableError(
        'this JavaScript runtime lacks WebAssembly SIMD, relaxed SIMD or threads, which the kernels need',
        { hint: 'run Node.js 24 or newer, or use createJsKernels()' },
      )
    }
    return wasmApi.compile(bytes)
  })()
  return compiled
}

/**
 * WebAssembly SIMD kernels on `threads` threads: the calling thread and `threads - 1` workers that
 * share its kernel memory. A call writes the job into a control block in that memory and wakes the
 * workers through a futex (Atomics.notify) unless they are still polling; every thread, the caller
 * included, claims chunks of weight rows until none is left, and the caller returns when all are
 * done. No message passes on the hot path, and a worker the OS does not schedule in time costs the
 * job at most the chunk it holds.
 */
export async function createWasmKernels(options: CreateWasmKernelsOptions = {}): Promise<Kernels> {
  const threads = options.threads ?? 1
  if (!Number.isSafeInteger(threads) || threads < 1 || threads > MAX_THREADS) {
    throw new InvalidArgumentError(
      `kernel threads must be an integer from 1 to ${MAX_THREADS}, got ${threads}`,
    )
  }
  const maxBytes = options.maxMemoryBytes ?? WASM32_PAGES * PAGE
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 2 * PAGE || maxBytes > WASM32_PAGES * PAGE) {
    throw new InvalidArgumentError(`maxMemoryBytes must be from 128 KiB to 4 GiB, got ${maxBytes}`)
  }
  const spin = options.spinIterations ?? DEFAULT_SPIN
  if (!Number.isSafeInteger(spin) || spin < 0 || spin > 2 ** 31 - 1) {
    throw new InvalidArgumentError(`spinIterations must be a non-negative 32-bit integer, got ${spin}`)
  }
  const module = await kernelsModule()
  const maximum = Math.floor(maxBytes / PAGE)
  const memory = new wasmApi.Memory({ initial: Math.min(16, maximum), maximum, shared: true })
  const instance = await wasmApi.instantiate(module, { env: { memory } })
  const exports = instance.exports as unknown as KernelsExports
  exports.init(CTRL)
  const ctrl = new Int32Array(memory.buffer, CTRL, 64)
  ctrl[I_SPIN] = spin
  const workers: WasmWorker[] = []
  try {
    for (let tid = 1; tid < threads; tid++) workers.push(await startWorker(module, memory, tid))
  } catch (cause) {
    await stopWorkers(ctrl, workers)
    throw new KernelUnavailableError(
      `could not start kernel worker ${workers.length + 1} of ${threads - 1}`,
      {
        cause,
      },
    )
  }
  return new WasmKernels(exports, new KernelHeap(memory, HEAP_START, maximum * PAGE), ctrl, threads, workers)
}

interface WasmWorker {
  worker: Worker
  exited: Promise<unknown>
}

async function startWorker(module: WasmModule, memory: WasmMemory, tid: number): Promise<WasmWorker> {
  const worker = new Worker(WORKER_SOURCE, {
    eval: true,
    workerData: { module, memory, ctrl: CTRL, tid, seen: 0 },
    stdout: false,
    stderr: false,
  })
  liveWorkers++
  const exited = new Promise((resolve) => worker.once('exit', resolve)).finally(() => liveWorkers--)
  await once(worker, 'message')
  // An undisposed kernel set does not keep the process alive; dispose() refs the workers again.
  worker.unref()
  return { worker, exited }
}

async function stopWorkers(ctrl: Int32Array, workers: readonly WasmWorker[]): Promise<void> {
  Atomics.store(ctrl, I_QUIT, 1)
  Atomics.add(ctrl, I_GEN, 1)
  Atomics.notify(ctrl, I_GEN)
  await Promise.all(
    workers.map(async ({ worker, exited }) => {
      worker.ref()
      const timer = setTimeout(() => void worker.terminate(), 5000)
      await exited
      clearTimeout(timer)
    }),
  )
}

class WasmKernels implements Kernels {
  readonly name = 'wasm-simd'
  readonly threads: number
  readonly #exports: KernelsExports
  readonly #heap: KernelHeap
  readonly #ctrl: Int32Array
  readonly #workers: WasmWorker[]
  #scratch: HeapBuffer | undefined
  #disposed = false
  #broken = false

  constructor(
    exports: KernelsExports,
    heap: KernelHeap,
    ctrl: Int32Array,
    threads: number,
    workers: WasmWorker[],
  ) {
    this.#exports = exports
    this.#heap = heap
    this.#ctrl = ctrl
    this.threads = threads
    this.#workers = workers
  }

  alloc(byteLength: number): KernelBuffer {
    this.#live()
    return this.#heap.alloc(byteLength)
  }

  free(buf: KernelBuffer): void {
    this.#live()
    this.#heap.free(buf)
  }

  view(buf: KernelBuffer, byteOffset: number, byteLength: number): KernelBuffer {
    this.#live()
    return this.#heap.view(buf, byteOffset, byteLength)
  }

  matvec(
    type: number,
    w: KernelBuffer,
    rows: number,
    cols: number,
    x: KernelBuffer,
    out: KernelBuffer,
    rowStride?: number,
  ): void {
    this.#run(type, w, rows, cols, x, 1, out, rowStride)
  }

  matmul(
    type: number,
    w: KernelBuffer,
    rows: number,
    cols: number,
    x: KernelBuffer,
    n: number,
    out: KernelBuffer,
    rowStride?: number,
  ): void {
    this.#run(type, w, rows, cols, x, n, out, rowStride)
  }

  pack(type: number, w: KernelBuffer, rows: number, cols: number): number {
    this.#live()
    if (!PACKABLE.includes(type) || rows < 4) return type
    const stride = rowByteLength(type, cols)
    if (!Number.isSafeInteger(rows) || w.byteLength < rows * stride) {
      throw new InvalidArgumentError(
        `a buffer of ${w.byteLength} bytes does not hold ${rows} rows of ${stride} bytes`,
      )
    }
    if (!this.#heap.owns(w)) {
      throw new InvalidArgumentError('pack takes a live buffer from alloc() of the same kernels')
    }
    // A matrix with subnormal block scales stays as it is (the packed kernels would run slowly).
    if (!this.#exports.pack(type, w.ptr, rows, cols, this.#quantScratch(4 * stride).ptr)) return type
    return PACKED_TYPE_BASE + type
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return
    this.#disposed = true
    await stopWorkers(this.#ctrl, this.#workers)
  }

  #run(
    type: number,
    w: KernelBuffer,
    rows: number,
    cols: number,
    x: KernelBuffer,
    n: number,
    out: KernelBuffer,
    rowStride: number | undefined,
  ): void {
    this.#live()
    const stride = checkJob(type, w, rows, cols, x, n, out, rowStride, PACKED_TYPES)
    if (!this.#heap.owns(w) || !this.#heap.owns(x) || !this.#heap.owns(out)) {
      throw new InvalidArgumentError(
        'kernel calls take live buffers from alloc() or view() of the same kernels',
      )
    }
    if (rows === 0) return
    const c = this.#ctrl
    // Rounded activations: 4·cols bytes per row.
    c[I_XQ] = type === 0 ? 0 : this.#quantScratch(n * cols * 4).ptr
    c[I_TYPE] = type
    c[I_W] = w.ptr
    c[I_X] = x.ptr
    c[I_OUT] = out.ptr
    c[I_ROWS] = rows
    c[I_COLS] = cols
    c[I_N] = n
    c[I_ROW_STRIDE] = stride
    c[I_THREADS] = rows * cols * n < SMALL_JOB || rows < 2 * ROW_TILE ? 1 : this.threads
    let fault: unknown
    try {
      this.#exports.dispatch(CTRL)
    } catch (cause) {
      fault = cause
    }
    if (fault !== undefined || c[I_ERROR] !== 0) {
      // A trap means a bug or a buffer that changed under the call; the job's state is unknown.
      this.#broken = true
      void this.dispose()
      throw new MeshError(
        'ERR_KERNEL_FAULT',
        `the ${rows}×${cols} kernel of ggml type ${type} trapped on ${fault === undefined ? `worker ${c[I_ERROR]}` : 'the calling thread'}; the kernels were disposed`,
        { cause: fault },
      )
    }
  }

  /** The scratch that holds quantized activations, grown to at least `bytes`. */
  #quantScratch(bytes: number): HeapBuffer {
    if (this.#scratch === undefined || this.#scratch.byteLength < bytes) {
      if (this.#scratch !== undefined) this.#heap.free(this.#scratch)
      this.#scratch = undefined
      this.#scratch = this.#heap.alloc(Math.max(bytes, 64 * 1024))
    }
    return this.#scratch
  }

  #live(): void {
    if (this.#disposed) {
      throw new KernelUnavailableError(
        this.#broken
          ? 'the WebAssembly kernels were disposed after a fault'
          : 'the WebAssembly kernels were disposed',
      )
    }
  }
}
