// What WebAssembly memory64 would cost the kernels, against wasm32: a member that holds more than
// 4 GiB of weights either uses one memory64 memory (i64 addresses: a kernel toolchain other than
// AssemblyScript 0.28, which has no memory64 target) or several wasm32 memories side by side, one
// kernels instance each. Two modules are built in the same run from one WebAssembly text with
// binaryen.js, identical but for the memory's address type (and so i64 address arithmetic): a packed
// Q8_0x4 matvec written as the engine's dotQ8_0X4 (136-byte blocks of four rows, f16 scales decoded
// as scalesX4, i8 × i7 relaxed dot-adds, an f32x4 accumulator), one thread.
//   - kernel GB/s of weight bytes, memory64 against wasm32 in the same process (medians of --runs
//     samples taken in alternation after a warm-up; the ratio is the median of the pairs' ratios):
//     a cache-resident matrix (128 × 4096, 0.53 MiB, repeated: the compute and bounds-check cost)
//     and a streaming one (245760 × 4096, 1.07 GB, one pass: what a decode step costs), the memory64
//     weights placed above 4 GiB. Outputs are checked against a JS reference and the two modules'
//     outputs must be bit-identical. One process each for: V8's defaults (wasm32: no check, a 4 GiB
//     index plus offset lands in the guard region; memory64 with --wasm-memory64-trap-handling, on in
//     V8 13.6: per access a compare of the address with a constant, 16 GiB less the access's end,
//     and a branch, the guard region catching the rest); --no-wasm-memory64-trap-handling (memory64
//     compares each address with the memory's current size, loaded from the instance); and
//     --wasm-enforce-bounds-checks (that explicit check for wasm32 too).
//   - growth: time to create a shared memory, grow it in 256 MiB steps (`Memory.grow`) and write one
//     byte per 4 KiB page (the first touch that faults the pages in): memory64 to 3.5 GiB against
//     wasm32 to 3.5 GiB, and memory64 to 6 GiB against two wasm32 memories of 3 GiB (option b),
//     median of --grow-runs, one process each so that every memory is freed before the next (peak
//     RSS ~6 GiB). First-touch time per GiB depends on the OS (and in a VM on the host) more than on
//     the memory, which is why each is compared with wasm32 at the same total size.
//
//   node --conditions=meshnet-source bench/memory64.bench.ts [--runs 7] [--grow-runs 3]
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { summary, table } from './lib.ts'

const { values: flags } = parseArgs({
  options: {
    runs: { type: 'string', default: '7' },
    'grow-runs': { type: 'string', default: '3' },
    // Internal: the phase a child process runs, and its parameters.
    phase: { type: 'string' },
    address: { type: 'string', default: 'i32' },
    gib: { type: 'string', default: '1' },
    count: { type: 'string', default: '1' },
  },
})
const RUNS = Math.max(5, Number(flags.runs))
const GROW_RUNS = Math.max(1, Number(flags['grow-runs']))

type Address = 'i32' | 'i64'
const PAGE = 65536
const GIB = 2 ** 30
const GB = 1e9
/** Maximum pages: wasm32's whole 4 GiB; 8 GiB for memory64 (weights above 4 GiB, growth to 6 GiB). */
const MAX_PAGES: Record<Address, number> = { i32: 65536, i64: 131072 }

const COLS = 4096
/** Bytes of a packed Q8_0x4 block: the four rows' f16 scales, then 8 × 16 bytes of weights. */
const BLOCK = 136
const GROUP_BYTES = (COLS / 32) * BLOCK
const SMALL_GROUPS = 32
const TILE_BYTES = SMALL_GROUPS * GROUP_BYTES
const BIG_TILES = 1920
const BIG_BYTES = BIG_TILES * TILE_BYTES
/** Addresses: activations, outputs, the tile as JS writes it; the matrices at base + SMALL / BIG. */
const X = 64 * 1024
const X_BYTES = 3 * COLS + COLS / 8
const OUT = 128 * 1024
const SCRATCH = 2 * 1024 * 1024
const SMALL = 4 * 1024 * 1024
const BIG = 8 * 1024 * 1024

