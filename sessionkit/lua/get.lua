-- Reads one session by its key; used by get (user checked) and resolve
-- (token alone). Slides the idle timeout, or refreshes last-active at most
-- once per touch interval, in place.
-- KEYS[1] session key
-- KEYS[2] the user's key prefix ("<prefix>:{<tag>}:"): the user's keys are
--         derived from it and the stored user digest, in the same slot.
-- ARGV[1] user digest the session must belong to ('' for resolve)
-- ARGV[2] session id   ARGV[3] idle timeout ms (0: none)
-- ARGV[4] touch interval ms
-- ARGV[5] with an idle timeout, slide it only if the last slide is at least
--         this many ms old (0: on every read)
-- Returns the value followed by its groups entry, as one string (the first
-- NUL starts the entry: the value holds none), or false (also for a value
-- of another layout). One string, not a table: the server converts a
-- table reply field by field, a tenth of what this script cost it.
-- The most frequent call of all: it calls no helper (each one would cost
-- every call a closure) and does on the common path only what a read needs.
local skey = KEYS[1]
local v = redis.call('GET', skey)
if not v or string.byte(v) ~= LAYOUT_BYTE then
  return false
end
local digest = string.sub(v, DIGEST_FROM, DIGEST_TO)
if ARGV[1] ~= '' and digest ~= ARGV[1] then
  return false
end
local groups = redis.call('HGET', KEYS[2] .. 'g:' .. digest, ARGV[2]) or NO_GROUPS
-- Arithmetic converts the numbers held in strings, once each; tonumber
-- would parse each one twice (Lua 5.1), the dearest step of a read.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local since = now - string.sub(v, LAST_ACTIVE_AT, LAST_ACTIVE_AT + 12)
local idle = ARGV[3] ~= '0'
if idle and since < ARGV[5] + 0 or not idle and since < ARGV[4] + 0 then
  return v .. groups  -- nothing to write
end
local now13 = string.format('%013d', now)
redis.call('SETRANGE', skey, LAST_ACTIVE_AT - 1, now13)
if idle then
  local dies = math.min(string.sub(v, EXPIRES_AT, EXPIRES_AT + 12) + 0, now + ARGV[3])
  local at = string.format('%013d', dies)
  local index = KEYS[2] .. 'u:' .. digest
  redis.call('PEXPIREAT', skey, at)
  redis.call('ZADD', index, 'XX', at, ARGV[2])
  -- The user's keys live as long as the user's longest-lived session.
  local top = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')[2]
  if top then
    redis.call('PEXPIREAT', index, top)
    redis.call('PEXPIREAT', KEYS[2] .. 'c:' .. digest, top)
    redis.call('PEXPIREAT', KEYS[2] .. 'g:' .. digest, top)
  end
end
return string.sub(v, 1, LAST_ACTIVE_AT - 1) .. now13 .. string.sub(v, LAST_ACTIVE_AT + 13) .. groups
