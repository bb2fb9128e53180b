#!/usr/bin/env node
import { runProgram } from '@meshnet/core'

await runProgram({ command: 'mesh-relay', packageName: '@meshnet/relay' }, () => import('./relay.ts'))
