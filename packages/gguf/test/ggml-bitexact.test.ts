// Compares quantizeRow/dequantizeRow with ggml's own reference code, byte for byte: a small C
// program (fixtures/ggml-ref.c) calls quantize_row_*_ref and dequantize_row_* (for F16/BF16
// ggml_fp32_to_fp16_row / ggml_fp32_to_bf16_row_ref and back) in the libggml-base that
// node-llama-cpp ships. Needs a C compiler and the linux-x64 binary; skipped otherwise.
import { execFile, execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ggmlTypeInfo, QUANTIZABLE_TYPES } from '../src/ggml-types.ts'
import { fillTriangular, seededUint32 } from '../src/prng.ts'
import { dequantizeRow, quantizeRow } from '../src/quants.ts'
import { GGML_GOLDEN, goldenInput } from './ggml-golden.ts'

function findGgmlBase(): string | undefined {
  if (process.platform !== 'linux' || process.arch !== 'x64') return undefined
  try {
    const require = createRequire(import.meta.url)
    const fromLlama = createRequire(require.resolve('node-llama-cpp'))
    const entry = fromLlama.resolve('@node-llama-cpp/linux-x64')
    const lib = join(dirname(entry), '..', 'bins', 'linux-x64', 'libggml-base.so')
    return existsSync(lib) ? lib : undefined
  } catch {
    return undefined
  }
}

function hasCompiler(): boolean {
  try {
    execFileSync('cc', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

const lib = findGgmlBase()
const canRun = lib !== undefined && hasCompiler()
let dir: string
let harness: string

beforeAll(async () => {
  if (!canRun) return
  dir = await mkdtemp(join(tmpdir(), 'meshnet-gguf-ggml-'))
  harness = join(dir, 'ggml-ref')
  const source = fileURLToPath(new URL('./fixtures/ggml-ref.c', import.meta.url))
  execFileSync('cc', ['-O2', '-o', harness, source, '-ldl'])
})

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true })
})

/** ggml's name for a type, as in quantize_row_<name>_ref: q4_K, iq4_xs, bf16. */
const ggmlName = (type: string) => type.toLowerCase().replace(/_k$/, '_K')

/**
 * Runs the harness on `rows` rows of `n` values (one quantize_row_*_ref / dequantize_row_* call per
 * row); resolves to each row's quantized bytes and dequantized floats (as bytes).
 */
function ggml(type: string, n: number, rows: Float32Array[]): Promise<Array<[Uint8Array, Uint8Array]>> {
  const rowBytes = (n / ggmlTypeInfo(type).blockSize) * ggmlTypeInfo(type).typeSize
  const input = new Float32Array(n * rows.length)
  for (const [r, x] of rows.entries()) input.set(x, r * n)
  return new Promise((resolve, reject) => {
    const child = execFile(
      harness,
      [lib!, ggmlName(type), String(n), String(rows.length)],
      { encoding: 'buffer', maxBuffer: 1 << 28 },
      (err, stdout) => {
        if (err) return reject(err)
        const floatsAt = rowBytes * rows.length
        if (stdout.length !== floatsAt + input.byteLength) {
          return reject(new Error(`harness wrote ${stdout.length} bytes`))
        }
        resolve(
          rows.map((_, r) => [
            new Uint8Array(stdout.subarray(r * rowBytes, (r + 1) * rowBytes)),
            new Uint8Array(stdout.subarray(floatsAt + r * n * 4, floatsAt + (r + 1) * n * 4)),
          ]),
        )
      },
    )
    child.stdin!.end(Buffer.from(input.buffer, input.byteOffset, input.byteLength))
  })
}

/**
 * Rows of `n` values that stress the scale searches and the edge cases: bell-shaped, uniform,
 * positive- and negative-only, sparse spikes, tiny (down to subnormal, and around ggml's 1e-15
 * "all zero" threshold) and huge magnitudes, steps, a constant, zeros in whole blocks, half rows,
 * sub-blocks and whole rows.
 */
