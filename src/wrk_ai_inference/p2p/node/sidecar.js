'use strict'
/*
 * wrk-ai-inference sidecar: the worker's one Holepunch process, driven over stdio.
 *
 * One process holds the DHT node, the RPC server and client, and the Corestore of
 * model drives (a Corestore may be open in one process only). Transport only: every
 * RPC method is answered by the Python core, and the Python side decides what to
 * fetch, verify and seed; this process moves bytes.
 *
 * Frames, both directions: u32be total | u32be headerLength | header (JSON) | body
 * (raw bytes), read by frames.js; total = 4 + headerLength + bodyLength.
 *
 * Python -> sidecar:
 *   {t:'init', dhtSeed, bootstrap:[host:port]|null, host, firewalled?, keepAlive, storeDir|null,
 *    rpc: {seed, poolLinger, connectionTimeout, announceInterval}}
 *   {t:'close'}                       withdraw everything, close, exit 0
 *   {t:<command>, id, ...}            a command from the registry below; answered by
 *                                     {t:'result', id, ok, error?, code?, ...} (+ body):
 *                                     error is text, code the error's code where it has one
 *   {t:<notice>, ...}                 a notice from the registry: no answer
 * Sidecar -> Python:
 *   {t:'ready', clientKey}            after init
 *   {t:'progress', id, ...}           progress of command `id` (a fetch)
 *   {t:'log', level, msg, ...}
 *   and what the modules send (rpc.js: 'call', 'refused').
 *
 * The registry: each module (dht.js, rpc.js, drive.js) is a factory (ctx) =>
 * {commands, notices, close}; a command is `async (header, body, progress) => result`
 * where result's fields go into the result frame and `result.body` (a Buffer) becomes
 * its body. End of stdin means the worker is gone: the sidecar closes and exits.
 */

const DHT = require('hyperdht')
const { FrameReader } = require('./frames')

const EMPTY = Buffer.alloc(0)
const MODULES = [require('./dht'), require('./rpc'), require('./drive')]

function send (header, body = EMPTY) {
  const head = Buffer.from(JSON.stringify(header))
  const prefix = Buffer.allocUnsafe(8)
  prefix.writeUInt32BE(4 + head.length + body.length, 0)
  prefix.writeUInt32BE(head.length, 4)
  process.stdout.write(Buffer.concat([prefix, head, body]))
}

function log (level, msg, extra = {}) {
  send({ t: 'log', level, msg, ...extra })
}

const ctx = {
  send,
  log,
  hex: (buf) => Buffer.from(buf).toString('hex'),
  settings: null,
  dht: null,
  serverKeyPair: null // the RPC server's, once it listens: what topics are announced under
}
const commands = new Map()
const notices = new Map()
let parts = []
let closing = false

async function init (opts) {
  ctx.settings = opts
  const bootstrap = opts.bootstrap === null ? undefined : opts.bootstrap
  const keyPair = opts.dhtSeed ? DHT.keyPair(Buffer.from(opts.dhtSeed, 'hex')) : undefined
  const reachable = typeof opts.firewalled === 'boolean' ? { firewalled: opts.firewalled } : {}
  ctx.dht = new DHT({ keyPair, bootstrap, host: opts.host, connectionKeepAlive: opts.keepAlive, ...reachable })
  await ctx.dht.ready()
  parts = MODULES.map((make) => make(ctx))
  for (const part of parts) {
    for (const [name, run] of Object.entries(part.commands || {})) commands.set(name, run)
    for (const [name, run] of Object.entries(part.notices || {})) notices.set(name, run)
  }
  send({ t: 'ready', clientKey: ctx.hex(ctx.dht.defaultKeyPair.publicKey) })
}

async function close () {
  if (closing) return
  closing = true
  try {
    for (const part of parts) { // topics first, the drives' swarm (and its DHT node) last
      if (part.close) await part.close().catch((err) => log('warning', 'close failed', { error: err.message }))
    }
    if (ctx.dht) await ctx.dht.destroy().catch(() => {})
  } finally {
    process.exit(0)
  }
}

async function run (header, body) {
  const command = commands.get(header.t)
  const progress = (fields) => send({ t: 'progress', id: header.id, ...fields })
  try {
    if (!command) throw new Error(`unknown command ${header.t}`)
    const { body: out = EMPTY, ...fields } = (await command(header, body, progress)) || {}
    send({ t: 'result', id: header.id, ok: true, ...fields }, out)
  } catch (err) {
    send({ t: 'result', id: header.id, ok: false, error: err.message || String(err), code: err.code })
  }
}

async function handle (header, body) {
  if (header.t === 'init') return init(header)
  if (header.t === 'close') return close()
  const notice = notices.get(header.t)
  if (notice) return notice(header, body)
  return run(header, body)
}

const reader = new FrameReader((header, body) => {
  handle(header, Buffer.from(body)).catch((err) => {
    log('error', 'sidecar command failed', { command: header.t, error: err.stack || String(err) })
    if (header.t === 'init') process.exit(1)
  })
})
process.stdin.on('data', (chunk) => reader.push(chunk))
process.stdin.on('end', close)
process.stdout.on('error', close) // the worker is gone (EPIPE): close the store cleanly
process.on('SIGTERM', close)
process.on('SIGINT', () => {}) // the worker decides when we stop
process.on('uncaughtException', (err) => {
  log('error', 'sidecar crashed', { error: err.stack || String(err) })
  process.exit(1)
})
