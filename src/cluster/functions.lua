#!lua name=aigw
-- ai-gateway's functions in Redis (or Valkey): every change to the
-- cluster's shared state is one of these, so each is atomic. A function's
-- name carries its version: a change of behaviour or reply is a new name,
-- so instances of two releases can share one Redis during a rolling deploy.
--
-- Every function takes the key prefix (`--redis-prefix`) as its first
-- argument and touches only keys under it.
--
-- Keys (`P` the prefix):
--   P keys        hash  key id -> {"hash":…,"record":…}
--   P keys:ver    hash  key id -> the version of its entry
--   P keys:names  hash  name -> key id (names are unique in the cluster)
--   P keys:log    zset  key id scored by its latest version
--   P keys:v      the change counter (the latest version given)

-- Writes a key's entry if its version is still `base` (0: a new key) and
-- its name is free. Replies {1, version} when written, {0, current version}
-- when another change came first, {-1, 0} when another key has the name.
local function key_put_v1(keys, args)
  local p, id, base, name, entry = args[1], args[2], tonumber(args[3]), args[4], args[5]
  local current = tonumber(redis.call('HGET', p .. 'keys:ver', id) or '0')
  if current ~= base then
    return {0, current}
  end
  local owner = redis.call('HGET', p .. 'keys:names', name)
  if owner and owner ~= id then
    return {-1, 0}
  end
  if base > 0 then
    local old = cjson.decode(redis.call('HGET', p .. 'keys', id))
    if old.record.name ~= name then
      redis.call('HDEL', p .. 'keys:names', old.record.name)
    end
  end
  local v = redis.call('INCR', p .. 'keys:v')
  redis.call('HSET', p .. 'keys', id, entry)
  redis.call('HSET', p .. 'keys:ver', id, v)
  redis.call('HSET', p .. 'keys:names', name, id)
  redis.call('ZADD', p .. 'keys:log', v, id)
  return {1, v}
end