// ---------------------------------------------------------------------------------------------
// The kernel, as WebAssembly text for either address type.

function kernelWat(a: Address): string {
  const memory = `${a === 'i64' ? 'i64 ' : ''}1 ${MAX_PAGES[a]} shared`
  // q8_0X4Block: Σ (w · sign(x)) · |x| for the four rows, two chains of four relaxed dot-adds.
  const chains = [0, 2, 4, 6]
    .map(
      (t) => `
        (local.set $m0 (v128.load32_splat offset=${4 * t} (local.get $xs)))
        (local.set $m1 (v128.load32_splat offset=${4 * t + 4} (local.get $xs)))
        (local.set $a (i32x4.relaxed_dot_i8x16_i7x16_add_s
          (i8x16.sub_sat_s (v128.xor (v128.load offset=${8 + 16 * t} (local.get $bp)) (local.get $m0)) (local.get $m0))
          (v128.load32_splat offset=${4 * t} (local.get $xa))
          (local.get $a)))
        (local.set $c (i32x4.relaxed_dot_i8x16_i7x16_add_s
          (i8x16.sub_sat_s (v128.xor (v128.load offset=${24 + 16 * t} (local.get $bp)) (local.get $m1)) (local.get $m1))
          (v128.load32_splat offset=${4 * t + 4} (local.get $xa))
          (local.get $c)))`,
    )
    .join('')
  return `(module
  (import "env" "memory" (memory ${memory}))
  ;; [dot(row 4g + r, x)] for each group g of four packed rows, stored at out + 16 g; returns Σ of all.
  ;; x: q (unused), |q| at x + cols, sign mask at x + 2 cols, f32 scale per 32 at x + 3 cols.
  (func (export "matvec") (param $w ${a}) (param $x ${a}) (param $groups ${a}) (param $cols ${a})
    (param $out ${a}) (result f64)
    (local $xa0 ${a}) (local $xs0 ${a}) (local $xd0 ${a}) (local $xa ${a}) (local $xs ${a}) (local $xd ${a})
    (local $bp ${a}) (local $end ${a}) (local $groupBytes ${a})
    (local $acc v128) (local $a v128) (local $c v128) (local $m0 v128) (local $m1 v128) (local $sum v128)
    (local $mask v128) (local $scale v128)
    (local.set $mask (v128.const i32x4 0x8fffffff 0x8fffffff 0x8fffffff 0x8fffffff))
    (local.set $scale (v128.const i32x4 0x72800000 0x72800000 0x72800000 0x72800000))
    (local.set $xa0 (${a}.add (local.get $x) (local.get $cols)))
    (local.set $xs0 (${a}.add (local.get $xa0) (local.get $cols)))
    (local.set $xd0 (${a}.add (local.get $xs0) (local.get $cols)))
    (local.set $groupBytes (${a}.mul (${a}.shr_u (local.get $cols) (${a}.const 5)) (${a}.const ${BLOCK})))
    (local.set $bp (local.get $w))
    (block $done
      (loop $groups
        (br_if $done (${a}.eqz (local.get $groups)))
        (local.set $end (${a}.add (local.get $bp) (local.get $groupBytes)))
        (local.set $xa (local.get $xa0))
        (local.set $xs (local.get $xs0))
        (local.set $xd (local.get $xd0))
        (local.set $acc (v128.const i64x2 0 0))
        (loop $blocks
          (local.set $a (v128.const i64x2 0 0))
          (local.set $c (v128.const i64x2 0 0))${chains}
          ;; acc += Σ · (scalesX4(bp) · d_x)
          (local.set $acc (f32x4.relaxed_madd
            (f32x4.convert_i32x4_s (i32x4.add (local.get $a) (local.get $c)))
            (f32x4.mul
              (f32x4.mul
                (v128.and (i32x4.shl (v128.load16x4_s (local.get $bp)) (i32.const 13)) (local.get $mask))
                (local.get $scale))
              (v128.load32_splat (local.get $xd)))
            (local.get $acc)))
          (local.set $bp (${a}.add (local.get $bp) (${a}.const ${BLOCK})))
          (local.set $xa (${a}.add (local.get $xa) (${a}.const 32)))
          (local.set $xs (${a}.add (local.get $xs) (${a}.const 32)))
          (local.set $xd (${a}.add (local.get $xd) (${a}.const 4)))
          (br_if $blocks (${a}.lt_u (local.get $bp) (local.get $end))))
        (v128.store (local.get $out) (local.get $acc))
        (local.set $out (${a}.add (local.get $out) (${a}.const 16)))
        (local.set $sum (f32x4.add (local.get $sum) (local.get $acc)))
        (local.set $groups (${a}.sub (local.get $groups) (${a}.const 1)))
        (br $groups)))
    (f64.promote_f32
      (f32.add
        (f32.add (f32x4.extract_lane 0 (local.get $sum)) (f32x4.extract_lane 1 (local.get $sum)))
        (f32.add (f32x4.extract_lane 2 (local.get $sum)) (f32x4.extract_lane 3 (local.get $sum))))))
  ;; count copies of [src, src + len) from dst on.
  (func (export "replicate") (param $dst ${a}) (param $src ${a}) (param $len ${a}) (param $count ${a})
    (block $done
      (loop $copy
        (br_if $done (${a}.eqz (local.get $count)))
        (memory.copy (local.get $dst) (local.get $src) (local.get $len))
        (local.set $dst (${a}.add (local.get $dst) (local.get $len)))
        (local.set $count (${a}.sub (local.get $count) (${a}.const 1)))
        (br $copy))))
  ;; Writes one byte per 4 KiB page of [p, end).
  (func (export "touch") (param $p ${a}) (param $end ${a})
    (block $done
      (loop $page
        (br_if $done (${a}.ge_u (local.get $p) (local.get $end)))
        (i32.store8 (local.get $p) (i32.const 1))
        (local.set $p (${a}.add (local.get $p) (${a}.const 4096)))
        (br $page)))))
`
}

