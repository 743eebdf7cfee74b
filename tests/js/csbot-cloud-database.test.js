// cloud.database() against a real csbot serve: WeChat's query language and security rules.
'use strict'

const { after, before, describe, test } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')

const { APPID, ROOT, startServers, standInWx } = require('./support.js')

const { createCloud } = require(path.join(ROOT, 'csbot', 'cloud', 'client', 'csbot-cloud.js'))

const CONFIG = `
[collections.todos]
read = "doc._openid == auth.openid"
write = "doc._openid == auth.openid"

[collections.notices]
mode = "admin_write_all_read"
`

let servers

before(async () => { servers = await startServers({ config: CONFIG }) })
after(async () => { if (servers) await servers.stop() })

function client (openid) {
  const cloud = createCloud(standInWx(servers.fakeURL, openid))
  cloud.init({ baseURL: servers.csbotURL, appid: APPID })
  const db = cloud.database()
  return { cloud, db, _: db.command }
}

describe('database', () => {
  test('add, query with commands, count, update and remove own documents', async () => {
    const { db, _ } = client('oJsDb01')
    const todos = db.collection('todos')
    const added = await todos.add({ data: { title: 'buy milk', done: false, tags: ['home'], meta: { priority: 2, owner: 'me' } } })
    assert.equal(added.errMsg, 'collection.add:ok')
    assert.equal(typeof added._id, 'string')
    await todos.add({ data: { title: 'file taxes', done: false, tags: ['work', 'money'], meta: { priority: 5 } } })
    await todos.add({ data: { title: 'call mum', done: true, tags: ['home'], meta: { priority: 1 } } })

    const mine = todos.where({ _openid: '{openid}' })
    const all = await mine.orderBy('meta.priority', 'desc').get()
    assert.deepEqual(all.data.map((d) => d.title), ['file taxes', 'buy milk', 'call mum'])
    assert.ok(all.data.every((d) => d._openid === 'oJsDb01'))

    const nested = await todos.where({ _openid: '{openid}', meta: { owner: 'me' } }).get()
    assert.deepEqual(nested.data.map((d) => d.title), ['buy milk'], 'a nested object matches by dotted path')
    const arr = await todos.where({ _openid: '{openid}', tags: 'home', done: _.neq(true) }).get()
    assert.deepEqual(arr.data.map((d) => d.title), ['buy milk'], 'a scalar on an array means contains')
    const range = await todos.where({ _openid: '{openid}', 'meta.priority': _.gt(1).and(_.lt(5)) }).get()
    assert.deepEqual(range.data.map((d) => d.title), ['buy milk'])
    const either = await todos.where(_.and([{ _openid: '{openid}' }, _.or([{ title: db.RegExp({ regexp: '^CALL', options: 'i' }) }, { tags: _.all(['work', 'money']) }])]))
      .orderBy('title', 'asc').field({ title: true }).get()
    assert.deepEqual(either.data.map((d) => d.title), ['call mum', 'file taxes'])
    const paged = await mine.orderBy('title', 'asc').skip(1).limit(1).get()
    assert.deepEqual(paged.data.map((d) => d.title), ['call mum'])

    const counted = await mine.count()
    assert.equal(counted.total, 3)
    const updated = await todos.where({ _openid: '{openid}', done: false }).update({ data: { meta: { priority: _.inc(10) }, done: true } })
    assert.deepEqual(updated.stats, { updated: 2 })
    const after = await mine.orderBy('meta.priority', 'desc').get()
    assert.deepEqual(after.data.map((d) => [d.title, d.meta.priority, d.done]),
      [['file taxes', 15, true], ['buy milk', 12, true], ['call mum', 1, true]])
    assert.equal(after.data[1].meta.owner, 'me', 'update is partial: the rest of meta stays')

    const removed = await todos.where({ _openid: '{openid}', tags: 'work' }).remove()
    assert.deepEqual(removed.stats, { removed: 1 })
    assert.equal((await mine.count()).total, 2)
  })

  test('doc(id): get, update, set and remove', async () => {
    const { db, _ } = client('oJsDb02')
    const { _id } = await db.collection('todos').add({ data: { title: 't', n: 1, style: { color: 'red', size: 'L' } } })
    const doc = db.collection('todos').doc(_id)
    assert.equal((await doc.get()).data.title, 't')
    await doc.update({ data: { n: _.inc(2), style: { color: 'blue' } } })
    let got = (await doc.get()).data
    assert.deepEqual([got.n, got.style], [3, { color: 'blue', size: 'L' }])
    await doc.set({ data: { title: 'replaced' } })
    got = (await doc.get()).data
    assert.equal(got.title, 'replaced')
    assert.equal(got.n, undefined, 'set replaces the whole document')
    const removed = await doc.remove()
    assert.deepEqual(removed.stats, { removed: 1 })
    await assert.rejects(doc.get(), (err) => err.statusCode === 404)
  })

  test("rules refuse loudly: another user's documents and unpinned queries are 403, never filtered", async () => {
    const alice = client('oJsAlice01')
    const bob = client('oJsBob01')
    const { _id } = await alice.db.collection('todos').add({ data: { title: 'secret' } })
    await assert.rejects(bob.db.collection('todos').where({ title: 'secret' }).get(),
      (err) => err.statusCode === 403 && /_openid/.test(err.errMsg) && /^collection\.get:fail/.test(err.errMsg))
    await assert.rejects(bob.db.collection('todos').doc(_id).get(), (err) => err.statusCode === 403)
    await assert.rejects(bob.db.collection('todos').doc(_id).remove(), (err) => err.statusCode === 403)
    await assert.rejects(alice.db.collection('notices').add({ data: { text: 'hi' } }), (err) => err.statusCode === 403)
    const readable = await bob.db.collection('notices').get()
    assert.deepEqual(readable.data, [])
    assert.equal((await alice.db.collection('todos').doc(_id).get()).data.title, 'secret')
  })

  test('bad queries are clear 400s', async () => {
    const { db } = client('oJsDb03')
    await assert.rejects(db.collection('todos').where({ _openid: '{openid}', a: { $bogus: 1 } }).get(),
      (err) => err.statusCode === 400 && /\$bogus/.test(err.errMsg))
    await assert.rejects(db.collection('todos').add({ data: { $set: 1 } }), (err) => err.statusCode === 400)
  })
})
