-- Adds or removes access groups on every live session of a user, all in
-- one atomic step: no reader sees some sessions changed and others not. An
-- add that would give any session more than the per-session cap of groups
-- changes nothing at all. Reads and writes only the user's groups hash, in
-- one read and batched writes: the session values are not touched.
-- KEYS[1] the user's index   KEYS[2] the user's order   KEYS[3] the user's groups
-- KEYS[4] the bucket's event stream
-- ARGV[1] 'add' or 'remove'   ARGV[2] most groups on one session
-- ARGV[3] event stream cap (0: no events)   ARGV[4] user id
-- ARGV[5] the access groups as a JSON array
-- ARGV[6..] access groups (distinct)
-- Returns {number of sessions changed}, or {-1} if the add was refused.
local FIRST = 6
local index, order, groups_key, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local adding = ARGV[1] == 'add'
local most = ARGV[2] + 0
local wanted, needles = {}, {}
for i = FIRST, #ARGV do
  wanted[#wanted + 1] = ARGV[i]
  needles[#needles + 1] = '\0' .. ARGV[i] .. '\0'
end

prune(index, order, groups_key, now_ms())
-- After pruning, the groups hash holds exactly the user's live sessions.
local flat = redis.call('HGETALL', groups_key)
-- First every new entry, then (if none is over the cap) every write.
local changed, writes, n = {}, {}, 0
local more = {}  -- reused for every session: the groups it lacks
for i = 1, #flat, 2 do
  local e = flat[i + 1]
  local new
  if adding then
    local m = 0
    for k = 1, #needles do
      if not string.find(e, needles[k], 1, true) then
        m = m + 1
        more[m] = wanted[k]
      end
    end
    if m > 0 then
      -- Each group takes at least two bytes, so a short entry cannot be
      -- near the cap; only a long one is counted.
      if (#e - 1) / 2 + m > most and count_groups(e) + m > most then
        return {-1}
      end
      new = e .. table.concat(more, '\0', 1, m) .. '\0'
    end
  else
    for k = 1, #needles do
      local at = string.find(e, needles[k], 1, true)
      if at then
        e = string.sub(e, 1, at) .. string.sub(e, at + #wanted[k] + 2)
        new = e
      end
    end
  end
  if new then
    n = n + 1
    changed[n] = flat[i]
    writes[2 * n - 1], writes[2 * n] = flat[i], new
  end
end
batched('HSET', groups_key, writes)
emit(stream, ARGV[3], adding and 'groups_added' or 'groups_removed', ARGV[4], changed, ARGV[5])
return {#changed}