interface Binaryen {
  parseText(text: string): {
    setFeatures(features: number): void
    validate(): number
    optimize(): void
    emitBinary(): Uint8Array
    dispose(): void
  }
  Features: Record<string, number>
}

/** binaryen.js, a dependency of assemblyscript (itself the engine's). */
async function loadBinaryen(): Promise<Binaryen> {
  const engine = createRequire(join(import.meta.dirname, '../packages/engine/package.json'))
  const assemblyscript = createRequire(engine.resolve('assemblyscript/package.json'))
  return (await import(pathToFileURL(assemblyscript.resolve('binaryen')).href)).default as Binaryen
}

// The runtime's WebAssembly API with memory64, typed here: lib ES2024 and @types/node do not declare
// the WebAssembly global (see packages/engine/src/kernels/webassembly.ts).
interface WasmMemory {
  readonly buffer: ArrayBufferLike
  /** Pages as a number for wasm32, a BigInt for memory64; returns the previous size likewise. */
  grow(delta: number | bigint): number | bigint
}
interface WasmModule {
  readonly __wasmModule?: never
}
interface WasmApi {
  Memory: new (descriptor: {
    address?: 'i32' | 'i64'
    initial: number | bigint
    maximum?: number | bigint
    shared?: boolean
  }) => WasmMemory
  compile(bytes: Uint8Array): Promise<WasmModule>
  instantiate(
    module: WasmModule,
    imports: Record<string, Record<string, unknown>>,
  ): Promise<{ exports: Record<string, unknown> }>
}
const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly

async function kernelModule(binaryen: Binaryen, a: Address): Promise<WasmModule> {
  const module = binaryen.parseText(kernelWat(a))
  const f = binaryen.Features
  module.setFeatures(
    f.MVP! | f.SIMD128! | f.RelaxedSIMD! | f.Atomics! | f.BulkMemory! | f.BulkMemoryOpt! | f.Memory64!,
  )
  if (!module.validate()) throw new Error(`the ${a} kernel module does not validate`)
  module.optimize()
  const binary = module.emitBinary()
  module.dispose()
  return wasm.compile(binary)
}

