-- Lists a user's live sessions, pruning the index as it goes; sessions
-- whose key is gone (deleted behind sessionkit's back) leave the user's
-- keys, and values of another layout are left alone and not returned.
-- KEYS[1] the user's index   KEYS[2] the user's order   KEYS[3] the user's groups
-- KEYS[4] the user's key prefix ("<prefix>:{<tag>}:"): session keys are
--         derived from it and the index members, in the same slot.
-- Returns {id, value, groups entry, id, value, groups entry, ...}.
local index, order, groups_key, key_prefix = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
prune(index, order, groups_key, now_ms())
local ids = redis.call('ZRANGE', index, 0, -1)
local out, stale = {}, {}
for i = 1, #ids, BATCH do
  local last = math.min(i + BATCH - 1, #ids)
  local values = redis.call('MGET', unpack(session_keys(key_prefix, ids, i, last)))
  local groups = redis.call('HMGET', groups_key, unpack(ids, i, last))
  for j = 1, #values do
    local v = values[j]
    if not v then
      stale[#stale + 1] = ids[i + j - 1]
    elseif ours(v) then
      out[#out + 1] = ids[i + j - 1]
      out[#out + 1] = v
      out[#out + 1] = groups[j] or '000\0'
    end
  end
end
if #stale > 0 then
  unindex(index, order, groups_key, stale)
  refresh_ttl(index, order, groups_key)
end
return out
