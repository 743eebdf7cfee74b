// Test support: a real FakeWeChat and a real `csbot serve` in child processes, and a stand-in `wx`
// whose request() is real HTTP (fetch) and whose login() asks the FakeWeChat for a code.
'use strict'

const { spawn } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')

const ROOT = path.resolve(__dirname, '..', '..')
const PYTHON = process.env.CSBOT_PYTHON || 'python3'
const APPID = 'wx0123456789abcdef'
const SECRET = 'js-test-secret'

function freePort () {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
    srv.on('error', reject)
  })
}

function firstLine (child) {
  return new Promise((resolve, reject) => {
    let buf = ''
    child.stdout.on('data', chunk => {
      buf += chunk
      const nl = buf.indexOf('\n')
      if (nl >= 0) resolve(buf.slice(0, nl).trim())
    })
    child.on('exit', code => reject(new Error(`process exited (${code}) before printing its URL`)))
  })
}

async function waitHealthy (url, child, seconds = 60) {
  const deadline = Date.now() + seconds * 1000
  let exited = null
  child.on('exit', code => { exited = code })
  while (Date.now() < deadline) {
    if (exited !== null) throw new Error(`csbot serve exited with ${exited}`)
    try {
      const res = await fetch(url + '/healthz')
      if (res.status === 200) return
    } catch (e) { /* not listening yet */ }
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  throw new Error('csbot serve did not become healthy')
}

/**
 * Start FakeWeChat and csbot serve (handlers: tests/cloud/functions); returns {csbotURL, fakeURL, stop}.
 * `config`: the text of a csbot.toml to serve with (collections' rules, storage rules, …).
 */
async function startServers ({ config } = {}) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'csbot-js-'))
  const configEnv = {}
  if (config) {
    fs.writeFileSync(path.join(tmp, 'csbot.toml'), config)
    configEnv.CSBOT_CONFIG = path.join(tmp, 'csbot.toml')
  }
  const env = { ...process.env, PYTHONPATH: ROOT + (process.env.PYTHONPATH ? path.delimiter + process.env.PYTHONPATH : '') }
  const fake = spawn(PYTHON, ['-m', 'csbot.testing.fake_wechat', '--port', '0', '--app', `${APPID}:${SECRET}`],
    { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'inherit'] })
  const fakeURL = await firstLine(fake)
  const port = await freePort()
  const serve = spawn(PYTHON, ['-m', 'csbot', 'serve', '--log-level', 'WARNING'], {
    cwd: tmp,
    env: {
      ...env,
      CSBOT_APPID: APPID,
      CSBOT_APP_SECRET: SECRET,
      CSBOT_TOKEN: 'jsTestToken',
      CSBOT_WECHAT_API_BASE: fakeURL,
      CSBOT_DATABASE_URL: `sqlite+aiosqlite:///${path.join(tmp, 'csbot.db')}`,
      CSBOT_HANDLERS: path.join(ROOT, 'tests', 'cloud', 'functions'),
      CSBOT_DATA_DIR: path.join(tmp, 'data'),
      CSBOT_HOST: '127.0.0.1',
      CSBOT_PORT: String(port),
      ...configEnv
    },
    stdio: ['ignore', 'inherit', 'inherit']
  })
  const csbotURL = `http://127.0.0.1:${port}`
  try {
    await waitHealthy(csbotURL, serve)
  } catch (err) {
    serve.kill('SIGTERM')
    fake.kill('SIGTERM')
    throw err
  }
  const stop = async () => {
    const gone = child => new Promise(resolve => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve()
      child.on('exit', resolve)
      child.kill('SIGTERM')
    })
    await Promise.all([gone(serve), gone(fake)])
    fs.rmSync(tmp, { recursive: true, force: true })
  }
  return { csbotURL, fakeURL, stop }
}

/** Drive the FakeWeChat: POST /_fake/<action> with JSON arguments; resolves its result. */
async function fakeControl (fakeURL, action, args = {}) {
  const res = await fetch(`${fakeURL}/_fake/${action}`, { method: 'POST', body: JSON.stringify(args) })
  const body = await res.json()
  if (!body.ok) throw new Error(`fake ${action}: ${JSON.stringify(body)}`)
  return body.result
}

async function fakeCalls (fakeURL, pathName) {
  const res = await fetch(`${fakeURL}/_fake/calls`)
  return (await res.json()).filter(call => call.path === pathName)
}

/** A stand-in for the mini program's `wx`: request() over fetch, login() from the FakeWeChat. */
function standInWx (fakeURL, openid) {
  const storage = new Map()
  return {
    storage,
    logins: 0,
    login ({ success, fail }) {
      this.logins += 1
      fakeControl(fakeURL, 'issue_login_code', { appid: APPID, openid })
        .then(code => success({ code, errMsg: 'login:ok' }), err => fail({ errMsg: 'login:fail ' + err.message }))
    },
    request ({ url, method = 'GET', data, header = {}, success, fail }) {
      const init = { method, headers: header }
      if (method !== 'GET') init.body = typeof data === 'string' ? data : JSON.stringify(data)
      fetch(url, init).then(async res => {
        const text = await res.text()
        let parsed = text
        try { parsed = JSON.parse(text) } catch (e) { /* like wx: the string */ }
        success({ statusCode: res.status, data: parsed, header: Object.fromEntries(res.headers), errMsg: 'request:ok' })
      }, err => fail({ errMsg: 'request:fail ' + err.message }))
    },
    setStorageSync (key, value) { storage.set(key, JSON.parse(JSON.stringify(value))) },
    getStorageSync (key) { return storage.has(key) ? storage.get(key) : '' },
    removeStorageSync (key) { storage.delete(key) }
  }
}

module.exports = { APPID, ROOT, startServers, fakeControl, fakeCalls, standInWx }