interface Kernel {
  memory: WasmMemory
  matvec(w: number, x: number, groups: number, cols: number, out: number): number
  replicate(dst: number, src: number, len: number, count: number): void
  touch(from: number, to: number): void
}

function newMemory(a: Address, pages: number): WasmMemory {
  return a === 'i64'
    ? new wasm.Memory({
        address: 'i64',
        initial: BigInt(pages),
        maximum: BigInt(MAX_PAGES.i64),
        shared: true,
      })
    : new wasm.Memory({ initial: pages, maximum: MAX_PAGES.i32, shared: true })
}

function grow(memory: WasmMemory, a: Address, pages: number): void {
  memory.grow(a === 'i64' ? BigInt(pages) : pages)
}

/** The module's exports over `memory`, addresses and counts as numbers (BigInts for memory64). */
async function instantiate(module: WasmModule, a: Address, memory: WasmMemory): Promise<Kernel> {
  const instance = await wasm.instantiate(module, { env: { memory } })
  // biome-ignore lint/suspicious/noExplicitAny: exports called with numbers or BigInts
  const e = instance.exports as Record<string, (...args: any[]) => any>
  const n = a === 'i64' ? BigInt : Number
  return {
    memory,
    matvec: (w, x, groups, cols, out) => e.matvec!(n(w), n(x), n(groups), n(cols), n(out)) as number,
    replicate: (dst, src, len, count) => e.replicate!(n(dst), n(src), n(len), n(count)),
    touch: (from, to) => e.touch!(n(from), n(to)),
  }
}

// ---------------------------------------------------------------------------------------------
// Data and the JS reference.

function xorshift(seed: number): () => number {
  let s = seed >>> 0 || 1
  return () => {
    s ^= s << 13
    s ^= s >>> 17
    s ^= s << 5
    s >>>= 0
    return s
  }
}

/**
 * SMALL_GROUPS packed groups of random weights in [-127, 127] (-128 has no sign flip in i8), block
 * scales in scalesX4's encoding of halves in [2^-5, 4), random signs.
 */
function makeTile(): Uint8Array {
  const tile = new Uint8Array(TILE_BYTES)
  const view = new DataView(tile.buffer)
  const random = xorshift(0x9e3779b9)
  for (let p = 0; p < TILE_BYTES; p += BLOCK) {
    for (let r = 0; r < 4; r++) {
      const bits = random()
      const e = 20 + (bits % 7)
      view.setUint16(p + 2 * r, (((bits >>> 3) & 1) << 15) | (e << 10) | ((bits >>> 4) & 1023), true)
    }
    for (let i = 8; i < BLOCK; i++) {
      const q = random() & 255
      tile[p + i] = q === 128 ? 129 : q
    }
  }
  return tile
}

/** The activations as the engine quantizes them: |q| ≤ 127, sign mask, an f32 scale per 32. */
function makeX(): Uint8Array {
  const x = new Uint8Array(X_BYTES)
  const random = xorshift(12345)
  for (let i = 0; i < COLS; i++) {
    x[COLS + i] = random() & 127
    x[2 * COLS + i] = random() & 1 ? 0xff : 0
  }
  const d = new Float32Array(x.buffer, 3 * COLS, COLS / 32)
  for (let b = 0; b < d.length; b++) d[b] = 0.001 + (random() % 1000) * 2e-5
  return x
}

/** The packed half at p as a number (scalesX4's decoding: sign · 2^(E - 25) · 1.m). */
function scaleAt(view: DataView, p: number): number {
  const h = view.getUint16(p, true)
  return (h & 0x8000 ? -1 : 1) * 2 ** (((h >> 10) & 31) - 25) * (1 + (h & 1023) / 1024)
}

