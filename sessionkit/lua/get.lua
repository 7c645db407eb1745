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
-- Returns {value, groups entry}, or false (also for a value of another layout).
local skey = KEYS[1]
local v = redis.call('GET', skey)
if not v or not ours(v) then
  return false
end
if ARGV[1] ~= '' and owner(v) ~= ARGV[1] then
  return false
end
local index, order, groups_key = user_keys(KEYS[2], owner(v))
local groups = redis.call('HGET', groups_key, ARGV[2]) or NO_GROUPS

local now = now_ms()
local idle = tonumber(ARGV[3])
if idle > 0 and now - field_ms(v, LAST_ACTIVE_AT) >= tonumber(ARGV[5]) then
  local expires = field_ms(v, EXPIRES_AT)
  local dies = now + idle
  if expires < dies then
    dies = expires
  end
  redis.call('SETRANGE', skey, LAST_ACTIVE_AT - 1, ms13(now))
  redis.call('PEXPIREAT', skey, ms13(dies))
  redis.call('ZADD', index, 'XX', ms13(dies), ARGV[2])
  refresh_ttl(index, order, groups_key)
elseif idle == 0 and now - field_ms(v, LAST_ACTIVE_AT) >= tonumber(ARGV[4]) then
  redis.call('SETRANGE', skey, LAST_ACTIVE_AT - 1, ms13(now))
else
  return {v, groups}
end
return {string.sub(v, 1, LAST_ACTIVE_AT - 1) .. ms13(now) .. string.sub(v, LAST_ACTIVE_AT + 13),
  groups}
