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

redis.register_function('aigw_key_put_v1', key_put_v1)
redis.register_function{function_name = 'aigw_key_changes_v1', callback = key_changes_v1, flags = {'no-writes'}}
redis.register_function{function_name = 'aigw_key_get_v1', callback = key_get_v1, flags = {'no-writes'}}
