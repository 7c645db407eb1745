-- Deletes one session if it belongs to the given user.
-- KEYS[1] session key   KEYS[2] the user's index   KEYS[3] the user's order
-- KEYS[4] the user's groups   KEYS[5] the bucket's event stream
-- ARGV[1] user digest   ARGV[2] session id
-- ARGV[3] event stream cap (0: no events)   ARGV[4] user id
-- Returns 1 if the session was deleted, 0 if there is none, -1 if it is
-- another user's (nothing is deleted then).
local skey, index, order, groups_key, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local v = redis.call('GET', skey)
if not v then
  return 0
end
-- A value of another layout still belongs to this user if it is in the
-- user's index: signing out must end it too.
if ours(v) and owner(v) ~= ARGV[1] or not ours(v) and not redis.call('ZSCORE', index, ARGV[2]) then
  return -1
end
redis.call('DEL', skey)
unindex(index, order, groups_key, {ARGV[2]})
refresh_ttl(index, order, groups_key)
emit(stream, ARGV[3], 'deleted', ARGV[4], {ARGV[2]}, '[]')
return 1