/** The tile's 4·SMALL_GROUPS outputs in f64, and for each the Σ of |terms| (the rounding bound). */
function reference(tile: Uint8Array, x: Uint8Array): { out: Float64Array; magnitude: Float64Array } {
  const view = new DataView(tile.buffer)
  const xd = new Float32Array(x.buffer, 3 * COLS, COLS / 32)
  const out = new Float64Array(4 * SMALL_GROUPS)
  const magnitude = new Float64Array(4 * SMALL_GROUPS)
  for (let g = 0; g < SMALL_GROUPS; g++) {
    for (let b = 0; b < COLS / 32; b++) {
      const bp = g * GROUP_BYTES + b * BLOCK
      for (let r = 0; r < 4; r++) {
        let isum = 0
        for (let t = 0; t < 8; t++) {
          for (let k = 0; k < 4; k++) {
            const w = (tile[bp + 8 + 16 * t + 4 * r + k]! << 24) >> 24
            const c = b * 32 + 4 * t + k
            isum += w * x[COLS + c]! * (x[2 * COLS + c] ? -1 : 1)
          }
        }
        const term = scaleAt(view, bp + 2 * r) * xd[b]! * isum
        out[4 * g + r]! += term
        magnitude[4 * g + r]! += Math.abs(term)
      }
    }
  }
  return { out, magnitude }
}

// ---------------------------------------------------------------------------------------------
// Child phases: each prints one JSON line.

interface KernelResult {
  small: { wasm32: number[]; memory64: number[]; reps: number }
  big: { wasm32: number[]; memory64: number[] }
  maxRssGiB: number
}

async function kernelPhase(): Promise<KernelResult> {
  const binaryen = await loadBinaryen()
  const tile = makeTile()
  const x = makeX()
  const ref = reference(tile, x)
  const setup = async (a: Address) => {
    const base = a === 'i64' ? 4 * GIB : 0
    const memory = newMemory(a, Math.ceil((base + BIG + BIG_BYTES) / PAGE))
    const k = await instantiate(await kernelModule(binaryen, a), a, memory)
    new Uint8Array(memory.buffer, SCRATCH, TILE_BYTES).set(tile)
    new Uint8Array(memory.buffer, X, X_BYTES).set(x)
    k.replicate(base + SMALL, SCRATCH, TILE_BYTES, 1)
    k.replicate(base + BIG, SCRATCH, TILE_BYTES, BIG_TILES)
    return {
      small: () => k.matvec(base + SMALL, X, SMALL_GROUPS, COLS, OUT),
      big: () => k.matvec(base + BIG, X, SMALL_GROUPS * BIG_TILES, COLS, OUT),
      out: (n: number) => new Float32Array(memory.buffer, OUT, n).slice(),
    }
  }
  const w32 = await setup('i32')
  const w64 = await setup('i64')

  // Checks: wasm32 against the reference, memory64 bit-identical to wasm32, the streaming matrix
  // (the tile repeated) giving the tile's outputs over and over.
  const n = 4 * SMALL_GROUPS
  const sum32 = w32.small()
  const small32 = w32.out(n)
  for (let i = 0; i < n; i++) {
    const error = Math.abs(small32[i]! - ref.out[i]!)
    if (!(error <= 1e-5 * ref.magnitude[i]! + 1e-30)) {
      throw new Error(`wasm32 row ${i}: ${small32[i]} where the reference has ${ref.out[i]}`)
    }
  }
  const sum64 = w64.small()
  const small64 = w64.out(n)
  if (sum64 !== sum32 || small64.some((v, i) => !Object.is(v, small32[i]))) {
    throw new Error(`memory64 and wasm32 disagree on the cache-resident matrix: Σ ${sum64} vs ${sum32}`)
  }
  const bigSum32 = w32.big()
  const big32 = w32.out(n * BIG_TILES)
  if (big32.some((v, i) => !Object.is(v, small32[i % n]))) throw new Error('wasm32 streaming outputs differ')
  const bigSum64 = w64.big()
  const big64 = w64.out(n * BIG_TILES)
  if (bigSum64 !== bigSum32 || big64.some((v, i) => !Object.is(v, big32[i]))) {
    throw new Error(`memory64 and wasm32 disagree on the streaming matrix: Σ ${bigSum64} vs ${bigSum32}`)
  }

  // Cache-resident: reps calls per sample (~20 ms), the same for both, 3 × RUNS pairs.
  let t = performance.now()
  for (let i = 0; i < 20; i++) w32.small()
  const reps = Math.max(1, Math.ceil(20 / ((performance.now() - t) / 20)))
  /** GB/s of `calls` calls of fn over `bytes` of weights each. */
  const sample = (fn: () => number, calls: number, bytes: number) => {
    t = performance.now()
    for (let i = 0; i < calls; i++) fn()
    return (calls * bytes) / ((performance.now() - t) / 1000) / GB
  }
  const interleaved = (a: () => number, b: () => number, calls: number, bytes: number, runs: number) => {
    sample(a, calls, bytes)
    sample(b, calls, bytes)
    const wasm32: number[] = []
    const memory64: number[] = []
    for (let i = 0; i < runs; i++) {
      wasm32.push(sample(a, calls, bytes))
      memory64.push(sample(b, calls, bytes))
    }
    return { wasm32, memory64 }
  }
  const small = { ...interleaved(w32.small, w64.small, reps, TILE_BYTES, 3 * RUNS), reps }
  const big = interleaved(w32.big, w64.big, 1, BIG_BYTES, RUNS)
  return { small, big, maxRssGiB: (process.resourceUsage().maxRSS * 1024) / GIB }
}

