'use strict'
/*
 * The transport floor under a drive fetch: bytes over one HyperDHT connection (UDX and
 * the Noise secret stream, what Hypercore replicates over), with no Hypercore above it.
 * No fetch from a drive can be faster, or cheaper in CPU per MB, than this.
 * Usage: node stream_floor.js serve '{"bootstrap":[...],"bytes":N}'  prints {"key"} and
 *          writes N bytes to every connection, in 1 MiB writes
 *        node stream_floor.js fetch '{"bootstrap":[...],"key":"hex","bytes":N}'  reads N
 *          bytes and prints {"seconds", "cpuSeconds"} of this process, connect excluded
 */
const DHT = require('hyperdht')

async function serve ({ bootstrap, bytes }) {
  const dht = new DHT({ bootstrap, host: '127.0.0.1' })
  const chunk = Buffer.alloc(1 << 20, 7)
  const server = dht.createServer((socket) => {
    socket.on('error', () => {})
    let sent = 0
    const pump = () => {
      while (sent < bytes) {
        const piece = sent + chunk.length <= bytes ? chunk : chunk.subarray(0, bytes - sent)
        sent += piece.length
        if (!socket.write(piece)) return socket.once('drain', pump)
      }
    }
    pump()
  })
  await server.listen()
  process.stdout.write(JSON.stringify({ key: server.publicKey.toString('hex') }) + '\n')
  process.on('SIGTERM', () => process.exit(0))
}

async function fetch ({ bootstrap, key, bytes }) {
  const dht = new DHT({ bootstrap, host: '127.0.0.1' })
  const socket = dht.connect(Buffer.from(key, 'hex'))
  await new Promise((resolve, reject) => socket.once('open', resolve).once('error', reject))
  const cpu = process.cpuUsage()
  const started = process.hrtime.bigint()
  let got = 0
  await new Promise((resolve) => socket.on('data', (data) => {
    got += data.length
    if (got >= bytes) resolve()
  }))
  const used = process.cpuUsage(cpu)
  process.stdout.write(JSON.stringify({
    seconds: Number(process.hrtime.bigint() - started) / 1e9,
    cpuSeconds: (used.user + used.system) / 1e6
  }) + '\n')
  process.exit(0)
}

const [role, args] = process.argv.slice(2)
const run = role === 'serve' ? serve : fetch
run(JSON.parse(args)).catch((err) => { process.stderr.write(String(err.stack || err) + '\n'); process.exit(1) })
