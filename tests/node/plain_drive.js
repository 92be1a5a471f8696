'use strict'
/*
 * A drive published by a plain Hyperdrive program, not by wrk-ai-inference: its entries
 * carry no signed sha256, as a drive made by another tool does. Only hyperdrive,
 * corestore, hyperswarm and hyperdht.
 *
 * Usage: node plain_drive.js '<{bootstrap, store, folders: [{name, path}]}>'
 * Puts each folder's files under /<name>, serves the drive, prints {key, version} on
 * one line and serves until its standard input ends.
 */
const fs = require('fs')
const path = require('path')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')
const Hyperswarm = require('hyperswarm')
const DHT = require('hyperdht')

async function main () {
  const plan = JSON.parse(process.argv[2])
  const store = new Corestore(plan.store)
  const drive = new Hyperdrive(store)
  await drive.ready()
  for (const { name, path: dir } of plan.folders) {
    for (const file of fs.readdirSync(dir)) {
      const full = path.join(dir, file)
      if (fs.statSync(full).isFile()) await drive.put(`/${name}/${file}`, fs.readFileSync(full))
    }
  }
  const dht = new DHT({ bootstrap: plan.bootstrap, host: '127.0.0.1' })
  const swarm = new Hyperswarm({ dht })
  swarm.on('connection', (conn) => store.replicate(conn))
  await swarm.join(drive.discoveryKey, { server: true, client: true }).flushed()
  process.stdout.write(JSON.stringify({ key: drive.key.toString('hex'), version: drive.version }) + '\n')
  process.stdin.on('end', async () => {
    await swarm.destroy().catch(() => {})
    await store.close().catch(() => {})
    process.exit(0)
  })
  process.stdin.resume()
}

main().catch((err) => {
  process.stderr.write(String(err.stack || err) + '\n')
  process.exit(1)
})
