-- Deletes every live session of a user, optionally sparing one.
-- KEYS[1] the user's index key
-- KEYS[2] the user's key prefix ("<prefix>:{<tag>}:"): session keys are
--         derived from it and the index members, in the same slot.
-- KEYS[3] the bucket's event stream
-- ARGV[1] id of the session to keep ('' for none)
-- ARGV[2] event stream cap (0: no events)   ARGV[3] user id
-- Returns {number deleted}.
local index, key_prefix, stream = KEYS[1], KEYS[2], KEYS[3]
local keep, events = ARGV[1], ARGV[2] ~= '0'
prune(index, now_ms())
local kept_score = keep ~= '' and redis.call('ZSCORE', index, keep) or false
local members = redis.call('ZRANGE', index, 0, -1)
-- After pruning, index members are live sessions; DEL counts exactly those
-- still there. Without events, keys go in batches that keep Lua's stack
-- small; with events, one by one, so the event names exactly those deleted.
local batch, gone = {}, {}
local deleted = 0
local function flush()
  if #batch > 0 then
    deleted = deleted + redis.call('DEL', unpack(batch))
    batch = {}
  end
end
for _, id in ipairs(members) do
  if id ~= keep then
    if events then
      if redis.call('DEL', key_prefix .. 's:' .. id) == 1 then
        gone[#gone + 1] = id
      end
    else
      batch[#batch + 1] = key_prefix .. 's:' .. id
      if #batch == 500 then
        flush()
      end
    end
  end
end
flush()
redis.call('DEL', index)
if kept_score then
  redis.call('ZADD', index, kept_score, keep)
  redis.call('PEXPIREAT', index, kept_score)
end
emit(stream, ARGV[2], 'all_deleted', ARGV[3], gone, '[]')
return {deleted + #gone}
