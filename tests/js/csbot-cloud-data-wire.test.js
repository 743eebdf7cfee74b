// cloud.database() and storage calls put on the wire exactly what WeChat's SDK would send.
// A recording `wx` answers every request; no server needed (the end-to-end tests use csbot serve).
'use strict'
const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')

const CLIENT = path.join(__dirname, '..', '..', 'csbot', 'cloud', 'client', 'csbot-cloud.js')
const { createCloud } = require(CLIENT)

function recordingWx (answer) {
  const calls = []
  const store = {}
  const wx = {
    calls,
    login: (o) => o.success({ code: 'code-1' }),
    getStorageSync: (k) => store[k],
    setStorageSync: (k, v) => { store[k] = v },
    removeStorageSync: (k) => { delete store[k] },
    request (o) {
      if (o.url.endsWith('/cloud/login')) return o.success({ statusCode: 200, data: { token: 't', openid: 'o1', expires_in: 7200 }, header: {} })
      calls.push({ method: o.method, path: o.url.replace('https://csbot.test', ''), body: o.data === undefined ? undefined : JSON.parse(JSON.stringify(o.data)), header: o.header })
      o.success({ statusCode: 200, data: answer(o), header: {} })
    }
  }
  return wx
}

function setup (answer = () => ({})) {
  const wx = recordingWx(answer)
  const cloud = createCloud(wx)
  cloud.init({ baseURL: 'https://csbot.test' })
  return { wx, cloud, db: cloud.database(), _: cloud.database().command }
}

test('nested objects in where are flattened into dotted paths', async () => {
  const { wx, db, _ } = setup(() => ({ data: [] }))
  await db.collection('books').where({ publishInfo: { country: 'United States' }, stat: _.eq({ a: 1 }) }).get()
  assert.deepEqual(wx.calls[0], {
    method: 'POST',
    path: '/cloud/db/books/get',
    body: { where: { 'publishInfo.country': 'United States', stat: { $eq: { a: 1 } } } },
    header: wx.calls[0].header
  })
  assert.equal(wx.calls[0].header.Authorization, 'Bearer t')
})

test('commands become their $ operators, with WeChat exceptions', async () => {
  const { wx, db, _ } = setup(() => ({ data: [] }))
  await db.collection('c').where({
    a: _.neq(1),
    b: _.in([1, 2]),
    c: _.nin(['x']),
    d: _.gt(3).and(_.lt(9)),
    e: _.exists(true),
    f: _.size(2),
    g: _.all([1]),
    h: _.elemMatch({ n: _.gt(1) }),
    i: _.mod([4, 0]),
    j: _.not(_.eq(2)),
    k: db.RegExp({ regexp: '^a', options: 'i' }),
    l: /b+/g
  }).orderBy('a', 'asc').orderBy('p.q', 'desc').skip(5).limit(10).field({ a: true }).get()
  assert.deepEqual(wx.calls[0].body, {
    where: {
      a: { $ne: 1 },
      b: { $in: [1, 2] },
      c: { $nin: ['x'] },
      $and: [{ d: { $gt: 3 } }, { d: { $lt: 9 } }],
      e: { $exists: true },
      f: { $size: 2 },
      g: { $all: [1] },
      h: { $elemMatch: { n: { $gt: 1 } } },
      i: { $mod: [4, 0] },
      j: { $not: { $eq: 2 } },
      k: { $regex: '^a', $options: 'i' },
      l: { $regex: 'b+', $options: 'g' }
    },
    orderBy: [['a', 'asc'], ['p.q', 'desc']],
    skip: 5,
    limit: 10,
    field: { a: true }
  })
})

test('top-level logic commands and nested ones serialise like the SDK', async () => {
  const { wx, db, _ } = setup(() => ({ total: 3 }))
  await db.collection('c').where(_.or([{ a: 1 }, { b: { c: _.gt(2) } }])).count()
  assert.deepEqual(wx.calls[0], { method: 'POST', path: '/cloud/db/c/count', body: { where: { $or: [{ a: 1 }, { 'b.c': { $gt: 2 } }] } }, header: wx.calls[0].header })
  await db.collection('c').where({ n: _.gt(8).and(_.lt(16)).or(_.eq(32)) }).get()
  assert.deepEqual(wx.calls[1].body.where, { $or: [{ $and: [{ n: { $gt: 8 } }, { n: { $lt: 16 } }] }, { n: { $eq: 32 } }] })
  await db.collection('c').where(_.nor([{ a: 1 }])).remove()
  assert.deepEqual(wx.calls[2], { method: 'POST', path: '/cloud/db/c/remove', body: { where: { $nor: [{ a: 1 }] } }, header: wx.calls[2].header })
})

