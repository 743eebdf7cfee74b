// The mini program's client (csbot/cloud/client/csbot-cloud.js) against a real csbot and FakeWeChat.
'use strict'

const { after, before, describe, test } = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')

const { APPID, ROOT, startServers, fakeControl, fakeCalls, standInWx } = require('./support.js')

const { createCloud } = require(path.join(ROOT, 'csbot', 'cloud', 'client', 'csbot-cloud.js'))

let servers

before(async () => { servers = await startServers() })
after(async () => { if (servers) await servers.stop() })

function client (openid) {
  const wx = standInWx(servers.fakeURL, openid)
  const cloud = createCloud(wx)
  cloud.init({ baseURL: servers.csbotURL + '/', appid: APPID })
  return { wx, cloud }
}

describe('callFunction', () => {
  test('logs in on first use and calls as that user', async () => {
    const { wx, cloud } = client('oJsUser0001')
    const res = await cloud.callFunction({ name: 'whoami', data: { a: 12, b: 19 } })
    assert.equal(res.errMsg, 'cloud.callFunction:ok')
    assert.equal(res.result.OPENID, 'oJsUser0001')
    assert.equal(res.result.APPID, APPID)
    assert.equal(res.result.SOURCE, 'wx_client')
    assert.deepEqual(res.result.event, { a: 12, b: 19 })
    assert.equal(typeof res.requestID, 'string')
    assert.equal(wx.logins, 1)
    assert.equal(cloud.openid, 'oJsUser0001')
    const [stored] = [...wx.storage.values()]
    assert.ok(stored.token && stored.expiresAt > Date.now(), 'the token is kept with wx.setStorageSync')
  })

  test('keeps the session: later calls do not log in again', async () => {
    const { wx, cloud } = client('oJsUser0002')
    await cloud.callFunction({ name: 'echo', data: { n: 1 } })
    await cloud.callFunction({ name: 'echo', data: { n: 2 } })
    assert.equal(wx.logins, 1)
  })

  test('concurrent first calls share one login', async () => {
    const { wx, cloud } = client('oJsUser0003')
    const answers = await Promise.all([1, 2, 3, 4].map(n => cloud.callFunction({ name: 'echo', data: { n } })))
    assert.deepEqual(answers.map(a => a.result.n), [1, 2, 3, 4])
    assert.equal(wx.logins, 1)
  })

  test('the identity cannot be forged from the data', async () => {
    const { cloud } = client('oJsUser0004')
    const res = await cloud.callFunction({ name: 'whoami', data: { OPENID: 'oVictim', openid: 'oVictim' } })
    assert.equal(res.result.OPENID, 'oJsUser0004')
  })

  test('calls success and complete, and returns the Promise too', async () => {
    const { cloud } = client('oJsUser0005')
    const seen = []
    const res = await cloud.callFunction({
      name: 'echo',
      data: { x: '中文' },
      success: r => seen.push(['success', r.result.x]),
      fail: () => seen.push(['fail']),
      complete: () => seen.push(['complete'])
    })
    assert.equal(res.result.x, '中文')
    assert.deepEqual(seen, [['success', '中文'], ['complete']])
  })

  test('an unknown function fails with errCode, errMsg and the status', async () => {
    const { cloud } = client('oJsUser0006')
    await assert.rejects(cloud.callFunction({ name: 'nope' }), err => {
      assert.equal(err.statusCode, 404)
      assert.equal(typeof err.errCode, 'number')
      assert.match(err.errMsg, /^cloud\.callFunction:fail .*not found/)
      return true
    })
    let failed = null
    let completed = false
    await cloud.callFunction({ name: 'nope', fail: e => { failed = e }, complete: () => { completed = true } })
      .catch(() => {})
    assert.equal(failed.statusCode, 404)
    assert.ok(completed)
  })

  test('a failing function gives its requestID, never the traceback', async () => {
    const { cloud } = client('oJsUser0007')
    await assert.rejects(cloud.callFunction({ name: 'boom' }), err => {
      assert.equal(err.statusCode, 500)
      assert.equal(err.errCode, -1)
      assert.ok(err.requestID)
      assert.doesNotMatch(err.errMsg, /secret detail/)
      return true
    })
  })
})