interface GrowResult {
  createMs: number
  growMs: number
  growCalls: number
  touchMs: number
  maxRssGiB: number
}

/** `count` shared memories of address type `a` grown to `gib` each and touched. */
async function growPhase(a: Address, gib: number, count: number): Promise<GrowResult> {
  const binaryen = await loadBinaryen()
  const module = await kernelModule(binaryen, a)
  const step = 4096 // pages: 256 MiB
  const target = Math.round((gib * GIB) / PAGE)
  let t = performance.now()
  const memories = Array.from({ length: count }, () => newMemory(a, 1))
  const createMs = performance.now() - t
  const kernels = await Promise.all(memories.map((m) => instantiate(module, a, m)))
  let growCalls = 0
  t = performance.now()
  for (const memory of memories) {
    for (let pages = 1; pages < target; pages += step) {
      grow(memory, a, Math.min(step, target - pages))
      growCalls++
    }
  }
  const growMs = performance.now() - t
  for (const memory of memories) {
    if (memory.buffer.byteLength !== target * PAGE) throw new Error(`${a} memory did not grow to ${gib} GiB`)
  }
  t = performance.now()
  for (const k of kernels) k.touch(0, target * PAGE)
  const touchMs = performance.now() - t
  return { createMs, growMs, growCalls, touchMs, maxRssGiB: (process.resourceUsage().maxRSS * 1024) / GIB }
}