test('update data is flattened: plain values are $set of their path, commands their operator', async () => {
  const { wx, db, _ } = setup(() => ({ stats: { updated: 1 } }))
  await db.collection('c').where({ _openid: '{openid}' }).update({
    data: {
      style: { color: 'red', size: _.inc(1) },
      a: { a1: _.set({ a11: 'test' }), a2: _.inc(10) },
      gone: _.remove(),
      n: _.mul(2),
      lo: _.min(1),
      hi: _.max(9),
      old: _.rename('new'),
      tags: _.push(['x', 'y']),
      more: _.push({ each: [1], position: 0 }),
      first: _.unshift(0),
      last: _.pop(),
      head: _.shift(),
      p: _.pull(_.gt(3)),
      pa: _.pullAll([1, 2]),
      s: _.addToSet('z'),
      at: new Date(1700000000000),
      'numbers.1': 30
    }
  })
  assert.deepEqual(wx.calls[0].body, {
    where: { _openid: '{openid}' },
    data: {
      $set: { 'style.color': 'red', 'a.a1': { a11: 'test' }, at: { $date: 1700000000000 }, 'numbers.1': 30 },
      $inc: { 'style.size': 1, 'a.a2': 10 },
      $unset: { gone: '' },
      $mul: { n: 2 },
      $min: { lo: 1 },
      $max: { hi: 9 },
      $rename: { old: 'new' },
      $push: { tags: { $each: ['x', 'y'] }, more: { $each: [1], $position: 0 }, first: { $each: [0], $position: 0 } },
      $pop: { last: 1, head: -1 },
      $pull: { p: { $gt: 3 } },
      $pullAll: { pa: [1, 2] },
      $addToSet: { s: 'z' }
    }
  })
})

test('add, doc get/set/update/remove use their routes', async () => {
  const { wx, db, _ } = setup((o) => (o.method === 'GET' ? { data: { _id: 'x' } } : o.url.endsWith('/add') ? { _id: 'new' } : { stats: { updated: 1 } }))
  const added = await db.collection('todos').add({ data: { title: 't', due: new Date(5), tags: ['a'] } })
  assert.equal(added._id, 'new')
  assert.equal(added.errMsg, 'collection.add:ok')
  const doc = db.collection('todos').doc('a b/1')
  const got = await doc.get()
  assert.deepEqual(got.data, { _id: 'x' })
  await doc.set({ data: { title: 'x', nested: { k: 1 } } })
  await doc.update({ data: { nested: { k: _.inc(1) } } })
  await doc.remove()
  assert.deepEqual(wx.calls.map((c) => [c.method, c.path]), [
    ['POST', '/cloud/db/todos/add'],
    ['GET', '/cloud/db/todos/doc/a%20b%2F1'],
    ['PUT', '/cloud/db/todos/doc/a%20b%2F1'],
    ['PATCH', '/cloud/db/todos/doc/a%20b%2F1'],
    ['DELETE', '/cloud/db/todos/doc/a%20b%2F1']
  ])
  assert.deepEqual(wx.calls[0].body, { data: { title: 't', due: { $date: 5 }, tags: ['a'] } })
  assert.deepEqual(wx.calls[2].body, { data: { title: 'x', nested: { k: 1 } } })
  assert.deepEqual(wx.calls[3].body, { data: { $inc: { 'nested.k': 1 } } })
})

test('callbacks run as in wx APIs and a bad call fails without a request', async () => {
  const { wx, db } = setup(() => ({ data: [] }))
  const seen = await new Promise((resolve) => db.collection('c').get({ success: resolve }))
  assert.equal(seen.errMsg, 'collection.get:ok')
  assert.throws(() => db.collection('c').orderBy('a', 'up'), /'asc' or 'desc'/)
  await assert.rejects(db.collection('c').where({}).update({}), /update data must be an object/)
  assert.equal(wx.calls.length, 1)
})

test('a condition that is not an object or a command is refused', () => {
  const { db, _ } = setup()
  assert.throws(() => db.collection('c').where('a == 1'), /must be an object/)
  assert.throws(() => db.collection('c').where(_.gt(1)), /needs a field/)
})

test('dates: Date and db.serverDate() go out as $date, {$date: ms} comes back as a Date', async () => {
  const { wx, db, _ } = setup((o) => (o.method === 'GET'
    ? { data: { _id: 'x', at: { $date: 5 }, list: [{ $date: 7 }, { k: { $date: 9 } }], n: 1 } }
    : o.url.endsWith('/get') ? { data: [{ _id: 'y', at: { $date: 6 } }] } : { _id: 'new' }))
  await db.collection('logs').add({ data: { at: db.serverDate(), due: db.serverDate({ offset: 60000 }) } })
  assert.deepEqual(wx.calls[0].body, { data: { at: { $date: { offset: 0 } }, due: { $date: { offset: 60000 } } } })
  const got = await db.collection('logs').where({ at: _.lt(db.serverDate()) }).get()
  assert.deepEqual(wx.calls[1].body, { where: { at: { $lt: { $date: { offset: 0 } } } } })
  assert.ok(got.data[0].at instanceof Date && got.data[0].at.getTime() === 6)
  const doc = await db.collection('logs').doc('x').get()
  assert.ok(doc.data.at instanceof Date && doc.data.at.getTime() === 5)
  assert.equal(doc.data.list[0].getTime(), 7)
  assert.equal(doc.data.list[1].k.getTime(), 9)
  assert.equal(doc.data.n, 1)
})
