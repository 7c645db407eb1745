-- Adds or removes access groups on every live session of a user, all in
-- one atomic step: no reader sees some sessions changed and others not. An
-- add that would give any session more than the per-session cap of groups
-- changes nothing at all.
-- KEYS[1] the user's index   KEYS[2] the user's order
-- KEYS[3] the user's key prefix ("<prefix>:{<tag>}:"): session keys are
--         derived from it and the index members, in the same slot.
-- KEYS[4] the bucket's event stream
-- ARGV[1] 'add' or 'remove'   ARGV[2] most groups on one session
-- ARGV[3] event stream cap (0: no events)   ARGV[4] user id
-- ARGV[5] the access groups as a JSON array
-- ARGV[6..] access groups (distinct)
-- Returns {number of sessions changed}, or {-1} if the add was refused.
local FIRST = 6
local index, order, key_prefix, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local adding = ARGV[1] == 'add'
local most = tonumber(ARGV[2])
local wanted, needles = {}, {}
for i = FIRST, #ARGV do
  wanted[#wanted + 1] = ARGV[i]
  needles[#needles + 1] = '\0' .. ARGV[i] .. '\0'
end

prune(index, order, now_ms())
local ids, values = live_sessions(index, order, key_prefix)
-- First every new value, then (if none is over the cap) every write.
local changed, new_values = {}, {}
for i, v in ipairs(values) do
  local from = groups_at(v)
  local n = group_count(v)
  local was = n
  if adding then
    local more = {}
    for j, needle in ipairs(needles) do
      if not string.find(v, needle, from, true) then
        more[#more + 1] = wanted[j]
      end
    end
    if #more > 0 then
      n = n + #more
      if n > most then
        return {-1}
      end
      v = v .. table.concat(more, '\0') .. '\0'
    end
  else
    for j, needle in ipairs(needles) do
      local at = string.find(v, needle, from, true)
      if at then
        v = string.sub(v, 1, at) .. string.sub(v, at + #wanted[j] + 2)
        n = n - 1
      end
    end
  end
  if n ~= was then
    changed[#changed + 1] = ids[i]
    new_values[#new_values + 1] = with_count(v, n)
  end
end
for i, sid in ipairs(changed) do
  redis.call('SET', key_prefix .. 's:' .. sid, new_values[i], 'KEEPTTL')
end
emit(stream, ARGV[3], adding and 'groups_added' or 'groups_removed', ARGV[4], changed, ARGV[5])
return {#changed}
