-- Deletes every live session of a user, optionally sparing one.
-- KEYS[1] the user's index   KEYS[2] the user's order   KEYS[3] the user's groups
-- KEYS[4] the user's key prefix ("<prefix>:{<tag>}:"): session keys are
--         derived from it and the session ids, in the same slot.
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
-- The ids from the groups hash, which names the same sessions as the
-- index: the server walks a hash faster than a sorted set's skip list (a
-- twelfth of this script's time at 1,000 sessions). If the two differ in size,
-- one was changed behind sessionkit's back (lost by hand, or evicted under
-- maxmemory): then every id either names goes, so that no live session
-- escapes a sign-out everywhere.
local members = redis.call('HKEYS', groups_key)
if #members ~= redis.call('ZCARD', index) then
  local named = {}
  for _, id in ipairs(members) do
    named[id] = true
  end
  for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    if not named[id] then
      members[#members + 1] = id
    end
  end
end
-- After pruning, these are live sessions, unless a session's key was removed
-- behind sessionkit's back (by hand, by maxmemory eviction): such a session
-- is not counted, but the event still names it among the sessions ended
-- (checking each key first would double the cost of the common case).
local gone = members
if kept then
  gone = {}
  for _, id in ipairs(members) do
    if id ~= keep then
      gone[#gone + 1] = id
    end
  end
end
local deleted = delete_sessions(key_prefix, gone)
redis.call('UNLINK', index, order, groups_key)  -- freed off the main thread
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
if deleted > 0 then
  emit(stream, ARGV[2], 'all_deleted', ARGV[3], gone, '[]')
end
return {deleted}
