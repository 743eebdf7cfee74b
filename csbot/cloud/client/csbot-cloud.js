/**
 * csbot-cloud.js: the wx.cloud shape for a mini program whose backend is a csbot server.
 *
 *   const cloud = require('../../utils/csbot-cloud.js')
 *   cloud.init({ baseURL: 'https://your.host', appid: 'wx0123456789abcdef' })
 *   const { result } = await cloud.callFunction({ name: 'add', data: { a: 12, b: 19 } })
 *   cloud.callFunction({ name: 'openapi', data: { phone: cloud.CloudID(e.detail.cloudID) } })
 *   const db = cloud.database(), _ = db.command
 *   const { data } = await db.collection('todos').where({ done: false, due: _.lt(Date.now()) }).get()
 *   const { fileID } = await cloud.uploadFile({ cloudPath: 'photos/a.jpg', filePath: tempFilePath })
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

// ---------------------------------------------------------------- database
//
// cloud.database() serialises exactly as WeChat's SDK (TencentCloudBase/tcb-js-sdk, which laf's
// database-ql reproduces): nested plain objects are flattened into dotted keys, commands
// become MongoDB-style `$` operators (neq → $ne, remove → $unset, shift → $pop: -1,
// pop → $pop: 1, unshift → $push {$each, $position: 0}), a plain value in update data is
// `$set` of its dotted path, a RegExp is {$regex, $options}, a Date is {$date: ms} and
// db.serverDate({offset}) is {$date: {offset}}; dates read back ({$date: ms}) become Dates.

const UNSET = '__csbot_unset_field__'
const OPERATOR_NAMES = { neq: '$ne', remove: '$unset', shift: '$pop', unshift: '$push' }
const opName = (operator) => OPERATOR_NAMES[operator] || '$' + operator

class LogicCommand {
  constructor (operator, operands, fieldName) {
    this.operator = operator
    this.operands = operands
    this.fieldName = fieldName || UNSET
    if (this.fieldName !== UNSET && Array.isArray(operands)) {
      this.operands = operands.map((q) => (q instanceof LogicCommand ? q._setFieldName(this.fieldName) : q))
    }
  }

  _setFieldName (fieldName) {
    const operands = this.operands.map((q) => (q instanceof LogicCommand ? q._setFieldName(fieldName) : q))
    return new LogicCommand(this.operator, operands, fieldName)
  }

  and (...args) { return new LogicCommand('and', [this, ...(Array.isArray(args[0]) ? args[0] : args)], this.fieldName) }
  or (...args) { return new LogicCommand('or', [this, ...(Array.isArray(args[0]) ? args[0] : args)], this.fieldName) }
}

class QueryCommand extends LogicCommand {
  _setFieldName (fieldName) { return new QueryCommand(this.operator, this.operands, fieldName) }
}
for (const op of ['eq', 'neq', 'gt', 'gte', 'lt', 'lte']) {
  QueryCommand.prototype[op] = function (value) { return this.and(new QueryCommand(op, [value], this.fieldName)) }
}
for (const op of ['in', 'nin']) {
  QueryCommand.prototype[op] = function (list) { return this.and(new QueryCommand(op, list, this.fieldName)) }
}

class UpdateCommand {
  constructor (operator, operands, fieldName) {
    this.operator = operator
    this.operands = operands
    this.fieldName = fieldName || UNSET
  }

  _setFieldName (fieldName) { return new UpdateCommand(this.operator, this.operands, fieldName) }
}

class DbRegExp {
  constructor ({ regexp, options } = {}) {
    if (!regexp || typeof regexp !== 'string') throw new TypeError('db.RegExp: regexp must be a string')
    this.regexp = regexp
    this.options = options || ''
  }
}

// db.serverDate({offset}): the server's clock when the request is handled ({$date: {offset}})
class ServerDate {
  constructor ({ offset } = {}) {
    if (offset !== undefined && typeof offset !== 'number') throw new TypeError('db.serverDate: offset must be milliseconds')
    this.offset = offset || 0
  }
}

// documents read back: {$date: ms} (how csbot stores a date) becomes a Date, as in WeChat's SDK
function decodeDates (v) {
  if (Array.isArray(v)) return v.map(decodeDates)
  if (v && typeof v === 'object') {
    const keys = Object.keys(v)
    if (keys.length === 1 && keys[0] === '$date' && typeof v.$date === 'number') return new Date(v.$date)
    const out = {}
    for (const k of keys) out[k] = decodeDates(v[k])
    return out
  }
  return v
}

const listOf = (args) => (Array.isArray(args[0]) ? args[0] : Array.from(args))
const isPlainObject = (v) => Object.prototype.toString.call(v) === '[object Object]' &&
  !(v instanceof LogicCommand) && !(v instanceof UpdateCommand) && !(v instanceof DbRegExp) && !(v instanceof ServerDate)
const isSpecial = (v) => v instanceof LogicCommand || v instanceof UpdateCommand || v instanceof DbRegExp ||
  v instanceof Date || v instanceof RegExp || v instanceof ServerDate

const command = {
  eq: (v) => new QueryCommand('eq', [v]),
  neq: (v) => new QueryCommand('neq', [v]),
  lt: (v) => new QueryCommand('lt', [v]),
  lte: (v) => new QueryCommand('lte', [v]),
  gt: (v) => new QueryCommand('gt', [v]),
  gte: (v) => new QueryCommand('gte', [v]),
  in: (list) => new QueryCommand('in', list),
  nin: (list) => new QueryCommand('nin', list),
  all: (list) => new QueryCommand('all', list),
  elemMatch: (cond) => new QueryCommand('elemMatch', [cond]),
  exists: (flag) => new QueryCommand('exists', [flag]),
  size: (n) => new QueryCommand('size', [n]),
  mod: (pair) => new QueryCommand('mod', [pair]),
  and: (...args) => new LogicCommand('and', listOf(args)),
  or: (...args) => new LogicCommand('or', listOf(args)),
  nor: (...args) => new LogicCommand('nor', listOf(args)),
  not: (...args) => new LogicCommand('not', listOf(args)),
  set: (v) => new UpdateCommand('set', [v]),
  remove: () => new UpdateCommand('remove', []),
  inc: (n) => new UpdateCommand('inc', [n]),
  mul: (n) => new UpdateCommand('mul', [n]),
  min: (v) => new UpdateCommand('min', [v]),
  max: (v) => new UpdateCommand('max', [v]),
  rename: (name) => new UpdateCommand('rename', [name]),
  push (...args) {
    let values
    if (isPlainObject(args[0]) && Object.prototype.hasOwnProperty.call(args[0], 'each')) {
      const o = args[0]
      values = { $each: o.each, $position: o.position, $sort: o.sort, $slice: o.slice }
    } else {
      values = listOf(args)
    }
    return new UpdateCommand('push', values)
  },
  pull: (v) => new UpdateCommand('pull', v),
  pullAll: (list) => new UpdateCommand('pullAll', list),
  pop: () => new UpdateCommand('pop', []),
  shift: () => new UpdateCommand('shift', []),
  unshift: (...args) => new UpdateCommand('unshift', listOf(args)),
  addToSet: (v) => new UpdateCommand('addToSet', v)
}

function encodeValue (v) {
  if (v instanceof Date) return { $date: v.getTime() }
  if (v instanceof ServerDate) return { $date: { offset: v.offset } }
  if (v instanceof RegExp) return { $regex: v.source, $options: v.flags }
  if (v instanceof DbRegExp) return { $regex: v.regexp, $options: v.options }
  if (v instanceof LogicCommand) return v.fieldName === UNSET ? commandJSON(v) : encodeLogic(v)
  if (Array.isArray(v)) return v.map(encodeValue)
  if (isPlainObject(v)) {
    const out = {}
    for (const k of Object.keys(v)) if (v[k] !== undefined) out[k] = encodeValue(v[k])
    return out
  }
  return v
}

// {a: {b: 1}} → {'a.b': 1}; objects that are commands, dates or regexps stay whole; $keys are kept
function flatten (query, seen = []) {
  const out = Object.assign({}, query)
  for (const key of Object.keys(query)) {
    if (key.startsWith('$')) continue
    const value = query[key]
    if (!value || !isPlainObject(value)) continue
    if (seen.includes(value)) throw new Error('Cannot convert circular structure to JSON')
    const child = flatten(value, [...seen, value])
    let keepsOperators = false
    out[key] = Object.assign({}, child)
    for (const childKey of Object.keys(child)) {
      if (childKey.startsWith('$')) {
        keepsOperators = true
      } else {
        out[`${key}.${childKey}`] = child[childKey]
        delete out[key][childKey]
      }
    }
    if (!keepsOperators) delete out[key]
  }
  return out
}

function merge (query, condition, key) {
  if (!condition[key]) delete query[key]
  for (const k of Object.keys(condition)) {
    if (query[k] && Array.isArray(query[k])) query[k] = query[k].concat(condition[k])
    else if (query[k] && isPlainObject(query[k]) && isPlainObject(condition[k])) Object.assign(query[k], condition[k])
    else query[k] = condition[k]
  }
}

// a command used as a value (inside elemMatch or pull): its operator object without a field
function commandJSON (q) {
  if (q instanceof QueryCommand) {
    const many = ['in', 'nin', 'all'].includes(q.operator)
    return { [opName(q.operator)]: encodeValue(many ? q.operands : q.operands[0]) }
  }
  if (q.operator === 'not') return { $not: commandJSON(q.operands[0]) }
  return { [opName(q.operator)]: q.operands.map((o) => (o instanceof LogicCommand ? commandJSON(o) : encodeValue(o))) }
}

function encodeComparison (q) {
  if (q.fieldName === UNSET) throw new Error(`db.command.${q.operator}() needs a field: use it as the value of a key`)
  const many = ['in', 'nin', 'all'].includes(q.operator)
  return { [q.fieldName]: { [opName(q.operator)]: encodeValue(many ? q.operands : q.operands[0]) } }
}

function encodeLogic (q) {
  if (q instanceof QueryCommand) return encodeComparison(q)
  if (['and', 'or', 'nor'].includes(q.operator)) {
    return { [opName(q.operator)]: q.operands.map((o) => encodeQuery(o)) }
  }
  if (q.operator === 'not') {
    const inner = q.operands[0]
    if (inner instanceof RegExp || inner instanceof DbRegExp) return { [q.fieldName]: { $not: encodeValue(inner) } }
    return { [q.fieldName]: { $not: encodeQuery(inner)[q.fieldName] } }
  }
  throw new Error(`unknown command ${q.operator}`)
}

function encodeQuery (query) {
  if (query instanceof LogicCommand) return encodeLogic(query)
  if (!isPlainObject(query)) throw new TypeError('a query condition must be an object or a db.command')
  const flat = flatten(query)
  for (const key of Object.keys(flat)) {
    const value = flat[key]
    if (value instanceof LogicCommand) {
      merge(flat, encodeLogic(value._setFieldName(key)), key)
    } else if (isSpecial(value)) {
      flat[key] = encodeValue(value)
    } else if (value !== undefined && !key.startsWith('$')) {
      flat[key] = encodeValue(value)
    }
  }
  return flat
}

function encodeUpdateCommand (u) {
  const op = opName(u.operator)
  switch (u.operator) {
    case 'remove': return { [op]: { [u.fieldName]: '' } }
    case 'push': return { [op]: { [u.fieldName]: Array.isArray(u.operands) ? { $each: u.operands.map(encodeValue) } : u.operands } }
    case 'unshift': return { [op]: { [u.fieldName]: { $each: u.operands.map(encodeValue), $position: 0 } } }
    case 'pop': return { [op]: { [u.fieldName]: 1 } }
    case 'shift': return { [op]: { [u.fieldName]: -1 } }
    case 'pull': case 'pullAll': case 'addToSet': return { [op]: { [u.fieldName]: encodeValue(u.operands) } }
    default: return { [op]: { [u.fieldName]: encodeValue(u.operands[0]) } }
  }
}

function encodeUpdate (data) {
  if (!isPlainObject(data)) throw new TypeError('update data must be an object')
  const flat = flatten(data)
  for (const key of Object.keys(flat)) {
    if (key.startsWith('$')) continue
    const value = flat[key]
    const cmd = value instanceof UpdateCommand ? value._setFieldName(key) : new UpdateCommand('set', [value], key)
    merge(flat, encodeUpdateCommand(cmd), key)
  }
  return flat
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

  // ---- database: cloud.database().collection(name)…, sent to /cloud/db/<collection>/<op>

  function dbPath(collection, rest) {
    return '/cloud/db/' + encodeURIComponent(collection) + rest
  }

  function callbacksOf(options) {
    return options && typeof options === 'object' ? options : {}
  }

  /** A query on a collection; each call returns a new query (the SDK's chain is immutable too). */
  function Query(collection, state) {
    this.collection = collection
    this._state = state || { orderBy: [] }
  }
  Query.prototype._with = function (patch) {
    var next = Object.assign({}, this._state, patch)
    return new this.constructor(this.collection, next)
  }
  Query.prototype.where = function (condition) { return this._with({ where: encodeQuery(condition) }) }
  Query.prototype.orderBy = function (fieldPath, direction) {
    if (typeof fieldPath !== 'string' || !fieldPath) throw CloudError(-1, 'orderBy needs a field path')
    if (direction !== 'asc' && direction !== 'desc') throw CloudError(-1, "orderBy direction must be 'asc' or 'desc'")
    return this._with({ orderBy: this._state.orderBy.concat([[fieldPath, direction]]) })
  }
  Query.prototype.limit = function (n) { return this._with({ limit: n }) }
  Query.prototype.skip = function (n) { return this._with({ skip: n }) }
  Query.prototype.field = function (projection) { return this._with({ field: projection }) }
  Query.prototype._body = function (keys) {
    var body = {}
    var state = this._state
    keys.forEach(function (k) {
      if (k === 'orderBy' ? state.orderBy.length : state[k] !== undefined) body[k] = state[k]
    })
    return body
  }
  Query.prototype._call = function (op, body, options, api) {
    var promise = request('POST', dbPath(this.collection, '/' + op), body)
    return withCallbacks(promise, callbacksOf(options), api)
  }
  Query.prototype.get = function (options) {
    var promise = request('POST', dbPath(this.collection, '/get'),
      this._body(['where', 'orderBy', 'skip', 'limit', 'field'])).then(function (res) {
      return Object.assign({}, res, { data: decodeDates(res.data) })
    })
    return withCallbacks(promise, callbacksOf(options), 'collection.get')
  }
  Query.prototype.count = function (options) {
    return this._call('count', this._body(['where']), options, 'collection.count')
  }
  Query.prototype.update = function (options) {
    options = callbacksOf(options)
    var body = this._body(['where'])
    try { body.data = encodeUpdate(options.data) } catch (err) { return withCallbacks(Promise.reject(CloudError(-1, err.message)), options, 'collection.update') }
    return this._call('update', body, options, 'collection.update')
  }
  Query.prototype.remove = function (options) {
    return this._call('remove', this._body(['where']), options, 'collection.remove')
  }

  function Collection(name, state) { Query.call(this, name, state) }
  Collection.prototype = Object.create(Query.prototype)
  Collection.prototype.constructor = Collection
  Collection.prototype.add = function (options) {
    options = callbacksOf(options)
    return this._call('add', { data: encodeValue(options.data) }, options, 'collection.add')
  }
  Collection.prototype.doc = function (id) { return new Document(this.collection, id) }

  function Document(collection, id) {
    this.collection = collection
    this.id = id
  }
  Document.prototype._call = function (method, body, options, api) {
    var path = dbPath(this.collection, '/doc/' + encodeURIComponent(String(this.id)))
    return withCallbacks(request(method, path, body), callbacksOf(options), api)
  }
  Document.prototype.get = function (options) {
    var path = dbPath(this.collection, '/doc/' + encodeURIComponent(String(this.id)))
    var promise = request('GET', path).then(function (res) { return Object.assign({}, res, { data: decodeDates(res.data) }) })
    return withCallbacks(promise, callbacksOf(options), 'document.get')
  }
  Document.prototype.set = function (options) {
    options = callbacksOf(options)
    return this._call('PUT', { data: encodeValue(options.data) }, options, 'document.set')
  }
  Document.prototype.update = function (options) {
    options = callbacksOf(options)
    var data
    try { data = encodeUpdate(options.data) } catch (err) { return withCallbacks(Promise.reject(CloudError(-1, err.message)), options, 'document.update') }
    return this._call('PATCH', { data: data }, options, 'document.update')
  }
  Document.prototype.remove = function (options) { return this._call('DELETE', undefined, options, 'document.remove') }

  function database() {
    requireInit()
    return {
      command: command,
      collection: function (name) {
        if (typeof name !== 'string' || !name) throw CloudError(-1, 'collection needs a name')
        return new Collection(name)
      },
      RegExp: function (options) { return new DbRegExp(options) },
      serverDate: function (options) { return new ServerDate(options) }
    }
  }

  // ---- storage: /cloud/storage/*

  function wxUpload(options, token) {
    return new Promise(function (resolve, reject) {
      wxObj().uploadFile({
        url: config.baseURL + '/cloud/storage/upload',
        filePath: options.filePath,
        name: 'file',
        formData: { cloudPath: options.cloudPath },
        header: { Authorization: 'Bearer ' + token },
        timeout: config.timeout,
        success: resolve,
        fail: function (res) { reject(CloudError(-1, 'uploadFile:fail ' + ((res && res.errMsg) || 'network error'))) }
      })
    })
  }

  function parsed(res) {
    var data = res && res.data
    if (typeof data === 'string') {
      try { data = JSON.parse(data) } catch (e) { data = {} }
    }
    return { statusCode: res && res.statusCode, data: data || {}, header: (res && res.header) || {} }
  }

  function uploadFile(options) {
    options = callbacksOf(options)
    var attempt = function (retried) {
      return currentSession().then(function (s) { return wxUpload(options, s.token) }).then(function (raw) {
        var res = parsed(raw)
        if (res.statusCode === 401 && !retried) {
          saveSession(null)
          return attempt(true)
        }
        if (res.statusCode !== 200 || !res.data.fileID) throw errorOf(res)
        return { fileID: res.data.fileID, statusCode: res.statusCode }
      })
    }
    var promise
    if (typeof options.cloudPath !== 'string' || !options.cloudPath) promise = Promise.reject(CloudError(-1, 'cloudPath is required'))
    else if (typeof options.filePath !== 'string' || !options.filePath) promise = Promise.reject(CloudError(-1, 'filePath is required'))
    else promise = Promise.resolve().then(function () { requireInit(); return attempt(false) })
    return withCallbacks(promise, options, 'cloud.uploadFile')
  }

  function fileListCall(path, api) {
    return function (options) {
      options = callbacksOf(options)
      var promise = Promise.resolve().then(function () {
        return request('POST', path, { fileList: options.fileList })
      }).then(function (body) { return { fileList: body.fileList } })
      return withCallbacks(promise, options, api)
    }
  }
  var getTempFileURL = fileListCall('/cloud/storage/temp-urls', 'cloud.getTempFileURL')
  var deleteFile = fileListCall('/cloud/storage/delete', 'cloud.deleteFile')

  function downloadFile(options) {
    options = callbacksOf(options)
    var promise = getTempFileURL({ fileList: [options.fileID] }).then(function (res) {
      var entry = res.fileList[0]
      if (entry.status !== 0) throw CloudError(entry.status, entry.errMsg)
      return new Promise(function (resolve, reject) {
        wxObj().downloadFile({
          url: entry.tempFileURL,
          success: function (r) {
            if (r.statusCode !== 200) reject(CloudError(-1, 'downloadFile:fail HTTP ' + r.statusCode))
            else resolve({ tempFilePath: r.tempFilePath, statusCode: r.statusCode })
          },
          fail: function (r) { reject(CloudError(-1, 'downloadFile:fail ' + ((r && r.errMsg) || ''))) }
        })
      })
    })
    return withCallbacks(promise, options, 'cloud.downloadFile')
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

    /** cloud.database(): collections with WeChat's query language; db.command is `_` */
    database: database,
    /** cloud.uploadFile({cloudPath, filePath}) → {fileID, statusCode} (wx.uploadFile to /cloud/storage/upload) */
    uploadFile: uploadFile,
    /** cloud.getTempFileURL({fileList: [fileID | {fileID, maxAge}]}) → {fileList: [{fileID, tempFileURL, status, errMsg}]} */
    getTempFileURL: getTempFileURL,
    /** cloud.deleteFile({fileList: [fileID]}) → {fileList: [{fileID, status, errMsg}]} */
    deleteFile: deleteFile,
    /** cloud.downloadFile({fileID}) → {tempFilePath, statusCode}: a temporary URL, then wx.downloadFile */
    downloadFile: downloadFile,

    // for tests and extensions
    _request: request,
    _withCallbacks: withCallbacks,
    _CloudError: CloudError
  }
  return cloud
}

var defaultCloud = createCloud()
defaultCloud.createCloud = createCloud
module.exports = defaultCloud
