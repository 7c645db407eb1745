-- Deletes every live session of a user, optionally sparing one.
-- KEYS[1] the user's index key
-- KEYS[2] the user's key prefix ("<prefix>:{<tag>}:"): session keys are
--         derived from it and the index members, in the same slot.
-- ARGV[1] id of the session to keep ('' for none)
-- Returns {number deleted}.
local index, key_prefix = KEYS[1], KEYS[2]
local keep = ARGV[1]
prune(index, now_ms())
local kept_score = keep ~= '' and redis.call('ZSCORE', index, keep) or false
local members = redis.call('ZRANGE', index, 0, -1)
-- After pruning, index members are live sessions; DEL counts exactly those
-- still there, in batches that keep Lua's stack small.
local batch = {}
local deleted = 0
local function flush()
  if #batch > 0 then
    deleted = deleted + redis.call('DEL', unpack(batch))
    batch = {}
  end
end
for _, id in ipairs(members) do
  if id ~= keep then
    batch[#batch + 1] = key_prefix .. 's:' .. id
    if #batch == 500 then
      flush()
    end
  end
end
flush()
redis.call('DEL', index)
if kept_score then
  redis.call('ZADD', index, kept_score, keep)
  redis.call('PEXPIREAT', index, kept_score)
end
return {deleted}
