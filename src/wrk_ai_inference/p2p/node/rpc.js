'use strict'
/*
 * Hyperswarm RPC, both ends. Commands:
 *   rpc.serve {allow:[hex]|null, methods:[name]} -> {publicKey}
 *     answer `methods` on the server key (from init's rpc.seed); each incoming call is
 *     sent to Python as {t:'call', id, method, peer} + body, and a peer the firewall
 *     turns away as {t:'refused', peer}
 *   rpc.request {key, method, timeout} + body -> body; fails with NOT_CONNECTED when
 *     the encrypted stream never opened, so no byte of the request reached the server
 *     (a fleet client may send it elsewhere at once), else with the library's code
 * Notice: rpc.reply {id} + body, the answer to call `id`.
 *
 * Outgoing requests use a pool of our own rather than rpc.request(): a connection
 * lingers `poolLinger` ms after its last request ends (the library's pool starts that
 * timer when a request is sent, which kills long requests), and a connection that
 * hears nothing, not even keep-alives, for `connectionTimeout` ms is destroyed, so
 * calls to a worker that crashed fail in seconds instead of hanging.
 */

const RPC = require('@hyperswarm/rpc')

const EMPTY = Buffer.alloc(0)

module.exports = function rpc (ctx) {
  const opts = ctx.settings.rpc
  const seed = opts.seed ? Buffer.from(opts.seed, 'hex') : undefined
  const instance = new RPC({ dht: ctx.dht, seed, poolLinger: opts.poolLinger })
  const calls = new Map()
  const pool = new Map()
  let server = null
  let nextCall = 1

  async function serve ({ allow, methods }) {
    if (server) throw new Error('the RPC server is already listening')
    const allowed = allow && allow.length ? new Set(allow.map((k) => k.toLowerCase())) : null
    server = instance.createServer({
      firewall (remotePublicKey) {
        if (allowed === null || allowed.has(ctx.hex(remotePublicKey))) return false
        ctx.send({ t: 'refused', peer: ctx.hex(remotePublicKey) })
        return true
      }
    })
    for (const method of methods) {
      server.respond(method, (request, channel) => new Promise((resolve) => {
        const id = nextCall++
        calls.set(id, resolve)
        ctx.send({ t: 'call', id, method, peer: ctx.hex(channel.stream.remotePublicKey) }, request || EMPTY)
      }))
    }
    await server.listen(instance.defaultKeyPair)
    ctx.serverKeyPair = instance.defaultKeyPair
    return { publicKey: ctx.hex(instance.defaultKeyPair.publicKey) }
  }

  function reply ({ id }, body) {
    const resolve = calls.get(id)
    if (resolve) {
      calls.delete(id)
      resolve(body)
    }
  }

  function pooledClient (key) {
    let entry = pool.get(key)
    if (entry && !entry.client.closed) {
      clearTimeout(entry.linger)
      return entry
    }
    const client = instance.connect(Buffer.from(key, 'hex'))
    if (opts.connectionTimeout) client.stream.setTimeout(opts.connectionTimeout)
    entry = { client, active: 0, linger: null, opened: false }
    client.stream.opened.then((opened) => { entry.opened = opened !== false }, () => {})
    client.on('close', () => { if (pool.get(key) === entry) pool.delete(key) })
    pool.set(key, entry)
    return entry
  }

  async function request ({ key, method, timeout }, body) {
    const entry = pooledClient(key)
    entry.active++
    try {
      return { body: (await entry.client.request(method, body, { timeout })) || EMPTY }
    } catch (err) {
      if (!entry.opened) throw Object.assign(new Error('the connection never opened'), { code: 'NOT_CONNECTED' })
      throw err
    } finally {
      if (--entry.active === 0) {
        entry.linger = setTimeout(() => entry.client.destroy(), opts.poolLinger)
        entry.linger.unref()
      }
    }
  }

  async function close () {
    for (const entry of pool.values()) entry.client.destroy()
    if (server) await server.close().catch(() => {})
    await instance.destroy().catch(() => {})
  }

  return {
    commands: { 'rpc.serve': serve, 'rpc.request': request },
    notices: { 'rpc.reply': reply },
    close
  }
}
