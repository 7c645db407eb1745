-- Creates one session and indexes it under its user; evicts the oldest
-- sessions first when the user is at max_sessions_per_user.
-- KEYS[1] session key   KEYS[2] the user's index key
-- KEYS[3] the user's key prefix ("<prefix>:{<tag>}:"): evicted sessions'
--         keys are derived from it, so they share the user's hash slot.
-- KEYS[4] the bucket's event stream
-- ARGV[1] session id   ARGV[2] user digest   ARGV[3] lifetime ms
-- ARGV[4] idle timeout ms (0: none)   ARGV[5] max sessions (0: no limit)
-- ARGV[6] opaque JSON body   ARGV[7] event stream cap (0: no events)
-- ARGV[8] user id   ARGV[9] the access groups as a JSON array
-- ARGV[10..] access groups
-- Returns {value, evicted id, ...}. A retried create (same token) returns
-- the session the first attempt made and changes nothing.
local skey, index, key_prefix, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id = ARGV[1]
local now, now_us = clock()
prune(index, now)

local existing = redis.call('GET', skey)
if existing then
  return {existing}
end

local evicted = {}
local max_sessions = tonumber(ARGV[5])
if max_sessions > 0 then
  local ids, values = live_sessions(index, key_prefix)
  local excess = #ids - max_sessions + 1
  if excess > 0 then
    local by_age = {}
    for i, v in ipairs(values) do
      by_age[i] = {created_us(v), ids[i]}
    end
    table.sort(by_age, function(a, b)
      if a[1] ~= b[1] then return a[1] < b[1] end
      return a[2] < b[2]
    end)
    for i = 1, excess do
      local old = by_age[i][2]
      redis.call('DEL', key_prefix .. 's:' .. old)
      redis.call('ZREM', index, old)
      evicted[#evicted + 1] = old
    end
  end
end

local groups, seen = {}, {}
for i = 10, #ARGV do
  local g = ARGV[i]
  if not seen[g] then
    seen[g] = true
    groups[#groups + 1] = g
  end
end

local expires = now + tonumber(ARGV[3])
local idle = tonumber(ARGV[4])
local dies = expires
if idle > 0 and now + idle < expires then
  dies = now + idle
end
local body = ARGV[6]
local value = string.format('%016d', now_us) .. ms13(expires) .. ms13(now) .. ARGV[2]
  .. #body .. ':' .. body .. join_groups(groups)
redis.call('SET', skey, value, 'PXAT', ms13(dies))
redis.call('ZADD', index, ms13(dies), id)
refresh_index_ttl(index)
emit(stream, ARGV[7], 'evicted', ARGV[8], evicted, '[]')
emit(stream, ARGV[7], 'created', ARGV[8], {id}, ARGV[9])

local out = {value}
for _, old in ipairs(evicted) do
  out[#out + 1] = old
end
return out