function inputs(n: number, seed: number): Array<[string, Float32Array]> {
  const make = (
    label: string,
    fill: (x: Float32Array, next: () => number) => void,
  ): [string, Float32Array] => {
    const x = new Float32Array(n)
    fill(x, seededUint32(seed, label))
    return [label, x]
  }
  const each = (x: Float32Array, value: (i: number) => number) => {
    for (let i = 0; i < x.length; i++) x[i] = value(i)
  }
  const bell = (x: Float32Array, next: () => number) => fillTriangular(next, x, 0, 1)
  return [
    make('bell', bell),
    make('uniform', (x, next) => each(x, () => next() / 2 ** 31 - 1)),
    make('positive', (x, next) => each(x, () => next() / 2 ** 32 + 0.25)),
    make('negative', (x, next) => each(x, () => -(next() / 2 ** 32) - 0.25)),
    make('negative-tiny', (x, next) => each(x, () => -(next() / 2 ** 32) * 1e-7 - 1e-9)),
    make('spikes', (x, next) =>
      each(x, () => (next() % 50 === 0 ? (next() % 200) - 100 : (next() % 1000) * 1e-5)),
    ),
    make('one-hot', (x, next) => {
      for (let i = 0; i < x.length; i += 16) {
        x[Math.min(x.length - 1, i + (next() % 16))] = (next() % 2 ? 1 : -1) * (1 + (next() % 100))
      }
    }),
    make('tiny', (x, next) => fillTriangular(next, x, 0, 1e-6)),
    make('near-eps', (x, next) => fillTriangular(next, x, 0, 1e-15)),
    make('square-subnormal', (x, next) => fillTriangular(next, x, 0, 1e-20)),
    make('subnormal', (x, next) => each(x, () => ((next() % 2001) - 1000) * 1e-42)),
    make('huge', (x, next) => fillTriangular(next, x, 0, 5000)),
    make('near-f16-max', (x, next) => fillTriangular(next, x, 0, 25000)),
    make('scales', (x, next) => {
      bell(x, next)
      for (let i = 0; i < x.length; i++) x[i] = x[i]! * 2 ** ((Math.floor(i / 32) % 9) - 4)
    }),
    make('mixed-eps', (x, next) => {
      bell(x, next)
      for (let i = 0; i < x.length; i++) x[i] = x[i]! * [1, 1e-15, 1e-30, 1][Math.floor(i / 16) % 4]!
    }),
    make('steps', (x) => each(x, (i) => (Math.floor(i / 7) % 5) - 2)),
    make('constant', (x) => x.fill(0.75)),
    make('zero-runs', (x, next) => {
      bell(x, next)
      for (let i = 0; i < x.length; i++) if (Math.floor(i / 16) % 3 === 1) x[i] = 0
    }),
    make('zero-blocks', (x, next) => {
      bell(x, next)
      for (let i = 0; i < x.length; i++) if (Math.floor(i / 32) % 3 === 1) x[i] = 0
      x.fill(0, 256, 512)
    }),
    make('half-zeros', (x, next) => {
      bell(x, next)
      x.fill(0, 0, Math.floor(x.length / 2))
    }),
    make('zeros', () => {}),
  ]
}

/** Row lengths: one block, a few blocks, and a long row. */
function shapes(blockSize: number): number[] {
  if (blockSize === 1) return [1, 7, 4096]
  return blockSize === 32 ? [32, 96, 2048] : [256, 768, 4096]
}

/**
 * IQ4_NL only: ggml leaves the levels of a row's leading all-zero blocks (max |x| < 1e-15, stored
 * with d = 0) uninitialized. Checks that both sides store d = 0 there and takes our levels in
 * place of ggml's; every later block, including all-zero ones, must match as is.
 */
function maskUndefinedIQ4NL(x: Float32Array, ours: Uint8Array, ref: Uint8Array): Uint8Array {
  const out = ref.slice()
  for (let b = 0; b < x.length / 32; b++) {
    let amax = 0
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]!))
    if (amax >= Math.fround(1e-15)) break
    expect([ref[b * 18], ref[b * 18 + 1], ours[b * 18], ours[b * 18 + 1]]).toEqual([0, 0, 0, 0])
    out.set(ours.subarray(b * 18 + 2, b * 18 + 18), b * 18 + 2)
  }
  return out
}

const f32bytes = (x: Float32Array) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength)

describe.skipIf(!canRun)("bit-exact against ggml's reference quantizers", () => {
  it.each(QUANTIZABLE_TYPES.filter((t) => t !== 'F32'))(
    '%s matches ggml on every input, shape and seed',
    async (type) => {
      for (const n of shapes(ggmlTypeInfo(type).blockSize)) {
        for (const seed of [17, 18, 19]) {
          const rows = inputs(n, seed)
          const refs = await ggml(
            type,
            n,
            rows.map(([, x]) => x),
          )
          rows.forEach(([label, x], r) => {
            const [refQ, refD] = refs[r]!
            const what = `${type} n=${n} seed=${seed} ${label}`
            const q = quantizeRow(type, x)
            expect(q, `${what}: quantized bytes`).toEqual(
              type === 'IQ4_NL' ? maskUndefinedIQ4NL(x, q, refQ) : refQ,
            )
            expect(f32bytes(dequantizeRow(type, refQ, n)), `${what}: dequantized floats`).toEqual(refD)
          })
        }
      }
    },
    120_000,
  )

  it('BF16 matches ggml on NaN, infinity, signed zero, subnormal and rounding-tie bit patterns', async () => {
    const patterns = [0x7f812345, 0xff800001, 0x7fc00000, 0x7f800000, 0xff800000, 0x80000000, 0, 1]
    for (let i = 0; i < 1024; i++)
      patterns.push(((i * 0x9e3779b1) >>> 0) | 0x8000, (i * 0x10000 + 0x8000) >>> 0)
    const x = new Float32Array(new Uint32Array(patterns).buffer)
    const [[refQ, refD]] = (await ggml('BF16', x.length, [x])) as [[Uint8Array, Uint8Array]]
    expect(quantizeRow('BF16', x)).toEqual(refQ)
    expect(f32bytes(dequantizeRow('BF16', refQ, x.length))).toEqual(refD)
  })

  it.each(Object.keys(GGML_GOLDEN))('%s: the pinned golden hashes are what ggml gives', async (type) => {
    const x = goldenInput()
    const [[refQ, refD]] = (await ggml(type, x.length, [x])) as [[Uint8Array, Uint8Array]]
    const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex')
    expect({ quantized: sha256(refQ), dequantized: sha256(refD) }).toEqual(GGML_GOLDEN[type])
  })
})
