-- Creates one session and indexes it under its user; at the user's cap,
-- first evicts the oldest sessions (by creation time). Its work is the same
-- at any cap: only the sessions it evicts are read.
-- KEYS[1] session key   KEYS[2] the user's index   KEYS[3] the user's order
-- KEYS[4] the user's groups   KEYS[5] the user's key prefix
--         ("<prefix>:{<tag>}:"): evicted sessions' keys are derived from it,
--         so they share the user's hash slot.
-- KEYS[6] the bucket's event stream
-- ARGV[1] session id   ARGV[2] user digest   ARGV[3] lifetime ms
-- ARGV[4] idle timeout ms (0: none)   ARGV[5] max sessions per user (>= 1)
-- ARGV[6] opaque JSON body   ARGV[7] event stream cap (0: no events)
-- ARGV[8] user id   ARGV[9] the access groups as a JSON array
-- ARGV[10..] access groups (distinct, at most the per-session cap)
-- Returns {value, groups entry, evicted id, ...}. A retried create (same
-- token) returns the session the first attempt made and changes nothing.
local skey, index, order, groups_key, key_prefix, stream =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id = ARGV[1]
local now, now_us = clock()
prune(index, order, groups_key, now)

local existing = redis.call('GET', skey)
if existing then
  if not ours(existing) then
    return redis.error_reply('SESSIONKIT_LAYOUT a session of another layout holds this token')
  end
  return {existing, redis.call('HGET', groups_key, id) or NO_GROUPS}
end

local evicted = {}
local excess = redis.call('ZCARD', index) - tonumber(ARGV[5]) + 1
if excess > 0 then
  evicted = redis.call('ZRANGE', order, 0, excess - 1)
  batched('DEL', nil, session_keys(key_prefix, evicted))
  unindex(index, order, groups_key, evicted)
end

local expires = now + tonumber(ARGV[3])
local idle = tonumber(ARGV[4])
local dies = expires
if idle > 0 and now + idle < expires then
  dies = now + idle
end
local value = LAYOUT .. string.format('%016d', now_us) .. ms13(expires) .. ms13(now) .. ARGV[2]
  .. ARGV[6]
local groups = join_groups({unpack(ARGV, 10)})
redis.call('SET', skey, value, 'PXAT', ms13(dies))
redis.call('ZADD', index, ms13(dies), id)
redis.call('ZADD', order, string.format('%016d', now_us), id)
redis.call('HSET', groups_key, id, groups)
refresh_ttl(index, order, groups_key)
emit(stream, ARGV[7], 'evicted', ARGV[8], evicted, '[]')
emit(stream, ARGV[7], 'created', ARGV[8], {id}, ARGV[9])

local out = {value, groups}
for _, old in ipairs(evicted) do
  out[#out + 1] = old
end
return out
