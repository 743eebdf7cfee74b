// cloud.uploadFile / getTempFileURL / deleteFile / downloadFile against a real csbot serve.
'use strict'

const { after, before, describe, test } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const { APPID, ROOT, startServers, standInWx } = require('./support.js')

const { createCloud } = require(path.join(ROOT, 'csbot', 'cloud', 'client', 'csbot-cloud.js'))

let servers
let tmp

before(async () => {
  servers = await startServers()
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'csbot-js-files-'))
})
after(async () => {
  if (servers) await servers.stop()
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true })
})

/** The stand-in wx, plus uploadFile (multipart over fetch, as the WeChat client sends it) and downloadFile. */
function client (openid) {
  const wx = standInWx(servers.fakeURL, openid)
  wx.uploadFile = ({ url, filePath, name, formData = {}, header = {}, success, fail }) => {
    const form = new FormData()
    for (const [k, v] of Object.entries(formData)) form.append(k, v)
    let bytes
    try { bytes = fs.readFileSync(filePath) } catch (e) { return fail({ errMsg: 'uploadFile:fail file not found' }) }
    form.append(name, new Blob([bytes]), path.basename(filePath))
    fetch(url, { method: 'POST', body: form, headers: header }).then(async (res) => {
      success({ statusCode: res.status, data: await res.text(), errMsg: 'uploadFile:ok' })
    }, (err) => fail({ errMsg: 'uploadFile:fail ' + err.message }))
  }
  wx.downloadFile = ({ url, success, fail }) => {
    fetch(url).then(async (res) => {
      const file = path.join(tmp, 'dl-' + Math.random().toString(16).slice(2))
      fs.writeFileSync(file, Buffer.from(await res.arrayBuffer()))
      success({ statusCode: res.status, tempFilePath: file, errMsg: 'downloadFile:ok' })
    }, (err) => fail({ errMsg: 'downloadFile:fail ' + err.message }))
  }
  const cloud = createCloud(wx)
  cloud.init({ baseURL: servers.csbotURL, appid: APPID })
  return { wx, cloud }
}

function localFile (name, bytes) {
  const file = path.join(tmp, name)
  fs.writeFileSync(file, bytes)
  return file
}

describe('storage', () => {
  test('uploadFile keeps the file by cloudPath and answers its fileID', async () => {
    const { cloud } = client('oJsFiles01')
    const png = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(300, 7)])
    const res = await cloud.uploadFile({ cloudPath: 'avatars/oJsFiles01.png', filePath: localFile('a.png', png) })
    assert.deepEqual(res, { fileID: 'cloud://default/avatars/oJsFiles01.png', statusCode: 200, errMsg: 'cloud.uploadFile:ok' })

    const urls = await cloud.getTempFileURL({ fileList: [res.fileID, { fileID: res.fileID, maxAge: 60 }] })
    assert.equal(urls.errMsg, 'cloud.getTempFileURL:ok')
    assert.equal(urls.fileList.length, 2)
    for (const entry of urls.fileList) {
      assert.deepEqual(Object.keys(entry).sort(), ['errMsg', 'fileID', 'status', 'tempFileURL'])
      assert.equal(entry.status, 0)
    }
    const fetched = await fetch(urls.fileList[1].tempFileURL)
    assert.equal(fetched.status, 200)
    assert.equal(fetched.headers.get('content-type'), 'image/png')
    assert.deepEqual(Buffer.from(await fetched.arrayBuffer()), png)

    const dl = await cloud.downloadFile({ fileID: res.fileID })
    assert.equal(dl.statusCode, 200)
    assert.deepEqual(fs.readFileSync(dl.tempFilePath), png)

    const deleted = await cloud.deleteFile({ fileList: [res.fileID] })
    assert.deepEqual(deleted.fileList, [{ fileID: res.fileID, status: 0, errMsg: 'ok' }])
    const gone = await cloud.getTempFileURL({ fileList: [res.fileID] })
    assert.equal(gone.fileList[0].status, 1)
    assert.match(gone.fileList[0].errMsg, /^STORAGE_FILE_NONEXIST/)
  })

  test("another user's file cannot be overwritten or deleted, only read", async () => {
    const alice = client('oJsAlice').cloud
    const bob = client('oJsBob').cloud
    const { fileID } = await alice.uploadFile({ cloudPath: 'shared/note.txt', filePath: localFile('n.txt', 'alice') })
    await assert.rejects(bob.uploadFile({ cloudPath: 'shared/note.txt', filePath: localFile('b.txt', 'bob') }),
      (err) => err.statusCode === 403 && /write rule/.test(err.errMsg) && /^cloud\.uploadFile:fail/.test(err.errMsg))
    const del = await bob.deleteFile({ fileList: [fileID] })
    assert.equal(del.fileList[0].status, 1)
    assert.match(del.fileList[0].errMsg, /^STORAGE_EXCEED_AUTHORITY/)
    const read = await bob.getTempFileURL({ fileList: [fileID] })
    assert.equal(read.fileList[0].status, 0)
    assert.equal(await (await fetch(read.fileList[0].tempFileURL)).text(), 'alice')
  })

  test('a bad cloudPath fails with the rule it breaks; callbacks run as in wx', async () => {
    const { cloud } = client('oJsFiles02')
    const err = await new Promise((resolve) => {
      cloud.uploadFile({ cloudPath: '../x.png', filePath: localFile('x.png', 'x'), fail: resolve })
    })
    assert.equal(err.statusCode, 400)
    assert.match(err.errMsg, /'\.\.'/)
    await assert.rejects(cloud.uploadFile({ cloudPath: 'x.png' }), /filePath is required/)
    await assert.rejects(cloud.getTempFileURL({ fileList: new Array(51).fill('cloud://default/x') }), /at most 50/)
  })

  test('an expired session is renewed once for an upload', async () => {
    const { wx, cloud } = client('oJsFiles03')
    await cloud.login()
    const [key] = [...wx.storage.keys()]
    wx.storage.set(key, Object.assign({}, wx.storage.get(key), { token: 'revoked-or-unknown' }))
    const fresh = createCloud(wx)
    fresh.init({ baseURL: servers.csbotURL, appid: APPID })
    const res = await fresh.uploadFile({ cloudPath: 'again.txt', filePath: localFile('again.txt', 'ok') })
    assert.equal(res.fileID, 'cloud://default/again.txt')
    assert.equal(wx.logins, 2)
  })
})
