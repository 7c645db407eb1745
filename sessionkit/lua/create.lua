-- Creates one session and indexes it under its user; at the user's cap,
-- first evicts the oldest sessions (by creation time). Its work is the same
-- at any cap: only the sessions it evicts are read.
-- KEYS[1] session key   KEYS[2] the user's index   KEYS[3] the user's order
-- KEYS[4] the user's groups   KEYS[5] the user's key prefix
--         ("<prefix>:{<tag>}:"): evicted sessions' keys are derived from it,
--         so they share the user's hash slot.
-- KEYS[6] the bucket's event stream
-- ARGV[1] session id   ARGV[2] user digest   ARGV[3] opaque JSON body
-- ARGV[4] user id ('' with no events)
-- ARGV[5] the access groups as a JSON array ('' with no events)
-- ARGV[6] the session's groups entry, as the groups hash holds it (see
--         _lib.lua; the caller joins the distinct groups, at most the
--         per-session cap)
-- then the store's settings, the same on every call (packed once):
-- ARGV[7] lifetime ms   ARGV[8] idle timeout ms (0: none)
-- ARGV[9] max sessions per user (>= 1)   ARGV[10] event stream cap (0: no events)
-- Returns the value followed by its groups entry, as one string (as get.lua
-- does, and for the same reason), or, if it evicted sessions, the table
-- {value, groups entry, evicted id, ...}. A retried create (same token)
-- returns the session the first attempt made and changes nothing.
local skey, index, order, groups_key, key_prefix, stream =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id = ARGV[1]
local now, created = clock()
local expires = now + ARGV[7]
local expires13 = ms13(expires)
local at = expires13  -- when the key dies
if ARGV[8] ~= '0' and now + ARGV[8] < expires then  -- an idle timeout, sooner
  at = ms13(now + ARGV[8])
end
-- The ms of `now` are the first 13 of its 16 µs digits.
local value = LAYOUT .. created .. expires13 .. string.sub(created, 1, 13) .. ARGV[2] .. ARGV[3]

-- Written only if the token is new (NX); GET gives what a first attempt of
-- a retried create wrote, and then nothing is written.
local existing = redis.call('SET', skey, value, 'NX', 'PXAT', at, 'GET')
if existing then
  if not ours(existing) then
    return redis.error_reply('SESSIONKIT_LAYOUT a session of another layout holds this token')
  end
  return existing .. (redis.call('HGET', groups_key, id) or NO_GROUPS)
end

-- Expired members only count toward the cap, so the index is pruned when
-- the count reaches it: below the cap a create reads nothing more.
local cap = ARGV[9] + 0
local count = redis.call('ZCARD', index)
local evicted = {}
if count >= cap then
  prune(index, order, groups_key, now)
  local excess = redis.call('ZCARD', index) - cap + 1
  if excess > 0 then
    evicted = redis.call('ZRANGE', order, 0, excess - 1)
    batched('DEL', nil, session_keys(key_prefix, evicted))
    unindex(index, order, groups_key, evicted)
  end
end

local groups = ARGV[6]
redis.call('ZADD', index, at, id)
redis.call('ZADD', order, created, id)
redis.call('HSET', groups_key, id, groups)
if count >= cap then
  refresh_ttl(index, order, groups_key)  -- what remains may die sooner
elseif count == 0 then  -- the user's keys are new
  redis.call('PEXPIREAT', index, at)
  redis.call('PEXPIREAT', order, at)
  redis.call('PEXPIREAT', groups_key, at)
else  -- they live as long as the longest-lived session
  redis.call('PEXPIREAT', index, at, 'GT')
  redis.call('PEXPIREAT', order, at, 'GT')
  redis.call('PEXPIREAT', groups_key, at, 'GT')
end
emit(stream, ARGV[10], 'evicted', ARGV[4], evicted, '[]')
emit(stream, ARGV[10], 'created', ARGV[4], {id}, ARGV[5])

if #evicted == 0 then
  return value .. groups
end
local out = {value, groups}
for _, old in ipairs(evicted) do
  out[#out + 1] = old
end
return out
