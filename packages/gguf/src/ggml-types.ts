import { InvalidArgumentError } from '@meshnet/core'

/**
 * ggml tensor type ids, as stored in a GGUF tensor info (`enum ggml_type` in ggml.h). Ids 4, 5 and
 * 31–33, 36–38 belong to removed types and are not listed.
 */
export const GGML_TYPE = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q8_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  Q8_K: 15,
  IQ2_XXS: 16,
  IQ2_XS: 17,
  IQ3_XXS: 18,
  IQ1_S: 19,
  IQ4_NL: 20,
  IQ3_S: 21,
  IQ2_S: 22,
  IQ4_XS: 23,
  I8: 24,
  I16: 25,
  I32: 26,
  I64: 27,
  F64: 28,
  IQ1_M: 29,
  BF16: 30,
  TQ1_0: 34,
  TQ2_0: 35,
  MXFP4: 39,
  NVFP4: 40,
  Q1_0: 41,
  Q2_0: 42,
} as const

export type GGMLTypeName = keyof typeof GGML_TYPE
export type GGMLType = (typeof GGML_TYPE)[GGMLTypeName]

/** The shape of one ggml type: `blockSize` elements are stored in `typeSize` bytes. */
export interface GGMLTypeInfo {
  type: GGMLType
  /** The name used in `GGML_TYPE` (`Q4_K`); ggml's own `type_name` is its lower case (`q4_k`). */
  name: GGMLTypeName
  /** Elements per block. */
  blockSize: number
  /** Bytes per block. */
  typeSize: number
  /** True when this package can quantize and dequantize rows of this type. */
  quantizable: boolean
}

/** The K-quant super-block: rows of K types must be a multiple of this many elements. */
export const QK_K = 256

// [name, blockSize, typeSize] — sizes are sizeof(block_*) from ggml-common.h.
const TABLE: ReadonlyArray<readonly [GGMLTypeName, number, number]> = [
  ['F32', 1, 4],
  ['F16', 1, 2],
  ['Q4_0', 32, 18],
  ['Q4_1', 32, 20],
  ['Q5_0', 32, 22],
  ['Q5_1', 32, 24],
  ['Q8_0', 32, 34],
  ['Q8_1', 32, 36],
  ['Q2_K', QK_K, 84],
  ['Q3_K', QK_K, 110],
  ['Q4_K', QK_K, 144],
  ['Q5_K', QK_K, 176],
  ['Q6_K', QK_K, 210],
  ['Q8_K', QK_K, 292],
  ['IQ2_XXS', QK_K, 66],
  ['IQ2_XS', QK_K, 74],
  ['IQ3_XXS', QK_K, 98],
  ['IQ1_S', QK_K, 50],
  ['IQ4_NL', 32, 18],
  ['IQ3_S', QK_K, 110],
  ['IQ2_S', QK_K, 82],
  ['IQ4_XS', QK_K, 136],
  ['I8', 1, 1],
  ['I16', 1, 2],
  ['I32', 1, 4],
  ['I64', 1, 8],
  ['F64', 1, 8],
  ['IQ1_M', QK_K, 56],
  ['BF16', 1, 2],
  ['TQ1_0', QK_K, 54],
  ['TQ2_0', QK_K, 66],
  ['MXFP4', 32, 17],
  ['NVFP4', 64, 36],
  ['Q1_0', 128, 18],
  ['Q2_0', 64, 18],
]

/** The types `quantizeRow` and `dequantizeRow` handle, bit-exact with ggml's reference code. */
export const QUANTIZABLE_TYPES = [
  'F32',
  'F16',
  'BF16',
  'Q8_0',
  'Q4_0',
  'Q4_1',
  'Q5_0',
  'Q5_1',
  'Q2_K',
  'Q3_K',
  'Q4_K',
  'Q5_K',
  'Q6_K',
  'IQ4_NL',
  'IQ4_XS',
] as const satisfies readonly GGMLTypeName[]

const QUANTIZABLE: ReadonlySet<string> = new Set(QUANTIZABLE_TYPES)

const INFO = new Map<number, GGMLTypeInfo>(
  TABLE.map(([name, blockSize, typeSize]) => [
    GGML_TYPE[name],
    Object.freeze({ type: GGML_TYPE[name], name, blockSize, typeSize, quantizable: QUANTIZABLE.has(name) }),
  ]),
)

/** The ggml type info for an id or name, or undefined for an unknown or removed type. */
export function findGGMLType(type: number | string): GGMLTypeInfo | undefined {
  if (typeof type === 'number') return INFO.get(type)
  // ggml spells K-quants `q4_K`; accept any case.
  const name = type.toUpperCase()
  return Object.hasOwn(GGML_TYPE, name) ? INFO.get(GGML_TYPE[name as GGMLTypeName]) : undefined
}

/** The ggml type info for an id or name; throws InvalidArgumentError for an unknown type. */
export function ggmlTypeInfo(type: number | string): GGMLTypeInfo {
  const info = findGGMLType(type)
  if (info === undefined) {
    throw new InvalidArgumentError(`unknown ggml type ${JSON.stringify(type)}`, {
      hint: `use one of ${Object.keys(GGML_TYPE).join(', ')}`,
    })
  }
  return info
}

/**
 * Bytes taken by `n` consecutive elements of `type` (one row of a tensor whose `ne[0]` is `n`).
 * `n` must be a whole number of blocks.
 */
export function rowByteLength(type: number | string, n: number): number {
  const info = ggmlTypeInfo(type)
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new InvalidArgumentError(`row length ${n} is not a non-negative integer`)
  }
  if (n % info.blockSize !== 0) {
    throw new InvalidArgumentError(
      `a ${info.name} row of ${n} elements is not a whole number of ${info.blockSize}-element blocks`,
      { hint: `use a row length that is a multiple of ${info.blockSize}` },
    )
  }
  return (n / info.blockSize) * info.typeSize
}
