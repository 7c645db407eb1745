-- Deletes one session if it belongs to the given user.
-- KEYS[1] session key   KEYS[2] the user's index key
-- ARGV[1] user digest   ARGV[2] session id
-- Returns 1 if the session was deleted, 0 if there is none, -1 if it is
-- another user's (nothing is deleted then).
local skey, index = KEYS[1], KEYS[2]
local v = redis.call('GET', skey)
if not v then
  return 0
end
if owner(v) ~= ARGV[1] then
  return -1
end
redis.call('DEL', skey)
redis.call('ZREM', index, ARGV[2])
refresh_index_ttl(index)
return 1
