-- Lists a user's live sessions, pruning the index as it goes.
-- KEYS[1] the user's index   KEYS[2] the user's order
-- KEYS[3] the user's key prefix ("<prefix>:{<tag>}:"): session keys are
--         derived from it and the index members, in the same slot.
-- Returns {id, value, id, value, ...}.
local index, order, key_prefix = KEYS[1], KEYS[2], KEYS[3]
prune(index, order, now_ms())
local ids, values = live_sessions(index, order, key_prefix)
local out = {}
for i, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = values[i]
end
return out
