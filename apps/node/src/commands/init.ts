import { InvalidArgumentError, printFields, printJson } from '@meshnet/core'
import { ensureDataDir, loadNodeIdentity } from '@meshnet/identity'
import { openStore } from '@meshnet/store'
import type { Command } from 'commander'
import {
  defaultNodeConfig,
  networkIdSchema,
  nodeNameSchema,
  parseFlag,
  readNodeConfig,
  writeNodeConfig,
} from '../config.ts'
import type { CommandContext } from '../context.ts'

export function registerInit(program: Command, context: (cmd: Command) => CommandContext): void {
  program
    .command('init')
    .description('create this node’s identity and settings in the data dir (safe to run again)')
    .option('--network-id <id>', 'network this node belongs to')
    .option('--name <name>', 'a name for this device, shown to other members')
    .option(
      '--new-identity',
      'make a new identity (a new node id) where identity.key was lost from a used data dir',
    )
    .action(async (flags: { networkId?: string; name?: string; newIdentity?: boolean }, cmd: Command) => {
      const ctx = context(cmd)
      const networkId =
        flags.networkId === undefined
          ? undefined
          : parseFlag('--network-id', networkIdSchema, flags.networkId)
      const name = flags.name === undefined ? undefined : parseFlag('--name', nodeNameSchema, flags.name)
      const layout = await ensureDataDir(ctx.dataDir)
      const { identity, created, warnings } = await loadNodeIdentity(layout, {
        allowNew: flags.newIdentity === true,
      })
      if (flags.newIdentity === true && !created) {
        throw new InvalidArgumentError(
          `--new-identity: ${layout.identityKey} exists and is never overwritten; node id ${identity.nodeId} was kept`,
          { hint: 'to become a new node, move identity.key out of the data dir first' },
        )
      }
      for (const warning of warnings) ctx.logger.warn(warning)
      const previous = await readNodeConfig(layout.config)
      const config = {
        ...defaultNodeConfig(),
        ...previous,
        ...(networkId ? { networkId } : {}),
        ...(name ? { name } : {}),
      }
      await writeNodeConfig(layout.config, config)
      const store = openStore({ dataDir: layout.root, logger: ctx.logger })
      const recovered = store.report.recoveredFrom
      store.close()

      if (ctx.json) {
        printJson(ctx.io, {
          nodeId: identity.nodeId,
          created,
          publicKey: Buffer.from(identity.publicKey).toString('base64'),
          dataDir: layout.root,
          networkId: config.networkId,
          name: config.name,
          ...(recovered ? { recoveredDatabase: recovered } : {}),
        })
        return
      }
      ctx.io.stdout.write(
        created
          ? `Created a new identity in ${layout.identityKey}\n`
          : `Kept the existing identity in ${layout.identityKey} (it is never overwritten)\n`,
      )
      if (recovered) {
        ctx.io.stdout.write(
          `mesh_state.db was corrupt and was moved to ${recovered.movedTo}; started a fresh one\n`,
        )
      }
      printFields(ctx.io, [
        ['Node ID', identity.nodeId],
        ['Network ID', config.networkId],
        ['Name', config.name],
        ['Data dir', layout.root],
      ])
    })
}
