#!/usr/bin/env node
import { runProgram } from '@meshnet/core'

await runProgram(
  { command: 'mesh-control-plane', packageName: '@meshnet/control-plane' },
  () => import('./cli.ts'),
)