function child<T>(v8Flags: string[], args: string[]): T {
  const result = spawnSync(
    process.execPath,
    [...v8Flags, '--conditions=meshnet-source', import.meta.filename, ...args],
    { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', maxBuffer: 1 << 20 },
  )
  if (result.status !== 0) throw new Error(`${args.join(' ')} ${v8Flags.join(' ')}: exit ${result.status}`)
  return JSON.parse(result.stdout.trim().split('\n').pop()!) as T
}

// ---------------------------------------------------------------------------------------------

/** Why memory64 cannot be measured on this Node, or undefined. */
async function unsupported(): Promise<string | undefined> {
  try {
    const memory = new wasm.Memory({ address: 'i64', initial: 1n, maximum: 2n, shared: true })
    await instantiate(await kernelModule(await loadBinaryen(), 'i64'), 'i64', memory)
    if (!(memory.buffer instanceof SharedArrayBuffer)) return 'a memory64 memory is not shared'
    return undefined
  } catch (error) {
    return (error as Error).message
  }
}

async function main(): Promise<void> {
  const why = await unsupported()
  if (why !== undefined) {
    console.log(`skip: shared WebAssembly memory64 is not supported by Node ${process.version} (${why})`)
    return
  }
  console.log(
    `packed Q8_0x4 matvec, ${COLS} columns, 1 thread; GB/s of weight bytes, median of ${RUNS} ` +
      `(cache-resident: ${3 * RUNS}); memory64 weights from 4 GiB + ${BIG / 2 ** 20} MiB on`,
  )
  const configs: Array<[string, string[]]> = [
    ['V8 defaults', []],
    ['--no-wasm-memory64-trap-handling', ['--no-wasm-memory64-trap-handling']],
    ['--wasm-enforce-bounds-checks', ['--wasm-enforce-bounds-checks']],
  ]
  const rows: Array<Record<string, string | number>> = []
  for (const [name, v8Flags] of configs) {
    const r = child<KernelResult>(v8Flags, ['--phase', 'kernels', '--runs', String(RUNS)])
    for (const [label, c] of [
      [`cache-resident ${((TILE_BYTES / GIB) * 1024).toFixed(2)} MiB ×${r.small.reps}`, r.small],
      [`streaming ${(BIG_BYTES / GB).toFixed(2)} GB`, r.big],
    ] as const) {
      const w32 = summary(c.wasm32)
      const w64 = summary(c.memory64)
      rows.push({
        matrix: label,
        flags: name,
        'wasm32 GB/s': w32.median,
        'memory64 GB/s': w64.median,
        'memory64 / wasm32': summary(c.memory64.map((v, i) => v / c.wasm32[i]!)).median,
        'best wasm32': w32.max,
        'best memory64': w64.max,
        'best / best': w64.max / w32.max,
        'peak RSS GiB': r.maxRssGiB,
      })
    }
  }
  rows.sort((a, b) => String(a.matrix).localeCompare(String(b.matrix)))
  table(rows)

  console.log(
    `\ngrowth of shared memories: create, grow in 256 MiB steps, write a byte per 4 KiB page; median of ${GROW_RUNS}`,
  )
  // [name, address type, GiB per memory, memories, the wasm32 case of the same total size]
  const cases: Array<[string, Address, number, number, number]> = [
    ['wasm32', 'i32', 3.5, 1, 0],
    ['memory64', 'i64', 3.5, 1, 0],
    ['2 × wasm32', 'i32', 3, 2, 2],
    ['memory64', 'i64', 6, 1, 2],
  ]
  const grown = (a: Address, gib: number, count: number) =>
    child<GrowResult>([], ['--phase', 'grow', '--address', a, '--gib', String(gib), '--count', String(count)])
  // Unmeasured: the first touch of memory the machine has not used for a while can cost several
  // times more (in a VM, the host backing the pages again), and so does, in the run after a smaller
  // case, the part of a larger case beyond it; hence this warm-up and the order reversed every run.
  grown('i32', 3.25, 2)
  const samples = cases.map(() => [] as GrowResult[])
  for (let run = 0; run < GROW_RUNS; run++) {
    const order = cases.map((_, i) => (run % 2 === 0 ? i : cases.length - 1 - i))
    for (const i of order) {
      const [, a, gib, count] = cases[i]!
      samples[i]!.push(grown(a, gib, count))
    }
  }
  const median = (rs: GrowResult[], key: keyof GrowResult) => summary(rs.map((r) => r[key])).median
  const total = (rs: GrowResult[]) => summary(rs.map((r) => r.createMs + r.growMs + r.touchMs)).median
  table(
    cases.map(([name, , gib, count, reference], i) => {
      const rs = samples[i]!
      return {
        memory: name,
        GiB: count === 1 ? `${gib}` : `${count} × ${gib}`,
        'create ms': median(rs, 'createMs'),
        'grow ms': median(rs, 'growMs'),
        'grow calls': rs[0]!.growCalls,
        'first touch ms': median(rs, 'touchMs'),
        'total ms': total(rs),
        'ms / GiB': total(rs) / (count * gib),
        'total / wasm32 same size': total(rs) / total(samples[reference]!),
        'peak RSS GiB': median(rs, 'maxRssGiB'),
      }
    }),
  )
}

if (flags.phase === 'kernels') console.log(JSON.stringify(await kernelPhase()))
else if (flags.phase === 'grow') {
  console.log(
    JSON.stringify(await growPhase(flags.address as Address, Number(flags.gib), Number(flags.count))),
  )
} else await main()
