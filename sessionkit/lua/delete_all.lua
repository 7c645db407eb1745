-- Deletes every live session of a user, optionally sparing one.
-- KEYS[1] the user's index key
-- KEYS[2] the user's key prefix ("<prefix>:{<tag>}:"): session keys are
--         derived from it and the index members, in the same slot.
-- ARGV[1] id of the session to keep ('' for none)
-- Returns {number deleted, deleted id, ...}.
local index, key_prefix = KEYS[1], KEYS[2]
local keep = ARGV[1]
prune(index, now_ms())
local members = redis.call('ZRANGE', index, 0, -1)
local out = {0}
for _, id in ipairs(members) do
  if id ~= keep then
    if redis.call('DEL', key_prefix .. 's:' .. id) == 1 then
      out[#out + 1] = id
    end
    redis.call('ZREM', index, id)
  end
end
out[1] = #out - 1
refresh_index_ttl(index)
return out
