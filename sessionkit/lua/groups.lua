-- Adds or removes access groups on every live session of a user, all in
-- one atomic step: no reader sees some sessions changed and others not.
-- KEYS[1] the user's index key
-- KEYS[2] the user's key prefix ("<prefix>:{<tag>}:"): session keys are
--         derived from it and the index members, in the same slot.
-- KEYS[3] the bucket's event stream
-- ARGV[1] 'add' or 'remove'   ARGV[2] event stream cap (0: no events)
-- ARGV[3] user id   ARGV[4] the access groups as a JSON array
-- ARGV[5..] access groups
-- Returns {number of sessions changed, changed id, ...}.
local FIRST = 5
local index, key_prefix, stream = KEYS[1], KEYS[2], KEYS[3]
local adding = ARGV[1] == 'add'
local wanted = {}
for i = FIRST, #ARGV do
  wanted[ARGV[i]] = true
end

prune(index, now_ms())
local ids, values = live_sessions(index, key_prefix)
local out, changed = {0}, {}
for i, v in ipairs(values) do
  local fixed, groups = split_groups(v)
  local result, have, differs = {}, {}, false
  for _, g in ipairs(groups) do
    if adding or not wanted[g] then
      result[#result + 1] = g
      have[g] = true
    else
      differs = true
    end
  end
  if adding then
    for j = FIRST, #ARGV do
      local g = ARGV[j]
      if not have[g] then
        have[g] = true
        result[#result + 1] = g
        differs = true
      end
    end
  end
  if differs then
    redis.call('SET', key_prefix .. 's:' .. ids[i], fixed .. join_groups(result), 'KEEPTTL')
    out[#out + 1] = ids[i]
    changed[#changed + 1] = ids[i]
  end
end
out[1] = #out - 1
emit(stream, ARGV[2], adding and 'groups_added' or 'groups_removed', ARGV[3], changed, ARGV[4])
return out
