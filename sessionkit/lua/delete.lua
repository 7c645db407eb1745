-- Deletes one session if it belongs to the given user.
-- KEYS[1] session key   KEYS[2] the user's index key
-- KEYS[3] the bucket's event stream
-- ARGV[1] user digest   ARGV[2] session id
-- ARGV[3] event stream cap (0: no events)   ARGV[4] user id
-- Returns 1 if the session was deleted, 0 if there is none, -1 if it is
-- another user's (nothing is deleted then).
local skey, index, stream = KEYS[1], KEYS[2], KEYS[3]
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
emit(stream, ARGV[3], 'deleted', ARGV[4], {ARGV[2]}, '[]')
return 1
