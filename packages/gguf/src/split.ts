import { InvalidArgumentError } from '@meshnet/core'
import type { GGUFTensorInfo } from './header.ts'
import type { GGUFValueInput } from './metadata.ts'
import { openGGUF } from './reader.ts'
import { writeGGUF } from './writer.ts'

export interface SplitGGUFOptions {
  /** How many files to write (2 or more; at most one per tensor). */
  parts: number
  /**
   * Path prefix of the parts: `<prefix>-00001-of-00003.gguf` … as llama-gguf-split names them.
   * Default: the input path without `.gguf`.
   */
  prefix?: string
}

/**
 * Writes a GGUF as a split model, the way llama.cpp's `llama-gguf-split --split` does: the first
 * part holds the metadata, every part `split.no`, `split.count` and `split.tensors.count`, and
 * the tensors go to the parts in file order, about the same number of bytes to each. llama.cpp
 * and `openGGUF` open the result from its first part. Returns the paths of the parts.
 */
export async function splitGGUF(input: string, options: SplitGGUFOptions): Promise<string[]> {
  const file = await openGGUF(input)
  try {
    const n = options.parts
    if (!Number.isInteger(n) || n < 2 || n > file.tensors.length || n > 99999) {
      throw new InvalidArgumentError(
        `cannot split ${input} (${file.tensors.length} tensors) into ${n} parts`,
        { hint: `use 2 to ${Math.min(file.tensors.length, 99999)} parts` },
      )
    }
    if (file.parts.length > 1) throw new InvalidArgumentError(`${input} is already split`)
    const prefix = options.prefix ?? input.replace(/\.gguf$/, '')
    const total = file.tensors.reduce((sum, t) => sum + t.byteLength, 0)
    // Tensors in file order; part i takes them until it holds (i + 1)/n of the bytes, and at least one.
    const groups: GGUFTensorInfo[][] = Array.from({ length: n }, () => [])
    let bytes = 0
    let part = 0
    for (const [i, t] of file.tensors.entries()) {
      const left = file.tensors.length - i
      while (
        part < n - 1 &&
        groups[part]!.length > 0 &&
        (bytes >= ((part + 1) * total) / n || left <= n - 1 - part)
      ) {
        part++
      }
      groups[part]!.push(t)
      bytes += t.byteLength
    }
    const split = (no: number): Array<[string, GGUFValueInput]> => [
      ['split.no', { type: 'uint16', value: no }],
      ['split.count', { type: 'uint16', value: n }],
      ['split.tensors.count', { type: 'int32', value: file.tensors.length }],
    ]
    const paths: string[] = []
    for (const [no, tensors] of groups.entries()) {
      const path = `${prefix}-${String(no + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.gguf`
      const metadata = new Map<string, GGUFValueInput>(
        no === 0 ? [...(file.metadata as ReadonlyMap<string, GGUFValueInput>), ...split(no)] : split(no),
      )
      await writeGGUF(path, {
        metadata,
        alignment: file.alignment,
        tensors: tensors.map((t) => ({
          name: t.name,
          dims: t.dims,
          type: t.type,
          data: async function* () {
            yield await file.readTensor(t.name)
          },
        })),
      })
      paths.push(path)
    }
    return paths
  } finally {
    await file.close()
  }
}
