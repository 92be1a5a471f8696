'use strict'
/*
 * DHT topics: announce (and re-announce) a worker's topics under its RPC server key,
 * withdraw them, look a topic up. Commands:
 *   dht.announce {topics:[str]}     dht.unannounce {topics:[str]}
 *   dht.lookup {topic} -> {peers:[hex]}
 */

const DHT = require('hyperdht')

const topicHash = (topic) => DHT.hash(Buffer.from(topic, 'utf-8'))

module.exports = function dht (ctx) {
  const announced = new Map() // topic -> re-announce timer

  function keyPair () {
    if (!ctx.serverKeyPair) throw new Error('no RPC server to announce: rpc.serve first')
    return ctx.serverKeyPair
  }

  async function announceOnce (topic) {
    await ctx.dht.announce(topicHash(topic), keyPair()).finished()
  }

  async function announce ({ topics }) {
    keyPair()
    await Promise.all(topics.filter((t) => !announced.has(t)).map(async (topic) => {
      const timer = setInterval(() => {
        announceOnce(topic).catch((err) => ctx.log('warning', 're-announce failed', { topic, error: err.message }))
      }, ctx.settings.rpc.announceInterval)
      announced.set(topic, timer)
      await announceOnce(topic)
    }))
  }

  async function unannounce ({ topics }) {
    await Promise.all(topics.filter((t) => announced.has(t)).map(async (topic) => {
      clearInterval(announced.get(topic))
      announced.delete(topic)
      await ctx.dht.unannounce(topicHash(topic), keyPair())
    }))
  }

  async function lookup ({ topic }) {
    const peers = new Set()
    for await (const data of ctx.dht.lookup(topicHash(topic))) {
      for (const peer of data.peers) peers.add(ctx.hex(peer.publicKey))
    }
    return { peers: [...peers] }
  }

  return {
    commands: { 'dht.announce': announce, 'dht.unannounce': unannounce, 'dht.lookup': lookup },
    close: () => unannounce({ topics: [...announced.keys()] })
  }
}