-- The entries changed after version `since`, oldest first, at most `limit`:
-- {counter, id, version, entry, id, version, entry, …}.
local function key_changes_v1(keys, args)
  local p, since, limit = args[1], args[2], tonumber(args[3])
  local out = {tonumber(redis.call('GET', p .. 'keys:v') or '0')}
  local ids = redis.call('ZRANGE', p .. 'keys:log', '(' .. since, '+inf', 'BYSCORE', 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local entry = redis.call('HGET', p .. 'keys', id)
    if entry then
      out[#out + 1] = id
      out[#out + 1] = tonumber(redis.call('HGET', p .. 'keys:ver', id) or '0')
      out[#out + 1] = entry
    end
  end
  return out
end

-- A key by id or name: {version, entry}, or {} when there is none.
local function key_get_v1(keys, args)
  local p, which = args[1], args[2]
  local id = which
  local entry = redis.call('HGET', p .. 'keys', id)
  if not entry then
    id = redis.call('HGET', p .. 'keys:names', which)
    if not id then
      return {}
    end
    entry = redis.call('HGET', p .. 'keys', id)
    if not entry then
      return {}
    end
  end
  return {tonumber(redis.call('HGET', p .. 'keys:ver', id) or '0'), entry}
end

-- Limits. Each rate of a key is a token bucket in Redis:
--   P rl:<key id>:<rpm|tpm>  hash {b = balance, t = last refill (ms)}
-- with capacity and refill both the limit per minute (a burst of the whole
-- limit, then a steady rate), the same contract as one instance's GCRA.
-- Instances borrow slices of it and spend them locally; what they do not
-- spend goes back. The balance may go below zero when an instance pays for
-- tokens used beyond what it borrowed (a reservation that ran over): the
-- debt is then refilled like any other spending.
--   P cc:<key id>  hash {instance id = concurrency slots it holds}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether instance `who` has beaten its heartbeat within `timeout` ms of `now`.
local function alive(p, who, now, timeout)
  local beat = redis.call('HGET', p .. 'instances', who)
  if not beat then
    return false
  end
  local ok, j = pcall(cjson.decode, beat)
  return ok and j.seen_ms ~= nil and now - j.seen_ms <= timeout
end

local function bucket(p, key, kind, limit)
  local k = p .. 'rl:' .. key .. ':' .. kind
  local d = redis.call('HMGET', k, 'b', 't')
  local now = now_ms()
  local b = tonumber(d[1]) or limit
  local t = tonumber(d[2]) or now
  if now > t then
    b = math.min(limit, b + (now - t) * limit / 60000)
  end
  return k, b, now
end

local function store(k, b, now)
  redis.call('HSET', k, 'b', tostring(b), 't', now)
  redis.call('PEXPIRE', k, 120000)
end

-- Borrows up to `want` units of a key's rate: {granted, whole units left,
-- ms until the next whole unit when none is left}.
local function borrow_v1(keys, args)
  local p, key, kind, want, limit = args[1], args[2], args[3], tonumber(args[4]), tonumber(args[5])
  local k, b, now = bucket(p, key, kind, limit)
  local g = math.max(0, math.min(want, math.floor(b)))
  b = b - g
  store(k, b, now)
  local wait = 0
  if b < 1 then
    wait = math.ceil((1 - b) * 60000 / limit)
  end
  return {g, math.floor(b), wait}
end

-- Gives back `amount` unspent units (capped at the limit), or charges a
-- negative amount (units spent beyond those borrowed): the balance after.
local function give_back_v1(keys, args)
  local p, key, kind, amount, limit = args[1], args[2], args[3], tonumber(args[4]), tonumber(args[5])
  local k, b, now = bucket(p, key, kind, limit)
  b = math.min(limit, b + amount)
  store(k, b, now)
  return math.floor(b)
end

-- Sets the concurrency slots instance `inst` holds for a key to at most
-- `want`, within `max` for the cluster; the slots of instances whose
-- heartbeat is older than `timeout` ms are taken back. Returns what it holds.
local function slots_v1(keys, args)
  local p, key, inst, want, max, timeout = args[1], args[2], args[3], tonumber(args[4]), tonumber(args[5]), tonumber(args[6])
  local h = p .. 'cc:' .. key
  local now = now_ms()
  local held = redis.call('HGETALL', h)
  local others = 0
  for i = 1, #held, 2 do
    local who, n = held[i], tonumber(held[i + 1])
    if who ~= inst then
      if alive(p, who, now, timeout) then
        others = others + n
      else
        redis.call('HDEL', h, who)
      end
    end
  end
  local mine = math.max(0, math.min(want, max - others))
  if mine > 0 then
    redis.call('HSET', h, inst, mine)
    redis.call('PEXPIRE', h, 3600000)
  else
    redis.call('HDEL', h, inst)
  end
  return mine
end

-- A host's slots across the cluster (`--upstream-max-concurrent` and
-- `--upstream-reserve-interactive` of one Ollama host, shared by every
-- instance in front of it):
--   P hs:<host>  hash  instance -> {s = shared slots held, r = reserved
--                slots held, q = {waiting by lane}, w = {oldest wait by
--                lane, ms since the epoch; 0: none}, m = {model = in flight},
--                i = {model = 1: an interactive key used it lately},
--                x = the model it is making room by (a swap), if any,
--                u = {model = 1: it unloaded it lately}}
-- An instance says what it holds now (`keep_s`, `keep_r`: never taken from
-- it; it lowers them itself before it says so), what waits on it by lane
-- and since when, its generations in flight by model, and how many slots
-- it would like in all (`target`: beyond those, a little spare so that a
-- busy instance need not ask for every request). It keeps what it holds,
-- plus free slots for its waiting requests, lane by lane, as long as no
-- other live instance has a request waiting in a better lane (or in the
-- same lane, longer): so a freed slot goes to the cluster's most urgent
-- request, whichever instance holds it; spare slots only while no other
-- instance waits. Reserved slots go to interactive requests only. Instances
-- whose heartbeat is older than `timeout` ms are forgotten (their slots
-- come back). The instance that changes the host's models (makes room,
-- loads one) holds the change token (P hc:<host>) meanwhile: one instance
-- at a time, so no two act on one picture (`change`: it wants or holds it;
-- a holder whose heartbeat stopped loses it). Replies {shared held,
-- reserved held, JSON of the others'
-- {f = in flight by model, i = models interactive keys used lately,
-- x = models they are making room by, u = models they unloaded lately},
-- 1 if it holds the change token}.
local function host_slots_v1(keys, args)
  local p, host, inst = args[1], args[2], args[3]
  local max, reserve, timeout = tonumber(args[4]), tonumber(args[5]), tonumber(args[6])
  local keep_s, keep_r = tonumber(args[7]), tonumber(args[8])
  local q = {tonumber(args[9]), tonumber(args[10]), tonumber(args[11])}
  local w = {tonumber(args[12]), tonumber(args[13]), tonumber(args[14])}
  local models, target, recent, swap, gone = args[15], tonumber(args[16]), args[17], args[18], args[19]
  local change = args[20] == '1'
  local h = p .. 'hs:' .. host
  local now = now_ms()
  local all = redis.call('HGETALL', h)
  local used_s, used_r = 0, 0
  local others = {}
  local in_flight, interactive, swaps, unloaded = {}, {}, {}, {}
  for i = 1, #all, 2 do
    local who = all[i]
    if who ~= inst then
      local ok, o = pcall(cjson.decode, all[i + 1])
      if ok and alive(p, who, now, timeout) then
        used_s = used_s + (o.s or 0)
        used_r = used_r + (o.r or 0)
        others[#others + 1] = o
        for m, n in pairs(o.m or {}) do
          in_flight[m] = (in_flight[m] or 0) + n
        end
        for m, _ in pairs(o.i or {}) do
          interactive[m] = 1
        end
        if o.x and o.x ~= '' then
          swaps[o.x] = 1
        end
        for m, _ in pairs(o.u or {}) do
          unloaded[m] = 1
        end
      else
        redis.call('HDEL', h, who)
      end
    end
  end
  -- Whether another instance's waiting request goes before ours in `lane`.
  local function behind(lane)
    for _, o in ipairs(others) do
      local oq, ow = o.q or {}, o.w or {}
      for b = 1, lane do
        if (oq[b] or 0) > 0 and (b < lane or (ow[b] or 0) < w[lane]) then
          return true
        end
      end
    end
    return false
  end
  local mine_s, mine_r = keep_s, keep_r
  local free_s = math.max(0, max - reserve - used_s - mine_s)
  local free_r = math.max(0, reserve - used_r - mine_r)
  for lane = 1, 3 do
    if q[lane] > 0 and (free_s > 0 or (lane == 1 and free_r > 0)) then
      if behind(lane) then
        break
      end
      while q[lane] > 0 do
        if lane == 1 and free_r > 0 then
          free_r = free_r - 1
          mine_r = mine_r + 1
        elseif free_s > 0 then
          free_s = free_s - 1
          mine_s = mine_s + 1
        else
          break
        end
        q[lane] = q[lane] - 1
      end
    end
  end
  -- Spare slots, while nobody else waits.
  local others_wait = false
  for _, o in ipairs(others) do
    local oq = o.q or {}
    if (oq[1] or 0) + (oq[2] or 0) + (oq[3] or 0) > 0 then
      others_wait = true
    end
  end
  if not others_wait and mine_s + mine_r < target then
    mine_s = mine_s + math.min(free_s, target - mine_s - mine_r)
  end
  local function table_of(json)
    local ok, t = pcall(cjson.decode, json)
    return ok and t or {}
  end
  local m, i, u = table_of(models), table_of(recent), table_of(gone)
  if mine_s + mine_r + q[1] + q[2] + q[3] > 0 or next(m) ~= nil or next(i) ~= nil or swap ~= '' or next(u) ~= nil then
    redis.call('HSET', h, inst, cjson.encode({s = mine_s, r = mine_r, q = q, w = w, m = m, i = i, x = swap, u = u}))
    redis.call('PEXPIRE', h, 3600000)
  else
    redis.call('HDEL', h, inst)
  end
  local ck = p .. 'hc:' .. host
  local holder = redis.call('GET', ck)
  if holder and holder ~= inst and not alive(p, holder, now, timeout) then
    redis.call('DEL', ck)
    holder = false
  end
  local token = 0
  if change then
    if not holder or holder == inst then
      redis.call('SET', ck, inst, 'PX', 3600000)
      token = 1
    end
  elseif holder == inst then
    redis.call('DEL', ck)
  end
  return {mine_s, mine_r, cjson.encode({f = in_flight, i = interactive, x = swaps, u = unloaded}), token}
end

-- Usage. Each instance's store pushes what it committed, in numbered
-- batches; a batch is added once (a retried push is a no-op):
--   P usage:seen             hash  store id -> last batch added
--   P usage:days             set   the days with usage
--   P usage:<day>            hash  key \t model \t n -> counter n (1..9) of the rollup
--   P usage:<day>:<store>    hash  the same, one store's part
--   P qt:<day|month>[:<store>] hash key id -> tokens (quotas read these)
local function usage_add_v1(keys, args)
  local p, store, seq, rows = args[1], args[2], tonumber(args[3]), args[4]
  local last = tonumber(redis.call('HGET', p .. 'usage:seen', store) or '0')
  if seq <= last then
    return 0
  end
  for _, r in ipairs(cjson.decode(rows)) do
    local key, model, day, f = r[1], r[2], r[3], r[4]
    local field = key .. '\t' .. model .. '\t'
    redis.call('SADD', p .. 'usage:days', day)
    for _, h in ipairs({p .. 'usage:' .. day, p .. 'usage:' .. day .. ':' .. store}) do
      for i = 1, 9 do
        if i == 8 then
          local cur = tonumber(redis.call('HGET', h, field .. i) or '0')
          if f[i] > cur then
            redis.call('HSET', h, field .. i, f[i])
          end
        elseif f[i] ~= 0 then
          redis.call('HINCRBY', h, field .. i, f[i])
        end
      end
    end
    local tokens = f[5] + f[6]
    if tokens > 0 then
      local month = string.sub(day, 1, 7)
      for _, period in ipairs({day, month}) do
        redis.call('HINCRBY', p .. 'qt:' .. period, key, tokens)
        redis.call('HINCRBY', p .. 'qt:' .. period .. ':' .. store, key, tokens)
      end
    end
  end
  redis.call('HSET', p .. 'usage:seen', store, seq)
  return 1
end

-- Stored responses (the Responses API's), shared by the cluster and
-- bounded like one store: each record expires with the response, and past
-- the byte bound the key holding the most loses its records closest to
-- expiry first, a few per call.
--   P resp:<id>        string  the record (expires with it)
--   P resp:idx:<key>   zset    the key's response ids by expiry (ms)
--   P resp:size        hash    response id -> its size
--   P resp:owner       hash    response id -> the key id that made it
--   P resp:shares      zset    key id by the bytes its records take
--   P resp:total       the bytes of every record
local function resp_remove(p, id, key)
  local size = tonumber(redis.call('HGET', p .. 'resp:size', id) or '0')
  redis.call('DEL', p .. 'resp:' .. id)
  redis.call('HDEL', p .. 'resp:size', id)
  redis.call('HDEL', p .. 'resp:owner', id)
  redis.call('ZREM', p .. 'resp:idx:' .. key, id)
  if redis.call('ZINCRBY', p .. 'resp:shares', -size, key) + 0 <= 0 then
    redis.call('ZREM', p .. 'resp:shares', key)
  end
  redis.call('DECRBY', p .. 'resp:total', size)
  return size
end

-- Evicts records while the total is over `max`, `batch` at most: the
-- records evicted and the total after.
local function resp_evict(p, max, batch)
  local total = tonumber(redis.call('GET', p .. 'resp:total') or '0')
  local n = 0
  while total > max and n < batch do
    local top = redis.call('ZRANGE', p .. 'resp:shares', -1, -1)
    if #top == 0 then
      break
    end
    local oldest = redis.call('ZRANGE', p .. 'resp:idx:' .. top[1], 0, 0)
    if #oldest == 0 then
      redis.call('ZREM', p .. 'resp:shares', top[1])
    else
      total = total - resp_remove(p, oldest[1], top[1])
      n = n + 1
    end
  end
  return {n, total}
end

-- Keeps a record of key `key` under `id` until `expires` (ms), replacing
-- one with its id, then evicts past `max` (a batch): {evicted, total}.
local function resp_put_v1(keys, args)
  local p, id, key, expires, record, max, batch =
    args[1], args[2], args[3], tonumber(args[4]), args[5], tonumber(args[6]), tonumber(args[7])
  local old = redis.call('HGET', p .. 'resp:owner', id)
  if old then
    resp_remove(p, id, old)
  end
  redis.call('SET', p .. 'resp:' .. id, record, 'PXAT', expires)
  redis.call('HSET', p .. 'resp:size', id, #record)
  redis.call('HSET', p .. 'resp:owner', id, key)
  redis.call('ZADD', p .. 'resp:idx:' .. key, expires, id)
  redis.call('ZINCRBY', p .. 'resp:shares', #record, key)
  redis.call('INCRBY', p .. 'resp:total', #record)
  return resp_evict(p, max, batch)
end

-- Evicts past `max`, a batch: {evicted, total}.
local function resp_evict_v1(keys, args)
  return resp_evict(args[1], tonumber(args[2]), tonumber(args[3]))
end

-- Deletes response `id` if key `key` made it: 1 if it did.
local function resp_delete_v1(keys, args)
  local p, id, key = args[1], args[2], args[3]
  if redis.call('HGET', p .. 'resp:owner', id) ~= key then
    return 0
  end
  resp_remove(p, id, key)
  return 1
end

-- Forgets the records expired by `now` (ms), `batch` at most: how many.
local function resp_prune_v1(keys, args)
  local p, now, batch = args[1], tonumber(args[2]), tonumber(args[3])
  local n = 0
  for _, key in ipairs(redis.call('ZRANGE', p .. 'resp:shares', 0, -1)) do
    for _, id in ipairs(redis.call('ZRANGE', p .. 'resp:idx:' .. key, '-inf', now, 'BYSCORE', 'LIMIT', 0, batch - n)) do
      resp_remove(p, id, key)
      n = n + 1
    end
    if n >= batch then
      break
    end
  end
  return n
end

redis.register_function('aigw_resp_put_v1', resp_put_v1)
redis.register_function('aigw_resp_evict_v1', resp_evict_v1)
redis.register_function('aigw_resp_delete_v1', resp_delete_v1)
redis.register_function('aigw_resp_prune_v1', resp_prune_v1)
redis.register_function('aigw_usage_add_v1', usage_add_v1)
redis.register_function('aigw_borrow_v1', borrow_v1)
redis.register_function('aigw_give_back_v1', give_back_v1)
redis.register_function('aigw_slots_v1', slots_v1)
redis.register_function('aigw_host_slots_v1', host_slots_v1)
redis.register_function('aigw_key_put_v1', key_put_v1)
redis.register_function{function_name = 'aigw_key_changes_v1', callback = key_changes_v1, flags = {'no-writes'}}
redis.register_function{function_name = 'aigw_key_get_v1', callback = key_get_v1, flags = {'no-writes'}}
