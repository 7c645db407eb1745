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
-- Below the cap, with the event counter trusted (almost every create), it
-- calls no helper: the helpers are made only on the other paths, by
-- helpers() (defining them all cost every create a tenth of its work).
local skey, index, order, groups_key, key_prefix, stream =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id = ARGV[1]
-- Server time, read once, as clock() reads it (its ms and the 16 µs digits
-- a value stores), and handed to the helpers: they see the same time.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local created = t[1] .. string.sub('00000' .. t[2], -6)
local expires = now + ARGV[7]
local expires13 = string.format('%013d', expires)
local at = expires13  -- when the key dies
if ARGV[8] ~= '0' and now + ARGV[8] < expires then  -- an idle timeout, sooner
  at = string.format('%013d', now + ARGV[8])
end
-- The ms of `now` are the first 13 of its 16 µs digits.
local value = LAYOUT .. created .. expires13 .. string.sub(created, 1, 13) .. ARGV[2] .. ARGV[3]

-- Written only if the token is new (NX); GET gives what a first attempt of
-- a retried create wrote, and then nothing is written.
local existing = redis.call('SET', skey, value, 'NX', 'PXAT', at, 'GET')
if existing then
  if string.byte(existing) ~= LAYOUT_BYTE then
    return redis.error_reply('SESSIONKIT_LAYOUT a session of another layout holds this token')
  end
  return existing .. (redis.call('HGET', groups_key, id) or NO_GROUPS)
end

-- Expired members only count toward the cap, so the index is pruned when
-- the count reaches it: below the cap a create reads nothing more.
local cap = ARGV[9] + 0
local count = redis.call('ZCARD', index)
local h, evicted  -- the helpers, and the sessions evicted: at the cap only
if count >= cap then
  h = helpers(now, created)
  h.prune(index, order, groups_key, now)
  local excess = redis.call('ZCARD', index) - cap + 1
  if excess > 0 then
    evicted = redis.call('ZRANGE', order, 0, excess - 1)
    h.delete_sessions(key_prefix, evicted)
    h.unindex(index, order, groups_key, evicted)
  end
end

local groups = ARGV[6]
redis.call('ZADD', index, at, id)
redis.call('ZADD', order, created, id)
redis.call('HSET', groups_key, id, groups)
if count >= cap then
  h.refresh_ttl(index, order, groups_key)  -- what remains may die sooner
elseif count == 0 then  -- the user's keys are new
  redis.call('PEXPIREAT', index, at)
  redis.call('PEXPIREAT', order, at)
  redis.call('PEXPIREAT', groups_key, at)
else  -- they live as long as the longest-lived session
  redis.call('PEXPIREAT', index, at, 'GT')
  redis.call('PEXPIREAT', order, at, 'GT')
  redis.call('PEXPIREAT', groups_key, at, 'GT')
end

local maxlen = ARGV[10]
if maxlen ~= '0' then
  if evicted then
    h.emit(stream, maxlen, 'evicted', ARGV[4], evicted, '[]')
  end
  -- The created event, as emit() writes one (see _lib.lua): numbered by
  -- the counter, unless it is new or its number is refused.
  local n = redis.call('INCRBY', stream .. ':n', 1)
  if n == 1 or type(redis.pcall('XADD', stream, 'NOMKSTREAM', 'MAXLEN', '~', maxlen,
      string.format('%d-%d', now, n), 'type', 'created', 'user', ARGV[4], 'sessions', id,
      'groups', ARGV[5])) ~= 'string' then
    (h or helpers(now, created)).append_renumbered(stream, maxlen, now, 1, 'created', ARGV[4], id, ARGV[5])
  end
end

if not evicted or #evicted == 0 then
  return value .. groups
end
local out = {value, groups}
for _, old in ipairs(evicted) do
  out[#out + 1] = old
end
return out
