'use strict'
/*
 * A local HyperDHT testnet on 127.0.0.1 for trying rack mode on one machine.
 * Usage: node testnet.js [nodes]   (at least 2: a one-node testnet cannot announce)
 * Prints one JSON line {"bootstrap": ["127.0.0.1:PORT", ...]} and runs until stopped.
 */
const createTestnet = require('hyperdht/testnet')

async function main () {
  const size = Math.max(2, Number(process.argv[2] || 3))
  const testnet = await createTestnet(size, { host: '127.0.0.1' })
  const bootstrap = testnet.nodes.map(n => `127.0.0.1:${n.address().port}`)
  process.stdout.write(JSON.stringify({ bootstrap }) + '\n')
  const stop = async () => { await testnet.destroy(); process.exit(0) }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

main().catch((err) => { process.stderr.write(String(err.stack || err) + '\n'); process.exit(1) })
