/**
 * csbot-cloud.js: the wx.cloud shape for a mini program whose backend is a csbot server.
 *
 *   const cloud = require('../../utils/csbot-cloud.js')
 *   cloud.init({ baseURL: 'https://your.host', appid: 'wx0123456789abcdef' })
 *   const { result } = await cloud.callFunction({ name: 'add', data: { a: 12, b: 19 } })
 *   cloud.callFunction({ name: 'openapi', data: { phone: cloud.CloudID(e.detail.cloudID) } })
 *
 * It logs in with wx.login on first use (POST /cloud/login), keeps the session token with
 * wx.setStorageSync, sends it as "Authorization: Bearer …", and logs in again once when the
 * server answers 401. Every HTTP call goes through one internal request(), so further services
 * (database, storage) are added as methods built on it.
 *
 * Written out by `csbot cloud client`; no dependencies; ES2017 (the mini program's base library).
 */
'use strict'

var STORAGE_PREFIX = 'csbot-cloud:'

function CloudError(errCode, errMsg, extra) {
  var err = new Error(errMsg)
  err.errCode = errCode
  err.errMsg = errMsg
  if (extra) {
    Object.keys(extra).forEach(function (k) { if (extra[k] !== undefined) err[k] = extra[k] })
  }
  return err
}

