import { MeshError, type MeshErrorOptions } from '@meshnet/core'

/**
 * Kernel memory cannot hold another buffer: the wasm32 memory of one kernel set is capped at 4 GiB
 * (or the smaller `maxMemoryBytes` it was created with). Nothing was allocated.
 */
export class KernelMemoryError extends MeshError {
  override name = 'KernelMemoryError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_KERNEL_MEMORY', message, options)
  }
}

/**
 * The kernels cannot run: WebAssembly SIMD, relaxed SIMD or threads are missing from this runtime,
 * or the kernel set was disposed.
 */
export class KernelUnavailableError extends MeshError {
  override name = 'KernelUnavailableError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_KERNEL_UNAVAILABLE', message, options)
  }
}
