-- Deletes every live session of a user, optionally sparing one.
-- KEYS[1] the user's index   KEYS[2] the user's order   KEYS[3] the user's groups
-- KEYS[4] the user's key prefix ("<prefix>:{<tag>}:"): session keys are
--         derived from it and the index members, in the same slot.
-- KEYS[5] the bucket's event stream
-- ARGV[1] id of the session to keep ('' for none)
-- ARGV[2] event stream cap (0: no events)   ARGV[3] user id
-- Returns {number deleted}.
local index, order, groups_key, key_prefix, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local keep = ARGV[1]
prune(index, order, groups_key, now_ms())
local kept = keep ~= '' and redis.call('ZSCORE', index, keep)
local kept_created = kept and redis.call('ZSCORE', order, keep)
local kept_groups = kept and redis.call('HGET', groups_key, keep)
local members = redis.call('ZRANGE', index, 0, -1)
-- After pruning, index members are live sessions, unless a key was removed
-- behind sessionkit's back: a batch whose keys all exist (the rule) is
-- deleted at once; otherwise key by key, so the count and the event name
-- exactly the sessions this call ended.
local gone = {}
local batch = {}
local function flush()
  if #batch == 0 then
    return
  end
  local keys = session_keys(key_prefix, batch)
  if redis.call('EXISTS', unpack(keys)) == #keys then
    redis.call('DEL', unpack(keys))
    for _, id in ipairs(batch) do
      gone[#gone + 1] = id
    end
  else
    for i, key in ipairs(keys) do
      if redis.call('DEL', key) == 1 then
        gone[#gone + 1] = batch[i]
      end
    end
  end
  batch = {}
end
for _, id in ipairs(members) do
  if id ~= keep then
    batch[#batch + 1] = id
    if #batch == BATCH then
      flush()
    end
  end
end
flush()
redis.call('DEL', index, order, groups_key)
if kept then
  redis.call('ZADD', index, kept, keep)
  if kept_created then
    redis.call('ZADD', order, kept_created, keep)
  end
  if kept_groups then
    redis.call('HSET', groups_key, keep, kept_groups)
  end
  refresh_ttl(index, order, groups_key)
end
emit(stream, ARGV[2], 'all_deleted', ARGV[3], gone, '[]')
return {#gone}
