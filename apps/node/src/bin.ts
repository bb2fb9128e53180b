#!/usr/bin/env node
import { runProgram } from '@meshnet/core'

await runProgram({ command: 'mesh', packageName: '@meshnet/node' }, () => import('./cli.ts'))
