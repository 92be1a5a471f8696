'use strict'
/*
 * A local HyperDHT testnet for trying rack mode on one machine: on 127.0.0.1, or on
 * the addresses of a network namespace (the fleet bench's hosts).
 * Usage: node testnet.js [nodes] [host[,host...]]   (at least 2: one cannot announce)
 * With several hosts, node i binds host i (modulo their number): peers then see the
 * DHT answer from distinct addresses, as on a real network, which HyperDHT's NAT
 * sampling needs before two peers behind no loopback can holepunch.
 * Prints one JSON line {"bootstrap": ["HOST:PORT", ...]} and runs until stopped.
 */
const DHT = require('hyperdht')
const createTestnet = require('hyperdht/testnet')

async function spread (size, hosts) { // createTestnet binds every node to one address
  const nodes = []
  const bootstrap = []
  for (let i = 0; i < size; i++) {
    const host = hosts[i % hosts.length]
    const node = new DHT({ ephemeral: false, firewalled: false, bootstrap: [...bootstrap], host })
    await node.fullyBootstrapped()
    bootstrap.push(`${host}:${node.address().port}`)
    nodes.push(node)
  }
  return { nodes, bootstrap, destroy: async () => { for (const n of nodes.reverse()) await n.destroy() } }
}

async function main () {
  const size = Math.max(2, Number(process.argv[2] || 3))
  const hosts = (process.argv[3] || '127.0.0.1').split(',')
  const testnet = hosts.length > 1 ? await spread(size, hosts) : await createTestnet(size, { host: hosts[0] })
  const bootstrap = testnet.nodes.map((n, i) => `${hosts[i % hosts.length]}:${n.address().port}`)
  process.stdout.write(JSON.stringify({ bootstrap }) + '\n')
  const stop = async () => { await testnet.destroy(); process.exit(0) }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

main().catch((err) => { process.stderr.write(String(err.stack || err) + '\n'); process.exit(1) })
