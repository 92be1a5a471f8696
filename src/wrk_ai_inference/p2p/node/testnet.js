'use strict'
/*
 * A local HyperDHT testnet for trying rack mode on one machine: on 127.0.0.1, or on
 * an address of a network namespace (the fleet bench's hosts).
 * Usage: node testnet.js [nodes] [host]   (at least 2: one node cannot announce)
 * Prints one JSON line {"bootstrap": ["HOST:PORT", ...]} and runs until stopped.
 */
const createTestnet = require('hyperdht/testnet')

async function main () {
  const size = Math.max(2, Number(process.argv[2] || 3))
  const host = process.argv[3] || '127.0.0.1'
  const testnet = await createTestnet(size, { host })
  const bootstrap = testnet.nodes.map(n => `${host}:${n.address().port}`)
  process.stdout.write(JSON.stringify({ bootstrap }) + '\n')
  const stop = async () => { await testnet.destroy(); process.exit(0) }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

main().catch((err) => { process.stderr.write(String(err.stack || err) + '\n'); process.exit(1) })
