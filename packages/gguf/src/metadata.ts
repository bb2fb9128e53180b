/** GGUF metadata value type ids, as stored in the file (`enum gguf_type` in gguf.h). */
export const GGUF_VALUE_TYPE = {
  uint8: 0,
  int8: 1,
  uint16: 2,
  int16: 3,
  uint32: 4,
  int32: 5,
  float32: 6,
  bool: 7,
  string: 8,
  array: 9,
  uint64: 10,
  int64: 11,
  float64: 12,
} as const

export type GGUFValueTypeName = keyof typeof GGUF_VALUE_TYPE
export type GGUFScalarTypeName = Exclude<GGUFValueTypeName, 'array'>
export type GGUFNumberTypeName =
  | 'uint8'
  | 'int8'
  | 'uint16'
  | 'int16'
  | 'uint32'
  | 'int32'
  | 'float32'
  | 'float64'
export type GGUFBigIntTypeName = 'uint64' | 'int64'

/** How each array item type is held after reading: typed arrays for numbers, plain arrays otherwise. */
export interface GGUFArrayItems {
  uint8: Uint8Array
  int8: Int8Array
  uint16: Uint16Array
  int16: Int16Array
  uint32: Uint32Array
  int32: Int32Array
  float32: Float32Array
  float64: Float64Array
  uint64: BigUint64Array
  int64: BigInt64Array
  bool: boolean[]
  string: string[]
}

/** A metadata value as read from a file. Arrays of arrays are not supported (ggml rejects them too). */
export type GGUFValue =
  | { type: GGUFNumberTypeName; value: number }
  | { type: GGUFBigIntTypeName; value: bigint }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | {
      [K in GGUFScalarTypeName]: { type: 'array'; itemType: K; value: GGUFArrayItems[K] }
    }[GGUFScalarTypeName]

/** What the writer accepts for array items: the read form, or plain arrays of numbers or bigints. */
interface GGUFArrayInputItems {
  uint8: Uint8Array | readonly number[]
  int8: Int8Array | readonly number[]
  uint16: Uint16Array | readonly number[]
  int16: Int16Array | readonly number[]
  uint32: Uint32Array | readonly number[]
  int32: Int32Array | readonly number[]
  float32: Float32Array | readonly number[]
  float64: Float64Array | readonly number[]
  uint64: BigUint64Array | readonly bigint[]
  int64: BigInt64Array | readonly bigint[]
  bool: readonly boolean[]
  string: readonly string[]
}

/** A metadata value to write. Every value read from a file can be written back as it is. */
export type GGUFValueInput =
  | { type: GGUFNumberTypeName; value: number }
  | { type: GGUFBigIntTypeName; value: bigint }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | {
      [K in GGUFScalarTypeName]: { type: 'array'; itemType: K; value: GGUFArrayInputItems[K] }
    }[GGUFScalarTypeName]

/** Bytes per item of fixed-size types. */
export const FIXED_SIZE: Readonly<Record<Exclude<GGUFScalarTypeName, 'string'>, number>> = {
  uint8: 1,
  int8: 1,
  uint16: 2,
  int16: 2,
  uint32: 4,
  int32: 4,
  float32: 4,
  bool: 1,
  uint64: 8,
  int64: 8,
  float64: 8,
}

const NAMES = Object.keys(GGUF_VALUE_TYPE) as GGUFValueTypeName[]

/** The type name for a stored type id, or undefined when the id is not a GGUF type. */
export function valueTypeName(id: number): GGUFValueTypeName | undefined {
  return NAMES.find((name) => GGUF_VALUE_TYPE[name] === id)
}

/** The key ggml uses for the data alignment; a uint32 power of two, 32 when absent. */
export const GGUF_ALIGNMENT_KEY = 'general.alignment'
export const GGUF_DEFAULT_ALIGNMENT = 32
/** ggml's GGML_MAX_NAME: tensor names must be shorter than this many bytes. */
export const GGML_MAX_NAME = 64
/** ggml's GGML_MAX_DIMS. */
export const GGML_MAX_DIMS = 4
