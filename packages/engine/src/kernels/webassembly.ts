// The parts of the runtime's WebAssembly API the kernels use, typed here: the repository compiles
// against lib ES2024 and @types/node, neither of which declares the WebAssembly global.

export interface WasmMemory {
  /** A new object after each growth; a SharedArrayBuffer for shared memories. */
  readonly buffer: ArrayBufferLike
  /** Grows by `pages` × 64 KiB; returns the previous size in pages, throws RangeError past the maximum. */
  grow(pages: number): number
}

/** A compiled module; structured-cloneable, so workers instantiate it without compiling. */
export interface WasmModule {
  readonly __wasmModule?: never
}

export interface WasmInstance {
  readonly exports: Record<string, unknown>
}

interface WasmApi {
  Memory: new (descriptor: { initial: number; maximum?: number; shared?: boolean }) => WasmMemory
  validate(bytes: Uint8Array): boolean
  compile(bytes: Uint8Array): Promise<WasmModule>
  instantiate(module: WasmModule, imports: Record<string, Record<string, unknown>>): Promise<WasmInstance>
}

export const wasmApi: WasmApi = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly
