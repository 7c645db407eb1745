-- Lists a user's live sessions, pruning the index as it goes; sessions
-- whose key is gone (deleted behind sessionkit's back) leave the user's
-- keys.
-- KEYS[1] the user's index   KEYS[2] the user's order   KEYS[3] the user's groups
-- KEYS[4] the user's key prefix ("<prefix>:{<tag>}:"): session keys are
--         derived from it and the session ids, in the same slot.
-- Returns {pairs, values, values, ...}: `pairs` is the groups hash as
-- HGETALL gives it (id, groups entry, id, entry, ...; in no particular
-- order) and each `values` the stored values of the next BATCH of those
-- sessions, in the same order, false where the key is gone. A value of
-- another layout is passed back as it is, for the caller to leave out:
-- reading it changes nothing. The tables go back as they came from the
-- server: the reply is built in C, element by element, which costs the
-- server a third (Valkey 8.1) to a half (Redis 7.0) of joining them into
-- a few long strings in Lua first.
local index, order, groups_key, key_prefix = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
prune(index, order, groups_key, now_ms())
-- After pruning, the groups hash holds exactly the user's live sessions.
local flat = redis.call('HGETALL', groups_key)
local out, stale = {flat}, {}
for i = 1, #flat, 2 * BATCH do
  local last = math.min(i + 2 * BATCH - 1, #flat)
  local values = redis.call('MGET', unpack(session_keys(key_prefix, flat, i, last, 2)))
  out[#out + 1] = values
  for j = 1, #values do
    if not values[j] then
      stale[#stale + 1] = flat[i + 2 * j - 2]
    end
  end
end
if #stale > 0 then
  unindex(index, order, groups_key, stale)
  refresh_ttl(index, order, groups_key)
end
return out