describe('sessions', () => {
  test('logs in again once when the server answers 401', async () => {
    const { wx, cloud } = client('oJsUser0010')
    await cloud.callFunction({ name: 'echo' })
    const [key] = [...wx.storage.keys()]
    wx.storage.set(key, { ...wx.storage.get(key), token: 'revoked-or-forged' })
    const fresh = createCloud(wx) // a new page load: the session comes from storage
    fresh.init({ baseURL: servers.csbotURL, appid: APPID })
    const res = await fresh.callFunction({ name: 'whoami' })
    assert.equal(res.result.OPENID, 'oJsUser0010')
    assert.equal(wx.logins, 2)
  })

  test('gives up after one re-login when the server keeps answering 401', async () => {
    const wx = standInWx(servers.fakeURL, 'oJsUser0011')
    const realRequest = wx.request.bind(wx)
    wx.request = options => {
      if (options.url.includes('/cloud/functions/')) {
        return options.success({ statusCode: 401, data: { errCode: -401001, errMsg: 'session expired' }, header: {} })
      }
      return realRequest(options)
    }
    const cloud = createCloud(wx)
    cloud.init({ baseURL: servers.csbotURL, appid: APPID })
    await assert.rejects(cloud.callFunction({ name: 'echo' }), err => err.statusCode === 401)
    assert.equal(wx.logins, 2)
  })

  test('logout ends the session on the server', async () => {
    const { wx, cloud } = client('oJsUser0012')
    await cloud.callFunction({ name: 'echo' })
    const token = [...wx.storage.values()][0].token
    await cloud.logout()
    assert.equal(wx.storage.size, 0)
    const res = await fetch(servers.csbotURL + '/cloud/functions/echo', {
      method: 'POST', headers: { Authorization: 'Bearer ' + token }, body: '{}'
    })
    assert.equal(res.status, 401)
  })

  test('a network failure is a fail with errCode -1', async () => {
    const wx = standInWx(servers.fakeURL, 'oJsUser0013')
    const cloud = createCloud(wx)
    cloud.init({ baseURL: 'http://127.0.0.1:9', appid: APPID })
    await assert.rejects(cloud.callFunction({ name: 'echo' }), err => err.errCode === -1 && /request:fail/.test(err.errMsg))
  })

  test('callFunction before init fails clearly', async () => {
    const cloud = createCloud(standInWx(servers.fakeURL, 'oJsUser0014'))
    await assert.rejects(cloud.callFunction({ name: 'echo' }), /cloud.init/)
  })
})

describe('CloudID', () => {
  test('a top-level CloudID reaches the function as the open data behind it', async () => {
    const { cloud } = client('oJsUser0020')
    await fakeControl(servers.fakeURL, 'register_cloud_id',
      { appid: APPID, cloud_id: 'CID-js-werun', data: { stepInfoList: [{ timestamp: 1, step: 4321 }] } })
    const res = await cloud.callFunction({
      name: 'opened',
      data: { weRun: cloud.CloudID('CID-js-werun'), nested: { id: cloud.CloudID('CID-js-werun') } }
    })
    assert.equal(res.result.event.weRun.cloudID, 'CID-js-werun')
    assert.deepEqual(res.result.event.weRun.data.stepInfoList, [{ timestamp: 1, step: 4321 }])
    assert.deepEqual(res.result.event.nested, { id: { __csbotCloudID: 'CID-js-werun' } })
    assert.deepEqual(res.result.OPEN_DATA_INFO, ['weRun'])
    assert.equal((await fakeCalls(servers.fakeURL, '/wxa/getopendata')).length, 1)
  })
})
