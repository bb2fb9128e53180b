// Compares quantizeRow/dequantizeRow with ggml's own reference code, byte for byte: a small C
// program (fixtures/ggml-ref.c) calls quantize_row_*_ref and dequantize_row_* in the libggml-base
// that node-llama-cpp ships. Needs a C compiler and the linux-x64 binary; skipped otherwise.
import { execFile, execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { fillTriangular, seededUint32 } from '../src/prng.ts'
import { dequantizeRow, quantizeRow } from '../src/quants.ts'

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

function ggml(type: string, x: Float32Array, quantizedBytes: number): Promise<[Uint8Array, Float32Array]> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      harness,
      [lib!, type, String(x.length)],
      { encoding: 'buffer', maxBuffer: 1 << 28 },
      (err, stdout) => {
        if (err) return reject(err)
        const q = new Uint8Array(stdout.subarray(0, quantizedBytes))
        const floats = new Float32Array(
          stdout.buffer.slice(stdout.byteOffset + quantizedBytes, stdout.byteOffset + stdout.length),
        )
        resolve([q, floats])
      },
    )
    child.stdin!.end(Buffer.from(x.buffer, x.byteOffset, x.byteLength))
  })
}

/** Inputs that stress the scale searches: bell-shaped, uniform, one-sided, sparse spikes, extremes. */
function inputs(n: number): Array<[string, Float32Array]> {
  const make = (
    label: string,
    fill: (x: Float32Array, next: () => number) => void,
  ): [string, Float32Array] => {
    const x = new Float32Array(n)
    fill(x, seededUint32(17, label))
    return [label, x]
  }
  const each = (x: Float32Array, value: (i: number) => number) => {
    for (let i = 0; i < x.length; i++) x[i] = value(i)
  }
  return [
    make('bell', (x, next) => fillTriangular(next, x, 0, 1)),
    make('uniform', (x, next) => each(x, () => next() / 2 ** 31 - 1)),
    make('positive', (x, next) => each(x, () => next() / 2 ** 32 + 0.25)),
    make('spikes', (x, next) =>
      each(x, () => (next() % 50 === 0 ? (next() % 200) - 100 : (next() % 1000) * 1e-5)),
    ),
    make('tiny', (x, next) => fillTriangular(next, x, 0, 1e-6)),
    make('huge', (x, next) => fillTriangular(next, x, 0, 5000)),
    make('steps', (x) => each(x, (i) => (Math.floor(i / 7) % 5) - 2)),
    make('half-zeros', (x, next) => {
      fillTriangular(next, x, 0, 1)
      x.fill(0, 0, x.length / 2)
    }),
  ]
}

const TYPES: Array<[string, number]> = [
  ['f16', 2],
  ['q8_0', 34 / 32],
  ['q4_0', 18 / 32],
  ['q4_K', 144 / 256],
  ['q6_K', 210 / 256],
]

describe.skipIf(!canRun)("bit-exact against ggml's reference quantizers", () => {
  it.each(TYPES)(
    '%s matches quantize_row_*_ref and dequantize_row_* on every input',
    async (type, bytesPerValue) => {
      for (const [label, x] of inputs(256 * 32)) {
        const [refQ, refD] = await ggml(type, x, x.length * bytesPerValue)
        const q = quantizeRow(type, x)
        expect(q, `${type} ${label}: quantized bytes`).toEqual(refQ)
        const d = dequantizeRow(type, refQ, x.length)
        expect(new Uint8Array(d.buffer), `${type} ${label}: dequantized floats`).toEqual(
          new Uint8Array(refD.buffer),
        )
      }
    },
    120_000,
  )
})
