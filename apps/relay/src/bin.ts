#!/usr/bin/env node
import { main } from './relay.ts'

process.exitCode = await main(process.argv.slice(2))
