import { ModelLoadError } from '@meshnet/engine'
import type { Llama } from 'node-llama-cpp'

/** One llama.cpp runtime per process, shared by every engine and vocab-only tokenizer. */
let shared: { llama: Promise<Llama>; refs: number } | undefined

/** A reference to the shared runtime; `release()` disposes it when the last user lets go. */
export interface LlamaRuntime {
  llama: Llama
  release(): Promise<void>
}

/**
 * The process's llama.cpp (node-llama-cpp), CPU only, from the prebuilt binary: never builds,
 * downloads or probes a GPU.
 */
export async function acquireLlama(): Promise<LlamaRuntime> {
  if (shared === undefined) {
    const state = { llama: createLlama(), refs: 0 }
    shared = state
    state.llama.catch(() => {
      if (shared === state) shared = undefined
    })
  }
  const state = shared
  state.refs++
  let llama: Llama
  try {
    llama = await state.llama
  } catch (err) {
    state.refs--
    throw err
  }
  let released = false
  return {
    llama,
    async release() {
      if (released) return
      released = true
      state.refs--
      if (state.refs === 0 && shared === state) {
        shared = undefined
        await llama.dispose()
      }
    },
  }
}

async function createLlama(): Promise<Llama> {
  try {
    const { getLlama, LlamaLogLevel } = await import('node-llama-cpp')
    return await getLlama({
      gpu: false,
      build: 'never',
      usePrebuiltBinaries: true,
      skipDownload: true,
      progressLogs: false,
      logLevel: LlamaLogLevel.error,
      // Contexts then use exactly the threads they ask for.
      maxThreads: 0,
    })
  } catch (err) {
    throw new ModelLoadError(`could not start llama.cpp (node-llama-cpp): ${(err as Error).message}`, {
      cause: err,
      hint: 'node-llama-cpp needs its prebuilt CPU binary (@node-llama-cpp/<platform>); reinstall dependencies',
    })
  }
}
