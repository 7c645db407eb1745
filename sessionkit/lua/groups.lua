-- Adds or removes access groups on every live session of a user, all in
-- one atomic step: no reader sees some sessions changed and others not.
-- KEYS[1] the user's index key
-- KEYS[2] the user's key prefix ("<prefix>:{<tag>}:"): session keys are
--         derived from it and the index members, in the same slot.
-- ARGV[1] 'add' or 'remove'   ARGV[2..] access groups
-- Returns {number of sessions changed, changed id, ...}.
local index, key_prefix = KEYS[1], KEYS[2]
local adding = ARGV[1] == 'add'
local wanted = {}
for i = 2, #ARGV do
  wanted[ARGV[i]] = true
end

prune(index, now_ms())
local ids, values = live_sessions(index, key_prefix)
local out = {0}
for i, v in ipairs(values) do
  local fixed, groups = split_groups(v)
  local result, have, changed = {}, {}, false
  for _, g in ipairs(groups) do
    if adding or not wanted[g] then
      result[#result + 1] = g
      have[g] = true
    else
      changed = true
    end
  end
  if adding then
    for j = 2, #ARGV do
      local g = ARGV[j]
      if not have[g] then
        have[g] = true
        result[#result + 1] = g
        changed = true
      end
    end
  end
  if changed then
    redis.call('SET', key_prefix .. 's:' .. ids[i], fixed .. join_groups(result), 'KEEPTTL')
    out[#out + 1] = ids[i]
  end
end
out[1] = #out - 1
return out