/** A client bound to a `wx` object (the mini program's global one unless given: tests give theirs). */
function createCloud(wxApi) {
  var config = null
  var session = null     // {token, expiresAt, openid}
  var loggingIn = null   // the login in flight, shared by concurrent calls

  function wxObj() {
    var api = wxApi || (typeof wx !== 'undefined' ? wx : null) // eslint-disable-line no-undef
    if (!api) throw CloudError(-1, 'csbot-cloud: no wx object (not in a mini program?)')
    return api
  }

  function storageKey() {
    return STORAGE_PREFIX + config.baseURL + '|' + (config.appid || '')
  }

  function requireInit() {
    if (!config) throw CloudError(-1, 'csbot-cloud: call cloud.init({baseURL, appid}) first')
  }

  /** One HTTP exchange through wx.request: resolves {statusCode, data, header}, never rejects on HTTP status. */
  function wxRequest(method, path, body, headers) {
    return new Promise(function (resolve, reject) {
      wxObj().request({
        url: config.baseURL + path,
        method: method,
        data: body === undefined ? {} : body,
        header: Object.assign({ 'content-type': 'application/json' }, headers || {}),
        dataType: 'json',
        timeout: config.timeout,
        success: resolve,
        fail: function (res) {
          reject(CloudError(-1, 'request:fail ' + ((res && res.errMsg) || 'network error')))
        }
      })
    })
  }

  function errorOf(res) {
    var body = res && res.data && typeof res.data === 'object' ? res.data : {}
    var header = (res && res.header) || {}
    return CloudError(typeof body.errCode === 'number' ? body.errCode : -1,
      body.errMsg || ('HTTP ' + (res && res.statusCode)),
      { statusCode: res && res.statusCode, requestID: body.requestID,
        retryAfter: header['Retry-After'] || header['retry-after'] })
  }

  function loadSession() {
    if (session) return session
    try {
      var stored = wxObj().getStorageSync(storageKey())
      if (stored && stored.token) session = stored
    } catch (e) { /* storage unavailable: log in again */ }
    return session
  }

  function saveSession(value) {
    session = value
    try {
      if (value) wxObj().setStorageSync(storageKey(), value)
      else wxObj().removeStorageSync(storageKey())
    } catch (e) { /* kept in memory for this run */ }
  }

  function wxLogin() {
    return new Promise(function (resolve, reject) {
      wxObj().login({
        success: function (res) {
          if (res && res.code) resolve(res.code)
          else reject(CloudError(-1, 'wx.login gave no code'))
        },
        fail: function (res) { reject(CloudError(-1, 'wx.login:fail ' + ((res && res.errMsg) || ''))) }
      })
    })
  }

  /** Log in now (wx.login → POST /cloud/login); concurrent callers share one login. */
  function login() {
    requireInit()
    if (!loggingIn) {
      loggingIn = wxLogin().then(function (code) {
        var body = { code: code }
        if (config.appid) body.appid = config.appid
        return wxRequest('POST', '/cloud/login', body)
      }).then(function (res) {
        if (res.statusCode !== 200 || !res.data || !res.data.token) throw errorOf(res)
        var value = { token: res.data.token, openid: res.data.openid,
          expiresAt: Date.now() + (res.data.expires_in - 60) * 1000 }
        saveSession(value)
        return value
      })
      var clear = function () { loggingIn = null }
      loggingIn.then(clear, clear)
    }
    return loggingIn
  }

  function currentSession() {
    var s = loadSession()
    if (s && s.expiresAt > Date.now()) return Promise.resolve(s)
    return login()
  }

  /**
   * The one way this client talks to csbot: a JSON request with the session token, logging in
   * first when there is none, and once more when the server answers 401. Resolves the parsed
   * body of a 2xx answer; rejects with an Error carrying errCode, errMsg, statusCode, requestID.
   * Database and storage methods are built on it: request('POST', '/cloud/db/…', body).
   */
  function request(method, path, body) {
    requireInit()
    var attempt = function (retried) {
      return currentSession().then(function (s) {
        return wxRequest(method, path, body, { Authorization: 'Bearer ' + s.token })
      }).then(function (res) {
        if (res.statusCode === 401 && !retried) {
          saveSession(null)
          return attempt(true)
        }
        if (res.statusCode < 200 || res.statusCode >= 300) throw errorOf(res)
        return res.data
      })
    }
    return attempt(false)
  }

  /** Runs success/fail/complete like wx APIs do, and returns the Promise as well. */
  function withCallbacks(promise, options, api) {
    var out = promise.then(function (value) {
      value.errMsg = api + ':ok'
      if (typeof options.success === 'function') options.success(value)
      if (typeof options.complete === 'function') options.complete(value)
      return value
    }, function (err) {
      if (!/^[a-zA-Z.]+:fail/.test(err.errMsg)) err.errMsg = api + ':fail ' + err.errMsg
      err.message = err.errMsg
      if (typeof options.fail === 'function') options.fail(err)
      if (typeof options.complete === 'function') options.complete(err)
      throw err
    })
    if (options.fail || options.complete) out.catch(function () {}) // handled by the callbacks
    return out
  }

  var cloud = {
    /** cloud.init({baseURL, appid, timeout}) */
    init: function (options) {
      options = options || {}
      if (!options.baseURL || typeof options.baseURL !== 'string') {
        throw CloudError(-1, 'cloud.init needs baseURL, e.g. https://your.host')
      }
      config = { baseURL: options.baseURL.replace(/\/+$/, ''), appid: options.appid || '',
        timeout: options.timeout || 60000 }
      session = null
    },

    /** cloud.callFunction({name, data, success, fail, complete}) → Promise<{result, requestID, errMsg}> */
    callFunction: function (options) {
      options = options || {}
      var promise
      try {
        requireInit()
        if (!options.name || typeof options.name !== 'string') throw CloudError(-1, 'name is required')
        promise = request('POST', '/cloud/functions/' + encodeURIComponent(options.name),
          { data: options.data === undefined ? {} : options.data })
          .then(function (body) { return { result: body.result, requestID: body.requestID } })
      } catch (err) {
        promise = Promise.reject(err)
      }
      return withCallbacks(promise, options, 'cloud.callFunction')
    },

    /** A CloudID for callFunction data: opened by the server into {cloudID, data} (top-level only). */
    CloudID: function (cloudID) {
      return { __csbotCloudID: String(cloudID) }
    },

    /** Log in now (otherwise done on first use). Resolves {token, openid, expiresAt}. */
    login: login,

    /** End the session on the server and forget it here. */
    logout: function () {
      requireInit()
      var s = loadSession()
      saveSession(null)
      if (!s) return Promise.resolve()
      return wxRequest('POST', '/cloud/logout', {}, { Authorization: 'Bearer ' + s.token })
        .then(function () {})
    },

    /** The openid of the logged-in user, or '' before the first login. */
    get openid() { var s = loadSession(); return (s && s.openid) || '' },

    // for the database and storage parts of this client
    _request: request,
    _withCallbacks: withCallbacks,
    _CloudError: CloudError
  }
  return cloud
}

var defaultCloud = createCloud()
defaultCloud.createCloud = createCloud
module.exports = defaultCloud
